//! `vodmesh sim`: many stations' directors in one process, joined into one registry, measured.
//!
//! Each simulated station is the registry half of a director ([`station`]): its own ed25519
//! identity, the registry server of `registry-dht` ([`vodmesh_registry::Server`]: the
//! directors' Kademlia configuration and record validation, identify, [`Registry::execute`]
//! and [`Registry::on_event`] as the director's loop drives them) over an in-memory store.
//! Peers talk over libp2p's memory transport, by default without encryption
//! ([`Transport`]). The swarm is built converged from global knowledge ([`warm`]) or by every
//! station joining; [`republish`] measures what re-providing costs; [`report`] sums it up.
//!
//! What is measured (the definitions the README quotes):
//!
//! - **join**: a new station dials one to a few stations that joined before it (no central
//!   list), runs a Kademlia bootstrap, then publishes its signed station record and provides
//!   its programs. `routing_ms` is the time until that bootstrap query finished (its routing
//!   table is useful); `publish_ms` until the station record was stored at the closest
//!   directors; `found_ms` until another, randomly chosen station found the record through the
//!   DHT (the new station is found by others).
//! - **find-holders**: a station that does not hold the program asks the registry who does
//!   ([`RegistryHandle::trace_holders`], the director's `holders` lookup plus Kademlia's
//!   `QueryStats`). `ms` is the wall time of the whole lookup as a director waits for it (the
//!   query runs to its end, as `holders` does); `first_holder_ms` the time until the first
//!   remote answer naming a holder. `hops` is `QueryStats::num_requests` when that first
//!   answer arrived: the requests this director had sent until a peer named a holder. With
//!   Kademlia's α = 3 requests in flight it counts parallel requests too, so it bounds the path
//!   length from above; `requests` is the whole query's count. A lookup succeeds when it names
//!   at least one holder that is still in the swarm.
//! - **records per director**: station records, provider records (`program/<id>`) and catalog
//!   records in each live director's store at the end.
//! - **churn**: during the lookups, `churn × N` stations leave (abruptly: their swarm is
//!   dropped, peers see the connections close) and as many new ones join, evenly spread over
//!   the lookups.
//! - **re-provide** (`--programs-per-station`): a few stations each provide that many programs
//!   at once, as Kademlia's republish job re-provides them every third of the provider TTL
//!   (the same query); what one provide sends and what the swarm receives for it give the
//!   steady-state load of every station doing so ([`report::load`]).

mod report;
mod republish;
mod station;
mod warm;
mod world;

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::kad::{self, RecordKey};
use libp2p::{Multiaddr, PeerId};
use rand::rngs::StdRng;
use rand::seq::{IteratorRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use vodmesh_proto::ProgramId;
#[cfg(doc)]
use vodmesh_registry::Registry;
use vodmesh_registry::{RecordKind, RegistryConfig, RegistryHandle};

pub use report::{
    Dist, JoinReport, Load, LookupReport, RecordsReport, Report, RepublishReport, load, to_text,
};
use report::{JoinOutcome, LookupOutcome, join_report, lookup_report, rss_mib};
pub use station::Transport;
use station::{Build, Census, Counters, Node, join_flow};
use world::{cached_program, catalog_record, program_id, station_key, stored};

/// How the initial stations come to be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Setup {
    /// Built converged: every routing table filled, and every record stored at the k
    /// directors closest to its key, from global knowledge, as Kademlia's own lookups would
    /// leave them; then `joins` stations join through the real flow and are measured.
    #[default]
    Warm,
    /// Every initial station joins through the real flow, one batch after another.
    Join,
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct Options {
    /// Stations at the start.
    pub stations: usize,
    /// How the initial stations come to be.
    pub setup: Setup,
    /// With [`Setup::Warm`], stations that then join through the real flow and are measured.
    pub joins: usize,
    /// Programs in the catalog.
    pub programs: usize,
    /// Stations that hold (provide) each program at the start.
    pub holders: usize,
    /// Fraction of the stations that leave, and of new ones that join, during the lookups.
    pub churn: f64,
    /// Find-holders lookups to measure.
    pub lookups: usize,
    /// Lookups in flight at once.
    pub concurrency: usize,
    /// Stations joining at once.
    pub join_concurrency: usize,
    /// Earlier stations each new one is given to join through.
    pub bootstraps: usize,
    /// Kademlia replication factor k.
    pub replication: usize,
    /// Record TTL inside the simulation (station records republished every third of it).
    pub ttl: Duration,
    /// Periodic Kademlia bootstrap (`None`: only on join).
    pub bootstrap_every: Option<Duration>,
    /// Kademlia replication of every stored record to the closest directors (`None`: off).
    pub replicate_every: Option<Duration>,
    /// Kademlia query time-out.
    pub query_timeout: Duration,
    /// How long an idle connection stays open.
    pub idle_timeout: Duration,
    /// How stations talk.
    pub transport: Transport,
    /// Programs each re-providing station holds (0: no re-provide round).
    pub programs_per_station: usize,
    /// Stations that re-provide in that round.
    pub republishers: usize,
    /// The directors' registry TTLs, at which the re-provide load is reported.
    pub directors: RegistryConfig,
    /// Seed of every random choice (identities, holders, bootstraps, churn).
    pub seed: u64,
}

impl Options {
    /// The defaults for `stations` stations.
    pub fn new(stations: usize) -> Self {
        Self {
            stations,
            setup: Setup::Warm,
            joins: 50,
            programs: stations,
            holders: 3,
            churn: 0.0,
            lookups: 1000,
            concurrency: 8,
            join_concurrency: 8,
            bootstraps: 3,
            replication: 20,
            ttl: Duration::from_secs(7200),
            bootstrap_every: None,
            replicate_every: None,
            query_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(20),
            transport: Transport::Plaintext,
            programs_per_station: 0,
            republishers: 4,
            directors: RegistryConfig::default(),
            seed: 1,
        }
    }

    /// The registry configuration of every simulated station.
    fn registry(&self) -> RegistryConfig {
        RegistryConfig {
            record_ttl: self.ttl,
            provider_ttl: None,
            query_timeout: self.query_timeout,
            replication: NonZeroUsize::new(self.replication).unwrap_or(NonZeroUsize::MIN),
            periodic_bootstrap: self.bootstrap_every,
            replication_interval: self.replicate_every,
            members_only: false,
        }
    }
}

/// How often a long phase says how far it got (on stderr).
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// The simulation's state: every station, who is live, who holds what.
struct Sim {
    opts: Options,
    config: RegistryConfig,
    rng: StdRng,
    nodes: Vec<Option<Node>>,
    /// Indices of joined, still running stations.
    live: Vec<usize>,
    programs: Vec<ProgramId>,
    /// Per program, the stations that provided it (live or not).
    holders: Vec<HashSet<usize>>,
    /// Per program, planned holders among the initial stations.
    plan: Vec<Vec<usize>>,
    join: Vec<JoinOutcome>,
    limit: Duration,
    /// What every station counts (dials, provides).
    counters: Arc<Counters>,
}

impl Sim {
    fn new(opts: Options) -> Self {
        let mut rng = StdRng::seed_from_u64(opts.seed);
        let programs: Vec<ProgramId> = (0..opts.programs)
            .map(|i| program_id(opts.seed, i))
            .collect();
        let mut plan = vec![Vec::new(); opts.stations];
        for p in 0..opts.programs {
            let n = opts.holders.min(opts.stations);
            for s in (0..opts.stations).choose_multiple(&mut rng, n) {
                plan[s].push(p);
            }
        }
        let limit = opts.query_timeout * 3;
        Self {
            holders: vec![HashSet::new(); programs.len()],
            programs,
            plan,
            nodes: Vec::new(),
            live: Vec::new(),
            join: Vec::new(),
            rng,
            limit,
            counters: Arc::default(),
            config: opts.registry(),
            opts,
        }
    }

    fn build(&self) -> Build<'_> {
        Build {
            transport: self.opts.transport,
            config: &self.config,
            idle_timeout: self.opts.idle_timeout,
            counters: self.counters.clone(),
        }
    }

    fn dialed(&self) -> u64 {
        Counters::get(&self.counters.dialed)
    }

    /// Starts station `index` (new if past the end) and returns its join as a future.
    fn start(&mut self, provide: Vec<usize>) -> Result<impl Future<Output = JoinOutcome> + use<>> {
        let index = self.nodes.len();
        let key = station_key(self.opts.seed, index)?;
        let bootstrap: Vec<(PeerId, Multiaddr)> = self
            .live
            .choose_multiple(&mut self.rng, self.opts.bootstraps)
            .filter_map(|&i| self.nodes[i].as_ref().map(|n| (n.peer, n.addr.clone())))
            .collect();
        let finder = self
            .live
            .choose(&mut self.rng)
            .and_then(|&i| self.nodes[i].as_ref().map(|n| n.registry.clone()));
        let (node, joined, _) =
            station::spawn(key, index as u64 + 1, &bootstrap, None, &self.build())?;
        let record = node.record(self.opts.ttl);
        let programs = provide.into_iter().map(|p| (p, self.programs[p])).collect();
        let flow = join_flow(
            index,
            node.registry.clone(),
            joined,
            record,
            programs,
            finder,
            node.peer,
            self.limit,
        );
        self.nodes.push(Some(node));
        Ok(flow)
    }

    fn joined(&mut self, out: JoinOutcome) {
        self.live.push(out.index);
        for &p in &out.provided {
            self.holders[p].insert(out.index);
        }
        self.join.push(out);
    }

    /// Programs a station that joins later provides: as many as an initial station on average.
    fn per_joiner(&self) -> usize {
        (self.opts.holders * self.opts.programs)
            .div_ceil(self.opts.stations.max(1))
            .max(1)
    }

    fn joiner_programs(&mut self, count: usize) -> Vec<usize> {
        (0..self.programs.len()).choose_multiple(&mut self.rng, count.min(self.programs.len()))
    }

    /// Builds the initial swarm converged ([`Setup::Warm`]), then lets `joins` stations join
    /// through the real flow, `join_concurrency` at a time.
    async fn warm(&mut self) -> Result<()> {
        let n = self.opts.stations;
        let mut keys = Vec::with_capacity(n);
        let mut peers = Vec::with_capacity(n);
        for i in 0..n {
            let key = station_key(self.opts.seed, i)?;
            peers.push((
                key.public().to_peer_id(),
                station::memory_addr(i as u64 + 1),
            ));
            keys.push(key);
        }
        let mut records = Vec::with_capacity(n + self.programs.len());
        for (i, (key, (peer, addr))) in keys.iter().zip(&peers).enumerate() {
            let signed = station::station_record(key, *peer, addr, self.opts.ttl);
            records.push((stored(&signed, *peer).context("station record")?, i));
        }
        let (cm_key, (cm_peer, _)) = (&keys[0], &peers[0]);
        for &program in &self.programs {
            let signed = catalog_record(cm_key, *cm_peer, program, self.opts.holders);
            records.push((stored(&signed, *cm_peer).context("catalog record")?, 0));
        }
        let expires = Instant::now() + self.config.provider_ttl();
        let mut providers = Vec::new();
        for (s, programs) in self.plan.iter_mut().enumerate() {
            for p in std::mem::take(programs) {
                let provider = kad::ProviderRecord {
                    key: RecordKind::Program(self.programs[p]).key(),
                    provider: peers[s].0,
                    expires: Some(expires),
                    addresses: vec![peers[s].1.clone()],
                };
                providers.push((provider, s));
                self.holders[p].insert(s);
            }
        }
        let k = self.opts.replication.max(1);
        let seeds = warm::converge(&peers, records, providers, k, &mut self.rng);
        drop(peers);

        let mut refused = 0;
        for (i, (key, seed)) in keys.into_iter().zip(seeds).enumerate() {
            let (node, _, seeded) =
                station::spawn(key, i as u64 + 1, &[], Some(seed), &self.build())?;
            refused += seeded;
            self.nodes.push(Some(node));
            self.live.push(i);
        }
        if refused > 0 {
            tracing::warn!(refused, "sim: warm start entries refused");
        }
        eprintln!(
            "sim: {n} stations up, converged; {} joining",
            self.opts.joins
        );

        let per_joiner = self.per_joiner();
        let mut pending = FuturesUnordered::new();
        let mut started = 0;
        while started < self.opts.joins || !pending.is_empty() {
            while started < self.opts.joins && pending.len() < self.opts.join_concurrency {
                let provide = self.joiner_programs(per_joiner);
                pending.push(self.start(provide)?);
                started += 1;
            }
            if let Some(out) = pending.next().await {
                self.joined(out);
            }
        }
        Ok(())
    }

    /// Starts and joins the initial stations, `join_concurrency` at a time.
    async fn setup(&mut self) -> Result<()> {
        let first = self.plan.first().cloned().unwrap_or_default();
        let flow = self.start(first)?;
        let out = flow.await;
        self.joined(out);
        let mut pending = FuturesUnordered::new();
        let mut next = 1;
        let mut last_report = Instant::now();
        while next < self.opts.stations || !pending.is_empty() {
            while next < self.opts.stations && pending.len() < self.opts.join_concurrency {
                let provide = std::mem::take(&mut self.plan[next]);
                pending.push(self.start(provide)?);
                next += 1;
            }
            if let Some(out) = pending.next().await {
                self.joined(out);
            }
            if last_report.elapsed() > PROGRESS_EVERY {
                eprintln!(
                    "sim: {} of {} stations joined",
                    self.live.len(),
                    self.opts.stations
                );
                last_report = Instant::now();
            }
        }
        self.publish_catalog().await;
        Ok(())
    }

    /// The content manager (station 0) signs and stores a catalog record per program.
    async fn publish_catalog(&mut self) {
        let Some(cm) = self.nodes.first().and_then(|n| n.as_ref()) else {
            return;
        };
        let registry = cm.registry.clone();
        let limit = self.limit;
        let failures = futures::stream::iter(self.programs.clone())
            .map(|program| {
                let record = catalog_record(&cm.key, cm.peer, program, self.opts.holders);
                let registry = registry.clone();
                async move { tokio::time::timeout(limit, registry.put_catalog(record)).await }
            })
            .buffer_unordered(self.opts.concurrency)
            .filter(|r| std::future::ready(!matches!(r, Ok(Ok(())))))
            .count()
            .await;
        if failures > 0 {
            tracing::warn!(failures, "sim: catalog records not stored");
        }
    }

    /// A lookup of a random program with a live holder, from a live station that does not
    /// hold it.
    fn pick_lookup(&mut self) -> Option<(RegistryHandle, ProgramId, HashSet<PeerId>)> {
        for _ in 0..64 {
            let p = self.rng.gen_range(0..self.programs.len().max(1));
            let live_holders: Vec<usize> = self
                .holders
                .get(p)?
                .iter()
                .copied()
                .filter(|h| self.nodes.get(*h).is_some_and(Option::is_some))
                .collect();
            if live_holders.is_empty() {
                continue;
            }
            let asker = self
                .live
                .iter()
                .copied()
                .filter(|s| !live_holders.contains(s))
                .choose(&mut self.rng)?;
            let registry = self.nodes[asker].as_ref()?.registry.clone();
            let peers = live_holders
                .iter()
                .filter_map(|&h| self.nodes[h].as_ref().map(|n| n.peer))
                .collect();
            return Some((registry, self.programs[p], peers));
        }
        None
    }

    /// A random live station (not the content manager) leaves.
    async fn leave_one(&mut self) -> bool {
        let candidates: Vec<usize> = self.live.iter().copied().filter(|&i| i != 0).collect();
        let Some(&victim) = candidates.choose(&mut self.rng) else {
            return false;
        };
        self.live.retain(|&i| i != victim);
        if let Some(node) = self.nodes.get_mut(victim).and_then(Option::take) {
            node.leave().await;
        }
        true
    }

    /// Runs the lookups, with churn spread over them.
    async fn measure(&mut self) -> Result<(LookupReport, usize, usize)> {
        let n = self.opts.stations;
        let events = (self.opts.churn * n as f64).round() as usize;
        let total_events = events * 2;
        let per_joiner = self.per_joiner();
        let lookups = self.opts.lookups;
        let mut inflight = FuturesUnordered::new();
        let mut joins = FuturesUnordered::new();
        let (mut issued, mut done, mut fired) = (0usize, 0usize, 0usize);
        let (mut left, mut joined) = (0usize, 0usize);
        let mut outcomes = Vec::with_capacity(lookups);
        let limit = self.limit;
        let mut churning = false;
        let mut last_report = Instant::now();
        loop {
            // Churn event `fired` is due once its share of the lookups has completed.
            while fired < total_events && done * (total_events + 1) >= (fired + 1) * lookups {
                if fired % 2 == 0 {
                    if self.leave_one().await {
                        left += 1;
                        churning = true;
                    }
                } else {
                    let provide = self.joiner_programs(per_joiner);
                    joins.push(self.start(provide)?);
                }
                fired += 1;
            }
            while issued < lookups && inflight.len() < self.opts.concurrency {
                let Some((registry, program, live)) = self.pick_lookup() else {
                    break;
                };
                issued += 1;
                let during_churn = churning;
                inflight.push(async move {
                    let start = Instant::now();
                    let trace = tokio::time::timeout(limit, registry.trace_holders(program))
                        .await
                        .ok()
                        .and_then(Result::ok);
                    let ok = trace
                        .as_ref()
                        .is_some_and(|t| t.holders.iter().any(|h| live.contains(h)));
                    LookupOutcome {
                        ok,
                        during_churn,
                        wall: start.elapsed(),
                        trace,
                    }
                });
            }
            // Every due churn event has fired (all are due once every lookup is done), so
            // nothing in flight means nothing left to do, or no program with a live holder.
            if inflight.is_empty() && joins.is_empty() {
                break;
            }
            tokio::select! {
                Some(out) = inflight.next() => {
                    done += 1;
                    outcomes.push(out);
                    if last_report.elapsed() > PROGRESS_EVERY {
                        eprintln!("sim: {done} of {lookups} lookups");
                        last_report = Instant::now();
                    }
                }
                Some(out) = joins.next() => {
                    joined += 1;
                    self.joined(out);
                }
            }
        }
        Ok((lookup_report(&outcomes), left, joined))
    }

    /// What every live station holds and has served, counting provider records of `keys`.
    async fn census(&self, keys: Arc<Vec<RecordKey>>) -> Vec<Census> {
        let mut all = Vec::with_capacity(self.live.len());
        for node in self.live.iter().filter_map(|&i| self.nodes[i].as_ref()) {
            if let Some(c) = node.census(keys.clone()).await {
                all.push(c);
            }
        }
        all
    }

    async fn records(&self) -> RecordsReport {
        let keys = self
            .programs
            .iter()
            .map(|p| RecordKind::Program(*p).key())
            .collect();
        let all = self.census(Arc::new(keys)).await;
        let col = |f: fn(&Census) -> usize| Dist::of(all.iter().map(|c| f(c) as f64).collect());
        RecordsReport {
            directors: all.len(),
            station: col(|c| c.station),
            provider: col(|c| c.provider),
            catalog: col(|c| c.catalog),
            total: col(|c| c.station + c.provider + c.catalog),
            routing: col(|c| c.routing),
            connections: col(|c| c.connections),
        }
    }

    /// The re-provide round: `republishers` live stations (not the content manager) each
    /// provide `programs_per_station` programs of their own.
    async fn republish(&mut self) -> RepublishReport {
        let count = self
            .opts
            .republishers
            .min(self.live.len().saturating_sub(1));
        let chosen: Vec<usize> =
            (self.live.iter().copied().filter(|&i| i != 0)).choose_multiple(&mut self.rng, count);
        let per = self.opts.programs_per_station;
        let stations: Vec<(RegistryHandle, Vec<ProgramId>)> = chosen
            .iter()
            .filter_map(|&i| self.nodes[i].as_ref())
            .map(|node| {
                let programs = (0..per)
                    .map(|j| cached_program(self.opts.seed, node.peer, j))
                    .collect();
                (node.registry.clone(), programs)
            })
            .collect();
        let served = |all: &[Census]| all.iter().map(|c| c.inbound).collect::<Vec<_>>();
        let before = served(&self.census(Arc::default()).await);
        let (dials, sent, provides) = (
            self.dialed(),
            Counters::get(&self.counters.provide_requests),
            Counters::get(&self.counters.provides),
        );
        let round = republish::round(stations, self.limit).await;
        // A provide ends when its ADD_PROVIDERs are sent, not when they arrive: count until
        // two censuses in a row agree.
        let mut after = served(&self.census(Arc::default()).await);
        for _ in 0..20 {
            let again = served(&self.census(Arc::default()).await);
            let settled = republish::received(&after, &again).total() == 0;
            after = again;
            if settled {
                break;
            }
        }
        republish::Measured {
            round,
            received: republish::received(&before, &after),
            dials: self.dialed() - dials,
            sent: Counters::get(&self.counters.provide_requests) - sent,
            queries: Counters::get(&self.counters.provides) - provides,
        }
        .report(&self.opts)
    }

    async fn shutdown(&mut self) {
        for node in self.nodes.iter_mut().filter_map(Option::take) {
            node.leave().await;
        }
    }
}

/// Runs the simulation and returns what it measured.
pub async fn run(opts: Options) -> Result<Report> {
    anyhow::ensure!(opts.stations >= 2, "--stations must be at least 2");
    anyhow::ensure!(
        (0.0..=0.9).contains(&opts.churn),
        "--churn must be between 0 and 0.9"
    );
    anyhow::ensure!(opts.programs >= 1, "--programs must be at least 1");
    anyhow::ensure!(opts.holders >= 1, "--holders must be at least 1");
    let mut sim = Sim::new(opts.clone());
    let t0 = Instant::now();
    let setup = match opts.setup {
        Setup::Warm => sim.warm().await,
        Setup::Join => sim.setup().await,
    };
    let setup_s = t0.elapsed().as_secs_f64();
    let rss_after_setup_mib = rss_mib("VmRSS:");
    let opened_setup = sim.dialed();
    let measured = match setup {
        Ok(()) => {
            eprintln!(
                "sim: {} stations up in {setup_s:.1} s; {} lookups",
                sim.live.len(),
                opts.lookups
            );
            sim.measure().await
        }
        Err(e) => Err(e),
    };
    let measure_s = t0.elapsed().as_secs_f64() - setup_s;
    let opened_measure = sim.dialed() - opened_setup;
    let republish = if measured.is_ok() && opts.programs_per_station > 0 {
        eprintln!(
            "sim: {} stations re-provide {} programs each",
            opts.republishers, opts.programs_per_station
        );
        Some(sim.republish().await)
    } else {
        None
    };
    let records = sim.records().await;
    sim.shutdown().await;
    let (lookups, left, joined) = measured?;
    Ok(Report {
        stations: opts.stations,
        setup: opts.setup,
        programs: opts.programs,
        holders_per_program: opts.holders,
        churn: opts.churn,
        seed: opts.seed,
        replication: opts.replication,
        parallelism: 3,
        ttl_s: opts.ttl.as_secs(),
        transport: opts.transport.describe().into(),
        idle_timeout_s: opts.idle_timeout.as_secs(),
        left,
        joined,
        setup_s,
        measure_s,
        connections_opened_setup: opened_setup,
        connections_opened_measure: opened_measure,
        rss_after_setup_mib,
        peak_rss_mib: rss_mib("VmHWM:"),
        join: join_report(&sim.join),
        lookups,
        records,
        republish,
    })
}
