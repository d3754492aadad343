//! The engine's segment store (claim 3): segment files on one or more disks, indexed in redb.
//!
//! - Each `--disk DIR` is an independent I/O channel with its own worker thread and bounded
//!   queue ([`worker`]), so streaming reads on one disk and copy writes on another proceed
//!   side by side. Its fsyncs run on a second thread of its own, so a segment being made
//!   durable holds up no read or write of another. A new segment goes to the least loaded disk
//!   with room in its capacity share.
//! - Writes stream in ([`Writer`]): BLAKE3 is computed as chunks arrive; the bytes go to a temp
//!   file, which is fsynced, renamed into place and only then committed to the index. A crash
//!   at any point leaves no partial segment visible; [`SegmentStore::open`] reconciles files
//!   and index ([`Reconciled`]).
//! - A segment can be read while it is still being written ([`Reader`] follows the writer, for
//!   fast-forward, claim 21).
//! - Beside each complete segment the index keeps its BLAKE3 tree by 16 KiB chunk group (the
//!   groups' chaining values, `vodmesh_proto::verified::Leaves`, computed as the bytes land,
//!   committed with the complete row; their tree's root is the segment's hash). It is the one
//!   hash pass a write makes: the segment's hash follows from it, reads of a complete segment
//!   check every group they touch against it (a mismatch drops the segment and emits
//!   [`Event::Dropped`]), and [`SegmentStore::outboard`] gives it to a verified stream. A
//!   segment stored before trees were kept is checked by the 64 KiB [`CHUNK`] hashes kept then,
//!   until its tree is computed on first need.
//! - Each chunk written is handed to the disk at once ([`writeback`]), so the fsync that makes
//!   a segment durable waits only for its tail.
//! - Capacity is bounded. Room is made by evicting the least recently used segments that
//!   another station also holds, never pinned (home) ones, never open ones; otherwise
//!   [`Error::Full`].
//! - [`locations`] is the director's segment location table, kept in redb as well; [`bench`]
//!   measures the store's throughput for `vodmesh bench`.

mod accounting;
pub mod bench;
mod check;
mod index;
mod layout;
pub mod locations;
mod policy;
mod reader;
mod segments;
mod shared;
mod worker;
mod writeback;
mod writer;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

use vodmesh_proto::{SegmentHash, SegmentId};

pub use index::{IndexError, SegmentState};
pub use layout::Reconciled;
pub use reader::Reader;
pub use segments::{DiskStats, Info, SegmentStore, Stats};
pub use writer::{Tree, Writer};

/// The unit damage is reported in ([`Error::Corrupt`]), and the verification unit of segments
/// stored before the store kept chunk-group trees.
pub const CHUNK: u64 = 64 * 1024;

/// How a [`SegmentStore`] is set up.
#[derive(Clone, Debug)]
pub struct Config {
    /// The redb index file (created if missing).
    pub index: PathBuf,
    /// One directory per disk (`--disk DIR`); each gets its own worker.
    pub disks: Vec<PathBuf>,
    /// Total bytes of segments across all disks (`--capacity`); split evenly between disks.
    pub capacity: u64,
    /// Pin every new segment (a home station never evicts).
    pub pin_all: bool,
    /// Jobs that may wait in each disk's queue before callers wait for room.
    pub queue_depth: usize,
    /// Events that may wait for the consumer before new ones are dropped (and logged).
    pub event_queue: usize,
}

impl Config {
    /// A store over `disks` holding at most `capacity` bytes, indexed in `index`.
    pub fn new(index: impl Into<PathBuf>, disks: Vec<PathBuf>, capacity: u64) -> Self {
        Self {
            index: index.into(),
            disks,
            capacity,
            pin_all: false,
            queue_depth: 32,
            event_queue: 256,
        }
    }
}

/// What the store tells its owner (the engine forwards these to its director).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A segment was found bad and removed; the director must stop sending viewers here.
    Dropped {
        /// The segment.
        segment: SegmentId,
        /// Why.
        reason: DropReason,
    },
    /// A segment was evicted to make room for another.
    Evicted {
        /// The segment.
        segment: SegmentId,
    },
}

/// Why a segment was dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A read found a chunk whose bytes do not match its hash (or the file was short).
    Corrupt {
        /// The chunk, counted in [`CHUNK`]s from the start.
        chunk: u64,
    },
    /// A scrub (all at start, `scrub()`, or one by one in the background, `scrub_one()`)
    /// re-hashed the file and it did not match.
    Scrub,
}

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration named no disk.
    #[error("no disk directory given: pass at least one --disk DIR")]
    NoDisks,
    /// A file operation failed.
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        /// The operation.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The index names segments on a disk that holds none of them.
    #[error(
        "{disk}: the segment index names {segments} segment(s) on this disk and it holds none of \
         them: is it mounted? Nothing was changed. If the disk is lost for good, move {} aside \
         to start this engine empty",
        index.display()
    )]
    DiskEmpty {
        /// The disk (its directory), or which one, when it is not given any more.
        disk: String,
        /// The segments the index names on it.
        segments: usize,
        /// The index file.
        index: PathBuf,
    },
    /// The index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The index did not open.
    #[error("opening {}: {source}", path.display())]
    IndexFile {
        /// Its file.
        path: PathBuf,
        /// Why.
        source: IndexError,
    },
    /// The store was shut down.
    #[error("segment store is shut down")]
    Closed,
    /// No such segment (or it was dropped or evicted meanwhile).
    #[error("segment {0} is not stored here")]
    NotFound(SegmentId),
    /// The segment is already stored or being written.
    #[error("segment {0} is already stored or being written")]
    Exists(SegmentId),
    /// The segment is being removed; retry shortly.
    #[error("segment {0} is being removed; retry")]
    Busy(SegmentId),
    /// No disk has room and nothing may be evicted.
    #[error(
        "store full: segment {segment} needs {need} bytes, at most {free} free on a disk (within \
         --capacity and what its file system has free) and nothing evictable (pinned, open, or \
         held by no other station); free space on the disk, raise --capacity or add a --disk"
    )]
    Full {
        /// The segment that was refused.
        segment: SegmentId,
        /// Its size.
        need: u64,
        /// The most free space on any one disk.
        free: u64,
    },
    /// More bytes arrived than the segment's expected length; the write was aborted.
    #[error("segment {segment} is longer than its expected {expected} bytes; write aborted")]
    TooLong {
        /// The segment.
        segment: SegmentId,
        /// Its expected length.
        expected: u64,
    },
    /// The writer finished before the expected length; the write was aborted.
    #[error("segment {segment} ended at {got} of its expected {expected} bytes; write aborted")]
    TooShort {
        /// The segment.
        segment: SegmentId,
        /// Its expected length.
        expected: u64,
        /// Bytes written.
        got: u64,
    },
    /// The bytes written do not hash to the expected hash; the write was aborted.
    #[error("segment {segment} hashes to {actual}, expected {expected}; write aborted")]
    HashMismatch {
        /// The segment.
        segment: SegmentId,
        /// The hash it should have.
        expected: SegmentHash,
        /// The hash of what was written.
        actual: SegmentHash,
    },
    /// A chunk group (16 KiB) of a write whose tree is known (a verified copy) is not the one
    /// the tree says: the groups before it were written, nothing from it on, and the write goes
    /// on from `offset` with the right bytes. Nothing was aborted.
    #[error(
        "segment {segment}: the bytes at {offset} are not the group its tree says; kept the {offset} bytes before them"
    )]
    GroupMismatch {
        /// The segment.
        segment: SegmentId,
        /// The first byte of the wrong group: the bytes written so far.
        offset: u64,
    },
    /// The tree offered for a write does not lead to its expected hash, or disagrees with the
    /// bytes already written; nothing was changed.
    #[error(
        "segment {segment}: the chunk-group tree offered does not match its hash or the bytes written"
    )]
    WrongTree {
        /// The segment.
        segment: SegmentId,
    },
    /// The stored bytes failed verification; the segment was dropped.
    #[error("segment {segment} is corrupt on disk (chunk {chunk}); it was dropped, fetch it again")]
    Corrupt {
        /// The segment.
        segment: SegmentId,
        /// The first chunk that failed.
        chunk: u64,
    },
    /// The writer of a segment being followed gave up.
    #[error("the write of segment {0} was aborted")]
    Aborted(SegmentId),
    /// A read past the end of a segment.
    #[error("range {offset}+{len} is outside segment {segment} of {size} bytes")]
    OutOfRange {
        /// The segment.
        segment: SegmentId,
        /// Requested start.
        offset: u64,
        /// Requested length.
        len: u64,
        /// The segment's size.
        size: u64,
    },
}

impl From<worker::Closed> for Error {
    fn from(_: worker::Closed) -> Self {
        Error::Closed
    }
}
