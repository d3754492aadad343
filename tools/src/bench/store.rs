//! The `store` section: the engine segment store's write path (temp file, BLAKE3,
//! fsync, rename, index commit per 4 MiB segment) and verified read path, beside `dd` writing
//! and reading the same bytes on the same filesystem. `dd` is run twice for writes: with
//! `conv=fsync` (one sync at the end) and with `oflag=dsync` (a sync per 4 MiB block, the
//! durability the store gives each segment).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{Row, median, ratio};

/// The store and `dd` alternate this many times; figures are medians.
const ROUNDS: u64 = 3;

/// Runs `dd` with `args` and returns MB/s (10^6 bytes per second) for `bytes`.
fn dd(args: &[String], bytes: u64) -> Result<f64> {
    let start = Instant::now();
    let out = Command::new("dd")
        .args(args)
        .output()
        .context("running dd (is coreutils installed?)")?;
    let secs = start.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "dd {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(bytes as f64 / 1e6 / secs.max(1e-9))
}

/// The store section: `mib` MiB through the store and through `dd`, in `dir`.
pub async fn run(dir: &Path, mib: u64) -> Result<(Value, Vec<Row>)> {
    let mib = mib.max(4) / 4 * 4;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let work = tempfile::tempdir_in(dir)
        .with_context(|| format!("creating a directory in {}", dir.display()))?;
    // The disk is shared and noisy: the store and dd take turns, ROUNDS times over a third
    // of the bytes each, and each figure is the median of its rounds.
    let round_mib = (mib / ROUNDS).max(4) / 4 * 4;
    let round_bytes = round_mib * 1024 * 1024;
    let file = work.path().join("dd.bin");
    let of = format!("of={}", file.display());
    let count = format!("count={}", round_mib / 4);
    let (mut writes, mut reads, mut fsyncs, mut dsyncs, mut dd_reads) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (w, r) = vodmesh_node::store::bench::throughput_probe(work.path(), round_bytes).await?;
        writes.push(w);
        reads.push(r);
        fsyncs.push(dd(
            &[
                "if=/dev/zero".into(),
                of.clone(),
                "bs=4M".into(),
                count.clone(),
                "conv=fsync".into(),
                "status=none".into(),
            ],
            round_bytes,
        )?);
        dsyncs.push(dd(
            &[
                "if=/dev/zero".into(),
                of.clone(),
                "bs=4M".into(),
                count.clone(),
                "oflag=dsync".into(),
                "status=none".into(),
            ],
            round_bytes,
        )?);
        dd_reads.push(dd(
            &[
                format!("if={}", file.display()),
                "of=/dev/null".into(),
                "bs=4M".into(),
                "status=none".into(),
            ],
            round_bytes,
        )?);
    }
    let (store_write, store_read) = (median(&mut writes), median(&mut reads));
    let (dd_fsync, dd_dsync, dd_read) = (
        median(&mut fsyncs),
        median(&mut dsyncs),
        median(&mut dd_reads),
    );
    let rows = vec![
        Row::new(
            "store",
            "segment write (fsync per segment)",
            format!("{store_write:.0} MB/s"),
        )
        .vs(
            format!("dd oflag=dsync {dd_dsync:.0} MB/s"),
            ratio(store_write, dd_dsync),
        ),
        Row::new("store", "segment write", format!("{store_write:.0} MB/s")).vs(
            format!("dd conv=fsync {dd_fsync:.0} MB/s"),
            ratio(store_write, dd_fsync),
        ),
        Row::new(
            "store",
            "segment read, verified",
            format!("{store_read:.0} MB/s"),
        )
        .vs(
            format!("dd read {dd_read:.0} MB/s"),
            ratio(store_read, dd_read),
        ),
    ];
    let value = json!({
        "bytes": round_bytes * ROUNDS,
        "rounds": ROUNDS,
        "segment_bytes": 4 * 1024 * 1024,
        "store_write_mb_s": store_write.round(),
        "store_read_verified_mb_s": store_read.round(),
        "dd_write_fsync_mb_s": dd_fsync.round(),
        "dd_write_dsync_mb_s": dd_dsync.round(),
        "dd_read_mb_s": dd_read.round(),
        "write_vs_dd_dsync": ratio(store_write, dd_dsync),
        "write_vs_dd_fsync": ratio(store_write, dd_fsync),
        "read_vs_dd": ratio(store_read, dd_read),
        "note": "reads come from the page cache; the store hashes every byte it reads (BLAKE3), dd does not",
    });
    Ok((value, rows))
}
