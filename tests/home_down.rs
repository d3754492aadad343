//! No single point of failure (issue 25): with the home station (content manager and auth)
//! stopped, a program that a second station holds in full stays listed and playable, through
//! that station and through a station that joined later and holds nothing (its miss is
//! filled from the replica, manifest included); `vodmesh-console serve` keeps serving it; and
//! once the home is back, the catalog lists the program once.

use std::time::Duration;

use anyhow::{Context, Result};
use vodmesh_client::DirectorClient;
use vodmesh_proto::director::{Request, Response};
use vodmesh_proto::manifest::Manifest;
use vodmesh_tests::cli::{Ingest, Play, console, run, subscriber, vodmesh};
use vodmesh_tests::console::wait_holds_all;
use vodmesh_tests::http::get;
use vodmesh_tests::media::{Gateway, random_file};
use vodmesh_tests::process::Node;
use vodmesh_tests::{status, wait};

const KIB: usize = 1024;
const SEGMENTS: u32 = 6;
/// Provider and catalog records live 6 s: shorter than the wait for the home's station
/// record to expire, so what is found afterwards was put again by the holders, not by the
/// home before it stopped.
const SHORT_PROVIDER_TTL: &[&str] = &["--provider-ttl", "6"];

/// The programs `vodmesh-console ls --node ADDR` lists, one id a line.
fn listed(home: &std::path::Path, node: &libp2p::Multiaddr) -> Result<String> {
    run(console(None, home).args(["ls", "--node", &node.to_string()]))
}

#[test]
fn with_the_home_station_down_its_programs_stay_listed_and_playable() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let home_node = Node::new(&dir.path().join("home"))
        .engines(2)
        .home()
        .ttl(10)
        .args(SHORT_PROVIDER_TTL);
    let home = home_node.clone().start()?;
    let b = Node::new(&dir.path().join("b"))
        .engines(2)
        .ttl(10)
        .args(SHORT_PROVIDER_TTL)
        .enrolled_with(&home)?
        .start()?;
    let console_home = dir.path().join("console");
    subscriber(&home.addr, &home.key(), &console_home, "eve")?;
    let source = dir.path().join("p.bin");
    let bytes = random_file(&source, SEGMENTS as usize * 64 * KIB, 25)?;
    let program = Ingest::new(&home.addr, &home.key(), "spare", &source)
        .publish_now()
        .segment_size(64 * KIB)
        .replicas(1)
        .run()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(wait_holds_all(
        &b.addr,
        program.parse()?,
        SEGMENTS,
        Duration::from_secs(60),
    ))?;
    // A station that joins later, while the home is up (to be enrolled), holding nothing.
    let late = Node::new(&dir.path().join("late"))
        .engines(1)
        .ttl(10)
        .args(SHORT_PROVIDER_TTL)
        .enrolled_with(&home)?
        .args(&["--bootstrap", &b.addr.to_string()])
        .start()?;
    late.wait_engine_token(0)?;
    wait::blocking(
        "the late station to find b",
        Duration::from_secs(30),
        || Ok(status::directors(&late.addr)?.contains(&b.peer())),
    )?;

    // The home station goes down: content manager, auth and its copy at once.
    let home_peer = home.peer();
    assert!(home.terminate()?, "the home station stops cleanly");
    wait::blocking(
        "the home station's record to expire at b",
        Duration::from_secs(60),
        || Ok(!status::directors(&b.addr)?.contains(&home_peer)),
    )?;

    // Listed through b, and through the late station, which holds nothing.
    for node in [&b.addr, &late.addr] {
        let list = listed(&console_home, node)?;
        assert_eq!(list.matches(&program).count(), 1, "at {node}: {list}");
        assert!(list.contains("spare"), "{list}");
    }
    // `vodmesh programs` from a station that is no content manager lists it too.
    let json: serde_json::Value = serde_json::from_str(&vodmesh(&[
        "programs",
        "--node",
        &b.addr.to_string(),
        "--json",
    ])?)?;
    let ids: Vec<&str> = (json["programs"].as_array().context("programs")?.iter())
        .filter_map(|p| p["id"].as_str())
        .collect();
    assert_eq!(ids, vec![program.as_str()], "{json}");

    // The late station, which holds nothing, gives the manifest itself (fetched from b, the
    // content manager being down), signed by the content manager.
    let manifest = runtime.block_on(async {
        let client = DirectorClient::connect(&late.addr, None).await?;
        let program = program.parse()?;
        match client.call(Request::Manifest { program }).await? {
            Response::Manifest(signed) => Ok(Manifest::verify(&signed)?),
            other => anyhow::bail!("not a manifest: {other:?}"),
        }
    })?;
    assert_eq!(manifest.program.to_string(), program);
    assert_eq!(manifest.content_manager.to_string(), home_peer);

    // Played by title through b, and by id through the late station (a miss filled from b).
    let at_b = Play::new(&console_home, &b.addr, "spare")
        .files(dir.path(), "at-b")
        .run_within(Duration::from_secs(120))?;
    assert!(at_b.bytes == bytes, "played bytes at b differ");
    let at_late = Play::new(&console_home, &late.addr, &program)
        .files(dir.path(), "at-late")
        .run_within(Duration::from_secs(120))?;
    assert!(
        at_late.bytes == bytes,
        "played bytes at the late station differ"
    );
    assert_eq!(at_late.stats["verified"], true);

    // The gateway serves the playlist and the segments with the home down.
    let gateway = Gateway::start(&late, &console_home)?;
    let playlist = get(&format!("{}/{program}/index.m3u8", gateway.base), None)?;
    assert_eq!(playlist.status, 200, "{}", gateway.log.text());
    let names: Vec<String> = (playlist.text().lines())
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(String::from)
        .collect();
    assert_eq!(names.len(), SEGMENTS as usize, "{}", playlist.text());
    let first = get(&format!("{}/{program}/{}", gateway.base, names[0]), None)?;
    assert_eq!(first.status, 200);
    assert!(
        first.body == bytes[..64 * KIB],
        "the first segment served differs"
    );
    drop(gateway);

    // The home station comes back: the catalog lists the program once, and it plays there.
    // On a new port: it finds the swarm again through b.
    let home = home_node.bootstrap(&b.addr).start()?;
    wait::blocking(
        "b to see the home station again",
        Duration::from_secs(60),
        || Ok(status::directors(&b.addr)?.contains(&home.peer())),
    )?;
    for node in [&home.addr, &b.addr, &late.addr] {
        let list = listed(&console_home, node)?;
        assert_eq!(list.matches(&program).count(), 1, "at {node}: {list}");
    }
    let at_home = Play::new(&console_home, &home.addr, &program)
        .files(dir.path(), "at-home")
        .run_within(Duration::from_secs(120))?;
    assert!(at_home.bytes == bytes, "played bytes at the home differ");
    Ok(())
}
