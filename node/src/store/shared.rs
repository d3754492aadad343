//! The store's shared state: what [`SegmentStore`](super::SegmentStore), its writers and its
//! readers all reach through one `Arc` (the disks and their workers, the index, the in-memory
//! [`State`] behind a mutex never held across an `.await`), with the few operations they
//! share: emitting an event, removing files and rows, dropping a bad segment.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::mpsc;
use tracing::warn;
use vodmesh_proto::SegmentId;

use super::accounting::{Holdings, Stored};
use super::index::{Index, Op};
use super::layout;
use super::worker::Worker;
use super::{DropReason, Event};

pub(super) struct Inner {
    pub(super) disks: Vec<Disk>,
    pub(super) index: Arc<Index>,
    pub(super) index_worker: Worker,
    pub(super) state: Mutex<State>,
    pub(super) events: mpsc::Sender<Event>,
    pub(super) capacity: u64,
    pub(super) pin_all: bool,
    /// Generations, temp-file nonces and the touch sequence.
    pub(super) counter: AtomicU64,
}

pub(super) struct Disk {
    pub(super) root: PathBuf,
    pub(super) quota: u64,
    /// Reads, writes and removals of the disk's files, in order.
    pub(super) worker: Worker,
    /// The seals that make written segments durable (hash check, rename, fsyncs): an fsync
    /// waits for the device, and on `worker` it held every read and write queued behind it,
    /// those of the other segments being written included.
    pub(super) syncer: Worker,
}

/// Room left on a disk's file system beyond what the store fills: its index's growth, the
/// other files beside it.
pub(super) const DISK_MARGIN: u64 = 1 << 20;

impl Disk {
    /// Bytes its file system has free for an unprivileged writer (`u64::MAX` where that
    /// cannot be asked): a bound beside the quota, which `--capacity 0` leaves at no bound.
    pub(super) fn available(&self) -> u64 {
        match rustix::fs::statvfs(&self.root) {
            Ok(st) => st.f_bavail.saturating_mul(st.f_frsize),
            Err(_) => u64::MAX,
        }
    }

    /// Jobs queued or running on the disk's threads: its current I/O load.
    pub(super) fn load(&self) -> usize {
        self.worker.load() + self.syncer.load()
    }
}

pub(super) struct State {
    /// What is stored and being written, with the figures that follow from it.
    pub(super) holdings: Holdings,
    /// Segments whose file and row are being removed: not writable until that is done.
    pub(super) removing: HashSet<SegmentId>,
    /// Last-use times not yet written to the index; they ride along with the next commit.
    pub(super) touched: HashMap<SegmentId, u64>,
    pub(super) closed: bool,
}

impl State {
    /// Takes a complete segment out of the holdings to remove its file and row: until that is
    /// done it is neither served nor writable.
    pub(super) fn take_out(&mut self, segment: &SegmentId) -> Option<Stored> {
        let s = self.holdings.remove_stored(segment)?;
        self.touched.remove(segment);
        self.removing.insert(*segment);
        Some(s)
    }
}

impl Inner {
    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn next(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn emit(&self, event: Event) {
        match self.events.try_send(event) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(event)) => {
                warn!(?event, "store event queue full; event lost");
            }
        }
    }

    /// Removes files and rows of segments already taken out of `State::stored` (and put in
    /// `State::removing`), then lets them be written again.
    pub(super) async fn remove_files(&self, victims: &[(SegmentId, usize)]) {
        for (segment, disk) in victims {
            let Some(d) = self.disks.get(*disk) else {
                continue;
            };
            let path = layout::segment_path(&d.root, segment);
            let res = d
                .worker
                .run(move || layout::remove_segment_file(&path))
                .await;
            match res {
                Ok(Ok(())) => {}
                // A leftover file has no index row and is deleted at the next start.
                Ok(Err(e)) => {
                    warn!(segment = %segment.short(), cause = %e, "segment file not removed")
                }
                Err(_) => {
                    warn!(segment = %segment.short(), "store closed before segment file was removed")
                }
            }
        }
        let ops: Vec<Op> = victims.iter().map(|(s, _)| Op::Remove(*s)).collect();
        let index = self.index.clone();
        // Not durable: after a crash the row finds no file and reconciliation drops it.
        match self
            .index_worker
            .run(move || index.apply(&ops, false))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(cause = %e, "index rows of removed segments not removed"),
            Err(_) => warn!("store closed before index rows were removed"),
        }
        let mut st = self.state();
        for (segment, _) in victims {
            st.removing.remove(segment);
        }
    }

    /// Drops a complete segment that failed verification: it is no longer served, its file and
    /// row go, and the owner hears of it. Idempotent per generation.
    pub(super) async fn drop_segment(
        &self,
        segment: SegmentId,
        generation: u64,
        reason: DropReason,
    ) {
        let disk = {
            let mut st = self.state();
            match st.holdings.stored(&segment) {
                Some(s) if s.generation == generation => {}
                _ => return,
            }
            let Some(s) = st.take_out(&segment) else {
                return;
            };
            s.disk
        };
        warn!(segment = %segment.short(), ?reason, "segment dropped");
        self.remove_files(&[(segment, disk)]).await;
        self.emit(Event::Dropped { segment, reason });
    }

    pub(super) fn take_touched(st: &mut State) -> Vec<Op> {
        st.touched.drain().map(|(s, ms)| Op::Touch(s, ms)).collect()
    }
}
