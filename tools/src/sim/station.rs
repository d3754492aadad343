//! One simulated station: the registry half of a director, a [`vodmesh_registry::Server`]
//! (the directors' Kademlia configuration, record validation and identify) on libp2p's memory
//! transport, and the task that runs it.
//!
//! All stations share one tokio runtime; a station is one task plus libp2p's per-connection
//! tasks. What a simulation does not need is left out: sockets (a memory transport), and by
//! default encryption ([`Transport::Plaintext`]): the noise handshake and its per-connection
//! buffers are most of a station's CPU and memory, and change nothing Kademlia does.
//! [`Transport::Noise`] keeps them, as the reference the light mode is checked against.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, MemoryTransport, Transport as _};
use libp2p::core::upgrade;
use libp2p::identity::Keypair;
use libp2p::kad::store::RecordStore;
use libp2p::kad::{self, QueryResult, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, SwarmBuilder, noise, plaintext, yamux};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use vodmesh_proto::ProgramId;
use vodmesh_proto::signed::Signed;
use vodmesh_proto::station::{Roles, StationRecord};
use vodmesh_proto::time::{in_ms, now_ms};
use vodmesh_registry::server::{Behaviour, BehaviourEvent};
use vodmesh_registry::{Inbound, PersistentStore, RecordKind, RegistryConfig, RegistryHandle};
use vodmesh_registry::{Server, StoreLimits};

use super::report::{JoinOutcome, ms};
use super::warm::Seed;

/// How simulated stations talk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Memory transport, plaintext + yamux: peers exchange their public keys unencrypted.
    #[default]
    Plaintext,
    /// Memory transport, noise + yamux: the directors' handshake and encryption.
    Noise,
}

impl Transport {
    /// How the report states it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Plaintext => {
                "libp2p memory transport, plaintext + yamux (no encryption; --transport noise for the directors' handshake)"
            }
            Self::Noise => "libp2p memory transport, noise + yamux (the directors' handshake)",
        }
    }
}

/// Counters every station adds to, read by the phases that measure them.
#[derive(Default)]
pub(super) struct Counters {
    /// Connections dialed.
    pub(super) dialed: AtomicU64,
    /// Provide queries finished.
    pub(super) provides: AtomicU64,
    /// Requests those provide queries sent.
    pub(super) provide_requests: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The value of `counter` now.
    pub(super) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What a station's store and routing table hold, and what it has served.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Census {
    pub(super) station: usize,
    pub(super) provider: usize,
    pub(super) catalog: usize,
    pub(super) routing: usize,
    pub(super) connections: usize,
    pub(super) inbound: Inbound,
}

/// Asks a running station.
pub(super) enum Ctl {
    /// Count what it holds (provider records of `keys` only: the store cannot list them).
    Census {
        keys: Arc<Vec<RecordKey>>,
        reply: oneshot::Sender<Census>,
    },
}

/// When a new station's join bootstrap finished.
pub(super) struct Joined {
    pub(super) routing: Duration,
    pub(super) peers: usize,
}

/// How to build a station.
pub(super) struct Build<'a> {
    pub(super) transport: Transport,
    pub(super) config: &'a RegistryConfig,
    pub(super) idle_timeout: Duration,
    pub(super) counters: Arc<Counters>,
}

/// One running station.
pub(super) struct Node {
    pub(super) peer: PeerId,
    pub(super) key: Keypair,
    pub(super) addr: Multiaddr,
    pub(super) registry: RegistryHandle,
    pub(super) ctl: mpsc::Sender<Ctl>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Node {
    /// Drops the station's swarm: its peers see its connections close.
    pub(super) async fn leave(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.task.await;
    }

    /// The station's signed record, as its director publishes it.
    pub(super) fn record(&self, ttl: Duration) -> Signed {
        station_record(&self.key, self.peer, &self.addr, ttl)
    }

    /// What the station holds now; `None` if it is gone.
    pub(super) async fn census(&self, keys: Arc<Vec<RecordKey>>) -> Option<Census> {
        let (reply, rx) = oneshot::channel();
        self.ctl.send(Ctl::Census { keys, reply }).await.ok()?;
        rx.await.ok()
    }
}

/// A station's signed record, as its director publishes it.
pub(super) fn station_record(
    key: &Keypair,
    peer: PeerId,
    addr: &Multiaddr,
    ttl: Duration,
) -> Signed {
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
        counters: Default::default(),
        certificate: None,
        revoked: vec![],
        http: None,
        https: false,
    }
    .sign(key)
}

/// The memory address of station `port`.
pub(super) fn memory_addr(port: u64) -> Multiaddr {
    Multiaddr::empty().with(Protocol::Memory(port))
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn transport(key: &Keypair, kind: Transport) -> Result<Boxed<(PeerId, StreamMuxerBox)>, BoxError> {
    let base = MemoryTransport::default().upgrade(upgrade::Version::V1);
    Ok(match kind {
        Transport::Plaintext => base
            .authenticate(plaintext::Config::new(key))
            .multiplex(yamux::Config::default())
            .boxed(),
        Transport::Noise => base
            .authenticate(noise::Config::new(key)?)
            .multiplex(yamux::Config::default())
            .boxed(),
    })
}

fn build(key: Keypair, how: &Build<'_>) -> Result<(Server, RegistryHandle)> {
    let peer = key.public().to_peer_id();
    let store = PersistentStore::in_memory(peer, &StoreLimits::default());
    let swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|k| transport(k, how.transport))
        .map_err(|e| anyhow::anyhow!("memory transport: {e}"))?
        .with_behaviour(|k| Behaviour::new(k, store, how.config))
        .map_err(|e| anyhow::anyhow!("behaviour: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(how.idle_timeout))
        .build();
    // Commands come from one join flow and a few lookups at a time.
    Ok(Server::new(swarm, 64))
}

/// Starts a station listening on `/memory/<port>` that joins through `bootstrap`, or that
/// starts converged from `seed`; returns it, when its join bootstrap finishes, and how many
/// seed entries were refused.
pub(super) fn spawn(
    key: Keypair,
    port: u64,
    bootstrap: &[(PeerId, Multiaddr)],
    seed: Option<Seed>,
    how: &Build<'_>,
) -> Result<(Node, oneshot::Receiver<Joined>, usize)> {
    let peer = key.public().to_peer_id();
    let (mut server, registry) = build(key.clone(), how)?;
    // Applied before the swarm is first polled, so that the warm station's routing table is
    // full when Kademlia looks at it.
    let warm = seed.is_some();
    let refused = seed.map_or(0, |seed| apply_seed(server.kad_mut(), seed));
    let addr = memory_addr(port);
    server
        .swarm_mut()
        .listen_on(addr.clone())
        .with_context(|| format!("listening on {addr}"))?;
    server.swarm_mut().add_external_address(addr.clone());
    let (joined_tx, joined) = oneshot::channel();
    let mut joined_tx = Some(joined_tx);
    let started = Instant::now();
    for (p, a) in bootstrap {
        server.kad_mut().add_address(p, a.clone());
    }
    if bootstrap.is_empty() {
        if let Some(tx) = joined_tx.take() {
            let _ = tx.send(Joined {
                routing: Duration::ZERO,
                peers: 0,
            });
        }
    } else if let Err(e) = server.kad_mut().bootstrap() {
        tracing::warn!(%peer, error = %e, "sim: bootstrap refused");
    }
    let (ctl, mut ctl_rx) = mpsc::channel(4);
    let (stop, mut stop_rx) = oneshot::channel();
    let counters = how.counters.clone();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stop_rx => break,
                Some(Ctl::Census { keys, reply }) = ctl_rx.recv() => {
                    let _ = reply.send(census(&mut server, &keys));
                }
                event = server.next_event() => {
                    let Some(event) = event else { break };
                    if warm {
                        quench_bootstrap(server.kad_mut());
                    }
                    if let Some(j) = watch(&mut server, &event, &counters)
                        && let Some(tx) = joined_tx.take()
                    {
                        let _ = tx.send(Joined { routing: started.elapsed(), peers: j });
                    }
                    server.on_event(event);
                }
            }
        }
    });
    let node = Node {
        peer,
        key,
        addr,
        registry,
        ctl,
        stop: Some(stop),
        task,
    };
    Ok((node, joined, refused))
}

/// Counts what the phases measure; returns the routing table's size when a bootstrap query
/// finished.
fn watch(
    server: &mut Server,
    event: &SwarmEvent<BehaviourEvent>,
    counters: &Counters,
) -> Option<usize> {
    match event {
        SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
            result,
            step,
            stats,
            ..
        })) if step.last => match result {
            QueryResult::Bootstrap(_) => Some(routing_size(server.kad_mut())),
            QueryResult::StartProviding(_) | QueryResult::RepublishProvider(_) => {
                Counters::add(&counters.provides, 1);
                Counters::add(&counters.provide_requests, u64::from(stats.num_requests()));
                None
            }
            _ => None,
        },
        SwarmEvent::ConnectionEstablished { endpoint, .. } if endpoint.is_dialer() => {
            Counters::add(&counters.dialed, 1);
            None
        }
        _ => None,
    }
}

/// Fills a station's routing table and store; returns how many entries were refused.
fn apply_seed(kad: &mut kad::Behaviour<PersistentStore>, seed: Seed) -> usize {
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
fn quench_bootstrap(kad: &mut kad::Behaviour<PersistentStore>) {
    for mut query in kad.iter_queries_mut() {
        if matches!(query.info(), kad::QueryInfo::Bootstrap { .. }) {
            query.finish();
        }
    }
}

fn routing_size(kad: &mut kad::Behaviour<PersistentStore>) -> usize {
    kad.kbuckets().map(|b| b.num_entries()).sum()
}

fn census(server: &mut Server, keys: &[RecordKey]) -> Census {
    let mut c = Census {
        routing: routing_size(server.kad_mut()),
        connections: server.swarm_mut().network_info().num_peers(),
        inbound: server.stats().inbound,
        ..Census::default()
    };
    let store = server.kad_mut().store_mut();
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

#[allow(clippy::too_many_arguments)]
pub(super) async fn join_flow(
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
