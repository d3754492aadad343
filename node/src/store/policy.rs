//! Where a new segment goes and what is evicted to make room: plain functions over a snapshot
//! of the disks, so the rules are testable without files.

use vodmesh_proto::SegmentId;

/// A disk as placement sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DiskRoom {
    /// Bytes of its capacity share not used or reserved.
    pub(crate) free: u64,
    /// Open readers and writers plus queued jobs.
    pub(crate) load: usize,
}

/// A segment that may be evicted: complete, held by another station, not pinned, not open.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Candidate {
    pub(crate) segment: SegmentId,
    pub(crate) disk: usize,
    pub(crate) size: u64,
    /// `(last use ms, in-process touch sequence)`: the second orders uses within one ms.
    pub(crate) last_use: (u64, u64),
}

/// Where to write, and what to evict first.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Placement {
    pub(crate) disk: usize,
    pub(crate) evict: Vec<SegmentId>,
}

/// Chooses a disk for `need` bytes.
///
/// A disk with room wins: the least loaded, then the one with most free space. If none has
/// room, the disk that can make room by evicting only the least recently used candidates, the
/// most recent of them as old as possible (global LRU when there is one disk). `None` when no
/// disk can make room.
pub(crate) fn place(disks: &[DiskRoom], candidates: &[Candidate], need: u64) -> Option<Placement> {
    let roomy = disks
        .iter()
        .enumerate()
        .filter(|(_, d)| d.free >= need)
        .min_by(|(_, a), (_, b)| a.load.cmp(&b.load).then(b.free.cmp(&a.free)));
    if let Some((disk, _)) = roomy {
        return Some(Placement {
            disk,
            evict: Vec::new(),
        });
    }

    let mut sorted: Vec<&Candidate> = candidates.iter().collect();
    sorted.sort_by_key(|c| c.last_use);
    let mut best: Option<((u64, u64), usize, Placement)> = None;
    for (disk, room) in disks.iter().enumerate() {
        let mut free = room.free;
        let mut evict = Vec::new();
        let mut newest = (0, 0);
        for c in sorted.iter().filter(|c| c.disk == disk) {
            if free >= need {
                break;
            }
            free = free.saturating_add(c.size);
            evict.push(c.segment);
            newest = c.last_use;
        }
        if free < need {
            continue;
        }
        let better = match &best {
            None => true,
            Some((n, load, _)) => (newest, room.load) < (*n, *load),
        };
        if better {
            best = Some((newest, room.load, Placement { disk, evict }));
        }
    }
    best.map(|(_, _, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vodmesh_proto::ProgramId;

    fn seg(i: u32) -> SegmentId {
        SegmentId::new(ProgramId([7; 32]), i)
    }

    fn cand(i: u32, disk: usize, size: u64, t: u64) -> Candidate {
        Candidate {
            segment: seg(i),
            disk,
            size,
            last_use: (t, 0),
        }
    }

    #[test]
    fn a_disk_with_room_wins_least_loaded_then_most_free() {
        let disks = [
            DiskRoom { free: 100, load: 2 },
            DiskRoom { free: 50, load: 0 },
            DiskRoom { free: 90, load: 0 },
        ];
        assert_eq!(place(&disks, &[], 40).map(|p| p.disk), Some(2));
        // Only the first has room for 95.
        assert_eq!(place(&disks, &[], 95).map(|p| p.disk), Some(0));
    }

    #[test]
    fn eviction_takes_the_least_recently_used_first() {
        let disks = [DiskRoom { free: 0, load: 0 }];
        let c = [cand(1, 0, 10, 30), cand(2, 0, 10, 10), cand(3, 0, 10, 20)];
        let p = place(&disks, &c, 15).expect("room can be made");
        assert_eq!(p.evict, vec![seg(2), seg(3)]);
    }

    #[test]
    fn no_room_and_nothing_to_evict_is_none() {
        let disks = [DiskRoom { free: 5, load: 0 }];
        assert_eq!(place(&disks, &[cand(1, 0, 4, 1)], 10), None);
    }

    #[test]
    fn eviction_prefers_the_disk_with_older_victims() {
        let disks = [DiskRoom { free: 0, load: 0 }, DiskRoom { free: 0, load: 0 }];
        let c = [cand(1, 0, 10, 50), cand(2, 1, 10, 40)];
        let p = place(&disks, &c, 10).expect("room can be made");
        assert_eq!(
            p,
            Placement {
                disk: 1,
                evict: vec![seg(2)]
            }
        );
    }
}
