//! [`Check`]: what the reads of a complete segment are verified against (its chunk-group
//! tree, or for a segment stored before trees were kept its 64 KiB chunk hashes), and
//! [`verify_whole`], the scrub of a whole file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use vodmesh_proto::verified::{GROUP, LeafHasher, Leaves, Outboard};
use vodmesh_proto::{SegmentHash, SegmentId};

use super::CHUNK;
use super::index::{Index, IndexError};

/// What the reads of a complete segment are checked against.
#[derive(Clone)]
pub(super) enum Check {
    /// The chaining values of its 16 KiB chunk groups, whose tree leads to the segment's hash:
    /// the same hashes the writer computed as the bytes landed (one pass per byte); with the
    /// tree's parent nodes, built once to check that root, for a verified stream to send.
    Groups(Arc<(Leaves, Outboard)>),
    /// BLAKE3 hashes of its 64 KiB [`CHUNK`]s: what the store kept before it kept trees (a
    /// segment written then, whose tree was not computed since).
    Chunks(Arc<[[u8; 32]]>),
}

impl Check {
    /// The check kept for a complete segment of `size` bytes hashing to `hash`: its tree when
    /// the leaves kept lead to `hash`, else its chunk hashes when there is one per chunk.
    /// `None`: nothing to check its bytes against (the segment is damaged).
    pub(super) fn load(
        index: &Index,
        segment: &SegmentId,
        size: u64,
        hash: SegmentHash,
    ) -> Result<Option<Self>, IndexError> {
        let tree = index
            .groups(segment)?
            .and_then(|bytes| Leaves::from_bytes(size, &bytes))
            .map(|leaves| {
                let outboard = leaves.outboard();
                (leaves, outboard)
            })
            .filter(|(_, outboard)| outboard.root() == hash);
        if let Some(tree) = tree {
            return Ok(Some(Self::Groups(Arc::new(tree))));
        }
        let chunks = index
            .chunks(segment)?
            .filter(|c| c.len() as u64 == size.div_ceil(CHUNK));
        Ok(chunks.map(|c| Self::Chunks(c.into())))
    }

    /// Bytes per checked unit.
    pub(super) fn unit(&self) -> u64 {
        match self {
            Self::Groups(_) => GROUP,
            Self::Chunks(_) => CHUNK,
        }
    }

    /// Whether `bytes` are unit number `n`.
    pub(super) fn holds(&self, n: u64, bytes: &[u8]) -> bool {
        match self {
            Self::Groups(tree) => tree.0.check(n, bytes),
            Self::Chunks(chunks) => usize::try_from(n)
                .ok()
                .and_then(|n| chunks.get(n))
                .is_some_and(|h| blake3::hash(bytes).as_bytes() == h),
        }
    }
}

/// Whether `file` is `size` bytes hashing to `hash`, with every unit matching `check`.
pub(super) fn verify_whole(file: &File, size: u64, hash: SegmentHash, check: &Check) -> bool {
    let Ok(meta) = file.metadata() else {
        return false;
    };
    if meta.len() != size {
        return false;
    }
    // The tree's root is the segment's hash: the leaves of the bytes lead to it.
    let mut whole = LeafHasher::new(size);
    let unit = check.unit();
    let mut buf = vec![0u8; unit as usize];
    for n in 0..size.div_ceil(unit) {
        let start = n * unit;
        let len = unit.min(size - start) as usize;
        if file.read_exact_at(&mut buf[..len], start).is_err() || !check.holds(n, &buf[..len]) {
            return false;
        }
        whole.update(&buf[..len]);
    }
    whole
        .finish()
        .is_some_and(|leaves| leaves.outboard().root() == hash)
}
