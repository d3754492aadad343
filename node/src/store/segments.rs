//! [`SegmentStore`] and its streaming [`Writer`] and [`Reader`].
//!
//! The in-memory `State` (behind a mutex never held across an `.await`) is what the store
//! serves from; the redb index is its durable copy, written by the index worker. File I/O runs
//! on the owning disk's worker, the seals of written segments (their fsyncs) on its sync
//! thread.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tracing::instrument;
use vodmesh_proto::verified::{LeafHasher, Leaves, Outboard};
use vodmesh_proto::{ProgramId, SegmentHash, SegmentId};

use super::accounting::Progress;
use super::accounting::{Holdings, Live, Stored};
use super::check::{Check, verify_whole};
use super::index::{Index, Op, SegmentState};
use super::layout::{self, Reconciled, io};
use super::policy::{self, DiskRoom};
use super::reader::Reader;
use super::shared::{DISK_MARGIN, Disk, Inner, State};
use super::worker::Worker;
use super::writer::Writer;
use super::{Config, DropReason, Error, Event};

/// A handle to the store; clones share it.
#[derive(Clone)]
pub struct SegmentStore {
    inner: Arc<Inner>,
}

/// A stored segment as [`SegmentStore::info`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    /// Which disk (position in [`Config::disks`]).
    pub disk: usize,
    /// Expected (and, when complete, actual) size in bytes.
    pub size: u64,
    /// BLAKE3 of the bytes.
    pub hash: SegmentHash,
    /// Filling or complete.
    pub state: SegmentState,
    /// Last read or write, ms since the epoch.
    pub last_use_ms: u64,
    /// Never evicted.
    pub pinned: bool,
    /// Another station holds it too, so it may be evicted.
    pub held_elsewhere: bool,
    /// Readers currently open on it.
    pub readers: u32,
}

/// One disk's share of the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskStats {
    /// Its directory.
    pub root: PathBuf,
    /// Its capacity share in bytes.
    pub quota: u64,
    /// Bytes of complete segments.
    pub used: u64,
    /// Bytes reserved by writes in progress.
    pub reserved: u64,
    /// Bytes of complete segments that eviction may free (held elsewhere, not pinned; some
    /// may be open right now).
    pub evictable: u64,
    /// Open readers and writers plus queued jobs.
    pub load: usize,
}

/// The store's occupancy, for status and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Total capacity in bytes.
    pub capacity: u64,
    /// Complete segments.
    pub segments: usize,
    /// Segments being written.
    pub filling: usize,
    /// Per disk.
    pub disks: Vec<DiskStats>,
}

impl SegmentStore {
    /// Opens the store: the index, every disk directory (created if missing), reconciliation
    /// of files with the index, and a worker per disk. Events arrive on the returned receiver.
    pub async fn open(config: Config) -> Result<(Self, mpsc::Receiver<Event>), Error> {
        let (store, events, _) = Self::open_reconciled(config).await?;
        Ok((store, events))
    }

    /// Like [`open`](Self::open), also reporting what reconciliation fixed.
    pub async fn open_reconciled(
        config: Config,
    ) -> Result<(Self, mpsc::Receiver<Event>, Reconciled), Error> {
        if config.disks.is_empty() {
            return Err(Error::NoDisks);
        }
        let index_path = config.index.clone();
        let disks = config.disks.clone();
        let (index, kept, report) = tokio::task::spawn_blocking(move || {
            if let Some(parent) = index_path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(io("create", parent))?;
            }
            let index = Index::open(&index_path).map_err(|source| Error::IndexFile {
                path: index_path.clone(),
                source,
            })?;
            let (kept, report) = layout::reconcile((&index, &index_path), &disks)?;
            Ok::<_, Error>((index, kept, report))
        })
        .await
        .map_err(|_| Error::Closed)??;

        let n = config.disks.len() as u64;
        let mut workers = Vec::new();
        for (i, root) in config.disks.iter().enumerate() {
            let worker = Worker::spawn(format!("store-disk-{i}"), config.queue_depth)
                .map_err(io("start a worker for", root))?;
            let syncer = Worker::spawn(format!("store-sync-{i}"), config.queue_depth)
                .map_err(io("start a worker for", root))?;
            // An even share; the first disk takes the remainder.
            let quota = config.capacity / n + if i == 0 { config.capacity % n } else { 0 };
            workers.push(Disk {
                root: root.clone(),
                quota,
                worker,
                syncer,
            });
        }
        let index_worker = Worker::spawn("store-index".into(), config.queue_depth)
            .map_err(io("start a worker for", &config.index))?;

        let mut state = State {
            holdings: Holdings::new(workers.len()),
            removing: HashSet::new(),
            touched: HashMap::new(),
            closed: false,
        };
        let counter = AtomicU64::new(1);
        // The figures start from what reconciliation kept: the files that are there, as the
        // index describes them.
        for (segment, r) in kept {
            let disk = r.disk as usize;
            if disk >= workers.len() {
                continue;
            }
            state.holdings.insert_stored(
                segment,
                Stored {
                    generation: counter.fetch_add(1, Ordering::Relaxed),
                    disk,
                    size: r.size,
                    hash: r.hash,
                    last_use: (r.last_use_ms, 0),
                    pinned: r.pinned,
                    held_elsewhere: r.held_elsewhere,
                    readers: 0,
                },
            );
        }
        let (events, events_rx) = mpsc::channel(config.event_queue.max(1));
        let inner = Inner {
            disks: workers,
            index: Arc::new(index),
            index_worker,
            state: Mutex::new(state),
            events,
            capacity: config.capacity,
            pin_all: config.pin_all,
            counter,
        };
        Ok((
            Self {
                inner: Arc::new(inner),
            },
            events_rx,
            report,
        ))
    }

    /// Starts writing `segment`, which must turn out to be `expected_len` bytes hashing to
    /// `expected_hash`. Room is reserved now (evicting if needed); readers may follow the write
    /// at once. Dropping the writer without [`Writer::finish`] aborts it.
    #[instrument(skip_all, fields(segment = %segment.short(), len = expected_len))]
    pub async fn begin_write(
        &self,
        segment: SegmentId,
        expected_hash: SegmentHash,
        expected_len: u64,
    ) -> Result<Writer, Error> {
        let inner = &self.inner;
        let (tx, rx) = watch::channel(Progress::default());
        // Asked before the state is locked: a file system may be slow to answer.
        let available: Vec<u64> = inner.disks.iter().map(Disk::available).collect();
        let (disk, generation, victims) = {
            let mut st = inner.state();
            if st.closed {
                return Err(Error::Closed);
            }
            if st.holdings.holds(&segment) {
                return Err(Error::Exists(segment));
            }
            if st.removing.contains(&segment) {
                return Err(Error::Busy(segment));
            }
            let rooms: Vec<DiskRoom> = inner
                .disks
                .iter()
                .enumerate()
                .map(|(i, d)| DiskRoom {
                    // Within the quota, and within what the file system has: a write that
                    // would fill it is refused now, not failed at its last bytes (with the
                    // index, on the same disk, failing after it).
                    free: st.holdings.free(i, d.quota).min(
                        (available[i].saturating_sub(st.holdings.disk(i).reserved))
                            .saturating_sub(DISK_MARGIN),
                    ),
                    load: st.holdings.disk(i).open + d.load(),
                })
                .collect();
            let candidates = st.holdings.candidates();
            let Some(placement) = policy::place(&rooms, &candidates, expected_len) else {
                return Err(Error::Full {
                    segment,
                    need: expected_len,
                    free: rooms.iter().map(|r| r.free).max().unwrap_or(0),
                });
            };
            let mut victims = Vec::new();
            for v in placement.evict {
                if let Some(s) = st.take_out(&v) {
                    victims.push((v, s.disk));
                }
            }
            let disk = placement.disk;
            let generation = inner.next();
            st.holdings.insert_live(
                segment,
                Live {
                    generation,
                    disk,
                    total: expected_len,
                    hash: expected_hash,
                    pinned: inner.pin_all,
                    held_elsewhere: false,
                    readers: 0,
                    progress: rx,
                },
            );
            (disk, generation, victims)
        };
        Writer::start(
            inner.clone(),
            segment,
            disk,
            generation,
            (expected_hash, expected_len),
            tx,
            victims,
        )
        .await
    }

    /// Opens `segment` for reading, complete or still filling.
    #[instrument(skip_all, fields(segment = %segment.short()))]
    pub async fn open_read(&self, segment: SegmentId) -> Result<Reader, Error> {
        Reader::open(&self.inner, segment).await
    }

    /// `len` bytes of `segment` from `offset`; waits for them if the segment is still filling.
    pub async fn read_range(
        &self,
        segment: SegmentId,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, Error> {
        let mut reader = self.open_read(segment).await?;
        reader.read_range(offset, len).await
    }

    /// The BLAKE3 tree of complete `segment` by 16 KiB chunk group, for a verified stream: from
    /// the leaves kept beside it since it was written, or, for a segment stored before the store
    /// kept them (or whose row does not lead to its hash), computed now from its bytes (read
    /// with their chunk hashes checked) and kept. `None`: not here complete.
    pub async fn outboard(&self, segment: SegmentId) -> Result<Option<Outboard>, Error> {
        let Some((size, hash, generation)) = ({
            let st = self.inner.state();
            (st.holdings.stored(&segment)).map(|s| (s.size, s.hash, s.generation))
        }) else {
            return Ok(None);
        };
        let index = self.inner.index.clone();
        let kept = self
            .inner
            .index_worker
            .run(move || index.groups(&segment))
            .await??;
        let kept = kept
            .and_then(|bytes| Leaves::from_bytes(size, &bytes))
            .map(|leaves| leaves.outboard())
            .filter(|outboard| outboard.root() == hash);
        if let Some(outboard) = kept {
            return Ok(Some(outboard));
        }
        // The reader holds the segment against eviction while its leaves are computed.
        let mut reader = match self.open_read(segment).await {
            Ok(reader) => reader,
            Err(Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut hasher = LeafHasher::new(size);
        while hasher.position() < size {
            let at = hasher.position();
            let bytes = reader.read_range(at, (size - at).min(1 << 20)).await?;
            hasher.update(&bytes);
        }
        let Some(leaves) = hasher.finish() else {
            return Err(Error::Corrupt { segment, chunk: 0 });
        };
        let outboard = leaves.outboard();
        if outboard.root() != hash {
            // Its chunks all matched, yet the whole does not: its chunk hashes were wrong.
            self.inner
                .drop_segment(segment, generation, DropReason::Corrupt { chunk: 0 })
                .await;
            return Err(Error::Corrupt { segment, chunk: 0 });
        }
        drop(reader);
        tracing::debug!(segment = %segment.short(), "chunk-group tree computed for a segment stored without one");
        // Not durable: lost in a crash, it is only computed again.
        let op = Op::Groups(segment, leaves.to_bytes());
        let index = self.inner.index.clone();
        self.inner
            .index_worker
            .run(move || index.apply(&[op], false))
            .await??;
        Ok(Some(outboard))
    }

    /// `(filled, total, complete)` of a stored or filling segment; `None` if not here.
    pub fn filled(&self, segment: &SegmentId) -> Option<(u64, u64, bool)> {
        let st = self.inner.state();
        if let Some(s) = st.holdings.stored(segment) {
            return Some((s.size, s.size, true));
        }
        st.holdings
            .live(segment)
            .map(|l| (l.progress.borrow().filled, l.total, false))
    }

    /// What the store knows about `segment`.
    pub fn info(&self, segment: &SegmentId) -> Option<Info> {
        let st = self.inner.state();
        if let Some(s) = st.holdings.stored(segment) {
            return Some(Info {
                disk: s.disk,
                size: s.size,
                hash: s.hash,
                state: SegmentState::Complete,
                last_use_ms: s.last_use.0,
                pinned: s.pinned,
                held_elsewhere: s.held_elsewhere,
                readers: s.readers,
            });
        }
        st.holdings.live(segment).map(|l| Info {
            disk: l.disk,
            size: l.total,
            hash: l.hash,
            state: SegmentState::Filling,
            last_use_ms: 0,
            pinned: l.pinned,
            held_elsewhere: l.held_elsewhere,
            readers: l.readers,
        })
    }

    /// Complete segments, in no particular order.
    pub fn list(&self) -> Vec<SegmentId> {
        let st = self.inner.state();
        st.holdings.all_stored().map(|(id, _)| *id).collect()
    }

    /// Occupancy per disk.
    pub fn stats(&self) -> Stats {
        let st = self.inner.state();
        let (segments, filling) = st.holdings.counts();
        Stats {
            capacity: self.inner.capacity,
            segments,
            filling,
            disks: self
                .inner
                .disks
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let count = st.holdings.disk(i);
                    DiskStats {
                        root: d.root.clone(),
                        quota: d.quota,
                        used: count.used,
                        reserved: count.reserved,
                        evictable: count.evictable,
                        load: count.open + d.load(),
                    }
                })
                .collect(),
        }
    }

    /// Pins `segment` (never evicted, e.g. on the home station) or unpins it.
    pub async fn set_pinned(&self, segment: SegmentId, pinned: bool) -> Result<(), Error> {
        match self.set_pinned_all(&[segment], pinned).await? {
            0 => Err(Error::NotFound(segment)),
            _ => Ok(()),
        }
    }

    /// Pins `segments` or unpins them, in one durable commit however many they are: a home
    /// pins a whole program at once, and its engine's loop waits on one fsync, not one per
    /// segment. Segments this store does not hold are passed over; returns how many it holds.
    pub async fn set_pinned_all(
        &self,
        segments: &[SegmentId],
        pinned: bool,
    ) -> Result<usize, Error> {
        let (mut held, mut ops) = (0, Vec::new());
        {
            let mut st = self.inner.state();
            for segment in segments {
                if let Some(flags) = st.holdings.set_flags(segment, Some(pinned), None) {
                    held += 1;
                    ops.extend(flags.map(|flags| Op::Flags(*segment, flags)));
                }
            }
        }
        if !ops.is_empty() {
            self.commit(ops).await?;
        }
        Ok(held)
    }

    /// Records whether another station also holds `segment` (only such segments are evicted).
    pub async fn set_held_elsewhere(&self, segment: SegmentId, held: bool) -> Result<(), Error> {
        let flags = self
            .inner
            .state()
            .holdings
            .set_flags(&segment, None, Some(held));
        match flags {
            None => Err(Error::NotFound(segment)),
            // A filling segment's flags go to the index with its complete row.
            Some(None) => Ok(()),
            Some(Some(flags)) => self.commit(vec![Op::Flags(segment, flags)]).await,
        }
    }

    /// Applies `ops` to the index in one durable commit, on its worker.
    async fn commit(&self, ops: Vec<Op>) -> Result<(), Error> {
        let index = self.inner.index.clone();
        self.inner
            .index_worker
            .run(move || index.apply(&ops, true))
            .await??;
        Ok(())
    }

    /// The publish-time embargoes this store keeps for its engine (`engine::embargo`): each
    /// program and when its embargo ends.
    pub async fn embargoes(&self) -> Result<Vec<(ProgramId, u64)>, Error> {
        let index = self.inner.index.clone();
        Ok(self
            .inner
            .index_worker
            .run(move || index.embargoes())
            .await??)
    }

    /// Keeps `changes` to the embargoes, in order, in one durable commit: a program's embargo
    /// until `Some(ms)`, or none.
    pub async fn set_embargoes(&self, changes: Vec<(ProgramId, Option<u64>)>) -> Result<(), Error> {
        let ops: Vec<Op> = (changes.into_iter())
            .map(|(program, until)| Op::Embargo(program, until))
            .collect();
        self.commit(ops).await
    }

    /// Deletes a complete segment that nobody is reading.
    pub async fn remove(&self, segment: SegmentId) -> Result<(), Error> {
        let (removed, busy) = self.remove_all(&[segment]).await;
        match (removed.is_empty(), busy.is_empty()) {
            (false, _) => Ok(()),
            (true, false) => Err(Error::Busy(segment)),
            (true, true) => Err(Error::NotFound(segment)),
        }
    }

    /// Deletes the complete segments of `segments` that nobody is reading, their index rows in
    /// one commit however many they are (a program is removed at once): the segments removed,
    /// and those being read (to try again later). Segments not held are passed over.
    pub async fn remove_all(&self, segments: &[SegmentId]) -> (Vec<SegmentId>, Vec<SegmentId>) {
        let (mut victims, mut busy) = (Vec::new(), Vec::new());
        {
            let mut st = self.inner.state();
            for segment in segments {
                match st.holdings.stored(segment) {
                    None => continue,
                    Some(s) if s.readers > 0 => busy.push(*segment),
                    Some(_) => victims.extend(st.take_out(segment).map(|s| (*segment, s.disk))),
                }
            }
        }
        self.inner.remove_files(&victims).await;
        (victims.into_iter().map(|(s, _)| s).collect(), busy)
    }

    /// Re-hashes every complete segment (disks in parallel) and drops those that do not match
    /// their hash or their chunk-group tree. Returns the dropped segments.
    pub async fn scrub(&self) -> Result<Vec<SegmentId>, Error> {
        let mut per_disk: Vec<Vec<(SegmentId, u64, u64, SegmentHash)>> =
            vec![Vec::new(); self.inner.disks.len()];
        {
            let st = self.inner.state();
            for (id, s) in st.holdings.all_stored() {
                per_disk[s.disk].push((*id, s.generation, s.size, s.hash));
            }
        }
        let jobs = per_disk
            .into_iter()
            .enumerate()
            .map(|(disk, segs)| self.scrub_disk(disk, segs));
        let mut dropped = Vec::new();
        for res in futures::future::join_all(jobs).await {
            dropped.extend(res?);
        }
        Ok(dropped)
    }

    async fn scrub_disk(
        &self,
        disk: usize,
        segments: Vec<(SegmentId, u64, u64, SegmentHash)>,
    ) -> Result<Vec<SegmentId>, Error> {
        let mut dropped = Vec::new();
        for (segment, generation, size, hash) in segments {
            if !self.rehash(disk, segment, (generation, size, hash)).await? {
                dropped.push(segment);
            }
        }
        Ok(dropped)
    }

    /// Re-hashes one complete segment, as [`scrub`](Self::scrub) does, and drops it if it does
    /// not match: the background scrub's step (`engine::scrub`). Its size and whether it
    /// was kept; `None` when it is not stored (any more).
    pub async fn scrub_one(&self, segment: SegmentId) -> Result<Option<(u64, bool)>, Error> {
        let found = {
            let st = self.inner.state();
            (st.holdings.stored(&segment)).map(|s| (s.disk, s.generation, s.size, s.hash))
        };
        let Some((disk, generation, size, hash)) = found else {
            return Ok(None);
        };
        let kept = self.rehash(disk, segment, (generation, size, hash)).await?;
        Ok(Some((size, kept)))
    }

    /// Re-hashes `segment` (of `generation`, `size` bytes, `hash`) on disk `disk` against its
    /// hash and chunk-group tree; drops it when they do not match. Whether it was kept.
    async fn rehash(
        &self,
        disk: usize,
        segment: SegmentId,
        (generation, size, hash): (u64, u64, SegmentHash),
    ) -> Result<bool, Error> {
        let d = &self.inner.disks[disk];
        let index = self.inner.index.clone();
        let path = layout::segment_path(&d.root, &segment);
        let ok = d
            .worker
            .run(move || -> Result<bool, Error> {
                let Some(check) = Check::load(&index, &segment, size, hash)? else {
                    return Ok(false);
                };
                let Ok(file) = File::open(&path) else {
                    return Ok(false);
                };
                Ok(verify_whole(&file, size, hash, &check))
            })
            .await??;
        if !ok {
            self.inner
                .drop_segment(segment, generation, DropReason::Scrub)
                .await;
        }
        Ok(ok)
    }

    /// Writes pending last-use times to the index (durably).
    pub async fn flush(&self) -> Result<(), Error> {
        let ops = Inner::take_touched(&mut self.inner.state());
        self.commit(ops).await
    }

    /// Flushes the index and stops the workers; every later call fails with [`Error::Closed`].
    pub async fn shutdown(&self) -> Result<(), Error> {
        let res = self.flush().await;
        self.inner.state().closed = true;
        for d in &self.inner.disks {
            d.syncer.stop().await;
            d.worker.stop().await;
        }
        self.inner.index_worker.stop().await;
        res
    }
}

#[cfg(test)]
impl SegmentStore {
    /// Where a complete segment's file is.
    pub(crate) fn path_of(&self, segment: &SegmentId) -> Option<PathBuf> {
        let st = self.inner.state();
        let s = st.holdings.stored(segment)?;
        Some(layout::segment_path(
            &self.inner.disks[s.disk].root,
            segment,
        ))
    }

    /// The running per-disk figures `(used, reserved, evictable)` and the same recomputed from
    /// the holdings: equal unless the accounting drifted.
    pub(crate) fn audit(&self) -> (super::accounting::Figures, super::accounting::Figures) {
        let st = self.inner.state();
        (st.holdings.figures(), st.holdings.recount())
    }

    /// Makes `segment` look stored before the store kept chunk-group trees: its row of leaves
    /// is emptied, and its 64 KiB chunks' hashes (what reads were checked against then) are
    /// kept, from its bytes as they are now.
    pub(crate) async fn forget_groups(&self, segment: SegmentId) -> Result<(), Error> {
        let Some(info) = self
            .info(&segment)
            .filter(|i| i.state == SegmentState::Complete)
        else {
            return Err(Error::NotFound(segment));
        };
        let path = layout::segment_path(&self.inner.disks[info.disk].root, &segment);
        let record = super::index::Record {
            disk: info.disk as u32,
            size: info.size,
            hash: info.hash,
            state: info.state,
            last_use_ms: info.last_use_ms,
            pinned: info.pinned,
            held_elsewhere: info.held_elsewhere,
        };
        let bytes = std::fs::read(&path).map_err(io("read", &path))?;
        let chunks: Vec<u8> = (bytes.chunks(super::CHUNK as usize))
            .flat_map(|c| *blake3::hash(c).as_bytes())
            .collect();
        self.commit(vec![
            Op::Put {
                segment,
                record,
                chunks: Some(chunks),
            },
            Op::Groups(segment, Vec::new()),
        ])
        .await
    }

    /// The leaves kept for `segment`, as stored.
    pub(crate) async fn kept_groups(&self, segment: SegmentId) -> Result<Option<Vec<u8>>, Error> {
        let index = self.inner.index.clone();
        Ok(self
            .inner
            .index_worker
            .run(move || index.groups(&segment))
            .await??)
    }

    /// Waits until every job queued before this call has run (the queues are FIFO).
    pub(crate) async fn settle(&self) {
        for d in &self.inner.disks {
            let _ = d.syncer.run(|| ()).await;
            let _ = d.worker.run(|| ()).await;
        }
        let _ = self.inner.index_worker.run(|| ()).await;
    }

    /// Commits of the index since the store opened: all of them, and the durable ones.
    #[cfg(test)]
    pub(crate) fn commits(&self) -> (u64, u64) {
        self.inner.index.commits()
    }

    /// `disk`'s worker (its reads, writes and removals), or with `sync` its sync thread
    /// (where written segments are sealed), for tests that occupy it.
    pub(crate) fn disk_thread(&self, disk: usize, sync: bool) -> &Worker {
        let d = &self.inner.disks[disk];
        if sync { &d.syncer } else { &d.worker }
    }
}
