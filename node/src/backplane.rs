//! The backplane over the network (deployment mode b): an engine in a process of its own
//! (`vodmesh-node engine --director MULTIADDR`), on another machine with its own disks,
//! attached to its station's director over `/vodmesh/blade/1`.
//!
//! The engine opens one stream to the director and keeps it: it says [`Up::Hello`] with its
//! listen addresses; the director accepts only peers it was told to trust (`--engine-peer
//! PEERID`: the connection is authenticated by noise, so the peer id is proven), answers
//! [`Down::Welcome`] and from then on treats the engine exactly like one of its in-process
//! engines: the engine's [`EngineReport`]s flow up, the director's [`EngineCommand`]s flow
//! down (a `Fetch`'s outcome comes back as [`Up::FetchDone`] under an id). Both sides send
//! [`Up::Alive`] / [`Down::Alive`] every [`HEARTBEAT`]; a side that hears nothing for
//! [`DEAD_AFTER`], or loses the stream, ends the link: the director marks the engine down (its
//! segments stop being chosen) and the engine reconnects every second until it is welcome
//! again, when the director marks it up.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, StreamExt};
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, mpsc, watch};
use tokio::time::{Instant, sleep_until, timeout};
use vodmesh_proto::codec::{read_frame, write_frame};
use vodmesh_proto::net::{build_swarm, peer_of};
use vodmesh_proto::token::IssuerKey;
use vodmesh_proto::{SegmentHash, SegmentId};

use crate::control::{Copied, EngineCommand, EngineReport, Expected, Source};
use crate::{engine, identity};

/// The protocol name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/vodmesh/blade/1");
/// Largest frame either side accepts (an `Expect` of a long program is the biggest).
pub const MAX_FRAME: usize = 4 * 1024 * 1024;
/// Largest `Hello` (read before an engine is known to be alive and well).
const MAX_HELLO: usize = 64 * 1024;
/// Listen addresses an engine may announce: they go into the signed station record, which
/// must stay under [`vodmesh_proto::station::MAX_RECORD`].
pub const MAX_ADDRS: usize = 16;
/// Disks an engine may report, for the same reason.
pub const MAX_DISKS: usize = 32;
/// How often each side says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Silence after which a side gives the link up (the director marks the engine down).
pub const DEAD_AFTER: Duration = Duration::from_secs(3);

/// From the engine to the director.
#[derive(Debug, Serialize, Deserialize)]
pub enum Up {
    /// The first frame: where the engine listens.
    Hello {
        /// Its listen addresses.
        addrs: Vec<Multiaddr>,
        /// Its `--max-streams` (0: the station's).
        #[serde(default)]
        max_streams: u32,
        /// Its `--capacity`.
        #[serde(default)]
        capacity: u64,
    },
    /// A report, as an in-process engine makes it (its index is the director's business).
    Report(EngineReport),
    /// The outcome of [`WireCommand::Fetch`] `id`.
    FetchDone {
        /// The fetch.
        id: u64,
        /// Its segment.
        segment: SegmentId,
        /// The copy, or why it failed.
        result: Result<Copied, String>,
    },
    /// Heartbeat.
    Alive,
}

/// From the director to the engine.
#[derive(Debug, Serialize, Deserialize)]
pub enum Down {
    /// The engine is attached, as engine `index` of the station.
    Welcome {
        /// Its slot.
        index: u32,
    },
    /// The engine is not attached, and why.
    Refused(String),
    /// A command.
    Command(WireCommand),
    /// Heartbeat.
    Alive,
}

/// [`EngineCommand`] on the wire: a fetch's reply channel becomes an id.
#[derive(Debug, Serialize, Deserialize)]
pub enum WireCommand {
    /// [`EngineCommand::Expect`].
    Expect {
        /// The segments.
        segments: Vec<(SegmentId, Expected)>,
    },
    /// [`EngineCommand::Preload`].
    Preload {
        /// The segment.
        segment: SegmentId,
    },
    /// [`EngineCommand::Pin`].
    Pin {
        /// The segments.
        segments: Vec<SegmentId>,
    },
    /// [`EngineCommand::Fetch`]; answered with [`Up::FetchDone`] `id`.
    Fetch {
        /// Correlates the answer.
        id: u64,
        /// The segment.
        segment: SegmentId,
        /// Its hash and size, when known.
        expect: Option<(SegmentHash, u64)>,
        /// Where to copy it from, cheapest first.
        sources: Vec<Source>,
        /// Evictable once stored.
        held_elsewhere: bool,
    },
    /// [`EngineCommand::AllowCopy`].
    AllowCopy {
        /// The engines.
        peers: Vec<PeerId>,
        /// Until when (ms since the epoch).
        until_ms: u64,
    },
    /// [`EngineCommand::Handover`].
    Handover {
        /// The segment.
        segment: SegmentId,
        /// The console.
        console: PeerId,
    },
    /// [`EngineCommand::Stop`].
    Stop,
    /// [`EngineCommand::Remove`].
    Remove {
        /// The segments.
        segments: Vec<SegmentId>,
    },
}

type FetchReply = mpsc::Sender<(SegmentId, Result<Copied, String>)>;

/// One engine slot of a station that an engine process may take (`--engine-peer`).
#[derive(Clone)]
pub(crate) struct Slot {
    /// The engine's peer id, the only one let in.
    pub(crate) peer: PeerId,
    /// Its index among the station's engines.
    pub(crate) index: usize,
    /// The director's commands to it; held by the link while attached.
    pub(crate) commands: Arc<Mutex<mpsc::Receiver<EngineCommand>>>,
}

/// The director's side: accepts engine links until `shutdown`.
pub(crate) async fn serve(
    mut incoming: libp2p_stream::IncomingStreams,
    slots: Vec<Slot>,
    reports: mpsc::Sender<EngineReport>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (peer, stream) = tokio::select! {
            next = incoming.next() => match next {
                Some(next) => next,
                None => break,
            },
            _ = shutdown.changed() => break,
        };
        let slot = slots.iter().find(|s| s.peer == peer).cloned();
        let reports = reports.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = link(peer, stream, slot, reports, shutdown).await {
                tracing::debug!(%peer, error = %e, "engine link failed");
            }
        });
    }
}

/// Writes one frame, giving up after [`DEAD_AFTER`] (a peer that stopped reading is dead).
async fn send<W: AsyncWrite + Unpin, T: Serialize>(w: &mut W, msg: &T) -> std::io::Result<()> {
    match timeout(DEAD_AFTER, write_frame(w, msg)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Says why the link is refused and closes the stream gracefully, so the answer arrives.
async fn refuse<W: AsyncWrite + Unpin>(wr: &mut W, why: &str) -> std::io::Result<()> {
    send(wr, &Down::Refused(why.into())).await?;
    let _ = timeout(DEAD_AFTER, futures::AsyncWriteExt::close(wr)).await;
    Ok(())
}

/// Reads frames into a channel (reading a frame is not cancel-safe, so it gets a task).
fn reader<R, T>(mut r: R) -> (mpsc::Receiver<T>, tokio::task::JoinHandle<()>)
where
    R: AsyncRead + Unpin + Send + 'static,
    T: serde::de::DeserializeOwned + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        while let Ok(msg) = read_frame::<_, T>(&mut r, MAX_FRAME).await {
            if tx.send(msg).await.is_err() {
                break;
            }
        }
    });
    (rx, task)
}

#[tracing::instrument(skip_all, fields(engine = %peer))]
async fn link(
    peer: PeerId,
    stream: libp2p::Stream,
    slot: Option<Slot>,
    reports: mpsc::Sender<EngineReport>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let (mut rd, mut wr) = stream.split();
    // The peer id is known before a byte is read: a stranger is refused without reading.
    let Some(slot) = slot else {
        tracing::warn!("refused an engine this station does not trust (see --engine-peer)");
        let why = "not an engine of this station (the director trusts --engine-peer peers only)";
        return refuse(&mut wr, why).await;
    };
    let hello = timeout(DEAD_AFTER, read_frame::<_, Up>(&mut rd, MAX_HELLO)).await;
    let Ok(Ok(Up::Hello {
        addrs,
        max_streams,
        capacity,
    })) = hello
    else {
        return refuse(&mut wr, "expected Hello first").await;
    };
    if addrs.len() > MAX_ADDRS {
        return refuse(&mut wr, "too many listen addresses").await;
    }
    let Ok(mut commands) = slot.commands.clone().try_lock_owned() else {
        return refuse(&mut wr, "attached already; retry").await;
    };
    let index = slot.index;
    send(
        &mut wr,
        &Down::Welcome {
            index: u32::try_from(index).unwrap_or(u32::MAX),
        },
    )
    .await?;
    tracing::info!(index, ?addrs, "engine attached");
    let _ = reports
        .send(EngineReport::Ready {
            index,
            peer_id: peer,
            addrs,
        })
        .await;
    if max_streams > 0 {
        let limits = EngineReport::Limits {
            index,
            max_streams,
            capacity,
        };
        let _ = reports.send(limits).await;
    }
    let (mut up, reading) = reader::<_, Up>(rd);
    let mut pending: HashMap<u64, (SegmentId, FetchReply)> = HashMap::new();
    let mut next_id = 0u64;
    let mut beat = tokio::time::interval(HEARTBEAT);
    let mut deadline = Instant::now() + DEAD_AFTER;
    let why = loop {
        tokio::select! {
            _ = shutdown.changed() => break "the station stops",
            _ = sleep_until(deadline) => break "no heartbeat",
            _ = beat.tick() => {
                if send(&mut wr, &Down::Alive).await.is_err() {
                    break "cannot write";
                }
            }
            msg = up.recv() => {
                let Some(msg) = msg else { break "the link closed" };
                deadline = Instant::now() + DEAD_AFTER;
                match msg {
                    // Its up and down are this link's to say.
                    Up::Report(
                        EngineReport::Ready { .. }
                        | EngineReport::Down { .. }
                        | EngineReport::Limits { .. },
                    )
                    | Up::Alive | Up::Hello { .. } => {}
                    Up::Report(report) => {
                        let _ = reports.send(report.with_index(index)).await;
                    }
                    Up::FetchDone { id, segment, result } => {
                        if let Some((_, done)) = pending.remove(&id) {
                            let _ = done.send((segment, result)).await;
                        }
                    }
                }
            }
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { break "the director stopped" };
                let wire = match cmd {
                    EngineCommand::Expect { segments } => WireCommand::Expect { segments },
                    EngineCommand::Preload { segment } => WireCommand::Preload { segment },
                    EngineCommand::Pin { segments } => WireCommand::Pin { segments },
                    EngineCommand::AllowCopy { peers, until_ms } => {
                        WireCommand::AllowCopy { peers, until_ms }
                    }
                    EngineCommand::Handover { segment, console } => {
                        WireCommand::Handover { segment, console }
                    }
                    EngineCommand::Stop => WireCommand::Stop,
                    EngineCommand::Remove { segments } => WireCommand::Remove { segments },
                    EngineCommand::Fetch { segment, expect, sources, held_elsewhere, done } => {
                        next_id += 1;
                        pending.insert(next_id, (segment, done));
                        WireCommand::Fetch { id: next_id, segment, expect, sources, held_elsewhere }
                    }
                };
                if send(&mut wr, &Down::Command(wire)).await.is_err() {
                    break "cannot write";
                }
            }
        }
    };
    reading.abort();
    for (_, (segment, done)) in pending {
        let _ = done
            .send((
                segment,
                Err("the engine's link to its director was lost".into()),
            ))
            .await;
    }
    tracing::warn!(index, why, "engine detached: marked down");
    let _ = reports.send(EngineReport::Down { index }).await;
    Ok(())
}

/// How `vodmesh-node engine` runs an engine of its own.
#[derive(Clone, Debug)]
pub struct EngineProcess {
    /// Its director's address, ending in `/p2p/<peer id>`.
    pub director: Multiaddr,
    /// Data directory: identity (`DIR/identity.key`), store index, default segment dir.
    pub data: PathBuf,
    /// Segment directories, one per disk (default `DIR/segments`).
    pub disks: Vec<PathBuf>,
    /// Where the engine listens.
    pub listen: Vec<Multiaddr>,
    /// Bytes of segments at most (0: bounded by the disks).
    pub capacity: u64,
    /// Concurrent streams at most.
    pub max_streams: u32,
    /// Issuers whose console tokens it accepts.
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
    let auth = engine::EngineAuth {
        trusted: config.trust.iter().copied().collect(),
        token: Default::default(),
    };
    let handle = engine::start(
        0,
        key.clone(),
        &config.listen,
        storage,
        auth,
        reports,
        metrics.clone(),
        shutdown.clone(),
    )
    .await
    .context("starting the engine")?;
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
    /// What it counted of its streams, as a director would.
    activity: vodmesh_proto::director::Activity,
    /// Its load, storage and link state, as a director would see it.
    info: vodmesh_proto::station::EngineInfo,
}

impl Attach {
    /// Counts `report` into the engine's own metrics, as a director counts its engines'.
    fn count(&mut self, report: &EngineReport) {
        let a = &mut self.activity;
        match report {
            EngineReport::Streams { active, .. } => self.info.streams = *active,
            EngineReport::TookOver { .. } => a.takeovers += 1,
            EngineReport::Stopped {
                bytes, complete, ..
            } => {
                if *complete {
                    a.stops_complete += 1;
                } else {
                    a.stops_early += 1;
                }
                self.metrics.streamed(*bytes);
            }
            EngineReport::SwapAsked { .. } => a.swaps += 1,
            EngineReport::Refused { copy: true, .. } => a.refused_copies += 1,
            EngineReport::Refused { copy: false, .. } => a.refused_streams += 1,
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
                    let Down::Command(cmd) = msg else { continue };
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

#[cfg(test)]
mod tests {
    use super::*;
    use vodmesh_proto::codec::{decode, encode};

    #[test]
    fn frames_round_trip_and_garbage_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let up = Up::Report(EngineReport::Streams {
            index: 0,
            active: 3,
        });
        let back: Up = decode(&encode(&up), MAX_FRAME)?;
        assert!(matches!(
            back,
            Up::Report(EngineReport::Streams { active: 3, .. })
        ));
        let down = Down::Command(WireCommand::AllowCopy {
            peers: vec![PeerId::random()],
            until_ms: 7,
        });
        let back: Down = decode(&encode(&down), MAX_FRAME)?;
        assert!(matches!(
            back,
            Down::Command(WireCommand::AllowCopy { until_ms: 7, .. })
        ));
        assert!(decode::<Down>(&[0xff, 0x00, 0x13], MAX_FRAME).is_err());
        assert!(decode::<Up>(&encode(&vec![0u8; 64]), 16).is_err());
        Ok(())
    }

    proptest::proptest! {
        /// Whatever a peer sends on the backplane decodes or is refused; nothing panics.
        #[test]
        fn any_bytes_decode_or_fail(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode::<Up>(&bytes, MAX_FRAME);
            let _ = decode::<Down>(&bytes, MAX_FRAME);
        }

        /// A valid frame with bytes changed or cut off: decoded or refused, never a panic.
        #[test]
        fn mangled_frames_decode_or_fail(
            edits in proptest::collection::vec((0usize..4096, proptest::num::u8::ANY), 1..8),
            cut in 0usize..4096,
        ) {
            let frame = encode(&Up::FetchDone {
                id: 9,
                segment: SegmentId::new(vodmesh_proto::ProgramId([3; 32]), 2),
                result: Err("x".repeat(40)),
            });
            let mut bytes = frame.clone();
            for (at, value) in edits {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            bytes.truncate(cut.min(bytes.len()));
            let _ = decode::<Up>(&bytes, MAX_FRAME);
            let _ = decode::<Down>(&frame, MAX_FRAME);
        }
    }
}
