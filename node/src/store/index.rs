//! The redb index of stored segments: which disk holds a segment, its size, hash, state, last
//! use and flags, and the per-chunk hashes that range reads verify against.
//!
//! Every call here is blocking (redb commits fsync); the store runs them on its index worker.
//!
//! The file is a [`RedbFile`]: after a failed commit (a full disk) it is opened again at the
//! next one, back at the last durable commit. Nothing the store serves is lost then: the index
//! is read whole only at a start, and what a commit without fsync wrote (filling rows, removals,
//! last-use times, recomputed tree leaves) a crash may lose as well: the next start's
//! reconciliation drops a row without its file, and a lost leaf row is computed again. Complete
//! rows, their leaves, flags and embargoes are durable commits, in the index or failed (and the
//! store then did not take them up).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Durability, ReadableTable, TableDefinition};
use vodmesh_proto::{ProgramId, SegmentHash, SegmentId};
use vodmesh_registry::RedbFile;

/// `(program, index)`: sorts a program's segments together, in order.
type Key = (&'static [u8; 32], u32);

/// `(disk, size, hash, state, last use ms, pinned, held elsewhere)`.
type Row = (u32, u64, &'static [u8; 32], u8, u64, bool, bool);

const SEGMENTS: TableDefinition<Key, Row> = TableDefinition::new("segments");
/// Concatenated 32-byte BLAKE3 hashes of the segment's `CHUNK`-sized chunks.
const CHUNKS: TableDefinition<Key, &[u8]> = TableDefinition::new("segment_chunks");
/// Concatenated 32-byte chaining values of the segment's 16 KiB chunk groups
/// (`vodmesh_proto::verified::Leaves`): its BLAKE3 tree for verified streaming.
const GROUPS: TableDefinition<Key, &[u8]> = TableDefinition::new("segment_groups");
const META: TableDefinition<&str, u64> = TableDefinition::new("store_meta");
/// Programs the engine may not stream yet, to when their embargo ends (`engine::embargo`):
/// kept here so that a restarted engine refuses them before its director tells it again.
const EMBARGOES: TableDefinition<&[u8; 32], u64> = TableDefinition::new("embargoes");

/// Bumped when the rows above change meaning; an index of another version is refused.
const SCHEMA_VERSION: u64 = 1;

const STATE_FILLING: u8 = 0;
const STATE_COMPLETE: u8 = 1;

/// Whether a segment's bytes are all on disk and verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentState {
    /// Being written; never served from the index after a restart.
    Filling,
    /// Written, hash-checked, renamed into place and committed.
    Complete,
}

/// One segment's index row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) disk: u32,
    pub(crate) size: u64,
    pub(crate) hash: SegmentHash,
    pub(crate) state: SegmentState,
    pub(crate) last_use_ms: u64,
    pub(crate) pinned: bool,
    pub(crate) held_elsewhere: bool,
}

/// One change to the index; a batch of them is one commit.
#[derive(Debug)]
pub(crate) enum Op {
    Put {
        segment: SegmentId,
        record: Record,
        /// `Some` replaces the chunk hashes; `None` leaves them.
        chunks: Option<Vec<u8>>,
    },
    Remove(SegmentId),
    /// Keeps a segment's chunk-group leaves (`vodmesh_proto::verified::Leaves::to_bytes`).
    Groups(SegmentId, Vec<u8>),
    Touch(SegmentId, u64),
    /// A segment's flags: `(pinned, held_elsewhere)`.
    Flags(SegmentId, (bool, bool)),
    /// `program` may not be streamed until `Some(ms)`; `None`: it may.
    Embargo(ProgramId, Option<u64>),
}

/// Why the index could not be used.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// redb failed (I/O, corruption of the index file, lock held by another process).
    #[error("segment index: {0}")]
    Db(#[from] redb::Error),
    /// The index was written by an incompatible version of vodmesh.
    #[error("segment index has schema version {found}, this build uses {SCHEMA_VERSION}")]
    Schema {
        /// The version found in the file.
        found: u64,
    },
}

fn db_err(e: impl Into<redb::Error>) -> IndexError {
    IndexError::Db(e.into())
}

pub(crate) struct Index {
    db: RedbFile,
    /// Commits so far, and of them the durable ones (each waits on the device).
    commits: [AtomicU64; 2],
}

impl Index {
    /// Opens (or creates) the index at `path` and checks its schema version.
    pub(crate) fn open(path: &Path) -> Result<Self, IndexError> {
        let db = RedbFile::open(path)?;
        let tx = db.begin_write().map_err(db_err)?;
        {
            let mut meta = tx.open_table(META).map_err(db_err)?;
            let found = meta.get("schema").map_err(db_err)?.map(|v| v.value());
            match found {
                None => {
                    meta.insert("schema", SCHEMA_VERSION).map_err(db_err)?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(found) => return Err(IndexError::Schema { found }),
            }
            tx.open_table(SEGMENTS).map_err(db_err)?;
            tx.open_table(CHUNKS).map_err(db_err)?;
            // A table added later: indexes written before it simply have none yet.
            tx.open_table(EMBARGOES).map_err(db_err)?;
            // Added with verified streaming: a segment stored before has no row here, and
            // gets one computed on first need.
            tx.open_table(GROUPS).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(Self {
            db,
            commits: Default::default(),
        })
    }

    /// Every row, in key order.
    pub(crate) fn load_all(&self) -> Result<Vec<(SegmentId, Record)>, IndexError> {
        self.db
            .read(|tx| {
                let table = tx.open_table(SEGMENTS)?;
                let mut out = Vec::new();
                for item in table.iter()? {
                    let (k, v) = item?;
                    out.push((key_to_id(k.value()), row_to_record(v.value())));
                }
                Ok(out)
            })
            .map_err(db_err)
    }

    /// Every embargo kept: a program and when it ends.
    pub(crate) fn embargoes(&self) -> Result<Vec<(ProgramId, u64)>, IndexError> {
        self.db
            .read(|tx| {
                let table = tx.open_table(EMBARGOES)?;
                let mut out = Vec::new();
                for item in table.iter()? {
                    let (k, v) = item?;
                    out.push((ProgramId(*k.value()), v.value()));
                }
                Ok(out)
            })
            .map_err(db_err)
    }

    /// The chunk hashes of `segment`, if it has any stored.
    pub(crate) fn chunks(&self, segment: &SegmentId) -> Result<Option<Vec<[u8; 32]>>, IndexError> {
        self.db
            .read(|tx| {
                let table = tx.open_table(CHUNKS)?;
                let got = table.get(id_to_key(segment))?;
                Ok(got.map(|v| split_hashes(v.value())))
            })
            .map_err(db_err)
    }

    /// The chunk-group leaves of `segment`, as stored, if it has any.
    pub(crate) fn groups(&self, segment: &SegmentId) -> Result<Option<Vec<u8>>, IndexError> {
        self.db
            .read(|tx| {
                let table = tx.open_table(GROUPS)?;
                let got = table.get(id_to_key(segment))?;
                Ok(got.map(|v| v.value().to_vec()))
            })
            .map_err(db_err)
    }

    /// Applies `ops` in one transaction. `durable: false` skips the fsync; such a commit becomes
    /// durable with the next durable one (used for filling rows and last-use updates, which a
    /// crash may lose without harm).
    pub(crate) fn apply(&self, ops: &[Op], durable: bool) -> Result<(), IndexError> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin_write().map_err(db_err)?;
        if !durable {
            tx.set_durability(Durability::None).map_err(db_err)?;
        }
        {
            let mut segs = tx.open_table(SEGMENTS).map_err(db_err)?;
            let mut chunks = tx.open_table(CHUNKS).map_err(db_err)?;
            let mut embargoes = tx.open_table(EMBARGOES).map_err(db_err)?;
            let mut groups = tx.open_table(GROUPS).map_err(db_err)?;
            for op in ops {
                match op {
                    Op::Embargo(program, Some(until)) => {
                        embargoes
                            .insert(program.as_bytes(), *until)
                            .map_err(db_err)?;
                    }
                    Op::Embargo(program, None) => {
                        embargoes.remove(program.as_bytes()).map_err(db_err)?;
                    }
                    Op::Put {
                        segment,
                        record,
                        chunks: c,
                    } => {
                        segs.insert(id_to_key(segment), record_to_row(record))
                            .map_err(db_err)?;
                        if let Some(c) = c {
                            chunks
                                .insert(id_to_key(segment), c.as_slice())
                                .map_err(db_err)?;
                        }
                    }
                    Op::Remove(segment) => {
                        segs.remove(id_to_key(segment)).map_err(db_err)?;
                        chunks.remove(id_to_key(segment)).map_err(db_err)?;
                        groups.remove(id_to_key(segment)).map_err(db_err)?;
                    }
                    Op::Groups(segment, leaves) => {
                        groups
                            .insert(id_to_key(segment), leaves.as_slice())
                            .map_err(db_err)?;
                    }
                    Op::Touch(segment, ms) => {
                        let old = segs
                            .get(id_to_key(segment))
                            .map_err(db_err)?
                            .map(|v| row_to_record(v.value()));
                        if let Some(mut r) = old {
                            r.last_use_ms = *ms;
                            segs.insert(id_to_key(segment), record_to_row(&r))
                                .map_err(db_err)?;
                        }
                    }
                    Op::Flags(segment, (pinned, held_elsewhere)) => {
                        let old = segs
                            .get(id_to_key(segment))
                            .map_err(db_err)?
                            .map(|v| row_to_record(v.value()));
                        if let Some(mut r) = old {
                            r.pinned = *pinned;
                            r.held_elsewhere = *held_elsewhere;
                            segs.insert(id_to_key(segment), record_to_row(&r))
                                .map_err(db_err)?;
                        }
                    }
                }
            }
        }
        tx.commit().map_err(db_err)?;
        self.commits[usize::from(durable)].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Commits since the index was opened: all of them, and the durable ones.
    #[cfg(test)]
    pub(crate) fn commits(&self) -> (u64, u64) {
        let [other, durable] = &self.commits;
        let durable = durable.load(Ordering::Relaxed);
        (other.load(Ordering::Relaxed) + durable, durable)
    }
}

fn id_to_key(id: &SegmentId) -> (&[u8; 32], u32) {
    (id.program.as_bytes(), id.index.0)
}

fn key_to_id((program, index): (&[u8; 32], u32)) -> SegmentId {
    SegmentId::new(ProgramId(*program), index)
}

fn record_to_row(r: &Record) -> (u32, u64, &[u8; 32], u8, u64, bool, bool) {
    let state = match r.state {
        SegmentState::Filling => STATE_FILLING,
        SegmentState::Complete => STATE_COMPLETE,
    };
    (
        r.disk,
        r.size,
        r.hash.as_bytes(),
        state,
        r.last_use_ms,
        r.pinned,
        r.held_elsewhere,
    )
}

fn row_to_record(
    (disk, size, hash, state, last_use_ms, pinned, held_elsewhere): (
        u32,
        u64,
        &[u8; 32],
        u8,
        u64,
        bool,
        bool,
    ),
) -> Record {
    Record {
        disk,
        size,
        hash: SegmentHash(*hash),
        // Anything but a known "complete" is treated as an unfinished write and reconciled away.
        state: if state == STATE_COMPLETE {
            SegmentState::Complete
        } else {
            SegmentState::Filling
        },
        last_use_ms,
        pinned,
        held_elsewhere,
    }
}

/// Splits concatenated 32-byte hashes; a trailing partial hash (a damaged row) is ignored, and
/// the chunk it belonged to then fails verification.
pub(crate) fn split_hashes(bytes: &[u8]) -> Vec<[u8; 32]> {
    bytes
        .chunks_exact(32)
        .filter_map(|c| <[u8; 32]>::try_from(c).ok())
        .collect()
}
