//! Joining the swarm by one bootstrap address, in one process: ten stations, each joining
//! through a randomly chosen existing one; the first stops; an eleventh joins through the
//! fifth; everyone lists the eleventh and, once its record expires, nobody lists the first.

use std::collections::BTreeSet;
use std::time::Duration;

use rand::Rng;
use vodmesh_tests::{TEST_TTL, init_logging, listed, start_station, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_stations_join_by_random_bootstrap_and_a_stopped_one_expires() -> anyhow::Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let mut stations = Vec::new();
    let mut rng = rand::thread_rng();
    for i in 0..10 {
        let bootstrap = if stations.is_empty() {
            None
        } else {
            let pick: usize = rng.gen_range(0..stations.len());
            Some(vodmesh_node::Station::addr(&stations[pick]).clone())
        };
        let s = start_station(&dir.path().join(format!("s{i}")), bootstrap.as_ref()).await?;
        stations.push(s);
    }
    let all: BTreeSet<_> = stations.iter().map(|s| s.peer_id()).collect();
    assert_eq!(all.len(), 10);
    wait_until(
        "every station to list all ten",
        Duration::from_secs(60),
        || async {
            for s in &stations {
                if listed(s).await? != all {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )
    .await?;

    // Stop the first station; an eleventh joins through the fifth.
    let first = stations.remove(0);
    let gone = first.peer_id();
    first.shutdown().await;
    let fifth = stations[3].addr().clone();
    let eleventh = start_station(&dir.path().join("s10"), Some(&fifth)).await?;
    let newcomer = eleventh.peer_id();
    stations.push(eleventh);

    let expected: BTreeSet<_> = stations.iter().map(|s| s.peer_id()).collect();
    assert!(expected.contains(&newcomer) && !expected.contains(&gone));
    wait_until(
        "every live station to list the eleventh and not the stopped one",
        TEST_TTL * 6,
        || async {
            for s in &stations {
                if listed(s).await? != expected {
                    return Ok(false);
                }
            }
            Ok(true)
        },
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
    let a = start_station(&dir.path().join("a"), None).await?;
    let b = start_station(&dir.path().join("b"), Some(a.addr())).await?;
    let both: BTreeSet<_> = [a.peer_id(), b.peer_id()].into();
    wait_until("both stations listed", Duration::from_secs(30), || async {
        Ok(listed(&a).await? == both)
    })
    .await?;
    let a_peer = a.peer_id();
    let engine = a.engines[0].peer_id;
    a.shutdown().await;
    // Restart on the same data directory without a bootstrap: the same peer ids, and the
    // registry it persisted still holds b's live record.
    let a = start_station(&dir.path().join("a"), None).await?;
    assert_eq!(a.peer_id(), a_peer);
    assert_eq!(a.engines[0].peer_id, engine);
    let found = a.registry().get_station(b.peer_id()).await?;
    assert!(found.is_some(), "the restarted director lost b's record");
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}
