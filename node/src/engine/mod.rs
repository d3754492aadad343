//! An engine: one peer of a station that stores, copies and streams segments (the seed's
//! blade). Each engine has its own identity, its own listen addresses and its own segment
//! store, so consoles and other engines reach it directly; its director commands it and hears
//! from it over the control channel ([`crate::control`]).
//!
//! - [`ingest`]: `/vodmesh/ingest/1`, segments pushed in during ingest.
//! - [`copy`]: `/vodmesh/copy/1`, segment copies between stations' engines.

pub mod copy;
pub mod ingest;
pub(crate) mod stream;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, identify, ping};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use vodmesh_proto::SegmentId;
use vodmesh_proto::net::{IDENTIFY_PROTOCOL, build_swarm};

use crate::control::{EngineCommand, EngineReport, Expected};
use crate::listen::{advertised, announced, listen_all};
use crate::store::{self, SegmentStore};

/// The engine's libp2p protocols.
#[derive(NetworkBehaviour)]
pub(crate) struct EngineBehaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    streams: libp2p_stream::Behaviour,
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
    /// Its segment store.
    pub store: SegmentStore,
    /// Commands from the director.
    pub commands: mpsc::Sender<EngineCommand>,
    /// Its event loop.
    pub task: JoinHandle<()>,
}

/// Segments the director told this engine to accept, shared with the stream tasks.
pub(crate) type Expectations = Arc<Mutex<HashMap<SegmentId, Expected>>>;

/// Where an engine listens, and what it announces besides.
#[derive(Clone, Debug, Default)]
pub struct EngineNet {
    /// Its listen addresses.
    pub listen: Vec<Multiaddr>,
    /// Addresses other hosts reach it at that are on no interface of its host (NAT, a public
    /// address elsewhere): announced before the ones it listens on.
    pub announce: Vec<Multiaddr>,
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
    mut shutdown: watch::Receiver<bool>,
) -> Result<EngineHandle> {
    let peer_id = key.public().to_peer_id();
    let announce = (net.announce.iter())
        .map(|a| announced(a, peer_id))
        .collect::<Result<Vec<_>, _>>()?;
    let EngineAuth { trusted, token } = auth;
    for disk in &storage.disks {
        std::fs::create_dir_all(disk).with_context(|| format!("creating {}", disk.display()))?;
    }
    let capacity = if storage.capacity == 0 {
        u64::MAX / 4
    } else {
        storage.capacity
    };
    let mut config = store::Config::new(&storage.index, storage.disks.clone(), capacity);
    config.pin_all = storage.pin_all;
    let (store, mut events, reconciled) = SegmentStore::open_reconciled(config)
        .await
        .with_context(|| format!("opening the segment store of engine {index}"))?;
    tracing::info!(index, ?reconciled, "engine store opened");
    if storage.scrub {
        let dropped = store
            .scrub()
            .await
            .with_context(|| format!("scrubbing the segment store of engine {index}"))?;
        tracing::info!(index, dropped = dropped.len(), "engine store scrubbed");
    }

    let mut swarm = build_swarm(key, |k| EngineBehaviour {
        identify: identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.into(), k.public())
                .with_agent_version(format!("vodmesh-engine/{}", env!("CARGO_PKG_VERSION"))),
        ),
        ping: ping::Behaviour::default(),
        streams: libp2p_stream::Behaviour::new(),
    })?;
    let addrs = advertised(&announce, &listen_all(&mut swarm, &net.listen).await?);
    tracing::info!(index, peer = %peer_id, addrs = ?addrs, "engine listening");

    let bounded = storage.capacity != 0;
    let reporter = Reporter {
        index,
        reports: reports.clone(),
        store: store.clone(),
        bounded,
    };
    let expectations: Expectations = Arc::default();
    let mut control = swarm.behaviour().streams.new_control();
    let incoming = control
        .accept(vodmesh_proto::ingest::PROTOCOL)
        .context("registering the ingest protocol")?;
    let ingest_task = tokio::spawn(ingest::serve(
        incoming,
        store.clone(),
        expectations.clone(),
        reporter.clone(),
        metrics.clone(),
    ));
    let allowed = copy::Allowed::default();
    let copy_incoming = control
        .accept(vodmesh_proto::copy::PROTOCOL)
        .context("registering the copy protocol")?;
    let copy_task = tokio::spawn(copy::serve(
        copy_incoming,
        peer_id,
        store.clone(),
        allowed.clone(),
        trusted.clone(),
        (index, reports.clone(), observer.clone()),
        storage.copy_rate,
    ));
    let mut copier = copy::Copier::new(
        index,
        peer_id,
        control.clone(),
        store.clone(),
        allowed,
        reporter.clone(),
        token,
    );
    copier.metrics = metrics;
    copier.observer = observer;

    let handovers = stream::Handovers::default();
    let streams_in = control
        .accept(vodmesh_proto::stream::PROTOCOL)
        .context("registering the stream protocol")?;
    let stream_task = tokio::spawn(stream::serve(
        streams_in,
        stream::StreamService {
            index,
            store: store.clone(),
            reports: reports.clone(),
            active: Arc::default(),
            max_streams: storage.max_streams,
            trusted,
            handovers: handovers.clone(),
        },
    ));

    let _ = reports
        .send(EngineReport::Ready {
            index,
            peer_id,
            addrs: addrs.clone(),
        })
        .await;
    let (commands, mut commands_rx) = mpsc::channel::<EngineCommand>(64);
    let task_store = store.clone();
    let task = tokio::spawn(async move {
        let mut usage = tokio::time::interval(USAGE_EVERY);
        let mut last_usage = Vec::new();
        loop {
            tokio::select! {
                _ = usage.tick() => {
                    let disks = disk_usage(&task_store, bounded);
                    if disks != last_usage {
                        last_usage.clone_from(&disks);
                        let _ = reports.send(EngineReport::Usage { index, disks }).await;
                    }
                }
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
                event = swarm.select_next_some() => {
                    if let SwarmEvent::IncomingConnectionError { error, .. } = &event {
                        tracing::debug!(index, %error, "engine: incoming connection failed");
                    }
                }
                Some(cmd) = commands_rx.recv() => {
                    if matches!(cmd, EngineCommand::Stop) {
                        break;
                    }
                    if let Some(cmd) = copier.take(&mut swarm, cmd) {
                        on_command(&task_store, (&expectations, &reporter), &handovers, cmd).await;
                    }
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
                    reporter.dropped(segment).await;
                }
            }
        }
        ingest_task.abort();
        copy_task.abort();
        stream_task.abort();
        if let Err(e) = task_store.shutdown().await {
            tracing::warn!(index, error = %e, "engine store did not shut down cleanly");
        }
        let _ = reports.send(EngineReport::Down { index }).await;
        tracing::info!(index, "engine stopped");
    });
    Ok(EngineHandle {
        index,
        peer_id,
        addrs,
        store,
        commands,
        task,
    })
}

/// How often an engine looks at its store's occupancy (and reports it when it changed).
const USAGE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The longest disk path reported (its tail is kept), to keep station records small.
const MAX_DISK_PATH: usize = 96;

/// The store's occupancy per disk; capacity 0 when the store is not bounded by `--capacity`.
/// Every figure is the store's own ([`SegmentStore::stats`]), the one its capacity is
/// enforced from.
pub(crate) fn disk_usage(
    store: &SegmentStore,
    bounded: bool,
) -> Vec<vodmesh_proto::station::DiskUsage> {
    store
        .stats()
        .disks
        .into_iter()
        .map(|d| {
            let path = d.root.display().to_string();
            let cut = path.len().saturating_sub(MAX_DISK_PATH);
            let start = (cut..=path.len())
                .find(|&i| path.is_char_boundary(i))
                .unwrap_or(path.len());
            vodmesh_proto::station::DiskUsage {
                path: path[start..].to_string(),
                used: d.used,
                capacity: if bounded { d.quota } else { 0 },
                reserved: d.reserved,
                evictable: d.evictable,
            }
        })
        .collect()
}

/// How an engine's tasks tell its director what its store holds: a change goes out with the
/// store's figures right behind it, on the same channel, so the director never counts a new
/// segment in its table without its bytes in the engine's used figure for long (it plans
/// ingests and copies from that figure).
#[derive(Clone)]
pub(crate) struct Reporter {
    index: usize,
    reports: mpsc::Sender<EngineReport>,
    store: SegmentStore,
    bounded: bool,
}

impl Reporter {
    /// A segment was stored, verified and committed.
    pub(crate) async fn stored(&self, segment: SegmentId, size: u64) {
        let index = self.index;
        let _ = self
            .reports
            .send(EngineReport::Stored {
                index,
                segment,
                size,
            })
            .await;
        self.usage().await;
    }

    /// A segment is gone.
    pub(crate) async fn dropped(&self, segment: SegmentId) {
        let index = self.index;
        let _ = self
            .reports
            .send(EngineReport::Dropped { index, segment })
            .await;
        self.usage().await;
    }

    /// The store's figures now.
    pub(crate) async fn usage(&self) {
        let disks = disk_usage(&self.store, self.bounded);
        let index = self.index;
        let _ = self
            .reports
            .send(EngineReport::Usage { index, disks })
            .await;
    }
}

/// Bytes read from a stream per store write, for ingest and copies.
const RECEIVE_CHUNK: usize = 256 * 1024;

/// Writes exactly `size` bytes arriving on `stream` into `store` as `segment`, verified against
/// `hash` as they land; the one receive path of ingest and copies. Nothing of a failed or
/// short transfer becomes visible.
pub(crate) async fn receive_segment<R: futures::AsyncRead + Unpin>(
    store: &SegmentStore,
    stream: &mut R,
    segment: SegmentId,
    hash: vodmesh_proto::SegmentHash,
    size: u64,
) -> Result<(), String> {
    use futures::AsyncReadExt;
    let mut writer = store
        .begin_write(segment, hash, size)
        .await
        .map_err(|e| e.to_string())?;
    let mut left = size;
    let mut buf = vec![0u8; RECEIVE_CHUNK];
    while left > 0 {
        let n = (left as usize).min(RECEIVE_CHUNK);
        stream
            .read_exact(&mut buf[..n])
            .await
            .map_err(|e| format!("stream ended early: {e}"))?;
        writer
            .write_chunk(&buf[..n])
            .await
            .map_err(|e| e.to_string())?;
        left -= n as u64;
    }
    writer.finish().await.map_err(|e| e.to_string())
}

/// How long a segment that is being read is waited for before its removal is given up.
const REMOVE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Removes `segments` from `store` (those not stored are skipped) and reports each one
/// gone; returns those being read, which cannot go yet.
async fn remove_now(
    store: &SegmentStore,
    reporter: &Reporter,
    segments: Vec<SegmentId>,
) -> Vec<SegmentId> {
    let mut busy = Vec::new();
    for segment in segments {
        match store.remove(segment).await {
            Ok(()) => reporter.dropped(segment).await,
            Err(store::Error::NotFound(_)) => {}
            Err(store::Error::Busy(_)) => busy.push(segment),
            Err(e) => tracing::warn!(%segment, error = %e, "segment not removed"),
        }
    }
    busy
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("index", &self.index)
            .field("peer_id", &self.peer_id)
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

async fn on_command(
    store: &SegmentStore,
    (expectations, reporter): (&Expectations, &Reporter),
    handovers: &stream::Handovers,
    cmd: EngineCommand,
) {
    match cmd {
        EngineCommand::Handover { segment, console } => {
            if !stream::hand_over(handovers, segment, console) {
                tracing::debug!(%segment, %console, "handover: no such stream here");
            }
        }
        EngineCommand::Expect { segments } => {
            if let Ok(mut map) = expectations.lock() {
                map.extend(segments);
            }
        }
        EngineCommand::Preload { segment } => {
            // Reading it through warms the page cache and verifies every chunk before the
            // console asks; a bad chunk is caught and dropped here instead of mid-stream.
            let store = store.clone();
            tokio::spawn(async move {
                if let Ok(mut reader) = store.open_read(segment).await {
                    while let Ok(Some(_)) = reader.read_next(1024 * 1024).await {}
                }
            });
        }
        EngineCommand::Pin { segments } => {
            for s in segments {
                if let Err(e) = store.set_pinned(s, true).await {
                    tracing::debug!(segment = %s, error = %e, "pin failed");
                }
            }
        }
        EngineCommand::Remove { segments } => {
            // Cleared first: a push of one of them still in flight then finds its
            // announcement gone when it finishes, and drops what it wrote.
            if let Ok(mut map) = expectations.lock() {
                for s in &segments {
                    map.remove(s);
                }
            }
            // Removed before the next command is taken (an `Expect` of the same segments may
            // follow); only those being read wait, in the background.
            let busy = remove_now(store, reporter, segments).await;
            if !busy.is_empty() {
                let (store, reporter) = (store.clone(), reporter.clone());
                tokio::spawn(async move {
                    let deadline = tokio::time::Instant::now() + REMOVE_PATIENCE;
                    let mut left = busy;
                    while !left.is_empty() && tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        left = remove_now(&store, &reporter, left).await;
                    }
                    for segment in left {
                        tracing::warn!(%segment, "segment still being read; not removed");
                    }
                });
            }
        }
        // Copy commands are taken by `copy::Copier` before they get here.
        EngineCommand::Fetch { .. } | EngineCommand::AllowCopy { .. } | EngineCommand::Stop => {}
    }
}
