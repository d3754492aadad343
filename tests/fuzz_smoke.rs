//! The fuzz targets' smoke run, on stable Rust in the normal suite: every entry point that
//! `fuzz/` fuzzes (frames of each protocol, tokens, signed records and manifests, the HLS
//! playlist reader of ingest, the gateway's request parsing) over real seeds and a few
//! thousand deterministic mutations of them. A panic fails it. The real fuzzing runs with
//! cargo-fuzz (README, "Fuzzing"); `VODMESH_FUZZ_CORPUS=DIR` writes the seeds into
//! `DIR/<target>/` for it.

use rand::{Rng, SeedableRng};

/// Mutations tried a target.
const ROUNDS: usize = 20_000;

/// A fuzz target: its name (as in `fuzz/fuzz_targets/`) and entry point.
type Target = (&'static str, fn(&[u8]));

const TARGETS: &[Target] = &[
    ("frames", vodmesh_proto::fuzzing::frames),
    ("tokens", vodmesh_proto::fuzzing::tokens),
    ("records", vodmesh_proto::fuzzing::records),
    ("verified", vodmesh_proto::fuzzing::verified),
    ("playlist", vodmesh_tools::source::fuzz_playlist),
    ("gateway", vodmesh_console::serve::fuzz_request),
];

/// Seeds of every target: the protocol's own, and texts for the playlist and gateway.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = vodmesh_proto::fuzzing::seeds();
    let playlist = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:4\n\
                    #EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:4.0,\na.m4s\n#EXTINF:2.5,\n\
                    ../b.m4s\n#EXTINF:1,\nhttp://192.0.2.1:8000/c.m4s\n#EXT-X-ENDLIST\n";
    seeds.push(("playlist", playlist.as_bytes().to_vec()));
    for request in [
        "bytes=0-99\n3.ts\nlocalhost:8080",
        "bytes=-500\n/0123456789abcdef/x/2.m4s\n127.0.0.1",
        "bytes=7-\n/\n[::1]:80",
    ] {
        seeds.push(("gateway", request.as_bytes().to_vec()));
    }
    seeds
}

/// One random change to `bytes`: a byte set, inserted or removed, a cut, a run repeated, or
/// a splice of another seed.
fn mutate(rng: &mut rand::rngs::StdRng, bytes: &mut Vec<u8>, other: &[u8]) {
    let at = |rng: &mut rand::rngs::StdRng, len: usize| rng.gen_range(0..=len);
    match rng.gen_range(0..6) {
        0 if !bytes.is_empty() => {
            let i = rng.gen_range(0..bytes.len());
            bytes[i] = rng.r#gen();
        }
        1 => {
            let i = at(rng, bytes.len());
            bytes.insert(i, rng.r#gen());
        }
        2 if !bytes.is_empty() => {
            let i = rng.gen_range(0..bytes.len());
            bytes.remove(i);
        }
        3 => {
            let i = at(rng, bytes.len());
            bytes.truncate(i);
        }
        4 if !bytes.is_empty() => {
            let i = rng.gen_range(0..bytes.len());
            let j = (i + rng.gen_range(1..16)).min(bytes.len());
            let run = bytes[i..j].to_vec();
            bytes.splice(i..i, run);
        }
        _ => {
            let i = at(rng, bytes.len());
            let j = at(rng, other.len());
            bytes.truncate(i);
            bytes.extend_from_slice(&other[j..]);
        }
    }
}

#[test]
fn every_fuzz_target_survives_its_seeds_and_mutations() -> std::io::Result<()> {
    let seeds = seeds();
    if let Some(dir) = std::env::var_os("VODMESH_FUZZ_CORPUS") {
        for (i, (target, bytes)) in seeds.iter().enumerate() {
            let dir = std::path::Path::new(&dir).join(target);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join(format!("seed-{i}")), bytes)?;
        }
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261202);
    for (name, target) in TARGETS {
        let own: Vec<&[u8]> = seeds
            .iter()
            .filter(|(t, _)| t == name)
            .map(|(_, b)| b.as_slice())
            .collect();
        assert!(!own.is_empty(), "{name} has seeds");
        for seed in &own {
            target(seed);
        }
        target(&[]);
        for _ in 0..ROUNDS {
            let mut bytes = own[rng.gen_range(0..own.len())].to_vec();
            for _ in 0..rng.gen_range(1..8) {
                let other = own[rng.gen_range(0..own.len())];
                mutate(&mut rng, &mut bytes, other);
            }
            target(&bytes);
        }
    }
    Ok(())
}
