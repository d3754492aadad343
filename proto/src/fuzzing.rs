//! Entry points for fuzzing: the cargo-fuzz targets in `fuzz/` call them with what libFuzzer
//! makes, and the test suite's smoke run (tests/fuzz_smoke.rs) with its seeds and random
//! bytes. Each takes bytes as a peer or a file could send them, runs every decoder that such
//! bytes reach, with the limit the peers use, and must return, never panic, whatever they are.
//! A value that decodes is encoded again and decoded once more: what a peer accepts, it can
//! also send. A verified stream ([`verified`]) is checked against a fixed segment: what
//! passes must be that segment's bytes.

use libp2p::PeerId;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{self, DecodeError};
use crate::signed::Signed;
use crate::token::{Audience, Claims, Issuer, TrustedIssuers, from_url_param};
use crate::{
    ProgramId, admin, auth, blade, catalog, copy, director, ingest, manifest, station, stream,
};

/// The director protocol's limit on one request or response (what `CborCodec` is given).
const DIRECTOR_LIMIT: usize = manifest::MAX_MANIFEST + 64 * 1024;

/// Decodes `bytes` as a `T` under `limit`; what decodes is encoded and decoded again, and must.
fn round_trip<T: Serialize + DeserializeOwned>(bytes: &[u8], limit: usize) -> Option<T> {
    let value: T = codec::decode(bytes, limit).ok()?;
    let again = codec::encode(&value);
    match codec::decode::<T>(&again, limit.max(again.len())) {
        Ok(value) => Some(value),
        Err(DecodeError::TooLarge { .. }) => None,
        Err(e) => panic!("a decoded value does not decode again: {e}"),
    }
}

/// The frames of every protocol: the first byte picks the message type, the rest is the
/// frame.
pub fn frames(data: &[u8]) {
    let Some((&kind, frame)) = data.split_first() else {
        return;
    };
    type Up = blade::Up<serde_bytes::ByteBuf, serde_bytes::ByteBuf, String>;
    type Down = blade::Down<serde_bytes::ByteBuf, serde_bytes::ByteBuf>;
    match kind % 12 {
        0 => drop(round_trip::<director::Request>(frame, DIRECTOR_LIMIT)),
        1 => drop(round_trip::<director::Response>(frame, DIRECTOR_LIMIT)),
        2 => drop(round_trip::<stream::StreamRequest>(
            frame,
            stream::MAX_FRAME,
        )),
        3 => drop(round_trip::<stream::StreamReply>(frame, stream::MAX_FRAME)),
        4 => drop(round_trip::<copy::CopyRequest>(frame, copy::MAX_FRAME)),
        5 => drop(round_trip::<copy::CopyReply>(frame, copy::MAX_FRAME)),
        6 => drop(round_trip::<ingest::IngestHeader>(frame, ingest::MAX_FRAME)),
        7 => drop(round_trip::<ingest::IngestAck>(frame, ingest::MAX_FRAME)),
        8 => drop(round_trip::<auth::Request>(frame, DIRECTOR_LIMIT)),
        9 => drop(round_trip::<auth::Response>(frame, DIRECTOR_LIMIT)),
        10 => drop(round_trip::<Up>(frame, blade::MAX_HELLO)),
        _ => drop(round_trip::<Down>(frame, blade::MAX_FRAME)),
    }
}

/// The segment a verified stream is checked against in [`verified`]: 70 000 bytes, five
/// chunk groups, the last one short.
fn fuzz_segment() -> &'static (Vec<u8>, crate::SegmentHash) {
    static SEGMENT: std::sync::OnceLock<(Vec<u8>, crate::SegmentHash)> = std::sync::OnceLock::new();
    SEGMENT.get_or_init(|| {
        let bytes: Vec<u8> = (0..70_000u32).map(|i| (i * 7 + i / 300) as u8).collect();
        let hash = crate::SegmentHash::of(&bytes);
        (bytes, hash)
    })
}

/// A verified stream of [`fuzz_segment`] as it is sent ([`crate::verified::plan`]) from
/// `offset`, behind the two bytes that give the offset to [`verified`].
fn verified_seed(offset: u16) -> Vec<u8> {
    use crate::verified::{Item, Leaves, plan};
    let (bytes, _) = fuzz_segment();
    let outboard = Leaves::of(bytes).outboard();
    let mut out = offset.to_le_bytes().to_vec();
    for item in plan(bytes.len() as u64, u64::from(offset)) {
        match item {
            Item::Parent { index, .. } => {
                out.extend_from_slice(outboard.pair(index).unwrap_or(&[0; 64]))
            }
            Item::Group { start, end, .. } => {
                out.extend_from_slice(&bytes[start as usize..end as usize]);
            }
        }
    }
    out
}

/// A verified stream (`/vodmesh/stream/1` in verified mode) as an engine could send it,
/// checked by the console's decoder against [`fuzz_segment`] from the offset in its first two
/// bytes: it must end or refuse, and every group it passes must be the segment's own.
pub fn verified(data: &[u8]) {
    let Some((offset, mut stream)) = data.split_first_chunk::<2>() else {
        return;
    };
    let (bytes, hash) = fuzz_segment();
    let offset = u64::from(u16::from_le_bytes(*offset));
    let mut decoder = crate::verified::Decoder::new(bytes.len() as u64, *hash, offset);
    while let Some(need) = decoder.need() {
        let take = need.min(stream.len());
        match decoder.verify(&stream[..take]) {
            Ok(Some((start, end))) => assert!(
                bytes.get(start as usize..end as usize) == Some(&stream[..take]),
                "a group that is not the segment's passed verification"
            ),
            Ok(None) => {}
            Err(_) => return,
        }
        stream = &stream[take..];
    }
}

/// A token as a console or an engine presents it: decoded, then checked by a director that
/// trusts one issuer, for each audience; and as a standard player presents it, as bytes and as
/// the text of a `?token=` ([`crate::token::from_url_param`]).
pub fn tokens(data: &[u8]) {
    let _ = Claims::peek(data);
    let mut trusted = TrustedIssuers::new();
    let issuer = Issuer::from_secret(&[7; 32]);
    if trusted.insert(issuer.public()).is_err() {
        return;
    }
    // The seeds' holder, so that a seed token passes every check.
    let Ok(holder) = libp2p::identity::Keypair::ed25519_from_bytes([3; 32]) else {
        return;
    };
    let peer = holder.public().to_peer_id();
    let program = ProgramId([1; 32]);
    for audience in [Audience::Console, Audience::Engine, Audience::Admin] {
        let _ = trusted.verify(data, 1_000, audience, Some(&program), &peer);
    }
    // A standard player's `?token=`: the bytes as a URL token, and as the text of one.
    let client = std::net::IpAddr::from([192, 0, 2, 7]);
    let _ = trusted.verify_url(data, 1_000, &program, client);
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(token) = from_url_param(text)
    {
        let _ = trusted.verify_url(&token, 1_000, &program, client);
    }
}

/// Signed envelopes and what they carry: the envelope (its public key is protobuf from the
/// peer), station and catalog records, manifests and admin claims, each checked as a
/// director checks them; and the payloads decoded on their own, since a fuzzer cannot sign.
pub fn records(data: &[u8]) {
    if let Some(signed) = round_trip::<Signed>(data, station::MAX_RECORD) {
        let _ = signed.signer();
        let _ = station::StationRecord::verify(&signed, 1_000);
        let _ = catalog::CatalogRecord::verify(&signed);
        let _ = manifest::Manifest::verify(&signed);
        let director = PeerId::random();
        let _ = admin::signer(&signed, "ingest", b"x", director, 1_000);
    }
    let _ = round_trip::<station::StationRecord>(data, station::MAX_RECORD);
    let _ = round_trip::<catalog::CatalogRecord>(data, catalog::MAX_RECORD);
    let _ = round_trip::<admin::AdminClaim>(data, admin::MAX_CLAIM);
    let content = round_trip::<manifest::ManifestContent>(data, manifest::MAX_MANIFEST);
    if let Some(content) = content.filter(|c| c.check().is_ok()) {
        // What a console asks of a manifest it accepted.
        let _ = content.total_size();
        let _ = content.segment_at(u64::MAX);
        let _ = content.segment_at(0);
        let _ = content.has_init_segment();
        let _ = content.program_id();
    }
}

/// Real bytes of each kind to start from: `(target, bytes)`, a few a target. The smoke run
/// mutates them; `fuzz/` takes them as its seed corpus (tests/fuzz_smoke.rs writes them into
/// a directory given by `VODMESH_FUZZ_CORPUS`).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use crate::SegmentHash;
    use crate::ids::{SegmentId, SegmentIndex};
    let key = libp2p::identity::Keypair::ed25519_from_bytes([3; 32]);
    let Ok(key) = key else {
        return Vec::new();
    };
    let peer = key.public().to_peer_id();
    let content = manifest::ManifestContent {
        title: "seed".into(),
        content_type: manifest::FMP4.into(),
        duration_ms: 4_000,
        segments: (0..3)
            .map(|index| manifest::SegmentEntry {
                index: index.into(),
                duration_ms: if index == 0 { 0 } else { 2_000 },
                size: 1_000 + u64::from(index),
                hash: SegmentHash::of(&[index as u8]),
            })
            .collect(),
        renditions: Vec::new(),
    };
    let program = content.program_id();
    let segment = SegmentId {
        program,
        index: SegmentIndex(1),
    };
    let admin = admin::prove(&key, "ingest", program.as_bytes(), peer, 1_000);
    let frame = |kind: u8, bytes: Vec<u8>| {
        let mut framed = vec![kind];
        framed.extend(bytes);
        ("frames", framed)
    };
    let mut seeds = vec![
        frame(0, codec::encode(&director::Request::Swarm)),
        frame(0, codec::encode(&director::Request::Manifest { program })),
        frame(
            0,
            codec::encode(&director::Request::Replicate {
                program,
                source: peer,
                source_addrs: Vec::new(),
                size: content.total_size(),
            }),
        ),
        frame(
            0,
            codec::encode(&director::Request::IngestBegin {
                content: content.clone(),
                publish_at_ms: Some(5),
                replicas: 2,
                admin: admin.clone(),
            }),
        ),
        frame(
            2,
            codec::encode(&stream::StreamRequest {
                segment,
                offset: 10,
                token: Some(serde_bytes::ByteBuf::from(vec![1, 2, 3])),
                play_from: 20,
                verified: true,
            }),
        ),
        frame(3, codec::encode(&stream::StreamReply::Refused("no".into()))),
        ("records", codec::encode(&admin)),
        (
            "records",
            codec::encode(&manifest::Manifest::new(content.clone(), peer, 9).sign(&key)),
        ),
        ("records", codec::encode(&content)),
    ];
    for offset in [0, 20_000, 65_535] {
        seeds.push(("verified", verified_seed(offset)));
    }
    let issuer = Issuer::from_secret(&[7; 32]);
    for audience in [Audience::Console, Audience::Engine] {
        let rights = crate::token::Rights::Programs(vec![program]);
        if let Ok(token) = issuer.issue(peer, audience, rights, 0, 10_000) {
            seeds.push(("tokens", token));
        }
    }
    seeds
}
