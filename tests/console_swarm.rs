//! A console without `--node`, and the one JSON form of a program list, through real
//! processes. After `vodmesh-console login` through station b, the console remembers the
//! swarm's directors in `$VODMESH_HOME/swarm.json`; with b stopped, `play TITLE` and
//! `ls --json` without `--node` reach the home station and play every byte. A console that
//! never logged in says in one line to pass `--node` or log in, and `VODMESH_NODE` stands in
//! for `--node`. `vodmesh programs --json`, `vodmesh-console ls --json` and the gateway's
//! `/?json` list the same programs in the same form, ids in hex.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use vodmesh_tests::cli::{Ingest, Play, console, refusal, run, subscriber, vodmesh};
use vodmesh_tests::http::get;
use vodmesh_tests::media::{Gateway, random_file};
use vodmesh_tests::process::{Node, NodeProcess};
use vodmesh_tests::{status, wait};

const KIB: usize = 1024;

/// The `programs` list of a JSON answer.
fn programs(json: &str) -> Result<Value> {
    let value: Value = serde_json::from_str(json).with_context(|| format!("not JSON: {json}"))?;
    Ok(value["programs"].clone())
}

/// A home station and station b enrolled with it (under `dir`), once each lists the other.
fn home_and_b(dir: &std::path::Path) -> Result<(NodeProcess, NodeProcess)> {
    let home = Node::new(&dir.join("home")).home().ttl(10).start()?;
    let b = Node::new(&dir.join("b"))
        .enrolled_with(&home)?
        .ttl(10)
        .start()?;
    wait::blocking(
        "the stations to see each other",
        Duration::from_secs(30),
        || {
            Ok(status::directors(&b.addr)?.contains(&home.peer())
                && status::directors(&home.addr)?.contains(&b.peer()))
        },
    )?;
    Ok((home, b))
}

#[test]
fn a_console_remembers_its_swarm_and_lists_programs_in_one_form() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (home, b) = home_and_b(dir.path())?;
    // The subscriber logs in through b: the auth server is found through the swarm.
    let viewer = dir.path().join("viewer");
    subscriber(&b.addr, &home.key(), &viewer, "finn")?;
    let kept: Value = serde_json::from_slice(&std::fs::read(viewer.join("swarm.json"))?)?;
    let kept: Vec<String> = serde_json::from_value(kept["directors"].clone())?;
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert_eq!(
        kept[0],
        b.addr.to_string(),
        "the station logged in through first"
    );
    assert!(kept[1].ends_with(&home.peer()), "{kept:?}");

    let source = dir.path().join("p.bin");
    let bytes = random_file(&source, 3 * 256 * KIB, 71)?;
    let program = Ingest::new(&home.addr, &home.key(), "remembered", &source)
        .publish_now()
        .segment_size(256 * KIB)
        .run()?;

    // The same list, the same form, hex ids: the operator's tool, the console, the gateway.
    let node = home.addr.to_string();
    let tool = programs(&vodmesh(&["programs", "--node", &node, "--json"])?)?;
    assert_eq!(tool[0]["id"], program.as_str(), "{tool}");
    let listed = programs(&run(console(None, &viewer).args(["ls", "--json"]))?)?;
    assert_eq!(listed, tool);
    let gateway = Gateway::start(&home, &viewer)?;
    let served = get(&format!("{}/?json", gateway.base), None)?;
    assert_eq!(served.status, 200);
    assert_eq!(programs(&served.text())?, tool);
    drop(gateway);

    // b, the station the console logged in through, stops: it is passed over.
    b.kill()?;
    let played = Play::new(&viewer, &home.addr, "remembered")
        .without_node()
        .run()?;
    assert!(played.bytes == bytes, "played bytes differ");
    assert_eq!(played.stats["verified"], true);
    let listed = programs(&run(console(None, &viewer).args(["ls", "--json"]))?)?;
    assert_eq!(listed, tool);

    // A console that never logged in: one line that says what to do; VODMESH_NODE serves
    // as --node.
    let stranger = dir.path().join("stranger");
    let refused = refusal(console(None, &stranger).arg("ls"))?;
    assert!(
        refused.contains("--node") && refused.contains("log in"),
        "{refused}"
    );
    let out = run(console(None, &stranger)
        .env("VODMESH_NODE", &node)
        .args(["ls", "--json"]))?;
    assert_eq!(programs(&out)?, tool);
    Ok(())
}

/// The remembered swarm follows a station that moved: b restarts on another port after the
/// console logged in; the console's next play (through the home) writes b's new address into
/// `swarm.json`, so that with the home gone a command without `--node` still reaches the
/// swarm through b. Before, `swarm.json` was written only at login and held b's old address:
/// with the home gone, no director answered. The control: the file held b's old address
/// before the play.
#[test]
fn a_play_brings_the_remembered_swarm_up_to_date() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (home, b) = home_and_b(dir.path())?;
    let viewer = dir.path().join("viewer");
    subscriber(&home.addr, &home.key(), &viewer, "mo")?;
    // The director address the console keeps for b.
    let b_peer = b.peer();
    let kept_b = || -> Result<String> {
        let file: Value = serde_json::from_slice(&std::fs::read(viewer.join("swarm.json"))?)?;
        let directors: Vec<String> = serde_json::from_value(file["directors"].clone())?;
        Ok((directors.into_iter())
            .find(|a| a.ends_with(&b_peer))
            .unwrap_or_default())
    };
    let old_b = kept_b()?;
    assert!(!old_b.is_empty(), "the login remembered b");
    let source = dir.path().join("p.bin");
    let bytes = random_file(&source, 2 * 256 * KIB, 72)?;
    Ingest::new(&home.addr, &home.key(), "moving", &source)
        .publish_now()
        .segment_size(256 * KIB)
        .run()?;

    // Restarted on another port (kept running to the end of the test).
    let _b = b.crash()?.start()?;
    // b's addresses as the home lists them, once its new record is out.
    let listed_b = || -> Result<Vec<String>> {
        let json = status::json_in(None, &home.addr)?;
        let stations = json["stations"].as_array().context("no stations")?;
        let b_station = stations
            .iter()
            .find(|s| s["director"]["peer_id"] == b_peer.as_str());
        Ok(b_station
            .and_then(|s| serde_json::from_value(s["director"]["addrs"].clone()).ok())
            .unwrap_or_default())
    };
    wait::blocking(
        "the home to list b's new addresses",
        Duration::from_secs(60),
        || {
            let addrs = listed_b()?;
            Ok(!addrs.is_empty() && !addrs.contains(&old_b))
        },
    )?;
    let b_now = listed_b()?;
    assert_eq!(
        kept_b()?,
        old_b,
        "the control: nothing wrote b's new address yet"
    );
    let played = Play::new(&viewer, &home.addr, "moving")
        .without_node()
        .run()?;
    assert!(played.bytes == bytes, "played bytes differ");
    assert!(b_now.contains(&kept_b()?), "{} not in {b_now:?}", kept_b()?);

    home.kill()?;
    run(console(None, &viewer).args(["ls", "--json"]))?;
    Ok(())
}
