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
    let config = Config::new(
        dir.join("probe.redb"),
        vec![dir.join("probe-disk")],
        bytes * 2 + SEGMENT,
    );
    let (store, _events) = SegmentStore::open(config).await?;
    let program = ProgramId(*blake3::hash(b"vodmesh throughput probe").as_bytes());

    let mut sizes = Vec::new();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(SEGMENT);
        sizes.push(n);
        left -= n;
    }
    // One pattern buffer reused by every segment; its hash per size is computed up front so
    // that timing covers the store only.
    let pattern: Bytes = (0..SEGMENT)
        .map(|i| (i.wrapping_mul(31) >> 3) as u8)
        .collect::<Vec<u8>>()
        .into();
    let full_hash = SegmentHash::of(&pattern);

    let start = Instant::now();
    for (i, &n) in sizes.iter().enumerate() {
        let id = SegmentId::new(program, i as u32);
        let data = pattern.slice(..n as usize);
        let hash = if n == SEGMENT {
            full_hash
        } else {
            SegmentHash::of(&data)
        };
        let mut w = store.begin_write(id, hash, n).await?;
        // Slices of the one pattern: the chunks reach the disk worker without a copy, as a
        // network copy's do.
        for at in (0..data.len()).step_by(IO_CHUNK) {
            w.write_chunk(data.slice(at..(at + IO_CHUNK).min(data.len())))
                .await?;
        }
        w.finish().await?;
    }
    let write_secs = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut read = 0u64;
    for i in 0..sizes.len() {
        let mut r = store.open_read(SegmentId::new(program, i as u32)).await?;
        while let Some(b) = r.read_next(1024 * 1024).await? {
            read += b.len() as u64;
        }
    }
    let read_secs = start.elapsed().as_secs_f64();

    for i in 0..sizes.len() {
        store.remove(SegmentId::new(program, i as u32)).await?;
    }
    store.shutdown().await?;
    let mbps = |b: u64, s: f64| b as f64 / 1e6 / s.max(1e-9);
    Ok((mbps(bytes, write_secs), mbps(read, read_secs)))
}
