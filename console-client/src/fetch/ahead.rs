//! Where a director named the segments after the one asked for (`Locate { ahead }`). At
//! `--speed max` a console fetches several segments at once and starts the next fetch at each
//! boundary; asking a director for each meant a round trip through the console, the director
//! and the engine's preload at every boundary, on machines busy with the bytes. A console
//! asks for the next ones with each `Locate`, and the first attempt at each of those goes
//! where the director named it, within [`NAMED_FOR`]. A retry (an engine busy, unreachable,
//! handed over) asks a director again, as before.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use vodmesh_proto::SegmentId;
use vodmesh_proto::director::SegmentLocation;

/// How long a location named ahead is gone to without asking: at `--speed max` the fetch of a
/// segment named ahead starts within milliseconds; later, an engine may have gone or filled up
/// since, and a director knows better.
pub(super) const NAMED_FOR: Duration = Duration::from_secs(1);

/// The segments to ask for ahead, and the locations named ahead, by segment.
#[derive(Default)]
pub(crate) struct Ahead {
    count: AtomicU8,
    named: Mutex<HashMap<SegmentId, (SegmentLocation, Instant)>>,
}

impl Ahead {
    /// Each `Locate` asks for `count` segments after its own too (0: none).
    pub(crate) fn ask_for(&self, count: u8) {
        self.count.store(count, Ordering::Relaxed);
    }

    /// Segments after its own a `Locate` asks for.
    pub(super) fn count(&self) -> u8 {
        self.count.load(Ordering::Relaxed)
    }

    /// Keeps `ahead`, where a director named the segments right after `segment`, in order;
    /// forgets those named too long ago.
    pub(super) fn keep(&self, segment: SegmentId, ahead: Vec<SegmentLocation>, now: Instant) {
        let Ok(mut named) = self.named.lock() else {
            return;
        };
        named.retain(|_, (_, at)| now.saturating_duration_since(*at) < NAMED_FOR);
        for (location, i) in ahead.into_iter().zip(1u32..) {
            let Some(index) = segment.index.0.checked_add(i) else {
                break;
            };
            named.insert(SegmentId::new(segment.program, index), (location, now));
        }
    }

    /// Where a director named `segment` ahead, if it did within [`NAMED_FOR`]: once.
    pub(super) fn take(&self, segment: SegmentId, now: Instant) -> Option<SegmentLocation> {
        let (location, at) = self.named.lock().ok()?.remove(&segment)?;
        (now.saturating_duration_since(at) < NAMED_FOR).then_some(location)
    }
}

#[cfg(test)]
mod tests {
    use libp2p::PeerId;
    use vodmesh_proto::ProgramId;

    use super::*;

    fn at(engine: PeerId) -> SegmentLocation {
        SegmentLocation {
            engine,
            addrs: Vec::new(),
            director: PeerId::random(),
            filling: false,
            swap: false,
            http: None,
            https: false,
            bulk: None,
            ahead: Vec::new(),
        }
    }

    #[test]
    fn a_segment_named_ahead_is_gone_to_once_and_only_for_a_moment() {
        let ahead = Ahead::default();
        let program = ProgramId([3; 32]);
        let engines: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        let t0 = Instant::now();
        ahead.keep(
            SegmentId::new(program, 4),
            engines.iter().map(|e| at(*e)).collect(),
            t0,
        );
        // The segments after 4, in order; 4 itself, 8 and another program's 5 were not named.
        let take = |index, now| ahead.take(SegmentId::new(program, index), now);
        assert_eq!(take(6, t0).map(|l| l.engine), Some(engines[1]));
        assert_eq!(take(6, t0), None, "taken once");
        assert_eq!(take(4, t0), None);
        assert_eq!(take(8, t0), None);
        assert_eq!(ahead.take(SegmentId::new(ProgramId([4; 32]), 5), t0), None);
        assert_eq!(
            take(5, t0 + NAMED_FOR / 2).map(|l| l.engine),
            Some(engines[0])
        );
        // Too late: a director is asked again.
        assert_eq!(take(7, t0 + NAMED_FOR), None);
        // A later answer forgets what is too old and keeps its own.
        ahead.keep(SegmentId::new(program, 9), vec![at(engines[2])], t0);
        ahead.keep(
            SegmentId::new(program, 20),
            vec![at(engines[0])],
            t0 + NAMED_FOR,
        );
        assert_eq!(ahead.named.lock().map(|n| n.len()).ok(), Some(1));
        assert_eq!(take(21, t0 + NAMED_FOR).map(|l| l.engine), Some(engines[0]));
    }
}
