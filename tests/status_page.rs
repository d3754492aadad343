//! The status page of `vodmesh-node --metrics` in a real browser: a 3-station swarm, the page
//! of the first station's metrics address loaded in headless Chromium, every station's
//! director peer id (and every engine, and four sparklines per station) found on it once its
//! script has polled `/status.json`;
//! a screenshot saved as target/test-artifacts/status-page.png. Skipped with a clear line
//! where node, Chromium or playwright-core is absent (a failure under CI).

use std::time::Duration;

use anyhow::{Context, Result};
use vodmesh_node::Station;
use vodmesh_tests::require::Browser;
use vodmesh_tests::swarm::{self, init_logging, listed};
use vodmesh_tests::wait;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_finds_every_station_on_the_status_page() -> Result<()> {
    init_logging();
    let Some(browser) = Browser::find()? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let mut stations: Vec<Station> = Vec::new();
    for (i, engines) in [2usize, 1, 3].into_iter().enumerate() {
        let mut spec = swarm::station(dir.path().join(format!("s{i}")))
            .engines(engines)
            .with(|c| {
                c.region = Some(format!("region-{i}"));
                if i == 0 {
                    c.metrics_addr = "127.0.0.1:0".parse().ok();
                }
            });
        if let Some(first) = stations.first() {
            spec = spec.bootstrap(first);
        }
        stations.push(spec.start().await?);
    }
    let peers: Vec<String> = stations.iter().map(|s| s.peer_id().to_string()).collect();
    let first = &stations[0];
    wait::until(
        "the first station to list all three",
        Duration::from_secs(30),
        || async { Ok(listed(first).await?.len() == 3) },
    )
    .await?;
    let url = format!(
        "http://{}/",
        first.metrics_addr().context("no metrics address")?
    );

    // Fails unless the page showed every station.
    let profile = dir.path().join("chromium-profile");
    let (result, screenshot) = tokio::task::spawn_blocking(move || {
        browser.run("status.js", &url, "status-page.png", &profile, &peers)
    })
    .await??;
    assert_eq!(
        result["found"].as_array().map(Vec::len),
        Some(3),
        "{result}"
    );
    assert_eq!(result["engines"], 6, "every engine has a row: {result}");
    assert_eq!(
        result["sparks"], 12,
        "every station has its four sparklines: {result}"
    );
    assert!(
        screenshot.exists(),
        "no screenshot at {}",
        screenshot.display()
    );
    eprintln!(
        "status page in Chromium: {result}; screenshot: {}",
        screenshot.display()
    );
    for s in stations {
        s.shutdown().await;
    }
    Ok(())
}
