//! Overload without failure (issue 24, claims 19 and 20), through real processes: an engine at
//! `--max-streams` is a wait for a console, never an error. One console never competes with
//! itself for an engine's slots; a console that finds every holder busy is sent to another
//! holder, to an idle engine of the station that copies the segment (a replication, counted
//! in `vodmesh status --json` and `/metrics`), or to another station; when nothing can serve
//! it waits (`waits` in `--stats`) and plays on once a slot frees.
//!
//! Slots are taken on purpose by [`StalledViewer`]s: viewers that asked an engine for a
//! segment and stopped reading, so that a slot is held for as long as the test needs.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use vodmesh_node::nodefile::NodeFile;
use vodmesh_proto::ProgramId;
use vodmesh_proto::token::Issuer;
use vodmesh_tests::{
    NodeProcess, StalledViewer, enrolled_process, free_port, metric, play_args, play_command,
    random_file, subscriber, vodmesh, wait_holds_all, wait_until,
};

const MIB: usize = 1024 * 1024;
/// The program: 6 MiB in 1 MiB segments, at the default 8 Mbit/s (6.3 s of media).
const SEGMENTS: u32 = 6;

/// Ingests the 6 MiB program into `home` (published now, `replicas` copies elsewhere);
/// returns its id and bytes.
fn ingest_program(
    home: &NodeProcess,
    dir: &std::path::Path,
    replicas: u32,
) -> Result<(String, Vec<u8>)> {
    let source = dir.join("program.bin");
    let bytes = random_file(&source, SEGMENTS as usize * MIB, 24)?;
    let out = vodmesh(&[
        "ingest",
        "--node",
        &home.addr.to_string(),
        "--key",
        &home.data.join("identity.key").to_string_lossy(),
        "--title",
        "busy",
        "--publish-at",
        "now",
        "--segment-size",
        &MIB.to_string(),
        "--replicas",
        &replicas.to_string(),
        &source.to_string_lossy(),
    ])?;
    let program = out.lines().last().unwrap_or_default().to_string();
    anyhow::ensure!(program.len() == 64, "no program id: {out}");
    Ok((program, bytes))
}

/// `replications` in `vodmesh status --json` for the station at `node`.
fn replications(node: &NodeProcess) -> Result<u64> {
    let out = vodmesh(&["status", "--node", &node.addr.to_string(), "--json"])?;
    let json: serde_json::Value = serde_json::from_str(&out)?;
    let director = NodeFile::read(&node.data)?.director.peer_id.to_string();
    json["stations"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["director"]["peer_id"] == director.as_str())
        .and_then(|s| s["activity"]["replications"].as_u64())
        .context("no replications for the station in vodmesh status --json")
}

/// Logs a console in as subscriber `name` of `home`; returns its home directory.
fn console(home: &NodeProcess, dir: &std::path::Path, name: &str) -> Result<std::path::PathBuf> {
    let at = dir.join(name);
    subscriber(&home.addr, &home.data.join("identity.key"), &at, name)?;
    Ok(at)
}

#[test]
fn consoles_outnumbering_engine_slots_all_finish_and_the_station_replicates() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let viewers = Issuer::generate();
    let metrics_port = free_port()?;
    let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    let home = NodeProcess::start(
        &dir.path().join("home"),
        &[
            "--engines",
            "2",
            "--max-streams",
            "1",
            "--home",
            "--content-manager",
            "--auth",
            "--trust",
            &viewers.public().to_string(),
            "--metrics",
            &format!("127.0.0.1:{metrics_port}"),
        ],
    )?;
    let (program, bytes) = ingest_program(&home, dir.path(), 0)?;
    let id: ProgramId = program.parse()?;
    let engines = NodeFile::read(&home.data)?.engines;
    let rt = tokio::runtime::Runtime::new()?;

    // One console at --speed 1 fetches ahead without competing with itself for a slot.
    let solo = console(&home, dir.path(), "solo")?;
    let (played, stats) = play_args(
        &home.addr,
        &solo,
        &["--speed", "1", &program],
        dir.path(),
        "solo",
    )?;
    assert!(played == bytes, "the solo console's bytes differ");
    assert_eq!(stats["segments"], SEGMENTS, "{stats}");

    // Every slot of the station taken: a console waits (the director answers busy), and
    // plays on once the slots free.
    let held: Vec<StalledViewer> = engines
        .iter()
        .map(|e| rt.block_on(StalledViewer::hold(&home.addr, e, id, SEGMENTS, &viewers)))
        .collect::<Result<_>>()?;
    let waiter = console(&home, dir.path(), "waiter")?;
    let (out, stats_path) = (
        dir.path().join("waiter.out"),
        dir.path().join("waiter.json"),
    );
    let mut child = play_command(
        &home.addr,
        &waiter,
        &["--speed", "1", &program],
        &out,
        &stats_path,
    )
    .env("RUST_LOG", "vodmesh_console=debug")
    .stderr(Stdio::piped())
    .spawn()?;
    let stderr = child.stderr.take().context("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let mut log = Vec::new();
    loop {
        let Some(line) = lines.next() else {
            bail!("the console ended before it waited: {log:?}");
        };
        let line = line?;
        let waited = line.contains("DirectorBusy");
        log.push(line);
        if waited {
            break;
        }
    }
    drop(held);
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    let status = child.wait()?;
    let rest = drain.join().unwrap_or_default();
    assert!(
        status.success(),
        "the waiting console failed: {:?}",
        rest.last()
    );
    assert!(
        std::fs::read(&out)? == bytes,
        "the waiting console's bytes differ"
    );
    let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(&stats_path)?)?;
    assert!(stats["waits"].as_u64().unwrap_or(0) >= 1, "{stats}");

    // Four consoles a fraction of a second apart, with one engine's slot taken by a stalled
    // viewer: the segments only that engine holds are copied onto the other (a replication)
    // when it has a slot, or waited for; every console finishes with the program's bytes.
    let stalled = rt.block_on(StalledViewer::hold(
        &home.addr,
        &engines[0],
        id,
        SEGMENTS,
        &viewers,
    ))?;
    let mut running = Vec::new();
    for i in 0..4 {
        let name = format!("viewer{i}");
        let home_dir = console(&home, dir.path(), &name)?;
        let out = dir.path().join(format!("{name}.out"));
        let stats = dir.path().join(format!("{name}.json"));
        let child = play_command(
            &home.addr,
            &home_dir,
            &["--speed", "1", &program],
            &out,
            &stats,
        )
        .stderr(Stdio::piped())
        .spawn()?;
        running.push((child, out, stats));
        // Not a synchronisation: the consoles start a fraction of a second apart, as the
        // issue's viewers did.
        std::thread::sleep(Duration::from_millis(200));
    }
    for (child, out, stats) in running {
        let done = child.wait_with_output()?;
        assert!(
            done.status.success(),
            "a console failed: {}",
            String::from_utf8_lossy(&done.stderr)
        );
        assert!(std::fs::read(&out)? == bytes, "a console's bytes differ");
        let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(&stats)?)?;
        assert_eq!(stats["verified"], true, "{stats}");
        assert!(stats["waits"].is_u64(), "{stats}");
    }
    drop(stalled);
    let counted = replications(&home)?;
    assert!(counted >= 1, "no replication counted");
    assert!(metric(&metrics, "vodmesh_replications_total")? >= 1.0);
    drop(rt);
    Ok(())
}

#[test]
fn consoles_of_a_saturated_station_are_served_by_another_that_holds_the_program() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let viewers = Issuer::generate();
    let trust = viewers.public().to_string();
    let home = NodeProcess::start(
        &dir.path().join("home"),
        &[
            "--engines",
            "2",
            "--max-streams",
            "1",
            "--home",
            "--content-manager",
            "--auth",
            "--trust",
            &trust,
            "--record-ttl",
            "10",
        ],
    )?;
    let other = enrolled_process(
        &dir.path().join("other"),
        &home,
        &["--engines", "2", "--trust", &trust, "--record-ttl", "10"],
    )?;
    let other_director = NodeFile::read(&other.data)?.director.peer_id.to_string();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(wait_until(
        "the stations to find each other",
        Duration::from_secs(30),
        || async { Ok(vodmesh_tests::status_directors(&home.addr)?.contains(&other_director)) },
    ))?;
    let (program, bytes) = ingest_program(&home, dir.path(), 1)?;
    let id: ProgramId = program.parse()?;
    // The other station holds every segment once its replica is complete.
    rt.block_on(wait_holds_all(
        &other.addr,
        id,
        SEGMENTS,
        Duration::from_secs(60),
    ))?;

    // The home station's only slots taken: its consoles are sent to the other station.
    let held: Vec<StalledViewer> = NodeFile::read(&home.data)?
        .engines
        .iter()
        .map(|e| rt.block_on(StalledViewer::hold(&home.addr, e, id, SEGMENTS, &viewers)))
        .collect::<Result<_>>()?;
    for name in ["first", "second"] {
        let at = console(&home, dir.path(), name)?;
        let (played, stats) = play_args(
            &home.addr,
            &at,
            &["--speed", "1", &program],
            dir.path(),
            name,
        )?;
        assert!(played == bytes, "{name}: bytes differ");
        assert_eq!(
            stats["stations"],
            serde_json::json!([other_director]),
            "{name} was served by the other station only: {stats}"
        );
    }
    drop(held);
    Ok(())
}
