//! The re-provide round of `--programs-per-station`.
//!
//! A director re-provides every program it holds once per provider republish interval:
//! Kademlia's republish job starts, for each, the query [`RegistryHandle::provide`] starts (a
//! closest-peers lookup of the key, then `ADD_PROVIDER` to the k closest), at most 100 at
//! once. The round does exactly that at a few stations, with the whole swarm serving them, and
//! counts what it cost: requests sent (Kademlia's `QueryStats` of each provide), requests
//! every director received (its [`Inbound`] counters before and after) and connections dialed.
//! Every station re-provides as many programs in steady state, so a director receives per
//! interval what one station's round made the swarm receive ([`super::report::load`]).

use std::time::{Duration, Instant};

use futures::StreamExt;
use vodmesh_proto::ProgramId;
use vodmesh_registry::{Inbound, RegistryHandle};

use super::Options;
use super::report::{RepublishReport, load};

/// Provides in flight at once per station: as many as Kademlia's republish job runs (its
/// `JOBS_MAX_QUERIES`).
pub(super) const IN_FLIGHT: usize = 100;

/// How one round went.
pub(super) struct Round {
    stations: usize,
    provides: usize,
    failures: usize,
    wall: Duration,
}

/// Every station provides its programs, [`IN_FLIGHT`] at a time each, all stations at once;
/// a provide that takes longer than `limit` counts as failed.
pub(super) async fn round(
    stations: Vec<(RegistryHandle, Vec<ProgramId>)>,
    limit: Duration,
) -> Round {
    let start = Instant::now();
    let count = stations.len();
    let per_station = stations.into_iter().map(|(registry, programs)| async move {
        let results: Vec<bool> = futures::stream::iter(programs)
            .map(|program| {
                let registry = registry.clone();
                async move {
                    matches!(
                        tokio::time::timeout(limit, registry.provide(program)).await,
                        Ok(Ok(()))
                    )
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        (results.len(), results.iter().filter(|ok| !**ok).count())
    });
    let done = futures::future::join_all(per_station).await;
    Round {
        stations: count,
        provides: done.iter().map(|(n, _)| n).sum(),
        failures: done.iter().map(|(_, f)| f).sum(),
        wall: start.elapsed(),
    }
}

/// What every director received between two censuses (stations present in both, in order).
pub(super) fn received(before: &[Inbound], after: &[Inbound]) -> Inbound {
    let mut sum = Inbound::default();
    for (b, a) in before.iter().zip(after) {
        sum.find_node += a.find_node.saturating_sub(b.find_node);
        sum.get_providers += a.get_providers.saturating_sub(b.get_providers);
        sum.add_provider += a.add_provider.saturating_sub(b.add_provider);
        sum.get_record += a.get_record.saturating_sub(b.get_record);
        sum.put_record += a.put_record.saturating_sub(b.put_record);
    }
    sum
}

/// A round and what the swarm counted during it.
pub(super) struct Measured {
    pub(super) round: Round,
    /// Requests every director received.
    pub(super) received: Inbound,
    /// Connections dialed.
    pub(super) dials: u64,
    /// Requests the provide queries sent (their `QueryStats`).
    pub(super) sent: u64,
    /// Provide queries that reported their figures.
    pub(super) queries: u64,
}

impl Measured {
    /// The round's report, with the load it implies at the directors' TTLs.
    pub(super) fn report(&self, opts: &Options) -> RepublishReport {
        let per = |n: u64, of: u64| if of == 0 { 0.0 } else { n as f64 / of as f64 };
        let provides = self.round.provides as u64;
        let sent = per(self.sent, self.queries);
        let received = per(self.received.total(), provides);
        let programs = opts.programs_per_station;
        let k = opts.replication;
        RepublishReport {
            stations: self.round.stations,
            programs_per_station: programs,
            provides: self.round.provides,
            failures: self.round.failures,
            concurrency: IN_FLIGHT,
            round_s: self.round.wall.as_secs_f64(),
            sent_per_provide: sent,
            received_per_provide: received,
            add_provider_per_provide: per(self.received.add_provider, provides),
            dials_per_provide: per(self.dials, provides),
            at_provider_ttl: load(programs, opts.directors.provider_ttl(), sent, received, k),
            at_station_ttl: load(programs, opts.directors.record_ttl, sent, received, k),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_sums_what_each_director_served_in_between() {
        let at = |find_node, add_provider| Inbound {
            find_node,
            add_provider,
            ..Inbound::default()
        };
        let before = [at(10, 0), at(5, 2)];
        let after = [at(30, 20), at(5, 3)];
        let sum = received(&before, &after);
        assert_eq!(sum.find_node, 20);
        assert_eq!(sum.add_provider, 21);
        assert_eq!(sum.total(), 41);
    }

    #[test]
    fn the_report_divides_by_provides_and_carries_the_load_at_both_ttls() {
        let mut opts = Options::new(100);
        opts.programs_per_station = 5000;
        let m = Measured {
            round: Round {
                stations: 2,
                provides: 10_000,
                failures: 0,
                wall: Duration::from_secs(50),
            },
            received: Inbound {
                find_node: 400_000,
                add_provider: 200_000,
                ..Inbound::default()
            },
            dials: 5_000,
            sent: 700_000,
            queries: 10_000,
        };
        let r = m.report(&opts);
        assert_eq!(r.sent_per_provide, 70.0);
        assert_eq!(r.received_per_provide, 60.0);
        assert_eq!(r.add_provider_per_provide, 20.0);
        assert_eq!(r.dials_per_provide, 0.5);
        // Station TTL 60 s: 250 provides a second, as the issue counted.
        assert_eq!(r.at_station_ttl.provides_per_s, 250.0);
        assert_eq!(r.at_station_ttl.requests_received_per_s, 250.0 * 60.0);
        let factor = f64::from(vodmesh_registry::PROVIDER_TTL_FACTOR);
        assert_eq!(r.at_provider_ttl.ttl_s, 60.0 * factor);
        assert!((r.at_provider_ttl.provides_per_s * factor - 250.0).abs() < 1e-9);
    }
}
