//! What the engines of a station hold on disk, read back after the station stopped: every
//! complete segment of a program through the store (which verifies each chunk), what
//! reconciling the store found, the bytes of the segment files, and whether copies are
//! marked evictable; and a station made to lie about what it holds ([`forge_segments`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    let stores = (0..engines).map(|index| {
        let storage = vodmesh_node::station::engine_storage(&StationConfig::new(data), index);
        (storage.index, storage.disks)
    });
    segments_of(stores, program, false).await
}

/// Every complete segment of `program` stored by the stopped engine processes
/// (`vodmesh-node engine`, default disk) whose data directories are `data`, read back as
/// [`engine_segments`] does, but a segment may be held by several of them (a copy made
/// while its first holder was down): the copies must then be identical.
pub async fn engine_process_segments(
    data: &[&Path],
    program: ProgramId,
) -> Result<(BTreeMap<u32, Vec<u8>>, Vec<Reconciled>)> {
    let stores = data
        .iter()
        .map(|d| (d.join("store.redb"), vec![d.join("segments")]));
    segments_of(stores, program, true).await
}

/// Every complete segment of `program` in the stores `(index, disks)`; fails on a segment
/// visible while filling, and on one stored twice (unless `copies`, where the copies must
/// be identical).
async fn segments_of(
    stores: impl Iterator<Item = (PathBuf, Vec<PathBuf>)>,
    program: ProgramId,
    copies: bool,
) -> Result<(BTreeMap<u32, Vec<u8>>, Vec<Reconciled>)> {
    let mut found = BTreeMap::new();
    let mut reports = Vec::new();
    for (index, disks) in stores {
        let (st, reconciled) = open_store(&index, disks).await?;
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
            match found.insert(seg.index.0, bytes.clone()) {
                Some(other) if copies && other == bytes => {}
                Some(_) if copies => bail!("segment {seg} stored twice, with different bytes"),
                Some(_) => bail!("segment {seg} stored twice"),
                None => {}
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
    open_store(&storage.index, storage.disks).await
}

/// Opens the store whose index is `index` over `disks`, reconciling, with room enough for
/// anything.
async fn open_store(index: &Path, disks: Vec<PathBuf>) -> Result<(SegmentStore, Reconciled)> {
    let (st, _events, reconciled) =
        SegmentStore::open_reconciled(store::Config::new(index, disks, u64::MAX / 4)).await?;
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

/// Turns the stopped station under `data` (with `engines` engines) into a liar: every
/// stored segment of `program` is replaced by the same number of other bytes (each byte
/// flipped), stored as if they were genuine (the index hashes them as they are), so that the
/// station serves them without noticing. Returns how many segments were forged.
pub async fn forge_segments(data: &Path, engines: usize, program: ProgramId) -> Result<usize> {
    let mut forged = 0;
    for index in 0..engines {
        let (st, _) = open(data, index).await?;
        for seg in st.list().into_iter().filter(|s| s.program == program) {
            let mut reader = st.open_read(seg).await?;
            let mut bytes = Vec::new();
            while let Some(chunk) = reader.read_next(1 << 20).await? {
                bytes.extend_from_slice(&chunk);
            }
            drop(reader);
            st.remove(seg).await?;
            let lie: Vec<u8> = bytes.iter().map(|b| !b).collect();
            let hash = vodmesh_proto::SegmentHash::of(&lie);
            let mut writer = st.begin_write(seg, hash, lie.len() as u64).await?;
            writer.write_chunk(lie.into()).await?;
            writer.finish().await?;
            forged += 1;
        }
        st.shutdown().await?;
    }
    Ok(forged)
}

/// Puts an embargo on `program` until `until_ms` in the store of engine `index` of the
/// stopped station under `data`, as an engine that missed the program's publish keeps it.
pub async fn embargo(data: &Path, index: usize, program: ProgramId, until_ms: u64) -> Result<()> {
    let (st, _) = open(data, index).await?;
    st.set_embargoes(vec![(program, Some(until_ms))]).await?;
    st.shutdown().await?;
    Ok(())
}

/// The file of engine `engine`'s copy of `segment` in the station under `data` (its first
/// disk).
pub fn segment_file(
    data: &Path,
    engine: usize,
    segment: vodmesh_proto::SegmentId,
) -> Result<PathBuf> {
    let storage = vodmesh_node::station::engine_storage(&StationConfig::new(data), engine);
    let disk = storage.disks.first().context("an engine without a disk")?;
    Ok(disk
        .join("segments")
        .join(segment.program.to_string())
        .join(segment.index.0.to_string()))
}

/// Flips the byte at `at` of engine `engine`'s copy of `segment` on the disk of the stopped
/// station under `data`, and nothing else: the copy's hash and chunk-group tree in the
/// engine's index stay those of the true bytes. An engine serves verified mode without
/// checking its reads (the console checks every group against the tree), so it streams the
/// flipped byte with the true tree: what an engine whose disk rotted, or that lies, sends. (Its
/// checked reads, raw mode, would find the damage: the store checks them against the same
/// tree, whose root is the segment's hash, so no index row can make wrong bytes pass.)
pub fn tamper_on_disk(
    data: &Path,
    engine: usize,
    segment: vodmesh_proto::SegmentId,
    at: usize,
) -> Result<()> {
    let path = segment_file(data, engine, segment)?;
    let mut bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let byte = bytes
        .get_mut(at)
        .context("tampering past the segment's end")?;
    *byte ^= 0x20;
    std::fs::write(&path, &bytes)?;
    Ok(())
}
