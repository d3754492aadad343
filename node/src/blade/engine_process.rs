//! The engine process's side of the blade link: `vodmesh-node engine` attached to its
//! director, reconnecting whenever the link drops.

use std::path::PathBuf;
use std::time::Duration;

use futures::{AsyncReadExt, StreamExt};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout};
use vodmesh_proto::blade::MAX_FRAME;
use vodmesh_proto::codec::read_frame;
use vodmesh_proto::net::{BuildError, build_swarm, peer_of};
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::{Audience, IssuerKey, TrustedIssuers};

use super::{DEAD_AFTER, Down, HEARTBEAT, MAX_TOKEN, PROTOCOL, Up, from_wire, reader, send};
use crate::auth::engines::TOKEN_FILE;
use crate::control::{EngineEvent, EngineReport};
use crate::engine::copy::TokenSlot;
use crate::{engine, identity};

/// How `vodmesh-node engine` runs an engine of its own.
#[derive(Clone, Debug)]
pub struct EngineProcess {
    /// Its director's address, ending in `/p2p/<peer id>`.
    pub director: Multiaddr,
    /// Data directory: identity (`DIR/identity.key`), store index, default segment dir.
    pub data: PathBuf,
    /// Segment directories, one per disk (default `DIR/segments`).
    pub disks: Vec<PathBuf>,
    /// Where the engine listens (ports as given: 0 lets the system choose).
    pub listen: Vec<Multiaddr>,
    /// Addresses other hosts reach it at that are on no interface of its host (`--announce`:
    /// NAT, a public address elsewhere); announced first.
    pub announce: Vec<Multiaddr>,
    /// Bytes of segments at most (0: bounded by the disks).
    pub capacity: u64,
    /// Concurrent streams at most.
    pub max_streams: u32,
    /// Issuers whose console tokens it accepts (and whose engine tokens it checks its own
    /// against).
    pub trust: Vec<IssuerKey>,
    /// Where to serve this engine's metrics (`/metrics`), if anywhere.
    pub metrics: Option<std::net::SocketAddr>,
    /// Where to serve segments over HTTP (`--http`), if anywhere.
    pub http: Option<std::net::SocketAddr>,
    /// TLS for `http` (`--tls-cert/--tls-key`): HTTPS, HTTP/2 by ALPN.
    pub tls: Option<crate::tls::Tls>,
}

/// Why an engine process did not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The director's address names no peer.
    #[error("the director address {0} does not end in /p2p/<peer id>")]
    DirectorAddress(Multiaddr),
    /// The data directory cannot be made.
    #[error("cannot create {}: {source}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another process has the data directory.
    #[error(transparent)]
    Locked(crate::data_dir::LockError),
    /// The engine's identity file cannot be read or made.
    #[error(transparent)]
    Identity(vodmesh_client::files::FileError),
    /// The metrics address cannot be bound.
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The engine itself did not start.
    #[error(transparent)]
    Engine(#[from] engine::Error),
    /// The swarm of the link did not build.
    #[error(transparent)]
    Swarm(#[from] BuildError),
}

/// A started engine process: its identity and addresses, and the tasks that keep it serving
/// and attached.
pub struct EngineProcessHandle {
    /// The engine's peer id.
    pub peer_id: PeerId,
    /// Where it listens.
    pub addrs: Vec<Multiaddr>,
    /// Where its metrics are served (`EngineProcess::metrics`, once bound).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Where it serves HTTP (`EngineProcess::http`, once bound).
    pub http_addr: Option<std::net::SocketAddr>,
    /// Whether it serves `http_addr` over TLS.
    pub https: bool,
    /// The data directory, this process's alone while the engine runs.
    _lock: crate::data_dir::DataLock,
    tasks: JoinSet<()>,
}

impl EngineProcessHandle {
    /// Waits until `shutdown` (given to [`start_engine`]) stopped the engine, its link and its
    /// metrics server.
    pub async fn stopped(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Starts an engine of its own and keeps it attached to its director until `shutdown`.
pub async fn start_engine(
    config: EngineProcess,
    shutdown: watch::Receiver<bool>,
) -> Result<EngineProcessHandle, Error> {
    let director =
        peer_of(&config.director).ok_or_else(|| Error::DirectorAddress(config.director.clone()))?;
    std::fs::create_dir_all(&config.data).map_err(|source| Error::DataDir {
        path: config.data.clone(),
        source,
    })?;
    let lock = crate::data_dir::DataLock::take(&config.data).map_err(Error::Locked)?;
    let key = identity::load_or_create_beside(
        &config.data.join("identity.key"),
        crate::data_dir::ENGINE_STATE,
    )
    .map_err(Error::Identity)?;
    let disks = if config.disks.is_empty() {
        vec![config.data.join("segments")]
    } else {
        config.disks.clone()
    };
    let storage = engine::EngineStorage {
        index: config.data.join("store.redb"),
        disks,
        capacity: config.capacity,
        pin_all: false,
        scrub: false,
        scrub_pace: engine::scrub::Pace::default(),
        max_streams: config.max_streams,
        copy_rate: 0,
    };
    let metrics = crate::metrics::Metrics::new();
    let metrics_listener = match config.metrics {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Metrics { addr, source })?,
        ),
        None => None,
    };
    let (reports, reports_rx) = mpsc::channel(256);
    let trusted: TrustedIssuers = config.trust.iter().copied().collect();
    // Filled in when the director forwards this engine's token (an enrolled station).
    let token = TokenSlot::default();
    let auth = engine::EngineAuth {
        trusted: trusted.clone(),
        token: token.clone(),
    };
    let net = engine::EngineNet {
        listen: config.listen.clone(),
        announce: config.announce.clone(),
        http: config.http,
        tls: config.tls.clone(),
    };
    let handle = engine::start(
        0,
        key.clone(),
        &net,
        storage,
        auth,
        reports,
        metrics.clone(),
        // An engine process logs its events; nobody in its process subscribes.
        crate::events::Observer::new(),
        shutdown.clone(),
    )
    .await?;
    let mut tasks = JoinSet::new();
    let engine_task = handle.task;
    tasks.spawn(async move {
        let _ = engine_task.await;
    });
    let mut metrics_addr = None;
    if let Some(listener) = metrics_listener {
        metrics_addr = listener.local_addr().ok();
        // No registry here: an engine process serves its own counters, not the status page.
        let (registry, _) = vodmesh_registry::RegistryHandle::channel(1);
        let http = crate::metrics::Http {
            metrics: metrics.clone(),
            walks: vodmesh_registry::RecentWalk::new(registry.clone(), handle.peer_id),
            registry,
            local: handle.peer_id,
            director: false,
            // Ready once attached: the one engine up, as its director sees it.
            ready: crate::metrics::Ready {
                bootstrap: false,
                engines: 1,
                tokens: None,
                draining: watch::channel(false).1,
            },
            history: Default::default(),
        };
        tasks.spawn(crate::metrics::serve(listener, http, shutdown.clone()));
    }

    // The link has a swarm of its own under the engine's identity: the director sees the
    // engine's peer id on the authenticated connection.
    let mut swarm = build_swarm(key, |_| vodmesh_proto::net::streams::Behaviour::new())?;
    let control = swarm.behaviour().new_control();
    let (dial, mut dials) = mpsc::channel::<()>(1);
    let addr = config.director.clone();
    let mut stop = shutdown.clone();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = swarm.select_next_some() => {}
                Some(()) = dials.recv() => {
                    if let Err(e) = swarm.dial(addr.clone()) {
                        tracing::debug!(error = %e, "dialing the director");
                    }
                }
                _ = stop.changed() => break,
            }
        }
    });
    let attach = Attach {
        director,
        addrs: handle.addrs.clone(),
        control,
        dial,
        engine: handle.commands.clone(),
        reports: reports_rx,
        last_usage: None,
        metrics,
        token,
        trusted,
        token_file: config.data.join(TOKEN_FILE),
        activity: Default::default(),
        info: vodmesh_proto::station::EngineInfo {
            peer_id: handle.peer_id,
            addrs: handle.addrs.clone(),
            streams: 0,
            max_streams: config.max_streams,
            used: 0,
            capacity: config.capacity,
            up: false,
            disks: Vec::new(),
            http: handle.http,
            https: handle.https,
            bulk: handle.bulk,
        },
    };
    tasks.spawn(attach.run(shutdown));
    Ok(EngineProcessHandle {
        peer_id: handle.peer_id,
        addrs: handle.addrs,
        metrics_addr,
        http_addr: handle.http,
        https: handle.https,
        tasks,
        _lock: lock,
    })
}

/// Why an attachment to the director ended (one line for the log).
#[derive(Debug, thiserror::Error)]
enum Detached {
    /// The director could not be reached.
    #[error("cannot reach the director: {0}")]
    Unreachable(String),
    /// The link broke.
    #[error("the link broke: {0}")]
    Io(#[from] std::io::Error),
    /// The director refused the engine.
    #[error("the director refused: {0}")]
    Refused(String),
    /// The director answered `Hello` with something else than `Welcome`.
    #[error("the director answered Hello with {0}")]
    Unexpected(String),
    /// The director did not answer `Hello`.
    #[error("no answer to Hello")]
    NoWelcome,
    /// The director went silent.
    #[error("the director is silent")]
    Silent,
    /// The director closed the link.
    #[error("the director closed the link")]
    Closed,
    /// The engine stopped (or the process stops).
    #[error("the engine stops")]
    Stopping,
}

/// The engine's side of the link, reconnecting until shutdown.
struct Attach {
    director: PeerId,
    addrs: Vec<Multiaddr>,
    control: vodmesh_proto::net::streams::Control,
    dial: mpsc::Sender<()>,
    engine: mpsc::Sender<crate::control::EngineCommand>,
    reports: mpsc::Receiver<EngineReport>,
    /// The last storage report, sent again on every attach.
    last_usage: Option<EngineReport>,
    /// This engine's own metrics (`vodmesh-node engine --metrics`).
    metrics: crate::metrics::Metrics,
    /// Its engine token, as the director forwards it; the copies it makes present it.
    token: TokenSlot,
    /// The issuers its engine token must come from.
    trusted: TrustedIssuers,
    /// Where the token is kept for the operator to see (`DATA/engine.token`).
    token_file: PathBuf,
    /// What it counted of its streams, as a director would.
    activity: vodmesh_proto::director::Activity,
    /// Its load, storage and link state, as a director would see it.
    info: vodmesh_proto::station::EngineInfo,
}

impl Attach {
    /// Counts `report` into the engine's own metrics, as a director counts its engines'.
    fn count(&mut self, report: &EngineReport) {
        report.count(&mut self.activity);
        match &report.event {
            EngineEvent::Streams { active } => self.info.streams = *active,
            EngineEvent::Stopped { bytes, .. } => self.metrics.streamed(*bytes),
            EngineEvent::Usage { disks } => {
                self.info.used = disks.iter().map(|d| d.used).sum();
                self.info.disks.clone_from(disks);
            }
            _ => {}
        }
        self.sync();
    }

    fn sync(&self) {
        self.metrics
            .sync_director(&self.activity, &[Some(self.info.clone())]);
    }

    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            let _ = self.dial.try_send(());
            let opened = timeout(
                Duration::from_secs(5),
                self.control.open_stream(self.director, PROTOCOL),
            )
            .await;
            let why = match opened {
                Ok(Ok(stream)) => {
                    let why = self.attached(stream, &mut shutdown).await;
                    self.info.up = false;
                    self.sync();
                    why
                }
                Ok(Err(e)) => Detached::Unreachable(e.to_string()),
                Err(_) => Detached::Unreachable("timed out".into()),
            };
            if *shutdown.borrow() {
                break;
            }
            tracing::warn!(director = %self.director, why = %why, "not attached; retrying in 1 s");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Keeps the engine token the director forwarded if it is this engine's: for copies,
    /// bound to this engine, from an issuer it trusts (when it trusts none, the engines it
    /// copies from still check the token).
    fn take_token(&self, token: Vec<u8>) {
        if token.len() > MAX_TOKEN {
            tracing::warn!(
                len = token.len(),
                "the director forwarded an oversized engine token"
            );
            return;
        }
        if !self.trusted.is_empty()
            && let Err(e) =
                (self.trusted).verify(&token, now_ms(), Audience::Engine, None, &self.info.peer_id)
        {
            tracing::warn!(cause = %e, "the director forwarded an engine token this engine refuses");
            return;
        }
        // In use before the file says so (tests and operators wait for the file).
        if let Ok(mut slot) = self.token.lock() {
            *slot = Some(token.clone());
        }
        let file = &self.token_file;
        if let Err(e) = vodmesh_client::files::write_private(file, &token, "engine token") {
            tracing::warn!(cause = %e, "cannot write the engine token file");
        }
        tracing::info!("engine token received from the director");
    }

    /// Says `Hello` and waits for the director's `Welcome`.
    async fn hello(
        &mut self,
        rd: &mut (impl futures::AsyncRead + Unpin),
        wr: &mut (impl futures::AsyncWrite + Unpin),
    ) -> Result<(), Detached> {
        let hello = Up::Hello {
            addrs: self.addrs.clone(),
            max_streams: self.info.max_streams,
            capacity: self.info.capacity,
            http: self.info.http,
            https: self.info.https,
            bulk: self.info.bulk,
        };
        send(wr, &hello).await?;
        match timeout(DEAD_AFTER, read_frame::<_, Down>(rd, MAX_FRAME)).await {
            Ok(Ok(Down::Welcome { index })) => {
                tracing::info!(director = %self.director, index, "attached to the director");
                self.info.up = true;
                self.sync();
                Ok(())
            }
            Ok(Ok(Down::Refused(why))) => Err(Detached::Refused(why)),
            Ok(Ok(other)) => Err(Detached::Unexpected(format!("{other:?}"))),
            Ok(Err(e)) => Err(Detached::Io(e)),
            Err(_) => Err(Detached::NoWelcome),
        }
    }

    /// One attachment: returns why it ended.
    async fn attached(
        &mut self,
        stream: libp2p::Stream,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Detached {
        let (mut rd, mut wr) = stream.split();
        if let Err(why) = self.hello(&mut rd, &mut wr).await {
            return why;
        }
        if let Some(usage) = &self.last_usage
            && let Err(e) = send(&mut wr, &Up::Report(usage.clone())).await
        {
            return e.into();
        }
        let (mut down, _reading) = reader::<_, Down>(rd);
        // The fetches in flight, each waiting for its outcome; they end with the attachment
        // (the director has failed them already when the link is gone).
        let mut fetches: JoinSet<Option<Up>> = JoinSet::new();
        let mut beat = tokio::time::interval(HEARTBEAT);
        let mut deadline = Instant::now() + DEAD_AFTER;
        loop {
            let up = tokio::select! {
                _ = shutdown.changed() => return Detached::Stopping,
                _ = sleep_until(deadline) => return Detached::Silent,
                _ = beat.tick() => Up::Alive,
                Some(done) = fetches.join_next(), if !fetches.is_empty() => {
                    let Ok(Some(done)) = done else { continue };
                    done
                }
                report = self.reports.recv() => {
                    let Some(report) = report else { return Detached::Stopping };
                    if matches!(report.event, EngineEvent::Usage { .. }) {
                        self.last_usage = Some(report.clone());
                    }
                    self.count(&report);
                    Up::Report(report)
                }
                msg = down.recv() => {
                    let Some(msg) = msg else { return Detached::Closed };
                    deadline = Instant::now() + DEAD_AFTER;
                    let cmd = match msg {
                        Down::Command(cmd) => cmd,
                        Down::EngineToken(token) => {
                            self.take_token(token.into_vec());
                            continue;
                        }
                        Down::Welcome { .. } | Down::Refused(_) | Down::Alive => continue,
                    };
                    let cmd = from_wire(cmd, |id| {
                        let (done, mut outcome) = mpsc::channel(1);
                        fetches.spawn(async move {
                            let (segment, result) = outcome.recv().await?;
                            Some(Up::FetchDone { id, segment, result })
                        });
                        done
                    });
                    if self.engine.send(cmd).await.is_err() {
                        return Detached::Stopping;
                    }
                    continue;
                }
            };
            if let Err(e) = send(&mut wr, &up).await {
                return e.into();
            }
        }
    }
}
