//! The `handoff` section: a program spread over three engines played by
//! `vodmesh-console play --speed max --out -` (a handoff at every boundary); the gap between
//! the read that carried the last byte of segment k and the one that carried the first byte of
//! k+1, p50/p99, read as a player reads (blocking, [`super::read_to_end`]). Reference: the
//! interval between reads inside a segment (the pipe's own cadence). Then `--speed 1` over a
//! whole program: stalls, from the console's `--stats`.

use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::swarm::{BenchSwarm, Shape};
use super::{Row, quantile_ms, ratio, read_to_end, sibling_bin};

const SEGMENT: u64 = 1024 * 1024;

/// Runs the section under `dir`.
pub async fn run(dir: &Path, quick: bool) -> Result<(Value, Vec<Row>)> {
    std::fs::create_dir_all(dir)?;
    let swarm = BenchSwarm::start(dir, Shape::new(3), &[]).await?;
    let result = measure(dir, &swarm, quick).await;
    swarm.shutdown().await;
    result
}

async fn measure(dir: &Path, swarm: &BenchSwarm, quick: bool) -> Result<(Value, Vec<Row>)> {
    // 200 boundaries in a full run, so the p99 is the third largest gap, not the largest
    // (of 47, one scheduling hiccup on a busy 2-core machine was the p99).
    let (segments, realtime_s): (u64, u64) = if quick { (12, 10) } else { (200, 120) };
    let home = swarm.console_home(&dir.join("console"))?;
    let console = sibling_bin("vodmesh-console")?;
    let fast = swarm
        .ingest(dir, "handoff", segments * SEGMENT, SEGMENT, 8_000_000)
        .await?;

    // --speed max: timestamps of every read of the console's stdout.
    let mut child = tokio::process::Command::new(&console)
        .env("VODMESH_HOME", &home)
        .args([
            "play",
            "--node",
            &swarm.home.addr().to_string(),
            &fast.to_string(),
        ])
        .args(["--speed", "max", "--out", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", console.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let started = Instant::now();
    // (offset of the read's first byte, its length, when it returned)
    let reads: Vec<(u64, u64, Instant)> = read_to_end(stdout, Vec::new(), |reads, n| {
        let offset = reads.last().map_or(0, |(o, n, _)| o + n);
        reads.push((offset, n as u64, Instant::now()));
    })
    .await?;
    let offset = reads.last().map_or(0, |(o, n, _)| o + n);
    let elapsed = started.elapsed();
    let status = child.wait().await?;
    if !status.success() || offset != segments * SEGMENT {
        bail!(
            "play --speed max ended with {status} after {offset} of {} bytes",
            segments * SEGMENT
        );
    }
    let read_at = |byte: u64| {
        reads
            .iter()
            .position(|(o, n, _)| byte >= *o && byte < o + n)
            .unwrap_or(0)
    };
    let mut gaps = Vec::new();
    for k in 1..segments {
        let b = k * SEGMENT;
        let (last, first) = (read_at(b - 1), read_at(b));
        gaps.push(reads[first].2.saturating_duration_since(reads[last].2));
    }
    let mut inner = Vec::new();
    for w in reads.windows(2) {
        let crosses = (w[0].0 + w[0].1) % SEGMENT == 0;
        if !crosses && (w[1].0 / SEGMENT) == (w[0].0 / SEGMENT) {
            inner.push(w[1].2.saturating_duration_since(w[0].2));
        }
    }
    let (g50, g99, in50, in99) = (
        quantile_ms(&gaps, 0.5),
        quantile_ms(&gaps, 0.99),
        quantile_ms(&inner, 0.5),
        quantile_ms(&inner, 0.99),
    );
    let throughput = (offset as f64 / elapsed.as_secs_f64() / 1e6).round();

    // --speed 1 over a whole program at 4 Mbit/s.
    let bitrate = 4_000_000u64;
    let bytes = realtime_s * bitrate / 8;
    let slow = swarm
        .ingest(dir, "realtime", bytes, SEGMENT, bitrate)
        .await?;
    let stats_path = dir.join("stats.json");
    let out = tokio::process::Command::new(&console)
        .env("VODMESH_HOME", &home)
        .args([
            "play",
            "--node",
            &swarm.home.addr().to_string(),
            &slow.to_string(),
        ])
        .args(["--speed", "1", "--stats"])
        .arg(&stats_path)
        .arg("--out")
        .arg(dir.join("realtime.out"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "play --speed 1 failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stats: Value = serde_json::from_slice(&std::fs::read(&stats_path)?)?;
    let stalls = stats["stalls"].as_u64().unwrap_or(u64::MAX);
    let handoffs = stats["handoffs"].as_u64().unwrap_or(0);

    let rows = vec![
        Row::new(
            "handoff",
            format!("gap at a boundary, speed max, p50 (p99 {g99} ms)"),
            format!("{g50} ms"),
        )
        .vs(
            format!("read interval in a segment {in50} ms"),
            ratio(g50, in50),
        ),
        Row::new(
            "handoff",
            format!("stalls at speed 1 over {realtime_s} s ({handoffs} handoffs)"),
            stalls.to_string(),
        ),
    ];
    let value = json!({
        "segments": segments,
        "segment_bytes": SEGMENT,
        "engines": 3,
        "gap_p50_ms": g50,
        "gap_p99_ms": g99,
        "gap_max_ms": quantile_ms(&gaps, 1.0),
        // Every boundary's gap in order (which ones were long tells a first dial from
        // noise).
        "gaps_ms": gaps.iter().map(|g| (g.as_secs_f64() * 1e5).round() / 100.0).collect::<Vec<_>>(),
        "read_interval_p50_ms": in50,
        // The same reads' p99 inside segments: what the machine's scheduling alone costs
        // the reader, beside the gaps at boundaries.
        "read_interval_p99_ms": in99,
        "read_intervals": inner.len(),
        "gap_vs_read_interval": ratio(g50, in50),
        "speed_max_mb_s": throughput,
        "realtime_seconds": realtime_s,
        "realtime_bitrate": bitrate,
        "realtime_stalls": stalls,
        "realtime_handoffs": handoffs,
        "realtime_startup_ms": stats["startup_ms"].as_u64().unwrap_or(0),
    });
    Ok((value, rows))
}
