//! Readiness for orchestrators, through real `vodmesh-node` processes: `/healthz` answers 200
//! from the start; `/readyz` answers 503 (not joined) while a station given `--bootstrap`
//! has no other director to join through, 200 once that station runs and it joined, 503
//! again (draining) after `vodmesh station drain`, and 200 after `--resume`. A lone first
//! station (no `--bootstrap`) is ready on its own.

use std::time::Duration;

use anyhow::Result;
use vodmesh_tests::cli::{keygen, vodmesh};
use vodmesh_tests::http::get;
use vodmesh_tests::process::{Node, free_port};
use vodmesh_tests::wait;

/// `GET base/path`: the status and the body.
fn probe(base: &str, path: &str) -> Result<(u16, String)> {
    let reply = get(&format!("{base}{path}"), None)?;
    Ok((reply.status, reply.text()))
}

#[test]
fn readyz_turns_ready_only_once_the_station_joined() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // The first station's identity and port exist before it runs, so that the second can be
    // given its director address first.
    let a_dir = dir.path().join("a");
    let a_peer = keygen(None, &a_dir.join("identity.key"))?;
    let a_port = free_port()?;
    let a_addr = format!("/ip4/127.0.0.1/tcp/{a_port}/p2p/{a_peer}");
    let b_metrics = format!("127.0.0.1:{}", free_port()?);
    let b = Node::new(&dir.path().join("b"))
        .args(&["--bootstrap", &a_addr, "--metrics", &b_metrics])
        .ttl(3)
        .start()?;
    let b_base = format!("http://{b_metrics}");
    let (status, body) = probe(&b_base, "/healthz")?;
    assert_eq!(status, 200, "{body}");
    // Nothing listens at its bootstrap address: it cannot have joined.
    let (status, body) = probe(&b_base, "/readyz")?;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not joined"), "{body}");

    let a_metrics = format!("127.0.0.1:{}", free_port()?);
    let a = Node::new(&a_dir)
        .listen(&[&format!("/ip4/127.0.0.1/tcp/{a_port}")])
        .args(&["--metrics", &a_metrics])
        .ttl(3)
        .start()?;
    let a_base = format!("http://{a_metrics}");
    assert_eq!(a.peer(), a_peer);
    wait::blocking("b ready", Duration::from_secs(30), || {
        Ok(probe(&b_base, "/readyz")?.0 == 200)
    })?;
    assert_eq!(probe(&b_base, "/healthz")?.0, 200);
    // The lone first station, with no --bootstrap, is ready too.
    let (status, body) = probe(&a_base, "/readyz")?;
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
