//! Deployment mode (b) and engine health, with real processes: an engine in a process of its
//! own (`vodmesh-node engine --director MULTIADDR`), attached to a director that trusts its
//! peer id (`--engine-peer`) and holds no engine of its own, takes a program's segments at
//! ingest and serves a console the whole program, byte for byte. An untrusted engine process
//! is refused. The engine process is killed (SIGKILL): within seconds the director marks it
//! down (`vodmesh status`, `/metrics`) and no longer names it for any segment; restarted on
//! the same data directory, it is marked up again; hung (SIGSTOP) it is marked down by the
//! heartbeat's time-out, and resumed it reattaches and serves the console again.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use libp2p::Multiaddr;
use vodmesh_tests::{NodeProcess, bin, issuer_of, random_file, subscriber, vodmesh};

/// A `vodmesh-node engine` process; killed when dropped.
struct EngineProcess {
    child: Child,
    /// Its `/metrics` URL.
    metrics: String,
}

impl EngineProcess {
    /// Starts an engine on loopback under `data`, attached to `director`, trusting `issuer`;
    /// returns once it printed its `engine <MULTIADDR>` line.
    fn start(data: &Path, director: &Multiaddr, issuer: &str) -> Result<Self> {
        std::fs::create_dir_all(data)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.join("stderr.log"))?;
        let mut child = Command::new(bin("vodmesh-node"))
            .args(["engine", "--director", &director.to_string(), "--data"])
            .arg(data)
            .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--trust", issuer])
            .args(["--metrics", "127.0.0.1:0", "--max-streams", "5"])
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let metrics = loop {
            let Some(line) = lines.next() else {
                let _ = child.kill();
                bail!("vodmesh-node engine exited before printing its metrics address");
            };
            if let Some(url) = line?.strip_prefix("metrics ") {
                break url.trim().to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Ok(Self { child, metrics })
    }

    /// Sends `signal` (`STOP`, `CONT`) to the process.
    fn signal(&self, signal: &str) -> Result<()> {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(sent.success(), "kill -{signal} failed");
        Ok(())
    }

    fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

/// The value of series `name` (with its labels) in a scrape of `url`.
fn metric(url: &str, name: &str) -> Result<f64> {
    let body = ureq::get(url).call()?.body_mut().read_to_string()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .with_context(|| format!("no {name} in\n{body}"))
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

/// Plays `program` at full speed through `node`; the bytes and the stats.
fn play(node: &Multiaddr, program: &str, dir: &Path) -> Result<(Vec<u8>, serde_json::Value)> {
    let out = dir.join("played.bin");
    let stats = dir.join("stats.json");
    let run = Command::new(bin("vodmesh-console"))
        .env("VODMESH_HOME", dir.join("console"))
        .args([
            "play",
            "--node",
            &node.to_string(),
            "--speed",
            "max",
            program,
        ])
        .arg("--out")
        .arg(&out)
        .arg("--stats")
        .arg(&stats)
        .output()?;
    if !run.status.success() {
        bail!("play failed: {}", String::from_utf8_lossy(&run.stderr));
    }
    Ok((
        std::fs::read(&out)?,
        serde_json::from_slice(&std::fs::read(&stats)?)?,
    ))
}

/// The director's answer to Locate for every segment: the engine peer ids it names.
fn located(node: &Multiaddr, program: &str, segments: u32) -> Result<Vec<String>> {
    use vodmesh_proto::director::{Request, Response};
    let program: vodmesh_proto::ProgramId = program.parse()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = vodmesh_console::client::DirectorClient::connect(node, None).await?;
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

    let (played, stats) = play(&home.addr, &program, dir.path())?;
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
    let (played, _) = play(&home.addr, &program, dir.path())?;
    assert!(played == bytes, "bytes played after the restart differ");
    drop(engine);
    assert!(home.terminate()?, "the station did not stop cleanly");
    Ok(())
}
