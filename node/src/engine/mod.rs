//! An engine: one peer of a station that stores, copies and streams segments (the seed's
//! blade). Each engine has its own identity, its own listen addresses and its own segment
//! store, so consoles and other engines reach it directly; its director commands it and hears
//! from it over the control channel ([`crate::control`]).
//!
//! One task runs the engine ([`start`]): it owns the swarm, takes the director's commands and
//! the store's events, and owns every task the engine starts (a [`JoinSet`]): the accept loop
//! of each protocol, the copies it fetches, its preloads. Stopping the engine stops them all.
//!
//! - [`ingest`]: `/vodmesh/ingest/1`, segments pushed in during ingest.
//! - [`copy`]: `/vodmesh/copy/1`, segment copies between stations' engines.
//! - `stream`: `/vodmesh/stream/1`, segments streamed to consoles, under `--max-streams`.
//! - `admit`: who may stream or copy (tokens, the director's approval).
//! - `accept`: the accept loop every protocol shares.
//! - `bulk`: `/vodmesh/stream/1` and `/vodmesh/copy/1` on TLS connections without yamux.
//! - `http`: the HTTP edge of `--http`, segments for standard players under the same
//!   admission and `--max-streams`.
//! - `report`: what the engine tells its director of itself.
//! - [`scrub`]: stored segments re-hashed in the background, paced (`--scrub-rate`).

mod accept;
mod admit;
mod bulk;
pub mod copy;
mod embargo;
mod http;
pub mod ingest;
mod peers;
mod report;
pub mod scrub;
pub(crate) mod stream;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, ping};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use vodmesh_proto::net::{BuildError, IDENTIFY_PROTOCOL, build_swarm};

use self::ingest::Expectations;
pub(crate) use self::report::{Reporter, disk_usage};
use crate::control::{EngineCommand, EngineEvent, EngineId, EngineReport};
use crate::listen::{advertised, announced, listen_all};
use crate::store::{self, SegmentStore};

/// The engine's libp2p protocols.
#[derive(NetworkBehaviour)]
pub(crate) struct EngineBehaviour {
    /// Refuses connections past [`crate::conn_limits`]. First: a connection it refuses must
    /// reach no other behaviour (request-response counts a connection as soon as it is asked
    /// to handle it, and one refused after that is never closed for it).
    limits: libp2p::connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    streams: vodmesh_proto::net::streams::Behaviour,
}

/// Where and how an engine keeps its segments.
#[derive(Clone, Debug)]
pub struct EngineStorage {
    /// The redb index file.
    pub index: PathBuf,
    /// One directory per disk.
    pub disks: Vec<PathBuf>,
    /// Bytes of segments at most (0 = unbounded).
    pub capacity: u64,
    /// Pin every segment (home station).
    pub pin_all: bool,
    /// Re-hash every stored segment at start and drop the bad ones.
    pub scrub: bool,
    /// The background scrub's pace (rate 0: none).
    pub scrub_pace: scrub::Pace,
    /// Concurrent streams served at most.
    pub max_streams: u32,
    /// Bytes per second each copy is served at, at most (0 = as fast as the link goes).
    pub copy_rate: u64,
}

/// What an engine checks and presents: the issuers whose tokens it accepts (console tokens
/// on streams, engine tokens on copies) and its own engine token, filled in by the station.
#[derive(Clone, Debug, Default)]
pub struct EngineAuth {
    /// Trusted token issuers; empty: serve no stream and no copy.
    pub trusted: vodmesh_proto::token::TrustedIssuers,
    /// This engine's engine token, once the auth server has issued it.
    pub token: copy::TokenSlot,
}

/// A started engine.
pub struct EngineHandle {
    /// Index in the station.
    pub index: usize,
    /// Its peer id.
    pub peer_id: PeerId,
    /// Where it listens.
    pub addrs: Vec<Multiaddr>,
    /// Where it serves HTTP (`--http`), once bound.
    pub http: Option<std::net::SocketAddr>,
    /// Whether it serves `http` over TLS (`--tls-cert`).
    pub https: bool,
    /// Where it takes bulk connections from consoles ([`bulk`]).
    pub bulk: Option<std::net::SocketAddr>,
    /// Its segment store.
    pub store: SegmentStore,
    /// Commands from the director.
    pub commands: mpsc::Sender<EngineCommand>,
    /// Its event loop; it ends when every task of the engine has.
    pub task: JoinHandle<()>,
}

/// Why an engine did not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An `--announce` address is not one this engine can announce.
    #[error(transparent)]
    Announce(Box<dyn std::error::Error + Send + Sync>),
    /// A disk directory cannot be made.
    #[error("cannot create {}: {source}", path.display())]
    Disk {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The segment store did not open (or its scrub failed).
    #[error("the segment store of engine {index}: {source}")]
    Store {
        /// The engine.
        index: usize,
        /// Why.
        #[source]
        source: store::Error,
    },
    /// The swarm did not build.
    #[error(transparent)]
    Swarm(#[from] BuildError),
    /// The engine cannot listen where it was told to.
    #[error("engine {index} cannot listen")]
    Listen {
        /// The engine.
        index: usize,
        /// Why.
        #[source]
        cause: Box<crate::ListenError>,
    },
    /// The HTTP address cannot be bound.
    #[error("engine {index} cannot serve HTTP on {addr}")]
    Http {
        /// The engine.
        index: usize,
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The bulk listener cannot be set up (its certificate, or its port).
    #[error("engine {index} cannot take bulk connections")]
    Bulk {
        /// The engine.
        index: usize,
        /// Why.
        #[source]
        source: vodmesh_proto::net::bulk::Error,
    },
    /// A protocol was registered twice (a bug, not an operator's error).
    #[error("registering {protocol}: {source}")]
    Protocol {
        /// The protocol.
        protocol: libp2p::StreamProtocol,
        /// Why.
        #[source]
        source: vodmesh_proto::net::streams::AlreadyRegistered,
    },
}

/// Where an engine listens, and what it announces besides.
#[derive(Clone, Debug, Default)]
pub struct EngineNet {
    /// Its listen addresses.
    pub listen: Vec<Multiaddr>,
    /// Addresses other hosts reach it at that are on no interface of its host (NAT, a public
    /// address elsewhere): announced before the ones it listens on.
    pub announce: Vec<Multiaddr>,
    /// Where it serves segments over HTTP (`--http`), if it does; port 0 picks one.
    pub http: Option<std::net::SocketAddr>,
    /// TLS for `http` (`--tls-cert/--tls-key`): HTTPS, HTTP/2 by ALPN.
    pub tls: Option<crate::tls::Tls>,
}

/// Starts engine `index` with identity `key`, listening and announcing as `net` says,
/// storing segments as `storage` says, reporting to its director on `reports`, counting into
/// the station's `metrics` and telling its `observer` of copies.
#[allow(clippy::too_many_arguments)] // each is one distinct part of a blade's setup
pub async fn start(
    index: usize,
    key: Keypair,
    net: &EngineNet,
    storage: EngineStorage,
    auth: EngineAuth,
    reports: mpsc::Sender<EngineReport>,
    metrics: crate::metrics::Metrics,
    observer: crate::events::Observer,
    shutdown: watch::Receiver<bool>,
) -> Result<EngineHandle, Error> {
    let peer_id = key.public().to_peer_id();
    let announce = (net.announce.iter())
        .map(|a| announced(a, peer_id))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Announce(e.into()))?;
    let EngineAuth { trusted, token } = auth;
    for disk in &storage.disks {
        std::fs::create_dir_all(disk).map_err(|source| Error::Disk {
            path: disk.clone(),
            source,
        })?;
    }
    let capacity = if storage.capacity == 0 {
        u64::MAX / 4
    } else {
        storage.capacity
    };
    let mut config = store::Config::new(&storage.index, storage.disks.clone(), capacity);
    config.pin_all = storage.pin_all;
    let store_error = |source| Error::Store { index, source };
    let (store, events, reconciled) = SegmentStore::open_reconciled(config)
        .await
        .map_err(store_error)?;
    tracing::info!(index, ?reconciled, "engine store opened");
    if storage.scrub {
        let dropped = store.scrub().await.map_err(store_error)?;
        tracing::info!(index, dropped = dropped.len(), "engine store scrubbed");
    }
    // The embargoes of the last run hold until the director says otherwise.
    let embargoes = embargo::Embargoes::default();
    let kept = store.embargoes().await.map_err(store_error)?;
    let ended = embargoes.restore(kept, vodmesh_proto::time::now_ms());
    if !ended.is_empty() {
        store.set_embargoes(ended).await.map_err(store_error)?;
    }

    let bulk_error = |source| Error::Bulk { index, source };
    let acceptor = vodmesh_proto::net::bulk::Acceptor::new(&key).map_err(bulk_error)?;
    let copier_key = key.clone();
    let mut swarm = build_swarm(key, |k| EngineBehaviour {
        identify: identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.into(), k.public())
                .with_agent_version(format!("vodmesh-engine/{}", env!("CARGO_PKG_VERSION"))),
        ),
        ping: ping::Behaviour::default(),
        streams: vodmesh_proto::net::streams::Behaviour::new(),
        limits: crate::conn_limits::behaviour(),
    })?;
    let listened = listen_all(&mut swarm, &net.listen)
        .await
        .map_err(|cause| Error::Listen {
            index,
            cause: Box::new(cause),
        })?;
    let addrs = advertised(&announce, &listened);
    let (bulk_listener, bound) = (bulk::bind(&listened).await)
        .map_err(|e| bulk_error(vodmesh_proto::net::bulk::Error::Io(e)))?;
    // Behind `--announce` (NAT, a public address elsewhere) the bulk port is not known to be
    // reachable: consoles are not told of it, and stream over libp2p.
    let bulk = announce.is_empty().then_some(bound);
    tracing::info!(index, peer = %peer_id, addrs = ?addrs, ?bulk, "engine listening");
    let http_error = |addr, source| Error::Http {
        index,
        addr,
        source,
    };
    let http_listener = match net.http {
        Some(addr) => {
            let listener = (tokio::net::TcpListener::bind(addr).await)
                .map_err(|source| http_error(addr, source))?;
            let bound = (listener.local_addr()).map_err(|source| http_error(addr, source))?;
            tracing::info!(index, peer = %peer_id, http = %bound, "engine serving HTTP");
            Some((listener, bound))
        }
        None => None,
    };
    let http = http_listener.as_ref().map(|(_, bound)| *bound);

    let reporter = Reporter::new(
        EngineId(index),
        reports.clone(),
        store.clone(),
        storage.capacity != 0,
    );
    let mut control = swarm.behaviour().streams.new_control();
    let mut accept = |protocol: libp2p::StreamProtocol| {
        control
            .accept(protocol.clone())
            .map_err(|source| Error::Protocol { protocol, source })
    };
    let incoming = Incoming {
        ingest: accept(vodmesh_proto::ingest::PROTOCOL)?,
        copy: accept(vodmesh_proto::copy::PROTOCOL)?,
        stream: accept(vodmesh_proto::stream::PROTOCOL)?,
    };
    let (allowed, allowed_rx) = watch::channel(HashMap::new());
    let mut copier = copy::Copier::new(
        (&copier_key, swarm.behaviour().streams.new_control()),
        store.clone(),
        allowed,
        reporter.clone(),
        token,
    );
    copier.metrics = metrics.clone();
    copier.observer = observer.clone();
    let mut copy_server = copy::Server::new(
        peer_id,
        store.clone(),
        allowed_rx,
        trusted.clone(),
        reporter.clone(),
        storage.copy_rate,
    );
    copy_server.observer = observer;
    let streams = stream::StreamService {
        store: store.clone(),
        reporter: reporter.clone(),
        load: stream::Load::new(storage.max_streams, EngineId(index), reports.clone()),
        trusted,
        handovers: stream::Handovers::default(),
        per_peer: crate::peer_slots::PeerSlots::new(stream::MAX_STREAMS_PER_PEER),
        embargoes,
        arriving: stream::Arriving::default(),
        preopened: stream::Preopened::default(),
    };

    let http_edge = http_listener.map(|(listener, _)| {
        let edge = http::Edge {
            store: store.clone(),
            reporter: reporter.clone(),
            load: streams.load.clone(),
            trusted: streams.trusted.clone(),
            embargoes: streams.embargoes.clone(),
            per_subscriber: crate::peer_slots::PeerSlots::new(http::MAX_PER_SUBSCRIBER),
            stop: CancellationToken::new(),
            tls: net.tls.clone(),
            preopened: streams.preopened.clone(),
        };
        (listener, edge)
    });
    let https = http.is_some() && net.tls.is_some();
    let ready = EngineEvent::Ready {
        peer_id,
        addrs: addrs.clone(),
        http,
        https,
        bulk,
    };
    reporter.send(ready).await;
    let (commands, commands_rx) = mpsc::channel::<EngineCommand>(64);
    let blade = Blade {
        index,
        swarm,
        store: store.clone(),
        reporter,
        copier,
        expectations: Expectations::default(),
        handovers: streams.handovers.clone(),
        embargoes: streams.embargoes.clone(),
        arriving: streams.arriving.clone(),
        preopened: streams.preopened.clone(),
        jobs: JoinSet::new(),
        preloads: Arc::new(tokio::sync::Semaphore::new(MAX_PRELOADS)),
    };
    let services = Services {
        incoming,
        copy_server,
        streams,
        metrics,
        http: http_edge,
        bulk: (bulk_listener, acceptor),
        scrub: storage.scrub_pace,
    };
    let task = tokio::spawn(blade.run(services, commands_rx, events, shutdown));
    Ok(EngineHandle {
        index,
        peer_id,
        addrs,
        http,
        https,
        bulk,
        store,
        commands,
        task,
    })
}

/// The inbound streams of each protocol an engine serves.
struct Incoming {
    ingest: vodmesh_proto::net::streams::IncomingStreams,
    copy: vodmesh_proto::net::streams::IncomingStreams,
    stream: vodmesh_proto::net::streams::IncomingStreams,
}

/// What the accept loops serve with.
struct Services {
    incoming: Incoming,
    copy_server: copy::Server,
    streams: stream::StreamService,
    metrics: crate::metrics::Metrics,
    /// The HTTP edge's listener and state, with `--http`.
    http: Option<(tokio::net::TcpListener, http::Edge)>,
    /// The bulk listener and its TLS handshakes.
    bulk: (tokio::net::TcpListener, vodmesh_proto::net::bulk::Acceptor),
    /// The background scrub's pace.
    scrub: scrub::Pace,
}

/// The running engine: its swarm and store, and the tasks it owns.
struct Blade {
    index: usize,
    swarm: Swarm<EngineBehaviour>,
    store: SegmentStore,
    reporter: Reporter,
    copier: copy::Copier,
    expectations: Expectations,
    handovers: stream::Handovers,
    /// Programs not to stream yet, shared with the stream tasks.
    embargoes: embargo::Embargoes,
    /// Copies ordered lately, which a console sent here may wait for.
    arriving: stream::Arriving,
    /// Readers preloads opened, for the streams that follow them.
    preopened: stream::Preopened,
    /// Copies, preloads and delayed removals.
    jobs: JoinSet<()>,
    /// Preloads reading at once ([`MAX_PRELOADS`]).
    preloads: Arc<tokio::sync::Semaphore>,
}

/// Preloads an engine reads at once: every `Locate` a console sends names one, and any console
/// may send many; past this a preload is skipped (it only warms the cache).
const MAX_PRELOADS: usize = 4;

impl Blade {
    /// Starts the accept loop of every protocol, owned by `loops`, all ending on `stop`.
    fn serve(&self, services: Services, stop: &CancellationToken, loops: &mut JoinSet<()>) {
        let Services {
            incoming,
            copy_server,
            streams,
            metrics,
            http,
            bulk: (bulk_listener, acceptor),
            scrub,
        } = services;
        loops.spawn(scrub::run(
            self.index,
            self.store.clone(),
            scrub,
            stop.clone(),
        ));
        if let Some((listener, mut edge)) = http {
            // Its bodies end with the engine: a stopped engine serves nothing more.
            edge.stop = stop.child_token();
            loops.spawn(http::serve(listener, edge));
        }
        loops.spawn(bulk::serve(
            (self.index, metrics.clone()),
            bulk_listener,
            acceptor,
            (streams.clone(), copy_server.clone()),
            stop.clone(),
        ));
        let index = self.index;
        let (store, expectations, reporter) = (
            self.store.clone(),
            self.expectations.clone(),
            self.reporter.clone(),
        );
        loops.spawn(accept::each(
            incoming.ingest,
            stop.clone(),
            move |peer, s| {
                let push = ingest::Push {
                    store: store.clone(),
                    expectations: expectations.clone(),
                    reporter: reporter.clone(),
                    metrics: metrics.clone(),
                };
                async move {
                    if let Err(e) = push.handle(peer, s).await {
                        tracing::debug!(index, %peer, error = %e, "ingest stream failed");
                    }
                }
            },
        ));
        loops.spawn(accept::each(incoming.copy, stop.clone(), move |peer, s| {
            let server = copy_server.clone();
            async move { server.serve(peer, s).await }
        }));
        loops.spawn(accept::each(
            incoming.stream,
            stop.clone(),
            move |peer, s| {
                let service = streams.clone();
                async move {
                    if let Err(e) = service.handle(peer, s).await {
                        tracing::debug!(index, %peer, error = %e, "stream ended early");
                    }
                }
            },
        ));
    }

    /// The engine's loop, until the director says `Stop` or the station stops; then every
    /// task of the engine ends before its store shuts down.
    async fn run(
        mut self,
        services: Services,
        mut commands: mpsc::Receiver<EngineCommand>,
        mut events: mpsc::Receiver<store::Event>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let index = self.index;
        let stop = CancellationToken::new();
        let mut loops = JoinSet::new();
        self.serve(services, &stop, &mut loops);
        let mut usage = tokio::time::interval(USAGE_EVERY);
        let mut last_usage = Vec::new();
        loop {
            tokio::select! {
                _ = usage.tick() => {
                    let disks = self.reporter.disk_usage();
                    if disks != last_usage {
                        last_usage.clone_from(&disks);
                        self.reporter.send(EngineEvent::Usage { disks }).await;
                    }
                }
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
                event = self.swarm.select_next_some() => {
                    if let SwarmEvent::IncomingConnectionError { error, .. } = &event {
                        tracing::debug!(index, %error, "engine: incoming connection failed");
                    }
                }
                Some(_) = self.jobs.join_next(), if !self.jobs.is_empty() => {}
                Some(cmd) = commands.recv() => {
                    if matches!(cmd, EngineCommand::Stop) {
                        break;
                    }
                    self.on_command(cmd).await;
                }
                Some(event) = events.recv() => {
                    let segment = match event {
                        store::Event::Dropped { segment, reason } => {
                            tracing::warn!(index, %segment, ?reason, "segment dropped");
                            segment
                        }
                        store::Event::Evicted { segment } => {
                            tracing::debug!(index, %segment, "segment evicted");
                            segment
                        }
                    };
                    self.reporter.dropped(segment).await;
                }
            }
        }
        stop.cancel();
        while loops.join_next().await.is_some() {}
        self.jobs.shutdown().await;
        if let Err(e) = self.store.shutdown().await {
            tracing::warn!(index, error = %e, "engine store did not shut down cleanly");
        }
        self.reporter.send(EngineEvent::Down).await;
        tracing::info!(index, "engine stopped");
    }

    async fn on_command(&mut self, cmd: EngineCommand) {
        match cmd {
            EngineCommand::Fetch {
                segment,
                expect,
                sources,
                held_elsewhere,
                done,
            } => {
                self.arriving.ordered(segment);
                let job = copy::Job {
                    segment,
                    expect,
                    sources,
                    held_elsewhere,
                };
                self.copier
                    .fetch(&mut self.swarm, &mut self.jobs, job, done);
            }
            EngineCommand::AllowCopy { peers, until_ms } => self.copier.allow(peers, until_ms),
            EngineCommand::Handover { segment, console } => {
                if !self.handovers.hand_over(segment, console) {
                    tracing::debug!(%segment, %console, "handover: no such stream here");
                }
            }
            EngineCommand::Expect { segments } => self.expectations.expect(segments),
            EngineCommand::Preload { segment } => {
                // The kernel reads it into the page cache before the console asks. It is not
                // read through and hashed here: a verified stream's receiver checks every
                // group (and leaves this engine at a bad one), and raw reads are checked as
                // they are served, so a read-through would only read and hash it twice.
                let Ok(permit) = self.preloads.clone().try_acquire_owned() else {
                    tracing::debug!(%segment, "preload skipped: enough under way");
                    return;
                };
                let (store, preopened) = (self.store.clone(), self.preopened.clone());
                self.jobs.spawn(async move {
                    let Ok(reader) = store.open_read(segment).await else {
                        return;
                    };
                    reader.warm().await;
                    // Opened for the stream that follows (`stream::Preopened`), and closed
                    // after its time if that never comes.
                    preopened.keep(reader);
                    drop(permit);
                    tokio::time::sleep(stream::PREOPENED_FOR).await;
                    preopened.prune();
                });
            }
            // One durable commit for the whole program: this loop, and the swarm it polls,
            // wait on one fsync, not on one per segment.
            EngineCommand::Pin { segments } => {
                if let Err(e) = self.store.set_pinned_all(&segments, true).await {
                    tracing::warn!(segments = segments.len(), error = %e, "pin failed");
                }
            }
            EngineCommand::Remove { segments } => {
                // Withdrawn first: a push of one of them still in flight then finds its
                // announcement gone when it finishes, and drops what it wrote.
                self.expectations.withdraw(&segments);
                self.preopened.forget(&segments);
                // Removed before the next command is taken (an `Expect` of the same segments
                // may follow); only those being read wait, in the background.
                let busy = self.reporter.remove(segments).await;
                if !busy.is_empty() {
                    let reporter = self.reporter.clone();
                    self.jobs
                        .spawn(async move { reporter.remove_patiently(busy).await });
                }
            }
            // Taken by the loop itself.
            // Kept in the store before the next command: a restart keeps the embargo.
            EngineCommand::PublishAt { program, at_ms } => {
                let changes = (self.embargoes).set(program, at_ms, vodmesh_proto::time::now_ms());
                if !changes.is_empty()
                    && let Err(e) = self.store.set_embargoes(changes).await
                {
                    tracing::warn!(%program, error = %e, "publish time not kept in the store");
                }
            }
            EngineCommand::Stop => {}
        }
    }
}

/// How often an engine looks at its store's occupancy (and reports it when it changed).
const USAGE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("index", &self.index)
            .field("peer_id", &self.peer_id)
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}
