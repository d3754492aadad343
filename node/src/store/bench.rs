//! A throughput probe of the store, for `vodmesh bench` to set beside `dd` on the same disk.

use std::path::Path;
use std::time::Instant;

use bytes::Bytes;

use vodmesh_proto::{ProgramId, SegmentHash, SegmentId};

use super::{Config, Error, SegmentStore};

/// Segment size of the probe: the default raw-ingest segment (DESIGN section 4).
const SEGMENT: u64 = 4 * 1024 * 1024;
/// Write and read unit, like a network copy's frames.
const IO_CHUNK: usize = 256 * 1024;

/// Writes `bytes` as 4 MiB segments through a fresh store in `dir` (temp file, hash, fsync,
/// rename, index commit: the full write path) and then reads them all back verified. Returns
/// `(write MB/s, read MB/s)` with MB = 10^6 bytes, as `dd` reports. The reads are served from
/// the page cache where the bytes still are; compare with `dd` without `iflag=direct`.
pub async fn throughput_probe(dir: &Path, bytes: u64) -> Result<(f64, f64), Error> {
    let probe = Probe::open(dir, bytes).await?;
    let write = probe.write().await?;
    let read = probe.read().await?;
    probe.close().await?;
    Ok((write, read))
}

/// The probe in its steps, for a caller that measures around one of them (the CPU a write
/// takes, say): [`Probe::open`], [`Probe::write`], [`Probe::read`], [`Probe::close`].
pub struct Probe {
    store: SegmentStore,
    program: ProgramId,
    /// The segments' sizes (`bytes` in [`SEGMENT`]s, the last one shorter) and hashes, the
    /// hashes computed up front so that a write's time and CPU are the store's only.
    segments: Vec<(u64, SegmentHash)>,
    /// One pattern buffer reused by every segment.
    pattern: Bytes,
    bytes: u64,
}

impl Probe {
    /// A fresh store in `dir` with room for `bytes`, and the pattern to write.
    pub async fn open(dir: &Path, bytes: u64) -> Result<Self, Error> {
        let config = Config::new(
            dir.join("probe.redb"),
            vec![dir.join("probe-disk")],
            bytes * 2 + SEGMENT,
        );
        let (store, _events) = SegmentStore::open(config).await?;
        let program = ProgramId(*blake3::hash(b"vodmesh throughput probe").as_bytes());
        let pattern: Bytes = (0..SEGMENT)
            .map(|i| (i.wrapping_mul(31) >> 3) as u8)
            .collect::<Vec<u8>>()
            .into();
        let full_hash = SegmentHash::of(&pattern);
        let mut segments = Vec::new();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(SEGMENT);
            let hash = match n {
                SEGMENT => full_hash,
                n => SegmentHash::of(&pattern[..n as usize]),
            };
            segments.push((n, hash));
            left -= n;
        }
        Ok(Self {
            store,
            program,
            segments,
            pattern,
            bytes,
        })
    }

    /// Writes every segment, one after the other, durably: MB/s.
    pub async fn write(&self) -> Result<f64, Error> {
        let start = Instant::now();
        for (i, &(n, hash)) in self.segments.iter().enumerate() {
            let data = self.pattern.slice(..n as usize);
            let mut w = (self.store).begin_write(self.segment(i), hash, n).await?;
            // Slices of the one pattern: the chunks reach the disk worker without a copy, as
            // a network copy's do.
            for at in (0..data.len()).step_by(IO_CHUNK) {
                w.write_chunk(data.slice(at..(at + IO_CHUNK).min(data.len())))
                    .await?;
            }
            w.finish().await?;
        }
        Ok(mb_s(self.bytes, start.elapsed().as_secs_f64()))
    }

    /// Reads back, verified, what [`Probe::write`] wrote: MB/s.
    pub async fn read(&self) -> Result<f64, Error> {
        let start = Instant::now();
        let mut read = 0u64;
        for i in 0..self.segments.len() {
            let mut r = self.store.open_read(self.segment(i)).await?;
            while let Some(b) = r.read_next(1024 * 1024).await? {
                read += b.len() as u64;
            }
        }
        Ok(mb_s(read, start.elapsed().as_secs_f64()))
    }

    /// Removes what was written and shuts the store down.
    pub async fn close(self) -> Result<(), Error> {
        for i in 0..self.segments.len() {
            self.store.remove(self.segment(i)).await?;
        }
        self.store.shutdown().await
    }

    fn segment(&self, i: usize) -> SegmentId {
        SegmentId::new(self.program, i as u32)
    }
}

/// MB (10^6 bytes, as `dd` reports) per second.
fn mb_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs.max(1e-9)
}
