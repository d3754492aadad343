//! The join flow as separate `vodmesh-node` processes, driven through the command-line
//! contract: `director <MULTIADDR>` on stdout, `DIR/node.json`, `vodmesh status --json`,
//! SIGTERM for a clean stop.

use std::collections::BTreeSet;
use std::time::Duration;

use rand::Rng;
use vodmesh_node::nodefile::NodeFile;
use vodmesh_tests::cli::{command_in, refusal};
use vodmesh_tests::process::{Node, NodeProcess};
use vodmesh_tests::{status, wait};

const TTL_SECS: u64 = 6;

#[test]
fn node_processes_join_by_bootstrap_and_a_stopped_one_leaves() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().to_path_buf();
    // VODMESH_KEEP=1 keeps the data directories (and every node's stderr.log) for a post-mortem.
    let _guard = if std::env::var_os("VODMESH_KEEP").is_some() {
        eprintln!("keeping {}", dir.keep().display());
        None
    } else {
        Some(dir)
    };
    let dir = root;
    let mut nodes: Vec<NodeProcess> = Vec::new();
    let mut rng = rand::thread_rng();
    for i in 0..10 {
        let mut node = Node::new(&dir.join(format!("n{i}")))
            .engines(2)
            .ttl(TTL_SECS);
        if !nodes.is_empty() {
            node = node.bootstrap(&nodes[rng.gen_range(0..nodes.len())].addr);
        }
        nodes.push(node.start()?);
    }
    // node.json agrees with what the process printed, and lists both engines.
    for n in &nodes {
        let file = NodeFile::read(&n.data)?;
        assert_eq!(file.director.addrs.first(), Some(&n.addr));
        assert_eq!(file.engines.len(), 2);
        assert!(
            file.engines
                .iter()
                .all(|e| e.peer_id != file.director.peer_id)
        );
    }
    let all: BTreeSet<String> = nodes
        .iter()
        .map(|n| NodeFile::read(&n.data).map(|f| f.director.peer_id.to_string()))
        .collect::<Result<_, _>>()?;
    wait::blocking(
        "every node's status to list all ten",
        Duration::from_secs(90),
        || {
            for n in &nodes {
                if status::directors(&n.addr)? != all {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )?;

    let first = nodes.remove(0);
    let gone = NodeFile::read(&first.data)?.director.peer_id.to_string();
    assert!(
        first.terminate()?,
        "vodmesh-node did not exit cleanly on SIGTERM"
    );
    let eleventh = Node::new(&dir.join("n10"))
        .ttl(TTL_SECS)
        .bootstrap(&nodes[3].addr)
        .start()?;
    nodes.push(eleventh);
    let expected: BTreeSet<String> = nodes
        .iter()
        .map(|n| NodeFile::read(&n.data).map(|f| f.director.peer_id.to_string()))
        .collect::<Result<_, _>>()?;
    assert!(!expected.contains(&gone));
    wait::blocking(
        "the eleventh listed and the stopped one gone",
        Duration::from_secs(90),
        || {
            for n in &nodes {
                let seen = status::directors(&n.addr)?;
                if seen != expected {
                    eprintln!(
                        "{} lists {} stations; missing {:?}, extra {:?}",
                        n.addr,
                        seen.len(),
                        expected.difference(&seen).collect::<Vec<_>>(),
                        seen.difference(&expected).collect::<Vec<_>>()
                    );
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )?;
    Ok(())
}

#[test]
fn bad_command_lines_fail_with_one_clear_line() -> anyhow::Result<()> {
    let out = command_in(None, "vodmesh")
        .args(["status", "--node", "/ip4/127.0.0.1/tcp/1"])
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/p2p/<peer id>"), "unclear error: {err}");

    // A director that is not there: its address and the cause, once, on one line (libp2p's
    // own text nested "Connection refused" three times over several lines).
    let port = vodmesh_tests::process::free_port()?;
    let gone = format!(
        "/ip4/127.0.0.1/tcp/{port}/p2p/12D3KooWGifCAzYsV5vA4Kb3g9mSdPrnqHKEmGsnhYPK1rNPA6Zp"
    );
    let home = tempfile::tempdir()?;
    let line = refusal(
        command_in(None, "vodmesh-console")
            .env("VODMESH_HOME", home.path())
            .args(["ls", "--node", &gone]),
    )?;
    assert_eq!(
        line,
        format!("error: cannot reach the director at {gone}: Connection refused (os error 111)")
    );

    // A usage error (status 2), found before the station starts: no data directory is made.
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("never");
    let out = command_in(None, "vodmesh-node")
        .arg("--data")
        .arg(&data)
        .args([
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--bootstrap",
            "/ip4/127.0.0.1/tcp/1",
        ])
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not end in /p2p/<peer id>"),
        "unclear error: {err}"
    );
    assert!(!data.exists(), "a refused start made {}", data.display());

    // Values out of range are usage errors too, each naming what it takes.
    let source = dir.path().join("p.bin");
    std::fs::write(&source, b"bytes")?;
    let node = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWGifCAzYsV5vA4Kb3g9mSdPrnqHKEmGsnhYPK1rNPA6Zp";
    let ingest = |flags: &[&str]| {
        let mut args = vec!["ingest", "--node", node, "--key", "k", "--title", "t"];
        args.extend(flags);
        args.push("p.bin");
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let sim = |flags: &[&str]| {
        let mut args = vec!["sim"];
        args.extend(flags);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    for (args, says) in [
        (ingest(&["--segment-size", "0"]), "--segment-size"),
        (ingest(&["--publish-at", "tomorrow"]), "--publish-at"),
        (
            [
                "ingest",
                "--node",
                node,
                "--key",
                "k",
                "--title",
                "a\u{1b}[2Jb",
                "p.bin",
            ]
            .map(String::from)
            .to_vec(),
            "no control character",
        ),
        (sim(&["--stations", "1"]), "at least 2"),
        (sim(&["--stations", "10", "--churn", "1.5"]), "0 to 0.9"),
    ] {
        let out = command_in(None, "vodmesh")
            .current_dir(dir.path())
            .args(&args)
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // A station that could serve nothing, drop every ingest at once, or start engines
    // until its ports ran out.
    for (flags, says) in [
        (["--max-streams", "0"], "--max-streams"),
        (["--ingest-timeout", "0"], "--ingest-timeout"),
        (["--engines", "65536"], "at most 1024 engines"),
    ] {
        let out = command_in(None, "vodmesh-node")
            .arg("--data")
            .arg(&data)
            .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(flags)
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {err}");
        assert!(err.contains(says), "{flags:?}: {err}");
        assert!(!data.exists(), "a refused start made {}", data.display());
    }
    Ok(())
}

/// The first station of a swarm (the home, started without `--bootstrap`) crashes and is
/// started again with its command line, on a new port: it rejoins through the directors it
/// remembered (`DIR/peers.json`) and both stations list each other again. Before, it dialled
/// no one and the swarm stayed split: the other station's consoles found no auth server.
#[test]
fn a_home_restarted_without_bootstrap_rejoins_through_the_directors_it_remembered()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let home = Node::new(&dir.path().join("home"))
        .home()
        .ttl(TTL_SECS)
        .start()?;
    let b = Node::new(&dir.path().join("b"))
        .ttl(TTL_SECS)
        .enrolled_with(&home)?
        .start()?;
    let (home_peer, b_peer) = (home.peer(), b.peer());
    let remembered = dir.path().join("home").join("peers.json");
    wait::blocking("the home to remember b", Duration::from_secs(60), || {
        let text = std::fs::read_to_string(&remembered).unwrap_or_default();
        Ok(text.contains(&b_peer) && status::directors(&home.addr)?.contains(&b_peer))
    })?;

    let home = home.crash()?.start()?;
    wait::blocking(
        "both stations to list each other again",
        Duration::from_secs(60),
        || {
            Ok(status::directors(&home.addr)?.contains(&b_peer)
                && status::directors(&b.addr)?.contains(&home_peer))
        },
    )?;
    assert!(
        home.log()
            .contains("rejoining through the directors remembered")
    );
    Ok(())
}

/// `vodmesh status --watch --json` is for programs: each line one JSON object of the swarm,
/// nothing else on stdout (before, each frame began with a screen clear and a header).
#[test]
fn status_watch_json_prints_one_json_object_a_line() -> anyhow::Result<()> {
    use std::io::BufRead;
    let dir = tempfile::tempdir()?;
    let home = Node::new(&dir.path().join("home")).home().start()?;
    let mut watch = command_in(None, "vodmesh")
        .args([
            "status",
            "--node",
            &home.addr.to_string(),
            "--watch",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let stdout = watch
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut frames = Vec::new();
    for _ in 0..2 {
        let line = lines.next().ok_or_else(|| anyhow::anyhow!("no frame"))??;
        frames.push(serde_json::from_str::<serde_json::Value>(&line)?);
    }
    watch.kill()?;
    let _ = watch.wait();
    for frame in frames {
        let stations = frame["stations"].as_array().map_or(0, Vec::len);
        assert_eq!(stations, 1, "{frame}");
        assert_eq!(frame["stations"][0]["answered"], true, "{frame}");
    }
    Ok(())
}

/// Addresses by name (`/dns4/localhost/...`, resolved through the hosts file): a station
/// enrolled, bootstrapped and asked with its home station's name joins the swarm, and the
/// tools reach it by name. Before, every `/dns4` address failed ("Multiaddr is not
/// supported"): libp2p's DNS transport was not built in.
#[test]
fn a_station_joins_and_is_asked_by_a_name() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let home = Node::new(&dir.path().join("home")).home().start()?;
    let named: libp2p::Multiaddr = (home.addr.to_string())
        .replacen("/ip4/127.0.0.1/", "/dns4/localhost/", 1)
        .parse()?;
    anyhow::ensure!(named.to_string().starts_with("/dns4/"), "{named}");
    let data = dir.path().join("b");
    let token = vodmesh_tests::cli::enroll_new_station(None, &named, &home.key(), &data, &[])?;
    let b = Node::new(&data)
        .bootstrap(&named)
        .trust(&home.issuer()?)
        .args(&["--enroll", &token.to_string_lossy()])
        .start()?;
    wait::blocking("b to join by name", Duration::from_secs(60), || {
        Ok(status::directors(&named)?.contains(&b.peer()))
    })?;
    Ok(())
}
