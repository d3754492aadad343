//! Where segment files live on a disk, and the start-up reconciliation of files with the index.
//!
//! A disk directory holds `segments/<program hex>/<index>` (complete segments, named by id)
//! and `tmp/` (writes in progress). Only files in `segments/` with a complete index row are
//! segments; everything in `tmp/` is an interrupted write.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use tracing::{info, warn};
use vodmesh_proto::{ProgramId, SegmentId};

use super::Error;
use super::index::{Index, Op, Record, SegmentState};

const SEGMENTS_DIR: &str = "segments";
const TMP_DIR: &str = "tmp";

/// The final path of `segment` on the disk rooted at `root`.
pub(crate) fn segment_path(root: &Path, segment: &SegmentId) -> PathBuf {
    root.join(SEGMENTS_DIR)
        .join(segment.program.to_string())
        .join(segment.index.0.to_string())
}

/// A fresh temp path for a write of `segment`; `nonce` is unique within the process and `tmp/`
/// is emptied at every start, so it never collides.
pub(crate) fn temp_path(root: &Path, segment: &SegmentId, nonce: u64) -> PathBuf {
    root.join(TMP_DIR)
        .join(format!("{}.{}.{nonce}", segment.program, segment.index))
}

/// An I/O error with the operation and path it came from.
pub(crate) fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { what, path, source }
}

/// What reconciliation found and fixed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Complete segments kept.
    pub kept: usize,
    /// Interrupted writes removed (temp files and filling rows).
    pub interrupted: usize,
    /// Index rows dropped because their file was missing or of the wrong size.
    pub missing_files: usize,
    /// Segment files deleted because the index did not list them.
    pub orphan_files: usize,
}

/// Makes the files on `disks` and the index (at `index_path`) agree, and returns the complete
/// segments left. A disk the index names segments on and that holds none of them is refused
/// ([`Error::DiskEmpty`]) rather than reconciled.
pub(crate) fn reconcile(
    (index, index_path): (&Index, &Path),
    disks: &[PathBuf],
) -> Result<(Vec<(SegmentId, Record)>, Reconciled), Error> {
    let mut report = Reconciled::default();
    for root in disks {
        let tmp = root.join(TMP_DIR);
        std::fs::create_dir_all(&tmp).map_err(io("create", &tmp))?;
        std::fs::create_dir_all(root.join(SEGMENTS_DIR))
            .map_err(io("create", &root.join(SEGMENTS_DIR)))?;
        for entry in std::fs::read_dir(&tmp).map_err(io("list", &tmp))? {
            let path = entry.map_err(io("list", &tmp))?.path();
            remove_any(&path)?;
            report.interrupted += 1;
        }
    }

    // Every segment file on every disk: id -> [(disk, size)].
    let mut files: HashMap<SegmentId, Vec<(usize, u64)>> = HashMap::new();
    for (disk, root) in disks.iter().enumerate() {
        for (segment, size) in scan(root)? {
            files.entry(segment).or_default().push((disk, size));
        }
    }

    let records = index.load_all()?;
    empty_disks(&records, &files, disks, index_path)?;
    let mut ops = Vec::new();
    let mut kept = Vec::new();
    let mut keep_files: HashSet<(SegmentId, usize)> = HashSet::new();
    for (segment, mut record) in records {
        if record.state == SegmentState::Filling {
            ops.push(Op::Remove(segment));
            report.interrupted += 1;
            continue;
        }
        let found = files.get(&segment).and_then(|copies| {
            // The disk the index names first, then any other copy of the right size (disks
            // may be listed in another order than last time).
            let fits = |&&(_, size): &&(usize, u64)| size == record.size;
            copies
                .iter()
                .filter(fits)
                .find(|(d, _)| *d as u64 == u64::from(record.disk))
                .or_else(|| copies.iter().find(fits))
                .copied()
        });
        match found {
            Some((disk, _)) => {
                keep_files.insert((segment, disk));
                if disk as u64 != u64::from(record.disk) {
                    record.disk = u32::try_from(disk).unwrap_or(u32::MAX);
                    ops.push(Op::Put {
                        segment,
                        record,
                        chunks: None,
                    });
                }
                kept.push((segment, record));
            }
            None => {
                warn!(segment = %segment.short(), "index entry without its file; dropped");
                ops.push(Op::Remove(segment));
                report.missing_files += 1;
            }
        }
    }

    for (segment, copies) in &files {
        for (disk, _) in copies {
            if keep_files.contains(&(*segment, *disk)) {
                continue;
            }
            let path = segment_path(&disks[*disk], segment);
            warn!(segment = %segment.short(), path = %path.display(), "segment file not in the index; deleted");
            remove_any(&path)?;
            report.orphan_files += 1;
            if let Some(parent) = path.parent() {
                // Leaves a program's directory once its last segment is gone; fails harmlessly
                // when it still has others.
                let _ = std::fs::remove_dir(parent);
            }
        }
    }

    index.apply(&ops, true)?;
    report.kept = kept.len();
    info!(
        kept = report.kept,
        interrupted = report.interrupted,
        missing_files = report.missing_files,
        orphan_files = report.orphan_files,
        "segment store reconciled"
    );
    Ok((kept, report))
}

/// Refuses a disk the index names complete segments on when none of them is on any disk: a
/// disk that did not mount (its empty mount point in its place), or one left out of `--disk`.
/// Reconciled, its segments would leave the index, and at the next start with the disk back
/// their files would be deleted as unknown: the whole disk lost, with a warning a line.
fn empty_disks(
    records: &[(SegmentId, Record)],
    files: &HashMap<SegmentId, Vec<(usize, u64)>>,
    disks: &[PathBuf],
    index_path: &Path,
) -> Result<(), Error> {
    // disk -> (segments named, segments found)
    let mut by_disk: HashMap<u32, (usize, usize)> = HashMap::new();
    for (segment, record) in records {
        if record.state != SegmentState::Complete {
            continue;
        }
        // Any file of it, of any size: the disk is there (a wrong size is reconciled below).
        let found = files.contains_key(segment);
        let counts = by_disk.entry(record.disk).or_default();
        counts.0 += 1;
        counts.1 += usize::from(found);
    }
    let mut empty: Vec<(u32, usize)> = (by_disk.into_iter())
        .filter(|(_, (named, found))| *named > 0 && *found == 0)
        .map(|(disk, (named, _))| (disk, named))
        .collect();
    empty.sort_unstable();
    match empty.first() {
        None => Ok(()),
        Some(&(disk, segments)) => Err(Error::DiskEmpty {
            disk: (usize::try_from(disk).ok().and_then(|d| disks.get(d))).map_or_else(
                || format!("disk #{disk} (not given now)"),
                |d| d.display().to_string(),
            ),
            segments,
            index: index_path.to_path_buf(),
        }),
    }
}

/// Segment files under `root/segments`; names that are not `<program hex>/<index>` are left
/// alone (and logged): they are not ours to delete.
fn scan(root: &Path) -> Result<Vec<(SegmentId, u64)>, Error> {
    let dir = root.join(SEGMENTS_DIR);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io("list", &dir))? {
        let entry = entry.map_err(io("list", &dir))?;
        let path = entry.path();
        let program = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<ProgramId>().ok());
        let Some(program) = program.filter(|_| path.is_dir()) else {
            warn!(path = %path.display(), "unexpected entry in the segment directory; left alone");
            continue;
        };
        for file in std::fs::read_dir(&path).map_err(io("list", &path))? {
            let file = file.map_err(io("list", &path))?;
            let index = file
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok());
            let meta = file.metadata().map_err(io("stat", &file.path()))?;
            match index {
                Some(index) if meta.is_file() => {
                    out.push((SegmentId::new(program, index), meta.len()));
                }
                _ => {
                    warn!(path = %file.path().display(), "unexpected entry in the segment directory; left alone");
                }
            }
        }
    }
    Ok(out)
}

fn remove_any(path: &Path) -> Result<(), Error> {
    let res = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match res {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", path)(e)),
        _ => Ok(()),
    }
}

/// Removes a segment file (missing is fine) and, if it was the last of its program, the
/// program's directory.
pub(crate) fn remove_segment_file(path: &Path) -> Result<(), Error> {
    remove_any(path)?;
    if let Some(parent) = path.parent() {
        let _ = std::fs::remove_dir(parent);
    }
    Ok(())
}
