//! Overload without failure (issue 24, claims 19 and 20), through real processes: an engine at
//! `--max-streams` is a wait for a console, never an error. One console never competes with
//! itself for an engine's slots; a console that finds every holder busy is sent to another
//! holder, to an idle engine of the station that copies the segment (a replication, counted
//! in `vodmesh status --json` and `/metrics`), or to another station; when nothing can serve
//! it waits (`waits` in `--stats`) and plays on once a slot frees.
//!
//! Slots are taken on purpose by [`StalledViewer`]s: viewers that asked an engine for a
//! segment and stopped reading, so that a slot is held for as long as the test needs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use vodmesh_proto::ProgramId;
use vodmesh_proto::token::Issuer;
use vodmesh_tests::cli::{Ingest, Play, subscriber};
use vodmesh_tests::console::{StalledViewer, wait_holds_all};
use vodmesh_tests::http::metric;
use vodmesh_tests::media::random_file;
use vodmesh_tests::process::{Node, NodeProcess};
use vodmesh_tests::{status, wait};

const MIB: usize = 1024 * 1024;
/// The program: 6 MiB in 1 MiB segments, at the default 8 Mbit/s (6.3 s of media).
const SEGMENTS: u32 = 6;

/// Ingests the 6 MiB program into `home` (published now, `replicas` copies elsewhere);
/// returns its id and bytes.
fn ingest_program(home: &NodeProcess, dir: &Path, replicas: u32) -> Result<(String, Vec<u8>)> {
    let source = dir.join("program.bin");
    let bytes = random_file(&source, SEGMENTS as usize * MIB, 24)?;
    let program = Ingest::new(&home.addr, &home.key(), "busy", &source)
        .publish_now()
        .segment_size(MIB)
        .replicas(replicas)
        .run()?;
    Ok((program, bytes))
}

/// Logs a console in as subscriber `name` of `home`; returns its home directory.
fn console(home: &NodeProcess, dir: &Path, name: &str) -> Result<PathBuf> {
    let at = dir.join(name);
    subscriber(&home.addr, &home.key(), &at, name)?;
    Ok(at)
}

/// `vodmesh-console play --speed 1` of `program` through `home` as the console `name` (its
/// files beside it in `dir`).
fn play(home: &NodeProcess, dir: &Path, name: &str, program: &str) -> Result<Play> {
    Ok(Play::new(&console(home, dir, name)?, &home.addr, program)
        .speed("1")
        .files(dir, name))
}

/// Four consoles `{prefix}0..4` playing `program` at `--speed 1`, started a fraction of a second
/// apart; each must finish with the program's `bytes`, verified.
fn four_consoles(
    home: &NodeProcess,
    dir: &Path,
    prefix: &str,
    program: &str,
    bytes: &[u8],
) -> Result<()> {
    let mut running = Vec::new();
    for i in 0..4 {
        running.push(play(home, dir, &format!("{prefix}{i}"), program)?.spawn()?);
        // Not a synchronisation: the consoles start a fraction of a second apart, as the
        // issue's viewers did.
        std::thread::sleep(Duration::from_millis(200));
    }
    for playing in running {
        let done = playing.finish()?;
        assert!(done.bytes == bytes, "a console's bytes differ");
        assert_eq!(done.stats["verified"], true, "{}", done.stats);
        assert!(done.stats["waits"].is_u64(), "{}", done.stats);
    }
    Ok(())
}

#[test]
fn consoles_outnumbering_engine_slots_all_finish_and_the_station_replicates() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let viewers = Issuer::generate();
    let home = Node::new(&dir.path().join("home"))
        .engines(2)
        .args(&["--max-streams", "1"])
        .home()
        .trust(&viewers.public().to_string())
        .metrics()
        .start()?;
    let metrics = home.metrics_url()?;
    let (program, bytes) = ingest_program(&home, dir.path(), 0)?;
    let id: ProgramId = program.parse()?;
    let engines = home.engines()?;
    let rt = tokio::runtime::Runtime::new()?;

    // One console at --speed 1 fetches ahead without competing with itself for a slot.
    let solo = play(&home, dir.path(), "solo", &program)?.run()?;
    assert!(solo.bytes == bytes, "the solo console's bytes differ");
    assert_eq!(solo.stats["segments"], SEGMENTS, "{}", solo.stats);

    // Four consoles at --speed 1 on two slots, as the viewers: none ends with an error.
    four_consoles(&home, dir.path(), "viewer", &program, &bytes)?;

    // Every slot of the station taken: a console waits (the director answers busy), and
    // plays on once the slots free.
    let held: Vec<StalledViewer> = engines
        .iter()
        .map(|e| rt.block_on(StalledViewer::hold(&home.addr, e, id, SEGMENTS, &viewers)))
        .collect::<Result<_>>()?;
    let waiter = play(&home, dir.path(), "waiter", &program)?
        .debug()
        .spawn()?;
    waiter.stderr().wait_for(
        "the console to wait (DirectorBusy)",
        Duration::from_secs(60),
        |log| String::from_utf8_lossy(log).contains("DirectorBusy"),
    )?;
    drop(held);
    let waited = waiter.finish()?;
    assert!(waited.bytes == bytes, "the waiting console's bytes differ");
    let stats = waited.stats;
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
    four_consoles(&home, dir.path(), "stalled", &program, &bytes)?;
    drop(stalled);
    let counted = status::activity(&home.addr, "replications")?;
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
    let home = Node::new(&dir.path().join("home"))
        .engines(2)
        .args(&["--max-streams", "1"])
        .home()
        .trust(&trust)
        .ttl(10)
        .start()?;
    let other = Node::new(&dir.path().join("other"))
        .engines(2)
        .trust(&trust)
        .ttl(10)
        .enrolled_with(&home)?
        .start()?;
    let other_director = other.peer();
    let rt = tokio::runtime::Runtime::new()?;
    wait::blocking(
        "the stations to find each other",
        Duration::from_secs(30),
        || Ok(status::directors(&home.addr)?.contains(&other_director)),
    )?;
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
    let held: Vec<StalledViewer> = home
        .engines()?
        .iter()
        .map(|e| rt.block_on(StalledViewer::hold(&home.addr, e, id, SEGMENTS, &viewers)))
        .collect::<Result<_>>()?;
    for name in ["first", "second"] {
        let played = play(&home, dir.path(), name, &program)?.run()?;
        assert!(played.bytes == bytes, "{name}: bytes differ");
        assert_eq!(
            played.stats["stations"],
            serde_json::json!([other_director]),
            "{name} was served by the other station only: {}",
            played.stats
        );
    }
    drop(held);
    Ok(())
}
