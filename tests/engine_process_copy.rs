//! Engine processes copy in from other stations (issue 17; claims 12, 24, 25 in deployment
//! mode b). A station whose only engine is a `vodmesh-node engine` process has that engine's
//! token obtained by its director (`StationEngineToken`) and forwarded over the backplane;
//! with it the engine fills a miss and takes a `--replicas 1` replica, and the console's bytes
//! equal the source's. Without the station's enrollment the engine holds no token: the holder
//! refuses its copies, and the console is served by the holder instead. A token refreshed by
//! the director reaches the engine process again before the old one expires.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use libp2p::Multiaddr;
use vodmesh_tests::{
    EngineProcess, NodeProcess, enroll_new_station, ingest, issuer_of, keygen, metric, play,
    random_file, subscriber, wait_until,
};

/// The bytes an engine process took in by copying, on its own `/metrics`.
const COPIED: &str = "vodmesh_bytes_in_total{kind=\"copy\"}";
/// Copies a station's engines refused, on its director's `/metrics`.
const REFUSED: &str = "vodmesh_token_refusals_total{kind=\"copy\"}";

/// A free port on 127.0.0.1, for a station's `--metrics` (NodeProcess reads only the
/// director line).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The home station (content manager, auth, one engine in process), with its metrics URL.
fn home(dir: &Path) -> Result<(NodeProcess, String)> {
    let port = free_port()?;
    let metrics = format!("127.0.0.1:{port}");
    let node = NodeProcess::start(
        &dir.join("home"),
        &[
            "--engines",
            "1",
            "--home",
            "--content-manager",
            "--auth",
            "--record-ttl",
            "10",
            "--metrics",
            &metrics,
        ],
    )?;
    Ok((node, format!("http://{metrics}/metrics")))
}

/// A station of no engine of its own and one engine process, joined to `home` and trusting
/// `issuer`, started with `extra` (its enrollment, or nothing); the engine process attached.
fn station_of_one_engine_process(
    dir: &Path,
    home: &Multiaddr,
    issuer: &str,
    extra: &[&str],
) -> Result<(NodeProcess, EngineProcess, String)> {
    let engine_data = dir.join("engine");
    let engine_peer = keygen(None, &engine_data.join("identity.key"))?;
    let boot = home.to_string();
    let mut args = vec!["--engines", "0", "--engine-peer", &engine_peer];
    args.extend_from_slice(&["--bootstrap", &boot, "--trust", issuer]);
    args.extend_from_slice(&["--record-ttl", "10"]);
    args.extend_from_slice(extra);
    let station = NodeProcess::start(&dir.join("station"), &args)?;
    let engine = EngineProcess::start(&engine_data, &station.addr, issuer)?;
    Ok((station, engine, engine_peer))
}

/// Polls `check` (blocking calls: run on the blocking pool) until true.
async fn wait_for(
    what: &str,
    secs: u64,
    check: impl Fn() -> Result<bool> + Clone + Send + 'static,
) -> Result<()> {
    wait_until(what, Duration::from_secs(secs), || {
        let check = check.clone();
        async move { tokio::task::spawn_blocking(check).await? }
    })
    .await
}

/// A metric that may not be exported yet (no copy counted) reads as 0.
fn metric_or_zero(url: &str, name: &str) -> f64 {
    metric(url, name).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_enrolled_station_of_engine_processes_fills_misses_and_takes_replicas() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (home, home_metrics) = home(dir.path())?;
    let issuer = issuer_of(&home.data)?;
    let admin_key = home.data.join("identity.key");
    let station_data = dir.path().join("station");
    let token = enroll_new_station(None, &home.addr, &admin_key, &station_data)?;
    let token = token.to_string_lossy().into_owned();
    let (station, engine, engine_peer) =
        station_of_one_engine_process(dir.path(), &home.addr, &issuer, &["--enroll", &token])?;
    // The director obtained the engine's token and forwarded it; the engine keeps it.
    let token_file = dir.path().join("engine/engine.token");
    let seen = token_file.clone();
    wait_for("the engine process's token", 30, move || Ok(seen.exists())).await?;

    subscriber(&home.addr, &admin_key, &dir.path().join("console"), "ivy")?;
    let console = dir.path().join("console");

    // A miss: the program is at the home only; played through the station, whose engine
    // process copies it in and serves it while it arrives.
    let source = dir.path().join("missed.bin");
    let missed = random_file(&source, 3 * 1024 * 1024 + 5, 17)?;
    let program = ingest(None, &home.addr, &admin_key, "missed", &source, &[])?;
    let (played, stats) = play(None, &console, &station.addr, &program)?;
    assert!(played == missed, "bytes played differ from bytes ingested");
    assert_eq!(stats["verified"], true);
    assert_eq!(
        stats["engines"],
        serde_json::json!([engine_peer]),
        "{stats}"
    );
    // Counted once the copy is stored, which may be after the console read its last byte.
    let copied = missed.len() as f64;
    let url = engine.metrics.clone();
    wait_for("the miss's copies", 30, move || {
        Ok(metric_or_zero(&url, COPIED) == copied)
    })
    .await?;

    // A replica: the station is the only one besides the home, so --replicas 1 goes to it,
    // and its engine process copies the whole program before anyone plays it.
    let source = dir.path().join("replica.bin");
    let replica = random_file(&source, 2 * 1024 * 1024 + 11, 18)?;
    let replicas = ["--replicas", "1"];
    let program = ingest(None, &home.addr, &admin_key, "replica", &source, &replicas)?;
    let url = engine.metrics.clone();
    let want = copied + replica.len() as f64;
    wait_for("the replica's copies", 60, move || {
        Ok(metric_or_zero(&url, COPIED) == want)
    })
    .await?;
    let (played, stats) = play(None, &console, &station.addr, &program)?;
    assert!(
        played == replica,
        "bytes played differ from the replica's source"
    );
    assert_eq!(
        stats["engines"],
        serde_json::json!([engine_peer]),
        "{stats}"
    );
    assert_eq!(
        metric(&engine.metrics, COPIED)?,
        want,
        "the replica was copied again at play"
    );
    assert_eq!(metric_or_zero(&home_metrics, REFUSED), 0.0);

    drop(engine);
    assert!(station.terminate()?, "the station did not stop cleanly");
    assert!(home.terminate()?, "the home did not stop cleanly");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn without_enrollment_an_engine_process_copies_nothing_and_the_holder_serves() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (home, home_metrics) = home(dir.path())?;
    let issuer = issuer_of(&home.data)?;
    let admin_key = home.data.join("identity.key");
    let (station, engine, engine_peer) =
        station_of_one_engine_process(dir.path(), &home.addr, &issuer, &[])?;
    let home_engine = vodmesh_node::nodefile::NodeFile::read(&home.data)?
        .engines
        .first()
        .map(|e| e.peer_id.to_string())
        .context("the home has no engine")?;
    let addr = station.addr.to_string();
    let peer = engine_peer.clone();
    wait_for("the engine process to attach", 30, move || {
        let out = vodmesh_tests::vodmesh(&["status", "--node", &addr, "--json"])?;
        let json: serde_json::Value = serde_json::from_str(&out)?;
        let stations = json["stations"].as_array().cloned().unwrap_or_default();
        Ok(stations
            .iter()
            .any(|s| s["engines"][0]["peer_id"] == peer.as_str() && s["engines"][0]["up"] == true))
    })
    .await?;
    subscriber(&home.addr, &admin_key, &dir.path().join("console"), "jay")?;

    // The replica goes to the only other station; its engine process asks the home's engine
    // for each segment with no engine token, and is refused.
    let source = dir.path().join("program.bin");
    let bytes = random_file(&source, 2 * 1024 * 1024 + 3, 19)?;
    let replicas = ["--replicas", "1"];
    let program = ingest(None, &home.addr, &admin_key, "refused", &source, &replicas)?;
    let url = home_metrics.clone();
    wait_for("the home to refuse a copy", 60, move || {
        Ok(metric_or_zero(&url, REFUSED) >= 1.0)
    })
    .await?;

    // Played through the station: it cannot copy, so the holder serves the console.
    let console = dir.path().join("console");
    let (played, stats) = play(None, &console, &station.addr, &program)?;
    assert!(played == bytes, "bytes played differ from bytes ingested");
    assert_eq!(stats["verified"], true);
    assert_eq!(
        stats["engines"],
        serde_json::json!([home_engine]),
        "{stats}"
    );
    assert_eq!(metric_or_zero(&engine.metrics, COPIED), 0.0);
    assert!(
        !dir.path().join("engine/engine.token").exists(),
        "an engine of an unenrolled station holds a token"
    );

    drop(engine);
    assert!(station.terminate()?, "the station did not stop cleanly");
    assert!(home.terminate()?, "the home did not stop cleanly");
    Ok(())
}

/// The auth station's own engine process, with engine tokens of 4 s: the director refreshes
/// the token at half its life and forwards each new one; the engine keeps every one it gets
/// (its token file changes), each bound to the engine and valid when it arrives.
#[tokio::test(flavor = "multi_thread")]
async fn a_refreshed_token_reaches_the_engine_process_before_the_old_one_expires() -> Result<()> {
    use vodmesh_proto::token::{Audience, TrustedIssuers};
    let dir = tempfile::tempdir()?;
    let engine_data = dir.path().join("engine");
    let key = vodmesh_node::identity::load_or_create(&engine_data.join("identity.key"))?;
    let engine_peer = key.public().to_peer_id();
    let mut config = vodmesh_node::StationConfig::new(dir.path().join("auth"));
    config.auth = true;
    config.engines = 0;
    config.engine_peers = vec![engine_peer];
    config.auth_config.engine_ttl = Duration::from_secs(4);
    let station = vodmesh_node::Station::start(config).await?;
    let issuer = station.issuer().context("the auth station has no issuer")?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let engine = vodmesh_node::blade::start_engine(
        vodmesh_node::blade::EngineProcess {
            director: station.addr().clone(),
            data: engine_data.clone(),
            disks: Vec::new(),
            listen: vodmesh_node::config::default_listen("127.0.0.1"),
            announce: Vec::new(),
            capacity: 0,
            max_streams: 8,
            trust: vec![issuer],
            metrics: None,
        },
        stopped,
    )
    .await?;

    let trusted: TrustedIssuers = [issuer].into_iter().collect();
    let file = engine_data.join("engine.token");
    let mut seen: Vec<Vec<u8>> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < 3 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{} engine tokens forwarded in 30 s",
            seen.len()
        );
        // The file is rewritten whole (temp file, rename): a read sees one token or none.
        if let Ok(token) = std::fs::read(&file)
            && seen.last() != Some(&token)
        {
            let now = vodmesh_proto::time::now_ms();
            let claims = trusted.verify(&token, now, Audience::Engine, None, &engine_peer)?;
            assert_eq!(claims.subject, engine_peer);
            seen.push(token);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(true);
    engine.stopped().await;
    station.shutdown().await;
    Ok(())
}
