//! Hostile peers (issue 20), through real `vodmesh-node` processes: what a peer that dials in
//! and misbehaves can hold of a station, each with the control case a well-behaved peer
//! gets.

use std::time::Duration;

use anyhow::Result;
use vodmesh_proto::ProgramId;
use vodmesh_tests::cli::Ingest;
use vodmesh_tests::console::{Console, wait_holds_all};
use vodmesh_tests::media::random_file;
use vodmesh_tests::process::Node;
use vodmesh_tests::replica::{HomeAndReplica, Program};
use vodmesh_tests::{status, wait};

const MIB: usize = 1024 * 1024;

/// A stranger opens as many copy streams to the home's engine as it serves copies at once
/// (8), and sends nothing on them. Before, each held one of the 8 serve slots from the
/// moment it opened, with no deadline: the engine never served a copy again. Now the slot
/// is taken only once a request came and its token passed, so another station's miss is
/// still filled by a copy from that engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_copy_streams_do_not_stop_an_engine_serving_copies() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let home = Node::new(&dir.path().join("home"))
        .engines(1)
        .home()
        .start()?;
    let b = Node::new(&dir.path().join("b"))
        .engines(1)
        .enrolled_with(&home)?
        .start()?;
    let b_director = b.peer();
    let home_addr = home.addr.clone();
    wait::until_blocking(
        "the stations to find each other",
        Duration::from_secs(30),
        move || Ok(status::directors(&home_addr)?.contains(&b_director)),
    )
    .await?;
    let source = dir.path().join("program.bin");
    random_file(&source, 3 * MIB, 20)?;
    let program: ProgramId = Ingest::new(&home.addr, &home.key(), "idle", &source)
        .publish_now()
        .segment_size(MIB)
        .run()?
        .parse()?;

    let stranger = Console::connect(&home.addr, None).await?;
    let engine = home.engines()?.remove(0);
    stranger.reach(engine.peer_id, &engine.addrs).await?;
    let mut idle = Vec::new();
    for _ in 0..8 {
        let stream = stranger
            .client
            .open_stream(engine.peer_id, vodmesh_proto::copy::PROTOCOL)
            .await?;
        idle.push(stream);
    }

    // b holds none of it: asking b for each segment is a miss, filled by a copy from the
    // home's engine while the idle streams are still open.
    wait_holds_all(&b.addr, program, 3, Duration::from_secs(60)).await?;
    drop(idle);
    Ok(())
}

/// One console floods a station with `Locate`s of segments it lacks, each a miss to gather,
/// while the holder they would be gathered from is frozen (SIGSTOP: each gather waits on it).
/// Before, the flood took all 32 gathers and another console's `Locate` was answered busy for
/// as long as it lasted; now a peer gathers at most 4 at once, so the other console's miss is
/// gathered (from the replica's station, once the frozen holder times out). The station
/// learns the program first, so that the asks are misses and not waits for its record.
#[test]
fn a_locate_flood_from_one_console_leaves_another_console_s_miss_filled() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let program = Program {
        title: "flood",
        segments: 4,
        segment_size: 256 * 1024,
        bitrate: None,
        seed: 9,
    };
    let setup = HomeAndReplica::start(
        dir.path(),
        Node::new(&dir.path().join("home")).engines(1).home(),
        Node::new(&dir.path().join("b")).engines(1),
        program,
    )?;
    let c = Node::new(&dir.path().join("c"))
        .engines(1)
        .enrolled_with(&setup.home)?
        .start()?;
    let (home, b) = (setup.home.peer(), setup.b.peer());
    wait::blocking("c to find both holders", Duration::from_secs(30), || {
        let directors = status::directors(&c.addr)?;
        Ok(directors.contains(&home) && directors.contains(&b))
    })?;
    let program: ProgramId = setup.program.parse()?;
    let frozen = setup.home.engines()?.remove(0).peer_id;
    tokio::runtime::Runtime::new()?.block_on(flood_and_ask(&setup, &c.addr, program, frozen))
}

/// The flood of [`a_locate_flood_from_one_console_leaves_another_console_s_miss_filled`].
async fn flood_and_ask(
    setup: &HomeAndReplica,
    c: &libp2p::Multiaddr,
    program: ProgramId,
    frozen: libp2p::PeerId,
) -> Result<()> {
    // c learns the program (its catalog record and manifest) while every holder answers.
    Console::connect(c, None)
        .await?
        .locate(program, 0, false)
        .await?;
    setup.home.signal("STOP")?;
    // 64 asks at once, each a miss whose gather waits on the frozen holder (about 20 s).
    let flooder = std::sync::Arc::new(Console::connect(c, None).await?);
    let (busy_tx, mut busy) = tokio::sync::watch::channel(false);
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..64 {
        let (flooder, busy_tx) = (flooder.clone(), busy_tx.clone());
        flood.spawn(async move {
            let answer = flooder.locate(program, 1 + i % 2, false).await;
            if answer.is_err_and(|e| e.to_string().contains("too many misses")) {
                let _ = busy_tx.send(true);
            }
        });
    }
    // The flooder has all it may gather: its other asks were answered busy at once.
    tokio::time::timeout(Duration::from_secs(10), busy.wait_for(|b| *b)).await??;

    // While the flood's gathers wait, another console's miss is gathered all the same.
    let other = Console::connect(c, None).await?;
    let location = other.locate(program, 3, false).await;
    setup.home.signal("CONT")?;
    flood.abort_all();
    let location = location?;
    assert_ne!(location.engine, frozen, "not the frozen holder");
    Ok(())
}
