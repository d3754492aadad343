//! What the engines of a station hold on disk, read back after the station stopped: every
//! complete segment of a program through the store (which verifies each chunk), what
//! reconciling the store found, the bytes of the segment files, and whether copies are
//! marked evictable.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use vodmesh_node::StationConfig;
use vodmesh_node::store::{self, Reconciled, SegmentState, SegmentStore};
use vodmesh_proto::ProgramId;

/// Bytes of the segment files engine `index` of the station at `data` holds on disk (its
/// default disk, `DATA/engines/<index>/segments`), counted file by file.
pub fn bytes_on_disk(data: &Path, index: usize) -> u64 {
    let disk = data
        .join("engines")
        .join(index.to_string())
        .join("segments");
    segment_bytes(&disk)
}

/// Bytes of the complete segment files on an engine's disk directory (its `segments/`; the
/// writes in progress in `tmp/` do not count).
pub fn segment_bytes(disk: &Path) -> u64 {
    fn walk(dir: &Path) -> u64 {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => walk(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    }
    walk(&disk.join("segments"))
}

/// Every complete segment of `program` stored by engine `index` of the station at `data`
/// (the station must be stopped), read back through the store, which verifies each chunk.
/// Also returns what reconciling the store on open found.
pub async fn engine_segments(
    data: &Path,
    engines: usize,
    program: ProgramId,
) -> Result<(BTreeMap<u32, Vec<u8>>, Vec<Reconciled>)> {
    let mut found = BTreeMap::new();
    let mut reports = Vec::new();
    for index in 0..engines {
        let (st, reconciled) = open(data, index).await?;
        reports.push(reconciled);
        for seg in st.list() {
            if seg.program != program {
                continue;
            }
            let info = st.info(&seg).context("listed segment without info")?;
            if info.state != SegmentState::Complete {
                bail!("segment {seg} is visible while still filling");
            }
            let mut reader = st.open_read(seg).await?;
            let mut bytes = Vec::new();
            while let Some(chunk) = reader.read_next(1 << 20).await? {
                bytes.extend_from_slice(&chunk);
            }
            if found.insert(seg.index.0, bytes).is_some() {
                bail!("segment {seg} stored twice");
            }
        }
        st.shutdown().await?;
    }
    Ok((found, reports))
}

/// Opens the store of engine `index` of the stopped station under `data`, as the station
/// does at start (reconciling index and files), with room enough for anything.
async fn open(data: &Path, index: usize) -> Result<(SegmentStore, Reconciled)> {
    let storage = vodmesh_node::station::engine_storage(&StationConfig::new(data), index);
    let (st, _events, reconciled) = SegmentStore::open_reconciled(store::Config::new(
        &storage.index,
        storage.disks.clone(),
        u64::MAX / 4,
    ))
    .await?;
    Ok((st, reconciled))
}

/// Whether every stored segment of `program` at the station under `data` (stopped, with
/// `engines` engines) is marked as held elsewhere and not pinned: evictable.
pub async fn held_elsewhere(data: &Path, engines: usize, program: ProgramId) -> Result<bool> {
    let mut all = true;
    for index in 0..engines {
        let (st, _) = open(data, index).await?;
        for seg in st.list().into_iter().filter(|s| s.program == program) {
            all &= st.info(&seg).is_some_and(|i| i.held_elsewhere && !i.pinned);
        }
        st.shutdown().await?;
    }
    Ok(all)
}
