//! Deployment mode (b) and engine health, with real processes: an engine in a process of its
//! own (`vodmesh-node engine --director MULTIADDR`), attached to a director that trusts its
//! peer id (`--engine-peer`) and holds no engine of its own, takes a program's segments at
//! ingest and serves a console the whole program, byte for byte. An untrusted engine process
//! is refused. The engine process is killed (SIGKILL): within seconds the director marks it
//! down (`vodmesh status`, `/metrics`) and no longer names it for any segment; restarted on
//! the same data directory, it is marked up again; hung (SIGSTOP) it is marked down by the
//! heartbeat's time-out, and resumed it reattaches and serves the console again.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use libp2p::Multiaddr;
use vodmesh_tests::{
    EngineProcess, NodeProcess, bin, issuer_of, metric, play, random_file, subscriber, vodmesh,
};

/// The engines `vodmesh status --json` lists for the first station: (peer id, up).
fn engines(node: &Multiaddr) -> Result<Vec<(String, bool)>> {
    let out = vodmesh(&["status", "--node", &node.to_string(), "--json"])?;
    let json: serde_json::Value = serde_json::from_str(&out)?;
    let list = json["stations"][0]["engines"]
        .as_array()
        .context("no engines array")?;
    Ok(list
        .iter()
        .map(|e| {
            (
                e["peer_id"].as_str().unwrap_or_default().to_string(),
                e["up"].as_bool().unwrap_or(false),
            )
        })
        .collect())
}

/// Polls `check` every 200 ms until true; the time it took.
fn wait(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if check()? {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The director's answer to Locate for every segment: the engine peer ids it names.
fn located(node: &Multiaddr, program: &str, segments: u32) -> Result<Vec<String>> {
    use vodmesh_proto::director::{Request, Response};
    let program: vodmesh_proto::ProgramId = program.parse()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = vodmesh_client::DirectorClient::connect(node, None).await?;
        let mut named = Vec::new();
        for index in 0..segments {
            let request = Request::Locate {
                program,
                index,
                complete: false,
                avoid: Vec::new(),
                busy: Vec::new(),
            };
            let answer =
                tokio::time::timeout(Duration::from_secs(10), client.request(request)).await;
            if let Ok(Ok(Response::Location(l))) = answer {
                named.push(l.engine.to_string());
            }
        }
        Ok(named)
    })
}

#[test]
fn an_engine_process_serves_is_marked_down_when_killed_and_up_when_restarted() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine_data = dir.path().join("engine");
    std::fs::create_dir_all(&engine_data)?;
    let engine_key = engine_data.join("identity.key");
    let out = vodmesh(&["keygen", "--out", &engine_key.to_string_lossy()])?;
    let engine_peer = out.lines().last().unwrap_or_default().trim().to_string();

    let home_data = dir.path().join("home");
    // A free port for the station's --metrics (NodeProcess reads only its director line).
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let home_metrics = format!("http://127.0.0.1:{port}/metrics");
    let metrics_at = format!("127.0.0.1:{port}");
    let home = NodeProcess::start(
        &home_data,
        &[
            "--engines",
            "0",
            "--engine-peer",
            &engine_peer,
            "--home",
            "--content-manager",
            "--auth",
            "--record-ttl",
            "10",
            "--metrics",
            &metrics_at,
        ],
    )?;
    let issuer = issuer_of(&home_data)?;

    // A stranger's engine is refused: the director trusts --engine-peer peers only.
    let stranger = EngineProcess::start(&dir.path().join("stranger"), &home.addr, &issuer)?;
    let log = dir.path().join("stranger/stderr.log");
    wait(
        "the stranger to be refused",
        Duration::from_secs(15),
        || Ok(std::fs::read_to_string(&log)?.contains("the director refused")),
    )?;
    assert!(
        engines(&home.addr)?.is_empty(),
        "an untrusted engine attached"
    );
    drop(stranger);

    let engine = EngineProcess::start(&engine_data, &home.addr, &issuer)?;
    wait("the engine to attach", Duration::from_secs(20), || {
        Ok(engines(&home.addr)? == vec![(engine_peer.clone(), true)])
    })?;
    // The director knows the engine's own --max-streams 5, not its station default of 64.
    wait("the engine's limits", Duration::from_secs(10), || {
        let out = vodmesh(&["status", "--node", &home.addr.to_string(), "--json"])?;
        let json: serde_json::Value = serde_json::from_str(&out)?;
        Ok(json["stations"][0]["engines"][0]["max_streams"] == 5)
    })?;

    subscriber(
        &home.addr,
        &home_data.join("identity.key"),
        &dir.path().join("console"),
        "eve",
    )?;
    let source = dir.path().join("program.bin");
    let bytes = random_file(&source, 3 * 1024 * 1024 + 5, 8)?;
    let out = vodmesh(&[
        "ingest",
        "--node",
        &home.addr.to_string(),
        "--key",
        &home_data.join("identity.key").to_string_lossy(),
        "--title",
        "remote",
        "--publish-at",
        "now",
        "--segment-size",
        "1048576",
        &source.to_string_lossy(),
    ])?;
    let program = out.lines().last().unwrap_or_default().to_string();

    let (played, stats) = play(None, &dir.path().join("console"), &home.addr, &program)?;
    assert!(played == bytes, "bytes played differ from bytes ingested");
    assert_eq!(stats["verified"], true);
    assert_eq!(
        stats["engines"],
        serde_json::json!([engine_peer]),
        "{stats}"
    );
    assert_eq!(
        located(&home.addr, &program, 4)?,
        vec![engine_peer.clone(); 4]
    );
    // The engine process counts what it took in and sent out, on its own /metrics.
    let len = bytes.len() as f64;
    let url = engine.metrics.clone();
    wait("the engine's metrics", Duration::from_secs(10), || {
        Ok(
            metric(&url, "vodmesh_bytes_in_total{kind=\"ingest\"}")? == len
                && metric(&url, "vodmesh_stream_bytes_out_total")? >= len,
        )
    })?;
    let up = format!("vodmesh_engine_up{{engine=\"{engine_peer}\"}}");
    assert_eq!(metric(&url, &up)?, 1.0);
    assert_eq!(metric(&home_metrics, &up)?, 1.0);

    // Killed: marked down within seconds, and named for no segment.
    engine.kill()?;
    let took = wait(
        "the engine to be marked down",
        Duration::from_secs(10),
        || Ok(engines(&home.addr)? == vec![(engine_peer.clone(), false)]),
    )?;
    assert!(took < Duration::from_secs(5), "marked down after {took:?}");
    assert_eq!(metric(&home_metrics, &up)?, 0.0);
    assert!(
        !located(&home.addr, &program, 4)?.contains(&engine_peer),
        "a down engine was chosen"
    );

    // Restarted on its data: up again, and it serves again.
    let engine = EngineProcess::start(&engine_data, &home.addr, &issuer)?;
    wait(
        "the engine to be marked up",
        Duration::from_secs(20),
        || Ok(engines(&home.addr)? == vec![(engine_peer.clone(), true)]),
    )?;

    // Hung (SIGSTOP: the connection stays open, nothing answers): the heartbeat times out
    // and the engine is marked down; resumed, it reattaches by itself.
    engine.signal("STOP")?;
    let took = wait(
        "the hung engine to be marked down",
        Duration::from_secs(10),
        || Ok(engines(&home.addr)? == vec![(engine_peer.clone(), false)]),
    )?;
    assert!(took < Duration::from_secs(6), "marked down after {took:?}");
    engine.signal("CONT")?;
    wait(
        "the resumed engine to be marked up",
        Duration::from_secs(20),
        || Ok(engines(&home.addr)? == vec![(engine_peer.clone(), true)]),
    )?;
    let (played, _) = play(None, &dir.path().join("console"), &home.addr, &program)?;
    assert!(played == bytes, "bytes played after the restart differ");
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
}

/// A station of two engine processes (home, auth, content manager) and a second station with
/// a complete replica; `vodmesh-console play --speed max --out -` through the home station;
/// once the console has written the first segment, the first engine process meets `fate`.
/// The play finishes with the program's exact bytes. Returns the console's debug log and the
/// first engine's peer id.
fn engine_process_fails_mid_play(fate: Fate) -> Result<(String, String)> {
    use std::io::Read;
    use vodmesh_tests::{enrolled_process, keygen, plain, status_directors, wait_holds_all};
    const MIB: usize = 1024 * 1024;
    const SEGMENTS: u32 = 16;
    let dir = tempfile::tempdir()?;
    let (e1_data, e2_data) = (dir.path().join("e1"), dir.path().join("e2"));
    std::fs::create_dir_all(&e1_data)?;
    std::fs::create_dir_all(&e2_data)?;
    let e1_peer = keygen(None, &e1_data.join("identity.key"))?;
    let e2_peer = keygen(None, &e2_data.join("identity.key"))?;
    let home = NodeProcess::start(
        &dir.path().join("home"),
        &[
            "--engines",
            "0",
            "--engine-peer",
            &e1_peer,
            "--engine-peer",
            &e2_peer,
            "--home",
            "--content-manager",
            "--auth",
            "--record-ttl",
            "10",
        ],
    )?;
    let issuer = issuer_of(&home.data)?;
    let e1 = EngineProcess::start(&e1_data, &home.addr, &issuer)?;
    let _e2 = EngineProcess::start(&e2_data, &home.addr, &issuer)?;
    wait("both engines to attach", Duration::from_secs(20), || {
        let mut up = engines(&home.addr)?;
        up.sort();
        let mut want = vec![(e1_peer.clone(), true), (e2_peer.clone(), true)];
        want.sort();
        Ok(up == want)
    })?;
    let replica = enrolled_process(
        &dir.path().join("replica"),
        &home,
        &["--engines", "2", "--record-ttl", "10"],
    )?;
    let replica_director = vodmesh_proto::net::peer_of(&replica.addr)
        .context("no peer id")?
        .to_string();
    wait(
        "the stations to find each other",
        Duration::from_secs(30),
        || Ok(status_directors(&home.addr)?.contains(&replica_director)),
    )?;
    let console = dir.path().join("console");
    subscriber(&home.addr, &home.data.join("identity.key"), &console, "fay")?;
    let source = dir.path().join("program.bin");
    let bytes = random_file(&source, SEGMENTS as usize * MIB, 17)?;
    let out = vodmesh(&[
        "ingest",
        "--node",
        &home.addr.to_string(),
        "--key",
        &home.data.join("identity.key").to_string_lossy(),
        "--title",
        "sturdy",
        "--publish-at",
        "now",
        "--segment-size",
        &MIB.to_string(),
        "--replicas",
        "1",
        &source.to_string_lossy(),
    ])?;
    let program = out.lines().last().unwrap_or_default().to_string();
    tokio::runtime::Runtime::new()?.block_on(wait_holds_all(
        &replica.addr,
        program.parse()?,
        SEGMENTS,
        Duration::from_secs(60),
    ))?;

    let stats = dir.path().join("stats.json");
    let mut child = Command::new(bin("vodmesh-console"))
        .env("VODMESH_HOME", &console)
        .env("RUST_LOG", "vodmesh_console=debug")
        .args(["play", "--node", &home.addr.to_string(), "--speed", "max"])
        .args(["--out", "-", "--stats"])
        .arg(&stats)
        .arg(&program)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut stdout = child.stdout.take().context("no stdout")?;
    let mut stderr = child.stderr.take().context("no stderr")?;
    let log = std::thread::spawn(move || {
        let mut log = String::new();
        let _ = stderr.read_to_string(&mut log);
        log
    });
    // The console writes into the pipe only as fast as it is read: once the first segment
    // is read, the rest is yet to be fetched (but for the segments in its window).
    let mut played = vec![0u8; MIB];
    stdout.read_exact(&mut played)?;
    let kept = match fate {
        Fate::Killed => {
            e1.kill()?;
            None
        }
        Fate::Frozen => {
            e1.signal("STOP")?;
            Some(e1)
        }
    };
    stdout.read_to_end(&mut played)?;
    let status = child.wait()?;
    let log = plain(&log.join().unwrap_or_default());
    // Killed when dropped (SIGKILL ends a stopped process too).
    drop(kept);
    assert!(
        status.success(),
        "play failed: {}",
        log.lines().last().unwrap_or_default()
    );
    assert!(
        played == bytes,
        "bytes played differ from the source after {fate:?}"
    );
    let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(&stats)?)?;
    assert_eq!(stats["verified"], true, "{stats}");
    assert_eq!(stats["segments"], SEGMENTS, "{stats}");
    Ok((log, e1_peer))
}

#[test]
fn an_engine_process_killed_mid_play_costs_the_console_nothing() -> Result<()> {
    engine_process_fails_mid_play(Fate::Killed)?;
    Ok(())
}

/// A frozen engine process (SIGSTOP) stays connected and sends nothing: the console finds it
/// unreachable (no byte, or no answer, within the stall limit) and the segment is resumed at
/// another holder, which the console's log names.
#[test]
fn an_engine_process_frozen_mid_play_is_passed_over_for_another_holder() -> Result<()> {
    let (log, frozen) = engine_process_fails_mid_play(Fate::Frozen)?;
    // "segment attempt ended; asking again index=K ended=Unreachable(PeerId("<frozen>"))"
    let unreachable = format!("ended=Unreachable(PeerId(\"{frozen}\"))");
    let index_of = |line: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("index="))
            .map(str::to_string)
    };
    let stalled = log
        .lines()
        .find(|l| l.contains(&unreachable))
        .and_then(index_of)
        .with_context(|| {
            format!("the console never found the frozen engine unreachable:\n{log}")
        })?;
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
    assert_ne!(
        served, frozen,
        "segment {stalled} was served by the frozen engine"
    );
    Ok(())
}
