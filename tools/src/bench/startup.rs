//! The `startup` section: `vodmesh-console play --out -` as a process, from spawn to the first
//! byte on its stdout, for 4 MiB segments. The console writes no byte before it is verified:
//! on a hit the engine streams in verified mode and the first 16 KiB chunk group goes out as
//! soon as it checks against the manifest (`vodmesh_proto::verified`); on a miss the copy is
//! still filling, and the engine streams it verified too, each group as it lands (the copy's
//! source sent the segment's tree first, `/vodmesh/copy/1` in verified mode). For a hit (the
//! station asked holds the segment) and a miss (another station holds it: the director finds
//! it through the registry, has one of its engines copy it, and redirects the console there
//! while the copy streams in). Each miss asks for a segment no run asked for before.
//!
//! A miss is also timed where the home serves copies at [`PACED_MBPS`] (`--copy-rate`, a
//! station far away), from a segment's first byte: the console's first verified byte comes
//! once the copy's first groups have, not its whole segment; the reference is that segment's
//! copy time at that rate.
//!
//! References: the same binary's start-to-exit with `--version` (the floor of a process
//! start), and for the director's redirect (`Locate`) a `Playable` request on the same
//! connection (the floor of a control round trip).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use vodmesh_client::DirectorClient;
use vodmesh_proto::ProgramId;
use vodmesh_proto::director::{Request, Response};

use super::swarm::{BenchSwarm, Shape};
use super::{Row, quantile_ms, ratio, round2, sibling_bin};

const SEGMENT: u64 = 4 * 1024 * 1024;
const BITRATE: u64 = 8_000_000;
/// The home's copy rate for the paced misses, Mbit/s: a 4 MiB segment's copy takes 336 ms.
const PACED_MBPS: u32 = 100;

/// Runs the section under `dir`.
pub async fn run(dir: &Path, quick: bool) -> Result<(Value, Vec<Row>)> {
    let (runs, locates) = if quick { (5usize, 50usize) } else { (50, 500) };
    std::fs::create_dir_all(dir)?;
    let swarm = BenchSwarm::start(dir, Shape::new(1), &[Shape::new(1)]).await?;
    let result = measure(dir, &swarm, runs, locates).await;
    swarm.shutdown().await;
    let (mut value, mut rows) = result?;
    let paced_dir = dir.join("paced");
    let paced = Shape {
        copy_rate_mbps: PACED_MBPS,
        ..Shape::new(1)
    };
    let swarm = BenchSwarm::start(&paced_dir, paced, &[Shape::new(1)]).await?;
    let result = paced_misses(&paced_dir, &swarm, if quick { 2 } else { 6 }).await;
    swarm.shutdown().await;
    let (paced50, paced99) = result?;
    let copy_ms = round2(SEGMENT as f64 * 8.0 / (f64::from(PACED_MBPS) * 1e6) * 1e3);
    rows.push(
        Row::new(
            "startup",
            format!(
                "miss, copies at {PACED_MBPS} Mbit/s: process start -> first verified byte, p50 (p99 {paced99} ms)"
            ),
            format!("{paced50} ms"),
        )
        .vs(
            format!("the segment's copy {copy_ms} ms"),
            ratio(paced50, copy_ms),
        ),
    );
    if let Some(v) = value.as_object_mut() {
        v.insert("miss_paced_p50_ms".into(), json!(paced50));
        v.insert("miss_paced_p99_ms".into(), json!(paced99));
        v.insert("miss_paced_copy_mbps".into(), json!(PACED_MBPS));
        v.insert("miss_paced_segment_copy_ms".into(), json!(copy_ms));
        v.insert(
            "miss_paced_vs_segment_copy".into(),
            json!(ratio(paced50, copy_ms)),
        );
    }
    Ok((value, rows))
}

/// First verified byte of `runs` misses at the second station of `swarm`, whose home serves
/// copies paced: p50 and p99, ms. Each console starts at a segment's first byte, at `--speed
/// max`, so it streams the copy as it fills (a start past what the copy holds would be handed
/// to the home instead, claim 21). Such a console has the next eight segments located, so
/// copied, a third of a second each at this rate and four at once: each run starts ten
/// segments after the last, once those copies are done, so that its own copy starts at once.
async fn paced_misses(dir: &Path, swarm: &BenchSwarm, runs: usize) -> Result<(f64, f64)> {
    const STEP: u64 = 10;
    let segments = runs as u64 * STEP;
    let program = swarm
        .ingest(dir, "paced", segments * SEGMENT, SEGMENT, BITRATE)
        .await?;
    let home = swarm.console_home(&dir.join("console"))?;
    let console = sibling_bin("vodmesh-console")?;
    // A segment's duration as its manifest has it (whole milliseconds).
    let segment_ms = SEGMENT * 8 * 1000 / BITRATE;
    let other = swarm.others.first().context("no second station")?;
    let mut misses = Vec::new();
    for i in 0..runs as u64 {
        if i > 0 {
            // The copies the last console located ahead: nine, a third of a second each, four
            // at once.
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        let start = (i * STEP * segment_ms) as f64 / 1000.0;
        let at = (other.addr(), program, start);
        misses.push(first_byte(&console, &home, at).await?);
    }
    Ok((quantile_ms(&misses, 0.5), quantile_ms(&misses, 0.99)))
}

async fn measure(
    dir: &Path,
    swarm: &BenchSwarm,
    runs: usize,
    locates: usize,
) -> Result<(Value, Vec<Row>)> {
    // Misses take segments 0, 3, 6, ...: a console fetches two ahead, so each run's copies
    // stay clear of the next run's segment.
    let segments = (runs as u64 * 3 + 2).max(4);
    let program = swarm
        .ingest(dir, "startup", segments * SEGMENT, SEGMENT, BITRATE)
        .await?;
    let home = swarm.console_home(&dir.join("console"))?;
    let console = sibling_bin("vodmesh-console")?;
    let seconds_per_segment = SEGMENT as f64 * 8.0 / BITRATE as f64;

    let mut floor = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let out = tokio::process::Command::new(&console)
            .arg("--version")
            .output()
            .await?;
        if !out.status.success() {
            bail!("vodmesh-console --version failed");
        }
        floor.push(t.elapsed());
    }
    let mut hits = Vec::new();
    for _ in 0..runs {
        let at = (swarm.home.addr(), program, 0.0);
        hits.push(first_byte(&console, &home, at).await?);
    }
    let other = swarm.others.first().context("no second station")?;
    let mut misses = Vec::new();
    for i in 0..runs {
        let start = (i as f64 * 3.0) * seconds_per_segment + 0.01;
        let at = (other.addr(), program, start);
        misses.push(first_byte(&console, &home, at).await?);
    }

    let client = DirectorClient::connect(swarm.home.addr(), None).await?;
    let mut redirect = Vec::new();
    let mut rpc = Vec::new();
    for i in 0..locates {
        let t = Instant::now();
        match client
            .request(Request::Locate {
                program,
                index: ((i as u64 % segments) as u32).into(),
                complete: false,
                avoid: Vec::new(),
                busy: Vec::new(),
                ahead: 0,
                token: None,
            })
            .await?
        {
            Response::Location(_) => redirect.push(t.elapsed()),
            other => bail!("locate: unexpected answer {other:?}"),
        }
        let t = Instant::now();
        let _ = client.request(Request::Playable { program }).await?;
        rpc.push(t.elapsed());
    }

    let q = |v: &[Duration], p: f64| quantile_ms(v, p);
    let (hit50, hit99, miss50, miss99) = (
        q(&hits, 0.5),
        q(&hits, 0.99),
        q(&misses, 0.5),
        q(&misses, 0.99),
    );
    let floor50 = q(&floor, 0.5);
    let (red50, red99, rpc50) = (q(&redirect, 0.5), q(&redirect, 0.99), q(&rpc, 0.5));
    let rows = vec![
        Row::new(
            "startup",
            format!("hit: process start -> first verified byte, p50 (p99 {hit99} ms)"),
            format!("{hit50} ms"),
        )
        .vs(
            format!("process start-exit {floor50} ms"),
            ratio(hit50, floor50),
        ),
        Row::new(
            "startup",
            format!("miss: process start -> first verified byte, p50 (p99 {miss99} ms)"),
            format!("{miss50} ms"),
        )
        .vs(format!("hit {hit50} ms"), ratio(miss50, hit50)),
        Row::new(
            "startup",
            format!("director redirect (Locate), p50 (p99 {red99} ms)"),
            format!("{red50} ms"),
        )
        .vs(
            format!("control round trip {rpc50} ms"),
            ratio(red50, rpc50),
        ),
    ];
    let value = json!({
        "runs": runs,
        "segment_bytes": SEGMENT,
        "hit_p50_ms": hit50,
        "hit_p99_ms": hit99,
        "miss_p50_ms": miss50,
        "miss_p99_ms": miss99,
        "process_floor_p50_ms": floor50,
        "hit_vs_process_floor": ratio(hit50, floor50),
        "miss_vs_hit": ratio(miss50, hit50),
        "redirect_p50_ms": red50,
        "redirect_p99_ms": red99,
        "control_rtt_p50_ms": rpc50,
        "redirect_vs_control_rtt": ratio(red50, rpc50),
        "setup": "two in-process stations (1 engine each); console processes with --speed max --out -; hits stream in verified chunk mode (16 KiB groups)",
    });
    Ok((value, rows))
}

/// Spawns `vodmesh-console play --speed max` against `node` for `program` from `start_s`, and
/// returns the time to its first byte.
async fn first_byte(
    console: &Path,
    home: &Path,
    (node, program, start_s): (&libp2p::Multiaddr, ProgramId, f64),
) -> Result<Duration> {
    let t = Instant::now();
    let mut child = tokio::process::Command::new(console)
        .env("VODMESH_HOME", home)
        .args(["play", "--node", &node.to_string(), &program.to_string()])
        .args([
            "--start",
            &format!("{start_s:.3}"),
            "--speed",
            "max",
            "--out",
            "-",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", console.display()))?;
    let mut stdout = child.stdout.take().context("no stdout")?;
    let mut byte = [0u8; 1];
    let got = tokio::time::timeout(Duration::from_secs(60), stdout.read(&mut byte)).await;
    let elapsed = t.elapsed();
    let _ = child.kill().await;
    match got {
        Ok(Ok(1)) => Ok(elapsed),
        _ => {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err).await;
            }
            bail!("the console wrote nothing: {}", err.trim())
        }
    }
}
