//! `vodmesh sim` through the command line: 30 stations' directors in one process, and the
//! JSON report holds every figure with sane values: every station joining through the real
//! flow, a swarm built converged that stations then join, churn, the light transport against
//! the noise reference, and the re-provide round.

use serde_json::Value;
use vodmesh_tests::cli::command_in;

fn num(v: &Value, path: &str) -> anyhow::Result<f64> {
    let mut at = v;
    for part in path.split('.') {
        at = at
            .get(part)
            .ok_or_else(|| anyhow::anyhow!("report lacks {path}"))?;
    }
    at.as_f64()
        .ok_or_else(|| anyhow::anyhow!("{path} is not a number: {at}"))
}

/// Runs `vodmesh sim` with `args` and returns its stdout and its JSON report. Queries may
/// take a minute: the figures asserted are what the DHT finds, and a run beside the rest of
/// the suite on two cores must not count a slow answer as a lost one.
fn sim(args: &[&str]) -> anyhow::Result<(String, Value)> {
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("sim.json");
    let out = command_in(None, "vodmesh")
        .arg("sim")
        .args(["--query-timeout", "60"])
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "vodmesh sim failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    Ok((stdout, report))
}

#[test]
fn sim_of_30_joining_stations_reports_every_figure() -> anyhow::Result<()> {
    let (stdout, r) = sim(&[
        "--stations",
        "30",
        "--setup",
        "join",
        "--lookups",
        "150",
        "--transport",
        "noise",
    ])?;
    anyhow::ensure!(stdout.contains("find-holders"), "no table: {stdout}");
    anyhow::ensure!(
        stdout.contains("noise + yamux"),
        "transport not stated: {stdout}"
    );

    assert_eq!(num(&r, "stations")?, 30.0);
    assert_eq!(num(&r, "programs")?, 30.0);
    assert_eq!(num(&r, "replication")?, 20.0);
    assert_eq!(num(&r, "churn")?, 0.0);
    assert!(num(&r, "setup_s")? > 0.0 && num(&r, "measure_s")? > 0.0);

    // Every station joined, and every one but the first was found by another station.
    assert_eq!(num(&r, "join.stations")?, 30.0);
    assert_eq!(num(&r, "join.found")?, 29.0);
    assert_eq!(num(&r, "join.provide_failures")?, 0.0);
    assert_eq!(num(&r, "join.routing_ms.count")?, 29.0);
    assert!(num(&r, "join.routing_ms.p50")? > 0.0);
    assert!(num(&r, "join.routing_peers.p50")? >= 1.0);
    assert!(num(&r, "join.publish_ms.p50")? > 0.0);
    assert!(num(&r, "join.found_ms.p50")? > 0.0);

    // Without churn every lookup names a live holder.
    assert_eq!(num(&r, "lookups.total")?, 150.0);
    assert_eq!(num(&r, "lookups.succeeded")?, 150.0);
    assert_eq!(num(&r, "lookups.success_rate")?, 1.0);
    assert_eq!(num(&r, "lookups.timeouts")?, 0.0);
    assert!(num(&r, "lookups.ms.p50")? > 0.0);
    assert!(num(&r, "lookups.ms.p99")? >= num(&r, "lookups.ms.p50")?);
    assert!(num(&r, "lookups.hops.count")? > 0.0);
    assert!(num(&r, "lookups.hops.p50")? >= 1.0);
    assert!(num(&r, "lookups.hops.max")? <= num(&r, "lookups.requests.max")?);
    assert!(num(&r, "lookups.requests.p50")? >= 1.0);
    assert!(num(&r, "lookups.first_holder_ms.p50")? <= num(&r, "lookups.ms.max")?);

    // Every director holds records, and no more station records than there are stations.
    assert_eq!(num(&r, "records.directors")?, 30.0);
    assert!(num(&r, "records.total.p50")? > 0.0);
    assert!(num(&r, "records.station.mean")? > 0.0);
    assert!(num(&r, "records.station.max")? <= 30.0);
    assert!(num(&r, "records.provider.mean")? > 0.0);
    assert!(num(&r, "records.catalog.mean")? > 0.0);
    assert!(num(&r, "records.catalog.max")? <= 30.0);
    assert!(num(&r, "records.routing.p50")? >= 1.0);
    Ok(())
}

#[test]
fn sim_with_churn_keeps_finding_holders() -> anyhow::Result<()> {
    let (_, r) = sim(&[
        "--stations",
        "30",
        "--joins",
        "4",
        "--lookups",
        "150",
        "--churn",
        "0.2",
    ])?;

    // A converged swarm of 30, 4 stations joined it; then 20 % of 30 left abruptly during
    // the lookups and as many new ones joined through the survivors.
    assert_eq!(r["setup"], "warm");
    assert_eq!(num(&r, "left")?, 6.0);
    assert_eq!(num(&r, "joined")?, 6.0);
    assert_eq!(num(&r, "join.stations")?, 10.0);
    assert_eq!(num(&r, "join.provide_failures")?, 0.0);
    // The 4 that joined before the churn were found by others; of the 6 that joined during
    // it, a finder or the joiner itself may have left before the search.
    assert!(num(&r, "join.found")? >= 4.0, "{}", r["join"]);
    // Lookups went on during the churn, and holders that are still there were found: each
    // program has three holders, so losing all of them to churn is rare, not the rule.
    assert!(num(&r, "lookups.during_churn")? > 0.0);
    assert_eq!(num(&r, "lookups.total")?, 150.0);
    assert!(
        num(&r, "lookups.success_rate")? >= 0.9,
        "success rate under churn: {}",
        r["lookups"]
    );
    // Only live directors are counted at the end: 30 + 4 joined, 6 left, 6 joined.
    assert_eq!(num(&r, "records.directors")?, 34.0);
    Ok(())
}

#[test]
fn a_converged_swarm_is_joined_and_searched() -> anyhow::Result<()> {
    let (_, r) = sim(&["--stations", "40", "--joins", "5", "--lookups", "100"])?;
    assert_eq!(r["setup"], "warm");
    // Only the 5 stations that joined the built swarm are joins; each was found.
    assert_eq!(num(&r, "join.stations")?, 5.0);
    assert_eq!(num(&r, "join.found")?, 5.0);
    assert_eq!(num(&r, "join.routing_ms.count")?, 5.0);
    assert!(num(&r, "join.routing_peers.p50")? >= 20.0);
    // The records placed at the closest stations answer every lookup.
    assert_eq!(num(&r, "lookups.succeeded")?, 100.0);
    assert!(num(&r, "lookups.hops.p50")? >= 1.0);
    // Every director holds about k station records (k = 20 of 45 stations) and catalog
    // records; no more station records than there are stations.
    assert_eq!(num(&r, "records.directors")?, 45.0);
    assert!(num(&r, "records.station.mean")? >= 15.0);
    assert!(num(&r, "records.station.max")? <= 45.0);
    assert!(num(&r, "records.catalog.mean")? > 0.0);
    assert!(num(&r, "records.provider.mean")? > 0.0);
    Ok(())
}

/// The light mode (plaintext, the default) and the reference (noise) build the same converged
/// swarm from the same seed: the same records end up at the same directors, and both find
/// every holder. Only the joins and lookups are live, so the figures may differ a little.
#[test]
fn the_light_transport_reproduces_the_noise_reference() -> anyhow::Result<()> {
    let args = ["--stations", "40", "--joins", "5", "--lookups", "100"];
    let (stdout, light) = sim(&args)?;
    anyhow::ensure!(
        stdout.contains("plaintext + yamux (no encryption"),
        "the light mode is not stated: {stdout}"
    );
    let (_, reference) = sim(&[&args[..], &["--transport", "noise"]].concat())?;
    assert!(
        light["transport"]
            .as_str()
            .is_some_and(|t| t.contains("plaintext"))
    );
    assert!(
        reference["transport"]
            .as_str()
            .is_some_and(|t| t.contains("noise"))
    );
    for r in [&light, &reference] {
        assert_eq!(num(r, "lookups.succeeded")?, 100.0);
        assert_eq!(num(r, "join.found")?, 5.0);
        assert_eq!(num(r, "records.directors")?, 45.0);
    }
    for path in [
        "records.station.mean",
        "records.catalog.mean",
        "records.provider.mean",
    ] {
        let (a, b) = (num(&light, path)?, num(&reference, path)?);
        assert!((a - b).abs() <= 0.1 * b, "{path}: light {a}, noise {b}");
    }
    Ok(())
}

/// Two stations each provide 60 programs of their own at once, as a director re-provides what
/// it holds: every provide is a lookup plus an ADD_PROVIDER to each of the k = 20 closest, the
/// other directors count what they received, and the load follows at both TTLs.
#[test]
fn the_reprovide_round_reports_its_cost_and_the_load() -> anyhow::Result<()> {
    let (stdout, r) = sim(&[
        "--stations",
        "30",
        "--joins",
        "2",
        "--lookups",
        "20",
        "--programs-per-station",
        "60",
        "--republishers",
        "2",
    ])?;
    anyhow::ensure!(
        stdout.contains("re-provide: 2 stations x 60 programs"),
        "{stdout}"
    );
    let p = &r["republish"];
    assert_eq!(num(p, "stations")?, 2.0);
    assert_eq!(num(p, "provides")?, 120.0);
    assert_eq!(num(p, "failures")?, 0.0);
    // 29 others to choose the 20 closest from: the lookup, then 20 ADD_PROVIDERs, received.
    assert!(num(p, "sent_per_provide")? > 20.0, "{p}");
    let added = num(p, "add_provider_per_provide")?;
    assert!(
        (19.0..=20.0).contains(&added),
        "ADD_PROVIDER per provide: {added}"
    );
    assert!(num(p, "received_per_provide")? > added);
    // 60 programs every 20 s (a third of the station TTL, 60 s) and every 10 min (a third of
    // the provider TTL, 30 times as long).
    assert_eq!(num(p, "at_station_ttl.provides_per_s")?, 3.0);
    assert_eq!(num(p, "at_provider_ttl.ttl_s")?, 1800.0);
    assert_eq!(num(p, "at_provider_ttl.provides_per_s")?, 0.1);
    assert_eq!(
        num(p, "at_provider_ttl.provider_records_per_director")?,
        1200.0
    );
    assert!(
        num(p, "at_provider_ttl.requests_received_per_s")?
            < num(p, "at_station_ttl.requests_received_per_s")?
    );
    Ok(())
}
