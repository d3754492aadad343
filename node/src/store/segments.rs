//! [`SegmentStore`] and its streaming [`Writer`] and [`Reader`].
//!
//! The in-memory `State` (behind a mutex never held across an `.await`) is what the store
//! serves from; the redb index is its durable copy, written by the index worker. File I/O runs
//! on the owning disk's worker.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{mpsc, watch};
use tracing::{debug, instrument, warn};
use vodmesh_proto::time::now_ms;
use vodmesh_proto::{SegmentHash, SegmentId};

use super::index::{Index, Op, Record, SegmentState};
use super::layout::{self, Reconciled, io};
use super::policy::{self, Candidate, DiskRoom};
use super::worker::Worker;
use super::{CHUNK, Config, DropReason, Error, Event};

/// A handle to the store; clones share it.
#[derive(Clone)]
pub struct SegmentStore {
    inner: Arc<Inner>,
}

struct Inner {
    disks: Vec<Disk>,
    index: Arc<Index>,
    index_worker: Worker,
    state: Mutex<State>,
    events: mpsc::Sender<Event>,
    capacity: u64,
    pin_all: bool,
    /// Generations, temp-file nonces and the touch sequence.
    counter: AtomicU64,
}

struct Disk {
    root: PathBuf,
    quota: u64,
    worker: Worker,
}

#[derive(Default)]
struct State {
    stored: HashMap<SegmentId, Stored>,
    live: HashMap<SegmentId, Live>,
    /// Segments whose file and row are being removed: not writable until that is done.
    removing: HashSet<SegmentId>,
    /// Per disk: bytes of complete segments, bytes reserved by writes, open readers+writers.
    used: Vec<u64>,
    reserved: Vec<u64>,
    open: Vec<usize>,
    /// Last-use times not yet written to the index; they ride along with the next commit.
    touched: HashMap<SegmentId, u64>,
    closed: bool,
}

struct Stored {
    /// Tells this copy from an earlier or later one of the same segment.
    generation: u64,
    disk: usize,
    size: u64,
    hash: SegmentHash,
    last_use: (u64, u64),
    pinned: bool,
    held_elsewhere: bool,
    readers: u32,
}

struct Live {
    generation: u64,
    disk: usize,
    total: u64,
    hash: SegmentHash,
    pinned: bool,
    held_elsewhere: bool,
    readers: u32,
    progress: watch::Receiver<Progress>,
}

/// What followers of a filling segment watch.
#[derive(Clone, Default)]
struct Progress {
    filled: u64,
    file: Option<Arc<File>>,
    end: Option<End>,
}

#[derive(Clone)]
enum End {
    /// Verified and committed; later reads check these chunk hashes.
    Complete(Arc<[[u8; 32]]>),
    Aborted,
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

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn next(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    fn emit(&self, event: Event) {
        match self.events.try_send(event) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(event)) => {
                warn!(?event, "store event queue full; event lost");
            }
        }
    }

    /// Removes files and rows of segments already taken out of `State::stored` (and put in
    /// `State::removing`), then lets them be written again.
    async fn remove_files(&self, victims: &[(SegmentId, usize)]) {
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
    async fn drop_segment(&self, segment: SegmentId, generation: u64, reason: DropReason) {
        let disk = {
            let mut st = self.state();
            match st.stored.get(&segment) {
                Some(s) if s.generation == generation => {}
                _ => return,
            }
            let Some(s) = st.stored.remove(&segment) else {
                return;
            };
            st.used[s.disk] = st.used[s.disk].saturating_sub(s.size);
            st.touched.remove(&segment);
            st.removing.insert(segment);
            s.disk
        };
        warn!(segment = %segment.short(), ?reason, "segment dropped");
        self.remove_files(&[(segment, disk)]).await;
        self.emit(Event::Dropped { segment, reason });
    }

    fn take_touched(st: &mut State) -> Vec<Op> {
        st.touched.drain().map(|(s, ms)| Op::Touch(s, ms)).collect()
    }
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
            let index = Index::open(&index_path)?;
            let (kept, report) = layout::reconcile(&index, &disks)?;
            Ok::<_, Error>((index, kept, report))
        })
        .await
        .map_err(|_| Error::Closed)??;

        let n = config.disks.len() as u64;
        let mut workers = Vec::new();
        for (i, root) in config.disks.iter().enumerate() {
            let worker = Worker::spawn(format!("store-disk-{i}"), config.queue_depth)
                .map_err(io("start a worker for", root))?;
            // An even share; the first disk takes the remainder.
            let quota = config.capacity / n + if i == 0 { config.capacity % n } else { 0 };
            workers.push(Disk {
                root: root.clone(),
                quota,
                worker,
            });
        }
        let index_worker = Worker::spawn("store-index".into(), config.queue_depth)
            .map_err(io("start a worker for", &config.index))?;

        let mut state = State {
            used: vec![0; workers.len()],
            reserved: vec![0; workers.len()],
            open: vec![0; workers.len()],
            ..State::default()
        };
        let counter = AtomicU64::new(1);
        for (segment, r) in kept {
            let disk = r.disk as usize;
            if disk >= workers.len() {
                continue;
            }
            state.used[disk] += r.size;
            state.stored.insert(
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
        let (disk, generation, victims) = {
            let mut st = inner.state();
            if st.closed {
                return Err(Error::Closed);
            }
            if st.stored.contains_key(&segment) || st.live.contains_key(&segment) {
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
                    free: d
                        .quota
                        .saturating_sub(st.used[i].saturating_add(st.reserved[i])),
                    load: st.open[i] + d.worker.load(),
                })
                .collect();
            let candidates: Vec<Candidate> = st
                .stored
                .iter()
                .filter(|(_, s)| s.held_elsewhere && !s.pinned && s.readers == 0)
                .map(|(id, s)| Candidate {
                    segment: *id,
                    disk: s.disk,
                    size: s.size,
                    last_use: s.last_use,
                })
                .collect();
            let Some(placement) = policy::place(&rooms, &candidates, expected_len) else {
                return Err(Error::Full {
                    segment,
                    need: expected_len,
                    free: rooms.iter().map(|r| r.free).max().unwrap_or(0),
                });
            };
            let mut victims = Vec::new();
            for v in placement.evict {
                if let Some(s) = st.stored.remove(&v) {
                    st.used[s.disk] = st.used[s.disk].saturating_sub(s.size);
                    st.touched.remove(&v);
                    st.removing.insert(v);
                    victims.push((v, s.disk));
                }
            }
            let disk = placement.disk;
            st.reserved[disk] += expected_len;
            st.open[disk] += 1;
            let generation = inner.next();
            st.live.insert(
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

        let root = &inner.disks[disk].root;
        let temp = layout::temp_path(root, &segment, inner.next());
        // From here on, dropping the writer undoes the reservation.
        let mut writer = Writer {
            inner: inner.clone(),
            segment,
            disk,
            generation,
            temp: temp.clone(),
            file: None,
            hashing: Some(Hashing::default()),
            written: 0,
            expected_hash,
            expected_len,
            progress: tx,
            done: false,
        };

        if !victims.is_empty() {
            debug!(count = victims.len(), "evicting to make room");
            inner.remove_files(&victims).await;
            for (v, _) in victims {
                inner.emit(Event::Evicted { segment: v });
            }
        }

        let file = inner.disks[disk]
            .worker
            .run(move || {
                File::options()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&temp)
                    .map_err(io("create", &temp))
            })
            .await??;
        let file = Arc::new(file);
        writer.file = Some(file.clone());
        writer.progress.send_modify(|p| p.file = Some(file));

        let record = Record {
            disk: disk as u32,
            size: expected_len,
            hash: expected_hash,
            state: SegmentState::Filling,
            last_use_ms: now_ms(),
            pinned: inner.pin_all,
            held_elsewhere: false,
        };
        let index = inner.index.clone();
        // Not durable: a filling row is only a hint, and reconciliation removes it anyway.
        inner
            .index_worker
            .run(move || {
                index.apply(
                    &[Op::Put {
                        segment,
                        record,
                        chunks: None,
                    }],
                    false,
                )
            })
            .await??;
        Ok(writer)
    }

    /// Opens `segment` for reading, complete or still filling.
    #[instrument(skip_all, fields(segment = %segment.short()))]
    pub async fn open_read(&self, segment: SegmentId) -> Result<Reader, Error> {
        let inner = &self.inner;
        enum Found {
            Stored(u64, usize, u64),
            Live(u64, usize, u64, watch::Receiver<Progress>),
        }
        let found = {
            let mut st = inner.state();
            if st.closed {
                return Err(Error::Closed);
            }
            let now = now_ms();
            let seq = inner.next();
            let found = if let Some(s) = st.stored.get_mut(&segment) {
                s.readers += 1;
                s.last_use = (now, seq);
                Found::Stored(s.generation, s.disk, s.size)
            } else if let Some(l) = st.live.get_mut(&segment) {
                l.readers += 1;
                Found::Live(l.generation, l.disk, l.total, l.progress.clone())
            } else {
                return Err(Error::NotFound(segment));
            };
            let disk = match &found {
                Found::Stored(_, d, _) | Found::Live(_, d, _, _) => *d,
            };
            st.open[disk] += 1;
            if matches!(found, Found::Stored(..)) {
                st.touched.insert(segment, now);
            }
            found
        };
        match found {
            Found::Live(generation, disk, size, rx) => Ok(Reader {
                inner: inner.clone(),
                segment,
                generation,
                disk,
                size,
                pos: 0,
                mode: Mode::Following(rx),
            }),
            Found::Stored(generation, disk, size) => {
                // The reader exists before the awaits below so that its drop releases the
                // segment whatever happens.
                let mut reader = Reader {
                    inner: inner.clone(),
                    segment,
                    generation,
                    disk,
                    size,
                    pos: 0,
                    mode: Mode::Opening,
                };
                let index = inner.index.clone();
                let chunks = tokio::task::spawn_blocking(move || index.chunks(&segment))
                    .await
                    .map_err(|_| Error::Closed)??;
                let expected_chunks = size.div_ceil(CHUNK) as usize;
                let chunks = match chunks {
                    Some(c) if c.len() == expected_chunks => c,
                    _ => {
                        inner
                            .drop_segment(segment, generation, DropReason::Corrupt { chunk: 0 })
                            .await;
                        return Err(Error::Corrupt { segment, chunk: 0 });
                    }
                };
                let path = layout::segment_path(&inner.disks[disk].root, &segment);
                let file = inner.disks[disk]
                    .worker
                    .run(move || File::open(&path))
                    .await?;
                let file = match file {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        inner
                            .drop_segment(segment, generation, DropReason::Corrupt { chunk: 0 })
                            .await;
                        return Err(Error::Corrupt { segment, chunk: 0 });
                    }
                    Err(e) => {
                        let path = layout::segment_path(&inner.disks[disk].root, &segment);
                        return Err(io("open", &path)(e));
                    }
                };
                reader.mode = Mode::Complete {
                    file: Arc::new(file),
                    chunks: chunks.into(),
                };
                Ok(reader)
            }
        }
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

    /// `(filled, total, complete)` of a stored or filling segment; `None` if not here.
    pub fn filled(&self, segment: &SegmentId) -> Option<(u64, u64, bool)> {
        let st = self.inner.state();
        if let Some(s) = st.stored.get(segment) {
            return Some((s.size, s.size, true));
        }
        st.live
            .get(segment)
            .map(|l| (l.progress.borrow().filled, l.total, false))
    }

    /// What the store knows about `segment`.
    pub fn info(&self, segment: &SegmentId) -> Option<Info> {
        let st = self.inner.state();
        if let Some(s) = st.stored.get(segment) {
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
        st.live.get(segment).map(|l| Info {
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
        self.inner.state().stored.keys().copied().collect()
    }

    /// Occupancy per disk.
    pub fn stats(&self) -> Stats {
        let st = self.inner.state();
        Stats {
            capacity: self.inner.capacity,
            segments: st.stored.len(),
            filling: st.live.len(),
            disks: self
                .inner
                .disks
                .iter()
                .enumerate()
                .map(|(i, d)| DiskStats {
                    root: d.root.clone(),
                    quota: d.quota,
                    used: st.used[i],
                    reserved: st.reserved[i],
                    load: st.open[i] + d.worker.load(),
                })
                .collect(),
        }
    }

    /// Pins `segment` (never evicted, e.g. on the home station) or unpins it.
    pub async fn set_pinned(&self, segment: SegmentId, pinned: bool) -> Result<(), Error> {
        self.set_flags(segment, Some(pinned), None).await
    }

    /// Records whether another station also holds `segment` (only such segments are evicted).
    pub async fn set_held_elsewhere(&self, segment: SegmentId, held: bool) -> Result<(), Error> {
        self.set_flags(segment, None, Some(held)).await
    }

    async fn set_flags(
        &self,
        segment: SegmentId,
        pinned: Option<bool>,
        held: Option<bool>,
    ) -> Result<(), Error> {
        let flags = {
            let mut st = self.inner.state();
            if let Some(s) = st.stored.get_mut(&segment) {
                s.pinned = pinned.unwrap_or(s.pinned);
                s.held_elsewhere = held.unwrap_or(s.held_elsewhere);
                (s.pinned, s.held_elsewhere)
            } else if let Some(l) = st.live.get_mut(&segment) {
                // Written to the index with the complete row.
                l.pinned = pinned.unwrap_or(l.pinned);
                l.held_elsewhere = held.unwrap_or(l.held_elsewhere);
                return Ok(());
            } else {
                return Err(Error::NotFound(segment));
            }
        };
        let index = self.inner.index.clone();
        let op = Op::Flags {
            segment,
            pinned: flags.0,
            held_elsewhere: flags.1,
        };
        self.inner
            .index_worker
            .run(move || index.apply(&[op], true))
            .await??;
        Ok(())
    }

    /// Deletes a complete segment that nobody is reading.
    pub async fn remove(&self, segment: SegmentId) -> Result<(), Error> {
        let disk = {
            let mut st = self.inner.state();
            match st.stored.get(&segment) {
                None => return Err(Error::NotFound(segment)),
                Some(s) if s.readers > 0 => return Err(Error::Busy(segment)),
                Some(_) => {}
            }
            let Some(s) = st.stored.remove(&segment) else {
                return Err(Error::NotFound(segment));
            };
            st.used[s.disk] = st.used[s.disk].saturating_sub(s.size);
            st.touched.remove(&segment);
            st.removing.insert(segment);
            s.disk
        };
        self.inner.remove_files(&[(segment, disk)]).await;
        Ok(())
    }

    /// Re-hashes every complete segment (disks in parallel) and drops those that do not match
    /// their hash or chunk hashes. Returns the dropped segments.
    pub async fn scrub(&self) -> Result<Vec<SegmentId>, Error> {
        let mut per_disk: Vec<Vec<(SegmentId, u64, u64, SegmentHash)>> =
            vec![Vec::new(); self.inner.disks.len()];
        {
            let st = self.inner.state();
            for (id, s) in &st.stored {
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
        let d = &self.inner.disks[disk];
        for (segment, generation, size, hash) in segments {
            let index = self.inner.index.clone();
            let path = layout::segment_path(&d.root, &segment);
            let ok = d
                .worker
                .run(move || -> Result<bool, Error> {
                    let Some(chunks) = index.chunks(&segment)? else {
                        return Ok(false);
                    };
                    let Ok(file) = File::open(&path) else {
                        return Ok(false);
                    };
                    Ok(verify_whole(&file, size, hash, &chunks))
                })
                .await??;
            if !ok {
                self.inner
                    .drop_segment(segment, generation, DropReason::Scrub)
                    .await;
                dropped.push(segment);
            }
        }
        Ok(dropped)
    }

    /// Writes pending last-use times to the index (durably).
    pub async fn flush(&self) -> Result<(), Error> {
        let ops = Inner::take_touched(&mut self.inner.state());
        let index = self.inner.index.clone();
        self.inner
            .index_worker
            .run(move || index.apply(&ops, true))
            .await??;
        Ok(())
    }

    /// Flushes the index and stops the workers; every later call fails with [`Error::Closed`].
    pub async fn shutdown(&self) -> Result<(), Error> {
        let res = self.flush().await;
        self.inner.state().closed = true;
        for d in &self.inner.disks {
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
        let s = st.stored.get(segment)?;
        Some(layout::segment_path(
            &self.inner.disks[s.disk].root,
            segment,
        ))
    }

    /// Waits until every job queued before this call has run (the queues are FIFO).
    pub(crate) async fn settle(&self) {
        for d in &self.inner.disks {
            let _ = d.worker.run(|| ()).await;
        }
        let _ = self.inner.index_worker.run(|| ()).await;
    }

    /// Runs `f` on `disk`'s worker, occupying it meanwhile.
    pub(crate) async fn run_on_disk(
        &self,
        disk: usize,
        f: impl FnOnce() + Send + 'static,
    ) -> Result<(), Error> {
        Ok(self.inner.disks[disk].worker.run(f).await?)
    }

    /// Jobs queued or running on `disk`.
    pub(crate) fn disk_queue(&self, disk: usize) -> usize {
        self.inner.disks[disk].worker.load()
    }
}

/// Whether `file` is `size` bytes hashing to `hash`, with every chunk matching `chunks`.
fn verify_whole(file: &File, size: u64, hash: SegmentHash, chunks: &[[u8; 32]]) -> bool {
    let Ok(meta) = file.metadata() else {
        return false;
    };
    if meta.len() != size || chunks.len() as u64 != size.div_ceil(CHUNK) {
        return false;
    }
    let mut whole = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK as usize];
    for (i, expected) in chunks.iter().enumerate() {
        let start = i as u64 * CHUNK;
        let n = CHUNK.min(size - start) as usize;
        if file.read_exact_at(&mut buf[..n], start).is_err() {
            return false;
        }
        if blake3::hash(&buf[..n]).as_bytes() != expected {
            return false;
        }
        whole.update(&buf[..n]);
    }
    SegmentHash::from(whole.finalize()) == hash
}

/// The incremental hashes of a write: the whole segment and each [`CHUNK`].
#[derive(Default)]
struct Hashing {
    whole: blake3::Hasher,
    chunk: blake3::Hasher,
    in_chunk: u64,
    chunks: Vec<[u8; 32]>,
}

impl Hashing {
    fn update(&mut self, mut data: &[u8]) {
        self.whole.update(data);
        while !data.is_empty() {
            let take = (CHUNK - self.in_chunk).min(data.len() as u64) as usize;
            self.chunk.update(&data[..take]);
            self.in_chunk += take as u64;
            if self.in_chunk == CHUNK {
                self.chunks.push(*self.chunk.finalize().as_bytes());
                self.chunk.reset();
                self.in_chunk = 0;
            }
            data = &data[take..];
        }
    }

    fn finish(mut self) -> (SegmentHash, Vec<[u8; 32]>) {
        if self.in_chunk > 0 {
            self.chunks.push(*self.chunk.finalize().as_bytes());
        }
        (self.whole.finalize().into(), self.chunks)
    }
}

/// A segment being written. Bytes become visible to followers as each chunk lands, and to
/// everyone as a complete segment only after [`finish`](Self::finish) verified and committed
/// them. Dropped unfinished, the write is aborted and its temp file removed.
pub struct Writer {
    inner: Arc<Inner>,
    segment: SegmentId,
    disk: usize,
    generation: u64,
    temp: PathBuf,
    file: Option<Arc<File>>,
    /// Moved to the disk worker with each chunk; `None` only while a chunk is in flight or
    /// after the writer ended.
    hashing: Option<Hashing>,
    written: u64,
    expected_hash: SegmentHash,
    expected_len: u64,
    progress: watch::Sender<Progress>,
    done: bool,
}

impl Writer {
    /// The segment being written.
    pub fn segment(&self) -> SegmentId {
        self.segment
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The disk chosen for it (position in [`Config::disks`]).
    pub fn disk(&self) -> usize {
        self.disk
    }

    /// Appends `bytes`; hashes them on the disk's worker as they are written. More bytes than
    /// the expected length abort the write. Not cancel-safe: dropping this future midway
    /// leaves the writer aborted (later calls fail with [`Error::Aborted`]).
    pub async fn write_chunk(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if self.done {
            return Err(Error::Aborted(self.segment));
        }
        let end = self.written + bytes.len() as u64;
        if end > self.expected_len {
            self.abort();
            return Err(Error::TooLong {
                segment: self.segment,
                expected: self.expected_len,
            });
        }
        let (Some(file), Some(mut hashing)) = (self.file.clone(), self.hashing.take()) else {
            self.abort();
            return Err(Error::Aborted(self.segment));
        };
        let buf = bytes.to_vec();
        let offset = self.written;
        let res = self.inner.disks[self.disk]
            .worker
            .run(move || {
                let r = file.write_all_at(&buf, offset);
                if r.is_ok() {
                    hashing.update(&buf);
                }
                (hashing, r)
            })
            .await;
        match res {
            Ok((hashing, Ok(()))) => {
                self.hashing = Some(hashing);
                self.written = end;
                self.progress.send_modify(|p| p.filled = end);
                Ok(())
            }
            Ok((_, Err(e))) => {
                self.abort();
                Err(io("write", &self.temp)(e))
            }
            Err(closed) => {
                self.abort();
                Err(closed.into())
            }
        }
    }

    /// Verifies length and hash, then fsyncs, renames into place and commits to the index;
    /// only then is the segment complete. On any failure nothing stays visible.
    #[instrument(skip_all, fields(segment = %self.segment.short()))]
    pub async fn finish(mut self) -> Result<(), Error> {
        let segment = self.segment;
        if self.done {
            return Err(Error::Aborted(segment));
        }
        if self.written != self.expected_len {
            self.abort();
            return Err(Error::TooShort {
                segment,
                expected: self.expected_len,
                got: self.written,
            });
        }
        let (Some(file), Some(hashing)) = (self.file.clone(), self.hashing.take()) else {
            self.abort();
            return Err(Error::Aborted(segment));
        };
        let inner = self.inner.clone();
        let disk = &inner.disks[self.disk];
        let temp = self.temp.clone();
        let dest = layout::segment_path(&disk.root, &segment);
        let expected = self.expected_hash;
        let res = disk
            .worker
            .run(
                move || -> Result<Result<Vec<[u8; 32]>, SegmentHash>, Error> {
                    let (actual, chunks) = hashing.finish();
                    if actual != expected {
                        return Ok(Err(actual));
                    }
                    let dir = dest.parent().unwrap_or(Path::new("."));
                    let new_dir = !dir.exists();
                    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
                    // Renamed before it is durable: a crash from here until the index commit
                    // leaves a file without a complete row, which reconciliation deletes.
                    std::fs::rename(&temp, &dest).map_err(io("rename", &temp))?;
                    // The bytes and the directory entry (and a new program directory's own
                    // entry) must be durable before the index says "complete". The syncs run
                    // at once: a journaling filesystem then commits them together, where one
                    // after the other costs a journal commit each (measured by `vodmesh
                    // bench`'s store section).
                    let synced = std::thread::scope(|scope| {
                        let dirs = scope.spawn(|| {
                            let parent = dir.parent().filter(|_| new_dir);
                            std::iter::once(dir)
                                .chain(parent)
                                .try_for_each(|d| File::open(d).and_then(|d| d.sync_all()))
                        });
                        let data = file.sync_all();
                        let dirs = dirs.join().unwrap_or_else(|_| {
                            Err(std::io::Error::other("fsync thread panicked"))
                        });
                        (data, dirs)
                    });
                    let failed = match synced {
                        (Err(e), _) => Some(io("fsync", &dest)(e)),
                        (_, Err(e)) => Some(io("fsync", dir)(e)),
                        _ => None,
                    };
                    if let Some(e) = failed {
                        let _ = layout::remove_segment_file(&dest);
                        return Err(e);
                    }
                    Ok(Ok(chunks))
                },
            )
            .await;
        let chunks = match res {
            Ok(Ok(Ok(chunks))) => chunks,
            Ok(Ok(Err(actual))) => {
                self.abort();
                return Err(Error::HashMismatch {
                    segment,
                    expected,
                    actual,
                });
            }
            Ok(Err(e)) => {
                self.abort();
                return Err(e);
            }
            Err(closed) => {
                self.abort();
                return Err(closed.into());
            }
        };

        let now = now_ms();
        let (pinned, held_elsewhere, mut ops) = {
            let mut st = inner.state();
            let flags = st
                .live
                .get(&segment)
                .map(|l| (l.pinned, l.held_elsewhere))
                .unwrap_or((inner.pin_all, false));
            (flags.0, flags.1, Inner::take_touched(&mut st))
        };
        ops.push(Op::Put {
            segment,
            record: Record {
                disk: self.disk as u32,
                size: self.expected_len,
                hash: expected,
                state: SegmentState::Complete,
                last_use_ms: now,
                pinned,
                held_elsewhere,
            },
            chunks: Some(chunks.concat()),
        });
        let index = inner.index.clone();
        let committed = inner
            .index_worker
            .run(move || index.apply(&ops, true))
            .await;
        let failure = match committed {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(Error::from(e)),
            Err(closed) => Some(closed.into()),
        };
        if let Some(e) = failure {
            // Renamed but not committed: the file must not outlive the failed write.
            let dest = layout::segment_path(&disk.root, &segment);
            let _ = disk
                .worker
                .run(move || layout::remove_segment_file(&dest))
                .await;
            self.abort();
            return Err(e);
        }

        let chunks: Arc<[[u8; 32]]> = chunks.into();
        {
            let mut st = inner.state();
            let readers = match st.live.get(&segment) {
                Some(l) if l.generation == self.generation => l.readers,
                _ => 0,
            };
            st.live.remove(&segment);
            st.reserved[self.disk] = st.reserved[self.disk].saturating_sub(self.expected_len);
            st.used[self.disk] += self.expected_len;
            st.open[self.disk] = st.open[self.disk].saturating_sub(1);
            st.stored.insert(
                segment,
                Stored {
                    generation: self.generation,
                    disk: self.disk,
                    size: self.expected_len,
                    hash: expected,
                    last_use: (now, inner.next()),
                    pinned,
                    held_elsewhere,
                    readers,
                },
            );
        }
        self.done = true;
        self.progress.send_modify(|p| {
            p.filled = self.expected_len;
            p.end = Some(End::Complete(chunks));
        });
        debug!("segment stored");
        Ok(())
    }

    /// Gives up the write: followers see it aborted, the reservation is released and the temp
    /// file and filling row are removed in the background.
    fn abort(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        self.progress.send_modify(|p| p.end = Some(End::Aborted));
        {
            let mut st = self.inner.state();
            if st
                .live
                .get(&self.segment)
                .is_some_and(|l| l.generation == self.generation)
            {
                st.live.remove(&self.segment);
            }
            st.reserved[self.disk] = st.reserved[self.disk].saturating_sub(self.expected_len);
            st.open[self.disk] = st.open[self.disk].saturating_sub(1);
        }
        let temp = self.temp.clone();
        let remove = move || {
            let _ = std::fs::remove_file(&temp);
        };
        if !self.inner.disks[self.disk].worker.try_spawn(remove) {
            // Queue full or closed: unlink here; a leftover is removed at the next start anyway.
            let _ = std::fs::remove_file(&self.temp);
        }
        let index = self.inner.index.clone();
        let segment = self.segment;
        // Best effort: a stale filling row is harmless and removed at the next start.
        let _ = self.inner.index_worker.try_spawn(move || {
            let _ = index.apply(&[Op::Remove(segment)], false);
        });
        debug!(segment = %self.segment.short(), "write aborted");
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.abort();
    }
}

enum Mode {
    /// Between registration and the file being opened.
    Opening,
    Following(watch::Receiver<Progress>),
    Complete {
        file: Arc<File>,
        chunks: Arc<[[u8; 32]]>,
    },
}

/// A read handle on one segment. While it is open the segment is not evicted. On a filling
/// segment it follows the writer: reads wait for bytes not yet written, and are served as
/// written (the whole-segment hash is only known at the end; a follower whose writer then
/// fails gets [`Error::Aborted`], and consoles verify against the manifest anyway). Once the
/// segment is complete, every read verifies the chunks it touches.
pub struct Reader {
    inner: Arc<Inner>,
    segment: SegmentId,
    generation: u64,
    disk: usize,
    size: u64,
    pos: u64,
    mode: Mode,
}

/// A failed verified read, before it is turned into an [`Error`].
enum ReadFail {
    Io(std::io::Error),
    Corrupt(u64),
}

impl Reader {
    /// The segment.
    pub fn segment(&self) -> SegmentId {
        self.segment
    }

    /// Its full size.
    pub fn len(&self) -> u64 {
        self.size
    }

    /// Whether it has no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Where [`read_next`](Self::read_next) continues.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Moves the streaming position (clamped to the end).
    pub fn seek(&mut self, pos: u64) {
        self.pos = pos.min(self.size);
    }

    /// `(filled, complete)` as this reader sees it.
    pub fn filled(&self) -> (u64, bool) {
        match &self.mode {
            Mode::Following(rx) => {
                let p = rx.borrow();
                (p.filled, matches!(p.end, Some(End::Complete(_))))
            }
            Mode::Complete { .. } => (self.size, true),
            Mode::Opening => (0, false),
        }
    }

    /// The next bytes from the current position, at most `max`: as many as are available now
    /// (after waiting for at least one if the segment is filling). `None` at the end.
    pub async fn read_next(&mut self, max: usize) -> Result<Option<Vec<u8>>, Error> {
        if self.pos >= self.size {
            return Ok(None);
        }
        let want = (max.max(1) as u64).min(self.size - self.pos);
        let available = self.wait_for(self.pos + 1).await?;
        let n = want.min(available - self.pos);
        let bytes = self.read_at(self.pos, n).await?;
        self.pos += n;
        Ok(Some(bytes))
    }

    /// Exactly `len` bytes from `offset`, waiting for them if the segment is filling.
    /// Chunks of a complete segment are verified; a mismatch drops the segment and fails with
    /// [`Error::Corrupt`].
    pub async fn read_range(&mut self, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
        let end = offset.checked_add(len).filter(|e| *e <= self.size);
        let Some(end) = end else {
            return Err(Error::OutOfRange {
                segment: self.segment,
                offset,
                len,
                size: self.size,
            });
        };
        if len == 0 {
            return Ok(Vec::new());
        }
        self.wait_for(end).await?;
        self.read_at(offset, len).await
    }

    /// Waits until at least `end` bytes are readable (or the segment is complete); returns
    /// how many are.
    async fn wait_for(&mut self, end: u64) -> Result<u64, Error> {
        loop {
            let Mode::Following(rx) = &mut self.mode else {
                return Ok(self.size);
            };
            let p = rx.borrow_and_update().clone();
            match p.end {
                Some(End::Aborted) => return Err(Error::Aborted(self.segment)),
                Some(End::Complete(chunks)) => {
                    // From now on reads are verified like any complete segment's.
                    if let Some(file) = p.file {
                        self.mode = Mode::Complete { file, chunks };
                    }
                    return Ok(self.size);
                }
                None if p.filled >= end && p.file.is_some() => return Ok(p.filled),
                None => {}
            }
            if rx.changed().await.is_err() {
                // The writer went away without a final word: treat it as aborted.
                let ended = rx.borrow().end.is_some();
                if !ended {
                    return Err(Error::Aborted(self.segment));
                }
            }
        }
    }

    /// Reads bytes already known to be available.
    async fn read_at(&mut self, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
        if !self.still_stored() {
            return Err(Error::NotFound(self.segment));
        }
        let worker = &self.inner.disks[self.disk].worker;
        match &self.mode {
            Mode::Opening => Err(Error::NotFound(self.segment)),
            Mode::Following(rx) => {
                let Some(file) = rx.borrow().file.clone() else {
                    return Err(Error::NotFound(self.segment));
                };
                let res = worker
                    .run(move || {
                        let mut buf = vec![0u8; len as usize];
                        file.read_exact_at(&mut buf, offset).map(|()| buf)
                    })
                    .await?;
                res.map_err(|e| {
                    let path =
                        layout::segment_path(&self.inner.disks[self.disk].root, &self.segment);
                    io("read", &path)(e)
                })
            }
            Mode::Complete { file, chunks } => {
                let (file, chunks, size) = (file.clone(), chunks.clone(), self.size);
                let res = worker
                    .run(move || verified_read(&file, &chunks, size, offset, len))
                    .await?;
                match res {
                    Ok(bytes) => Ok(bytes),
                    Err(ReadFail::Corrupt(chunk)) => {
                        self.inner
                            .drop_segment(
                                self.segment,
                                self.generation,
                                DropReason::Corrupt { chunk },
                            )
                            .await;
                        Err(Error::Corrupt {
                            segment: self.segment,
                            chunk,
                        })
                    }
                    Err(ReadFail::Io(e)) => {
                        let path =
                            layout::segment_path(&self.inner.disks[self.disk].root, &self.segment);
                        Err(io("read", &path)(e))
                    }
                }
            }
        }
    }

    /// False once the segment was dropped or evicted under this reader.
    fn still_stored(&self) -> bool {
        let st = self.inner.state();
        st.stored
            .get(&self.segment)
            .map(|s| s.generation)
            .or_else(|| st.live.get(&self.segment).map(|l| l.generation))
            == Some(self.generation)
    }
}

/// Reads `[offset, offset + len)` of a complete segment, verifying every chunk it touches.
fn verified_read(
    file: &File,
    chunks: &[[u8; 32]],
    size: u64,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, ReadFail> {
    let first = offset / CHUNK;
    let last = (offset + len - 1) / CHUNK;
    let start = first * CHUNK;
    let end = ((last + 1) * CHUNK).min(size);
    let mut buf = vec![0u8; (end - start) as usize];
    match file.read_exact_at(&mut buf, start) {
        Ok(()) => {}
        // A truncated file is damage, not an I/O failure.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(ReadFail::Corrupt(first));
        }
        Err(e) => return Err(ReadFail::Io(e)),
    }
    for (i, bytes) in buf.chunks(CHUNK as usize).enumerate() {
        let chunk = first + i as u64;
        let ok = chunks
            .get(chunk as usize)
            .is_some_and(|h| blake3::hash(bytes).as_bytes() == h);
        if !ok {
            return Err(ReadFail::Corrupt(chunk));
        }
    }
    let skip = (offset - start) as usize;
    buf.drain(..skip);
    buf.truncate(len as usize);
    Ok(buf)
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut st = self.inner.state();
        if let Some(s) = st.stored.get_mut(&self.segment)
            && s.generation == self.generation
        {
            s.readers = s.readers.saturating_sub(1);
        } else if let Some(l) = st.live.get_mut(&self.segment)
            && l.generation == self.generation
        {
            l.readers = l.readers.saturating_sub(1);
        }
        st.open[self.disk] = st.open[self.disk].saturating_sub(1);
    }
}
