//! The status page of `vodmesh-node --metrics` in a real browser: a 3-station swarm, the page
//! of the first station's metrics address loaded in headless Chromium, every station's
//! director peer id (and every engine) found on it once its script has polled `/status.json`;
//! a screenshot saved as target/test-artifacts/status-page.png. Skipped with a clear line
//! where node, Chromium or playwright-core is absent (a failure under CI).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use vodmesh_node::{Station, StationConfig};
use vodmesh_tests::{TEST_TTL, bin, init_logging, listed, wait_until};

/// Why the browser test cannot run here, if it cannot.
fn absent(chromium: &str, playwright: &Path) -> Option<String> {
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node || !Path::new(chromium).exists() || !playwright.exists() {
        return Some(format!(
            "node, Chromium ({chromium}) or playwright-core ({}) is absent: run \
             `apt-get install nodejs npm chromium` and `npm ci` in tests/browser",
            playwright.display()
        ));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_finds_every_station_on_the_status_page() -> Result<()> {
    init_logging();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let browser = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    if let Some(why) = absent(&chromium, &browser.join("node_modules/playwright-core")) {
        if std::env::var_os("CI").is_some() {
            bail!("{why}");
        }
        eprintln!("SKIPPED: {why}");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mut stations: Vec<Station> = Vec::new();
    for (i, engines) in [2usize, 1, 3].into_iter().enumerate() {
        let mut config = StationConfig::new(dir.path().join(format!("s{i}")));
        config.registry.record_ttl = TEST_TTL;
        config.engines = engines;
        config.region = Some(format!("region-{i}"));
        config.bootstrap = stations
            .first()
            .map(|s| s.addr().clone())
            .into_iter()
            .collect();
        if i == 0 {
            config.metrics_addr = Some("127.0.0.1:0".parse()?);
        }
        stations.push(Station::start(config).await?);
    }
    let peers: Vec<String> = stations.iter().map(|s| s.peer_id().to_string()).collect();
    let first = &stations[0];
    wait_until(
        "the first station to list all three",
        Duration::from_secs(30),
        || async { Ok(listed(first).await?.len() == 3) },
    )
    .await?;
    let url = format!(
        "http://{}/",
        first.metrics_addr().context("no metrics address")?
    );

    let artifacts = bin("vodmesh")
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("test-artifacts"))
        .context("no target directory")?;
    std::fs::create_dir_all(&artifacts)?;
    let screenshot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let mut cmd = Command::new("node");
    cmd.arg(browser.join("status.js"))
        .arg(&url)
        .arg(&screenshot)
        .arg(dir.path().join("chromium-profile"))
        .args(&peers)
        .env("CHROMIUM", &chromium);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the page did not show every station:\n{stdout}\n{stderr}"
    );
    let result: serde_json::Value = serde_json::from_str(
        stdout
            .lines()
            .last()
            .context("the script printed nothing")?,
    )?;
    assert_eq!(
        result["found"].as_array().map(Vec::len),
        Some(3),
        "{result}"
    );
    assert_eq!(result["engines"], 6, "every engine has a row: {result}");
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
