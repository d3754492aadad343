//! The engine process's side of the backplane: `vodmesh-node engine` attached to its
//! director, reconnecting whenever the link drops.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::{AsyncReadExt, StreamExt};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until, timeout};
use vodmesh_proto::codec::read_frame;
use vodmesh_proto::net::{build_swarm, peer_of};
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::{Audience, IssuerKey, TrustedIssuers};

use super::{
    DEAD_AFTER, Down, HEARTBEAT, MAX_FRAME, MAX_TOKEN, PROTOCOL, Up, WireCommand, reader, send,
};
use crate::auth::engines::TOKEN_FILE;
use crate::control::{EngineCommand, EngineReport};
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
}

/// A started engine process: its identity and addresses, and the task that keeps it attached.
pub struct EngineProcessHandle {
    /// The engine's peer id.
    pub peer_id: PeerId,
    /// Where it listens.
    pub addrs: Vec<Multiaddr>,
    /// Where its metrics are served (`EngineProcess::metrics`, once bound).
    pub metrics_addr: Option<std::net::SocketAddr>,
    task: tokio::task::JoinHandle<()>,
    engine: tokio::task::JoinHandle<()>,
}

impl EngineProcessHandle {
    /// Waits until `shutdown` (given to [`start_engine`]) stopped the engine and its link.
    pub async fn stopped(self) {
        let _ = self.task.await;
        let _ = self.engine.await;
    }
}

/// Starts an engine of its own and keeps it attached to its director until `shutdown`.
pub async fn start_engine(
    config: EngineProcess,
    shutdown: watch::Receiver<bool>,
) -> Result<EngineProcessHandle> {
    let director = peer_of(&config.director).with_context(|| {
        format!(
            "the director address {} does not end in /p2p/<peer id>",
            config.director
        )
    })?;
    std::fs::create_dir_all(&config.data)
        .with_context(|| format!("creating {}", config.data.display()))?;
    let key = identity::load_or_create(&config.data.join("identity.key"))?;
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
        max_streams: config.max_streams,
        copy_rate: 0,
    };
    let metrics = crate::metrics::Metrics::new();
    let metrics_listener = match config.metrics {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot serve metrics on {addr}"))?,
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
    let mut metrics_addr = None;
    if let Some(listener) = metrics_listener {
        metrics_addr = listener.local_addr().ok();
        // No registry here: an engine process serves its own counters, not the status page.
        let (registry, _) = vodmesh_registry::RegistryHandle::channel(1);
        let http = crate::metrics::Http {
            metrics: metrics.clone(),
            registry,
            local: handle.peer_id,
            director: false,
        };
        tokio::spawn(crate::metrics::serve(listener, http, shutdown.clone()));
    }

    // The link has a swarm of its own under the engine's identity: the director sees the
    // engine's peer id on the authenticated connection.
    let mut swarm = build_swarm(key, |_| libp2p_stream::Behaviour::new())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let control = swarm.behaviour().new_control();
    let (dial, mut dials) = mpsc::channel::<()>(1);
    let addr = config.director.clone();
    let mut stop = shutdown.clone();
    tokio::spawn(async move {
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
        },
    };
    let task = tokio::spawn(attach.run(shutdown));
    Ok(EngineProcessHandle {
        peer_id: handle.peer_id,
        addrs: handle.addrs,
        metrics_addr,
        task,
        engine: handle.task,
    })
}

/// The engine's side of the link, reconnecting until shutdown.
struct Attach {
    director: PeerId,
    addrs: Vec<Multiaddr>,
    control: libp2p_stream::Control,
    dial: mpsc::Sender<()>,
    engine: mpsc::Sender<EngineCommand>,
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
        match report {
            EngineReport::Streams { active, .. } => self.info.streams = *active,
            EngineReport::Stopped { bytes, .. } => self.metrics.streamed(*bytes),
            EngineReport::Usage { disks, .. } => {
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
                    let why = match self.attached(stream, &mut shutdown).await {
                        Ok(why) => why,
                        Err(e) => e,
                    };
                    self.info.up = false;
                    self.sync();
                    why
                }
                Ok(Err(e)) => format!("cannot reach the director: {e}"),
                Err(_) => "cannot reach the director: timed out".into(),
            };
            if *shutdown.borrow() {
                break;
            }
            tracing::warn!(director = %self.director, why, "not attached; retrying in 1 s");
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

    /// One attachment: returns why it ended.
    async fn attached(
        &mut self,
        stream: libp2p::Stream,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<String, String> {
        let (mut rd, mut wr) = stream.split();
        let e = |e: std::io::Error| e.to_string();
        send(
            &mut wr,
            &Up::Hello {
                addrs: self.addrs.clone(),
                max_streams: self.info.max_streams,
                capacity: self.info.capacity,
            },
        )
        .await
        .map_err(e)?;
        match timeout(DEAD_AFTER, read_frame::<_, Down>(&mut rd, MAX_FRAME)).await {
            Ok(Ok(Down::Welcome { index })) => {
                tracing::info!(director = %self.director, index, "attached to the director");
                self.info.up = true;
                self.sync();
            }
            Ok(Ok(Down::Refused(why))) => return Err(format!("the director refused: {why}")),
            Ok(Ok(other)) => return Err(format!("unexpected {other:?}")),
            Ok(Err(err)) => return Err(e(err)),
            Err(_) => return Err("no answer to Hello".into()),
        }
        if let Some(usage) = &self.last_usage {
            send(&mut wr, &Up::Report(usage.clone())).await.map_err(e)?;
        }
        let (mut down, reading) = reader::<_, Down>(rd);
        let (done_tx, mut done_rx) = mpsc::channel::<Up>(64);
        let mut beat = tokio::time::interval(HEARTBEAT);
        let mut deadline = Instant::now() + DEAD_AFTER;
        let why = loop {
            tokio::select! {
                _ = shutdown.changed() => break "the engine stops".to_string(),
                _ = sleep_until(deadline) => break "the director is silent".into(),
                _ = beat.tick() => {
                    if let Err(err) = send(&mut wr, &Up::Alive).await {
                        break e(err);
                    }
                }
                Some(done) = done_rx.recv() => {
                    if let Err(err) = send(&mut wr, &done).await {
                        break e(err);
                    }
                }
                report = self.reports.recv() => {
                    let Some(report) = report else { break "the engine stopped".into() };
                    if matches!(report, EngineReport::Usage { .. }) {
                        self.last_usage = Some(report.clone());
                    }
                    self.count(&report);
                    if let Err(err) = send(&mut wr, &Up::Report(report)).await {
                        break e(err);
                    }
                }
                msg = down.recv() => {
                    let Some(msg) = msg else { break "the director closed the link".into() };
                    deadline = Instant::now() + DEAD_AFTER;
                    let cmd = match msg {
                        Down::Command(cmd) => cmd,
                        Down::EngineToken(token) => {
                            self.take_token(token.into_vec());
                            continue;
                        }
                        Down::Welcome { .. } | Down::Refused(_) | Down::Alive => continue,
                    };
                    let cmd = self.command(cmd, &done_tx);
                    if self.engine.send(cmd).await.is_err() {
                        break "the engine stopped".into();
                    }
                }
            }
        };
        reading.abort();
        Ok(why)
    }

    fn command(&self, cmd: WireCommand, results: &mpsc::Sender<Up>) -> EngineCommand {
        match cmd {
            WireCommand::Expect { segments } => EngineCommand::Expect { segments },
            WireCommand::Preload { segment } => EngineCommand::Preload { segment },
            WireCommand::Pin { segments } => EngineCommand::Pin { segments },
            WireCommand::AllowCopy { peers, until_ms } => {
                EngineCommand::AllowCopy { peers, until_ms }
            }
            WireCommand::Handover { segment, console } => {
                EngineCommand::Handover { segment, console }
            }
            WireCommand::Stop => EngineCommand::Stop,
            WireCommand::Remove { segments } => EngineCommand::Remove { segments },
            WireCommand::Fetch {
                id,
                segment,
                expect,
                sources,
                held_elsewhere,
            } => {
                let (done, mut outcome) = mpsc::channel(1);
                let results = results.clone();
                tokio::spawn(async move {
                    if let Some((segment, result)) = outcome.recv().await {
                        let _ = results
                            .send(Up::FetchDone {
                                id,
                                segment,
                                result,
                            })
                            .await;
                    }
                });
                EngineCommand::Fetch {
                    segment,
                    expect,
                    sources,
                    held_elsewhere,
                    done,
                }
            }
        }
    }
}
