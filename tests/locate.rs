//! `Locate { ahead }` (issue 21's handoff): a director asked where a segment is also names the
//! segments after it, each where a `Locate` of its own would send the console, and a console at
//! `--speed max` goes to those without asking again. A boundary then costs no round trip
//! through the console, the director and the engine's preload.

use anyhow::Result;
use libp2p::PeerId;
use vodmesh_node::Station;
use vodmesh_proto::director::MAX_AHEAD;
use vodmesh_proto::token::Issuer;
use vodmesh_tests::console::{Console, play_max};
use vodmesh_tests::media::random_file;
use vodmesh_tests::swarm::{counter, ingest_options, init_logging, station};
use vodmesh_tools::ingest::{self, IngestOptions};

const MIB: usize = 1024 * 1024;

/// The station's count of `Locate` requests.
fn locates(station: &Station) -> Result<u64> {
    counter(station, "vodmesh_locates_total")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_director_names_the_next_segments_and_a_console_goes_there_without_asking() -> Result<()>
{
    init_logging();
    let dir = tempfile::tempdir()?;
    let issuer = Issuer::generate();
    let data = dir.path().join("home");
    let station = station(&data)
        .content_home()
        .engines(3)
        .trusting(&issuer)
        .start()
        .await?;
    let source = dir.path().join("ahead.bin");
    let bytes = random_file(&source, 24 * MIB, 7)?;
    let program = ingest::run(&IngestOptions {
        publish_at_ms: Some(vodmesh_proto::time::now_ms()),
        segment_size: MIB as u64,
        ..ingest_options(&station, &data.join("identity.key"), "ahead", source)
    })
    .await?
    .program;
    let segments = bytes.len().div_ceil(MIB) as u32;

    // Each segment asked for alone: where a console is sent for it, over the three engines.
    let console = Console::connect(station.addr(), Some(&issuer)).await?;
    let mut alone: Vec<PeerId> = Vec::new();
    for index in 0..segments {
        let location = console.locate(program, index, false).await?;
        assert!(location.ahead.is_empty(), "none asked for, none named");
        alone.push(location.engine);
    }
    let spread: std::collections::BTreeSet<_> = alone.iter().collect();
    assert!(
        spread.len() > 1,
        "the program is on {} engine(s)",
        spread.len()
    );
    let engines = |l: &vodmesh_proto::director::SegmentLocation| -> Vec<PeerId> {
        l.ahead.iter().map(|a| a.engine).collect()
    };

    // Asked ahead: the next ones in order, each where it was named alone.
    let at = console.locate_ahead(program, 2, 4).await?;
    assert_eq!(at.engine, alone[2]);
    assert_eq!(engines(&at), alone[3..7]);
    // No further than the program goes, no more than MAX_AHEAD however many are asked for,
    // and no location named ahead names more.
    let end = console.locate_ahead(program, segments - 3, 8).await?;
    assert_eq!(engines(&end), alone[(segments - 2) as usize..]);
    let many = console.locate_ahead(program, 0, u8::MAX).await?;
    assert_eq!(engines(&many), alone[1..=MAX_AHEAD as usize]);
    assert!(many.ahead.iter().all(|l| l.ahead.is_empty() && !l.filling));

    // A console at --speed max plays every byte, asking for far fewer segments than it plays
    // (three asks for the 24, here: each names the eight after it, and the fetches that start
    // meanwhile wait for its answer).
    let before = locates(&station)?;
    let mut out: Vec<u8> = Vec::new();
    let stats = play_max(station.addr(), &issuer, program, &mut out).await?;
    assert!(out == bytes, "the bytes played are not the bytes ingested");
    assert_eq!(stats.bytes, bytes.len() as u64);
    let asked = locates(&station)? - before;
    assert!(
        (1..=u64::from(segments / 2)).contains(&asked),
        "{asked} Locate requests for {segments} segments"
    );
    station.shutdown().await;
    Ok(())
}
