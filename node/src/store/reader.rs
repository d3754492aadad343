//! [`Reader`]: a read handle on a complete or still filling segment; reads of complete
//! segments verify every chunk group they touch ([`Check`]).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use tokio::sync::watch;
use vodmesh_proto::verified::Outboard;
use vodmesh_proto::{SegmentHash, SegmentId};

use super::accounting::{End, Progress};
use super::check::Check;
use super::layout::{self, io};
use super::shared::Inner;
use super::{CHUNK, DropReason, Error};

enum Mode {
    /// Between registration and the file being opened.
    Opening,
    Following(watch::Receiver<Progress>),
    Complete {
        file: Arc<File>,
        check: Check,
    },
}

/// A read handle on one segment. While it is open the segment is not evicted. On a filling
/// segment it follows the writer: reads wait for bytes not yet written, and are served as
/// written (the whole-segment hash is only known at the end; a follower whose writer then
/// fails gets [`Error::Aborted`], and consoles verify against the manifest anyway). Once the
/// segment is complete, every read verifies the chunk groups it touches.
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
    /// The [`CHUNK`] holding the first bad byte.
    Corrupt(u64),
}

impl Reader {
    /// Opens `segment` of the store `inner` for reading, complete or still filling.
    pub(super) async fn open(inner: &Arc<Inner>, segment: SegmentId) -> Result<Self, Error> {
        enum Found {
            Stored(u64, usize, u64, SegmentHash),
            Live(u64, usize, u64, watch::Receiver<Progress>),
        }
        let found = {
            let mut st = inner.state();
            if st.closed {
                return Err(Error::Closed);
            }
            let now = vodmesh_proto::time::now_ms();
            let seq = inner.next();
            let Some(disk) = st.holdings.open_reader(&segment, (now, seq)) else {
                return Err(Error::NotFound(segment));
            };
            if let Some(s) = st.holdings.stored(&segment) {
                let found = Found::Stored(s.generation, disk, s.size, s.hash);
                st.touched.insert(segment, now);
                found
            } else if let Some(l) = st.holdings.live(&segment) {
                Found::Live(l.generation, disk, l.total, l.progress.clone())
            } else {
                return Err(Error::NotFound(segment));
            }
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
            Found::Stored(generation, disk, size, hash) => {
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
                let check =
                    tokio::task::spawn_blocking(move || Check::load(&index, &segment, size, hash))
                        .await
                        .map_err(|_| Error::Closed)??;
                let Some(check) = check else {
                    inner
                        .drop_segment(segment, generation, DropReason::Corrupt { chunk: 0 })
                        .await;
                    return Err(Error::Corrupt { segment, chunk: 0 });
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
                    check,
                };
                Ok(reader)
            }
        }
    }

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

    /// The tree of a complete segment by 16 KiB chunk group (its parent nodes), as its reads
    /// are checked against, for a verified stream; `None` while it fills, or for a segment
    /// stored before trees were kept (`SegmentStore::outboard` computes that one).
    pub fn outboard(&self) -> Option<Outboard> {
        match &self.mode {
            Mode::Complete {
                check: Check::Groups(tree),
                ..
            } => Some(tree.1.clone()),
            _ => None,
        }
    }

    /// The segment's chunk-group tree where it is known: a complete segment's (as
    /// [`outboard`](Self::outboard)), or a filling one's whose writer was given it before its
    /// bytes (a verified copy), whose groups are each checked as they land. For a verified
    /// stream or copy of what this reader reads.
    pub fn tree(&self) -> Option<super::Tree> {
        match &self.mode {
            Mode::Complete {
                check: Check::Groups(tree),
                ..
            } => Some(tree.clone()),
            Mode::Following(rx) => {
                let p = rx.borrow();
                match &p.end {
                    Some(End::Complete(Check::Groups(tree))) => Some(tree.clone()),
                    _ => p.tree.clone(),
                }
            }
            _ => None,
        }
    }

    /// [`tree`](Self::tree), once a filling segment's writer has been given it (a verified
    /// copy's source sends it before any byte), or its first bytes came without one, or its
    /// write ended, or `wait` passed: a filling copy is streamed verified when it can be.
    pub async fn tree_within(&self, wait: std::time::Duration) -> Option<super::Tree> {
        if let Mode::Following(rx) = &self.mode {
            let mut rx = rx.clone();
            let settled = |p: &Progress| p.tree.is_some() || p.filled > 0 || p.end.is_some();
            let _ = tokio::time::timeout(wait, rx.wait_for(settled)).await;
        }
        self.tree()
    }

    /// Asks the kernel to bring a complete segment's file into the page cache, without
    /// waiting for it or copying a byte (`POSIX_FADV_WILLNEED`): the preload of a segment a
    /// console was just sent to (claim 16). A hint: a failure is ignored, and every read is
    /// checked as always (a verified stream by its receiver).
    pub async fn warm(&self) {
        let Mode::Complete { file, .. } = &self.mode else {
            return;
        };
        let file = file.clone();
        let _ = self.inner.disks[self.disk]
            .worker
            .run(move || rustix::fs::fadvise(&*file, 0, None, rustix::fs::Advice::WillNeed))
            .await;
    }

    /// Whether it reads a segment that was complete when it was opened (its reads are
    /// checked against the kept chunk hashes, not followed as they land).
    pub fn is_complete(&self) -> bool {
        matches!(self.mode, Mode::Complete { .. })
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
        self.next(max, Verify::Chunks, Vec::new()).await
    }

    /// [`read_next`](Self::read_next), with the chunks of a complete segment not checked: for
    /// a copy's source, whose receiver hashes every byte against the segment's hash (a wrong
    /// byte fails the copy there and it is fetched elsewhere), so the bytes are not hashed
    /// here a second time. Rot in this copy is the scrub's to find. Read into `buf`, whose
    /// bytes are overwritten: a caller handing back the buffer of a chunk it is done with
    /// spares zeroing a fresh one per chunk.
    pub async fn read_next_unchecked(
        &mut self,
        buf: Vec<u8>,
        max: usize,
    ) -> Result<Option<Vec<u8>>, Error> {
        self.next(max, Verify::None, buf).await
    }

    async fn next(
        &mut self,
        max: usize,
        verify: Verify,
        buf: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, Error> {
        if self.pos >= self.size {
            return Ok(None);
        }
        let want = (max.max(1) as u64).min(self.size - self.pos);
        let available = self.wait_for(self.pos + 1).await?;
        let n = want.min(available - self.pos);
        let bytes = self.read_at(self.pos, n, verify, buf).await?;
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
        self.read_at(offset, len, Verify::Chunks, Vec::new()).await
    }

    /// Reads of a complete segment without checking its chunk groups, placed in `buf`: each
    /// run `(at, offset, len)` reads `len` bytes from `offset` into `buf[at..at + len]`. For a
    /// verified stream (`/vodmesh/stream/1` in verified mode), whose receiver checks every
    /// group against the segment's tree and hash itself, so the engine does not hash what it
    /// serves a second time. Its writes interleave parent nodes and groups; a write's groups
    /// are read in one trip to the disk worker straight into the buffer it sends, so a stream
    /// holds that one buffer and no block besides. A segment still filling is read as
    /// [`read_range`](Self::read_range) reads it.
    pub async fn read_unchecked_runs(
        &mut self,
        mut buf: Vec<u8>,
        runs: Vec<(usize, u64, usize)>,
    ) -> Result<Vec<u8>, Error> {
        for &(at, offset, len) in &runs {
            let fits = at.checked_add(len).is_some_and(|end| end <= buf.len());
            let within = offset
                .checked_add(len as u64)
                .is_some_and(|end| end <= self.size);
            if !fits || !within {
                return Err(Error::OutOfRange {
                    segment: self.segment,
                    offset,
                    len: len as u64,
                    size: self.size,
                });
            }
        }
        let Mode::Complete { file, .. } = &self.mode else {
            for (at, offset, len) in runs {
                let bytes = self.read_range(offset, len as u64).await?;
                buf[at..at + len].copy_from_slice(&bytes);
            }
            return Ok(buf);
        };
        if !self.still_stored() {
            return Err(Error::NotFound(self.segment));
        }
        let file = file.clone();
        self.read_plain(file, buf, runs).await
    }

    /// `runs` of `file` read into `buf` as they are, unchecked: what the page cache holds on
    /// this task ([`read_cached`]), the rest on the disk worker.
    async fn read_plain(
        &self,
        file: Arc<File>,
        mut buf: Vec<u8>,
        runs: Vec<(usize, u64, usize)>,
    ) -> Result<Vec<u8>, Error> {
        let runs = read_cached(&file, &mut buf, runs);
        if runs.is_empty() {
            return Ok(buf);
        }
        let res = self.inner.disks[self.disk]
            .worker
            .run(move || {
                for (at, offset, len) in runs {
                    file.read_exact_at(&mut buf[at..at + len], offset)?;
                }
                Ok(buf)
            })
            .await?;
        res.map_err(|e| {
            let path = layout::segment_path(&self.inner.disks[self.disk].root, &self.segment);
            io("read", &path)(e)
        })
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
                Some(End::Complete(check)) => {
                    // From now on reads are verified like any complete segment's.
                    if let Some(file) = p.file {
                        self.mode = Mode::Complete { file, check };
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
    /// `len` bytes from `offset`; an unchecked read goes into `buf` (only its growth zeroed).
    async fn read_at(
        &mut self,
        offset: u64,
        len: u64,
        verify: Verify,
        mut buf: Vec<u8>,
    ) -> Result<Vec<u8>, Error> {
        if !self.still_stored() {
            return Err(Error::NotFound(self.segment));
        }
        let worker = &self.inner.disks[self.disk].worker;
        // A filling segment's bytes have no chunk hashes yet (its writer hashes them as they
        // land); a complete one's are checked unless the caller's peer checks them.
        let plain = match (&self.mode, verify) {
            (Mode::Opening, _) => return Err(Error::NotFound(self.segment)),
            (Mode::Following(rx), _) => match rx.borrow().file.clone() {
                Some(file) => Some(file),
                None => return Err(Error::NotFound(self.segment)),
            },
            (Mode::Complete { file, .. }, Verify::None) => Some(file.clone()),
            (Mode::Complete { .. }, Verify::Chunks) => None,
        };
        if let Some(file) = plain {
            let runs = vec![(0, offset, len as usize)];
            buf.resize(len as usize, 0);
            return self.read_plain(file, buf, runs).await;
        }
        match &self.mode {
            Mode::Opening | Mode::Following(_) => Err(Error::NotFound(self.segment)),
            Mode::Complete { file, check } => {
                let (file, check, size) = (file.clone(), check.clone(), self.size);
                let res = worker
                    .run(move || verified_read(&file, &check, size, offset, len))
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
        self.inner.state().holdings.generation(&self.segment) == Some(self.generation)
    }
}

/// Reads what of `runs` (`(at, offset, len)`: `len` bytes from `offset` into
/// `buf[at..at + len]`, each within `buf`) the page cache holds, on the calling task: with
/// `RWF_NOWAIT` a read that would wait for the disk returns at once instead. Returns what is
/// left for the disk worker: the runs from the first one not read whole, that one from where
/// it stopped (a read not cached, an error or the file's end: the worker's read says why).
/// A stream of a segment in the page cache (a popular one) is then served without a trip to
/// the disk worker's thread and back.
fn read_cached(
    file: &File,
    buf: &mut [u8],
    runs: Vec<(usize, u64, usize)>,
) -> Vec<(usize, u64, usize)> {
    let mut runs = runs.into_iter();
    while let Some((mut at, mut offset, mut len)) = runs.next() {
        while len > 0 {
            let flags = rustix::io::ReadWriteFlags::NOWAIT;
            let read = buf.get_mut(at..at + len).map(|into| {
                rustix::io::preadv2(file, &mut [std::io::IoSliceMut::new(into)], offset, flags)
            });
            match read {
                Some(Ok(n)) if n > 0 => {
                    at += n;
                    offset += n as u64;
                    len -= n;
                }
                _ => return std::iter::once((at, offset, len)).chain(runs).collect(),
            }
        }
    }
    Vec::new()
}

/// Whether a read of a complete segment verifies the chunks it touches.
#[derive(Clone, Copy)]
enum Verify {
    /// Each chunk touched, against its hash in the index; a wrong one drops the segment.
    Chunks,
    /// None: the reader's peer checks every byte it is sent.
    None,
}

/// Reads `[offset, offset + len)` of a complete segment, verifying every unit of `check` it
/// touches.
fn verified_read(
    file: &File,
    check: &Check,
    size: u64,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, ReadFail> {
    let unit = check.unit();
    let first = offset / unit;
    let last = (offset + len - 1) / unit;
    let start = first * unit;
    let end = ((last + 1) * unit).min(size);
    // The damage is reported by CHUNK, whatever the unit checked.
    let corrupt = |n: u64| ReadFail::Corrupt(n * unit / CHUNK);
    let mut buf = vec![0u8; (end - start) as usize];
    match file.read_exact_at(&mut buf, start) {
        Ok(()) => {}
        // A truncated file is damage, not an I/O failure.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(corrupt(first));
        }
        Err(e) => return Err(ReadFail::Io(e)),
    }
    for (i, bytes) in buf.chunks(unit as usize).enumerate() {
        let n = first + i as u64;
        if !check.holds(n, bytes) {
            return Err(corrupt(n));
        }
    }
    let skip = (offset - start) as usize;
    buf.drain(..skip);
    buf.truncate(len as usize);
    Ok(buf)
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.inner
            .state()
            .holdings
            .close_reader(&self.segment, self.generation, self.disk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `read_cached` leaves, read as the disk worker reads it: the bytes of every run, in
    /// its place, whatever the page cache held (all of the file, then part of it).
    #[test]
    fn runs_read_from_the_page_cache_and_the_rest_from_the_disk_are_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        let data: Vec<u8> = (0..1_000_000u32)
            .map(|i| (i * 7 + i / 4096) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        file.sync_all().unwrap();
        let runs = vec![
            (0, 0, 300_000),
            (300_064, 300_000, 500_000),
            (800_128, 900_000, 100_000),
        ];
        // All of it cached; none of it; its first 100 KB only (pages read back in after the
        // eviction, and what the kernel reads ahead of them).
        for evicted in [None, Some(0), Some(100_000)] {
            if let Some(read_back) = evicted {
                rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
                file.read_exact_at(&mut vec![0; read_back], 0).unwrap();
            }
            let mut buf = vec![0xAAu8; 900_128];
            let left = read_cached(&file, &mut buf, runs.clone());
            for (at, offset, len) in left {
                file.read_exact_at(&mut buf[at..at + len], offset).unwrap();
            }
            assert!(buf[..300_000] == data[..300_000], "{evicted:?}");
            assert!(buf[300_000..300_064].iter().all(|b| *b == 0xAA));
            assert!(
                buf[300_064..800_064] == data[300_000..800_000],
                "{evicted:?}"
            );
            assert!(buf[800_064..800_128].iter().all(|b| *b == 0xAA));
            assert!(buf[800_128..] == data[900_000..], "{evicted:?}");
        }
    }
}
