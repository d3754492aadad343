//! Where a director named the segments after the one asked for (`Locate { ahead }`). At
//! `--speed max` a console fetches several segments at once and starts the next fetch at each
//! boundary; asking a director for each meant a round trip through the console, the director
//! and the engine's preload at every boundary, on machines busy with the bytes. A console
//! asks for the next ones with each `Locate`, and the first attempt at each of those goes
//! where the director named it, within [`NAMED_FOR`]; one that starts while the ask that
//! names it is on its way waits for its answer rather than asking too. A retry (an engine
//! busy, unreachable, handed over) asks a director again, as before.
//!
//! The names run out every `count` segments, and the fetch that found none asked a director
//! while the play waited for it. So once a fetch takes a name and fewer than half the count
//! are named after it, the console asks for the next unnamed segment and those after it in
//! the background ([`Ahead::refill_after`]); the fetch that gets there finds them named, or
//! waits for an answer already on its way.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use vodmesh_proto::director::SegmentLocation;
use vodmesh_proto::{SegmentId, SegmentIndex};

/// How long a location named ahead is gone to without asking: at `--speed max` the fetch of a
/// segment named ahead starts within milliseconds; later, an engine may have gone or filled up
/// since, and a director knows better.
pub(super) const NAMED_FOR: Duration = Duration::from_secs(1);

/// The segments to ask for ahead, and what directors named and are about to name.
#[derive(Default)]
pub(crate) struct Ahead {
    count: AtomicU8,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Where a director named each segment, and when.
    named: HashMap<SegmentId, (SegmentLocation, Instant)>,
    /// The segments an ask on its way names: its answer came (or it failed) once its sender
    /// is dropped ([`Asking`]).
    coming: HashMap<SegmentId, watch::Receiver<()>>,
}

/// Where the first attempt at a segment goes ([`Ahead::look`]).
enum Look {
    /// Where a director named it.
    Named(Box<SegmentLocation>),
    /// An ask on its way names it: its answer is awaited ([`Ahead::coming`]), then look again.
    Coming(watch::Receiver<()>),
    /// To a director ([`Asking`]).
    Ask(Asking),
}

/// An ask to a director, for this many segments after its own too; the attempts that start
/// while it is on its way wait for its answer, until it is dropped: once its answer was kept
/// ([`Ahead::keep`]), or it failed.
pub(super) struct Asking {
    /// Segments after its own it asks for.
    pub(super) count: u8,
    /// Dropped with it: the attempts waiting wake.
    _answered: Option<watch::Sender<()>>,
}

impl Asking {
    /// An ask for its own segment alone.
    fn alone() -> Self {
        Self {
            count: 0,
            _answered: None,
        }
    }
}

impl Ahead {
    /// Each `Locate` asks for `count` segments after its own too (0: none).
    pub(crate) fn ask_for(&self, count: u8) {
        self.count.store(count, Ordering::Relaxed);
    }

    /// Where the first attempt at `segment` goes: where a director named it, or will name it
    /// in the answer to an ask on its way (awaited); else the ask to make.
    pub(super) async fn first(&self, segment: SegmentId) -> Result<SegmentLocation, Asking> {
        let mut wait = true;
        loop {
            match self.look(segment, Instant::now(), wait) {
                Look::Named(location) => return Ok(*location),
                Look::Coming(answer) => Self::coming(answer).await,
                Look::Ask(asking) => return Err(asking),
            }
            wait = false;
        }
    }

    /// Where the first attempt at `segment` goes: where a director named it within
    /// [`NAMED_FOR`] (once), else (`wait`) to the answer of an ask on its way that names it,
    /// else to a director.
    fn look(&self, segment: SegmentId, now: Instant, wait: bool) -> Look {
        let count = self.count.load(Ordering::Relaxed);
        let Ok(mut state) = self.state.lock() else {
            return Look::Ask(Asking::alone());
        };
        if let Some((location, at)) = state.named.remove(&segment)
            && now.saturating_duration_since(at) < NAMED_FOR
        {
            return Look::Named(Box::new(location));
        }
        // An ask whose sender is gone has answered, or failed.
        state.coming.retain(|_, rx| rx.has_changed().is_ok());
        if wait && let Some(rx) = state.coming.get(&segment) {
            return Look::Coming(rx.clone());
        }
        if count == 0 {
            return Look::Ask(Asking::alone());
        }
        let (tx, rx) = watch::channel(());
        for i in 1..=u32::from(count) {
            let Some(index) = segment.index.0.checked_add(i) else {
                break;
            };
            let next = SegmentId::new(segment.program, index);
            state.coming.entry(next).or_insert_with(|| rx.clone());
        }
        Look::Ask(Asking {
            count,
            _answered: Some(tx),
        })
    }

    /// Waits for the answer of the ask `coming` names a segment in, [`NAMED_FOR`] at most.
    async fn coming(mut coming: watch::Receiver<()>) {
        let _ = tokio::time::timeout(NAMED_FOR, coming.changed()).await;
    }

    /// After a fetch of `segment` took its name: the ask that keeps the names ahead of the
    /// fetches, for the first segment after it that is neither named nor asked for, with the
    /// ones after that; none while at least half the count after `segment` is named or on its
    /// way, or when that segment is past `last`, the program's last. The segments it asks for
    /// count as asked for until it is dropped, so a fetch that starts meanwhile waits for it.
    pub(super) fn refill_after(
        &self,
        segment: SegmentId,
        last: SegmentIndex,
        now: Instant,
    ) -> Option<(SegmentId, Asking)> {
        let count = self.count.load(Ordering::Relaxed);
        let mut state = self.state.lock().ok()?;
        state.coming.retain(|_, rx| rx.has_changed().is_ok());
        let covered = |state: &State, index: u32| {
            let id = SegmentId::new(segment.program, index);
            state.coming.contains_key(&id)
                || (state.named.get(&id))
                    .is_some_and(|(_, at)| now.saturating_duration_since(*at) < NAMED_FOR)
        };
        let first = (1..=u32::from(count))
            .filter_map(|i| segment.index.0.checked_add(i))
            .find(|index| !covered(&state, *index))?;
        if first > last.0 || first - segment.index.0 > u32::from(count / 2) {
            return None;
        }
        let (tx, rx) = watch::channel(());
        let asked = (first..=first.saturating_add(u32::from(count))).take_while(|i| *i <= last.0);
        for index in asked {
            let id = SegmentId::new(segment.program, index);
            state.coming.entry(id).or_insert_with(|| rx.clone());
        }
        let asking = Asking {
            count,
            _answered: Some(tx),
        };
        Some((SegmentId::new(segment.program, first), asking))
    }

    /// Keeps `named`, where a director named `first` and the segments right after it, in
    /// order ([`Self::refill_after`]'s ask: never segment 0).
    pub(super) fn keep_from(&self, first: SegmentId, named: Vec<SegmentLocation>, now: Instant) {
        if let Some(before) = first.index.0.checked_sub(1) {
            self.keep(SegmentId::new(first.program, before), named, now);
        }
    }

    /// Keeps `ahead`, where a director named the segments right after `segment` in order, and
    /// forgets those named too long ago. The attempts waiting for this answer wake when its
    /// [`Asking`] is dropped, after this.
    pub(super) fn keep(&self, segment: SegmentId, ahead: Vec<SegmentLocation>, now: Instant) {
        if let Ok(mut state) = self.state.lock() {
            state
                .named
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < NAMED_FOR);
            for (location, i) in ahead.into_iter().zip(1u32..) {
                let Some(index) = segment.index.0.checked_add(i) else {
                    break;
                };
                state
                    .named
                    .insert(SegmentId::new(segment.program, index), (location, now));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use libp2p::PeerId;
    use vodmesh_proto::ProgramId;

    use super::*;

    fn at(engine: PeerId) -> SegmentLocation {
        SegmentLocation::new(engine, Vec::new(), PeerId::random())
    }

    fn named(look: Look) -> Option<PeerId> {
        match look {
            Look::Named(location) => Some(location.engine),
            _ => None,
        }
    }

    #[test]
    fn a_segment_named_ahead_is_gone_to_once_and_only_for_a_moment() {
        let ahead = Ahead::default();
        ahead.ask_for(3);
        let program = ProgramId([3; 32]);
        let engines: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        let t0 = Instant::now();
        // Nothing named yet: a director is asked, for three more.
        let Look::Ask(asking @ Asking { count: 3, .. }) =
            ahead.look(SegmentId::new(program, 4), t0, true)
        else {
            panic!("a director should be asked for three more");
        };
        let names = engines.iter().map(|e| at(*e)).collect();
        ahead.keep(SegmentId::new(program, 4), names, t0);
        drop(asking);
        // The segments after 4, in order; 4 itself, 8 and another program's 5 were not named.
        let look = |index, now| ahead.look(SegmentId::new(program, index), now, false);
        assert_eq!(named(look(6, t0)), Some(engines[1]));
        assert_eq!(named(look(6, t0)), None, "taken once");
        assert_eq!(named(look(4, t0)), None);
        assert_eq!(named(look(8, t0)), None);
        let other = ahead.look(SegmentId::new(ProgramId([4; 32]), 5), t0, false);
        assert_eq!(named(other), None);
        assert_eq!(named(look(5, t0 + NAMED_FOR / 2)), Some(engines[0]));
        // Too late: a director is asked again.
        assert_eq!(named(look(7, t0 + NAMED_FOR)), None);
        // A later answer forgets what is too old and keeps its own.
        ahead.keep(SegmentId::new(program, 9), vec![at(engines[2])], t0);
        ahead.keep(SegmentId::new(program, 20), Vec::new(), t0 + NAMED_FOR);
        assert!(ahead.state.lock().is_ok_and(|s| s.named.is_empty()));
    }

    #[test]
    fn the_names_are_asked_again_once_half_of_them_are_taken() {
        let ahead = Ahead::default();
        ahead.ask_for(8);
        let program = ProgramId([6; 32]);
        let id = |index| SegmentId::new(program, index);
        let last = SegmentIndex(30);
        let t0 = Instant::now();
        let engines: Vec<PeerId> = (0..8).map(|_| PeerId::random()).collect();
        // Segment 0's ask named 1 to 8.
        ahead.keep(id(0), engines.iter().map(|e| at(*e)).collect(), t0);
        // Taking 1 to 4 leaves at least four named after each: no ask.
        for index in 1..=4 {
            assert!(named(ahead.look(id(index), t0, true)).is_some());
            assert!(ahead.refill_after(id(index), last, t0).is_none(), "{index}");
        }
        // Taking 5 leaves three (6 to 8): 9 is asked for, with the eight after it.
        assert!(named(ahead.look(id(5), t0, true)).is_some());
        let Some((first, asking)) = ahead.refill_after(id(5), last, t0) else {
            panic!("the names should be asked again");
        };
        assert_eq!((first, asking.count), (id(9), 8));
        // Asked once: the next fetch finds it on its way, and so does one that starts at 9.
        assert!(ahead.refill_after(id(6), last, t0).is_none());
        assert!(matches!(ahead.look(id(9), t0, true), Look::Coming(_)));
        assert!(matches!(ahead.look(id(17), t0, true), Look::Coming(_)));
        // Its answer names 9 itself and the eight after it.
        let answer: Vec<_> = (0..9).map(|_| at(PeerId::random())).collect();
        let nine = answer[0].engine;
        ahead.keep_from(first, answer, t0);
        drop(asking);
        assert_eq!(named(ahead.look(id(9), t0, false)), Some(nine));
        // Control: nothing is asked past the program's last segment, nor with no count.
        let short = SegmentIndex(8);
        ahead.keep(id(20), (0..3).map(|_| at(PeerId::random())).collect(), t0);
        assert!(ahead.refill_after(id(20), short, t0).is_none());
        ahead.ask_for(0);
        assert!(ahead.refill_after(id(21), last, t0).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_waits_for_the_ask_on_its_way_that_names_it() {
        let ahead = std::sync::Arc::new(Ahead::default());
        ahead.ask_for(2);
        let program = ProgramId([5; 32]);
        let (first, second) = (SegmentId::new(program, 0), SegmentId::new(program, 1));
        let t0 = Instant::now();
        let Look::Ask(asking @ Asking { count: 2, .. }) = ahead.look(first, t0, true) else {
            panic!("a director is asked first");
        };
        // Segment 1 starts while the ask for 0 is on its way: it waits for that answer.
        let Look::Coming(coming) = ahead.look(second, t0, true) else {
            panic!("segment 1 should wait for the ask that names it");
        };
        let engine = PeerId::random();
        let waiting = {
            let ahead = ahead.clone();
            tokio::spawn(async move {
                Ahead::coming(coming).await;
                named(ahead.look(second, Instant::now(), false))
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "it waits for the answer");
        ahead.keep(first, vec![at(engine)], t0);
        drop(asking);
        assert_eq!(waiting.await.ok().flatten(), Some(engine));
        // Control: an ask that names nothing (it failed) lets the waiters ask for themselves
        // at once, not after NAMED_FOR.
        let third = SegmentId::new(program, 10);
        let Look::Ask(asking) = ahead.look(third, t0, true) else {
            panic!("a director is asked");
        };
        let Look::Coming(coming) = ahead.look(SegmentId::new(program, 11), t0, true) else {
            panic!("segment 11 should wait");
        };
        let began = tokio::time::Instant::now();
        drop(asking);
        Ahead::coming(coming).await;
        assert_eq!(began.elapsed(), Duration::ZERO);
        assert!(matches!(
            ahead.look(SegmentId::new(program, 11), Instant::now(), true),
            Look::Ask(Asking { count: 2, .. })
        ));
    }
}
