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
use vodmesh_tests::cli::{Ingest, Play, keygen, subscriber};
use vodmesh_tests::http::metric;
use vodmesh_tests::media::random_file;
use vodmesh_tests::process::{EngineProcess, Node, NodeProcess};
use vodmesh_tests::{status, wait};

/// The bytes an engine process took in by copying, on its own `/metrics`.
const COPIED: &str = "vodmesh_bytes_in_total{kind=\"copy\"}";
/// Copies a station's engines refused, on its director's `/metrics`.
const REFUSED: &str = "vodmesh_token_refusals_total{kind=\"copy\"}";

/// The home station (content manager, auth, one engine in process), with its metrics URL.
fn home(dir: &Path) -> Result<(NodeProcess, String)> {
    let node = Node::new(&dir.join("home"))
        .engines(1)
        .home()
        .ttl(10)
        .metrics()
        .start()?;
    let metrics = node.metrics_url()?;
    Ok((node, metrics))
}

/// A station of no engine of its own and one engine process, joined to `home` and trusting
/// `issuer` (enrolled with `home` when `enrolled`); the engine process attached.
fn station_of_one_engine_process(
    dir: &Path,
    home: &NodeProcess,
    enrolled: bool,
) -> Result<(NodeProcess, EngineProcess, String)> {
    let engine_data = dir.join("engine");
    let engine_peer = keygen(None, &engine_data.join("identity.key"))?;
    let issuer = home.issuer()?;
    let mut station = Node::new(&dir.join("station"))
        .engines(0)
        .args(&["--engine-peer", &engine_peer])
        .ttl(10);
    station = if enrolled {
        station.enrolled_with(home)?
    } else {
        station.bootstrap(&home.addr).trust(&issuer)
    };
    let station = station.start()?;
    let engine = EngineProcess::start(&engine_data, &station.addr, &issuer)?;
    Ok((station, engine, engine_peer))
}

/// A metric that may not be exported yet (no copy counted) reads as 0.
fn metric_or_zero(url: &str, name: &str) -> f64 {
    metric(url, name).unwrap_or(0.0)
}

/// Waits until `check` holds for the metric `name` at `url` (0 while not exported).
async fn wait_metric(
    what: &str,
    secs: u64,
    url: &str,
    name: &'static str,
    check: impl Fn(f64) -> bool + Clone + Send + 'static,
) -> Result<()> {
    let url = url.to_string();
    wait::until_blocking(what, Duration::from_secs(secs), move || {
        Ok(check(metric_or_zero(&url, name)))
    })
    .await
}

/// Asserts that `engine` served the play whose `--stats` are `stats`. Not necessarily alone:
/// a console whose segment is slow to come (a loaded machine) hedges it at another station,
/// here the home, and plays whichever copy comes first.
fn served_by(stats: &serde_json::Value, engine: &str) {
    let engines = stats["engines"].as_array().cloned().unwrap_or_default();
    assert!(engines.contains(&serde_json::json!(engine)), "{stats}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_enrolled_station_of_engine_processes_fills_misses_and_takes_replicas() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (home, home_metrics) = home(dir.path())?;
    let (station, engine, engine_peer) = station_of_one_engine_process(dir.path(), &home, true)?;
    // The director obtained the engine's token and forwarded it; the engine keeps it.
    let token_file = dir.path().join("engine/engine.token");
    wait::until_blocking(
        "the engine process's token",
        Duration::from_secs(30),
        move || Ok(token_file.exists()),
    )
    .await?;
    // And the home found the engine in the station's record, where it looks when it
    // approves the station's engines for copies: under a full suite's load, the miss below
    // once came before the record did, and the engine's copies were refused.
    seen_by(&home, &station, vec![(engine_peer.clone(), true)]).await?;

    let console = dir.path().join("console");
    subscriber(&home.addr, &home.key(), &console, "ivy")?;

    // A miss: the program is at the home only; played through the station, whose engine
    // process copies it in and serves it while it arrives.
    let source = dir.path().join("missed.bin");
    let missed = random_file(&source, 3 * 1024 * 1024 + 5, 17)?;
    let program = ingest(&home, "missed", &source, 0)?;
    let played = Play::new(&console, &station.addr, &program).run()?;
    assert!(
        played.bytes == missed,
        "bytes played differ from bytes ingested"
    );
    assert_eq!(played.stats["verified"], true);
    served_by(&played.stats, &engine_peer);
    // Counted once the copy is stored, which may be after the console read its last byte.
    let copied = missed.len() as f64;
    wait_metric("the miss's copies", 30, &engine.metrics, COPIED, move |v| {
        v == copied
    })
    .await?;

    // A replica: the station is the only one besides the home, so --replicas 1 goes to it,
    // and its engine process copies the whole program before anyone plays it.
    let source = dir.path().join("replica.bin");
    let replica = random_file(&source, 2 * 1024 * 1024 + 11, 18)?;
    let program = ingest(&home, "replica", &source, 1)?;
    let want = copied + replica.len() as f64;
    wait_metric(
        "the replica's copies",
        60,
        &engine.metrics,
        COPIED,
        move |v| v == want,
    )
    .await?;
    let played = Play::new(&console, &station.addr, &program).run()?;
    assert!(
        played.bytes == replica,
        "bytes played differ from the replica's source"
    );
    served_by(&played.stats, &engine_peer);
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
    let (station, engine, engine_peer) = station_of_one_engine_process(dir.path(), &home, false)?;
    let home_engine = home.engine()?;
    let addr = station.addr.clone();
    let want = vec![(engine_peer.clone(), true)];
    wait::until_blocking(
        "the engine process to attach",
        Duration::from_secs(30),
        move || Ok(status::engines_up(&addr)? == want),
    )
    .await?;
    let console = dir.path().join("console");
    subscriber(&home.addr, &home.key(), &console, "jay")?;

    // The replica has nowhere to go: the only other station is no member of the home's
    // swarm (issue 19), so it is no replica target (and its engine holds no engine token).
    let source = dir.path().join("program.bin");
    let bytes = random_file(&source, 2 * 1024 * 1024 + 3, 19)?;
    let program = ingest(&home, "refused", &source, 1)?;
    home.wait_log("1 replicas wanted, 0 placed", Duration::from_secs(30))?;

    // Played through the station: it cannot copy, so the holder serves the console.
    let played = Play::new(&console, &station.addr, &program).run()?;
    assert!(
        played.bytes == bytes,
        "bytes played differ from bytes ingested"
    );
    assert_eq!(played.stats["verified"], true);
    assert_eq!(
        played.stats["engines"],
        serde_json::json!([home_engine]),
        "{}",
        played.stats
    );
    assert_eq!(metric_or_zero(&engine.metrics, COPIED), 0.0);
    // Not even tried: the home named the station no engine to copy from.
    assert_eq!(metric_or_zero(&home_metrics, REFUSED), 0.0);
    assert!(
        !dir.path().join("engine/engine.token").exists(),
        "an engine of an unenrolled station holds a token"
    );

    drop(engine);
    assert!(station.terminate()?, "the station did not stop cleanly");
    assert!(home.terminate()?, "the home did not stop cleanly");
    Ok(())
}

/// An engine process that attaches to a station after a holder approved that station's
/// engines for copies copies from the holder at its first miss: the station's director names
/// its engines when it asks the holder where the segment is (`LocateCopy`), and the holder,
/// finding one it has not approved, looks the station up again. Before, the holder kept the
/// approval it had (ten minutes) and refused the new engine, whose consoles it then served
/// itself.
#[tokio::test(flavor = "multi_thread")]
async fn an_engine_attached_after_its_station_was_approved_copies_at_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (home, home_metrics) = home(dir.path())?;
    let (first_data, second_data) = (dir.path().join("first"), dir.path().join("second"));
    let first = keygen(None, &first_data.join("identity.key"))?;
    let second = keygen(None, &second_data.join("identity.key"))?;
    let issuer = home.issuer()?;
    let station = Node::new(&dir.path().join("station"))
        .engines(0)
        .args(&["--engine-peer", &first, "--engine-peer", &second])
        .ttl(10)
        .enrolled_with(&home)?
        .start()?;
    let console = dir.path().join("console");
    subscriber(&home.addr, &home.key(), &console, "lee")?;
    let program = |title: &str, seed: u64| -> Result<(String, Vec<u8>)> {
        let source = dir.path().join(format!("{title}.bin"));
        let bytes = random_file(&source, 2 * 1024 * 1024 + 9, seed)?;
        Ok((ingest(&home, title, &source, 0)?, bytes))
    };

    // The first engine attaches; once the home sees it in the station's record, a miss at
    // the station is copied into it, and the home approves the station's engines.
    let engine = EngineProcess::start(&first_data, &station.addr, &issuer)?;
    seen_by(&home, &station, vec![(first.clone(), true)]).await?;
    let (one, bytes) = program("one", 51)?;
    let played = Play::new(&console, &station.addr, &one).run()?;
    assert!(played.bytes == bytes, "bytes played differ from the source");
    served_by(&played.stats, &first);

    // The first engine goes and the second attaches: the next miss is copied into it.
    engine.kill()?;
    let engine = EngineProcess::start(&second_data, &station.addr, &issuer)?;
    let mut both = vec![(first, false), (second.clone(), true)];
    both.sort();
    seen_by(&home, &station, both).await?;
    let (two, bytes) = program("two", 52)?;
    let played = Play::new(&console, &station.addr, &two).run()?;
    assert!(played.bytes == bytes, "bytes played differ from the source");
    served_by(&played.stats, &second);
    assert_eq!(
        metric_or_zero(&home_metrics, REFUSED),
        0.0,
        "the home refused the new engine's copies"
    );

    drop(engine);
    assert!(station.terminate()?, "the station did not stop cleanly");
    assert!(home.terminate()?, "the home did not stop cleanly");
    Ok(())
}

/// Waits until `home` finds `station`'s record with its engines as `engines` ((peer id,
/// up), sorted) in the registry, where it looks when it approves the station's engines.
async fn seen_by(
    home: &NodeProcess,
    station: &NodeProcess,
    engines: Vec<(String, bool)>,
) -> Result<()> {
    let (addr, director) = (home.addr.clone(), station.peer());
    wait::until_blocking(
        "the home to see the station's engines",
        Duration::from_secs(30),
        move || Ok(status::engines_seen_by(&addr, &director)? == Some(engines.clone())),
    )
    .await
}

/// A home station whose only engine is a process holds two programs; station b fills a miss
/// of the first from it (the home's director approves b's engines for copies). The engine
/// process is SIGKILLed and restarted on its data: a miss of the second program at b is
/// copied from it at once, as before, not refused until the home checks b again (issue 17:
/// a restarted engine process forgot its director's approvals and refused copies for
/// minutes).
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_engine_process_serves_copies_again_at_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine_data = dir.path().join("engine");
    let engine_peer = keygen(None, &engine_data.join("identity.key"))?;
    let home = Node::new(&dir.path().join("home"))
        .engines(0)
        .args(&["--engine-peer", &engine_peer])
        .home()
        .ttl(10)
        .metrics()
        .start()?;
    let home_metrics = home.metrics_url()?;
    let issuer = home.issuer()?;
    let engine = EngineProcess::start(&engine_data, &home.addr, &issuer)?;
    let addr = home.addr.clone();
    let want = vec![(engine_peer.clone(), true)];
    let attached = move || Ok(status::engines_up(&addr)? == want);
    wait::until_blocking(
        "the engine process to attach",
        Duration::from_secs(30),
        attached.clone(),
    )
    .await?;
    let b = Node::new(&dir.path().join("b"))
        .engines(1)
        .ttl(10)
        .metrics()
        .enrolled_with(&home)?
        .start()?;
    let (b_engine, b_metrics) = (b.engine()?, b.metrics_url()?);
    let (home_addr, b_peer) = (home.addr.clone(), b.peer());
    wait::until_blocking(
        "the stations to find each other",
        Duration::from_secs(30),
        move || Ok(status::directors(&home_addr)?.contains(&b_peer)),
    )
    .await?;
    let console = dir.path().join("console");
    subscriber(&home.addr, &home.key(), &console, "kim")?;
    let programs: Vec<(String, Vec<u8>)> = (0..2u64)
        .map(|k| {
            let source = dir.path().join(format!("p{k}.bin"));
            let bytes = random_file(&source, 2 * 1024 * 1024 + 7, 40 + k)?;
            Ok((ingest(&home, &format!("p{k}"), &source, 0)?, bytes))
        })
        .collect::<Result<_>>()?;

    // A miss at b, filled from the engine process: b's engines are approved.
    let copied_by_b = |played: &vodmesh_tests::cli::Played, bytes: &[u8]| {
        assert!(played.bytes == bytes, "bytes played differ from the source");
        // b's engine filled the miss and served it.
        served_by(&played.stats, &b_engine);
    };
    let played = Play::new(&console, &b.addr, &programs[0].0).run()?;
    copied_by_b(&played, &programs[0].1);
    let copied = programs[0].1.len() as f64;
    wait_metric("b's first copy", 30, &b_metrics, COPIED, move |v| {
        v == copied
    })
    .await?;

    // SIGKILL, restart on its data, attached again.
    engine.kill()?;
    let engine = EngineProcess::start(&engine_data, &home.addr, &issuer)?;
    wait::until_blocking(
        "the engine process to attach again",
        Duration::from_secs(30),
        attached,
    )
    .await?;

    // A miss of the other program: copied from the restarted engine at once.
    let played = Play::new(&console, &b.addr, &programs[1].0).run()?;
    copied_by_b(&played, &programs[1].1);
    assert_eq!(
        metric_or_zero(&home_metrics, REFUSED),
        0.0,
        "the restarted engine refused b's copies"
    );

    drop(engine);
    assert!(b.terminate()?, "station b did not stop cleanly");
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
            http: None,
            tls: None,
        },
        stopped,
    )
    .await?;

    let trusted: TrustedIssuers = [issuer].into_iter().collect();
    let file = engine_data.join("engine.token");
    let mut seen: Vec<Vec<u8>> = Vec::new();
    // Each token lives 4 s and is refreshed at half its life: polled five times a second,
    // none is missed.
    let mut take_new = || -> Result<bool> {
        // The file is rewritten whole (temp file, rename): a read sees one token or none.
        if let Ok(token) = std::fs::read(&file)
            && seen.last() != Some(&token)
        {
            let now = vodmesh_proto::time::now_ms();
            let claims = trusted.verify(&token, now, Audience::Engine, None, &engine_peer)?;
            assert_eq!(claims.subject, engine_peer);
            seen.push(token);
        }
        Ok(seen.len() >= 3)
    };
    wait::until(
        "three engine tokens forwarded",
        Duration::from_secs(30),
        || {
            let done = take_new();
            async move { done }
        },
    )
    .await?;
    let _ = stop.send(true);
    engine.stopped().await;
    station.shutdown().await;
    Ok(())
}

/// `vodmesh ingest` of `source` into `home`, published now in 1 MiB segments with `replicas`
/// copies elsewhere; the program id.
fn ingest(home: &NodeProcess, title: &str, source: &Path, replicas: u32) -> Result<String> {
    Ingest::new(&home.addr, &home.key(), title, source)
        .publish_now()
        .segment_size(1024 * 1024)
        .replicas(replicas)
        .run()
}
