//! Crash safety with real processes: a station killed with SIGKILL in the middle of an ingest
//! restarts on the same data directory with no partial segment visible, every committed
//! segment intact, index and files in agreement, and takes the same ingest again to the end.
//! A station killed while it holds a replica restarts serving and providing it (issue 17).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;
use vodmesh_proto::manifest::ManifestContent;
use vodmesh_tests::cli::{Ingest, Play};
use vodmesh_tests::media::random_file;
use vodmesh_tests::process::{Node, NodeProcess};
use vodmesh_tests::replica::{HomeAndReplica, Program};
use vodmesh_tests::stored::engine_segments;
use vodmesh_tests::{status, wait};

const SEGMENT: usize = 512 * 1024;

/// `vodmesh ingest` of `source` into `node` in 512 KiB segments, not published.
fn ingest(node: &NodeProcess, source: &std::path::Path) -> Ingest {
    Ingest::new(&node.addr, &node.key(), "crash", source).segment_size(SEGMENT)
}

fn program_of(bytes: &[u8]) -> vodmesh_proto::ProgramId {
    let segments = bytes
        .chunks(SEGMENT)
        .enumerate()
        .map(|(i, c)| vodmesh_proto::manifest::SegmentEntry {
            index: (i as u32).into(),
            duration_ms: ((c.len() as u64 * 8 * 1000) / vodmesh_tools::ingest::DEFAULT_BITRATE)
                .max(1) as u32,
            size: c.len() as u64,
            hash: vodmesh_proto::SegmentHash::of(c),
        })
        .collect::<Vec<_>>();
    ManifestContent {
        title: "crash".into(),
        content_type: "application/octet-stream".into(),
        duration_ms: segments.iter().map(|s| u64::from(s.duration_ms)).sum(),
        segments,
        renditions: Vec::new(),
    }
    .program_id()
}

#[test]
fn sigkill_mid_ingest_loses_nothing_committed_and_shows_nothing_partial() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("home");
    let source = dir.path().join("program.bin");
    let bytes = random_file(&source, 24 * 1024 * 1024, 11)?;
    let program = program_of(&bytes);
    let args = ["--engines", "2", "--home", "--content-manager"];

    // Kill at several points of the ingest.
    for delay_ms in [20u64, 60, 150] {
        let node = NodeProcess::start(&data, &args)?;
        let mut client = ingest(&node, &source).command().spawn()?;
        // Part of what is tested: the moment of the kill, early, midway and late in the
        // ingest, whatever it has reached by then.
        std::thread::sleep(Duration::from_millis(delay_ms));
        node.kill()?;
        let _ = client.wait()?;

        // Reopen the stores as the restarted station would: nothing partial, all intact.
        let rt = tokio::runtime::Runtime::new()?;
        let (segments, reconciled) = rt.block_on(engine_segments(&data, 2, program))?;
        for (index, got) in &segments {
            let start = *index as usize * SEGMENT;
            let want = &bytes[start..(start + SEGMENT).min(bytes.len())];
            assert!(
                got.as_slice() == want,
                "segment {index} differs after the kill at {delay_ms} ms"
            );
        }
        // The catalog is all or nothing: a program in it has every segment stored.
        let catalog = vodmesh_node::content::Catalog::open(&data.join("catalog.redb"))?;
        let committed = catalog.get(&program)?.is_some();
        drop(catalog);
        if committed {
            assert_eq!(
                segments.len(),
                bytes.len().div_ceil(SEGMENT),
                "committed but incomplete"
            );
        }
        eprintln!(
            "kill at {delay_ms} ms (committed: {committed}): {} complete segments survived; reconcile found {reconciled:?}",
            segments.len()
        );
    }

    // The restarted station takes the same ingest to the end (or already has it, when the
    // last kill came after the commit).
    let node = NodeProcess::start(&data, &args)?;
    let out = ingest(&node, &source).command().output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        let printed = String::from_utf8(out.stdout)?;
        assert_eq!(printed.lines().last(), Some(program.to_string().as_str()));
    } else {
        assert!(stderr.contains("is already in the catalog"), "{stderr}");
    }
    assert!(node.terminate()?);
    let rt = tokio::runtime::Runtime::new()?;
    let (segments, _) = rt.block_on(engine_segments(&data, 2, program))?;
    assert_eq!(segments.len(), bytes.len().div_ceil(SEGMENT));
    let joined: Vec<u8> = segments.into_values().flatten().collect();
    assert!(joined == bytes);
    Ok(())
}

/// Issue 17: station b holds a replica and serves it; killed with SIGKILL and restarted on
/// the same data directory, it has forgotten the catalog records it learned, yet serves the
/// program again from its own engines, byte-identical (its director learns the record from
/// the registry), and becomes a provider of the program again once its old provider record
/// has expired.
#[test]
fn a_station_restarted_serves_and_provides_the_replica_it_holds() -> anyhow::Result<()> {
    const SEGMENTS: u32 = 4;
    const SIZE: usize = 64 * 1024;
    let dir = tempfile::tempdir()?;
    // Provider records outlive station records 30-fold by default: 10 s here, so that b's
    // provider record expires while it is down.
    let short = ["--provider-ttl", "10"];
    let HomeAndReplica {
        home,
        b,
        console,
        program,
        bytes,
    } = HomeAndReplica::start(
        dir.path(),
        (Node::new(&dir.path().join("home"))
            .engines(1)
            .home()
            .ttl(10))
        .args(&short),
        (Node::new(&dir.path().join("b")).engines(1).ttl(10)).args(&short),
        Program {
            title: "kept",
            segments: SEGMENTS,
            segment_size: SIZE,
            bitrate: None,
            seed: 71,
        },
    )?;
    let b_peer = b.peer();
    let only_b: BTreeSet<String> = [b_peer.clone()].into();
    let played = Play::new(&console, &b.addr, "kept").run()?;
    assert!(played.bytes == bytes, "played bytes differ before the kill");
    assert_eq!(played.stats["stations"], serde_json::json!(only_b));

    wait::blocking("b to provide the program", Duration::from_secs(30), || {
        Ok(status::program_stations(&home.addr, &home.key(), &program)?.contains(&b_peer))
    })?;

    let b = b.crash()?;
    // b's provider record expires (TTL 10 s) while it is down: the registry forgets it.
    wait::blocking(
        "b to be no provider of the program",
        Duration::from_secs(60),
        || Ok(!status::program_stations(&home.addr, &home.key(), &program)?.contains(&b_peer)),
    )?;
    let b = b.start()?;
    let played = Play::new(&console, &b.addr, "kept").run()?;
    assert!(
        played.bytes == bytes,
        "played bytes differ after the restart"
    );
    assert_eq!(played.stats["verified"], true);
    assert_eq!(
        played.stats["stations"],
        serde_json::json!(only_b),
        "b serves what it holds itself"
    );
    wait::blocking(
        "b to provide the program again",
        Duration::from_secs(60),
        || Ok(status::program_stations(&home.addr, &home.key(), &program)?.contains(&b_peer)),
    )?;
    Ok(())
}

/// A station killed while it copies a replica finishes it after its restart (issue 17: a
/// replica cut short was left half done). The replica is journaled in `kept.redb` when asked
/// for and resumed once an engine of the restarted station is up, copying only what is not
/// there yet. No console asks for the program, so no miss fills it instead.
#[test]
fn a_station_killed_mid_replica_finishes_it_after_its_restart() -> anyhow::Result<()> {
    const SEGMENTS: usize = 16;
    const SIZE: usize = 256 * 1024;
    let dir = tempfile::tempdir()?;
    // The home's engine serves copies at 1 Mbit/s: a copy of 256 KiB takes 2 s, four run at
    // once, so the replica takes about 8 s and b is killed part-way through.
    let home = Node::new(&dir.path().join("home"))
        .engines(1)
        .home()
        .ttl(10)
        .args(&["--copy-rate", "1"])
        .start()?;
    let b = Node::new(&dir.path().join("b"))
        .engines(1)
        .ttl(10)
        .enrolled_with(&home)?
        .start()?;
    wait::blocking(
        "the stations to find each other",
        Duration::from_secs(30),
        || Ok(status::directors(&home.addr)?.contains(&b.peer())),
    )?;
    let source = dir.path().join("halfway.bin");
    random_file(&source, SEGMENTS * SIZE, 73)?;
    Ingest::new(&home.addr, &home.key(), "halfway", &source)
        .publish_now()
        .segment_size(SIZE)
        .replicas(1)
        .run()?;
    let total = (SEGMENTS * SIZE) as u64;
    let held =
        |b: &NodeProcess| -> anyhow::Result<u64> { Ok(status::used_bytes(&b.addr)?.iter().sum()) };
    wait::blocking(
        "b to hold part of the replica",
        Duration::from_secs(60),
        || Ok(held(&b)? > 0),
    )?;
    let b = b.crash()?;
    // Complete segment files on b's disk: the kill came part-way through.
    let part = vodmesh_tests::stored::bytes_on_disk(&dir.path().join("b"), 0);
    assert!(part < total, "b held the whole replica before the kill");
    let b = b.start()?;
    wait::blocking(
        "b to finish the replica after its restart",
        Duration::from_secs(90),
        || Ok(held(&b)? == total),
    )
    .with_context(|| {
        let tail = |log: String| {
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(60)..].join("\n")
        };
        let holds = held(&b).map_or_else(|e| e.to_string(), |h| h.to_string());
        format!(
            "b holds {holds} of {total} bytes; its log after its restart (last lines):\n{}\nthe home's log (last lines):\n{}",
            tail(b.log()),
            tail(home.log())
        )
    })?;
    Ok(())
}
