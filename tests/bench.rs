//! `vodmesh bench --quick --json FILE` as a process: every section and field is in the JSON,
//! with sane values (positive throughputs, finite ratios). The figures themselves are not
//! asserted: they depend on the machine.

use anyhow::{Context, bail};
use serde_json::Value;
use vodmesh_tests::cli::command_in;
use vodmesh_tests::require;

/// `json[path...]` as a number, or a failure naming the path.
fn num(json: &Value, path: &[&str]) -> anyhow::Result<f64> {
    let mut v = json;
    for p in path {
        v = v
            .get(p)
            .with_context(|| format!("no field {path:?} in {json}"))?;
    }
    let x = v
        .as_f64()
        .with_context(|| format!("{path:?} is not a number: {v}"))?;
    if !x.is_finite() {
        bail!("{path:?} is not finite");
    }
    Ok(x)
}

fn positive(json: &Value, path: &[&str]) -> anyhow::Result<()> {
    let x = num(json, path)?;
    if x <= 0.0 {
        bail!("{path:?} should be positive, is {x}");
    }
    Ok(())
}

/// A section `--only` does not know is refused before anything runs, with the names it
/// takes; control: a known one is taken (the JSON has it run and the others skipped).
#[test]
fn bench_only_refuses_an_unknown_section_and_names_the_known_ones() -> anyhow::Result<()> {
    let out = command_in(None, "vodmesh")
        .args(["bench", "--only", "edg"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an unknown section ran: {stderr}");
    for name in ["store", "copy", "handoff", "registry", "footprint", "edge"] {
        assert!(stderr.contains(name), "{name} not named: {stderr}");
    }
    let dir = tempfile::tempdir()?;
    let json_path = dir.path().join("bench.json");
    let out = command_in(None, "vodmesh")
        .args(["bench", "--quick", "--only", "registry", "--json"])
        .arg(&json_path)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "--only registry failed: {stderr}");
    let json: Value = serde_json::from_slice(&std::fs::read(&json_path)?)?;
    assert!(json["registry"].get("skipped").is_none(), "{json}");
    assert!(json["edge"]["skipped"].is_string(), "{json}");
    Ok(())
}

#[test]
fn bench_quick_writes_every_section_with_sane_values() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let json_path = dir.path().join("bench.json");
    let out = command_in(None, "vodmesh")
        .args(["bench", "--quick", "--json"])
        .arg(&json_path)
        .arg("--dir")
        .arg(dir.path())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "vodmesh bench failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    assert!(stdout.contains("| section"), "a table is printed: {stdout}");
    let json: Value = serde_json::from_slice(&std::fs::read(&json_path)?)?;

    for section in [
        "copy",
        "streams",
        "startup",
        "handoff",
        "registry",
        "store",
        "footprint",
        "edge",
    ] {
        let s = json.get(section).with_context(|| format!("no {section}"))?;
        assert!(s.get("error").is_none(), "{section} failed: {s}");
    }
    for f in ["edge_one_client_mb_s", "edge_many_clients_mb_s"] {
        positive(&json, &["edge", f])?;
    }
    assert_eq!(json["machine"]["quick"], true);
    positive(&json, &["machine", "cpus"])?;

    for f in [
        "copy_tcp_mb_s",
        "raw_libp2p_stream_tcp_mb_s",
        "raw_libp2p_stream_tcp_noise_mb_s",
        "raw_libp2p_stream_quic_mb_s",
        "copy_vs_ceiling_tcp",
        "store_write_mb_s",
        "copy_bound_mb_s",
        "copy_vs_bound",
        "stream_mb_s",
        "stream_discarded_mb_s",
        "pipe_mb_s",
        "stream_vs_pipe",
        // The CPU of each part, to the nanosecond: every part takes some.
        "copy_cpu_cores",
        "copy_cpu_s_per_gb",
        "raw_libp2p_stream_tcp_cpu_s_per_gb",
        "raw_tls_no_yamux_cpu_s_per_gb",
        "store_write_cpu_s_per_gb",
        "copy_cpu_limit_mb_s",
        "copy_vs_cpu_limit",
    ] {
        positive(&json, &["copy", f])?;
    }
    for part in ["console", "stations_and_reader", "total"] {
        positive(&json, &["copy", "stream_cpu_s_per_gb", part])?;
    }
    for part in ["console", "stations", "total"] {
        positive(&json, &["copy", "stream_discarded_cpu_s_per_gb", part])?;
    }
    // The suites were learnt from the handshakes: AES-GCM over TCP+TLS and QUIC, noise where
    // only noise was offered.
    let copy = &json["copy"];
    for run in ["raw_tcp", "raw_quic", "copy", "stream"] {
        let cipher = copy["ciphers"][run].as_str().unwrap_or_default();
        assert!(cipher.contains("AES_128_GCM"), "{run}: {cipher}");
    }
    assert_eq!(copy["cipher"], copy["ciphers"]["raw_tcp"]);
    let noise = copy["ciphers"]["raw_tcp_noise_only"].as_str();
    assert!(noise.is_some_and(|c| c.starts_with("noise")), "{copy}");
    // nginx rows are there when nginx is installed, and say why not otherwise (under CI,
    // which installs nginx, they must be there).
    if copy.get("nginx").is_some() {
        assert!(copy["nginx"]["skipped"].is_string());
        assert!(!require::in_ci(), "nginx did not run: {}", copy["nginx"]);
    } else {
        for f in [
            "nginx_https_mb_s",
            "nginx_http_mb_s",
            "nginx_https_one_download_mb_s",
            "copy_vs_nginx_https",
            "ceiling_vs_nginx_https",
            "stream_vs_nginx_https",
            "stream_discarded_vs_nginx_https",
            "pipe_vs_nginx_https",
        ] {
            positive(&json, &["copy", f])?;
        }
        // The client's CPU is this process's; nginx's worker's is read from /proc, where the
        // kernel lists a process's children (null where it does not).
        let one = &copy["nginx_https_one_download_cpu_s_per_gb"];
        positive(one, &["client"])?;
        assert!(
            one["nginx"].is_null() || one["nginx"].as_f64() > Some(0.0),
            "{one}"
        );
    }

    let paced = json["streams"]["paced"]
        .as_array()
        .context("streams.paced is not a list")?;
    assert!(!paced.is_empty());
    for run in paced {
        positive(run, &["consoles"])?;
        positive(run, &["delivered_mb_s"])?;
        positive(run, &["delivered_vs_demanded"])?;
        num(run, &["stalls"])?;
        num(run, &["p99_lag_ms"])?;
        num(run, &["engine_cpu_percent"])?;
        num(run, &["engine_cpu_per_gb_s"])?;
        // The stream behaviour queues every inbound stream: no console opens one twice.
        assert_eq!(num(run, &["retries"])?, 0.0, "{run}");
    }
    num(&json, &["streams", "largest_n_zero_stalls"])?;
    assert_eq!(num(&json, &["streams", "retries"])?, 0.0);
    positive(&json, &["streams", "engine_cpu_per_gb_s"])?;
    positive(&json, &["streams", "unpaced_aggregate_mb_s"])?;
    positive(&json, &["streams", "unpaced_vs_raw_stream"])?;
    // More consoles than slots: busy engines are waits, never errors; every byte arrives.
    let over = &json["streams"]["over_capacity"];
    assert_eq!(over["errors"], 0, "{over}");
    assert_eq!(over["bytes"], over["bytes_expected"], "{over}");
    num(over, &["stalls"])?;
    num(over, &["waits"])?;
    num(over, &["replications"])?;

    for f in [
        "hit_p50_ms",
        "hit_p99_ms",
        "miss_p50_ms",
        "miss_p99_ms",
        "process_floor_p50_ms",
        "miss_vs_hit",
        "redirect_p50_ms",
        "redirect_p99_ms",
        "redirect_vs_control_rtt",
        "miss_paced_p50_ms",
        "miss_paced_p99_ms",
        "miss_paced_copy_mbps",
        "miss_paced_segment_copy_ms",
        "miss_paced_vs_segment_copy",
    ] {
        positive(&json, &["startup", f])?;
    }

    for f in [
        "gap_p50_ms",
        "gap_p99_ms",
        "read_interval_p50_ms",
        "gap_vs_read_interval",
    ] {
        num(&json, &["handoff", f])?;
    }
    positive(&json, &["handoff", "speed_max_mb_s"])?;
    num(&json, &["handoff", "realtime_stalls"])?;

    for f in [
        "p50_ms",
        "p99_ms",
        "two_servers_p50_ms",
        "vs_two_servers",
        "new_server_seen_by_all_ms",
    ] {
        positive(&json, &["registry", f])?;
    }
    assert_eq!(
        num(&json, &["registry", "found"])?,
        num(&json, &["registry", "lookups"])?,
        "every lookup finds the holder"
    );

    for f in [
        "store_write_mb_s",
        "store_read_verified_mb_s",
        "dd_write_dsync_mb_s",
        "dd_read_mb_s",
        "write_vs_dd_dsync",
        "read_vs_dd",
    ] {
        positive(&json, &["store", f])?;
    }

    positive(&json, &["footprint", "idle_rss_4_engines_mib"])?;
    positive(&json, &["footprint", "idle_rss_1_engine_mib"])?;
    positive(&json, &["footprint", "vs_target_60_mib"])?;
    num(&json, &["footprint", "bytes_per_active_stream"])?;
    Ok(())
}
