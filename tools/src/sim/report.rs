//! What `vodmesh sim` reports: the figures (as `--json` writes them), how they are summed up
//! from what each join, lookup and provide measured, the steady-state republish load that
//! follows from one measured round, and the table printed on a terminal.

use std::time::Duration;

use serde::Serialize;
use vodmesh_registry::HoldersTrace;

use super::Setup;

/// p50, p99, mean and max of a sample.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Dist {
    /// Sample size.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Mean.
    pub mean: f64,
    /// Largest value.
    pub max: f64,
}

impl Dist {
    /// The distribution of `v` (all zero when it is empty).
    pub fn of(mut v: Vec<f64>) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Self {
            count: v.len(),
            p50: at(0.5),
            p99: at(0.99),
            mean: v.iter().sum::<f64>() / v.len() as f64,
            max: v[v.len() - 1],
        }
    }
}

/// Joins measured (the initial ones and those during churn).
#[derive(Clone, Debug, Default, Serialize)]
pub struct JoinReport {
    /// Stations that joined.
    pub stations: usize,
    /// Until the join's bootstrap query finished, ms.
    pub routing_ms: Dist,
    /// Routing table size when it finished.
    pub routing_peers: Dist,
    /// Until the station record was stored at the closest directors, ms.
    pub publish_ms: Dist,
    /// Until another station found the new station's record through the DHT, ms.
    pub found_ms: Dist,
    /// New stations another station found.
    pub found: usize,
    /// Provide calls that failed.
    pub provide_failures: usize,
}

/// Find-holders lookups.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LookupReport {
    /// Lookups made.
    pub total: usize,
    /// Lookups that named a holder still in the swarm.
    pub succeeded: usize,
    /// `succeeded / total`.
    pub success_rate: f64,
    /// Lookups started after the first station left.
    pub during_churn: usize,
    /// Of those, how many succeeded.
    pub during_churn_succeeded: usize,
    /// Lookups whose director held the provider record itself (the query still runs).
    pub local_hits: usize,
    /// Lookups that timed out in the driver (counted as failed).
    pub timeouts: usize,
    /// Whole lookup, wall time, ms.
    pub ms: Dist,
    /// Until the first remote answer naming a holder, ms (Kademlia's query clock).
    pub first_holder_ms: Dist,
    /// Requests sent until the first remote answer naming a holder.
    pub hops: Dist,
    /// Requests of the whole query.
    pub requests: Dist,
    /// Failed requests of the whole query.
    pub failed_requests: Dist,
}

/// Records held per live director at the end.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RecordsReport {
    /// Directors counted.
    pub directors: usize,
    /// `station/<peer>` records.
    pub station: Dist,
    /// Provider records under `program/<id>` of the catalog's programs.
    pub provider: Dist,
    /// `catalog/<id>` records.
    pub catalog: Dist,
    /// All three.
    pub total: Dist,
    /// Routing table entries.
    pub routing: Dist,
    /// Open connections.
    pub connections: Dist,
}

/// What re-providing costs in steady state, every station holding as many programs as the
/// measured ones, at one provider TTL.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Load {
    /// Provider record TTL, s.
    pub ttl_s: f64,
    /// A station re-provides everything it holds once per interval (a third of the TTL), s.
    pub interval_s: f64,
    /// Provides a station starts per second.
    pub provides_per_s: f64,
    /// Kademlia requests a station sends per second to re-provide.
    pub requests_sent_per_s: f64,
    /// Kademlia requests a director receives per second because every station re-provides.
    pub requests_received_per_s: f64,
    /// Provider records each director stores (k of each program of each station).
    pub provider_records_per_director: f64,
}

/// The steady-state load of re-providing `programs` programs per station every third of
/// `ttl`, from what one provide was measured to cost: `sent` requests by its station and
/// `received` requests across the whole swarm. Every station re-provides as many, so each
/// director receives what one station's round makes the swarm receive, per interval.
pub fn load(programs: usize, ttl: Duration, sent: f64, received: f64, replication: usize) -> Load {
    let interval = ttl.as_secs_f64() / 3.0;
    let provides_per_s = if interval > 0.0 {
        programs as f64 / interval
    } else {
        0.0
    };
    Load {
        ttl_s: ttl.as_secs_f64(),
        interval_s: interval,
        provides_per_s,
        requests_sent_per_s: provides_per_s * sent,
        requests_received_per_s: provides_per_s * received,
        provider_records_per_director: (programs * replication) as f64,
    }
}

/// One round of re-providing, measured at a sample of stations, and the load it implies.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepublishReport {
    /// Stations that re-provided (the rest of the swarm served them).
    pub stations: usize,
    /// Programs each of them holds.
    pub programs_per_station: usize,
    /// Provides made.
    pub provides: usize,
    /// Provides that failed or timed out.
    pub failures: usize,
    /// Provides in flight at once per station (kad's own republish job keeps at most 100).
    pub concurrency: usize,
    /// Wall time of the round, s.
    pub round_s: f64,
    /// Requests one provide sent: its closest-peers lookup plus `ADD_PROVIDER` to each of
    /// the k closest (Kademlia's `QueryStats`), mean.
    pub sent_per_provide: f64,
    /// Kademlia requests the whole swarm received per provide, every kind.
    pub received_per_provide: f64,
    /// Of those, `ADD_PROVIDER`.
    pub add_provider_per_provide: f64,
    /// Connections dialed per provide.
    pub dials_per_provide: f64,
    /// At the directors' provider TTL.
    pub at_provider_ttl: Load,
    /// At the station record TTL, which provider records had before they had their own.
    pub at_station_ttl: Load,
}

/// Everything `vodmesh sim` measured, as written to `--json`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Stations at the start.
    pub stations: usize,
    /// How the initial stations came to be.
    pub setup: Setup,
    /// Programs in the catalog.
    pub programs: usize,
    /// Holders of each program at the start.
    pub holders_per_program: usize,
    /// Churn fraction asked for.
    pub churn: f64,
    /// Seed.
    pub seed: u64,
    /// Kademlia replication factor k.
    pub replication: usize,
    /// Kademlia parallelism α (libp2p's default).
    pub parallelism: usize,
    /// Record TTL inside the simulation, s.
    pub ttl_s: u64,
    /// How peers talk.
    pub transport: String,
    /// Seconds an idle connection stays open.
    pub idle_timeout_s: u64,
    /// Stations that left during the lookups.
    pub left: usize,
    /// Stations that joined during the lookups.
    pub joined: usize,
    /// Time to start and join the initial stations and publish the catalog, s.
    pub setup_s: f64,
    /// Time of the lookup phase, s.
    pub measure_s: f64,
    /// Connections dialed during setup (the joins, and with `--setup join` the catalog).
    pub connections_opened_setup: u64,
    /// Connections dialed during the lookup phase (lookups and churn joins).
    pub connections_opened_measure: u64,
    /// Resident memory of the process after setup, MiB (from /proc, 0 where unknown).
    pub rss_after_setup_mib: f64,
    /// Peak resident memory of the process, MiB (from /proc, 0 where unknown).
    pub peak_rss_mib: f64,
    /// Joins.
    pub join: JoinReport,
    /// Find-holders lookups.
    pub lookups: LookupReport,
    /// Records per director.
    pub records: RecordsReport,
    /// The re-provide round, with `--programs-per-station`.
    pub republish: Option<RepublishReport>,
}

/// What one join measured.
pub(super) struct JoinOutcome {
    pub(super) index: usize,
    pub(super) routing_ms: Option<f64>,
    pub(super) peers: usize,
    pub(super) publish_ms: Option<f64>,
    pub(super) found_ms: Option<f64>,
    pub(super) provided: Vec<usize>,
    pub(super) provide_failures: usize,
}

/// What one lookup measured.
pub(super) struct LookupOutcome {
    pub(super) ok: bool,
    pub(super) during_churn: bool,
    pub(super) wall: Duration,
    pub(super) trace: Option<HoldersTrace>,
}

/// Milliseconds, as the report counts them.
pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(super) fn lookup_report(outcomes: &[LookupOutcome]) -> LookupReport {
    let traces = || outcomes.iter().filter_map(|o| o.trace.as_ref());
    let total = outcomes.len();
    let succeeded = outcomes.iter().filter(|o| o.ok).count();
    LookupReport {
        total,
        succeeded,
        success_rate: if total == 0 {
            0.0
        } else {
            succeeded as f64 / total as f64
        },
        during_churn: outcomes.iter().filter(|o| o.during_churn).count(),
        during_churn_succeeded: outcomes.iter().filter(|o| o.during_churn && o.ok).count(),
        local_hits: traces().filter(|t| t.local).count(),
        timeouts: outcomes.iter().filter(|o| o.trace.is_none()).count(),
        ms: Dist::of(outcomes.iter().map(|o| ms(o.wall)).collect()),
        first_holder_ms: Dist::of(traces().filter_map(|t| t.time_to_holder).map(ms).collect()),
        hops: Dist::of(
            traces()
                .filter_map(|t| t.requests_to_holder)
                .map(f64::from)
                .collect(),
        ),
        requests: Dist::of(traces().map(|t| f64::from(t.requests)).collect()),
        failed_requests: Dist::of(traces().map(|t| f64::from(t.failures)).collect()),
    }
}

pub(super) fn join_report(join: &[JoinOutcome]) -> JoinReport {
    // The first station of `--setup join` has nobody to join through; it is not a join.
    let joins = || join.iter().filter(|j| j.index > 0);
    JoinReport {
        stations: join.len(),
        routing_ms: Dist::of(joins().filter_map(|j| j.routing_ms).collect()),
        routing_peers: Dist::of(joins().map(|j| j.peers as f64).collect()),
        publish_ms: Dist::of(join.iter().filter_map(|j| j.publish_ms).collect()),
        found_ms: Dist::of(join.iter().filter_map(|j| j.found_ms).collect()),
        found: join.iter().filter(|j| j.found_ms.is_some()).count(),
        provide_failures: join.iter().map(|j| j.provide_failures).sum(),
    }
}

/// Resident memory of this process from /proc, MiB: now (`VmRSS`) or at its peak (`VmHWM`);
/// 0 where /proc does not say.
pub(super) fn rss_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The report as a table for a terminal.
pub fn to_text(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "vodmesh sim: {} stations, {} programs x {} holders, churn {:.0} % ({} left, {} joined), k = {}, seed {}",
        r.stations,
        r.programs,
        r.holders_per_program,
        r.churn * 100.0,
        r.left,
        r.joined,
        r.replication,
        r.seed
    );
    let _ = writeln!(
        s,
        "transport: {}; idle connections close after {} s",
        r.transport, r.idle_timeout_s
    );
    let _ = writeln!(
        s,
        "setup {:.1} s ({}), lookups {:.1} s, RSS {:.0} MiB after setup, peak {:.0} MiB",
        r.setup_s,
        match r.setup {
            Setup::Warm => "built converged, then the measured joins",
            Setup::Join => "every station joined",
        },
        r.measure_s,
        r.rss_after_setup_mib,
        r.peak_rss_mib
    );
    let _ = writeln!(
        s,
        "connections dialed: {} during setup ({:.0} a join), {} during the lookups ({:.0} a lookup)\n",
        r.connections_opened_setup,
        r.connections_opened_setup as f64 / r.join.stations.max(1) as f64,
        r.connections_opened_measure,
        r.connections_opened_measure as f64 / r.lookups.total.max(1) as f64
    );
    let _ = writeln!(
        s,
        "{:<36} {:>9} {:>9} {:>9} {:>9}",
        "", "p50", "p99", "mean", "max"
    );
    let mut row = |name: &str, d: &Dist| {
        let _ = writeln!(
            s,
            "{:<36} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            name, d.p50, d.p99, d.mean, d.max
        );
    };
    row("join: routing table ready, ms", &r.join.routing_ms);
    row("join: routing table peers", &r.join.routing_peers);
    row("join: station record stored, ms", &r.join.publish_ms);
    row("join: found by another station, ms", &r.join.found_ms);
    row("find-holders: whole lookup, ms", &r.lookups.ms);
    row("find-holders: first holder, ms", &r.lookups.first_holder_ms);
    row("find-holders: hops (requests)", &r.lookups.hops);
    row("find-holders: requests, whole", &r.lookups.requests);
    row("records/director: station", &r.records.station);
    row("records/director: provider", &r.records.provider);
    row("records/director: catalog", &r.records.catalog);
    row("records/director: total", &r.records.total);
    row("routing table entries", &r.records.routing);
    row("open connections", &r.records.connections);
    let _ = writeln!(
        s,
        "\nfind-holders: {}/{} succeeded ({:.2} %), during churn {}/{}, local hits {}, time-outs {}",
        r.lookups.succeeded,
        r.lookups.total,
        r.lookups.success_rate * 100.0,
        r.lookups.during_churn_succeeded,
        r.lookups.during_churn,
        r.lookups.local_hits,
        r.lookups.timeouts
    );
    let _ = writeln!(
        s,
        "joins: {} stations, {} found by another station, {} provide failures",
        r.join.stations, r.join.found, r.join.provide_failures
    );
    if let Some(p) = &r.republish {
        republish_text(&mut s, p);
    }
    s
}

fn republish_text(s: &mut String, p: &RepublishReport) {
    use std::fmt::Write;
    let _ = writeln!(
        s,
        "\nre-provide: {} stations x {} programs, {} provides ({} failed) in {:.1} s, {} in flight a station",
        p.stations, p.programs_per_station, p.provides, p.failures, p.round_s, p.concurrency
    );
    let _ = writeln!(
        s,
        "  one provide: {:.1} requests sent (lookup + ADD_PROVIDER), {:.1} received across the swarm ({:.1} ADD_PROVIDER), {:.2} connections dialed",
        p.sent_per_provide, p.received_per_provide, p.add_provider_per_provide, p.dials_per_provide
    );
    let _ = writeln!(
        s,
        "  {:<28} {:>10} {:>12} {:>16} {:>18} {:>16}",
        "steady state, every station",
        "every",
        "provides/s",
        "requests sent/s",
        "received/s a dir.",
        "provider records"
    );
    for (name, l) in [
        ("provider TTL", &p.at_provider_ttl),
        ("station TTL (before)", &p.at_station_ttl),
    ] {
        let _ = writeln!(
            s,
            "  {:<28} {:>8.0} s {:>12.1} {:>16.0} {:>18.0} {:>16.0}",
            format!("{name} {:.0} s", l.ttl_s),
            l.interval_s,
            l.provides_per_s,
            l.requests_sent_per_s,
            l.requests_received_per_s,
            l.provider_records_per_director
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dist_takes_nearest_rank_quantiles() {
        let d = Dist::of((1..=100).map(f64::from).collect());
        assert_eq!(d.count, 100);
        assert_eq!(d.p50, 51.0);
        assert_eq!(d.p99, 99.0);
        assert_eq!(d.mean, 50.5);
        assert_eq!(d.max, 100.0);
        assert_eq!(Dist::of(Vec::new()), Dist::default());
        assert_eq!(Dist::of(vec![3.0]).p99, 3.0);
    }

    #[test]
    fn the_issue_figure_250_provides_a_second_at_the_station_ttl() {
        // 5000 programs re-provided every 20 s (a third of 60 s).
        let l = load(5000, Duration::from_secs(60), 70.0, 65.0, 20);
        assert_eq!(l.interval_s, 20.0);
        assert_eq!(l.provides_per_s, 250.0);
        assert_eq!(l.requests_sent_per_s, 250.0 * 70.0);
        assert_eq!(l.requests_received_per_s, 250.0 * 65.0);
        assert_eq!(l.provider_records_per_director, 100_000.0);
    }

    #[test]
    fn load_falls_with_the_ttl_and_a_zero_ttl_is_no_load() {
        let short = load(5000, Duration::from_secs(60), 70.0, 65.0, 20);
        let long = load(5000, Duration::from_secs(1800), 70.0, 65.0, 20);
        assert!((long.provides_per_s * 30.0 - short.provides_per_s).abs() < 1e-9);
        assert_eq!(
            long.provider_records_per_director,
            short.provider_records_per_director
        );
        let none = load(5000, Duration::ZERO, 70.0, 65.0, 20);
        assert_eq!(none.provides_per_s, 0.0);
        assert_eq!(none.requests_received_per_s, 0.0);
    }
}
