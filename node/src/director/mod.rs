//! The director: a station's front door and its seat in the media location registry.
//!
//! A director is a Kademlia server of the registry, answers `/vodmesh/director/1`, and
//! republishes its signed station record (its addresses, its engines and their load) every
//! third of the record TTL, so that a station that stops disappears from the swarm once its
//! last record expires.

mod content;
mod distribution;
mod miss;
mod pick;
mod play;
mod publish;

pub use publish::NOT_PUBLISHED;

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, kad, ping};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use vodmesh_proto::codec::CborCodec;
use vodmesh_proto::director::{self, ErrorCode, ErrorReply, Request, Response};
use vodmesh_proto::net::{build_swarm, peer_of};
use vodmesh_proto::signed::Signed;
use vodmesh_proto::station::{EngineInfo, Roles, StationRecord};
use vodmesh_proto::time::{in_ms, now_ms};
use vodmesh_registry::registry::{self as reg, Command};
use vodmesh_registry::{PersistentStore, Registry, RegistryHandle, StoreLimits, WalkLimits};

use crate::config::StationConfig;
use crate::content::{Catalog, Sessions};
use crate::control::{EngineCommand, EngineReport};
use crate::listen::{advertised, announced, dialable, is_tcp, listen_all, without_peer};
use crate::store::locations::{Location, LocationState, LocationTable};

/// The director's libp2p protocols.
#[derive(NetworkBehaviour)]
pub(crate) struct DirectorBehaviour {
    kad: kad::Behaviour<PersistentStore>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    control: request_response::Behaviour<CborCodec<Request, Response>>,
    auth: Toggle<crate::auth::service::Behaviour>,
    /// `/vodmesh/blade/1`: engines in processes of their own ([`crate::backplane`]).
    blade: libp2p_stream::Behaviour,
}

/// The identify protocol string every vodmesh peer announces.
pub const IDENTIFY_PROTOCOL: &str = "/vodmesh/1";

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
    pub blade: libp2p_stream::Control,
}

impl std::fmt::Debug for DirectorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectorHandle")
            .field("peer_id", &self.peer_id)
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

struct Director {
    key: Keypair,
    config: StationConfig,
    addrs: Vec<Multiaddr>,
    engines: Vec<Option<EngineInfo>>,
    registry: Registry,
    registry_handle: RegistryHandle,
    bootstrap_peers: HashSet<PeerId>,
    replies: mpsc::Sender<(ResponseChannel<Response>, Response)>,
    /// Peers whose admin proofs this station accepts: its own identity and `--admin`.
    admins: Vec<PeerId>,
    /// Commands to each engine, by index.
    engine_commands: Vec<mpsc::Sender<EngineCommand>>,
    /// Which engine holds which segment.
    locations: LocationTable,
    /// The content manager's catalog (with `--content-manager`).
    catalog: Option<Catalog>,
    /// Ingests in progress.
    sessions: Sessions,
    /// Distribution and publish state.
    dist: distribution::State,
    /// Playback activity heard from the engines.
    activity: director::Activity,
    /// What cache misses remember: manifests, measured throughput and round trips.
    miss: miss::State,
    /// Who streams what from which engine, for swaps and exchanges.
    playing: play::Playing,
    /// The station's metrics, mirrored from `activity` and `engines` after every event.
    metrics: crate::metrics::Metrics,
}

/// Starts the director: listens, joins the registry through `config.bootstrap`, and runs until
/// `shutdown` turns true.
pub async fn start(
    key: Keypair,
    config: StationConfig,
    engines: Vec<EngineInfo>,
    engine_commands: Vec<mpsc::Sender<EngineCommand>>,
    mut reports: mpsc::Receiver<EngineReport>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<DirectorHandle> {
    let peer_id = key.public().to_peer_id();
    let store_path = config.data.join("registry.redb");
    let store = PersistentStore::open(peer_id, &store_path, &StoreLimits::default())
        .context("opening the registry store")?;
    let registry_config = config.registry.clone();
    let liveness = registry_config
        .republish_interval()
        .clamp(Duration::from_secs(1), Duration::from_secs(15));
    let mut swarm = build_swarm(key.clone(), |k| DirectorBehaviour {
        kad: reg::behaviour(peer_id, store, &registry_config, true),
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
        auth: crate::auth::service::behaviour(config.auth_server.clone()),
        blade: libp2p_stream::Behaviour::new(),
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
        let peer = peer_of(addr)
            .with_context(|| format!("bootstrap address {addr} does not end in /p2p/<peer id>"))?;
        if peer == peer_id {
            continue;
        }
        swarm
            .behaviour_mut()
            .kad
            .add_address(&peer, without_peer(addr));
        swarm
            .dial(addr.clone())
            .with_context(|| format!("dialing bootstrap {addr}"))?;
        bootstrap_peers.insert(peer);
    }
    tracing::info!(peer = %peer_id, addrs = ?addrs, bootstrap = bootstrap_peers.len(), "director listening");

    let locations = LocationTable::open(&config.data.join("locations.redb"))
        .context("opening the segment location table")?;
    let catalog = if config.content_manager {
        Some(Catalog::open(&config.data.join("catalog.redb")).context("opening the catalog")?)
    } else {
        None
    };
    let mut admins = vec![peer_id];
    admins.extend(config.admins.iter().copied());
    let (registry_handle, mut commands) = RegistryHandle::channel(256);
    let (replies, mut replies_rx) = mpsc::channel(64);
    let (internal, mut internal_rx) = mpsc::channel(256);
    let config_metrics = config.metrics.clone();
    let mut director = Director {
        key,
        config,
        addrs: addrs.clone(),
        engines: engines.into_iter().map(Some).collect(),
        registry: Registry::new(),
        registry_handle: registry_handle.clone(),
        bootstrap_peers,
        replies,
        admins,
        engine_commands,
        locations,
        catalog,
        sessions: Sessions::default(),
        dist: distribution::State::new(internal),
        activity: Default::default(),
        miss: Default::default(),
        playing: Default::default(),
        metrics: config_metrics,
    };
    director.drop_interrupted_ingests();
    director.republish(&mut swarm);
    director.arm_schedule();
    let republish_every = director.config.registry.republish_interval();
    let task = tokio::spawn(async move {
        let mut republish = tokio::time::interval(republish_every);
        republish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flush = tokio::time::interval(Duration::from_secs(5));
        // What the metrics last saw: most events (kad traffic, pings) change neither.
        let mut synced: Option<(director::Activity, Vec<Option<EngineInfo>>)> = None;
        loop {
            // Biased, engine reports first: an engine reports a stored segment before it
            // acknowledges it to the client, so by the time the client's commit arrives over
            // the network the report is already queued and must be taken before the request.
            tokio::select! {
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
                Some(report) = reports.recv() => director.on_engine_report(&mut swarm, report),
                Some(cmd) = commands.recv() => {
                    director.registry.execute(&mut swarm.behaviour_mut().kad, cmd);
                }
                Some(msg) = internal_rx.recv() => director.on_internal(&mut swarm, msg),
                Some((channel, response)) = replies_rx.recv() => {
                    if swarm.behaviour_mut().control.send_response(channel, response).is_err() {
                        tracing::debug!("client went away before its answer");
                    }
                }
                _ = republish.tick() => director.republish(&mut swarm),
                _ = flush.tick() => {
                    swarm.behaviour_mut().kad.store_mut().flush();
                    director.expire_ingests();
                }
                event = swarm.select_next_some() => director.on_swarm_event(&mut swarm, event),
            }
            if synced
                .as_ref()
                .is_none_or(|(a, e)| *a != director.activity || *e != director.engines)
            {
                director
                    .metrics
                    .sync_director(&director.activity, &director.engines);
                synced = Some((director.activity, director.engines.clone()));
            }
        }
        swarm.behaviour_mut().kad.store_mut().flush();
        tracing::info!(peer = %director.key.public().to_peer_id(), "director stopped");
    });
    Ok(DirectorHandle {
        peer_id,
        addrs,
        registry: registry_handle,
        task,
        blade,
    })
}

impl Director {
    fn peer_id(&self) -> PeerId {
        self.key.public().to_peer_id()
    }

    fn record(&self) -> StationRecord {
        let now = now_ms();
        StationRecord {
            director: self.peer_id(),
            addrs: self.addrs.clone(),
            engines: self.engines.iter().flatten().cloned().collect(),
            region: self.config.region.clone(),
            coords: self.config.coords,
            bandwidth_mbps: self.config.bandwidth_mbps,
            roles: Roles {
                home: self.config.home,
                content_manager: self.config.content_manager,
                auth: self.config.auth,
            },
            issuer: (self.config.auth_server.as_ref()).map(|s| s.issuer_key().to_string()),
            issued_ms: now,
            expires_ms: in_ms(self.config.registry.record_ttl),
        }
    }

    fn signed_record(&self) -> Signed {
        self.record().sign(&self.key)
    }

    /// Signs a fresh station record and stores it in the registry. A director that has lost
    /// every connection (a partition, its link down) dials its bootstrap stations again and
    /// refreshes its routing table, so that once the link heals the swarms merge within a
    /// republish interval instead of waiting for the periodic bootstrap.
    fn republish(&mut self, swarm: &mut Swarm<DirectorBehaviour>) {
        if swarm.connected_peers().next().is_none() && !self.config.bootstrap.is_empty() {
            for addr in &self.config.bootstrap {
                if let Err(e) = swarm.dial(addr.clone()) {
                    tracing::debug!(%addr, error = %e, "redialing bootstrap failed");
                }
            }
            if let Err(e) = swarm.behaviour_mut().kad.bootstrap() {
                tracing::debug!(error = %e, "registry bootstrap failed");
            }
        }
        let (reply, _) = oneshot::channel();
        let record = self.signed_record();
        self.registry.execute(
            &mut swarm.behaviour_mut().kad,
            Command::PutStation { record, reply },
        );
    }

    fn on_engine_report(&mut self, swarm: &mut Swarm<DirectorBehaviour>, report: EngineReport) {
        match report {
            EngineReport::Ready {
                index,
                peer_id,
                addrs,
            } => {
                if self.engines.len() <= index {
                    self.engines.resize(index + 1, None);
                }
                // The same engine coming back keeps its store's figures until its next usage
                // report (which follows its ready report) says otherwise.
                let disks = match &self.engines[index] {
                    Some(old) if old.peer_id == peer_id => old.disks.clone(),
                    _ => Vec::new(),
                };
                self.engines[index] = Some(EngineInfo {
                    peer_id,
                    addrs,
                    streams: 0,
                    max_streams: self.config.max_streams,
                    used: vodmesh_proto::station::used_on(&disks),
                    capacity: self.config.capacity,
                    up: true,
                    disks,
                });
            }
            EngineReport::Usage { index, mut disks } => {
                if let Some(Some(engine)) = self.engines.get_mut(index) {
                    // An engine process reports these over the backplane; they go into the
                    // signed station record, which has a size limit.
                    disks.truncate(crate::backplane::MAX_DISKS);
                    engine.used = vodmesh_proto::station::used_on(&disks);
                    engine.disks = disks;
                }
                return;
            }
            EngineReport::Limits {
                index,
                max_streams,
                capacity,
            } => {
                if let Some(Some(engine)) = self.engines.get_mut(index) {
                    engine.max_streams = max_streams;
                    engine.capacity = capacity;
                }
            }
            EngineReport::Down { index } => {
                if let Some(Some(engine)) = self.engines.get_mut(index) {
                    engine.up = false;
                }
            }
            EngineReport::Stored { index, segment, .. } => {
                if self.stored_after_drop(index, segment) {
                    return;
                }
                if let Some(Some(engine)) = self.engines.get(index) {
                    let location = Location {
                        engine: engine.peer_id,
                        state: LocationState::Complete,
                        load: 0,
                    };
                    if let Err(e) = self.locations.insert(segment, &location) {
                        tracing::warn!(%segment, error = %e, "location table write failed");
                    }
                }
                self.sessions
                    .stored(&segment.program, segment.index.0, now_ms());
                self.on_stored(swarm, segment);
                return;
            }
            EngineReport::Streams { index, active } => {
                if let Some(Some(engine)) = self.engines.get_mut(index) {
                    engine.streams = active;
                }
                return;
            }
            EngineReport::SwapAsked {
                index,
                segment,
                console,
                filled,
            } => {
                tracing::debug!(index, %segment, %console, filled, "console sought past a filling copy");
                self.activity.swaps += 1;
                self.playing.swapped_from.insert((segment, console), index);
                return;
            }
            EngineReport::Refused { copy, .. } => {
                if copy {
                    self.activity.refused_copies += 1;
                } else {
                    self.activity.refused_streams += 1;
                }
                return;
            }
            EngineReport::TookOver {
                index,
                segment,
                console,
            } => {
                tracing::debug!(index, %segment, %console, "engine took over the stream");
                self.activity.takeovers += 1;
                self.playing.started(index, segment, console);
                return;
            }
            EngineReport::Stopped {
                index,
                segment,
                console,
                bytes,
                complete,
            } => {
                tracing::debug!(index, %segment, %console, bytes, complete, "stream stopped");
                self.playing.stopped(index, segment, console);
                self.metrics.streamed(bytes);
                if complete {
                    self.activity.stops_complete += 1;
                } else {
                    self.activity.stops_early += 1;
                }
                return;
            }
            EngineReport::Dropped { index, segment } => {
                if let Some(Some(engine)) = self.engines.get(index) {
                    let _ = self.locations.remove(segment, &engine.peer_id);
                }
                return;
            }
        }
        self.republish(swarm);
    }

    fn on_swarm_event(
        &mut self,
        swarm: &mut Swarm<DirectorBehaviour>,
        event: SwarmEvent<DirectorBehaviourEvent>,
    ) {
        match event {
            SwarmEvent::Behaviour(DirectorBehaviourEvent::Kad(event)) => {
                if let kad::Event::OutboundQueryProgressed {
                    result,
                    stats,
                    step,
                    ..
                } = &event
                    && step.last
                {
                    self.metrics
                        .dht_query(crate::metrics::query_kind(result), stats.duration());
                }
                if let kad::Event::RoutingUpdated {
                    peer,
                    is_new_peer: true,
                    ..
                } = &event
                {
                    tracing::debug!(%peer, "registry: new director in the routing table");
                }
                self.registry
                    .on_event(&mut swarm.behaviour_mut().kad, event);
            }
            SwarmEvent::Behaviour(DirectorBehaviourEvent::Identify(
                identify::Event::Received { peer_id, info, .. },
            )) if info.protocols.contains(&reg::PROTOCOL) => {
                // Registry traffic goes over TCP: a dial to a stopped director's TCP port
                // fails at once, while a QUIC dial waits out its handshake timeout, and
                // every query that meets the dead peer stalls with it (measured: swarm
                // walks of 10 s instead of milliseconds after one station stopped).
                for addr in info
                    .listen_addrs
                    .iter()
                    .filter(|a| dialable(a) && is_tcp(a))
                {
                    swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, without_peer(addr));
                }
            }
            SwarmEvent::Behaviour(DirectorBehaviourEvent::Control(
                request_response::Event::Message {
                    peer,
                    message:
                        request_response::Message::Request {
                            request, channel, ..
                        },
                    ..
                },
            )) => self.on_request(swarm, peer, request, channel),
            SwarmEvent::Behaviour(DirectorBehaviourEvent::Control(
                request_response::Event::InboundFailure { peer, error, .. },
            )) => {
                tracing::debug!(%peer, %error, "director: inbound request failed");
            }
            SwarmEvent::Behaviour(DirectorBehaviourEvent::Control(event)) => {
                self.on_outbound(event)
            }
            SwarmEvent::Behaviour(DirectorBehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) => {
                self.miss.rtt.insert(peer, rtt);
            }
            // Consoles and tools do not speak ping (`Unsupported`); any other failure (a
            // timeout, a negotiation that never completes) means the peer is gone.
            SwarmEvent::Behaviour(DirectorBehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(error),
            })) if !matches!(error, ping::Failure::Unsupported) => {
                tracing::debug!(%peer, %error, "peer stopped answering pings; closing the connection");
                self.miss.rtt.remove(&peer);
                swarm.close_connection(connection);
            }
            SwarmEvent::Behaviour(DirectorBehaviourEvent::Auth(event)) => {
                crate::auth::service::on_event(event);
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. }
                if self.bootstrap_peers.remove(&peer_id) =>
            {
                tracing::info!(peer = %peer_id, "connected to bootstrap; joining the registry");
                if let Err(e) = swarm.behaviour_mut().kad.bootstrap() {
                    tracing::warn!(error = %e, "registry bootstrap failed");
                }
                self.republish(swarm);
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } if self.bootstrap_peers.contains(&peer) => {
                tracing::warn!(%peer, %error, "cannot reach bootstrap station");
            }
            _ => {}
        }
    }

    fn on_request(
        &mut self,
        swarm: &mut Swarm<DirectorBehaviour>,
        peer: PeerId,
        request: Request,
        channel: ResponseChannel<Response>,
    ) {
        tracing::debug!(%peer, ?request, "director request");
        match request {
            Request::Station => {
                let response = Response::Station(self.signed_record());
                let _ = swarm
                    .behaviour_mut()
                    .control
                    .send_response(channel, response);
            }
            Request::Swarm => {
                let registry = self.registry_handle.clone();
                let replies = self.replies.clone();
                let local = self.peer_id();
                tokio::spawn(async move {
                    let response =
                        match vodmesh_registry::walk(&registry, local, WalkLimits::default()).await
                        {
                            Ok(stations) => {
                                Response::Swarm(stations.into_iter().map(|(_, s)| s).collect())
                            }
                            Err(e) => Response::Error(ErrorReply::new(
                                ErrorCode::Unavailable,
                                e.to_string(),
                            )),
                        };
                    let _ = replies.send((channel, response)).await;
                });
            }
            request @ (Request::IngestBegin { .. }
            | Request::IngestCommit { .. }
            | Request::IngestAbort { .. }) => {
                self.on_ingest_request(swarm, peer, request, channel);
            }
            Request::Programs => self.programs(channel),
            Request::Locate {
                program,
                index,
                complete: true,
                ..
            } => {
                let response = self
                    .locate_complete(program, index, peer)
                    .map_or_else(Response::Error, Response::Location);
                if matches!(response, Response::Location(_)) {
                    self.metrics.hit();
                }
                let _ = swarm
                    .behaviour_mut()
                    .control
                    .send_response(channel, response);
            }
            Request::Locate {
                program,
                index,
                avoid,
                busy,
                ..
            } => {
                let ask = play::Locating {
                    console: peer,
                    program,
                    index,
                    avoid,
                    busy,
                };
                if let Some((channel, response)) = self.on_locate(ask, channel) {
                    let _ = swarm
                        .behaviour_mut()
                        .control
                        .send_response(channel, response);
                }
            }
            Request::Activity => {
                let mut activity = self.activity;
                activity.active = self
                    .engines
                    .iter()
                    .flatten()
                    .map(|e| u64::from(e.streams))
                    .sum();
                activity.programs = self.locations.programs().map_or(0, |p| p.len() as u64);
                let _ = swarm
                    .behaviour_mut()
                    .control
                    .send_response(channel, Response::Activity(activity));
            }
            Request::Manifest { program } => {
                let response = match self.catalog.as_ref().map(|c| c.get(&program)) {
                    Some(Ok(Some(entry))) => Response::Manifest(entry.manifest),
                    Some(Err(e)) => {
                        Response::Error(ErrorReply::new(ErrorCode::Internal, e.to_string()))
                    }
                    _ => Response::Error(ErrorReply::new(ErrorCode::NotFound, "unknown program")),
                };
                let _ = swarm
                    .behaviour_mut()
                    .control
                    .send_response(channel, response);
            }
            other => self.on_content_request(swarm, peer, other, channel),
        }
    }
}
