//! The director's view of engine load is exact: a stream being served shows in the station
//! record; a console that goes away mid-segment leaves the count at zero; an engine at
//! `--max-streams` answers busy.

use std::time::Duration;

use anyhow::Result;
use futures::AsyncReadExt;
use libp2p::PeerId;
use vodmesh_node::Station;
use vodmesh_proto::stream::StreamReply;
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::Issuer;
use vodmesh_proto::{ProgramId, SegmentId};
use vodmesh_tests::console::{Console, credentials, read_rest};
use vodmesh_tests::media::random_file;
use vodmesh_tests::swarm::{self, ingest_options, init_logging};
use vodmesh_tests::wait;
use vodmesh_tools::ingest::{self, IngestOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_counts_are_exact_and_max_streams_is_enforced() -> Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("home");
    let issuer = Issuer::generate();
    let station = swarm::station(&data)
        .content_home()
        .trusting(&issuer)
        .with(|c| c.max_streams = 1)
        .start()
        .await?;
    let source = dir.path().join("p.bin");
    random_file(&source, 16 * 1024 * 1024, 5)?;
    let key = data.join("identity.key");
    let info = ingest::run(&IngestOptions {
        publish_at_ms: Some(now_ms()),
        ..ingest_options(&station, &key, "load", source)
    })
    .await?;

    let console = Console::connect(station.addr(), Some(&issuer)).await?;
    let engine = station.engines[0].clone();
    console.reach(engine.peer_id, &engine.addrs).await?;
    let load = |n: u32| vec![(engine.peer_id, n)];
    assert_eq!(console.streams().await?, load(0));

    // A console that asks for a 4 MiB segment and never reads: the engine keeps streaming
    // (held by backpressure) and the director counts it.
    let segment = |index| console.request(SegmentId::new(info.program, index), 0, 0);
    let (open, reply) = console.ask(engine.peer_id, &segment(0)).await?;
    assert!(matches!(reply, StreamReply::Streaming { .. }));
    wait::until(
        "the director to count the stream",
        Duration::from_secs(10),
        || async { Ok(console.streams().await? == load(1)) },
    )
    .await?;

    // A second console is answered busy (a wait, not a refusal): the engine is at
    // --max-streams 1.
    let (_second, reply) = console.ask(engine.peer_id, &segment(1)).await?;
    assert_eq!(reply, StreamReply::Busy);

    // The first console goes away mid-segment (its stream is dropped, which resets it): the
    // count returns to zero.
    drop(open);
    wait::until(
        "the stream to be counted out",
        Duration::from_secs(20),
        || async { Ok(console.streams().await? == load(0)) },
    )
    .await?;

    // Claims 16 and 17: a Locate tells the chosen engine to preload; the engine reports the
    // takeover and the stop of every stream, early or complete.
    let location = console.locate(info.program, 2, false).await?;
    assert_eq!(location.engine, engine.peer_id);
    console
        .stream(engine.peer_id, SegmentId::new(info.program, 2))
        .await?;
    wait::until(
        "the complete stop to be reported",
        Duration::from_secs(10),
        || async {
            let a = console.activity().await?;
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
    issuer: Issuer,
    program: ProgramId,
    bytes: Vec<u8>,
}

impl Bench {
    async fn start(max_streams: u32) -> Result<Self> {
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
    ) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("home");
        let issuer = Issuer::generate();
        // The station's own auth server issues its engines' tokens (copies need them); the
        // test's issuer signs console tokens.
        let station = swarm::station(&data)
            .engines(3)
            .home()
            .trusting(&issuer)
            .with(|c| {
                c.max_streams = max_streams;
                c.copy_rate_mbps = copy_rate_mbps;
            })
            .start()
            .await?;
        let source = dir.path().join("p.bin");
        let bytes = random_file(&source, len, 9)?;
        let key = data.join("identity.key");
        let info = ingest::run(&IngestOptions {
            publish_at_ms: Some(now_ms()),
            segment_size,
            ..ingest_options(&station, &key, "one segment", source)
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
    async fn console(&self) -> Result<Console> {
        Console::connect(self.station.addr(), Some(&self.issuer)).await
    }

    /// Waits until the director counts `want` streams on each engine named.
    async fn wait_load(&self, console: &Console, want: &[(PeerId, u32)]) -> Result<()> {
        wait::until(
            "the director's stream counts",
            Duration::from_secs(20),
            || async {
                let load = console.streams().await?;
                Ok(want.iter().all(|w| load.contains(w)))
            },
        )
        .await
    }

    /// Asks the director where segment 0 is and opens a stream there as `console`; returns
    /// the engine, the stream, and the size the engine announced.
    async fn start_segment(&self, console: &Console) -> Result<(PeerId, libp2p::Stream, u64)> {
        let location = console.locate(self.program, 0, false).await?;
        console.reach(location.engine, &location.addrs).await?;
        let request = console.request(SegmentId::new(self.program, 0), 0, 0);
        match console.ask(location.engine, &request).await? {
            (s, StreamReply::Streaming { size, .. }) => Ok((location.engine, s, size)),
            (_, StreamReply::Refused(why)) => anyhow::bail!("refused: {why}"),
            (_, StreamReply::Swap { filled }) => anyhow::bail!("swap at {filled}"),
            (_, other) => anyhow::bail!("unexpected {other:?}"),
        }
    }
}

/// Claims 19, 20: with `--max-streams 1`, three consoles on one segment are served by three
/// engines: each new console finds every holder at its limit, and the director has an idle
/// engine copy the segment from a holder and takes the console there at once, streaming the
/// segment as it arrives. Every console gets the ingested bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overloaded_engines_replicate_to_idle_ones() -> Result<()> {
    init_logging();
    let bench = Bench::start(1).await?;
    let (c1, c2, c3) = (
        bench.console().await?,
        bench.console().await?,
        bench.console().await?,
    );
    // Each console holds its stream open without reading to the end (backpressure keeps the
    // engine's slot taken) while the next one asks.
    let (e1, s1, _) = bench.start_segment(&c1).await?;
    bench.wait_load(&c1, &[(e1, 1)]).await?;
    let (e2, mut s2, _) = bench.start_segment(&c2).await?;
    let mut head = vec![0u8; 1024];
    s2.read_exact(&mut head).await?;
    bench.wait_load(&c1, &[(e1, 1), (e2, 1)]).await?;
    let (e3, s3, _) = bench.start_segment(&c3).await?;
    let engines: std::collections::BTreeSet<_> = [e1, e2, e3].into_iter().collect();
    assert_eq!(engines.len(), 3, "three engines serve the three consoles");
    assert_eq!(read_rest(s3).await?, bench.bytes);
    let mut second = head;
    second.extend(read_rest(s2).await?);
    assert_eq!(second, bench.bytes);
    assert_eq!(read_rest(s1).await?, bench.bytes);
    let activity = c1.activity().await?;
    assert_eq!(activity.replications, 2);
    // The copies are complete locations now: a fourth console is served without a new copy.
    bench.wait_load(&c1, &[(e1, 0), (e2, 0), (e3, 0)]).await?;
    let c4 = bench.console().await?;
    let (_, s4, _) = bench.start_segment(&c4).await?;
    assert_eq!(read_rest(s4).await?, bench.bytes);
    assert_eq!(c1.activity().await?.replications, 2);
    // `vodmesh status` shows them.
    let status = vodmesh_tools::status::fetch(bench.station.addr()).await?;
    let json = vodmesh_tools::status::to_json(&status);
    assert_eq!(json["stations"][0]["activity"]["replications"], 2, "{json}");
    assert!(vodmesh_tools::status::to_text(&status).contains("replications 2"));
    bench.station.shutdown().await;
    Ok(())
}

/// A console's word that every holder answered it busy starts an overload copy only where
/// the director's own count bears it out: a peer naming an idle holder busy, segment after
/// segment, would otherwise have the station copy every segment onto every engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_named_busy_while_idle_is_named_again_and_copied_nowhere() -> Result<()> {
    init_logging();
    let bench = Bench::start(4).await?;
    let liar = bench.console().await?;
    let holder = liar.locate(bench.program, 0, false).await?.engine;
    for _ in 0..5 {
        let location = (liar.locate_busy(bench.program, 0, vec![holder])).await?;
        assert_eq!(location.engine, holder, "an idle holder is named again");
    }
    assert_eq!(liar.activity().await?.replications, 0);

    // Control: with the holder at three of its four streams, the word is borne out: an
    // idle engine takes a copy and the console.
    let consoles = [
        bench.console().await?,
        bench.console().await?,
        bench.console().await?,
    ];
    let mut held = Vec::new();
    for console in &consoles {
        let (engine, stream, _) = bench.start_segment(console).await?;
        assert_eq!(engine, holder);
        held.push(stream);
    }
    bench.wait_load(&liar, &[(holder, 3)]).await?;
    let honest = bench.console().await?;
    let location = (honest.locate_busy(bench.program, 0, vec![holder])).await?;
    assert_ne!(location.engine, holder);
    assert_eq!(liar.activity().await?.replications, 1);
    for stream in held {
        assert_eq!(read_rest(stream).await?, bench.bytes);
    }
    bench.station.shutdown().await;
    Ok(())
}

/// Claim 18: of two engines holding a segment, the director sends a new console to the one
/// with fewer streams, whichever it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_console_goes_to_the_least_loaded_holder() -> Result<()> {
    init_logging();
    let bench = Bench::start(2).await?;
    let consoles = [
        bench.console().await?,
        bench.console().await?,
        bench.console().await?,
    ];
    // Two consoles fill the first holder (a); the third makes a second holder (b).
    let (a, s1, _) = bench.start_segment(&consoles[0]).await?;
    let (a2, s2, _) = bench.start_segment(&consoles[1]).await?;
    assert_eq!(a, a2);
    bench.wait_load(&consoles[0], &[(a, 2)]).await?;
    let (b, s3, _) = bench.start_segment(&consoles[2]).await?;
    assert_ne!(a, b);
    assert_eq!(read_rest(s3).await?, bench.bytes);
    // a serves one console, b none: the next console goes to b, though a has room.
    assert_eq!(read_rest(s2).await?, bench.bytes);
    bench.wait_load(&consoles[0], &[(a, 1), (b, 0)]).await?;
    let c4 = bench.console().await?;
    let (to, s4, _) = bench.start_segment(&c4).await?;
    assert_eq!(to, b, "the idle holder is chosen");
    // Now b serves one and a, once its console finishes, none: the next goes to a.
    assert_eq!(read_rest(s1).await?, bench.bytes);
    bench.wait_load(&consoles[0], &[(a, 0), (b, 1)]).await?;
    let c5 = bench.console().await?;
    let (to, s5, _) = bench.start_segment(&c5).await?;
    assert_eq!(to, a, "the idle holder is chosen");
    assert_eq!(read_rest(s4).await?, bench.bytes);
    assert_eq!(read_rest(s5).await?, bench.bytes);
    assert_eq!(consoles[0].activity().await?.replications, 1);
    bench.station.shutdown().await;
    Ok(())
}

/// The viewer's keys, as `play` takes them: a seek lands in the right segment and plays on
/// byte-identical from there, a pause holds playback, and quitting stops it with no stream
/// left open on any engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seek_pause_and_quit_steer_playback() -> Result<()> {
    use vodmesh_console::play::{self, Control, Session, Speed};
    init_logging();
    const MIB: usize = 1024 * 1024;
    let bench = Bench::with_program(4, 8 * MIB, MIB as u64, 0).await?;
    let credentials = credentials(&bench.issuer)?;
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
                // Part of what is tested: the viewer pauses for 300 ms.
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
    let director = bench.console().await?;
    wait::until("every stream to stop", Duration::from_secs(20), || async {
        Ok(director.activity().await?.active == 0)
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
async fn a_swap_exchanges_consoles_between_engines() -> Result<()> {
    init_logging();
    // Copies between engines at 2 Mbit/s: the 3 MiB segment takes 12 s to copy, and the
    // copy reaches 2 MiB (x's seek) only after 8 s, however slow a loaded machine makes the
    // steps before the seek.
    let bench = Bench::with_program(2, 3 * 1024 * 1024, ingest::DEFAULT_SEGMENT_SIZE, 2).await?;
    let (x, y1, y2) = (
        bench.console().await?,
        bench.console().await?,
        bench.console().await?,
    );
    // y1 and y2 fill the holder (e); x's request makes an idle engine (f) copy it.
    let (e, mut s1, _) = bench.start_segment(&y1).await?;
    let mut got1 = vec![0u8; 64 * 1024];
    s1.read_exact(&mut got1).await?;
    let (_, s2, _) = bench.start_segment(&y2).await?;
    bench.wait_load(&x, &[(e, 2)]).await?;
    let program = bench.program;
    let filling = x.locate(program, 0, false).await?;
    let f = filling.engine;
    assert!(filling.filling && f != e);
    // x seeks to byte 2 MiB, which f has not received: f hands x back.
    x.reach(f, &filling.addrs).await?;
    let seek = x.request(SegmentId::new(program, 0), 0, 2 * 1024 * 1024);
    let (s, reply) = x.ask(f, &seek).await?;
    assert!(matches!(reply, StreamReply::Swap { filled } if filled < 2 * 1024 * 1024));
    drop(s);
    // y2 leaves; e serves y1 alone. Taking x would leave e two streams above f: y1 goes to f.
    drop(s2);
    bench.wait_load(&x, &[(e, 1)]).await?;
    let complete = x.locate(program, 0, true).await?;
    assert!(complete.swap && complete.engine == e);
    x.reach(e, &complete.addrs).await?;
    let (s, reply) = x.ask(e, &seek).await?;
    assert!(matches!(reply, StreamReply::Streaming { .. }));
    assert_eq!(read_rest(s).await?, bench.bytes);
    // y1's stream from e ends early; its director sends it to f, where it resumes.
    got1.extend(read_rest(s1).await?);
    assert!(got1.len() < bench.bytes.len(), "y1 was not handed over");
    let resume = y1.locate(program, 0, false).await?;
    assert_eq!(resume.engine, f, "y1 resumes at the filling engine");
    y1.reach(f, &resume.addrs).await?;
    let rest = y1.request(SegmentId::new(program, 0), got1.len() as u64, 0);
    let (s, reply) = y1.ask(f, &rest).await?;
    assert!(matches!(reply, StreamReply::Streaming { .. }));
    got1.extend(read_rest(s).await?);
    assert!(got1 == bench.bytes, "y1's bytes differ after the exchange");
    let activity = x.activity().await?;
    assert_eq!((activity.swaps, activity.exchanges), (1, 1), "{activity:?}");
    bench.station.shutdown().await;
    Ok(())
}

/// A console at `--speed max` keeps eight segments in flight; where one engine holds them all
/// and the console streams over libp2p (the engine is behind `--announce`, so its director
/// names no bulk address), each fetch ahead that waits for the player holds its stream
/// (yamux's window takes little of a 2 MiB segment). The engine's share of one peer's streams
/// covers that window: the play is byte for byte, with no busy answer to wait out. With a
/// share of four, the refused segment's stream went to later segments as it freed, and the
/// play waited 30 s at a time for the engine to cut the streams nobody read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_with_every_segment_on_one_engine_is_never_refused_its_window() -> Result<()> {
    use vodmesh_tests::process::free_port;
    init_logging();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("home");
    let issuer = Issuer::generate();
    // Announced at the address it listens on: reachable, and no bulk address is named. Its
    // engine listens on the port after it, which another process may hold: another port then.
    let mut started = Err(anyhow::anyhow!("not started"));
    for _ in 0..5 {
        let at: libp2p::Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", free_port()?).parse()?;
        started = swarm::station(&data)
            .content_home()
            .trusting(&issuer)
            .with(|c| {
                c.listen = vec![at.clone()];
                c.announce = vec![at.clone()];
            })
            .start()
            .await;
        if started.is_ok() {
            break;
        }
    }
    let station = started?;
    let source = dir.path().join("p.bin");
    let bytes = random_file(&source, 32 * 1024 * 1024, 41)?;
    let key = data.join("identity.key");
    let info = ingest::run(&IngestOptions {
        publish_at_ms: Some(now_ms()),
        segment_size: 2 * 1024 * 1024,
        ..ingest_options(&station, &key, "window", source)
    })
    .await?;
    let console = Console::connect(station.addr(), Some(&issuer)).await?;
    let location = console.locate(info.program, 0, false).await?;
    anyhow::ensure!(location.bulk.is_none(), "a bulk address was named");

    let mut out = Vec::new();
    let play = vodmesh_tests::console::play_max(station.addr(), &issuer, info.program, &mut out);
    let stats = tokio::time::timeout(Duration::from_secs(60), play)
        .await
        .map_err(|_| anyhow::anyhow!("a 32 MiB play at --speed max did not end within 60 s"))??;
    assert!(out == bytes, "the bytes played are not the bytes ingested");
    assert_eq!(stats.waits, 0, "busy answers waited out: {stats:?}");
    station.shutdown().await;
    Ok(())
}
