//! Failure during play: an engine taken out mid-play at `--speed 1` costs no stall with a 2 s
//! buffer (its segments come from elsewhere, byte-identical); a station killed mid-play leaves
//! the console to finish from another station.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vodmesh_console::play::{self, Credentials, Speed};
use vodmesh_node::events::Kind;
use vodmesh_node::{Station, StationConfig};
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::Issuer;
use vodmesh_tests::{
    NodeProcess, TEST_TTL, bin, enrolled_config, init_logging, random_file, subscriber, vodmesh,
    wait_engine_tokens,
};
use vodmesh_tools::ingest::{self, IngestOptions};

const KIB: usize = 1024;

async fn station(
    dir: &Path,
    engines: usize,
    auth: Option<&Station>,
    consoles: &Issuer,
) -> anyhow::Result<Station> {
    let mut config = match auth {
        Some(auth) => {
            let home = dir.parent().unwrap_or(dir).join("home");
            enrolled_config(dir, auth, &home).await?
        }
        None => StationConfig::new(dir),
    };
    let home = auth.is_none();
    config.auth = home;
    config.home = home;
    config.content_manager = home;
    config.engines = engines;
    config.registry.record_ttl = TEST_TTL;
    config.trust.push(consoles.public());
    config.bootstrap = auth.map(|a| a.addr().clone()).into_iter().collect();
    let station = Station::start(config).await?;
    wait_engine_tokens(&station).await?;
    Ok(station)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_lost_mid_play_costs_no_stall() -> anyhow::Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let consoles = Issuer::generate();
    let home = station(&dir.path().join("home"), 1, None, &consoles).await?;
    let b = station(&dir.path().join("b"), 2, Some(&home), &consoles).await?;
    // Eight segments of 128 KiB at 1 Mbit/s: about 1 s each.
    let source = dir.path().join("p.bin");
    let bytes = random_file(&source, 8 * 128 * KIB, 51)?;
    let mut events = b.subscribe();
    let info = ingest::run(&IngestOptions {
        node: home.addr().clone(),
        key: dir.path().join("home/identity.key"),
        title: "lossy".into(),
        publish_at_ms: Some(now_ms()),
        replicas: 1,
        segment_size: 128 * KIB as u64,
        bitrate: 1_000_000,
        source,
        progress: false,
    })
    .await?;
    loop {
        let e = tokio::time::timeout(Duration::from_secs(60), events.recv()).await??;
        if e.program == info.program && e.peer == b.peer_id() && e.kind == Kind::ReplicaComplete {
            break;
        }
    }

    let key = libp2p::identity::Keypair::generate_ed25519();
    let token = vodmesh_tests::console_token(&consoles, key.public().to_peer_id())?;
    let credentials = Credentials {
        key: Some(key),
        token: Arc::new(std::sync::RwLock::new(Some(token))),
    };
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

/// What happens to station b 3 s into the play.
enum Fate {
    /// Killed: its connections close.
    Killed,
    /// Stopped (SIGSTOP): its connections stay open and bring nothing.
    Frozen,
}

#[test]
fn a_station_killed_mid_play_leaves_the_console_to_another() -> anyhow::Result<()> {
    station_fails_mid_play(Fate::Killed)
}

/// A frozen station (SIGSTOP: its connections stay open and answer nothing) is passed over
/// like a dead one: the console asks the other director, within the time of the play.
#[test]
fn a_station_frozen_mid_play_leaves_the_console_to_another() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    station_fails_mid_play(Fate::Frozen)?;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(50), "play took {took:?}");
    Ok(())
}

fn station_fails_mid_play(fate: Fate) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let home = NodeProcess::start(
        &dir.path().join("home"),
        &[
            "--engines",
            "2",
            "--home",
            "--content-manager",
            "--auth",
            "--record-ttl",
            "10",
        ],
    )?;
    let boot = home.addr.to_string();
    let issuer = vodmesh_tests::issuer_of(&home.data)?;
    let b = NodeProcess::start(
        &dir.path().join("b"),
        &[
            "--engines",
            "2",
            "--bootstrap",
            &boot,
            "--trust",
            &issuer,
            "--record-ttl",
            "10",
        ],
    )?;
    let console = dir.path().join("console");
    subscriber(&home.addr, &home.data.join("identity.key"), &console, "eve")?;
    // Eight segments of 128 KiB at 1 Mbit/s: 8.4 s of media.
    let source = dir.path().join("p.bin");
    let bytes = random_file(&source, 8 * 128 * KIB, 52)?;
    let key = home.data.join("identity.key").display().to_string();
    vodmesh(&[
        "ingest",
        "--node",
        &boot,
        "--key",
        &key,
        "--title",
        "fragile",
        "--publish-at",
        "now",
        "--segment-size",
        "131072",
        "--bitrate",
        "1000000",
        &source.display().to_string(),
    ])?;
    let out = dir.path().join("played.bin");
    let stats = dir.path().join("stats.json");
    // The console asks b (which holds nothing and redirects to the home); b dies 3 s in.
    let player = Command::new(bin("vodmesh-console"))
        .env("VODMESH_HOME", &console)
        .args([
            "play",
            "--node",
            &b.addr.to_string(),
            "--speed",
            "1",
            "--buffer",
            "2",
        ])
        .arg("--out")
        .arg(&out)
        .arg("--stats")
        .arg(&stats)
        .arg("fragile")
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(3));
    let frozen = match fate {
        Fate::Killed => {
            drop(b);
            None
        }
        Fate::Frozen => {
            let stopped = Command::new("kill")
                .args(["-STOP", &b.pid().to_string()])
                .status()?;
            anyhow::ensure!(stopped.success(), "kill -STOP failed");
            Some(b)
        }
    };
    let finished = player.wait_with_output()?;
    // Killed when dropped (SIGKILL ends a stopped process too).
    drop(frozen);
    assert!(
        finished.status.success(),
        "play failed: {}",
        String::from_utf8_lossy(&finished.stderr)
    );
    assert!(std::fs::read(&out)? == bytes, "played bytes differ");
    let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(&stats)?)?;
    assert_eq!(stats["verified"], true);
    assert_eq!(stats["segments"], 8);
    Ok(())
}

/// A miss whose copy fails at every source (issue 17): a station that runs an auth server of
/// its own holds engine tokens no other station trusts, so when it fills a miss its engine's
/// copy is refused by every holder. The console is not told `segment ... is not stored here`:
/// it is sent to a holder, and finishes with the program's bytes.
#[test]
fn a_miss_whose_copy_fails_everywhere_sends_the_console_to_a_holder() -> anyhow::Result<()> {
    use vodmesh_tests::{play_args, status_directors};
    let dir = tempfile::tempdir()?;
    let home = NodeProcess::start(
        &dir.path().join("home"),
        &[
            "--engines",
            "2",
            "--home",
            "--content-manager",
            "--auth",
            "--record-ttl",
            "10",
        ],
    )?;
    let issuer = vodmesh_tests::issuer_of(&home.data)?;
    let console = dir.path().join("console");
    subscriber(&home.addr, &home.data.join("identity.key"), &console, "gil")?;
    // Its own issuer signs its engines' tokens; it trusts the home's for consoles.
    let stray = NodeProcess::start(
        &dir.path().join("stray"),
        &[
            "--engines",
            "1",
            "--auth",
            "--trust",
            &issuer,
            "--bootstrap",
            &home.addr.to_string(),
            "--record-ttl",
            "10",
        ],
    )?;
    let home_director = vodmesh_proto::net::peer_of(&home.addr)
        .map(|p| p.to_string())
        .unwrap_or_default();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(vodmesh_tests::wait_until(
        "the stray station to find the home",
        Duration::from_secs(30),
        || async { Ok(status_directors(&stray.addr)?.contains(&home_director)) },
    ))?;
    let source = dir.path().join("p.bin");
    let bytes = random_file(&source, 4 * 256 * KIB, 53)?;
    vodmesh(&[
        "ingest",
        "--node",
        &home.addr.to_string(),
        "--key",
        &home.data.join("identity.key").display().to_string(),
        "--title",
        "elsewhere",
        "--publish-at",
        "now",
        "--segment-size",
        &(256 * KIB).to_string(),
        &source.display().to_string(),
    ])?;
    let (played, stats) = play_args(
        &stray.addr,
        &console,
        &["--speed", "max", "elsewhere"],
        dir.path(),
        "stray",
    )?;
    assert!(played == bytes, "played bytes differ");
    assert_eq!(
        stats["stations"],
        serde_json::json!([home_director]),
        "every segment came from the holder: {stats}"
    );
    // The stray station did try to copy, and every holder refused it.
    let log = std::fs::read_to_string(stray.data.join("stderr.log"))?;
    assert!(
        log.contains("copy failed at every source"),
        "the stray station never tried a copy"
    );
    Ok(())
}
