//! Joining the swarm by one bootstrap address, in one process: ten stations, each joining
//! through a randomly chosen existing one; the first stops; an eleventh joins through the
//! fifth; everyone lists the eleventh and, once its record expires, nobody lists the first.

use std::collections::BTreeSet;
use std::time::Duration;

use rand::Rng;
use vodmesh_tests::swarm::{TEST_TTL, init_logging, station, wait_listed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_stations_join_by_random_bootstrap_and_a_stopped_one_expires() -> anyhow::Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let mut stations = Vec::new();
    let mut rng = rand::thread_rng();
    for i in 0..10 {
        let mut spec = station(dir.path().join(format!("s{i}")));
        if !stations.is_empty() {
            spec = spec.bootstrap(&stations[rng.gen_range(0..stations.len())]);
        }
        stations.push(spec.start().await?);
    }
    let all: BTreeSet<_> = stations.iter().map(|s| s.peer_id()).collect();
    assert_eq!(all.len(), 10);
    let every: Vec<_> = stations.iter().collect();
    wait_listed(
        "every station to list all ten",
        &every,
        &all,
        Duration::from_secs(60),
    )
    .await?;

    // Stop the first station; an eleventh joins through the fifth.
    let first = stations.remove(0);
    let gone = first.peer_id();
    first.shutdown().await;
    let eleventh = station(dir.path().join("s10"))
        .bootstrap(&stations[3])
        .start()
        .await?;
    let newcomer = eleventh.peer_id();
    stations.push(eleventh);

    let expected: BTreeSet<_> = stations.iter().map(|s| s.peer_id()).collect();
    assert!(expected.contains(&newcomer) && !expected.contains(&gone));
    let live: Vec<_> = stations.iter().collect();
    wait_listed(
        "every live station to list the eleventh and not the stopped one",
        &live,
        &expected,
        TEST_TTL * 6,
    )
    .await?;
    for s in stations {
        s.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_director_keeps_its_identity_and_registry_records() -> anyhow::Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let a = station(dir.path().join("a")).start().await?;
    let b = station(dir.path().join("b")).bootstrap(&a).start().await?;
    let both: BTreeSet<_> = [a.peer_id(), b.peer_id()].into();
    wait_listed(
        "both stations listed",
        &[&a],
        &both,
        Duration::from_secs(30),
    )
    .await?;
    let a_peer = a.peer_id();
    let engine = a.engines[0].peer_id;
    a.shutdown().await;
    // Restart on the same data directory without a bootstrap: the same peer ids, and the
    // registry it persisted still holds b's live record.
    let a = station(dir.path().join("a")).start().await?;
    assert_eq!(a.peer_id(), a_peer);
    assert_eq!(a.engines[0].peer_id, engine);
    let found = a.registry().get_station(b.peer_id()).await?;
    assert!(found.is_some(), "the restarted director lost b's record");
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}
