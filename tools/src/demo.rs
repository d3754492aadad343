//! `vodmesh demo`: the embedded default.
//!
//! Starts a swarm of three stations on loopback in this process (each a director and two
//! engines, every one its own libp2p peer), the second and third joining through the first,
//! waits until every station sees all three through the registry, prints the swarm's status
//! and stops them.

use std::time::Duration;

use anyhow::{Result, bail};
use vodmesh_node::{Station, StationConfig};

use crate::status;

/// How many stations the demo starts.
pub const STATIONS: usize = 3;

/// Runs the demo; returns an error if the swarm does not converge.
pub async fn run() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut stations: Vec<Station> = Vec::new();
    for i in 0..STATIONS {
        let mut config = StationConfig::new(dir.path().join(format!("station-{i}")));
        config.engines = 2;
        config.region = Some(["north", "south", "east"][i % 3].to_string());
        if let Some(first) = stations.first() {
            config.bootstrap = vec![first.addr().clone()];
        }
        let station = Station::start(config).await?;
        println!("started station {} at {}", i + 1, station.addr());
        stations.push(station);
    }
    println!("waiting for every station to see the others through the registry...");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut complete = true;
        for s in &stations {
            if s.swarm().await?.len() < STATIONS {
                complete = false;
                break;
            }
        }
        if complete {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the demo swarm did not converge within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let last = stations.last().map(|s| s.addr().clone());
    if let Some(addr) = last {
        println!("\nvodmesh status --node {addr}\n");
        let swarm = status::fetch(&addr).await?;
        print!("{}", status::to_text(&swarm));
    }
    for s in stations {
        s.shutdown().await;
    }
    println!(
        "\ndemo finished: {STATIONS} stations joined one swarm through a single bootstrap address each"
    );
    Ok(())
}
