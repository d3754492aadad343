//! Verified streaming by chunk group: a segment's BLAKE3 tree cut at [`GROUP`] (16 KiB, as
//! bao and iroh-blobs' `bao-tree` with `BlockSize::from_chunk_log(4)`), so that a console
//! checks each group against the manifest's per-segment hash as it arrives, instead of the
//! whole segment at its end.
//!
//! The tree is BLAKE3's own, so its root is [`SegmentHash::of`] the segment and manifests do
//! not change. A store keeps, beside each segment, its groups' chaining values ([`Leaves`],
//! 32 bytes per group, 0.2 % of the segment), computed as the bytes land; the parent nodes
//! ([`Outboard`], 64 bytes each, in pre-order) follow from them at once.
//!
//! On the wire (`/vodmesh/stream/1` in verified mode) an engine sends, from the group that
//! holds the requested offset to the end ([`plan`]), the tree in pre-order: each parent node
//! whose range reaches that part as its two children's chaining values (64 bytes), each group
//! as its bytes. A node wholly before the start is not sent: its chaining value came in its
//! parent's pair. [`Decoder`] checks each item against what its parent said (the root against
//! the segment hash) and so hands out each group as soon as it is whole, holding nothing but
//! the group being read and one chaining value per tree level.

use blake3::hazmat::{
    HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};

use crate::ids::SegmentHash;

/// Bytes per chunk group: the unit a console verifies and hands out.
pub const GROUP: u64 = 16 * 1024;
/// Bytes of one parent node on the wire and in an [`Outboard`]: two chaining values.
pub const PAIR: usize = 64;

/// A BLAKE3 chaining value (or, for a one-group segment, its root hash).
pub type Cv = [u8; 32];

/// Groups of a segment of `size` bytes (an empty segment is one empty group).
pub fn groups(size: u64) -> u64 {
    size.div_ceil(GROUP).max(1)
}

/// The first byte a verified stream asked for `offset` starts at: the start of its group.
pub fn group_start(offset: u64) -> u64 {
    offset / GROUP * GROUP
}

/// The chaining value of the group of bytes `data` starting at `start`; for the only group of
/// a segment (`root`), the segment's hash.
fn group_cv(start: u64, data: &[u8], root: bool) -> Cv {
    if root {
        return *blake3::hash(data).as_bytes();
    }
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(start);
    hasher.update(data);
    hasher.finalize_non_root()
}

fn parent_cv(pair: &[u8; PAIR], root: bool) -> Cv {
    let (mut left, mut right) = ([0u8; 32], [0u8; 32]);
    left.copy_from_slice(&pair[..32]);
    right.copy_from_slice(&pair[32..]);
    if root {
        *merge_subtrees_root(&left, &right, Mode::Hash).as_bytes()
    } else {
        merge_subtrees_non_root(&left, &right, Mode::Hash)
    }
}

/// Where a node of the tree over `start..end` splits (its left child's end).
fn split(start: u64, end: u64) -> u64 {
    // More than one group: longer than a BLAKE3 chunk, as `left_subtree_len` requires, and
    // the left part is a power of two of at least one group.
    start + left_subtree_len(end - start)
}

/// The groups' chaining values of a segment, computed as its bytes arrive in any pieces:
/// every byte is hashed once.
#[derive(Clone)]
pub struct LeafHasher {
    size: u64,
    pos: u64,
    hasher: blake3::Hasher,
    leaves: Vec<Cv>,
}

impl LeafHasher {
    /// For a segment of `size` bytes.
    pub fn new(size: u64) -> Self {
        Self {
            size,
            pos: 0,
            hasher: blake3::Hasher::new(),
            leaves: Vec::with_capacity(groups(size).min(1 << 16) as usize),
        }
    }

    /// Bytes hashed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The chaining values of the groups hashed whole so far (none for a segment of one
    /// group, whose only value is its root).
    pub fn done(&self) -> &[Cv] {
        &self.leaves
    }

    /// Hashes the next bytes. Bytes past `size` are not hashed (the caller refuses them).
    pub fn update(&mut self, mut data: &[u8]) {
        let left = self.size.saturating_sub(self.pos);
        data = &data[..data.len().min(usize::try_from(left).unwrap_or(usize::MAX))];
        while !data.is_empty() {
            let room = GROUP - self.pos % GROUP;
            let take = data.len().min(usize::try_from(room).unwrap_or(usize::MAX));
            self.hasher.update(&data[..take]);
            self.pos += take as u64;
            data = &data[take..];
            // A whole group of a segment of several: its chaining value is final.
            if self.pos.is_multiple_of(GROUP) && self.size > GROUP {
                self.leaves.push(self.hasher.finalize_non_root());
                self.hasher = blake3::Hasher::new();
                if self.pos < self.size {
                    self.hasher.set_input_offset(self.pos);
                }
            }
        }
    }

    /// The leaves, once all `size` bytes were hashed; `None` before.
    pub fn finish(mut self) -> Option<Leaves> {
        if self.pos != self.size {
            return None;
        }
        if self.size <= GROUP {
            self.leaves.push(*self.hasher.finalize().as_bytes());
        } else if !self.pos.is_multiple_of(GROUP) {
            self.leaves.push(self.hasher.finalize_non_root());
        }
        Leaves::new(self.size, self.leaves)
    }
}

/// The chaining values of a segment's groups, in order: what a store keeps beside a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leaves {
    size: u64,
    cvs: Vec<Cv>,
}

impl Leaves {
    /// The leaves of a segment of `size` bytes; `None` unless there is one per group.
    pub fn new(size: u64, cvs: Vec<Cv>) -> Option<Self> {
        (cvs.len() as u64 == groups(size)).then_some(Self { size, cvs })
    }

    /// Computes the leaves of `data`.
    pub fn of(data: &[u8]) -> Self {
        let mut hasher = LeafHasher::new(data.len() as u64);
        hasher.update(data);
        hasher
            .finish()
            .expect("a hasher fed its whole size finishes")
    }

    /// Parses concatenated chaining values (as stored) of a segment of `size` bytes.
    pub fn from_bytes(size: u64, bytes: &[u8]) -> Option<Self> {
        if !bytes.len().is_multiple_of(32) {
            return None;
        }
        let cvs = bytes
            .chunks_exact(32)
            .filter_map(|c| <Cv>::try_from(c).ok())
            .collect();
        Self::new(size, cvs)
    }

    /// The chaining values concatenated, as stored.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.cvs.concat()
    }

    /// The segment's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The chaining values, one per group in order.
    pub fn cvs(&self) -> &[Cv] {
        &self.cvs
    }

    /// Whether `data` is the segment's group number `index` (whole: [`GROUP`] bytes, or the
    /// rest of the segment for its last group). A store checks its reads with this: one hash
    /// pass per byte read, as when it was written.
    pub fn check(&self, index: u64, data: &[u8]) -> bool {
        let Some(expected) = usize::try_from(index).ok().and_then(|i| self.cvs.get(i)) else {
            return false;
        };
        let start = index * GROUP;
        let len = GROUP.min(self.size.saturating_sub(start));
        data.len() as u64 == len && group_cv(start, data, self.cvs.len() == 1) == *expected
    }

    /// The parent nodes and the root they lead to.
    pub fn outboard(&self) -> Outboard {
        let mut pairs = Vec::with_capacity(self.cvs.len().saturating_sub(1));
        let root = self.node(0, self.size, true, &mut pairs);
        Outboard {
            size: self.size,
            root: SegmentHash(root),
            pairs,
        }
    }

    fn node(&self, start: u64, end: u64, root: bool, pairs: &mut Vec<[u8; PAIR]>) -> Cv {
        if end - start <= GROUP {
            return self.cvs[(start / GROUP) as usize];
        }
        let mid = split(start, end);
        let at = pairs.len();
        pairs.push([0; PAIR]);
        let left = self.node(start, mid, false, pairs);
        let right = self.node(mid, end, false, pairs);
        let pair = &mut pairs[at];
        pair[..32].copy_from_slice(&left);
        pair[32..].copy_from_slice(&right);
        parent_cv(pair, root)
    }
}

/// A segment's parent nodes in pre-order, with the root they lead to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outboard {
    size: u64,
    root: SegmentHash,
    pairs: Vec<[u8; PAIR]>,
}

impl Outboard {
    /// The root: the segment's hash when the leaves were right.
    pub fn root(&self) -> SegmentHash {
        self.root
    }

    /// The segment's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The parent node at `index` in pre-order (an [`Item::Parent`]'s `index`).
    pub fn pair(&self, index: usize) -> Option<&[u8; PAIR]> {
        self.pairs.get(index)
    }
}

/// One item of a verified stream, in the order sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item {
    /// A parent node over bytes `start..end`: its two children's chaining values, [`PAIR`]
    /// bytes. `index` is its place in the [`Outboard`].
    Parent {
        /// Place in the outboard's pre-order.
        index: usize,
        /// First byte below it.
        start: u64,
        /// Where its children meet.
        mid: u64,
        /// End of its bytes.
        end: u64,
        /// Whether it is the root.
        root: bool,
    },
    /// The group of bytes `start..end`, as they are.
    Group {
        /// Its first byte.
        start: u64,
        /// Its end.
        end: u64,
        /// Whether it is the whole segment (a one-group segment).
        root: bool,
    },
}

impl Item {
    /// Its bytes on the wire.
    pub fn len(&self) -> usize {
        match self {
            Item::Parent { .. } => PAIR,
            Item::Group { start, end, .. } => (end - start) as usize,
        }
    }

    /// Whether it has no bytes (the group of an empty segment).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The items a verified stream of a segment of `size` bytes from `offset` sends, in order:
/// from the start of the group holding `offset` (clamped to the end). Made as they are taken,
/// holding one node per tree level.
pub fn plan(size: u64, offset: u64) -> Plan {
    Plan {
        // An empty segment is one empty group; any other is walked from its root.
        stack: if size == 0 {
            Vec::new()
        } else {
            vec![(0, size, true)]
        },
        empty: size == 0,
        from: group_start(offset.min(size)),
        next: 0,
    }
}

/// The items of a verified stream ([`plan`]), in pre-order.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Nodes still to visit, `(start, end, root)`, the next one on top.
    stack: Vec<(u64, u64, bool)>,
    /// The one empty group of an empty segment, still to come.
    empty: bool,
    from: u64,
    /// The outboard index of the next parent node in pre-order.
    next: usize,
}

impl Iterator for Plan {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        if std::mem::take(&mut self.empty) {
            return Some(Item::Group {
                start: 0,
                end: 0,
                root: true,
            });
        }
        while let Some((start, end, root)) = self.stack.pop() {
            if end - start <= GROUP {
                if end > self.from {
                    return Some(Item::Group { start, end, root });
                }
                continue;
            }
            let index = self.next;
            if end <= self.from {
                // Wholly before the start: skipped, with the parents below it.
                self.next += (end - start).div_ceil(GROUP) as usize - 1;
                continue;
            }
            self.next += 1;
            let mid = split(start, end);
            // The left child is visited first.
            self.stack.push((mid, end, false));
            self.stack.push((start, mid, false));
            return Some(Item::Parent {
                index,
                start,
                mid,
                end,
                root,
            });
        }
        None
    }
}

/// Why bytes of a verified stream were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A parent node's chaining values do not lead to what its parent (or the segment hash)
    /// said.
    #[error("the tree node over bytes {start}..{end} does not match the segment hash")]
    Parent {
        /// First byte below it.
        start: u64,
        /// End of its bytes.
        end: u64,
    },
    /// A group's bytes do not hash to what its parent said.
    #[error("bytes {start}..{end} do not match the segment hash")]
    Group {
        /// Its first byte.
        start: u64,
        /// Its end.
        end: u64,
    },
    /// Bytes were given past the end, or not as many as the next item has.
    #[error("the stream does not follow the segment's tree")]
    Misframed,
}

/// Checks a verified stream of one segment item by item, against the segment's hash. Sans-IO:
/// the caller reads [`need`](Self::need) bytes and hands them to [`verify`](Self::verify).
pub struct Decoder {
    items: Plan,
    next: Option<Item>,
    /// Chaining values still to be matched, the next one on top.
    expected: Vec<Cv>,
    start: u64,
}

impl Decoder {
    /// For a segment of `size` bytes hashing to `root`, streamed from `offset` (rounded down
    /// to its group, [`Self::start`]).
    pub fn new(size: u64, root: SegmentHash, offset: u64) -> Self {
        let mut items = plan(size, offset);
        let next = items.next();
        Self {
            items,
            next,
            expected: vec![root.0],
            start: group_start(offset.min(size)),
        }
    }

    /// The first byte of the first group to come.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The next item to read; `None` when the segment is done.
    pub fn next_item(&self) -> Option<Item> {
        self.next
    }

    /// Bytes of the next item; `None` when done.
    pub fn need(&self) -> Option<usize> {
        self.next.map(|i| i.len())
    }

    /// Checks `bytes`, the next item whole. A group that matches is returned as its
    /// `start..end` (the caller may use `bytes` as verified); a parent gives `None`.
    pub fn verify(&mut self, bytes: &[u8]) -> Result<Option<(u64, u64)>, VerifyError> {
        let item = self.next.ok_or(VerifyError::Misframed)?;
        if bytes.len() != item.len() {
            return Err(VerifyError::Misframed);
        }
        let expected = self.expected.pop().ok_or(VerifyError::Misframed)?;
        let got = match item {
            Item::Parent {
                start,
                mid,
                end,
                root,
                ..
            } => {
                let pair: &[u8; PAIR] = bytes.try_into().map_err(|_| VerifyError::Misframed)?;
                if parent_cv(pair, root) != expected {
                    return Err(VerifyError::Parent { start, end });
                }
                let (mut left, mut right) = ([0u8; 32], [0u8; 32]);
                left.copy_from_slice(&pair[..32]);
                right.copy_from_slice(&pair[32..]);
                // The right child always reaches the part streamed; the left only when the
                // start lies in it. Pushed so that the left one is matched first.
                self.expected.push(right);
                if mid > self.start {
                    self.expected.push(left);
                }
                None
            }
            Item::Group { start, end, root } => {
                if group_cv(start, bytes, root) != expected {
                    return Err(VerifyError::Group { start, end });
                }
                Some((start, end))
            }
        };
        self.next = self.items.next();
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
    }

    /// The stream an engine sends for `data` from `offset`.
    fn encode(data: &[u8], offset: u64) -> Vec<(Item, Vec<u8>)> {
        let outboard = Leaves::of(data).outboard();
        plan(data.len() as u64, offset)
            .map(|item| {
                let bytes = match item {
                    Item::Parent { index, .. } => outboard.pair(index).expect("a pair").to_vec(),
                    Item::Group { start, end, .. } => data[start as usize..end as usize].to_vec(),
                };
                (item, bytes)
            })
            .collect()
    }

    /// Decodes `stream`; the verified bytes and the first error.
    fn decode(
        data_len: u64,
        hash: SegmentHash,
        offset: u64,
        stream: &[(Item, Vec<u8>)],
    ) -> (Vec<u8>, Option<VerifyError>) {
        let mut decoder = Decoder::new(data_len, hash, offset);
        let mut out = Vec::new();
        for (item, bytes) in stream {
            assert_eq!(decoder.next_item(), Some(*item));
            match decoder.verify(bytes) {
                Ok(Some(_)) => out.extend_from_slice(bytes),
                Ok(None) => {}
                Err(e) => return (out, Some(e)),
            }
        }
        assert_eq!(decoder.need(), None);
        (out, None)
    }

    const SIZES: [usize; 10] = [
        0,
        1,
        1024,
        16 * 1024,
        16 * 1024 + 1,
        32 * 1024,
        48 * 1024 + 7,
        100_000,
        256 * 1024,
        1024 * 1024 + 3,
    ];

    #[test]
    fn the_root_is_the_segment_hash_whatever_the_pieces() {
        for size in SIZES {
            let bytes = data(size);
            let leaves = Leaves::of(&bytes);
            assert_eq!(leaves.outboard().root(), SegmentHash::of(&bytes), "{size}");
            assert_eq!(
                leaves.outboard().pairs.len() as u64,
                groups(size as u64) - 1
            );
            // Fed in odd pieces, the same leaves.
            let mut hasher = LeafHasher::new(size as u64);
            for piece in bytes.chunks(5000) {
                hasher.update(piece);
            }
            assert_eq!(hasher.finish(), Some(leaves.clone()));
            assert_eq!(
                Leaves::from_bytes(size as u64, &leaves.to_bytes()),
                Some(leaves)
            );
            // From the start, every parent in outboard order, then every group once.
            let items: Vec<Item> = plan(size as u64, 0).collect();
            let parents: Vec<usize> = (items.iter())
                .filter_map(|i| match i {
                    Item::Parent { index, .. } => Some(*index),
                    Item::Group { .. } => None,
                })
                .collect();
            let n = groups(size as u64) as usize;
            assert_eq!(parents, (0..n - 1).collect::<Vec<_>>());
            assert_eq!(items.len(), 2 * n - 1);
        }
        // Unfinished: no leaves.
        let mut hasher = LeafHasher::new(10);
        hasher.update(b"abc");
        assert_eq!(hasher.finish(), None);
        // Leaves of the wrong count are refused.
        assert_eq!(Leaves::from_bytes(100_000, &[0; 64]), None);
    }

    #[test]
    fn each_group_checks_against_its_leaf_and_nothing_else_does() {
        for size in SIZES {
            let bytes = data(size);
            let leaves = Leaves::of(&bytes);
            let n = groups(size as u64);
            for index in 0..n {
                let start = (index * GROUP) as usize;
                let end = (start + GROUP as usize).min(size);
                let group = &bytes[start..end];
                assert!(leaves.check(index, group), "{size} {index}");
                // One bit off, one byte short, or the group at another place: refused.
                if !group.is_empty() {
                    let mut bad = group.to_vec();
                    bad[group.len() / 2] ^= 1;
                    assert!(!leaves.check(index, &bad), "{size} {index}");
                    assert!(!leaves.check(index, &group[1..]), "{size} {index}");
                }
                assert!(!leaves.check(index + 1, group), "{size} {index}");
            }
            assert!(!leaves.check(n, &[]));
            assert!(!leaves.check(u64::MAX, &[]));
        }
    }

    #[test]
    fn every_offset_streams_exactly_the_rest_verified() {
        for size in SIZES {
            let bytes = data(size);
            let hash = SegmentHash::of(&bytes);
            for offset in [0, 1, 16 * 1024, 16 * 1024 + 5, 70_000, size as u64] {
                if offset > size as u64 {
                    continue;
                }
                let stream = encode(&bytes, offset);
                let (out, error) = decode(size as u64, hash, offset, &stream);
                assert_eq!(error, None, "size {size} offset {offset}");
                let from = group_start(offset) as usize;
                assert_eq!(out, bytes[from.min(size)..], "size {size} offset {offset}");
            }
        }
    }

    #[test]
    fn a_tampered_group_is_refused_at_that_group_and_not_before() {
        let bytes = data(1024 * 1024);
        let hash = SegmentHash::of(&bytes);
        let mut stream = encode(&bytes, 0);
        // Control: untouched, every byte comes out.
        assert_eq!(
            decode(bytes.len() as u64, hash, 0, &stream),
            (bytes.clone(), None)
        );
        // One byte of the group at 512 KiB flipped.
        let bad = stream
            .iter_mut()
            .find(|(i, _)| matches!(i, Item::Group { start, .. } if *start == 512 * 1024))
            .expect("the group at 512 KiB");
        bad.1[100] ^= 1;
        let (out, error) = decode(bytes.len() as u64, hash, 0, &stream);
        assert_eq!(
            error,
            Some(VerifyError::Group {
                start: 512 * 1024,
                end: 528 * 1024
            })
        );
        // Everything before it was handed out, nothing from it on.
        assert_eq!(out, bytes[..512 * 1024]);
    }

    #[test]
    fn a_tampered_parent_is_refused() {
        let bytes = data(200_000);
        let hash = SegmentHash::of(&bytes);
        for nth in [0, 3] {
            let mut stream = encode(&bytes, 0);
            let (_, pair) = stream
                .iter_mut()
                .filter(|(i, _)| matches!(i, Item::Parent { .. }))
                .nth(nth)
                .expect("a parent");
            pair[40] ^= 0x80;
            let (_, error) = decode(bytes.len() as u64, hash, 0, &stream);
            assert!(
                matches!(error, Some(VerifyError::Parent { .. })),
                "{error:?}"
            );
        }
        // And against another segment's hash nothing passes, not even the first node.
        let stream = encode(&bytes, 0);
        let (out, error) = decode(bytes.len() as u64, SegmentHash::of(b"other"), 0, &stream);
        assert!(out.is_empty() && error.is_some());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Any one bit flipped anywhere in a stream is refused at the item it is in, and
        /// every group handed out before is the segment's own.
        #[test]
        fn one_flipped_bit_anywhere_is_caught_at_its_item(
            size in 0usize..200_000,
            offset in 0u64..200_000,
            at in proptest::prelude::any::<proptest::sample::Index>(),
            bit in 0u8..8,
        ) {
            let bytes = data(size);
            let offset = offset.min(size as u64);
            let mut stream = encode(&bytes, offset);
            let total: usize = stream.iter().map(|(_, b)| b.len()).sum();
            proptest::prop_assume!(total > 0);
            let mut flip = at.index(total);
            let mut hit = 0;
            for (n, (_, b)) in stream.iter_mut().enumerate() {
                if flip < b.len() {
                    b[flip] ^= 1 << bit;
                    hit = n;
                    break;
                }
                flip -= b.len();
            }
            let (out, error) = decode(size as u64, SegmentHash::of(&bytes), offset, &stream);
            proptest::prop_assert!(error.is_some());
            let from = group_start(offset) as usize;
            proptest::prop_assert_eq!(&out[..], &bytes[from..from + out.len()]);
            // Nothing from the flipped item on was handed out.
            let before: usize = stream[..hit]
                .iter()
                .filter(|(i, _)| matches!(i, Item::Group { .. }))
                .map(|(_, b)| b.len())
                .sum();
            proptest::prop_assert_eq!(out.len(), before);
        }

        /// Random bytes in place of a stream never panic the decoder.
        #[test]
        fn random_bytes_never_panic(
            size in 0u64..300_000,
            offset in 0u64..300_000,
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20_000),
        ) {
            let mut decoder = Decoder::new(size, SegmentHash([7; 32]), offset);
            let mut rest = &noise[..];
            while let Some(need) = decoder.need() {
                let take = need.min(rest.len());
                if decoder.verify(&rest[..take]).is_err() {
                    break;
                }
                rest = &rest[take..];
            }
        }
    }

    #[test]
    fn misframed_bytes_are_refused_not_panicked_on() {
        let bytes = data(100_000);
        let mut decoder = Decoder::new(100_000, SegmentHash::of(&bytes), 0);
        assert_eq!(decoder.verify(&[0; 63]), Err(VerifyError::Misframed));
        // Asked from its end, a segment of whole groups sends nothing more.
        let mut done = Decoder::new(6 * GROUP, SegmentHash::of(&bytes), 6 * GROUP);
        assert_eq!(done.need(), None);
        assert_eq!(done.verify(&[]), Err(VerifyError::Misframed));
        // A one-group segment with wrong bytes of the right length.
        let mut one = Decoder::new(5, SegmentHash::of(b"hello"), 0);
        assert_eq!(
            one.verify(b"hellO"),
            Err(VerifyError::Group { start: 0, end: 5 })
        );
        let mut one = Decoder::new(5, SegmentHash::of(b"hello"), 0);
        assert_eq!(one.verify(b"hello"), Ok(Some((0, 5))));
    }
}
