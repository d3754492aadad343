//! What an engine tells its director of itself: the [`Reporter`] its tasks share, which sends
//! each [`EngineEvent`] under the engine's id, and the store's occupancy per disk
//! ([`disk_usage`]) that follows every change to what the store holds.

use std::time::Duration;

use tokio::sync::mpsc;
use vodmesh_proto::SegmentId;
use vodmesh_proto::station::DiskUsage;

use crate::control::{EngineEvent, EngineId, EngineReport};
use crate::store::SegmentStore;

/// The longest disk path reported (its tail is kept), to keep station records small.
const MAX_DISK_PATH: usize = 96;

/// The store's occupancy per disk; capacity 0 when the store is not bounded by `--capacity`.
/// Every figure is the store's own ([`SegmentStore::stats`]), the one its capacity is
/// enforced from.
pub(crate) fn disk_usage(store: &SegmentStore, bounded: bool) -> Vec<DiskUsage> {
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
            DiskUsage {
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
    engine: EngineId,
    reports: mpsc::Sender<EngineReport>,
    store: SegmentStore,
    bounded: bool,
}

/// How long a segment that is being read is waited for before its removal is given up.
const REMOVE_PATIENCE: Duration = Duration::from_secs(30);

impl Reporter {
    /// A reporter for engine `engine`, whose store is `store` (`bounded` by `--capacity`).
    pub(crate) fn new(
        engine: EngineId,
        reports: mpsc::Sender<EngineReport>,
        store: SegmentStore,
        bounded: bool,
    ) -> Self {
        Self {
            engine,
            reports,
            store,
            bounded,
        }
    }

    /// The engine it reports for.
    pub(crate) fn engine(&self) -> EngineId {
        self.engine
    }

    /// Sends `event` (dropped if the director is gone).
    pub(crate) async fn send(&self, event: EngineEvent) {
        let _ = self
            .reports
            .send(EngineReport::new(self.engine, event))
            .await;
    }

    /// Sends `event` unless the queue is full: for counts a later report supersedes.
    pub(crate) fn try_send(&self, event: EngineEvent) {
        let _ = self.reports.try_send(EngineReport::new(self.engine, event));
    }

    /// A segment was stored, verified and committed.
    pub(crate) async fn stored(&self, segment: SegmentId, size: u64) {
        self.send(EngineEvent::Stored { segment, size }).await;
        self.usage().await;
    }

    /// A segment is gone.
    pub(crate) async fn dropped(&self, segment: SegmentId) {
        self.send(EngineEvent::Dropped { segment }).await;
        self.usage().await;
    }

    /// The store's figures now, as a usage report carries them.
    pub(crate) fn disk_usage(&self) -> Vec<DiskUsage> {
        disk_usage(&self.store, self.bounded)
    }

    /// The store's figures now.
    pub(crate) async fn usage(&self) {
        let disks = self.disk_usage();
        self.send(EngineEvent::Usage { disks }).await;
    }

    /// Removes `segments` from the store (those not stored are skipped) and reports each one
    /// gone; returns those being read, which cannot go yet.
    pub(super) async fn remove(&self, segments: Vec<SegmentId>) -> Vec<SegmentId> {
        let (removed, busy) = self.store.remove_all(&segments).await;
        for segment in removed {
            self.dropped(segment).await;
        }
        busy
    }

    /// Removes `segments` as their readers let go, for at most [`REMOVE_PATIENCE`].
    pub(super) async fn remove_patiently(&self, mut left: Vec<SegmentId>) {
        let deadline = tokio::time::Instant::now() + REMOVE_PATIENCE;
        while !left.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            left = self.remove(left).await;
        }
        for segment in left {
            tracing::warn!(%segment, "segment still being read; not removed");
        }
    }
}
