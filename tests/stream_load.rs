//! The director's view of engine load is exact: a stream being served shows in the station
//! record; a console that goes away mid-segment leaves the count at zero; an engine at
//! `--max-streams` answers busy.

use std::time::Duration;

use futures::AsyncReadExt;

use vodmesh_client::DirectorClient;
use vodmesh_node::{Station, StationConfig};
use vodmesh_proto::SegmentId;
use vodmesh_proto::codec::{read_frame, write_frame};
use vodmesh_proto::director::{Request, Response};
use vodmesh_proto::station::StationRecord;
use vodmesh_proto::stream::{self, StreamReply, StreamRequest};
use vodmesh_proto::time::now_ms;
use vodmesh_tests::{init_logging, random_file, wait_until};
use vodmesh_tools::ingest::{self, IngestOptions};

async fn streams(client: &DirectorClient) -> anyhow::Result<Vec<u32>> {
    match client.request(Request::Station).await? {
        Response::Station(s) => Ok(StationRecord::verify(&s, now_ms())?
            .engines
            .iter()
            .map(|e| e.streams)
            .collect()),
        other => anyhow::bail!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_counts_are_exact_and_max_streams_is_enforced() -> anyhow::Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("home");
    let mut config = StationConfig::new(&data);
    config.engines = 1;
    config.home = true;
    config.content_manager = true;
    config.max_streams = 1;
    let issuer = vodmesh_proto::token::Issuer::generate();
    config.trust = vec![issuer.public()];
    let station = Station::start(config).await?;
    let source = dir.path().join("p.bin");
    random_file(&source, 16 * 1024 * 1024, 5)?;
    let info = ingest::run(&IngestOptions {
        node: station.addr().clone(),
        key: data.join("identity.key"),
        title: "load".into(),
        publish_at_ms: Some(now_ms()),
        replicas: 0,
        segment_size: ingest::DEFAULT_SEGMENT_SIZE,
        bitrate: ingest::DEFAULT_BITRATE,
        source,
        progress: false,
    })
    .await?;

    let console = libp2p::identity::Keypair::generate_ed25519();
    let token = vodmesh_tests::console_token(&issuer, console.public().to_peer_id())?;
    let token = Some(serde_bytes::ByteBuf::from(token));
    let client = DirectorClient::connect(station.addr(), Some(console)).await?;
    let engine = station.engines[0].clone();
    client
        .add_addresses(engine.peer_id, engine.addrs.clone())
        .await?;
    assert_eq!(streams(&client).await?, vec![0]);

    // A console that asks for a 4 MiB segment and never reads: the engine keeps streaming
    // (held by backpressure) and the director counts it.
    let mut open = client.open_stream(engine.peer_id, stream::PROTOCOL).await?;
    write_frame(
        &mut open,
        &StreamRequest {
            segment: SegmentId::new(info.program, 0),
            offset: 0,
            token: token.clone(),
            play_from: 0,
        },
    )
    .await?;
    let reply: StreamReply = read_frame(&mut open, stream::MAX_FRAME).await?;
    assert!(matches!(reply, StreamReply::Streaming { .. }));
    wait_until(
        "the director to count the stream",
        Duration::from_secs(10),
        || async { Ok(streams(&client).await? == vec![1]) },
    )
    .await?;

    // A second console is answered busy (a wait, not a refusal): the engine is at
    // --max-streams 1.
    let mut second = client.open_stream(engine.peer_id, stream::PROTOCOL).await?;
    write_frame(
        &mut second,
        &StreamRequest {
            segment: SegmentId::new(info.program, 1),
            offset: 0,
            token: token.clone(),
            play_from: 0,
        },
    )
    .await?;
    let reply: StreamReply = read_frame(&mut second, stream::MAX_FRAME).await?;
    assert_eq!(reply, StreamReply::Busy);

    // The first console goes away mid-segment (its stream is dropped, which resets it): the
    // count returns to zero.
    drop(open);
    wait_until(
        "the stream to be counted out",
        Duration::from_secs(20),
        || async { Ok(streams(&client).await? == vec![0]) },
    )
    .await?;

    // Claims 16 and 17: a Locate tells the chosen engine to preload; the engine reports the
    // takeover and the stop of every stream, early or complete.
    let location = match client
        .request(Request::Locate {
            program: info.program,
            index: 2,
            complete: false,
            avoid: Vec::new(),
            busy: Vec::new(),
        })
        .await?
    {
        Response::Location(l) => l,
        other => anyhow::bail!("unexpected {other:?}"),
    };
    assert_eq!(location.engine, engine.peer_id);
    let mut full = client.open_stream(engine.peer_id, stream::PROTOCOL).await?;
    write_frame(
        &mut full,
        &StreamRequest {
            segment: SegmentId::new(info.program, 2),
            offset: 0,
            token: token.clone(),
            play_from: 0,
        },
    )
    .await?;
    let StreamReply::Streaming { size, .. } = read_frame(&mut full, stream::MAX_FRAME).await?
    else {
        anyhow::bail!("refused");
    };
    let mut got = Vec::new();
    full.read_to_end(&mut got).await?;
    assert_eq!(got.len() as u64, size);
    wait_until(
        "the complete stop to be reported",
        Duration::from_secs(10),
        || async {
            let a = match client.request(Request::Activity).await? {
                Response::Activity(a) => a,
                other => anyhow::bail!("unexpected {other:?}"),
            };
            Ok(a.preloads == 1
                && a.takeovers == 2
                && a.stops_early == 1
                && a.stops_complete == 1
                && a.active == 0)
        },
    )
    .await?;
    station.shutdown().await;
    Ok(())
}

/// A home station with three engines, a one-segment program, and an issuer of console tokens.
struct Bench {
    _dir: tempfile::TempDir,
    station: Station,
    issuer: vodmesh_proto::token::Issuer,
    program: vodmesh_proto::ProgramId,
    bytes: Vec<u8>,
}

impl Bench {
    async fn start(max_streams: u32) -> anyhow::Result<Self> {
        Self::with_program(
            max_streams,
            3 * 1024 * 1024,
            ingest::DEFAULT_SEGMENT_SIZE,
            0,
        )
        .await
    }

    /// `copy_rate_mbps`: the pace of copies between the station's engines (0: unpaced).
    async fn with_program(
        max_streams: u32,
        len: usize,
        segment_size: u64,
        copy_rate_mbps: u32,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("home");
        let mut config = StationConfig::new(&data);
        config.engines = 3;
        config.home = true;
        config.content_manager = true;
        // The station's own auth server issues its engines' tokens (copies need them); the
        // test's issuer signs console tokens.
        config.auth = true;
        config.max_streams = max_streams;
        config.copy_rate_mbps = copy_rate_mbps;
        let issuer = vodmesh_proto::token::Issuer::generate();
        config.trust = vec![issuer.public()];
        let station = Station::start(config).await?;
        vodmesh_tests::wait_engine_tokens(&station).await?;
        let source = dir.path().join("p.bin");
        let bytes = random_file(&source, len, 9)?;
        let info = ingest::run(&IngestOptions {
            node: station.addr().clone(),
            key: data.join("identity.key"),
            title: "one segment".into(),
            publish_at_ms: Some(now_ms()),
            replicas: 0,
            segment_size,
            bitrate: ingest::DEFAULT_BITRATE,
            source,
            progress: false,
        })
        .await?;
        Ok(Self {
            _dir: dir,
            station,
            issuer,
            program: info.program,
            bytes,
        })
    }

    /// A new console: its own identity, connection and token.
    async fn console(&self) -> anyhow::Result<Console> {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let token = vodmesh_tests::console_token(&self.issuer, key.public().to_peer_id())?;
        Ok(Console {
            client: DirectorClient::connect(self.station.addr(), Some(key)).await?,
            token: serde_bytes::ByteBuf::from(token),
            program: self.program,
        })
    }

    /// Streams per engine, in the director's view, by engine peer id.
    async fn load(&self, client: &DirectorClient) -> anyhow::Result<Vec<(libp2p::PeerId, u32)>> {
        match client.request(Request::Station).await? {
            Response::Station(s) => Ok(StationRecord::verify(&s, now_ms())?
                .engines
                .iter()
                .map(|e| (e.peer_id, e.streams))
                .collect()),
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }

    /// Waits until the director counts `want` streams on each engine named.
    async fn wait_load(
        &self,
        client: &DirectorClient,
        want: &[(libp2p::PeerId, u32)],
    ) -> anyhow::Result<()> {
        wait_until(
            "the director's stream counts",
            Duration::from_secs(20),
            || async {
                let load = self.load(client).await?;
                Ok(want.iter().all(|w| load.contains(w)))
            },
        )
        .await
    }

    async fn activity(
        &self,
        client: &DirectorClient,
    ) -> anyhow::Result<vodmesh_proto::director::Activity> {
        match client.request(Request::Activity).await? {
            Response::Activity(a) => Ok(a),
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
}

struct Console {
    client: DirectorClient,
    token: serde_bytes::ByteBuf,
    program: vodmesh_proto::ProgramId,
}

impl Console {
    /// Asks the director where segment 0 is and opens a stream there; returns the engine,
    /// the stream, and the size the engine announced.
    async fn start(&self) -> anyhow::Result<(libp2p::PeerId, libp2p::Stream, u64)> {
        let location = match self
            .client
            .request(Request::Locate {
                program: self.program,
                index: 0,
                complete: false,
                avoid: Vec::new(),
                busy: Vec::new(),
            })
            .await?
        {
            Response::Location(l) => l,
            other => anyhow::bail!("unexpected {other:?}"),
        };
        self.client
            .add_addresses(location.engine, location.addrs.clone())
            .await?;
        let mut s = self
            .client
            .open_stream(location.engine, stream::PROTOCOL)
            .await?;
        write_frame(
            &mut s,
            &StreamRequest {
                segment: SegmentId::new(self.program, 0),
                offset: 0,
                token: Some(self.token.clone()),
                play_from: 0,
            },
        )
        .await?;
        match read_frame(&mut s, stream::MAX_FRAME).await? {
            StreamReply::Streaming { size, .. } => Ok((location.engine, s, size)),
            StreamReply::Refused(why) => anyhow::bail!("refused: {why}"),
            StreamReply::Swap { filled } => anyhow::bail!("swap at {filled}"),
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
}

/// Reads the rest of a stream.
async fn rest(mut s: libp2p::Stream) -> anyhow::Result<Vec<u8>> {
    let mut got = Vec::new();
    s.read_to_end(&mut got).await?;
    Ok(got)
}

/// Claims 19, 20: with `--max-streams 1`, three consoles on one segment are served by three
/// engines: each new console finds every holder at its limit, and the director has an idle
/// engine copy the segment from a holder and takes the console there at once, streaming the
/// segment as it arrives. Every console gets the ingested bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overloaded_engines_replicate_to_idle_ones() -> anyhow::Result<()> {
    init_logging();
    let bench = Bench::start(1).await?;
    let (c1, c2, c3) = (
        bench.console().await?,
        bench.console().await?,
        bench.console().await?,
    );
    // Each console holds its stream open without reading to the end (backpressure keeps the
    // engine's slot taken) while the next one asks.
    let (e1, s1, _) = c1.start().await?;
    bench.wait_load(&c1.client, &[(e1, 1)]).await?;
    let (e2, mut s2, _) = c2.start().await?;
    let mut head = vec![0u8; 1024];
    s2.read_exact(&mut head).await?;
    bench.wait_load(&c1.client, &[(e1, 1), (e2, 1)]).await?;
    let (e3, s3, _) = c3.start().await?;
    let engines: std::collections::BTreeSet<_> = [e1, e2, e3].into_iter().collect();
    assert_eq!(engines.len(), 3, "three engines serve the three consoles");
    assert_eq!(rest(s3).await?, bench.bytes);
    let mut second = head;
    second.extend(rest(s2).await?);
    assert_eq!(second, bench.bytes);
    assert_eq!(rest(s1).await?, bench.bytes);
    let activity = bench.activity(&c1.client).await?;
    assert_eq!(activity.replications, 2);
    // The copies are complete locations now: a fourth console is served without a new copy.
    bench
        .wait_load(&c1.client, &[(e1, 0), (e2, 0), (e3, 0)])
        .await?;
    let c4 = bench.console().await?;
    let (_, s4, _) = c4.start().await?;
    assert_eq!(rest(s4).await?, bench.bytes);
    assert_eq!(bench.activity(&c1.client).await?.replications, 2);
    // `vodmesh status` shows them.
    let status = vodmesh_tools::status::fetch(bench.station.addr()).await?;
    let json = vodmesh_tools::status::to_json(&status);
    assert_eq!(json["stations"][0]["activity"]["replications"], 2, "{json}");
    assert!(vodmesh_tools::status::to_text(&status).contains("replications 2"));
    bench.station.shutdown().await;
    Ok(())
}

/// Claim 18: of two engines holding a segment, the director sends a new console to the one
/// with fewer streams, whichever it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_console_goes_to_the_least_loaded_holder() -> anyhow::Result<()> {
    init_logging();
    let bench = Bench::start(2).await?;
    let consoles = [
        bench.console().await?,
        bench.console().await?,
        bench.console().await?,
    ];
    // Two consoles fill the first holder (a); the third makes a second holder (b).
    let (a, s1, _) = consoles[0].start().await?;
    let (a2, s2, _) = consoles[1].start().await?;
    assert_eq!(a, a2);
    bench.wait_load(&consoles[0].client, &[(a, 2)]).await?;
    let (b, s3, _) = consoles[2].start().await?;
    assert_ne!(a, b);
    assert_eq!(rest(s3).await?, bench.bytes);
    // a serves one console, b none: the next console goes to b, though a has room.
    assert_eq!(rest(s2).await?, bench.bytes);
    bench
        .wait_load(&consoles[0].client, &[(a, 1), (b, 0)])
        .await?;
    let c4 = bench.console().await?;
    let (to, s4, _) = c4.start().await?;
    assert_eq!(to, b, "the idle holder is chosen");
    // Now b serves one and a, once its console finishes, none: the next goes to a.
    assert_eq!(rest(s1).await?, bench.bytes);
    bench
        .wait_load(&consoles[0].client, &[(a, 0), (b, 1)])
        .await?;
    let c5 = bench.console().await?;
    let (to, s5, _) = c5.start().await?;
    assert_eq!(to, a, "the idle holder is chosen");
    assert_eq!(rest(s4).await?, bench.bytes);
    assert_eq!(rest(s5).await?, bench.bytes);
    assert_eq!(bench.activity(&consoles[0].client).await?.replications, 1);
    bench.station.shutdown().await;
    Ok(())
}

/// The viewer's keys, as `play` takes them: a seek lands in the right segment and plays on
/// byte-identical from there, a pause holds playback, and quitting stops it with no stream
/// left open on any engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seek_pause_and_quit_steer_playback() -> anyhow::Result<()> {
    use vodmesh_console::play::{self, Control, Credentials, Session, Speed};
    init_logging();
    const MIB: usize = 1024 * 1024;
    let bench = Bench::with_program(4, 8 * MIB, MIB as u64, 0).await?;
    let key = libp2p::identity::Keypair::generate_ed25519();
    let token = vodmesh_tests::console_token(&bench.issuer, key.public().to_peer_id())?;
    let credentials = Credentials {
        key: Some(key),
        token: std::sync::Arc::new(std::sync::RwLock::new(Some(token))),
    };
    let program = bench.program.to_string();
    let session = Session::open(bench.station.addr(), &credentials, &program).await?;
    let segment_ms = i64::from(session.manifest().content.segments[0].duration_ms);

    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut stage = 0;
    let mut paused_at = None;
    let mut out = Vec::new();
    let stats = play::play(
        bench.station.addr(),
        &credentials,
        &program,
        0.0,
        Speed::Max,
        &mut out,
        Some(rx),
        |p| match (stage, p.stats.segments) {
            // After segments 0 and 1: forward by two and a half segments, into segment 4.
            (0, 2) => {
                stage = 1;
                let _ = tx.try_send(Control::Seek(segment_ms * 5 / 2));
            }
            // Segment 4 written: pause; resume a moment later.
            (1, 3) => {
                stage = 2;
                let _ = tx.try_send(Control::TogglePause);
                paused_at = Some(std::time::Instant::now());
                let tx = tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let _ = tx.send(Control::TogglePause).await;
                });
            }
            // Segment 5 written: quit.
            (2, 4) => {
                stage = 3;
                let _ = tx.try_send(Control::Quit);
            }
            _ => {}
        },
    )
    .await?;
    let resumed_after = paused_at.map(|t| t.elapsed());
    assert!(
        stats.quit && stats.seeks == 1 && stats.segments == 4,
        "{stats:?}"
    );
    // The seek went from 2 segments to 4.5: half-way into segment 4 (plain bytes are entered
    // at the byte of the time sought).
    let target_ms = (2 * segment_ms + segment_ms * 5 / 2) as u64;
    let within = (target_ms - 4 * segment_ms as u64) * MIB as u64 / segment_ms as u64;
    let mut want = bench.bytes[..2 * MIB].to_vec();
    want.extend_from_slice(&bench.bytes[4 * MIB + within as usize..6 * MIB]);
    assert!(
        out == want,
        "played bytes are not segments 0, 1, the rest of 4, and 5"
    );
    assert!(resumed_after.is_some_and(|d| d >= Duration::from_millis(300)));
    // Quitting left no stream open: the segments in flight were dropped and their engines
    // reported the stops.
    let client = bench.console().await?.client;
    wait_until("every stream to stop", Duration::from_secs(20), || async {
        Ok(bench.activity(&client).await?.active == 0)
    })
    .await?;
    bench.station.shutdown().await;
    Ok(())
}

/// Claims 21, 22: a console (x) seeks past what a filling copy holds and is swapped to the
/// engine with the whole segment; that engine was streaming the segment to another console
/// (y), which is behind the fill, so the engines exchange consoles: y resumes at the filling
/// engine from the byte it had reached. Both get the ingested bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_exchanges_consoles_between_engines() -> anyhow::Result<()> {
    init_logging();
    // Copies between engines at 8 Mbit/s: the 3 MiB segment takes three seconds to copy.
    let bench = Bench::with_program(2, 3 * 1024 * 1024, ingest::DEFAULT_SEGMENT_SIZE, 8).await?;
    let (x, y1, y2) = (
        bench.console().await?,
        bench.console().await?,
        bench.console().await?,
    );
    // y1 and y2 fill the holder (e); x's request makes an idle engine (f) copy it.
    let (e, mut s1, _) = y1.start().await?;
    let mut got1 = vec![0u8; 64 * 1024];
    s1.read_exact(&mut got1).await?;
    let (_, s2, _) = y2.start().await?;
    bench.wait_load(&x.client, &[(e, 2)]).await?;
    let at = |complete| Request::Locate {
        program: x.program,
        index: 0,
        complete,
        avoid: Vec::new(),
        busy: Vec::new(),
    };
    let Response::Location(filling) = x.client.request(at(false)).await? else {
        anyhow::bail!("no location");
    };
    let f = filling.engine;
    assert!(filling.filling && f != e);
    // x seeks to byte 2 MiB, which f has not received: f hands x back.
    x.client.add_addresses(f, filling.addrs.clone()).await?;
    let mut s = x.client.open_stream(f, stream::PROTOCOL).await?;
    let request = |play_from| StreamRequest {
        segment: SegmentId::new(x.program, 0),
        offset: 0,
        token: Some(x.token.clone()),
        play_from,
    };
    write_frame(&mut s, &request(2 * 1024 * 1024)).await?;
    let reply: StreamReply = read_frame(&mut s, stream::MAX_FRAME).await?;
    assert!(matches!(reply, StreamReply::Swap { filled } if filled < 2 * 1024 * 1024));
    drop(s);
    // y2 leaves; e serves y1 alone. Taking x would leave e two streams above f: y1 goes to f.
    drop(s2);
    bench.wait_load(&x.client, &[(e, 1)]).await?;
    let Response::Location(complete) = x.client.request(at(true)).await? else {
        anyhow::bail!("no complete location");
    };
    assert!(complete.swap && complete.engine == e);
    x.client.add_addresses(e, complete.addrs.clone()).await?;
    let mut s = x.client.open_stream(e, stream::PROTOCOL).await?;
    write_frame(&mut s, &request(2 * 1024 * 1024)).await?;
    assert!(matches!(
        read_frame(&mut s, stream::MAX_FRAME).await?,
        StreamReply::Streaming { .. }
    ));
    assert_eq!(rest(s).await?, bench.bytes);
    // y1's stream from e ends early; its director sends it to f, where it resumes.
    got1.extend(rest(s1).await?);
    assert!(got1.len() < bench.bytes.len(), "y1 was not handed over");
    let Response::Location(resume) = y1.client.request(at(false)).await? else {
        anyhow::bail!("no location for y1");
    };
    assert_eq!(resume.engine, f, "y1 resumes at the filling engine");
    y1.client.add_addresses(f, resume.addrs.clone()).await?;
    let mut s = y1.client.open_stream(f, stream::PROTOCOL).await?;
    write_frame(
        &mut s,
        &StreamRequest {
            segment: SegmentId::new(y1.program, 0),
            offset: got1.len() as u64,
            token: Some(y1.token.clone()),
            play_from: 0,
        },
    )
    .await?;
    assert!(matches!(
        read_frame(&mut s, stream::MAX_FRAME).await?,
        StreamReply::Streaming { .. }
    ));
    got1.extend(rest(s).await?);
    assert!(got1 == bench.bytes, "y1's bytes differ after the exchange");
    let activity = bench.activity(&x.client).await?;
    assert_eq!((activity.swaps, activity.exchanges), (1, 1), "{activity:?}");
    bench.station.shutdown().await;
    Ok(())
}
