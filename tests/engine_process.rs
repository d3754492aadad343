//! Deployment mode (b) and engine health, with real processes: an engine in a process of its
//! own (`vodmesh-node engine --director MULTIADDR`), attached to a director that trusts its
//! peer id (`--engine-peer`) and holds no engine of its own, takes a program's segments at
//! ingest and serves a console the whole program, byte for byte. An untrusted engine process
//! is refused. The engine process is killed (SIGKILL): within seconds the director marks it
//! down (`vodmesh status`, `/metrics`) and no longer names it for any segment; restarted on
//! the same data directory, it is marked up again; hung (SIGSTOP) it is marked down by the
//! heartbeat's time-out, and resumed it reattaches and serves the console again.

use std::time::Duration;

use anyhow::{Context, Result};
use libp2p::Multiaddr;
use vodmesh_tests::cli::{Ingest, Play, keygen, subscriber};
use vodmesh_tests::console::{Console, wait_holds_all};
use vodmesh_tests::http::metric;
use vodmesh_tests::media::random_file;
use vodmesh_tests::process::{EngineProcess, Node};
use vodmesh_tests::{status, wait};

const MIB: usize = 1024 * 1024;

/// The director's answer to Locate for every segment: the engine peer ids it names.
fn located(node: &Multiaddr, program: &str, segments: u32) -> Result<Vec<String>> {
    let program: vodmesh_proto::ProgramId = program.parse()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let console = Console::connect(node, None).await?;
        let mut named = Vec::new();
        for index in 0..segments {
            let answer = tokio::time::timeout(
                Duration::from_secs(10),
                console.locate(program, index, false),
            )
            .await;
            if let Ok(Ok(l)) = answer {
                named.push(l.engine.to_string());
            }
        }
        Ok(named)
    })
}

/// Waits until the station at `node` lists exactly the engines `want` (peer id, up); the
/// time that took.
fn wait_engines(
    what: &str,
    node: &Multiaddr,
    want: &[(&str, bool)],
    within: u64,
) -> Result<Duration> {
    let mut want: Vec<(String, bool)> = want.iter().map(|(p, up)| (p.to_string(), *up)).collect();
    want.sort();
    wait::blocking(what, Duration::from_secs(within), || {
        Ok(status::engines_up(node)? == want)
    })
}

#[test]
fn an_engine_process_serves_is_marked_down_when_killed_and_up_when_restarted() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine_data = dir.path().join("engine");
    let engine_peer = keygen(None, &engine_data.join("identity.key"))?;
    let peer = engine_peer.as_str();

    let home = Node::new(&dir.path().join("home"))
        .engines(0)
        .args(&["--engine-peer", peer])
        .home()
        .ttl(10)
        .metrics()
        .start()?;
    let home_metrics = home.metrics_url()?;
    let issuer = home.issuer()?;

    // A stranger's engine is refused: the director trusts --engine-peer peers only.
    let stranger = EngineProcess::start(&dir.path().join("stranger"), &home.addr, &issuer)?;
    let log = dir.path().join("stranger/stderr.log");
    wait::blocking(
        "the stranger to be refused",
        Duration::from_secs(15),
        || Ok(std::fs::read_to_string(&log)?.contains("the director refused")),
    )?;
    assert!(
        status::engines_up(&home.addr)?.is_empty(),
        "an untrusted engine attached"
    );
    drop(stranger);

    let engine = EngineProcess::start(&engine_data, &home.addr, &issuer)?;
    wait_engines("the engine to attach", &home.addr, &[(peer, true)], 20)?;
    // The director knows the engine's own --max-streams 5, not its station default of 64.
    wait::blocking("the engine's limits", Duration::from_secs(10), || {
        Ok(status::engines(&home.addr)?[0]["max_streams"] == 5)
    })?;

    let console = dir.path().join("console");
    subscriber(&home.addr, &home.key(), &console, "eve")?;
    let source = dir.path().join("program.bin");
    let bytes = random_file(&source, 3 * MIB + 5, 8)?;
    let program = Ingest::new(&home.addr, &home.key(), "remote", &source)
        .publish_now()
        .segment_size(MIB)
        .run()?;

    let played = Play::new(&console, &home.addr, &program).run()?;
    assert!(
        played.bytes == bytes,
        "bytes played differ from bytes ingested"
    );
    assert_eq!(played.stats["verified"], true);
    assert_eq!(
        played.stats["engines"],
        serde_json::json!([engine_peer]),
        "{}",
        played.stats
    );
    assert_eq!(
        located(&home.addr, &program, 4)?,
        vec![engine_peer.clone(); 4]
    );
    // The engine process counts what it took in and sent out, on its own /metrics.
    let len = bytes.len() as f64;
    let url = engine.metrics.clone();
    wait::blocking("the engine's metrics", Duration::from_secs(10), || {
        Ok(
            metric(&url, "vodmesh_bytes_in_total{kind=\"ingest\"}")? == len
                && metric(&url, "vodmesh_stream_bytes_out_total")? >= len,
        )
    })?;
    // The console streamed over bulk connections: the engine's bulk address reached it
    // through the backplane's Hello and the director.
    assert!(metric(&url, "vodmesh_bulk_connections_total")? >= 1.0);
    let up = format!("vodmesh_engine_up{{engine=\"{engine_peer}\"}}");
    assert_eq!(metric(&url, &up)?, 1.0);
    assert_eq!(metric(&home_metrics, &up)?, 1.0);

    // Killed: marked down within seconds, and named for no segment.
    engine.kill()?;
    let took = wait_engines(
        "the engine to be marked down",
        &home.addr,
        &[(peer, false)],
        10,
    )?;
    assert!(took < Duration::from_secs(5), "marked down after {took:?}");
    assert_eq!(metric(&home_metrics, &up)?, 0.0);
    assert!(
        !located(&home.addr, &program, 4)?.contains(&engine_peer),
        "a down engine was chosen"
    );

    // Restarted on its data: up again, and it serves again.
    let engine = EngineProcess::start(&engine_data, &home.addr, &issuer)?;
    wait_engines(
        "the engine to be marked up",
        &home.addr,
        &[(peer, true)],
        20,
    )?;

    // Hung (SIGSTOP: the connection stays open, nothing answers): the heartbeat times out
    // and the engine is marked down; resumed, it reattaches by itself.
    engine.signal("STOP")?;
    let took = wait_engines(
        "the hung engine to be marked down",
        &home.addr,
        &[(peer, false)],
        10,
    )?;
    assert!(took < Duration::from_secs(6), "marked down after {took:?}");
    engine.signal("CONT")?;
    wait_engines(
        "the resumed engine to be marked up",
        &home.addr,
        &[(peer, true)],
        20,
    )?;
    let played = Play::new(&console, &home.addr, &program).run()?;
    assert!(
        played.bytes == bytes,
        "bytes played after the restart differ"
    );
    drop(engine);
    assert!(home.terminate()?, "the station did not stop cleanly");
    Ok(())
}

/// What happens to the first engine process once the console has written a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// SIGKILL: its connections close.
    Killed,
    /// SIGSTOP: its connections stay open and bring nothing.
    Frozen,
    /// SIGSTOP before the play starts, SIGCONT once the console has written a segment.
    FrozenBefore,
}

/// How the console plays in [`engine_process_fails_mid_play`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pace {
    /// `--speed max`: 16 segments of 1 MiB.
    Max,
    /// `--speed 1 --buffer 2`: 16 segments of 128 KiB at 1 Mbit/s (about a second each).
    Realtime,
}

/// A station of two engine processes (home, auth, content manager) and a second station with
/// a complete replica; `vodmesh-console play --out -` at `pace` through the home station;
/// once the console has written the first segment, the first engine process meets `fate`
/// (`FrozenBefore`: it is thawed then, frozen since before the play started).
/// The play finishes with the program's exact bytes. Returns the console's debug log, its
/// `--stats` and the first engine's peer id.
fn engine_process_fails_mid_play(
    fate: Fate,
    pace: Pace,
) -> Result<(String, serde_json::Value, String)> {
    const SEGMENTS: u32 = 16;
    let segment_size = match pace {
        Pace::Max => MIB,
        Pace::Realtime => 128 * 1024,
    };
    let dir = tempfile::tempdir()?;
    let (e1_data, e2_data) = (dir.path().join("e1"), dir.path().join("e2"));
    let e1_peer = keygen(None, &e1_data.join("identity.key"))?;
    let e2_peer = keygen(None, &e2_data.join("identity.key"))?;
    let home = Node::new(&dir.path().join("home"))
        .engines(0)
        .args(&["--engine-peer", &e1_peer, "--engine-peer", &e2_peer])
        .home()
        .ttl(10)
        .start()?;
    let issuer = home.issuer()?;
    let e1 = EngineProcess::start(&e1_data, &home.addr, &issuer)?;
    let _e2 = EngineProcess::start(&e2_data, &home.addr, &issuer)?;
    wait_engines(
        "both engines to attach",
        &home.addr,
        &[(&e1_peer, true), (&e2_peer, true)],
        20,
    )?;
    let replica = Node::new(&dir.path().join("replica"))
        .engines(2)
        .ttl(10)
        .enrolled_with(&home)?
        .start()?;
    wait::blocking(
        "the stations to find each other",
        Duration::from_secs(30),
        || Ok(status::directors(&home.addr)?.contains(&replica.peer())),
    )?;
    let console = dir.path().join("console");
    subscriber(&home.addr, &home.key(), &console, "fay")?;
    let source = dir.path().join("program.bin");
    let bytes = random_file(&source, SEGMENTS as usize * segment_size, 17)?;
    let mut ingest = Ingest::new(&home.addr, &home.key(), "sturdy", &source)
        .publish_now()
        .segment_size(segment_size)
        .replicas(1);
    let mut play = Play::new(&console, &home.addr, "sturdy");
    if pace == Pace::Realtime {
        ingest = ingest.bitrate(1_000_000);
        play = play.speed("1").args(&["--buffer", "2"]);
    }
    let program = ingest.run()?;
    tokio::runtime::Runtime::new()?.block_on(wait_holds_all(
        &replica.addr,
        program.parse()?,
        SEGMENTS,
        Duration::from_secs(60),
    ))?;

    if fate == Fate::FrozenBefore {
        e1.signal("STOP")?;
    }
    let mut playing = play.to_stdout().debug().spawn()?;
    // The console writes into the pipe only as fast as it is read: once the first segment
    // is read, the rest is yet to be fetched (but for the segments in its window).
    playing.read(segment_size)?;
    let kept = match fate {
        Fate::FrozenBefore => {
            e1.signal("CONT")?;
            Some(e1)
        }
        Fate::Killed => {
            e1.kill()?;
            None
        }
        Fate::Frozen => {
            e1.signal("STOP")?;
            Some(e1)
        }
    };
    let played = playing.finish();
    // Killed when dropped (SIGKILL ends a stopped process too).
    drop(kept);
    let played = played?;
    assert!(
        played.bytes == bytes,
        "bytes played differ from the source after {fate:?}"
    );
    assert_eq!(played.stats["verified"], true, "{}", played.stats);
    assert_eq!(played.stats["segments"], SEGMENTS, "{}", played.stats);
    Ok((played.log, played.stats, e1_peer))
}

/// The segment the console's log shows it passed the frozen engine over for (found
/// unreachable, or hedged at another holder), and the engine that served that segment.
fn passed_over(log: &str, frozen: &str) -> Result<(String, String)> {
    // "segment attempt ended; asking again index=K ended=Unreachable(PeerId("<frozen>"))",
    // "segment silent near its play time: hedged index=K slow=Some(PeerId("<frozen>"))"
    let unreachable = format!("ended=Unreachable(PeerId(\"{frozen}\"))");
    let hedged = format!("slow=Some(PeerId(\"{frozen}\"))");
    let index_of = |line: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("index="))
            .map(str::to_string)
    };
    let stalled = log
        .lines()
        .find(|l| l.contains(&unreachable) || l.contains(&hedged))
        .and_then(index_of)
        .with_context(|| format!("the console never passed the frozen engine over:\n{log}"))?;
    let served = log
        .lines()
        .filter(|l| l.contains("segment fetched"))
        .find(|l| index_of(l).as_deref() == Some(stalled.as_str()))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("engine="))
                .map(str::to_string)
        })
        .with_context(|| format!("segment {stalled} was never fetched:\n{log}"))?;
    Ok((stalled, served))
}

#[test]
fn an_engine_process_killed_mid_play_costs_the_console_nothing() -> Result<()> {
    engine_process_fails_mid_play(Fate::Killed, Pace::Max)?;
    Ok(())
}

/// A frozen engine process (SIGSTOP) stays connected and sends nothing: the console finds it
/// unreachable, or silent, and the segment is fetched at another holder, which the console's
/// log names.
#[test]
fn an_engine_process_frozen_mid_play_is_passed_over_for_another_holder() -> Result<()> {
    let (log, _, frozen) = engine_process_fails_mid_play(Fate::Frozen, Pace::Max)?;
    let (stalled, served) = passed_over(&log, &frozen)?;
    assert_ne!(
        served, frozen,
        "segment {stalled} was served by the frozen engine"
    );
    Ok(())
}

/// At `--speed 1 --buffer 2`, a play started while an engine process is frozen (SIGSTOP before
/// the play asks for its first segment, SIGCONT once that segment is written) costs the
/// console no stall: the silent fetches are hedged at the other holder (the chaos run of seed
/// 1796662158240 had a play start at the home station while its engine was frozen).
#[test]
fn an_engine_process_frozen_as_a_play_starts_costs_no_stall() -> Result<()> {
    let (log, stats, _) = engine_process_fails_mid_play(Fate::FrozenBefore, Pace::Realtime)?;
    assert_eq!(stats["stalls"], 0, "the 2 s buffer ran dry: {stats}\n{log}");
    Ok(())
}

/// At `--speed 1 --buffer 2`, an engine process frozen mid-play (with a second holder of
/// every segment at another station) costs the console no stall: its silent fetch is hedged
/// at the other holder before the buffer runs dry (issue 17).
#[test]
fn an_engine_process_frozen_at_speed_one_costs_no_stall() -> Result<()> {
    let (log, stats, frozen) = engine_process_fails_mid_play(Fate::Frozen, Pace::Realtime)?;
    let (stalled, served) = passed_over(&log, &frozen)?;
    assert_ne!(
        served, frozen,
        "segment {stalled} was served by the frozen engine"
    );
    assert_eq!(stats["stalls"], 0, "the 2 s buffer ran dry: {stats}");
    assert_eq!(stats["longest_stall_ms"], 0, "{stats}");
    Ok(())
}
