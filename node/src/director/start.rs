//! Starting a director: its stores (registry, location table, catalogs), its swarm and
//! listeners, the bootstrap dials, and the [`Director`] whose loop then runs in a task.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::{Multiaddr, PeerId, identify, ping};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use vodmesh_proto::codec::CborCodec;
use vodmesh_proto::director;
use vodmesh_proto::net::{IDENTIFY_PROTOCOL, build_swarm, peer_of, without_peer};
use vodmesh_proto::station::EngineInfo;
use vodmesh_registry::registry as reg;
use vodmesh_registry::store::OpenError;
use vodmesh_registry::{PersistentStore, Registry, RegistryHandle, StoreLimits};

use super::context::{Me, Shared};
use super::engines::EngineTable;
use super::http::Server;
use super::ingest::Ingests;
use super::miss::Misses;
use super::outbound::Outbound;
use super::play::Play;
use super::publish::Publishing;
use super::replicate::Replicating;
use super::tasks::Tasks;
use super::{Director, DirectorBehaviour};
use crate::config::StationConfig;
use crate::content::{Catalog, catalog};
use crate::control::{EngineCommand, EngineReport};
use crate::events::Observer;
use crate::listen::{self, advertised, announced, listen_all};
use crate::metrics::Metrics;
use crate::store::locations::{self, LocationTable};

/// A started director.
pub struct DirectorHandle {
    /// Its peer id.
    pub peer_id: PeerId,
    /// Where other peers reach it: `--announce`, then where it listens (every interface
    /// address of an unspecified listener), routable ones before loopback; the first is the
    /// one to give other hosts.
    pub addrs: Vec<Multiaddr>,
    /// The registry, for the rest of the node.
    pub registry: RegistryHandle,
    /// Its event loop.
    pub task: JoinHandle<()>,
    /// Streams of the director's swarm, for the backplane of separate engine processes.
    pub blade: vodmesh_proto::net::streams::Control,
}

impl std::fmt::Debug for DirectorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectorHandle")
            .field("peer_id", &self.peer_id)
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

/// The station's engines, as the director starts with them.
#[derive(Debug)]
pub struct Engines {
    /// The in-process engines as they are at start, in order.
    pub known: Vec<EngineInfo>,
    /// A command channel per engine slot: the in-process engines, then one per
    /// `--engine-peer` (an engine process takes its slot when it attaches).
    pub commands: Vec<mpsc::Sender<EngineCommand>>,
    /// Every engine's reports.
    pub reports: mpsc::Receiver<EngineReport>,
}

/// What the station shares with its director while it runs.
#[derive(Debug)]
pub struct Handles {
    /// The station's counters and gauges: the director mirrors its activity into them.
    pub metrics: Metrics,
    /// Where the station's events go.
    pub observer: Observer,
    /// The auth server, when the station runs the auth role: the director serves
    /// `/vodmesh/auth/1` from it.
    pub auth: Option<Arc<crate::auth::Server>>,
    /// Whether the station drains (SIGTERM, `vodmesh station drain`): the station and an
    /// admin's [`Request::Drain`] set it, the director follows it.
    pub draining: watch::Sender<bool>,
    /// The station's certificate once it has one ([`crate::auth::engines`]): it goes into the
    /// station record, and a new one is published at once.
    pub certificate: watch::Receiver<Option<Vec<u8>>>,
    /// The HTTP edge's listener (`--http`, bound by the station), and the issuers whose URL
    /// tokens it accepts.
    /// With `--tls-cert`, the TLS it speaks.
    pub http: Option<(
        tokio::net::TcpListener,
        vodmesh_proto::token::TrustedIssuers,
        Option<crate::tls::Tls>,
    )>,
}

/// Why a director did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The registry's store did not open.
    #[error("opening the registry store")]
    Registry(#[from] OpenError),
    /// The segment location table did not open.
    #[error("opening the segment location table {}", path.display())]
    Locations {
        /// Its file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: locations::Error,
    },
    /// A catalog (`catalog.redb`, `kept.redb`) did not open.
    #[error("opening {what} {}", path.display())]
    Catalog {
        /// Which.
        what: &'static str,
        /// Its file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: catalog::Error,
    },
    /// The swarm did not build.
    #[error(transparent)]
    Swarm(#[from] vodmesh_proto::net::BuildError),
    /// It cannot listen, or announce, where it was told to.
    #[error(transparent)]
    Listen(#[from] listen::Error),
    /// A `--bootstrap` address names no peer.
    #[error("bootstrap address {0} does not end in /p2p/<peer id>")]
    BootstrapPeer(Multiaddr),
    /// A `--bootstrap` address cannot be dialed.
    #[error("dialing bootstrap {addr}")]
    Bootstrap {
        /// The address.
        addr: Multiaddr,
        /// Why.
        #[source]
        source: Box<libp2p::swarm::DialError>,
    },
}

/// Opens the catalog at `path`, which holds `what`.
fn open_catalog(path: std::path::PathBuf, what: &'static str) -> Result<Catalog, StartError> {
    Catalog::open(&path).map_err(|source| StartError::Catalog { what, path, source })
}

/// Starts the director: listens, joins the registry through `config.bootstrap`, and runs until
/// `shutdown` turns true.
pub async fn start(
    key: Keypair,
    config: StationConfig,
    engines: Engines,
    handles: Handles,
    shutdown: watch::Receiver<bool>,
) -> Result<DirectorHandle, StartError> {
    let peer_id = key.public().to_peer_id();
    let store_path = config.data.join("registry.redb");
    let store = PersistentStore::open(peer_id, &store_path, &StoreLimits::default())?;
    let registry_config = config.registry.clone();
    let liveness = registry_config
        .republish_interval()
        .clamp(Duration::from_secs(1), Duration::from_secs(15));
    // The loop refreshes the routing table itself (`reg::refresh`), silently while alone.
    let issuer = (handles.auth.as_ref()).map(|s| s.issuer_key().to_string());
    let members = super::admit::members(&config, issuer.as_deref());
    let console_issuers = super::admit::trusted(&config, issuer.as_deref());
    let kad_config = reg::RegistryConfig {
        periodic_bootstrap: None,
        members_only: members.is_closed(),
        ..registry_config.clone()
    };
    let mut swarm = build_swarm(key.clone(), |k| DirectorBehaviour {
        kad: reg::behaviour(peer_id, store, &kad_config, true),
        identify: identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.into(), k.public())
                .with_agent_version(format!("vodmesh-director/{}", env!("CARGO_PKG_VERSION"))),
        ),
        // Liveness: a connection whose peer stops answering (a partition, a dead link) is
        // closed within two ping intervals, so the registry stops waiting on it and a healed
        // link is dialed afresh instead of waiting out TCP's retransmission backoff.
        ping: ping::Behaviour::new(
            ping::Config::new()
                .with_interval(liveness)
                .with_timeout(liveness),
        ),
        control: request_response::Behaviour::with_codec(
            CborCodec::new(director::LIMITS),
            [(director::PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(Duration::from_secs(60)),
        ),
        auth: crate::auth::service::behaviour(handles.auth.clone()),
        blade: vodmesh_proto::net::streams::Behaviour::new(),
        limits: crate::conn_limits::behaviour(),
    })?;
    let blade = swarm.behaviour().blade.new_control();
    let announce = (config.announce.iter())
        .map(|a| announced(a, peer_id))
        .collect::<Result<Vec<_>, _>>()?;
    let addrs = advertised(&announce, &listen_all(&mut swarm, &config.listen).await?);
    for addr in &addrs {
        swarm.add_external_address(without_peer(addr));
    }
    let mut bootstrap_peers = HashSet::new();
    for addr in &config.bootstrap {
        let peer = peer_of(addr).ok_or_else(|| StartError::BootstrapPeer(addr.clone()))?;
        if peer == peer_id {
            continue;
        }
        swarm
            .behaviour_mut()
            .kad
            .add_address(&peer, without_peer(addr));
        (swarm.dial(addr.clone())).map_err(|source| StartError::Bootstrap {
            addr: addr.clone(),
            source: Box::new(source),
        })?;
        bootstrap_peers.insert(peer);
    }
    // The directors remembered from before a restart: a station restarted without
    // --bootstrap (the first one, the home) rejoins through them; with it, a bootstrap
    // station that is down keeps it out no longer.
    let remembered = super::peers::load(&config.data, peer_id);
    let mut remembered_peers = HashSet::new();
    for addr in &remembered {
        let Some(peer) = peer_of(addr) else { continue };
        if bootstrap_peers.contains(&peer) {
            continue;
        }
        swarm
            .behaviour_mut()
            .kad
            .add_address(&peer, without_peer(addr));
        match swarm.dial(addr.clone()) {
            Ok(()) => {
                remembered_peers.insert(peer);
            }
            Err(e) => tracing::debug!(%addr, error = %e, "dialing a remembered director failed"),
        }
    }
    if !remembered_peers.is_empty() {
        tracing::info!(
            directors = remembered_peers.len(),
            "rejoining through the directors remembered"
        );
    }
    tracing::info!(peer = %peer_id, addrs = ?addrs, bootstrap = bootstrap_peers.len(), "director listening");

    let path = config.data.join("locations.redb");
    let locations =
        LocationTable::open(&path).map_err(|source| StartError::Locations { path, source })?;
    let catalog = match config.content_manager {
        true => Some(open_catalog(
            config.data.join("catalog.redb"),
            "the catalog",
        )?),
        false => None,
    };
    let kept = open_catalog(config.data.join("kept.redb"), "the kept manifests")?;
    let mut admins = vec![peer_id];
    admins.extend(config.admins.iter().copied());
    let (registry_handle, registry_commands) = RegistryHandle::channel(256);
    let (outbound, asker) = Outbound::new(256);
    let engine_limits = (config.max_streams, config.capacity);
    let republish_every = config.registry.republish_interval();
    let me = Me {
        key,
        peer_id,
        config,
        addrs: addrs.clone(),
        admins,
        issuer,
        certificate: handles.certificate,
        auth: handles.auth.clone(),
    };
    let publish = Publishing::new(catalog.as_ref());
    let (local_tx, local) = mpsc::channel(super::http::QUEUE);
    let http = (handles.http).map(|(listener, trusted, tls)| {
        Server::new(listener, (local_tx, trusted, tls), shutdown.clone())
    });
    let mut director = Director {
        swarm,
        shared: Shared {
            me,
            engines: EngineTable::new(engines.known, engines.commands, engine_limits),
            locations,
            catalog,
            kept,
            activity: Default::default(),
            observer: handles.observer,
            registry: Registry::with_members(members),
            registry_handle: registry_handle.clone(),
            asker,
            walks: vodmesh_registry::RecentWalk::new(registry_handle.clone(), peer_id),
            infos: Default::default(),
        },
        reports: engines.reports,
        registry_commands,
        outbound,
        metrics: handles.metrics,
        console_issuers,
        bootstrap_peers,
        bootstrap_warned: None,
        remembered,
        remembered_peers,
        station_answer: Default::default(),
        stations_answering: super::dispatch::stations_answering(),
        play: Play::default(),
        miss: Misses::default(),
        replicate: Replicating::default(),
        publish,
        ingest: Ingests::default(),
        tasks: Tasks::default(),
        admitting: Default::default(),
        draining: handles.draining,
        local,
        http,
    };
    let ctx = director.shared.ctx(&mut director.swarm.behaviour_mut().kad);
    director.ingest.drop_interrupted(&ctx);
    director.republish();
    // The metrics show the engines from the start, not from the loop's first event.
    (director.metrics).sync_director(
        &director.shared.activity,
        &director.shared.engines.snapshot(),
    );
    let task = tokio::spawn(director.run(shutdown, republish_every));
    Ok(DirectorHandle {
        peer_id,
        addrs,
        registry: registry_handle,
        task,
        blade,
    })
}
