//! `vodmesh sim`: many stations' directors in one process, joined into one registry, measured.
//!
//! Each simulated station is the registry half of a director: its own ed25519 identity, a
//! `kad::Behaviour` built by [`vodmesh_registry::registry::behaviour`] over an in-memory
//! [`PersistentStore`], identify (so peers learn each other's listen addresses, as directors
//! do), driven by [`Registry::execute`] and [`Registry::on_event`] exactly as the director's
//! loop drives them. Peers talk over libp2p's memory transport with noise and yamux, so every
//! request is a real, encrypted libp2p exchange; only the sockets are missing. All stations
//! share one tokio runtime; a station is one task plus libp2p's per-connection tasks.
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

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::core::transport::{MemoryTransport, Transport};
use libp2p::core::upgrade;
use libp2p::identity::Keypair;
use libp2p::kad::store::RecordStore;
use libp2p::kad::{self, QueryResult, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, SwarmBuilder, identify, noise, yamux};
use rand::rngs::StdRng;
use rand::seq::{IteratorRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use vodmesh_proto::catalog::{CatalogRecord, ProgramState};
use vodmesh_proto::signed::Signed;
use vodmesh_proto::station::{Roles, StationRecord};
use vodmesh_proto::time::{in_ms, now_ms};
use vodmesh_proto::{ProgramId, SegmentHash};
use vodmesh_registry::registry::{self as reg, HoldersTrace};
use vodmesh_registry::{
    PersistentStore, RecordKind, Registry, RegistryConfig, RegistryHandle, StoreLimits,
};

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
    /// Record TTL (republication of station and provider records every third of it).
    pub ttl: Duration,
    /// Periodic Kademlia bootstrap (`None`: only on join).
    pub bootstrap_every: Option<Duration>,
    /// Kademlia replication of every stored record to the closest directors (`None`: off).
    pub replicate_every: Option<Duration>,
    /// Kademlia query time-out.
    pub query_timeout: Duration,
    /// How long an idle connection stays open.
    pub idle_timeout: Duration,
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
            seed: 1,
        }
    }
}

/// p50, p99, mean and max of a sample.
#[derive(Clone, Debug, Default, Serialize)]
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
    fn of(mut v: Vec<f64>) -> Self {
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
    /// Provider records under `program/<id>`.
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
    /// Record TTL, s.
    pub ttl_s: u64,
    /// How peers talk.
    pub transport: String,
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
    /// Peak resident memory of the process, MiB (from /proc, 0 where unknown).
    pub peak_rss_mib: f64,
    /// Joins.
    pub join: JoinReport,
    /// Find-holders lookups.
    pub lookups: LookupReport,
    /// Records per director.
    pub records: RecordsReport,
}

#[derive(NetworkBehaviour)]
struct SimBehaviour {
    kad: kad::Behaviour<PersistentStore>,
    identify: identify::Behaviour,
}

/// What a station's store and routing table hold.
#[derive(Clone, Copy, Debug, Default)]
struct Census {
    station: usize,
    provider: usize,
    catalog: usize,
    routing: usize,
    connections: usize,
}

enum Ctl {
    Census {
        keys: Arc<Vec<RecordKey>>,
        reply: oneshot::Sender<Census>,
    },
}

/// What one station holds after a warm start.
#[derive(Default)]
struct Seed {
    routes: Vec<(PeerId, Multiaddr)>,
    records: Vec<kad::Record>,
    providers: Vec<kad::ProviderRecord>,
}

/// When a new station's join bootstrap finished.
struct Joined {
    routing: Duration,
    peers: usize,
}

/// One running station.
struct Node {
    peer: PeerId,
    key: Keypair,
    addr: Multiaddr,
    registry: RegistryHandle,
    ctl: mpsc::Sender<Ctl>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Node {
    /// Drops the station's swarm: its peers see its connections close.
    async fn leave(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.task.await;
    }

    fn record(&self, ttl: Duration) -> Signed {
        station_record(&self.key, self.peer, &self.addr, ttl)
    }
}

/// A station's signed record, as its director publishes it.
fn station_record(key: &Keypair, peer: PeerId, addr: &Multiaddr, ttl: Duration) -> Signed {
    StationRecord {
        director: peer,
        addrs: vec![addr.clone()],
        engines: Vec::new(),
        region: None,
        coords: None,
        bandwidth_mbps: 1000,
        roles: Roles::default(),
        issuer: None,
        issued_ms: now_ms(),
        expires_ms: in_ms(ttl),
    }
    .sign(key)
}

fn registry_config(opts: &Options) -> RegistryConfig {
    RegistryConfig {
        record_ttl: opts.ttl,
        query_timeout: opts.query_timeout,
        replication: NonZeroUsize::new(opts.replication).unwrap_or(NonZeroUsize::MIN),
        periodic_bootstrap: opts.bootstrap_every,
        replication_interval: opts.replicate_every,
    }
}

fn build(key: Keypair, opts: &Options) -> Result<Swarm<SimBehaviour>> {
    let peer = key.public().to_peer_id();
    let config = registry_config(opts);
    let store = PersistentStore::in_memory(peer, &StoreLimits::default());
    let swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|k| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
            Ok(MemoryTransport::default()
                .upgrade(upgrade::Version::V1)
                .authenticate(noise::Config::new(k)?)
                .multiplex(yamux::Config::default()))
        })
        .map_err(|e| anyhow::anyhow!("memory transport: {e}"))?
        .with_behaviour(|k| SimBehaviour {
            kad: reg::behaviour(peer, store, &config, true),
            identify: identify::Behaviour::new(
                identify::Config::new("/vodmesh/1".into(), k.public())
                    .with_push_listen_addr_updates(false),
            ),
        })
        .map_err(|e| anyhow::anyhow!("behaviour: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(opts.idle_timeout))
        .build();
    Ok(swarm)
}

/// Starts a station listening on `/memory/<port>` that joins through `bootstrap`.
fn spawn_node(
    opened: Arc<AtomicU64>,
    key: Keypair,
    port: u64,
    bootstrap: &[(PeerId, Multiaddr)],
    seed: Option<Seed>,
    opts: &Options,
) -> Result<(Node, oneshot::Receiver<Joined>, usize)> {
    let peer = key.public().to_peer_id();
    let mut swarm = build(key.clone(), opts)?;
    // Applied before the swarm is first polled, so that the warm station's routing table is
    // full when Kademlia looks at it.
    let warm = seed.is_some();
    let refused = seed.map_or(0, |seed| apply_seed(&mut swarm, seed));
    let addr = Multiaddr::empty().with(Protocol::Memory(port));
    swarm
        .listen_on(addr.clone())
        .with_context(|| format!("listening on {addr}"))?;
    swarm.add_external_address(addr.clone());
    let (joined_tx, joined) = oneshot::channel();
    let mut joined_tx = Some(joined_tx);
    let started = Instant::now();
    for (p, a) in bootstrap {
        swarm.behaviour_mut().kad.add_address(p, a.clone());
    }
    if bootstrap.is_empty() {
        if let Some(tx) = joined_tx.take() {
            let _ = tx.send(Joined {
                routing: Duration::ZERO,
                peers: 0,
            });
        }
    } else if let Err(e) = swarm.behaviour_mut().kad.bootstrap() {
        tracing::warn!(%peer, error = %e, "sim: bootstrap refused");
    }
    let (registry, mut commands) = RegistryHandle::channel(64);
    let (ctl, mut ctl_rx) = mpsc::channel(4);
    let (stop, mut stop_rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut registry = Registry::new();
        loop {
            tokio::select! {
                _ = &mut stop_rx => break,
                Some(cmd) = commands.recv() => {
                    registry.execute(&mut swarm.behaviour_mut().kad, cmd);
                }
                Some(Ctl::Census { keys, reply }) = ctl_rx.recv() => {
                    let _ = reply.send(census(&mut swarm, &keys));
                }
                event = swarm.select_next_some() => {
                if warm {
                    quench_bootstrap(&mut swarm);
                }
                match event {
                    SwarmEvent::Behaviour(SimBehaviourEvent::Kad(event)) => {
                        if let kad::Event::OutboundQueryProgressed {
                            result: QueryResult::Bootstrap(_),
                            step,
                            ..
                        } = &event
                            && step.last
                            && let Some(tx) = joined_tx.take()
                        {
                            let peers = routing_size(&mut swarm);
                            let _ = tx.send(Joined { routing: started.elapsed(), peers });
                        }
                        registry.on_event(&mut swarm.behaviour_mut().kad, event);
                    }
                    SwarmEvent::Behaviour(SimBehaviourEvent::Identify(
                        identify::Event::Received { peer_id, info, .. },
                    )) if info.protocols.contains(&reg::PROTOCOL) => {
                        for a in info.listen_addrs {
                            swarm.behaviour_mut().kad.add_address(&peer_id, a);
                        }
                    }
                    SwarmEvent::ConnectionEstablished { endpoint, .. } if endpoint.is_dialer() => {
                        opened.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }},
            }
        }
    });
    Ok((
        Node {
            peer,
            key,
            addr,
            registry,
            ctl,
            stop: Some(stop),
            task,
        },
        joined,
        refused,
    ))
}

/// Fills a station's routing table and store; returns how many entries were refused.
fn apply_seed(swarm: &mut Swarm<SimBehaviour>, seed: Seed) -> usize {
    let kad = &mut swarm.behaviour_mut().kad;
    let mut refused = 0;
    for (peer, addr) in seed.routes {
        if !matches!(kad.add_address(&peer, addr), kad::RoutingUpdate::Success) {
            refused += 1;
        }
    }
    let store = kad.store_mut();
    for record in seed.records {
        refused += usize::from(store.put(record).is_err());
    }
    for provider in seed.providers {
        refused += usize::from(store.add_provider(provider).is_err());
    }
    refused
}

/// Cuts short any bootstrap a warm station's Kademlia started by itself. Filling the routing
/// table trips its automatic bootstrap (it fires while a table holds fewer than 20 peers and
/// cannot be turned off); a converged station has bootstrapped long ago, and a thousand of
/// them bootstrapping at once is a storm of connections no real swarm sees. Checked at every
/// event of the station, so such a bootstrap sends a few requests before it ends.
fn quench_bootstrap(swarm: &mut Swarm<SimBehaviour>) {
    for mut query in swarm.behaviour_mut().kad.iter_queries_mut() {
        if matches!(query.info(), kad::QueryInfo::Bootstrap { .. }) {
            query.finish();
        }
    }
}

fn routing_size(swarm: &mut Swarm<SimBehaviour>) -> usize {
    swarm
        .behaviour_mut()
        .kad
        .kbuckets()
        .map(|b| b.num_entries())
        .sum()
}

fn census(swarm: &mut Swarm<SimBehaviour>, keys: &[RecordKey]) -> Census {
    let mut c = Census {
        routing: routing_size(swarm),
        connections: swarm.network_info().num_peers(),
        ..Census::default()
    };
    let store = swarm.behaviour_mut().kad.store_mut();
    for r in store.records() {
        match RecordKind::parse(&r.key) {
            Some(RecordKind::Station(_)) => c.station += 1,
            Some(RecordKind::Catalog(_)) => c.catalog += 1,
            _ => {}
        }
    }
    c.provider = keys.iter().map(|k| store.providers(k).len()).sum();
    c
}

/// What one join measured.
struct JoinOutcome {
    index: usize,
    routing_ms: Option<f64>,
    peers: usize,
    publish_ms: Option<f64>,
    found_ms: Option<f64>,
    provided: Vec<usize>,
    provide_failures: usize,
}

#[allow(clippy::too_many_arguments)]
async fn join_flow(
    index: usize,
    registry: RegistryHandle,
    joined: oneshot::Receiver<Joined>,
    record: Signed,
    programs: Vec<(usize, ProgramId)>,
    finder: Option<RegistryHandle>,
    peer: PeerId,
    limit: Duration,
) -> JoinOutcome {
    let start = Instant::now();
    let mut out = JoinOutcome {
        index,
        routing_ms: None,
        peers: 0,
        publish_ms: None,
        found_ms: None,
        provided: Vec::new(),
        provide_failures: 0,
    };
    match tokio::time::timeout(limit, joined).await {
        Ok(Ok(j)) => {
            out.routing_ms = Some(ms(j.routing));
            out.peers = j.peers;
        }
        _ => tracing::warn!(%peer, "sim: join bootstrap did not finish"),
    }
    if let Ok(Ok(())) = tokio::time::timeout(limit, registry.put_station(record)).await {
        out.publish_ms = Some(ms(start.elapsed()));
    }
    let provides = programs.into_iter().map(|(i, id)| {
        let registry = registry.clone();
        async move { (i, tokio::time::timeout(limit, registry.provide(id)).await) }
    });
    for (i, r) in futures::future::join_all(provides).await {
        match r {
            Ok(Ok(())) => out.provided.push(i),
            _ => out.provide_failures += 1,
        }
    }
    if let Some(finder) = finder
        && let Ok(Ok(Some(_))) = tokio::time::timeout(limit, finder.get_station(peer)).await
    {
        out.found_ms = Some(ms(start.elapsed()));
    }
    out
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What one lookup measured.
struct LookupOutcome {
    ok: bool,
    during_churn: bool,
    wall: Duration,
    trace: Option<HoldersTrace>,
}

/// The simulation's state: every station, who is live, who holds what.
struct Sim {
    opts: Options,
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
    /// Connections dialed by every station so far.
    opened: Arc<AtomicU64>,
}

fn station_key(seed: u64, index: usize) -> Result<Keypair> {
    let mut h = blake3::Hasher::new();
    h.update(b"vodmesh sim station");
    h.update(&seed.to_le_bytes());
    h.update(&(index as u64).to_le_bytes());
    let mut bytes = *h.finalize().as_bytes();
    Keypair::ed25519_from_bytes(&mut bytes).context("deriving a station key")
}

fn program_id(seed: u64, index: usize) -> ProgramId {
    let mut h = blake3::Hasher::new();
    h.update(b"vodmesh sim program");
    h.update(&seed.to_le_bytes());
    h.update(&(index as u64).to_le_bytes());
    ProgramId(*h.finalize().as_bytes())
}

/// The catalog record the content manager (station 0) signs for `program`.
fn catalog_record(key: &Keypair, cm: PeerId, program: ProgramId, holders: usize) -> Signed {
    CatalogRecord {
        program,
        title: format!("sim {program}"),
        manifest_hash: SegmentHash::from(blake3::hash(program.as_bytes())),
        state: ProgramState::Published,
        publish_at_ms: now_ms(),
        replicas: holders as u32,
        content_manager: cm,
        home: cm,
        issued_ms: now_ms(),
    }
    .sign(key)
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
            opened: Arc::default(),
            opts,
        }
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
        let (node, joined, _) = spawn_node(
            self.opened.clone(),
            key,
            index as u64 + 1,
            &bootstrap,
            None,
            &self.opts,
        )?;
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
        let k = self.opts.replication.max(1);
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let key = station_key(self.opts.seed, i)?;
            let peer = key.public().to_peer_id();
            let addr = Multiaddr::empty().with(Protocol::Memory(i as u64 + 1));
            ids.push((key, peer, addr));
        }
        let keys: Vec<kad::KBucketKey<PeerId>> = ids
            .iter()
            .map(|(_, p, _)| kad::KBucketKey::from(*p))
            .collect();
        let mut seeds: Vec<Seed> = (0..n).map(|_| Seed::default()).collect();

        // Routing tables: up to k peers of each bucket, chosen at random.
        for (i, seed) in seeds.iter_mut().enumerate() {
            let mut buckets: HashMap<u32, Vec<usize>> = HashMap::new();
            for j in (0..n).filter(|&j| j != i) {
                if let Some(b) = keys[i].distance(&keys[j]).ilog2() {
                    buckets.entry(b).or_default().push(j);
                }
            }
            for members in buckets.values() {
                for &j in members.choose_multiple(&mut self.rng, k) {
                    seed.routes.push((ids[j].1, ids[j].2.clone()));
                }
            }
        }

        // Records: at the k stations closest to their key, and at their owner.
        let closest = |key: &RecordKey, owner: usize| -> Vec<usize> {
            let target = kad::KBucketKey::new(key.clone());
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by_cached_key(|&j| target.distance(&keys[j]));
            order.truncate(k);
            if !order.contains(&owner) {
                order.push(owner);
            }
            order
        };
        let expires = Instant::now() + self.opts.ttl;
        for (i, (key, peer, addr)) in ids.iter().enumerate() {
            let signed = station_record(key, *peer, addr, self.opts.ttl);
            let mut record =
                reg::record_of(&signed).map_err(|e| anyhow::anyhow!("station record: {e}"))?;
            record.publisher = Some(*peer);
            for j in closest(&record.key, i) {
                seeds[j].records.push(record.clone());
            }
        }
        let (cm_key, cm_peer, _) = &ids[0];
        for &program in &self.programs {
            let signed = catalog_record(cm_key, *cm_peer, program, self.opts.holders);
            let mut record =
                reg::record_of(&signed).map_err(|e| anyhow::anyhow!("catalog record: {e}"))?;
            record.publisher = Some(*cm_peer);
            for j in closest(&record.key, 0) {
                seeds[j].records.push(record.clone());
            }
        }
        for (s, programs) in self.plan.iter_mut().enumerate() {
            for p in std::mem::take(programs) {
                let provider = kad::ProviderRecord {
                    key: RecordKind::Program(self.programs[p]).key(),
                    provider: ids[s].1,
                    expires: Some(expires),
                    addresses: vec![ids[s].2.clone()],
                };
                for j in closest(&provider.key, s) {
                    seeds[j].providers.push(provider.clone());
                }
                self.holders[p].insert(s);
            }
        }

        let mut refused = 0;
        for (i, ((key, _, _), seed)) in ids.into_iter().zip(seeds).enumerate() {
            let (node, _, seeded) = spawn_node(
                self.opened.clone(),
                key,
                i as u64 + 1,
                &[],
                Some(seed),
                &self.opts,
            )?;
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
            if last_report.elapsed() > Duration::from_secs(5) {
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
                }
                Some(out) = joins.next() => {
                    joined += 1;
                    self.joined(out);
                }
            }
        }
        Ok((lookup_report(&outcomes), left, joined))
    }

    async fn records(&self) -> RecordsReport {
        let keys: Arc<Vec<RecordKey>> = Arc::new(
            self.programs
                .iter()
                .map(|p| RecordKind::Program(*p).key())
                .collect(),
        );
        let mut all = Vec::new();
        for &i in &self.live {
            let Some(node) = self.nodes[i].as_ref() else {
                continue;
            };
            let (reply, rx) = oneshot::channel();
            let asked = node
                .ctl
                .send(Ctl::Census {
                    keys: keys.clone(),
                    reply,
                })
                .await;
            if asked.is_ok()
                && let Ok(c) = rx.await
            {
                all.push(c);
            }
        }
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

    async fn shutdown(&mut self) {
        for node in self.nodes.iter_mut().filter_map(Option::take) {
            node.leave().await;
        }
    }
}

fn lookup_report(outcomes: &[LookupOutcome]) -> LookupReport {
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

fn join_report(join: &[JoinOutcome]) -> JoinReport {
    JoinReport {
        stations: join.len(),
        // The first station has nobody to join through; it is not a join.
        routing_ms: Dist::of(
            join.iter()
                .filter(|j| j.index > 0)
                .filter_map(|j| j.routing_ms)
                .collect(),
        ),
        routing_peers: Dist::of(
            join.iter()
                .filter(|j| j.index > 0)
                .map(|j| j.peers as f64)
                .collect(),
        ),
        publish_ms: Dist::of(join.iter().filter_map(|j| j.publish_ms).collect()),
        found_ms: Dist::of(join.iter().filter_map(|j| j.found_ms).collect()),
        found: join.iter().filter(|j| j.found_ms.is_some()).count(),
        provide_failures: join.iter().map(|j| j.provide_failures).sum(),
    }
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
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
    let opened_setup = sim.opened.load(Ordering::Relaxed);
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
    let opened_measure = sim.opened.load(Ordering::Relaxed) - opened_setup;
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
        transport: "libp2p memory transport, noise + yamux".into(),
        left,
        joined,
        setup_s,
        measure_s,
        connections_opened_setup: opened_setup,
        connections_opened_measure: opened_measure,
        peak_rss_mib: peak_rss_mib(),
        join: join_report(&sim.join),
        lookups,
        records,
    })
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
        "setup {:.1} s ({}), lookups {:.1} s, peak RSS {:.0} MiB",
        r.setup_s,
        match r.setup {
            Setup::Warm => "built converged, then the measured joins",
            Setup::Join => "every station joined",
        },
        r.measure_s,
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
        "{:<34} {:>9} {:>9} {:>9} {:>9}",
        "", "p50", "p99", "mean", "max"
    );
    let mut row = |name: &str, d: &Dist| {
        let _ = writeln!(
            s,
            "{:<34} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
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
    s
}
