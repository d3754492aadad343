//! Readiness for orchestrators, through real `vodmesh-node` processes: `/healthz` answers 200
//! from the start; `/readyz` answers 503 (not joined) while a station given `--bootstrap`
//! cannot reach the director it was given (frozen), 200 once that one thaws and it joined, 503
//! again (draining) after `vodmesh station drain`, and 200 after `--resume`. A lone first
//! station (no `--bootstrap`) is ready on its own; an enrolled one only once its engines hold
//! their engine tokens, and one with an engine process once it attached. Also: the Grafana dashboard against a real node's metric names, and
//! the status page's sparklines.

use std::time::Duration;

use anyhow::Result;
use vodmesh_tests::cli::{keygen, vodmesh};
use vodmesh_tests::http::get;
use vodmesh_tests::process::Node;
use vodmesh_tests::wait;

/// `GET base/path`: the status and the body.
fn probe(base: &str, path: &str) -> Result<(u16, String)> {
    let reply = get(&format!("{base}{path}"), None)?;
    Ok((reply.status, reply.text()))
}

/// The base URL of a station's `--metrics` address (`http://127.0.0.1:PORT`).
fn base(node: &vodmesh_tests::process::NodeProcess) -> Result<String> {
    let url = node.metrics_url()?;
    Ok(url.trim_end_matches("/metrics").to_string())
}

#[test]
fn readyz_turns_ready_only_once_the_station_joined() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // The first station runs, frozen (SIGSTOP): its port takes connections, but no handshake
    // completes, so the second station, bootstrapping through it, cannot join until it thaws.
    let a = Node::new(&dir.path().join("a")).metrics().ttl(3).start()?;
    a.signal("STOP")?;
    let b = Node::new(&dir.path().join("b"))
        .bootstrap(&a.addr)
        .metrics()
        .ttl(3)
        .start()?;
    let b_base = base(&b)?;
    let (status, body) = probe(&b_base, "/healthz")?;
    assert_eq!(status, 200, "{body}");
    let (status, body) = probe(&b_base, "/readyz")?;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not joined"), "{body}");

    a.signal("CONT")?;
    wait::blocking("b ready", Duration::from_secs(30), || {
        Ok(probe(&b_base, "/readyz")?.0 == 200)
    })?;
    assert_eq!(probe(&b_base, "/healthz")?.0, 200);
    // The lone first station, with no --bootstrap, is ready too.
    let (status, body) = probe(&base(&a)?, "/readyz")?;
    assert_eq!((status, body.as_str()), (200, "ready\n"));

    // Drained by an admin from afar: not ready, still live; ready again once resumed.
    let node = b.addr.to_string();
    let key = b.key();
    let key = key.to_string_lossy();
    let said = vodmesh(&["station", "drain", "--node", &node, "--key", &key])?;
    assert!(said.contains("station draining: 0 stream(s)"), "{said}");
    let (status, body) = probe(&b_base, "/readyz")?;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("draining"), "{body}");
    assert_eq!(probe(&b_base, "/healthz")?.0, 200);
    // Someone else's key is refused.
    let stranger = dir.path().join("stranger.key");
    keygen(None, &stranger)?;
    let refused =
        vodmesh_tests::cli::refusal(vodmesh_tests::cli::command_in(None, "vodmesh").args([
            "station",
            "drain",
            "--resume",
            "--node",
            &node,
            "--key",
            &stranger.to_string_lossy(),
        ]))?;
    assert!(refused.contains("not an admin"), "{refused}");
    assert_eq!(probe(&b_base, "/readyz")?.0, 503);
    vodmesh(&[
        "station", "drain", "--resume", "--node", &node, "--key", &key,
    ])?;
    assert_eq!(probe(&b_base, "/readyz")?.0, 200);
    Ok(())
}

/// The metric names a `/metrics` text exports: every sample's name, and for every family its
/// OpenMetrics names (`_total` of a counter; `_bucket`, `_sum`, `_count` of a histogram), so
/// that a family with no sample yet (a label not seen so far) counts too.
fn exported(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// Every `vodmesh_...` name in a PromQL expression.
fn used(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("vodmesh_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_grafana_dashboard_uses_only_metrics_a_node_exports() -> Result<()> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/grafana/vodmesh.json");
    let dashboard: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let panels = dashboard["panels"].as_array().cloned().unwrap_or_default();
    let titles: Vec<String> = (panels.iter())
        .filter_map(|p| p["title"].as_str().map(str::to_lowercase))
        .collect();
    for wanted in [
        "throughput",
        "streams",
        "hit ratio",
        "misses",
        "token refusals",
        "registry query latency",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(wanted)),
            "no panel on {wanted}: {titles:?}"
        );
    }
    let mut exprs: Vec<String> = (panels.iter())
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(String::from))
        .collect();
    exprs.extend(
        (dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten())
        .filter_map(|v| v["definition"].as_str().map(String::from)),
    );
    let names: std::collections::BTreeSet<String> = exprs.iter().flat_map(|e| used(e)).collect();
    assert!(names.len() >= 10, "{names:?}");

    let dir = tempfile::tempdir()?;
    let node = Node::new(&dir.path().join("n")).metrics().start()?;
    let (status, text) = probe(&base(&node)?, "/metrics")?;
    assert_eq!(status, 200);
    let exported = exported(&text);
    let unknown: Vec<&String> = names.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics no node exports: {unknown:?}\nexported: {exported:?}"
    );
    Ok(())
}

/// The status page's sparklines: a station with `--metrics` keeps its last ten minutes in
/// memory; after a console played a program, `/status.json` carries, per station, inline SVG
/// sparklines of streams, bytes out, misses and copies, and the bytes out they show add up to
/// the station's `vodmesh_stream_bytes_out_total` (which counts the program's bytes); the
/// page draws them.
#[test]
fn the_status_page_carries_sparklines_of_each_station() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let home = Node::new(&dir.path().join("home"))
        .home()
        .metrics()
        .start()?;
    let base = base(&home)?;
    let console = dir.path().join("console");
    vodmesh_tests::cli::subscriber(&home.addr, &home.key(), &console, "sam")?;
    let source = dir.path().join("p.bin");
    let bytes = vodmesh_tests::media::random_file(&source, 3 * 256 * 1024, 81)?;
    vodmesh_tests::cli::Ingest::new(&home.addr, &home.key(), "sparkling", &source)
        .publish_now()
        .segment_size(256 * 1024)
        .run()?;
    let played = vodmesh_tests::cli::Play::new(&console, &home.addr, "sparkling").run()?;
    assert!(played.bytes == bytes, "played bytes differ");
    let out =
        vodmesh_tests::http::metric(&format!("{base}/metrics"), "vodmesh_stream_bytes_out_total")?;
    assert!(out >= bytes.len() as f64, "{out}");

    // The sampler takes the swarm in every 10 s: wait for the sample after the play.
    let mut last = serde_json::Value::Null;
    wait::blocking(
        "sparklines that show the play",
        Duration::from_secs(60),
        || {
            let (status, body) = probe(&base, "/status.json")?;
            anyhow::ensure!(status == 200, "{body}");
            last = serde_json::from_str(&body)?;
            let shown: f64 = (last["stations"][0]["history"]["bytes_out"]["values"].as_array())
                .map_or(0.0, |v| {
                    v.iter().filter_map(serde_json::Value::as_f64).sum()
                });
            Ok(shown == out)
        },
    )?;
    let history = &last["stations"][0]["history"];
    for series in ["streams", "bytes_out", "misses", "copies"] {
        let svg = history[series]["svg"].as_str().unwrap_or_default();
        assert!(
            svg.starts_with("<svg class=\"spark\""),
            "{series}: {history}"
        );
        assert!(svg.contains("<polyline"), "{series}: {svg}");
    }
    let (status, page) = probe(&base, "/")?;
    assert_eq!(status, 200);
    assert!(
        page.contains("function sparks(history)"),
        "the page draws them"
    );
    assert!(!page.contains("src=\"http"), "no external asset");
    Ok(())
}

/// An enrolled station is ready only once its engines hold their engine tokens: with the
/// auth station frozen (SIGSTOP) it joins the swarm through another station, and `/readyz`
/// says its engines hold no token; once the auth station thaws, the tokens come and it is
/// ready. Restarted with the auth station frozen again, it is ready and a member on what it
/// kept.
#[test]
fn an_enrolled_station_is_ready_only_with_its_engine_tokens() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let auth = Node::new(&dir.path().join("auth")).home().ttl(3).start()?;
    let c = Node::new(&dir.path().join("c"))
        .bootstrap(&auth.addr)
        .ttl(3)
        .start()?;
    let b_data = dir.path().join("b");
    let token =
        vodmesh_tests::cli::enroll_new_station(None, &auth.addr, &auth.key(), &b_data, &[])?;
    auth.signal("STOP")?;
    let b = Node::new(&b_data)
        .bootstrap(&c.addr)
        .trust(&auth.issuer()?)
        .args(&["--enroll", &token.to_string_lossy()])
        .metrics()
        .ttl(3)
        .start()?;
    let b_base = base(&b)?;
    // Joined through c, but no engine token can come while the auth station is frozen.
    let mut last = String::new();
    wait::blocking(
        "b joined, waiting for tokens",
        Duration::from_secs(30),
        || {
            let (status, body) = probe(&b_base, "/readyz")?;
            anyhow::ensure!(status == 503, "ready without engine tokens: {body}");
            last = body;
            Ok(!last.starts_with("not joined"))
        },
    )?;
    assert_eq!(last, "engine tokens: 0 of 1 engines hold one\n");
    auth.signal("CONT")?;
    wait::blocking("b ready with its tokens", Duration::from_secs(60), || {
        Ok(probe(&b_base, "/readyz")?.0 == 200)
    })?;
    assert!(b_data.join("engines/0/engine.token").exists());

    // Restarted while the auth station is frozen again, b is ready at once, on the engine
    // token and the certificate it kept: the auth station away stops no member's restart.
    auth.signal("STOP")?;
    let b = b.crash()?.start()?;
    let b_base = base(&b)?;
    wait::blocking(
        "b ready again on what it kept",
        Duration::from_secs(30),
        || Ok(probe(&b_base, "/readyz")?.0 == 200),
    )?;
    let listed = vodmesh_tests::status::station(&b.addr)?;
    assert_eq!(listed["membership"]["member"], true, "{listed}");
    auth.signal("CONT")?;
    Ok(())
}

/// A station with an engine process (`--engine-peer`) is ready only once that engine has
/// attached, and the engine process's own `/readyz` says so too.
#[test]
fn a_station_is_ready_only_once_its_engine_processes_attached() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine_data = dir.path().join("engine");
    let engine_peer = keygen(None, &engine_data.join("identity.key"))?;
    let station = Node::new(&dir.path().join("s"))
        .home()
        .args(&["--engine-peer", &engine_peer])
        .metrics()
        .start()?;
    let s_base = base(&station)?;
    let (status, body) = probe(&s_base, "/readyz")?;
    assert_eq!(
        (status, body.as_str()),
        (503, "engines: 1 of 2 up\n"),
        "the engine process has not attached yet"
    );
    let engine = vodmesh_tests::process::EngineProcess::start(
        &engine_data,
        &station.addr,
        &station.issuer()?,
    )?;
    let e_base = engine.metrics.trim_end_matches("/metrics").to_string();
    wait::blocking("the station ready", Duration::from_secs(60), || {
        Ok(probe(&s_base, "/readyz")?.0 == 200)
    })?;
    wait::blocking("the engine process ready", Duration::from_secs(30), || {
        Ok(probe(&e_base, "/readyz")?.0 == 200)
    })?;
    assert_eq!(probe(&e_base, "/healthz")?.0, 200);
    Ok(())
}
