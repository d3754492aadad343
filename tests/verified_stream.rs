//! Verified streaming by chunk group (issue 21): an engine streams a complete segment with its
//! BLAKE3 tree by 16 KiB group, and a console checks each group against the manifest's hash
//! as it arrives. A console plays the exact bytes that way; a copy tampered on an engine's
//! disk is caught at the group holding the bad byte, not at the segment's end, and the
//! engine's background scrub drops it before any console is served it.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::AsyncReadExt;
use vodmesh_console::play::Session;
use vodmesh_node::Station;
use vodmesh_node::events::Kind;
use vodmesh_proto::stream::{StreamReply, StreamRequest};
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::Issuer;
use vodmesh_proto::verified::{Decoder, GROUP, VerifyError};
use vodmesh_proto::{SegmentHash, SegmentId, SegmentIndex};
use vodmesh_tests::console::{Console, credentials, play_max};
use vodmesh_tests::media::random_file;
use vodmesh_tests::stored::{segment_file, tamper_on_disk};
use vodmesh_tests::swarm::{self, home_with_program, ingest_options, init_logging};
use vodmesh_tests::wait;
use vodmesh_tools::ingest::{self, IngestOptions};

const MIB: usize = 1024 * 1024;
/// The segment size programs are ingested in: the default.
const SEGMENT: u64 = ingest::DEFAULT_SEGMENT_SIZE;
/// The byte of segment 0 flipped on disk: in its second group.
const TAMPERED: usize = 20_000;

async fn home(data: &Path, issuer: &Issuer) -> Result<Station> {
    swarm::station(data)
        .content_home()
        .trusting(issuer)
        .start()
        .await
}

/// [`home`], its engines scrubbing in the background at once and back to back, at 100 MB/s.
async fn scrubbing_home(data: &Path, issuer: &Issuer) -> Result<Station> {
    let pace = vodmesh_node::engine::scrub::Pace {
        rate: 100_000_000,
        pause: Duration::ZERO,
    };
    swarm::station(data)
        .content_home()
        .trusting(issuer)
        .with(|c| c.scrub_pace = pace)
        .start()
        .await
}

/// Reads a verified stream of a segment of `size` bytes hashing to `hash` from `offset`,
/// checking it as a console does: the bytes handed out, and the first error.
async fn decode(
    mut s: libp2p::Stream,
    size: u64,
    hash: SegmentHash,
    offset: u64,
) -> Result<(Vec<u8>, Option<VerifyError>)> {
    let mut decoder = Decoder::new(size, hash, offset);
    let mut out = Vec::new();
    let mut item = vec![0u8; GROUP as usize];
    while let Some(need) = decoder.need() {
        let buf = &mut item[..need];
        s.read_exact(buf).await.context("the stream ended early")?;
        match decoder.verify(buf) {
            Ok(Some(_)) => out.extend_from_slice(buf),
            Ok(None) => {}
            Err(e) => return Ok((out, Some(e))),
        }
    }
    Ok((out, None))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_plays_by_verified_group_and_a_tampered_copy_is_caught_at_its_group() -> Result<()>
{
    init_logging();
    let dir = tempfile::tempdir()?;
    let issuer = Issuer::generate();
    // Two segments: 4 MiB (256 groups) and 5000 bytes (one group, its root the hash).
    let (station, data, bytes, program) = home_with_program(
        dir.path(),
        &issuer,
        ("verified", 4 * MIB + 5000, 21),
        SEGMENT,
    )
    .await?;
    let first = &bytes[..4 * MIB];
    let hash = SegmentHash::of(first);

    // The console plays every byte ingested, each verified by group as it came.
    let credentials = credentials(&issuer)?;
    let session = Session::open(station.addr(), &credentials, &program.to_string()).await?;
    let mut played = Vec::new();
    for index in 0..2 {
        let segment = session.segment(SegmentIndex(index)).await?;
        assert!(segment.by_group, "segment {index} not verified by group");
        played.extend_from_slice(&segment.bytes);
    }
    assert!(
        played == bytes,
        "the bytes played are not the bytes ingested"
    );
    drop(session);

    // On the wire: asked from byte 100 000, the engine starts at that byte's group and its
    // tree leads to the manifest's hash.
    let console = Console::connect(station.addr(), Some(&issuer)).await?;
    let engine = station.engines[0].clone();
    console.reach(engine.peer_id, &engine.addrs).await?;
    let segment = SegmentId::new(program, 0);
    let request = StreamRequest {
        verified: true,
        ..console.request(segment, 100_000, 0)
    };
    let (s, reply) = console.ask(engine.peer_id, &request).await?;
    let from = 100_000 / GROUP * GROUP;
    let size = 4 * MIB as u64;
    assert_eq!(reply, StreamReply::Verified { size, hash, from });
    let (got, error) = decode(s, size, hash, 100_000).await?;
    assert_eq!(error, None);
    assert!(
        got == first[from as usize..],
        "the stream from 100 000 differs"
    );
    station.shutdown().await;

    // A byte of segment 0 flipped on the engine's disk: in verified mode the engine serves it
    // unchecked, with the segment's true tree.
    tamper_on_disk(&data, 0, segment, TAMPERED)?;

    let station = home(&data, &issuer).await?;
    let console = Console::connect(station.addr(), Some(&issuer)).await?;
    let engine = station.engines[0].clone();
    console.reach(engine.peer_id, &engine.addrs).await?;
    // On the wire, asked straight: everything before the tampered group checks, the group
    // itself does not.
    let request = StreamRequest {
        verified: true,
        ..console.request(segment, 0, 0)
    };
    let (s, reply) = console.ask(engine.peer_id, &request).await?;
    assert_eq!(
        reply,
        StreamReply::Verified {
            size,
            hash,
            from: 0
        }
    );
    let bad = TAMPERED as u64 / GROUP * GROUP;
    let (got, error) = decode(s, size, hash, 0).await?;
    assert_eq!(
        error,
        Some(VerifyError::Group {
            start: bad,
            end: bad + GROUP
        })
    );
    assert!(
        got == first[..bad as usize],
        "the groups before the bad one differ"
    );

    // Through the director, the console never plays it: it leaves the engine at the tampered
    // group (a locate's preload only warms the page cache, it checks nothing, and this
    // station's background scrub waits an hour), and with no other holder it gives up.
    let session = Session::open(station.addr(), &credentials, &program.to_string()).await?;
    let fetched = tokio::time::timeout(Duration::from_secs(60), session.segment(SegmentIndex(0)))
        .await
        .context("the console kept fetching a tampered segment")?;
    let Err(error) = fetched else {
        anyhow::bail!("a tampered segment was played");
    };
    eprintln!("the tampered segment given up: {error}");
    // Every stream it opened ended. Whether the engine counts one complete or cut short says
    // nothing of the console: over a bulk connection (no per-stream window) the engine may
    // have written the whole 4 MiB into the sockets' buffers before the console left at the
    // group (the wire-level check above is where the group is caught).
    wait::until("the streams to end", Duration::from_secs(20), || async {
        let a = console.activity().await?;
        Ok(a.stops_early + a.stops_complete >= 1 && a.active == 0)
    })
    .await?;
    drop(session);

    // Control: segment 1, untouched, still plays.
    let session = Session::open(station.addr(), &credentials, &program.to_string()).await?;
    let segment = session.segment(SegmentIndex(1)).await?;
    assert!(segment.by_group && segment.bytes == bytes[4 * MIB..]);
    station.shutdown().await;
    Ok(())
}

/// A byte of a stored segment flipped on the disk of a stopped engine: once it runs again,
/// its background scrub finds the damage and drops the copy (the file goes, and the director
/// hears of it as of any dropped segment) though no console read it, so no console is served
/// it; the other segment is kept and plays (the control case).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_scrub_drops_a_damaged_copy_so_no_console_is_served_it() -> Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let issuer = Issuer::generate();
    let (station, data, bytes, program) = home_with_program(
        dir.path(),
        &issuer,
        ("scrubbed", 4 * MIB + 5000, 22),
        SEGMENT,
    )
    .await?;
    station.shutdown().await;
    let (damaged, kept) = (SegmentId::new(program, 0), SegmentId::new(program, 1));
    tamper_on_disk(&data, 0, damaged, TAMPERED)?;
    let (damaged_file, kept_file) = (
        segment_file(&data, 0, damaged)?,
        segment_file(&data, 0, kept)?,
    );

    let station = scrubbing_home(&data, &issuer).await?;
    wait::until(
        "the scrub to drop the damaged copy",
        Duration::from_secs(60),
        || {
            let gone = !damaged_file.exists();
            async move { Ok(gone) }
        },
    )
    .await?;
    assert!(kept_file.exists(), "the scrub dropped an undamaged segment");

    // Segment 0 is served to no console (no stream of it, whole or cut short), and segment 1
    // plays.
    let credentials = credentials(&issuer)?;
    let console = Console::connect(station.addr(), Some(&issuer)).await?;
    let session = Session::open(station.addr(), &credentials, &program.to_string()).await?;
    let fetched = tokio::time::timeout(Duration::from_secs(60), session.segment(SegmentIndex(0)))
        .await
        .context("the console kept fetching a dropped segment")?;
    assert!(fetched.is_err(), "a dropped segment was played");
    let segment = session.segment(SegmentIndex(1)).await?;
    assert!(segment.by_group && segment.bytes == bytes[4 * MIB..]);
    // Segment 1's stream reported, and nothing before it: none of segment 0 was served.
    wait::until(
        "segment 1's stream reported",
        Duration::from_secs(20),
        || async { Ok(console.activity().await?.stops_complete >= 1) },
    )
    .await?;
    let activity = console.activity().await?;
    assert_eq!(
        (activity.stops_early, activity.stops_complete),
        (0, 1),
        "a console was sent to the damaged copy: {activity:?}"
    );
    station.shutdown().await;
    Ok(())
}

/// What `play` wrote, call by call.
#[derive(Default)]
struct Recorder {
    writes: Vec<usize>,
    bytes: Vec<u8>,
}

impl tokio::io::AsyncWrite for Recorder {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.writes.push(buf.len());
        self.bytes.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// At `--speed max` the player gets the first segment group by group as each is verified:
/// its first write is whole chunk groups (as many as were verified when it went out, at most
/// the console's output buffer), not a 4 MiB segment, and what it gets in all is the program
/// byte for byte (from a seek into the first segment too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_speed_the_player_gets_each_group_once_verified() -> Result<()> {
    use vodmesh_console::play;
    init_logging();
    let dir = tempfile::tempdir()?;
    let issuer = Issuer::generate();
    let (station, _, bytes, program) = home_with_program(
        dir.path(),
        &issuer,
        ("early", 8 * MIB + 70_000, 22),
        SEGMENT,
    )
    .await?;
    let mut out = Recorder::default();
    let stats = play_max(station.addr(), &issuer, program, &mut out).await?;
    assert!(
        out.bytes == bytes,
        "the bytes played are not the bytes ingested"
    );
    assert_eq!(stats.bytes, bytes.len() as u64);
    let first = out.writes.first().copied().unwrap_or_default();
    assert!(
        first > 0 && first % GROUP as usize == 0 && first <= play::OUT_BUFFER,
        "{:?}",
        &out.writes[..4]
    );
    station.shutdown().await;
    Ok(())
}

/// Locates `segment` as `console` and asks the engine named for a verified stream.
async fn open_verified(
    console: &Console,
    segment: SegmentId,
) -> Result<(libp2p::PeerId, libp2p::Stream, StreamReply)> {
    let location = (console.locate(segment.program, segment.index.0, false)).await?;
    console.reach(location.engine, &location.addrs).await?;
    let request = StreamRequest {
        verified: true,
        ..console.request(segment, 0, 0)
    };
    let (s, reply) = console.ask(location.engine, &request).await?;
    Ok((location.engine, s, reply))
}

/// A copy still filling has its tree already (a verified copy brings the leaves before the
/// bytes): asked for verified mode, its engine streams it verified, each group as it lands,
/// so the console holds a group, not the segment; once the copy is complete, the same engine
/// streams verified from its store. Meanwhile the first holder streams verified, and every
/// stream brings the segment byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filling_copy_streams_verified_as_its_groups_land() -> Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("home");
    let issuer = Issuer::generate();
    // One stream per engine, and copies between engines paced (2 MiB in about a second), so
    // a second console is sent to a copy still filling.
    let station = swarm::station(&data)
        .engines(2)
        .home()
        .trusting(&issuer)
        .with(|c| {
            c.max_streams = 1;
            c.copy_rate_mbps = 16;
        })
        .start()
        .await?;
    let source = dir.path().join("p.bin");
    let bytes = random_file(&source, 2 * MIB, 23)?;
    let key = data.join("identity.key");
    let program = ingest::run(&IngestOptions {
        publish_at_ms: Some(now_ms()),
        ..ingest_options(&station, &key, "filling", source)
    })
    .await?
    .program;
    let (size, hash) = (bytes.len() as u64, SegmentHash::of(&bytes));
    let segment = SegmentId::new(program, 0);
    // The first console takes the holder's one stream, verified, and holds it.
    let c1 = Console::connect(station.addr(), Some(&issuer)).await?;
    let (e1, s1, reply) = open_verified(&c1, segment).await?;
    assert_eq!(
        reply,
        StreamReply::Verified {
            size,
            hash,
            from: 0
        }
    );
    wait::until(
        "the first stream counted",
        Duration::from_secs(20),
        || async { Ok(c1.streams().await?.contains(&(e1, 1))) },
    )
    .await?;
    // The second is sent to the idle engine, whose copy is filling: verified all the same.
    let mut events = station.subscribe();
    let c2 = Console::connect(station.addr(), Some(&issuer)).await?;
    let (e2, s2, reply) = open_verified(&c2, segment).await?;
    assert_ne!(e1, e2);
    assert_eq!(
        reply,
        StreamReply::Verified {
            size,
            hash,
            from: 0
        }
    );
    // Still filling when it answered (the copy takes about a second at 16 Mbit/s).
    let copied = std::iter::from_fn(|| events.try_recv().ok())
        .any(|e| e.peer == e2 && matches!(e.kind, Kind::Copied { .. }));
    assert!(!copied, "the copy was complete before the stream began");
    let (got, error) = decode(s2, size, hash, 0).await?;
    assert!(
        error.is_none() && got == bytes,
        "the filling copy's verified stream differs"
    );
    let (got, error) = decode(s1, size, hash, 0).await?;
    assert!(
        error.is_none() && got == bytes,
        "the holder's verified stream differs"
    );
    // Complete now: the copy streams verified too.
    wait::until("both streams ended", Duration::from_secs(20), || async {
        Ok(c1.streams().await?.iter().all(|(_, n)| *n == 0))
    })
    .await?;
    c2.reach(
        e2,
        &station
            .engines
            .iter()
            .find(|e| e.peer_id == e2)
            .context("no e2")?
            .addrs,
    )
    .await?;
    let request = StreamRequest {
        verified: true,
        ..c2.request(segment, 0, 0)
    };
    let (s, reply) = c2.ask(e2, &request).await?;
    assert_eq!(
        reply,
        StreamReply::Verified {
            size,
            hash,
            from: 0
        }
    );
    let (got, error) = decode(s, size, hash, 0).await?;
    assert!(
        error.is_none() && got == bytes,
        "the copy's verified stream differs"
    );
    station.shutdown().await;
    Ok(())
}
