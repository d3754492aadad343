//! [`Writer`]: a segment streamed into the store, hashed as it lands, and made visible only
//! once it is verified, durable and committed to the index.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;
use tracing::{debug, instrument};
use vodmesh_proto::time::now_ms;
use vodmesh_proto::{SegmentHash, SegmentId};

use super::accounting::Stored;
use super::index::{Op, Record, SegmentState};
use super::layout::{self, io};
use super::segments::Inner;
use super::{CHUNK, Error};

/// What followers of a filling segment watch.
#[derive(Clone, Default)]
pub(super) struct Progress {
    pub(super) filled: u64,
    pub(super) file: Option<Arc<File>>,
    pub(super) end: Option<End>,
}

#[derive(Clone)]
pub(super) enum End {
    /// Verified and committed; later reads check these chunk hashes.
    Complete(Arc<[[u8; 32]]>),
    Aborted,
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
            hashing: Some(Hashing::default()),
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
                .holdings
                .live(&segment)
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
            // The reservation becomes used bytes in one step, under the lock.
            let readers = st
                .holdings
                .remove_live(&segment, self.generation)
                .map_or(0, |l| l.readers);
            st.holdings.insert_stored(
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
