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
