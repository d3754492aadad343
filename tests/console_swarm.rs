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
use vodmesh_tests::process::Node;
use vodmesh_tests::{status, wait};

const KIB: usize = 1024;

/// The `programs` list of a JSON answer.
fn programs(json: &str) -> Result<Value> {
    let value: Value = serde_json::from_str(json).with_context(|| format!("not JSON: {json}"))?;
    Ok(value["programs"].clone())
}

#[test]
fn a_console_remembers_its_swarm_and_lists_programs_in_one_form() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let home = Node::new(&dir.path().join("home")).home().ttl(10).start()?;
    let b = Node::new(&dir.path().join("b"))
        .enrolled_with(&home)?
        .ttl(10)
        .start()?;
    wait::blocking("b to see the home", Duration::from_secs(30), || {
        Ok(status::directors(&b.addr)?.contains(&home.peer()))
    })?;
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
