//! The `footprint` section: the resident memory of an idle `vodmesh-node` with 4 engines (and,
//! as the reference, with 1 engine), from `/proc`; and the memory one active stream costs the
//! engine's process, from the `streams` section.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};

use super::swarm::NodeProcess;
use super::{Row, ratio, rss_bytes};

const MIB: f64 = 1024.0 * 1024.0;
/// The target of issue 8: an idle station under 60 MiB.
const TARGET_MIB: f64 = 60.0;

/// Runs the section under `dir`; `per_stream` is the bytes per active stream `streams` saw.
pub async fn run(dir: &Path, per_stream: Option<f64>) -> Result<(Value, Vec<Row>)> {
    let idle = |engines: usize, name: &str| -> Result<NodeProcess> {
        NodeProcess::start(&dir.join(name), &["--engines".into(), engines.to_string()])
    };
    let four = idle(4, "four")?;
    let one = idle(1, "one")?;
    // Idle: started, registry joined, nothing asked of it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss4 = rss_bytes(four.pid())? as f64 / MIB;
    let rss1 = rss_bytes(one.pid())? as f64 / MIB;
    drop(four);
    drop(one);
    let per_engine = (rss4 - rss1) / 3.0;
    let per_stream_kib = per_stream.map(|b| (b / 1024.0).round());
    let mut rows = vec![
        Row::new(
            "footprint",
            "RSS, idle station, 4 engines",
            format!("{rss4:.1} MiB"),
        )
        .vs(format!("target {TARGET_MIB} MiB"), ratio(rss4, TARGET_MIB)),
        Row::new(
            "footprint",
            "RSS per engine (4 vs 1 engine)",
            format!("{:.0} KiB", per_engine * 1024.0),
        )
        .vs(format!("1 engine {rss1:.1} MiB"), ratio(rss4, rss1)),
    ];
    if let Some(kib) = per_stream_kib {
        rows.push(Row::new(
            "footprint",
            "memory per active stream (engine process)",
            format!("{kib:.0} KiB"),
        ));
    }
    let value = json!({
        "idle_rss_4_engines_mib": (rss4 * 10.0).round() / 10.0,
        "idle_rss_1_engine_mib": (rss1 * 10.0).round() / 10.0,
        "per_engine_kib": (per_engine * 1024.0).round(),
        "vs_target_60_mib": ratio(rss4, TARGET_MIB),
        "bytes_per_active_stream": per_stream.map(f64::round).unwrap_or(0.0),
    });
    Ok((value, rows))
}
