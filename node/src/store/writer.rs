//! [`Writer`]: a segment streamed into the store, hashed as it lands, and made visible only
//! once it is verified, durable and committed to the index.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;
use tracing::{debug, instrument};
use vodmesh_proto::time::now_ms;
use vodmesh_proto::verified::{GROUP, LeafHasher, Leaves, Outboard};
use vodmesh_proto::{SegmentHash, SegmentId};

use super::Error;
use super::accounting::{End, Progress, Stored};
use super::check::Check;
use super::index::{Op, Record, SegmentState};
use super::layout::{self, io};
use super::shared::Inner;

/// A segment's chunk-group tree: its leaves, and the parent nodes built from them (whose root
/// is the segment's hash).
pub type Tree = Arc<(Leaves, Outboard)>;

/// How a write checks its bytes. Either way each byte is hashed once, and later reads are
/// checked against the leaves.
enum Hashing {
    /// The chaining values of the segment's 16 KiB chunk groups, computed as the bytes land:
    /// their tree's root is checked against the segment's hash when the write ends.
    Computing(Box<LeafHasher>),
    /// The tree, known (and checked against the segment's hash) before the bytes: each group
    /// is checked as it lands ([`Writer::know`], a verified copy).
    Known(Tree),
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
    /// How the bytes are checked as they land; `None` once the writer ended.
    hashing: Option<Hashing>,
    written: u64,
    expected_hash: SegmentHash,
    expected_len: u64,
    progress: watch::Sender<Progress>,
    done: bool,
}

impl Writer {
    /// Sets up the write of `segment` on `disk`, whose room the caller reserved (entering it
    /// in the holdings as generation `generation`, followed through `progress`): evicts
    /// `victims` (already taken out of the holdings), creates the temp file and writes the
    /// filling row. From the moment this runs, dropping the writer undoes the reservation.
    #[allow(clippy::too_many_arguments)] // the parts of one reservation, made under the lock
    pub(super) async fn start(
        inner: Arc<Inner>,
        segment: SegmentId,
        disk: usize,
        generation: u64,
        (expected_hash, expected_len): (SegmentHash, u64),
        progress: watch::Sender<Progress>,
        victims: Vec<(SegmentId, usize)>,
    ) -> Result<Self, Error> {
        let temp = layout::temp_path(&inner.disks[disk].root, &segment, inner.next());
        let mut writer = Writer {
            inner: inner.clone(),
            segment,
            disk,
            generation,
            temp: temp.clone(),
            file: None,
            hashing: Some(Hashing::Computing(Box::new(LeafHasher::new(expected_len)))),
            written: 0,
            expected_hash,
            expected_len,
            progress,
            done: false,
        };

        if !victims.is_empty() {
            debug!(count = victims.len(), "evicting to make room");
            inner.remove_files(&victims).await;
            for (v, _) in victims {
                inner.emit(super::Event::Evicted { segment: v });
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

    /// The segment being written.
    pub fn segment(&self) -> SegmentId {
        self.segment
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The disk chosen for it (position in [`Config::disks`](super::Config::disks)).
    pub fn disk(&self) -> usize {
        self.disk
    }

    /// Takes the segment's chunk-group `leaves` (a verified copy's source sends them before the
    /// bytes): from now on each group is checked as it lands, a wrong one costs that group
    /// only ([`Error::GroupMismatch`]), and followers of the filling segment may stream it in
    /// verified mode ([`Reader::tree`](super::Reader::tree)). Leaves that do not lead to the
    /// expected hash are refused ([`Error::WrongTree`]; nothing changes). A write that already
    /// computes its own leaves over bytes written goes on as it was (returns `false`): its
    /// bytes are checked against the hash at the end, as before.
    pub fn know(&mut self, leaves: Leaves) -> Result<bool, Error> {
        let segment = self.segment;
        if leaves.size() != self.expected_len {
            return Err(Error::WrongTree { segment });
        }
        match &self.hashing {
            None => return Err(Error::Aborted(segment)),
            Some(Hashing::Known(_)) => return Ok(true),
            Some(Hashing::Computing(_)) if self.written > 0 => return Ok(false),
            Some(Hashing::Computing(_)) => {}
        }
        let outboard = leaves.outboard();
        if outboard.root() != self.expected_hash {
            return Err(Error::WrongTree { segment });
        }
        let tree: Tree = Arc::new((leaves, outboard));
        self.hashing = Some(Hashing::Known(tree.clone()));
        self.progress.send_modify(|p| p.tree = Some(tree));
        Ok(true)
    }

    /// Appends `chunk`: the disk's worker writes it (the bytes move there without a copy)
    /// while it is hashed here. More bytes than the expected length abort the write. With the
    /// tree known ([`know`](Self::know)) each whole group is checked: at a wrong one the
    /// groups before it count as written, and [`Error::GroupMismatch`] says where the write
    /// goes on (its bytes there are overwritten by the next ones); such a write's chunks end
    /// on a group's boundary or at the segment's end. Not cancel-safe: dropping this future
    /// midway leaves the writer aborted (later calls fail with [`Error::Aborted`]).
    pub async fn write_chunk(&mut self, chunk: Bytes) -> Result<(), Error> {
        if self.done {
            return Err(Error::Aborted(self.segment));
        }
        let end = self.written + chunk.len() as u64;
        if end > self.expected_len {
            self.abort();
            return Err(Error::TooLong {
                segment: self.segment,
                expected: self.expected_len,
            });
        }
        let Some(file) = self.file.clone() else {
            self.abort();
            return Err(Error::Aborted(self.segment));
        };
        let offset = self.written;
        let len = chunk.len();
        let aligned = offset.is_multiple_of(GROUP)
            && (end == self.expected_len || (len as u64).is_multiple_of(GROUP));
        if matches!(self.hashing, Some(Hashing::Known(_))) && !aligned {
            self.abort();
            return Err(Error::Aborted(self.segment));
        }
        let bytes = chunk.clone();
        let write = self.inner.disks[self.disk].worker.run(move || {
            let r = file.write_all_at(&bytes, offset);
            if r.is_ok() {
                // The device takes these bytes while the next ones are hashed and come.
                super::writeback::start(&file, offset, len);
            }
            r
        });
        // Hashed here while the disk worker writes: `join` hands the write to the worker
        // first, then hashes (tens of microseconds per chunk), then waits for the write.
        let hashing = &mut self.hashing;
        let hash = async {
            match hashing {
                Some(Hashing::Computing(hasher)) => {
                    hasher.update(&chunk);
                    None
                }
                Some(Hashing::Known(tree)) => first_wrong_group(&tree.0, offset, &chunk),
                None => None,
            }
        };
        let (written, wrong) = tokio::join!(write, hash);
        match written {
            Ok(Ok(())) => {
                let good = wrong.unwrap_or(end);
                self.written = good;
                self.progress.send_modify(|p| p.filled = good);
                match wrong {
                    None => Ok(()),
                    Some(offset) => Err(Error::GroupMismatch {
                        segment: self.segment,
                        offset,
                    }),
                }
            }
            Ok(Err(e)) => {
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
        let result = self.seal_and_commit().await;
        if result.is_err() {
            self.abort();
        }
        result
    }

    /// [`Self::finish`]'s steps; the caller aborts the write if one fails.
    async fn seal_and_commit(&mut self) -> Result<(), Error> {
        let segment = self.segment;
        if self.done {
            return Err(Error::Aborted(segment));
        }
        if self.written != self.expected_len {
            return Err(Error::TooShort {
                segment,
                expected: self.expected_len,
                got: self.written,
            });
        }
        let (Some(file), Some(hashing)) = (self.file.clone(), self.hashing.take()) else {
            return Err(Error::Aborted(segment));
        };
        let disk = &self.inner.disks[self.disk];
        let dest = layout::segment_path(&disk.root, &segment);
        let (temp, expected) = (self.temp.clone(), self.expected_hash);
        // On the disk's sync thread: the other segments' reads and writes go on meanwhile.
        let sealed = disk
            .syncer
            .run(move || seal(&file, hashing, &temp, &dest, (segment, expected)))
            .await?;
        let tree = match sealed? {
            Ok(tree) => tree,
            Err(actual) => {
                return Err(Error::HashMismatch {
                    segment,
                    expected,
                    actual,
                });
            }
        };
        let stored = self.commit(tree.0.to_bytes()).await?;
        self.complete(stored, tree);
        debug!("segment stored");
        Ok(())
    }

    /// Commits the complete row (with the last-use times waiting to be written) durably to the
    /// index. A file renamed into place but not committed is removed again: it must not
    /// outlive the failed write.
    async fn commit(&self, leaves: Vec<u8>) -> Result<Stored, Error> {
        let inner = &self.inner;
        let (stored, mut ops) = {
            let mut st = inner.state();
            let (pinned, held_elsewhere) = st
                .holdings
                .live(&self.segment)
                .map_or((inner.pin_all, false), |l| (l.pinned, l.held_elsewhere));
            let stored = Stored {
                generation: self.generation,
                disk: self.disk,
                size: self.expected_len,
                hash: self.expected_hash,
                last_use: (now_ms(), inner.next()),
                pinned,
                held_elsewhere,
                readers: 0,
            };
            (stored, Inner::take_touched(&mut st))
        };
        ops.push(Op::Put {
            segment: self.segment,
            record: Record {
                disk: self.disk as u32,
                size: stored.size,
                hash: stored.hash,
                state: SegmentState::Complete,
                last_use_ms: stored.last_use.0,
                pinned: stored.pinned,
                held_elsewhere: stored.held_elsewhere,
            },
            // Reads are checked against the tree (`check::Check`), which needs no chunk hashes.
            chunks: None,
        });
        // In the same commit as the complete row: a complete segment always has its tree.
        ops.push(Op::Groups(self.segment, leaves));
        let index = inner.index.clone();
        let committed = inner
            .index_worker
            .run(move || index.apply(&ops, true))
            .await;
        let failure = match committed {
            Ok(Ok(())) => return Ok(stored),
            Ok(Err(e)) => Error::from(e),
            Err(closed) => closed.into(),
        };
        let disk = &inner.disks[self.disk];
        let dest = layout::segment_path(&disk.root, &self.segment);
        let _ = disk
            .worker
            .run(move || layout::remove_segment_file(&dest))
            .await;
        Err(failure)
    }

    /// The committed segment becomes complete for everyone: its reservation turns into used
    /// bytes in one step under the lock, and its followers learn its tree's leaves.
    fn complete(&mut self, mut stored: Stored, tree: Tree) {
        {
            let mut st = self.inner.state();
            stored.readers = st
                .holdings
                .remove_live(&self.segment, self.generation)
                .map_or(0, |l| l.readers);
            st.holdings.insert_stored(self.segment, stored);
        }
        self.done = true;
        let check = Check::Groups(tree);
        let size = self.expected_len;
        self.progress.send_modify(|p| {
            p.filled = size;
            p.end = Some(End::Complete(check));
        });
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
            st.holdings.remove_live(&self.segment, self.generation);
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

/// What [`seal`] found: the group leaves (and the tree's parent nodes built from them) of a
/// segment stored, or the actual hash of one that was not.
type Sealed = Result<Tree, SegmentHash>;

/// Where the first group of `chunk` (written at `offset`, on a group's boundary) that is not
/// the one `leaves` say starts; `None` when all are.
fn first_wrong_group(leaves: &Leaves, offset: u64, chunk: &[u8]) -> Option<u64> {
    let first = offset / GROUP;
    chunk
        .chunks(GROUP as usize)
        .zip(first..)
        .find(|(group, n)| !leaves.check(*n, group))
        .map(|(_, n)| n * GROUP)
}

/// On the disk's worker: checks the hash of what was written, renames the temp file into place
/// and makes it durable. Returns the group leaves and the tree built from them, or the actual hash when it
/// is not `expected` (the write is then aborted and nothing was renamed).
fn seal(
    file: &File,
    hashing: Hashing,
    temp: &Path,
    dest: &Path,
    (segment, expected): (SegmentId, SegmentHash),
) -> Result<Sealed, Error> {
    let tree = match hashing {
        // Every group was checked as it landed, against leaves checked against `expected`.
        Hashing::Known(tree) => tree,
        Hashing::Computing(hasher) => {
            // Every byte came (checked by the caller), so the hashing finishes.
            let Some(leaves) = hasher.finish() else {
                return Err(Error::Aborted(segment));
            };
            let outboard = leaves.outboard();
            let actual = outboard.root();
            if actual != expected {
                return Ok(Err(actual));
            }
            Arc::new((leaves, outboard))
        }
    };
    let dir = dest.parent().unwrap_or(Path::new("."));
    let new_dir = !dir.exists();
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    // Renamed before it is durable: a crash from here until the index commit leaves a file
    // without a complete row, which reconciliation deletes.
    std::fs::rename(temp, dest).map_err(io("rename", temp))?;
    // The bytes and the directory entry (and a new program directory's own entry) must be
    // durable before the index says "complete". The syncs run at once: a journaling
    // filesystem then commits them together, where one after the other costs a journal commit
    // each (measured by `vodmesh bench`'s store section).
    let synced = std::thread::scope(|scope| {
        let dirs = scope.spawn(|| {
            let parent = dir.parent().filter(|_| new_dir);
            std::iter::once(dir)
                .chain(parent)
                .try_for_each(|d| File::open(d).and_then(|d| d.sync_all()))
        });
        let data = file.sync_all();
        let dirs = dirs
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("fsync thread panicked")));
        (data, dirs)
    });
    let failed = match synced {
        (Err(e), _) => io("fsync", dest)(e),
        (_, Err(e)) => io("fsync", dir)(e),
        _ => return Ok(Ok(tree)),
    };
    let _ = layout::remove_segment_file(dest);
    Err(failed)
}
