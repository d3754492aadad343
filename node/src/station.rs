//! A station: one director and its engines, started and stopped together, and what they
//! share: the station's metrics and its [`Observer`] of events.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libp2p::{Multiaddr, PeerId};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use vodmesh_proto::station::{EngineInfo, Roles, StationRecord};
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::{Claims, IssuerKey, MAX_TOKEN, TokenError, TrustedIssuers};
use vodmesh_registry::{RegistryError, RegistryHandle, WalkLimits};

use crate::auth::engines::{self, EngineTokens};
use crate::config::StationConfig;
pub use crate::events::{Event, Kind, Observer};
use crate::metrics::Metrics;
use crate::nodefile::{NodeFile, PeerEntry};
use crate::{auth, data_dir, director, engine, identity};

/// A running station.
#[derive(Debug)]
pub struct Station {
    /// The director.
    pub director: PeerEntry,
    /// The engines, in index order.
    pub engines: Vec<PeerEntry>,
    registry: RegistryHandle,
    issuer: Option<IssuerKey>,
    trusted: TrustedIssuers,
    engine_tokens: EngineTokens,
    engine_commands: Vec<mpsc::Sender<crate::control::EngineCommand>>,
    metrics: Metrics,
    observer: Observer,
    metrics_addr: Option<SocketAddr>,
    draining: watch::Sender<bool>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Set when the director's loop panicked.
    failed: watch::Receiver<Option<String>>,
    /// The data directory, this process's alone while the station runs.
    _lock: data_dir::DataLock,
}

/// The identity file of engine `index` under the data directory.
pub fn engine_identity_path(data: &Path, index: usize) -> PathBuf {
    data.join("engines")
        .join(index.to_string())
        .join("identity.key")
}

/// Where engine `index` of a station configured by `config` keeps its segments: a directory
/// of its own on every `--disk` (default `DATA/engines/<index>/segments`) and its index at
/// `DATA/engines/<index>/store.redb`.
pub fn engine_storage(config: &StationConfig, index: usize) -> engine::EngineStorage {
    let engine_dir = config.data.join("engines").join(index.to_string());
    let disks = if config.disks.is_empty() {
        vec![engine_dir.join("segments")]
    } else {
        config
            .disks
            .iter()
            .map(|d| d.join(format!("engine-{index}")))
            .collect()
    };
    engine::EngineStorage {
        index: engine_dir.join("store.redb"),
        disks,
        capacity: config.capacity,
        pin_all: config.home,
        scrub: config.scrub,
        scrub_pace: config.scrub_pace,
        max_streams: config.max_streams,
        copy_rate: u64::from(config.copy_rate_mbps) * 1_000_000 / 8,
    }
}

/// Why a station did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory cannot be made.
    #[error("creating data directory {path}", path = path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another process has the data directory.
    #[error(transparent)]
    Locked(#[from] data_dir::LockError),
    /// Engines that ran under the data directory would not run now.
    #[error(transparent)]
    EnginesLeftOut(#[from] data_dir::EnginesLeftOut),
    /// An identity file cannot be read or made.
    #[error(transparent)]
    Identity(#[from] vodmesh_client::files::FileError),
    /// An address cannot be listened on or announced.
    #[error(transparent)]
    Listen(#[from] crate::ListenError),
    /// The `--enroll` token file cannot be used.
    #[error("enrollment token {path}: {why}", path = path.display())]
    EnrollToken {
        /// The file.
        path: PathBuf,
        /// Why.
        why: EnrollTokenError,
    },
    /// The auth server did not open (`--auth`), or did not certify its own station.
    #[error("the auth server")]
    Auth(#[from] auth::Error),
    /// The auth server's opening did not finish.
    #[error("opening the auth server")]
    AuthTask(#[from] tokio::task::JoinError),
    /// An engine did not start.
    #[error("starting engine {index}")]
    Engine {
        /// The engine.
        index: usize,
        /// Why.
        #[source]
        source: engine::Error,
    },
    /// The `--metrics` address cannot be bound.
    #[error("cannot serve metrics on {addr}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The `--http` address cannot be bound.
    #[error("cannot serve HTTP on {addr}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The director did not start.
    #[error(transparent)]
    Director(#[from] director::StartError),
    /// The backplane protocol was taken (a bug, not an operator's error).
    #[error("registering the backplane protocol")]
    Backplane(#[from] vodmesh_proto::net::streams::AlreadyRegistered),
    /// `DATA/node.json` cannot be written.
    #[error(transparent)]
    NodeFile(#[from] crate::nodefile::Error),
}

/// Why an `--enroll` token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EnrollTokenError {
    /// It cannot be read.
    #[error(transparent)]
    Read(#[from] std::io::Error),
    /// It is larger than any token.
    #[error("not a token ({0} bytes)")]
    TooLarge(u64),
    /// It does not decode as a token.
    #[error("not a vodmesh token ({0})")]
    NotAToken(String),
    /// It is made out to another station.
    #[error(
        "it is for station {subject}, but this station is {station}: enroll this one (vodmesh enroll --station {station})"
    )]
    OtherStation {
        /// Whom it is for.
        subject: Box<PeerId>,
        /// This station.
        station: Box<PeerId>,
    },
}

/// Why an engine cannot be stopped.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    /// The station has no such engine.
    #[error("no engine {0}")]
    NoEngine(usize),
    /// It stopped already.
    #[error("engine {0} has already stopped")]
    Stopped(usize),
}

impl Station {
    /// Starts a station as `config` says, writes `DATA/node.json`, and returns once the
    /// director and every engine listen.
    pub async fn start(mut config: StationConfig) -> Result<Self, StartError> {
        std::fs::create_dir_all(&config.data).map_err(|source| StartError::DataDir {
            path: config.data.clone(),
            source,
        })?;
        let lock = data_dir::DataLock::take(&config.data)?;
        let director_key = identity::load_or_create_beside(
            &config.data.join("identity.key"),
            data_dir::DIRECTOR_STATE,
        )?;
        data_dir::check_engines(&config.data, config.engines)?;
        // Every identity before anything starts: a lost one stops the start at once.
        let engine_ids = (0..config.engines)
            .map(|i| {
                let path = engine_identity_path(&config.data, i);
                identity::load_or_create_beside(&path, data_dir::ENGINE_STATE)
                    .map(|key| (path, key))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for addr in &config.announce {
            crate::listen::announced(addr, director_key.public().to_peer_id())?;
        }
        let enroll_token = match &config.enroll {
            Some(path) => Some(
                read_enroll_token(path, director_key.public().to_peer_id()).map_err(|why| {
                    StartError::EnrollToken {
                        path: path.clone(),
                        why,
                    }
                })?,
            ),
            None => None,
        };
        let auth_server = match config.auth {
            true => Some(open_auth(&config, director_key.public().to_peer_id()).await?),
            false => None,
        };
        let issuer = auth_server.as_ref().map(|s| s.issuer_key());
        let trusted: TrustedIssuers = config.trust.iter().copied().chain(issuer).collect();
        if trusted.is_empty() {
            tracing::warn!(
                "no trusted token issuer (no --trust, not --auth): this station will serve no stream and no copy"
            );
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (draining, _) = watch::channel(false);
        let (metrics, observer) = (Metrics::new(), Observer::new());
        // Room for every engine's start-up reports (ready, then its store's figures), queued
        // before the director reads any.
        let (reports, reports_rx) = mpsc::channel(64 + 2 * config.engines);

        let mut engines = Vec::with_capacity(config.engines);
        let token_slots: Vec<engine::copy::TokenSlot> =
            (0..config.engines).map(|_| Default::default()).collect();
        let mut engine_keys = Vec::with_capacity(config.engines);
        for (index, (slot, (path, key))) in token_slots.iter().zip(engine_ids).enumerate() {
            engine_keys.push(engines::Engine::InProcess {
                key: key.clone(),
                dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            });
            let storage = engine_storage(&config, index);
            let net = engine::EngineNet {
                listen: crate::listen::engine_listen(&config.listen, index)?,
                announce: crate::listen::engine_announce(&config.announce, index)?,
                // `--engine-http` i, else the `--http` host at a port of its own.
                http: (config.engine_http.get(index).copied())
                    .or_else(|| config.http.map(|d| SocketAddr::new(d.ip(), 0))),
                tls: config.http_tls.clone(),
            };
            let handle = engine::start(
                index,
                key,
                &net,
                storage,
                engine::EngineAuth {
                    trusted: trusted.clone(),
                    token: slot.clone(),
                },
                reports.clone(),
                metrics.clone(),
                observer.clone(),
                shutdown_rx.clone(),
            )
            .await
            .map_err(|source| StartError::Engine { index, source })?;
            engines.push(handle);
        }
        // The director starts knowing its engines and what their stores hold (reconciled at
        // open). Their start-up reports stay queued for it: dropping them once lost an
        // engine's only report of its store's figures, and it showed 0 bytes stored after
        // every restart until the figures changed.
        let infos: Vec<EngineInfo> = engines
            .iter()
            .map(|e| {
                let disks = engine::disk_usage(&e.store, config.capacity != 0);
                EngineInfo {
                    peer_id: e.peer_id,
                    addrs: e.addrs.clone(),
                    streams: 0,
                    max_streams: config.max_streams,
                    used: vodmesh_proto::station::used_on(&disks),
                    capacity: config.capacity,
                    up: true,
                    disks,
                    http: e.http,
                    https: e.https,
                    bulk: e.bulk,
                }
            })
            .collect();
        let data = config.data.clone();
        // Bound before the director starts, so that its record names the port it got.
        let http_listener = match config.http {
            Some(addr) => {
                let listener = (tokio::net::TcpListener::bind(addr).await)
                    .map_err(|source| StartError::Http { addr, source })?;
                let bound =
                    (listener.local_addr()).map_err(|source| StartError::Http { addr, source })?;
                config.http = Some(bound);
                Some((listener, trusted.clone(), config.http_tls.clone()))
            }
            None => None,
        };
        // Bound before the director starts, so a taken port fails the start, not later.
        let metrics_listener = match config.metrics_addr {
            Some(addr) => Some((
                (tokio::net::TcpListener::bind(addr).await)
                    .map_err(|source| StartError::Metrics { addr, source })?,
                addr,
            )),
            None => None,
        };
        // Engine processes ask for no token themselves: the director asks for them.
        engine_keys.extend(
            (config.engine_peers.iter()).map(|peer| engines::Engine::Process { peer: *peer }),
        );
        let mut commands: Vec<_> = engines.iter().map(|e| e.commands.clone()).collect();
        // A slot per engine process allowed to attach (mode b), after the in-process engines.
        let mut slots = Vec::with_capacity(config.engine_peers.len());
        for (i, peer) in config.engine_peers.iter().enumerate() {
            let (tx, rx) = mpsc::channel(64);
            commands.push(tx);
            slots.push(crate::blade::Bay {
                peer: *peer,
                engine: crate::control::EngineId(config.engines + i),
                commands: Arc::new(tokio::sync::Mutex::new(rx)),
            });
        }
        let engine_commands = commands.clone();
        // What `/readyz` needs of the configuration, before the director takes it.
        let ready = crate::metrics::Ready {
            bootstrap: !config.bootstrap.is_empty(),
            engines: commands.len(),
            tokens: None,
            draining: draining.subscribe(),
        };
        let tokens_needed = config.auth || config.enroll.is_some();
        let engines_of_director = director::Engines {
            known: infos,
            commands,
            reports: reports_rx,
        };
        // The station's certificate, once the auth server (or, on the auth station, its own
        // issuer) signs it: the director puts it in its record.
        let roles = Roles {
            home: config.home,
            content_manager: config.content_manager,
            auth: config.auth,
        };
        // The auth station certifies itself before its first record goes out, so that the
        // first console or tool to ask finds a certified auth server.
        let own = match &auth_server {
            Some(server) => {
                Some(server.certify(director_key.public().to_peer_id(), roles, now_ms())?)
            }
            None => None,
        };
        let (certificate, certificate_rx) = watch::channel(own);
        let handles = director::Handles {
            metrics: metrics.clone(),
            observer: observer.clone(),
            auth: auth_server.clone(),
            draining: draining.clone(),
            certificate: certificate_rx,
            http: http_listener,
        };
        let membership = config.data.join(engines::MEMBERSHIP_FILE);
        let http_addr = config.http;
        let http_tls = config.http_tls.is_some();
        let dir = director::start(
            director_key.clone(),
            config,
            engines_of_director,
            handles,
            shutdown_rx.clone(),
        )
        .await?;
        // The auth station enrolls its own engines; another station enrolls with its token.
        let source = match (auth_server, enroll_token) {
            (Some(server), _) => Some(engines::Source::Local {
                server,
                station: dir.peer_id,
                roles,
            }),
            (None, Some(token)) => Some(engines::Source::Remote {
                registry: dir.registry.clone(),
                station: director_key,
                token,
                membership,
            }),
            (None, None) => None,
        };
        let mut extra_tasks = Vec::new();
        let engine_tokens = match source {
            Some(source) => {
                let (tokens, task) =
                    engines::spawn(source, engine_keys, certificate, shutdown_rx.clone());
                extra_tasks.push(task);
                tokens
            }
            None => EngineTokens::none(engine_keys.len()),
        };
        if !slots.is_empty() {
            let incoming = dir.blade.clone().accept(crate::blade::PROTOCOL)?;
            extra_tasks.push(tokio::spawn(crate::blade::serve(
                incoming,
                slots,
                reports.clone(),
                engine_tokens.clone(),
                shutdown_rx.clone(),
            )));
        }
        let mut metrics_addr = None;
        if let Some((listener, asked)) = metrics_listener {
            let addr = (listener.local_addr()).map_err(|source| StartError::Metrics {
                addr: asked,
                source,
            })?;
            metrics_addr = Some(addr);
            let http = crate::metrics::Http {
                metrics: metrics.clone(),
                registry: dir.registry.clone(),
                walks: vodmesh_registry::RecentWalk::new(dir.registry.clone(), dir.peer_id),
                local: dir.peer_id,
                director: true,
                ready: crate::metrics::Ready {
                    tokens: tokens_needed.then(|| engine_tokens.clone()),
                    ..ready
                },
                history: Default::default(),
            };
            extra_tasks.push(tokio::spawn(crate::metrics::sample(
                http.clone(),
                shutdown_rx.clone(),
            )));
            extra_tasks.push(tokio::spawn(crate::metrics::serve(
                listener,
                http,
                shutdown_rx.clone(),
            )));
        }
        // Hand each in-process engine its token as it arrives (and is refreshed), for its
        // copy requests.
        {
            let mut tokens = engine_tokens.clone();
            let mut stop = shutdown_rx;
            extra_tasks.push(tokio::spawn(async move {
                loop {
                    for (i, slot) in token_slots.iter().enumerate() {
                        if let Ok(mut t) = slot.lock() {
                            *t = tokens.get(i);
                        }
                    }
                    tokio::select! {
                        changed = tokens.changed() => if !changed { break },
                        _ = stop.wait_for(|stop| *stop) => break,
                    }
                }
            }));
        }

        let node = NodeFile {
            director: PeerEntry {
                peer_id: dir.peer_id,
                addrs: dir.addrs.clone(),
                http: http_addr,
                https: http_addr.is_some() && http_tls,
            },
            engines: engines
                .iter()
                .map(|e| PeerEntry {
                    peer_id: e.peer_id,
                    addrs: e.addrs.clone(),
                    http: e.http,
                    https: e.https,
                })
                .collect(),
            issuer: issuer.map(|k| k.to_string()),
        };
        node.write(&data)?;
        let mut tasks: Vec<JoinHandle<()>> = engines.into_iter().map(|e| e.task).collect();
        // The director's loop ends only at the shutdown, or by a panic: then the station is
        // a director-less shell (engines and metrics up, `/healthz` fine), which its process
        // must not outlive. `director_failed` tells it.
        let (director_failed, failed) = watch::channel(None);
        let director_task = dir.task;
        tasks.push(tokio::spawn(async move {
            if let Err(e) = director_task.await
                && e.is_panic()
            {
                let _ = director_failed.send(Some(e.to_string()));
            }
        }));
        tasks.extend(extra_tasks);
        Ok(Self {
            director: node.director,
            engines: node.engines,
            registry: dir.registry,
            issuer,
            trusted,
            engine_tokens,
            engine_commands,
            metrics,
            observer,
            metrics_addr,
            draining,
            shutdown,
            tasks,
            failed,
            _lock: lock,
        })
    }

    /// Waits until the director's loop ended by a panic (never, in a sound station): what it
    /// said.
    pub async fn director_failed(&self) -> String {
        let mut failed = self.failed.clone();
        match failed.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            Err(_) => std::future::pending().await,
        }
    }

    /// Takes engine `index` out of service: it stops serving and copying, and the director,
    /// told it is down, names it no more. Its streams break; consoles resume elsewhere.
    pub async fn stop_engine(&self, index: usize) -> Result<(), StopError> {
        (self.engine_commands.get(index))
            .ok_or(StopError::NoEngine(index))?
            .send(crate::control::EngineCommand::Stop)
            .await
            .map_err(|_| StopError::Stopped(index))
    }

    /// The director's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.director.peer_id
    }

    /// The director's first address (the one `vodmesh-node` prints): its first `--announce`
    /// address, else one of its host that other hosts reach, loopback only when it has none.
    pub fn addr(&self) -> &Multiaddr {
        // `listen_all` never returns an empty list, nor does `advertised` of one.
        &self.director.addrs[0]
    }

    /// The issuer key of this station's auth server, when it runs the auth role.
    pub fn issuer(&self) -> Option<IssuerKey> {
        self.issuer
    }

    /// The issuers whose tokens this station accepts (`--trust`, and its own when `--auth`).
    /// Empty: the station serves no stream and no copy.
    pub fn trusted(&self) -> &TrustedIssuers {
        &self.trusted
    }

    /// The engine tokens of this station's engines (none unless enrolled or the auth station).
    pub fn engine_tokens(&self) -> EngineTokens {
        self.engine_tokens.clone()
    }

    /// Where `/metrics` and the status page are served (`--metrics`), once bound.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Where the director serves standard players over HTTP (`--http`), once bound.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.director.http
    }

    /// The station's metrics (what `/metrics` serves).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Receives every event of this station's director and engines from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.observer.subscribe()
    }

    /// Also sends every event of this station from now on to `sink`
    /// ([`crate::events::sink`]). Stations that share a sink are heard in the order their
    /// events happened: a test follows a sequence across stations with it.
    pub fn send_events_to(&self, sink: &broadcast::Sender<Event>) {
        self.observer.send_to(sink);
    }

    /// The registry handle of this station's director.
    pub fn registry(&self) -> &RegistryHandle {
        &self.registry
    }

    /// Every live station of the swarm, as this station's director finds them.
    pub async fn swarm(&self) -> Result<Vec<StationRecord>, RegistryError> {
        let stations =
            vodmesh_registry::walk(&self.registry, self.peer_id(), WalkLimits::default()).await?;
        Ok(stations.into_iter().map(|(r, _)| r).collect())
    }

    /// Drains the station (SIGTERM's first step): from now on its director names none of
    /// its engines for a new stream (consoles go to other stations that hold the segment)
    /// and takes in no copy, replica or ingest, and `/readyz` answers 503. Returns once the
    /// streams running have ended, or after `timeout`, with the streams still running.
    pub async fn drain(&self, timeout: std::time::Duration) -> u64 {
        self.draining.send_replace(true);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let streams = self.streams();
            if streams == 0 || tokio::time::Instant::now() >= deadline {
                return streams;
            }
            // The engines' stream counts are gauges the director mirrors; no event says
            // "the last stream ended", so they are looked at again shortly.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Whether the station is draining ([`Station::drain`], or an admin's `Drain`).
    pub fn draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Streams the station's engines serve now, as its director last counted them.
    pub fn streams(&self) -> u64 {
        (self.metrics.engines().iter())
            .map(|e| u64::from(e.streams))
            .sum()
    }

    /// Stops the director and every engine and waits for them.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

/// Opens the auth server: the station's own identity and `--admin` peers are its admins.
async fn open_auth(config: &StationConfig, own: PeerId) -> Result<Arc<auth::Server>, StartError> {
    let mut auth_config = config.auth_config.clone();
    auth_config.admins.push(own);
    auth_config.station = Some(own);
    auth_config.admins.extend(config.admins.iter().copied());
    auth_config.trust.extend(config.trust.iter().copied());
    let data = config.data.clone();
    // Opening hashes a decoy password (argon2): keep it off the async workers.
    let server =
        tokio::task::spawn_blocking(move || auth::Server::open(&data, auth_config)).await??;
    Ok(Arc::new(server))
}

/// Reads an enrollment token file (`--enroll`), which must be made out to `station` (this
/// station's director): one for another peer would be refused by the auth server, and the
/// station would run on as a non-member whose engines copy nothing.
fn read_enroll_token(path: &Path, station: PeerId) -> Result<Vec<u8>, EnrollTokenError> {
    let size = std::fs::metadata(path)?.len();
    if size > MAX_TOKEN as u64 {
        return Err(EnrollTokenError::TooLarge(size));
    }
    let token = std::fs::read(path)?;
    let claims = Claims::peek(&token).map_err(|e| {
        EnrollTokenError::NotAToken(match e {
            TokenError::Malformed(e) => e.reason(),
            e => e.to_string(),
        })
    })?;
    let subject = claims.subject;
    if subject != station {
        let (subject, station) = (Box::new(subject), Box::new(station));
        return Err(EnrollTokenError::OtherStation { subject, station });
    }
    Ok(token)
}

impl Drop for Station {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}
