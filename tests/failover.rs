//! Failure during play: an engine taken out mid-play at `--speed 1` costs no stall with a 2 s
//! buffer (its segments come from elsewhere, byte-identical); a station killed or frozen
//! mid-play, which was serving the console from its own replica, leaves the console to finish
//! from another station, which `--stats` names; a miss whose copy fails everywhere sends the
//! console to a holder.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use vodmesh_console::play::{self, Speed};
use vodmesh_node::events::Kind;
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::Issuer;
use vodmesh_tests::cli::{Ingest, Play, subscriber};
use vodmesh_tests::console::{credentials, wait_holds_all};
use vodmesh_tests::media::random_file;
use vodmesh_tests::process::Node;
use vodmesh_tests::replica::{HomeAndReplica, Program};
use vodmesh_tests::swarm::{self, ingest_options, init_logging};
use vodmesh_tests::{status, wait};
use vodmesh_tools::ingest::{self, IngestOptions};

const KIB: usize = 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_lost_mid_play_costs_no_stall() -> Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let consoles = Issuer::generate();
    let home_dir = dir.path().join("home");
    let home = swarm::station(&home_dir)
        .home()
        .trusting(&consoles)
        .start()
        .await?;
    let b = swarm::station(dir.path().join("b"))
        .engines(2)
        .trusting(&consoles)
        .enrolled_with(&home, &home_dir)
        .start()
        .await?;
    // Eight segments of 128 KiB at 1 Mbit/s: about 1 s each.
    let source = dir.path().join("p.bin");
    let bytes = random_file(&source, 8 * 128 * KIB, 51)?;
    let mut events = b.subscribe();
    let key = home_dir.join("identity.key");
    let info = ingest::run(&IngestOptions {
        publish_at_ms: Some(now_ms()),
        replicas: 1,
        segment_size: 128 * KIB as u64,
        bitrate: 1_000_000,
        ..ingest_options(&home, &key, "lossy", source)
    })
    .await?;
    wait::event(
        &mut events,
        &mut Vec::new(),
        "b's replica",
        Duration::from_secs(60),
        |e| e.program == info.program && e.peer == b.peer_id() && e.kind == Kind::ReplicaComplete,
    )
    .await?;

    let credentials = credentials(&consoles)?;
    // Two segments in, engine 0 of b (which holds every other segment) is taken out.
    let stop = Arc::new(Mutex::new(false));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut played = Vec::new();
    let flag = stop.clone();
    let program = info.program.to_string();
    let playing = play::play(
        b.addr(),
        &credentials,
        &program,
        0.0,
        Speed::Realtime {
            buffer: Duration::from_secs(2),
        },
        &mut played,
        None,
        |p| {
            if p.stats.segments == 2
                && let Ok(mut done) = flag.lock()
                && !*done
            {
                *done = true;
                let _ = tx.try_send(());
            }
        },
    );
    let kill = async {
        rx.recv().await;
        b.stop_engine(0).await
    };
    let (stats, stopped) = tokio::join!(playing, kill);
    let stats = stats?;
    stopped?;
    assert!(
        stop.lock().is_ok_and(|d| *d),
        "the engine was never stopped"
    );
    assert!(played == bytes, "played bytes differ from the source");
    assert_eq!(stats.stalls, 0, "{stats:?}");
    assert!(stats.verified);
    b.shutdown().await;
    home.shutdown().await;
    Ok(())
}

/// What happens to station b once the console has written two segments.
enum Fate {
    /// Killed: its connections close.
    Killed,
    /// Stopped (SIGSTOP): its connections stay open and bring nothing.
    Frozen,
}

#[test]
fn a_station_killed_mid_play_leaves_the_console_to_another() -> Result<()> {
    station_fails_mid_play(Fate::Killed)
}

/// A frozen station (SIGSTOP: its connections stay open and answer nothing) is passed over
/// like a dead one: the console asks the other director, within the time of the play.
#[test]
fn a_station_frozen_mid_play_leaves_the_console_to_another() -> Result<()> {
    let started = std::time::Instant::now();
    station_fails_mid_play(Fate::Frozen)?;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(50), "play took {took:?}");
    Ok(())
}

/// The console asks station b, which holds a complete replica and serves it from its own
/// engines; once the console has written two segments, b meets `fate`. The console finishes
/// from the home station: byte-identical, without a stall of its `--speed 1 --buffer 2`, and
/// `--stats` names both stations.
fn station_fails_mid_play(fate: Fate) -> Result<()> {
    const SEGMENTS: u32 = 8;
    let dir = tempfile::tempdir()?;
    // Eight segments of 128 KiB at 1 Mbit/s: 8.4 s of media, replicated to b.
    let HomeAndReplica {
        home,
        b,
        console,
        bytes,
        ..
    } = HomeAndReplica::start(
        dir.path(),
        Node::new(&dir.path().join("home"))
            .engines(2)
            .home()
            .ttl(10),
        Node::new(&dir.path().join("b")).engines(2).ttl(10),
        Program {
            title: "fragile",
            segments: SEGMENTS,
            segment_size: 128 * KIB,
            bitrate: Some(1_000_000),
            seed: 52,
        },
    )?;

    let mut playing = Play::new(&console, &b.addr, "fragile")
        .speed("1")
        .args(&["--buffer", "2"])
        .to_stdout()
        .spawn()?;
    // Two segments written: the console fetches three ahead, so the last three are yet to
    // be fetched, and it is held at the pipe until the test reads on.
    playing.read(2 * 128 * KIB)?;
    let (b_peer, frozen) = match fate {
        Fate::Killed => (b.peer(), b.kill().map(|()| None)?),
        Fate::Frozen => {
            b.signal("STOP")?;
            (b.peer(), Some(b))
        }
    };
    let played = playing.finish()?;
    // Killed when dropped (SIGKILL ends a stopped process too).
    drop(frozen);
    assert!(played.bytes == bytes, "played bytes differ");
    let stats = played.stats;
    assert_eq!(stats["verified"], true);
    assert_eq!(stats["segments"], SEGMENTS);
    // Its silent fetches were hedged at the other station before the 2 s buffer ran dry.
    assert_eq!(stats["stalls"], 0, "the buffer ran dry: {stats}");
    // b served until it failed (it holds every segment); the home station served after.
    let both: BTreeSet<String> = [b_peer, home.peer()].into();
    assert_eq!(
        stats["stations"],
        serde_json::json!(both),
        "b served first, the home after the loss: {stats}"
    );
    Ok(())
}

/// Two stations going silent one after the other (the chaos run, seed 1796662158240: a home
/// engine frozen, then another station's link cut within 10 s). Once the first director is
/// passed over, the console asks the others, the one that answered last first; when that one
/// goes silent too, a fetch waits on its `Locate`. Its hedge passes over the directors that
/// have left an ask unanswered that long, whichever they are, and asks the third station:
/// the `--buffer 2` rides it out. Before, a hedge passed over the first director alone, so
/// every racer asked the silent one first and waited until its connection was given up (4
/// stalls here, the longest 9 s; 4.9 s in that run).
#[test]
fn a_second_director_going_silent_is_passed_over_like_the_first() -> Result<()> {
    const SEGMENTS: u32 = 16;
    const SIZE: usize = 128 * KIB;
    let dir = tempfile::tempdir()?;
    let station = |name: &str| Node::new(&dir.path().join(name)).engines(1).ttl(10);
    let home = station("home").home().start()?;
    let b = station("b").enrolled_with(&home)?.start()?;
    let c = station("c").enrolled_with(&home)?.start()?;
    wait::blocking(
        "the stations to find each other",
        Duration::from_secs(30),
        || {
            let listed = status::directors(&home.addr)?;
            Ok(listed.contains(&b.peer()) && listed.contains(&c.peer()))
        },
    )?;
    let console = dir.path().join("console");
    subscriber(&home.addr, &home.key(), &console, "ida")?;
    // A whole replica at b and at c: each can serve every segment from its own engine.
    let source = dir.path().join("twice.bin");
    let bytes = random_file(&source, SEGMENTS as usize * SIZE, 54)?;
    let program = Ingest::new(&home.addr, &home.key(), "twice", &source)
        .publish_now()
        .segment_size(SIZE)
        .bitrate(1_000_000)
        .replicas(2)
        .run()?;
    tokio::runtime::Runtime::new()?.block_on(async {
        for station in [&b, &c] {
            let id = program.parse()?;
            wait_holds_all(&station.addr, id, SEGMENTS, Duration::from_secs(60)).await?;
        }
        anyhow::Ok(())
    })?;

    let mut playing = Play::new(&console, &home.addr, "twice")
        .speed("1")
        .args(&["--buffer", "2"])
        .to_stdout()
        .debug()
        .spawn()?;
    playing.read(SIZE)?;
    // The home goes silent: the console passes its director over and asks b and c.
    home.signal("STOP")?;
    playing.read(4 * SIZE)?;
    // The station the console turned to, the last of b and c to serve it, is the one it asks
    // first now (the segments before may have come from the home, fetched ahead).
    let turned_to = |log: &[u8]| {
        let log = String::from_utf8_lossy(log);
        (log.lines().rev())
            .filter(|l| l.contains("segment fetched"))
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("director="))
            })
            .find(|d| *d == b.peer() || *d == c.peer())
            .map(str::to_string)
    };
    let log = playing.stderr();
    log.wait_for("a segment from b or c", Duration::from_secs(30), |l| {
        turned_to(l).is_some()
    })?;
    let silent = match turned_to(log.text().as_bytes()) {
        Some(p) if p == b.peer() => &b,
        // c, as the wait saw.
        _ => &c,
    };
    silent.signal("STOP")?;
    let played = playing.finish()?;
    assert!(played.bytes == bytes, "played bytes differ");
    let stats = played.stats;
    assert_eq!(stats["verified"], true);
    // Hedged at the third station before the buffer ran dry.
    assert_eq!(
        stats["stalls"], 0,
        "the buffer ran dry: {stats}\n{}",
        played.log
    );
    let served = stats["stations"].as_array().map(Vec::len);
    assert_eq!(served, Some(3), "every station served: {stats}");
    Ok(())
}

/// A miss whose copy fails at every source (issue 17): a station that runs an auth server of
/// its own is no member of the home's swarm (issue 19), so when it fills a miss every holder
/// refuses it. The console is not told `segment ... is not stored here`: it is sent to a
/// holder, and finishes with the program's bytes. (It plays by program id: a non-member
/// cannot list the members' programs, titles included.)
#[test]
fn a_miss_whose_copy_fails_everywhere_sends_the_console_to_a_holder() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let home = Node::new(&dir.path().join("home"))
        .engines(2)
        .home()
        .ttl(10)
        .start()?;
    let console = dir.path().join("console");
    subscriber(&home.addr, &home.key(), &console, "gil")?;
    // Its own issuer signs its engines' tokens; it trusts the home's for consoles.
    let stray = Node::new(&dir.path().join("stray"))
        .engines(1)
        .args(&["--auth"])
        .trust(&home.issuer()?)
        .bootstrap(&home.addr)
        .ttl(10)
        .start()?;
    wait::blocking(
        "the stray station to find the home",
        Duration::from_secs(30),
        || Ok(status::directors(&stray.addr)?.contains(&home.peer())),
    )?;
    let source = dir.path().join("p.bin");
    let bytes = random_file(&source, 4 * 256 * KIB, 53)?;
    let program = Ingest::new(&home.addr, &home.key(), "elsewhere", &source)
        .publish_now()
        .segment_size(256 * KIB)
        .run()?;
    let played = Play::new(&console, &stray.addr, &program)
        .files(dir.path(), "stray")
        .run()?;
    assert!(played.bytes == bytes, "played bytes differ");
    assert_eq!(
        played.stats["stations"],
        serde_json::json!([home.peer()]),
        "every segment came from the holder: {}",
        played.stats
    );
    // The stray station did try to copy, and the holder refused it: it is no member of the
    // home's swarm (issue 19), so the home names it no engine to copy from.
    let log = home.log();
    assert!(
        log.lines()
            .any(|l| l.contains("not a member") && l.contains(&stray.peer())),
        "the stray station never tried a copy"
    );
    Ok(())
}

/// The first director cut off before it listed the swarm (issue 17: hedges then had nowhere
/// to go, since the console learned the swarm only from it). The console falls back on the
/// directors it remembers from its login (`swarm.json`): the manifest and every segment come
/// from the home station, byte-identical. Without the fallback the session fails once the
/// frozen director's connection is given up.
#[test]
fn a_first_director_frozen_before_it_lists_the_swarm_leaves_the_console_to_the_remembered()
-> Result<()> {
    use vodmesh_client::DirectorClient;
    use vodmesh_client::files::Home;
    use vodmesh_console::play::{Credentials, Session};

    const SEGMENTS: u32 = 4;
    let dir = tempfile::tempdir()?;
    let setup = HomeAndReplica::start(
        dir.path(),
        Node::new(&dir.path().join("home")).home(),
        Node::new(&dir.path().join("b")),
        Program {
            title: "unlisted",
            segments: SEGMENTS,
            segment_size: 64 * KIB,
            bitrate: None,
            seed: 53,
        },
    )?;
    let console = Home {
        dir: setup.console.clone(),
    };
    let token = std::fs::read(console.token_path("console"))?;
    let credentials = Credentials::new(console.identity()?, token)
        .remembering(vodmesh_console::remember::known(&console));
    assert!(
        (credentials.swarm.iter()).any(|a| a.to_string().contains(&setup.home.peer())),
        "the login remembered the home station: {:?}",
        credentials.swarm
    );
    let program = setup.program.parse()?;
    let played = tokio::runtime::Runtime::new()?.block_on(async {
        let first = DirectorClient::connect(&setup.b.addr, credentials.key.clone()).await?;
        // Connected, and then silent: it answers neither the manifest nor the swarm.
        setup.b.signal("STOP")?;
        let session = Session::with_client(Arc::new(first), &credentials, program).await?;
        let mut played = Vec::new();
        for index in 0..SEGMENTS {
            played.extend(
                session
                    .segment(vodmesh_proto::SegmentIndex(index))
                    .await?
                    .bytes,
            );
        }
        anyhow::Ok(played)
    })?;
    assert!(played == setup.bytes, "played bytes differ from the source");
    Ok(())
}

/// A console whose director's station was killed asks it again once it is back on the same
/// address, on the same client. Before, libp2p forgot the address at the first failed dial
/// and every later request failed at once ("Failed to dial the requested peer"), though the
/// station was up again: a play outliving a station's restart ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_director_back_on_its_address_is_asked_again_by_the_same_client() -> Result<()> {
    use vodmesh_client::DirectorClient;
    use vodmesh_proto::director::{Request, Response};

    let dir = tempfile::tempdir()?;
    let listen = format!(
        "/ip4/127.0.0.1/tcp/{}",
        vodmesh_tests::process::free_port()?
    );
    let home = Node::new(&dir.path().join("home"))
        .engines(1)
        .home()
        .listen(&[&listen])
        .start()?;
    let addr = home.addr.clone();
    let client = DirectorClient::connect(&addr, None).await?;
    let answer = client.call(Request::Activity).await?;
    assert!(matches!(answer, Response::Activity(_)), "{answer:?}");

    let node = home.crash()?;
    wait::until("a request to fail", Duration::from_secs(30), || async {
        Ok(client.call(Request::Activity).await.is_err())
    })
    .await?;
    // One more while the station is down: its dial is refused.
    assert!(client.call(Request::Activity).await.is_err());
    let home = node.start()?;
    assert_eq!(home.addr, addr, "restarted on its address");
    wait::until(
        "the director to answer the same client again",
        Duration::from_secs(30),
        || async { Ok(client.call(Request::Activity).await.is_ok()) },
    )
    .await?;
    Ok(())
}
