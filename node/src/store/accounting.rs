//! What the store holds, and the figures that follow from it: one place.
//!
//! [`Holdings`] owns the maps of complete segments ([`Stored`]) and writes in progress
//! ([`Live`]) together with each disk's figures ([`DiskCount`]): bytes used by complete
//! segments, bytes reserved by writes, bytes that eviction could free, and open readers and
//! writers. The maps change only through its methods, and every method that changes a map
//! changes the figures with it, so the figures are the sums over the maps by construction:
//! after a start (reconciled from the index and the files), a write, an abort, an eviction, a
//! drop or a flag change alike. Capacity is enforced ([`Holdings::free`],
//! [`Holdings::candidates`]) and reported (the store's `stats`) from these same figures.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;

use tokio::sync::watch;
use vodmesh_proto::{SegmentHash, SegmentId};

use super::policy::Candidate;

/// What followers of a filling segment watch.
#[derive(Clone, Default)]
pub(super) struct Progress {
    pub(super) filled: u64,
    pub(super) file: Option<Arc<File>>,
    /// The segment's tree, where the writer was given it before the bytes (a verified copy).
    pub(super) tree: Option<super::writer::Tree>,
    pub(super) end: Option<End>,
}

/// How a write ended.
#[derive(Clone)]
pub(super) enum End {
    /// Verified and committed; later reads check its chunk groups against this.
    Complete(super::check::Check),
    /// Abandoned: followers stop reading.
    Aborted,
}

/// A complete segment.
pub(super) struct Stored {
    /// Tells this copy from an earlier or later one of the same segment.
    pub(super) generation: u64,
    pub(super) disk: usize,
    pub(super) size: u64,
    pub(super) hash: SegmentHash,
    /// `(last use ms, in-process touch sequence)`.
    pub(super) last_use: (u64, u64),
    pub(super) pinned: bool,
    pub(super) held_elsewhere: bool,
    pub(super) readers: u32,
}

impl Stored {
    /// Whether eviction may take it when nobody reads it: another station holds it, and it
    /// is not pinned (a home station's programs never are).
    fn evictable(&self) -> bool {
        self.held_elsewhere && !self.pinned
    }
}

/// A segment being written.
pub(super) struct Live {
    pub(super) generation: u64,
    pub(super) disk: usize,
    pub(super) total: u64,
    pub(super) hash: SegmentHash,
    pub(super) pinned: bool,
    pub(super) held_elsewhere: bool,
    pub(super) readers: u32,
    pub(super) progress: watch::Receiver<Progress>,
}

/// `(used, reserved, evictable)` per disk, as tests compare them.
#[cfg(test)]
pub(super) type Figures = Vec<(u64, u64, u64)>;

/// One disk's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct DiskCount {
    /// Bytes of complete segments.
    pub(super) used: u64,
    /// Bytes reserved by writes in progress.
    pub(super) reserved: u64,
    /// Bytes of complete segments that eviction may free (open or not).
    pub(super) evictable: u64,
    /// Open readers and writers.
    pub(super) open: usize,
}

/// The segments a store holds and its per-disk figures (see the module docs).
pub(super) struct Holdings {
    stored: HashMap<SegmentId, Stored>,
    live: HashMap<SegmentId, Live>,
    disks: Vec<DiskCount>,
}

impl Holdings {
    /// Nothing held on `disks` disks.
    pub(super) fn new(disks: usize) -> Self {
        Self {
            stored: HashMap::new(),
            live: HashMap::new(),
            disks: vec![DiskCount::default(); disks],
        }
    }

    /// The figures of `disk` (zero for a disk that does not exist).
    pub(super) fn disk(&self, disk: usize) -> DiskCount {
        self.disks.get(disk).copied().unwrap_or_default()
    }

    /// Bytes of `disk`'s `quota` neither used nor reserved.
    pub(super) fn free(&self, disk: usize, quota: u64) -> u64 {
        let d = self.disk(disk);
        quota.saturating_sub(d.used.saturating_add(d.reserved))
    }

    /// What eviction may take now: evictable segments nobody reads.
    pub(super) fn candidates(&self) -> Vec<Candidate> {
        self.stored
            .iter()
            .filter(|(_, s)| s.evictable() && s.readers == 0)
            .map(|(id, s)| Candidate {
                segment: *id,
                disk: s.disk,
                size: s.size,
                last_use: s.last_use,
            })
            .collect()
    }

    /// The complete segment `id`.
    pub(super) fn stored(&self, id: &SegmentId) -> Option<&Stored> {
        self.stored.get(id)
    }

    /// The write in progress of `id`.
    pub(super) fn live(&self, id: &SegmentId) -> Option<&Live> {
        self.live.get(id)
    }

    /// Every complete segment.
    pub(super) fn all_stored(&self) -> impl Iterator<Item = (&SegmentId, &Stored)> {
        self.stored.iter()
    }

    /// `(complete, filling)` segment counts.
    pub(super) fn counts(&self) -> (usize, usize) {
        (self.stored.len(), self.live.len())
    }

    /// Whether `id` is stored or being written.
    pub(super) fn holds(&self, id: &SegmentId) -> bool {
        self.stored.contains_key(id) || self.live.contains_key(id)
    }

    /// The generation of `id`, complete or filling.
    pub(super) fn generation(&self, id: &SegmentId) -> Option<u64> {
        self.stored
            .get(id)
            .map(|s| s.generation)
            .or_else(|| self.live.get(id).map(|l| l.generation))
    }

    /// Enters a complete segment (replacing nothing: callers check [`Self::holds`]).
    pub(super) fn insert_stored(&mut self, id: SegmentId, s: Stored) {
        if let Some(d) = self.disks.get_mut(s.disk) {
            d.used = d.used.saturating_add(s.size);
            if s.evictable() {
                d.evictable = d.evictable.saturating_add(s.size);
            }
        }
        if let Some(old) = self.stored.insert(id, s) {
            self.uncount(&old);
        }
    }

    /// Takes a complete segment out.
    pub(super) fn remove_stored(&mut self, id: &SegmentId) -> Option<Stored> {
        let s = self.stored.remove(id)?;
        self.uncount(&s);
        Some(s)
    }

    fn uncount(&mut self, s: &Stored) {
        if let Some(d) = self.disks.get_mut(s.disk) {
            d.used = d.used.saturating_sub(s.size);
            if s.evictable() {
                d.evictable = d.evictable.saturating_sub(s.size);
            }
        }
    }

    /// Starts a write: its bytes are reserved on its disk and it counts as open there.
    pub(super) fn insert_live(&mut self, id: SegmentId, l: Live) {
        if let Some(d) = self.disks.get_mut(l.disk) {
            d.reserved = d.reserved.saturating_add(l.total);
            d.open += 1;
        }
        if let Some(old) = self.live.insert(id, l) {
            self.unreserve(&old);
        }
    }

    /// Ends the write of generation `generation` of `id` (finished or aborted): its
    /// reservation and its open count are released. `None` if that write is not in progress.
    pub(super) fn remove_live(&mut self, id: &SegmentId, generation: u64) -> Option<Live> {
        if self.live.get(id)?.generation != generation {
            return None;
        }
        let l = self.live.remove(id)?;
        self.unreserve(&l);
        Some(l)
    }

    fn unreserve(&mut self, l: &Live) {
        if let Some(d) = self.disks.get_mut(l.disk) {
            d.reserved = d.reserved.saturating_sub(l.total);
            d.open = d.open.saturating_sub(1);
        }
    }

    /// Sets the flags of `id`, complete or filling; returns the complete segment's new flags
    /// `(pinned, held elsewhere)`, `Some(None)` for a filling one, `None` if not held.
    pub(super) fn set_flags(
        &mut self,
        id: &SegmentId,
        pinned: Option<bool>,
        held: Option<bool>,
    ) -> Option<Option<(bool, bool)>> {
        if let Some(l) = self.live.get_mut(id) {
            l.pinned = pinned.unwrap_or(l.pinned);
            l.held_elsewhere = held.unwrap_or(l.held_elsewhere);
            return Some(None);
        }
        // Out and back in, so that the evictable bytes follow the flags.
        let mut s = self.remove_stored(id)?;
        s.pinned = pinned.unwrap_or(s.pinned);
        s.held_elsewhere = held.unwrap_or(s.held_elsewhere);
        let flags = (s.pinned, s.held_elsewhere);
        self.insert_stored(*id, s);
        Some(Some(flags))
    }

    /// A reader opens `id`: the segment counts one more reader (so it is not evicted), its
    /// disk one more open handle, and a complete one is marked used at `last_use`.
    pub(super) fn open_reader(&mut self, id: &SegmentId, last_use: (u64, u64)) -> Option<usize> {
        let disk = if let Some(s) = self.stored.get_mut(id) {
            s.readers += 1;
            s.last_use = last_use;
            s.disk
        } else {
            let l = self.live.get_mut(id)?;
            l.readers += 1;
            l.disk
        };
        if let Some(d) = self.disks.get_mut(disk) {
            d.open += 1;
        }
        Some(disk)
    }

    /// A reader of generation `generation` of `id`, opened on `disk`, closes.
    pub(super) fn close_reader(&mut self, id: &SegmentId, generation: u64, disk: usize) {
        if let Some(s) = self.stored.get_mut(id)
            && s.generation == generation
        {
            s.readers = s.readers.saturating_sub(1);
        } else if let Some(l) = self.live.get_mut(id)
            && l.generation == generation
        {
            l.readers = l.readers.saturating_sub(1);
        }
        if let Some(d) = self.disks.get_mut(disk) {
            d.open = d.open.saturating_sub(1);
        }
    }

    /// The figures recomputed from the maps (open counts aside: readers are not listed), to
    /// check that the running figures never drift.
    #[cfg(test)]
    pub(super) fn recount(&self) -> Figures {
        let mut out = vec![(0, 0, 0); self.disks.len()];
        for s in self.stored.values() {
            out[s.disk].0 += s.size;
            if s.evictable() {
                out[s.disk].2 += s.size;
            }
        }
        for l in self.live.values() {
            out[l.disk].1 += l.total;
        }
        out
    }

    /// The running figures in the shape of [`Self::recount`].
    #[cfg(test)]
    pub(super) fn figures(&self) -> Figures {
        self.disks
            .iter()
            .map(|d| (d.used, d.reserved, d.evictable))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vodmesh_proto::ProgramId;

    fn id(i: u32) -> SegmentId {
        SegmentId::new(ProgramId([3; 32]), i)
    }

    fn stored(disk: usize, size: u64, pinned: bool, held: bool) -> Stored {
        Stored {
            generation: u64::from(size as u32),
            disk,
            size,
            hash: SegmentHash([0; 32]),
            last_use: (0, 0),
            pinned,
            held_elsewhere: held,
            readers: 0,
        }
    }

    fn live(generation: u64, disk: usize, total: u64) -> Live {
        Live {
            generation,
            disk,
            total,
            hash: SegmentHash([0; 32]),
            pinned: false,
            held_elsewhere: false,
            readers: 0,
            progress: watch::channel(Progress::default()).1,
        }
    }

    #[test]
    fn figures_follow_every_change_of_the_maps() {
        let mut h = Holdings::new(2);
        h.insert_stored(id(1), stored(0, 100, false, true));
        h.insert_stored(id(2), stored(1, 50, true, true));
        h.insert_live(id(3), live(7, 1, 30));
        assert_eq!(h.figures(), h.recount());
        assert_eq!(h.figures(), vec![(100, 0, 100), (50, 30, 0)]);
        assert_eq!(h.free(1, 100), 20);
        assert_eq!(h.disk(1).open, 1);

        // A flag change moves bytes in or out of the evictable figure.
        assert_eq!(
            h.set_flags(&id(2), Some(false), None),
            Some(Some((false, true)))
        );
        assert_eq!(
            h.set_flags(&id(1), Some(true), None),
            Some(Some((true, true)))
        );
        assert_eq!(h.figures(), vec![(100, 0, 0), (50, 30, 50)]);
        // The write ends: its reservation is released; only its own generation ends it.
        assert!(h.remove_live(&id(3), 6).is_none());
        let l = h.remove_live(&id(3), 7).map(|l| l.total);
        assert_eq!(l, Some(30));
        h.insert_stored(id(3), stored(1, 30, false, false));
        assert_eq!(h.disk(1).open, 0);
        assert_eq!(h.figures(), h.recount());
        assert_eq!(h.figures(), vec![(100, 0, 0), (80, 0, 50)]);

        h.remove_stored(&id(1));
        h.remove_stored(&id(2));
        assert!(h.remove_stored(&id(2)).is_none());
        assert_eq!(h.figures(), vec![(0, 0, 0), (30, 0, 0)]);
        assert_eq!(h.figures(), h.recount());
    }

    #[test]
    fn open_segments_are_no_candidates_and_readers_count_as_open() {
        let mut h = Holdings::new(1);
        h.insert_stored(id(1), stored(0, 10, false, true));
        h.insert_stored(id(2), stored(0, 10, false, true));
        h.insert_stored(id(3), stored(0, 10, true, true));
        h.insert_stored(id(4), stored(0, 10, false, false));
        assert_eq!(h.open_reader(&id(1), (5, 1)), Some(0));
        let c: Vec<SegmentId> = h.candidates().iter().map(|c| c.segment).collect();
        assert_eq!(c, vec![id(2)]);
        assert_eq!(h.disk(0).open, 1);
        let generation = h.stored(&id(1)).map(|s| s.generation).unwrap_or_default();
        h.close_reader(&id(1), generation, 0);
        assert_eq!(h.disk(0).open, 0);
        assert_eq!(h.candidates().len(), 2);
        assert_eq!(h.disk(0).evictable, 20);
    }
}
