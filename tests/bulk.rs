//! The bulk path (issue 21): consoles stream segments, and engines copy them, over TLS
//! connections of their own to the engines (libp2p's certificates, no yamux), kept from
//! segment to segment. A console plays a program that way byte for byte with a handful of
//! connections, and a station's replica arrives whole over a handful; a bulk connection is held
//! to what a libp2p stream is held to (a token bound to the peer at the other end, for the
//! program; for a copy, an engine token and the director's approval) and to bounds of its own
//! (connections a peer holds, a request's size).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::identity::Keypair;
use vodmesh_node::Station;
use vodmesh_node::events::Kind;
use vodmesh_proto::SegmentId;
use vodmesh_proto::codec::{read_frame, write_frame};
use vodmesh_proto::copy::{CopyReply, CopyRequest};
use vodmesh_proto::net::bulk::{self, Connector, Exchange};
use vodmesh_proto::stream::{MAX_FRAME, MAX_STREAMS_PER_PEER, StreamReply, StreamRequest};
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::{Audience, Issuer, Rights};
use vodmesh_tests::console::{Console, console_token, play_max};
use vodmesh_tests::media::random_file;
use vodmesh_tests::stored::engine_segments;
use vodmesh_tests::swarm::{self, home_with_program, ingest_options, init_logging, wait_listed};
use vodmesh_tests::wait;
use vodmesh_tools::ingest::{self, IngestOptions};

const MIB: usize = 1024 * 1024;
/// Bulk connections an engine takes from one peer at once: twice its streams.
const CONNECTIONS_PER_PEER: usize = 2 * MAX_STREAMS_PER_PEER;

/// The station's count of bulk connections its engines took.
fn bulk_connections(station: &Station) -> Result<u64> {
    swarm::counter(station, "vodmesh_bulk_connections_total")
}

/// A raw (not verified) request for `segment` with `token`.
fn request(segment: SegmentId, token: Option<Vec<u8>>) -> StreamRequest {
    StreamRequest {
        segment,
        offset: 0,
        token: token.map(serde_bytes::ByteBuf::from),
        play_from: 0,
        verified: false,
    }
}

/// Sends `request` on `conn` and reads the engine's answer.
async fn ask(conn: &mut bulk::Conn, request: &StreamRequest) -> Result<StreamReply> {
    write_frame(conn, request).await?;
    Ok(read_frame(conn, MAX_FRAME).await?)
}

/// Asks for `segment` on `conn` with `token` and reads it whole.
async fn stream(conn: &mut bulk::Conn, segment: SegmentId, token: Vec<u8>) -> Result<Vec<u8>> {
    match ask(conn, &request(segment, Some(token))).await? {
        StreamReply::Streaming { size, .. } => {
            let mut bytes = vec![0u8; usize::try_from(size)?];
            conn.read_exact(&mut bytes).await?;
            Ok(bytes)
        }
        other => bail!("the engine answered {other:?}"),
    }
}

/// A content home trusting `issuer` with a program `title` of one 1 MiB segment of random
/// bytes from `seed`: the station, the bytes, the segment, and the engine holding it with the
/// bulk address its director names.
async fn one_segment(
    dir: &std::path::Path,
    issuer: &Issuer,
    (title, seed): (&str, u64),
) -> Result<(
    Station,
    Vec<u8>,
    SegmentId,
    (libp2p::PeerId, std::net::SocketAddr),
)> {
    let (station, _, bytes, program) =
        home_with_program(dir, issuer, (title, MIB, seed), MIB as u64).await?;
    let console = Console::connect(station.addr(), Some(issuer)).await?;
    let location = console.locate(program, 0, false).await?;
    let addr = location
        .bulk
        .context("the director named no bulk address")?;
    Ok((
        station,
        bytes,
        SegmentId::new(program, 0),
        (location.engine, addr),
    ))
}

/// A console at `--speed max` streams every segment over bulk connections, keeping them: the
/// bytes played are the bytes ingested, and the engines took far fewer connections than
/// there are segments (one handshake per engine and stream at once, not per segment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_plays_over_bulk_connections_it_keeps() -> Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let issuer = Issuer::generate();
    let (station, _, bytes, program) =
        home_with_program(dir.path(), &issuer, ("bulk", 16 * MIB, 21), MIB as u64).await?;
    let segments = bytes.len().div_ceil(MIB);
    assert!(segments >= 16, "{segments} segments");
    let before = bulk_connections(&station)?;
    let mut out: Vec<u8> = Vec::new();
    let stats = play_max(station.addr(), &issuer, program, &mut out).await?;
    assert!(out == bytes, "the bytes played are not the bytes ingested");
    assert_eq!(stats.bytes, bytes.len() as u64);
    let connections = bulk_connections(&station)? - before;
    // At least one: the segments came over the bulk path. At most a few per engine: three
    // fetches at once, each connection kept for the next segment.
    assert!(
        (1..=8).contains(&connections),
        "{connections} bulk connections for {segments} segments"
    );
    station.shutdown().await;
    Ok(())
}

/// What a stranger gains from a bulk connection: nothing a libp2p stream would not give it.
/// A token bound to another peer is refused (the engine reads the peer id from the TLS
/// certificate, not from the request), and the same connection then streams with the peer's
/// own token; a request past the frame limit ends the connection; a peer holding its share
/// of connections gets no more, while another peer still streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_connection_serves_only_its_own_peer_within_its_bounds() -> Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let issuer = Issuer::generate();
    let (station, bytes, segment, (engine, addr)) =
        one_segment(dir.path(), &issuer, ("bulk", 21)).await?;

    // Another peer's token, on this peer's connection: refused, and nothing else is sent.
    let (mallory, alice) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let alices = console_token(&issuer, alice.public().to_peer_id())?;
    let mallorys = console_token(&issuer, mallory.public().to_peer_id())?;
    let mut conn = Connector::new(&mallory, engine)?.connect(addr).await?;
    match ask(&mut conn, &request(segment, Some(alices))).await? {
        StreamReply::Refused(why) => assert_eq!(why, "token belongs to another peer"),
        other => bail!("a token of another peer was served: {other:?}"),
    }
    // Control: the peer's own token, on the same connection, streams the segment.
    let got = stream(&mut conn, segment, mallorys.clone()).await?;
    assert!(
        got == bytes,
        "the bytes streamed are not the bytes ingested"
    );

    // A request frame past the limit: the connection ends, unread.
    let mut big = Connector::new(&mallory, engine)?.connect(addr).await?;
    big.write_all(&(16 * MIB as u32).to_be_bytes()).await?;
    big.write_all(&[0u8; 1024]).await?;
    big.flush().await?;
    let mut rest = Vec::new();
    let ended = big.read_to_end(&mut rest).await;
    assert!(
        ended.is_err() || rest.is_empty(),
        "{} bytes answered",
        rest.len()
    );

    // Its share of connections: each answers (a request with no token: refused, whole).
    let no_token = request(segment, None);
    let mut held = vec![conn];
    while held.len() < CONNECTIONS_PER_PEER {
        held.push(Connector::new(&mallory, engine)?.connect(addr).await?);
    }
    for conn in &mut held {
        assert!(matches!(
            ask(conn, &no_token).await?,
            StreamReply::Refused(_)
        ));
    }
    // One more: its request is answered busy (the peer waits, as for a busy engine, rather
    // than taking the engine for lost), whatever it asks, and the connection is closed.
    let mut over = Connector::new(&mallory, engine)?.connect(addr).await?;
    let asked = request(segment, Some(mallorys.clone()));
    match ask(&mut over, &asked).await? {
        StreamReply::Busy => {}
        other => bail!("a connection past the peer's share answered {other:?}"),
    }
    let mut rest = Vec::new();
    let ended = over.read_to_end(&mut rest).await;
    assert!(
        ended.is_err() || rest.is_empty(),
        "{} bytes after the busy answer",
        rest.len()
    );
    // A copy connection past the share: refused as busy, then closed.
    match copy_reply((&mallory, engine, addr), segment, None).await? {
        (CopyReply::Refused(why), true) => assert!(why.starts_with("busy"), "{why}"),
        other => bail!("a copy connection past the peer's share got {other:?}"),
    }
    // Control: another peer connects and streams meanwhile, and the held ones still serve.
    let token = console_token(&issuer, alice.public().to_peer_id())?;
    let mut other = Connector::new(&alice, engine)?.connect(addr).await?;
    assert!(stream(&mut other, segment, token).await? == bytes);
    let last = held.last_mut().context("no connection held")?;
    assert!(stream(last, segment, mallorys).await? == bytes);
    station.shutdown().await;
    Ok(())
}

/// A console of `key` fetches segment `index` of `program`, which must first wait out a busy
/// answer (the session counts a wait); then `release` runs (the test lets go of what it held)
/// and the segment fetched is returned.
async fn fetch_after_a_busy_answer(
    station: &Station,
    (key, token): (Keypair, Vec<u8>),
    (program, index): (vodmesh_proto::ProgramId, u32),
    release: impl FnOnce() -> Result<()>,
) -> Result<vodmesh_console::play::Segment> {
    use vodmesh_console::play::{Credentials, Session};
    let session = Session::open(
        station.addr(),
        &Credentials::new(key, token),
        &program.to_string(),
    )
    .await?;
    let fetch = session.segment(vodmesh_proto::SegmentIndex(index));
    tokio::pin!(fetch);
    tokio::select! {
        fetched = &mut fetch => bail!("fetched without a busy answer: {:?}", fetched.map(|s| s.size())),
        waited = wait::until("the console to wait out a busy answer", Duration::from_secs(60), || async {
            Ok(session.waits() >= 1)
        }) => waited?,
    }
    release()?;
    Ok(fetch.await?)
}

/// A console answered busy keeps its bulk connection: the engine keeps it after an answer
/// alone, so the wait for a busy engine costs the engine no second handshake with the console.
/// The console's own peer holds the engine's share of its streams on libp2p streams it does
/// not read (the engine answers its next ask busy); once they go, the console streams the
/// segment on the connection it kept: one bulk connection in all, and the bytes ingested.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_answered_busy_keeps_its_bulk_connection() -> Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let issuer = Issuer::generate();
    // The engine's share of a peer's streams to hold, and one more segment to fetch.
    let share = u32::try_from(MAX_STREAMS_PER_PEER)?;
    let len = (MAX_STREAMS_PER_PEER + 1) * 4 * MIB;
    let (station, _, bytes, program) =
        home_with_program(dir.path(), &issuer, ("busy", len, 23), 4 * MIB as u64).await?;
    let key = Keypair::generate_ed25519();
    let token = console_token(&issuer, key.public().to_peer_id())?;
    let holder = Console {
        client: vodmesh_client::DirectorClient::connect(station.addr(), Some(key.clone())).await?,
        token: Some(token.clone().into()),
    };
    let engine = station.engines[0].clone();
    holder.reach(engine.peer_id, &engine.addrs).await?;
    let mut held = Vec::new();
    for index in 0..share {
        let ask = holder.request(SegmentId::new(program, index), 0, 0);
        let (stream, reply) = holder.ask(engine.peer_id, &ask).await?;
        assert!(
            matches!(reply, StreamReply::Streaming { .. }),
            "segment {index}: {reply:?}"
        );
        held.push(stream);
    }
    let before = bulk_connections(&station)?;
    let release = || -> Result<()> {
        assert_eq!(
            bulk_connections(&station)? - before,
            1,
            "bulk connections while the engine answered busy (one, kept from answer to answer)"
        );
        drop(held);
        Ok(())
    };
    let segment =
        fetch_after_a_busy_answer(&station, (key, token), (program, share), release).await?;
    assert!(
        bytes.get(MAX_STREAMS_PER_PEER * 4 * MIB..) == Some(segment.bytes.as_slice()),
        "the bytes fetched are not the bytes ingested"
    );
    assert_eq!(
        bulk_connections(&station)? - before,
        1,
        "a new handshake after the busy answer"
    );
    station.shutdown().await;
    Ok(())
}

/// A console whose identity holds its share of an engine's bulk connections already (another
/// play of the same identity at once, say) is answered busy on one more, and waits: once they
/// go, it streams the segment, byte for byte. Closed unanswered, that connection looked like
/// an engine lost, and a segment no other engine held ended the play.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_past_its_share_of_bulk_connections_waits_for_one() -> Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let issuer = Issuer::generate();
    let (station, _, bytes, program) =
        home_with_program(dir.path(), &issuer, ("share", 2 * MIB, 31), MIB as u64).await?;
    let key = Keypair::generate_ed25519();
    let token = console_token(&issuer, key.public().to_peer_id())?;
    let console = Console::connect(station.addr(), Some(&issuer)).await?;
    let location = console.locate(program, 1, false).await?;
    let addr = location
        .bulk
        .context("the director named no bulk address")?;
    // The identity's share, each connection answered once (so the engine counts it as the
    // peer's), then held open.
    let no_token = request(SegmentId::new(program, 1), None);
    let mut held = Vec::new();
    while held.len() < CONNECTIONS_PER_PEER {
        let mut conn = Connector::new(&key, location.engine)?.connect(addr).await?;
        assert!(matches!(
            ask(&mut conn, &no_token).await?,
            StreamReply::Refused(_)
        ));
        held.push(conn);
    }
    let release = || -> Result<()> {
        drop(held);
        Ok(())
    };
    let segment = fetch_after_a_busy_answer(&station, (key, token), (program, 1), release).await?;
    assert!(
        bytes.get(MIB..) == Some(segment.bytes.as_slice()),
        "the bytes fetched are not the bytes ingested"
    );
    station.shutdown().await;
    Ok(())
}

/// A station's replica comes over bulk connections its engine keeps: the home's engine takes
/// a handful of connections for sixteen segments (at most one per copy at once, each kept for
/// the next segment), and the replica's bytes, read back from the target's store, are the
/// bytes ingested.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_copies_over_bulk_connections_it_keeps() -> Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let home_dir = dir.path().join("home");
    let home = swarm::station(&home_dir).home().engines(1).start().await?;
    let target_dir = dir.path().join("target");
    let target = swarm::station(&target_dir)
        .engines(1)
        .enrolled_with(&home, &home_dir)
        .start()
        .await?;
    let both: BTreeSet<_> = [home.peer_id(), target.peer_id()].into();
    wait_listed(
        "both stations listed",
        &[&home],
        &both,
        Duration::from_secs(30),
    )
    .await?;

    let source = dir.path().join("copied.bin");
    let bytes = random_file(&source, 16 * MIB, 31)?;
    let sink = vodmesh_node::events::sink();
    target.send_events_to(&sink);
    let mut events = sink.subscribe();
    let before = bulk_connections(&home)?;
    let key = home_dir.join("identity.key");
    let info = ingest::run(&IngestOptions {
        replicas: 1,
        segment_size: MIB as u64,
        ..ingest_options(&home, &key, "copied", &source)
    })
    .await?;
    assert_eq!(info.segments, 16);
    let program = info.program;
    let mut log = Vec::new();
    wait::events(
        &mut events,
        &mut log,
        "the target's replica complete",
        Duration::from_secs(120),
        |log| {
            log.iter()
                .any(|e| e.program == program && e.kind == Kind::ReplicaComplete)
        },
    )
    .await?;
    // Nothing else reached the home's engine over the bulk path: no console played.
    let connections = bulk_connections(&home)? - before;
    assert!(
        (1..=4).contains(&connections),
        "{connections} bulk connections for 16 copied segments"
    );
    target.shutdown().await;
    home.shutdown().await;
    let (segments, _) = engine_segments(&target_dir, 1, program).await?;
    assert_eq!(segments.len(), 16);
    let copied: Vec<u8> = segments.into_values().flatten().collect();
    assert!(
        copied == bytes,
        "the replica's bytes are not the bytes ingested"
    );
    Ok(())
}

/// Sends a copy request for `segment` with `token` on a new copy connection of `key`'s to the
/// engine at `addr`; its answer, and whether the engine then closed the connection.
async fn copy_reply(
    (key, engine, addr): (&Keypair, libp2p::PeerId, std::net::SocketAddr),
    segment: SegmentId,
    token: Option<Vec<u8>>,
) -> Result<(CopyReply, bool)> {
    let mut conn = Connector::of(key, engine, Exchange::Copy)?
        .connect(addr)
        .await?;
    let request = CopyRequest {
        segment,
        token: token.map(serde_bytes::ByteBuf::from),
        offset: 0,
        verified: true,
    };
    write_frame(&mut conn, &request).await?;
    let reply = read_frame(&mut conn, vodmesh_proto::copy::MAX_FRAME).await?;
    let mut rest = Vec::new();
    let closed = matches!(conn.read_to_end(&mut rest).await, Ok(0) | Err(_));
    Ok((reply, closed))
}

/// What a stranger gains from a copy connection to an engine: nothing a libp2p copy stream
/// would give it. The engine reads the peer id from the TLS certificate, so no token, a
/// console token, another peer's engine token and a valid engine token of a peer no live
/// station lists are each refused with the reason a libp2p stream gets, nothing else is sent,
/// and the connection is closed. Control: the same stranger streams the segment over a bulk
/// connection of the stream exchange with its console token (the listener serves it; a copy
/// it is not approved for is what it lacks). The approved case, a station's engine copying,
/// is [`an_engine_copies_over_bulk_connections_it_keeps`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_over_a_bulk_connection_needs_an_approved_engine_token() -> Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let issuer = Issuer::generate();
    let (station, bytes, segment, (engine, addr)) =
        one_segment(dir.path(), &issuer, ("guarded", 37)).await?;
    let mallory = Keypair::generate_ed25519();
    let me = mallory.public().to_peer_id();
    let mint = |subject, audience| {
        issuer.issue(subject, audience, Rights::All, now_ms(), now_ms() + 600_000)
    };
    let cases = [
        (
            None,
            "no engine token: enroll the station first (vodmesh enroll)",
        ),
        (
            Some(mint(me, Audience::Console)?),
            "wrong token kind: console token, expected engine token",
        ),
        (
            Some(mint(libp2p::PeerId::random(), Audience::Engine)?),
            "token belongs to another peer",
        ),
        (
            Some(mint(me, Audience::Engine)?),
            "not an engine of a live station known to this station",
        ),
    ];
    for (token, why) in cases {
        let (reply, closed) = copy_reply((&mallory, engine, addr), segment, token).await?;
        assert_eq!(reply, CopyReply::Refused(why.into()));
        assert!(closed, "the connection stayed open after a refusal ({why})");
    }
    // Control: the same peer and listener, the stream exchange, its console token: served.
    let mut conn = Connector::new(&mallory, engine)?.connect(addr).await?;
    let token = console_token(&issuer, me)?;
    assert!(stream(&mut conn, segment, token).await? == bytes);
    station.shutdown().await;
    Ok(())
}
