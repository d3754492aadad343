//! The order in which a console asks directors ([`Passed::order`]): the first director, then
//! the one that answered last, the ones it holds connections to and those that know every
//! program; after all of them, for [`PASSED_OVER_FOR`] or until it answers again, any that
//! failed lately, left a `Locate` or a `Manifest` unanswered for longer than
//! [`ANSWER_WITHIN`], or kept a fetch waiting until it was hedged
//! ([`Passed::pass_over_slow`]).
//!
//! Plain synchronous code that takes `now`: tested on simulated time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// How long a director may leave a `Locate` or a `Manifest` unanswered before the next one
/// is asked beside it: longer than a `Locate` that starts a miss may take (the director
/// waits up to 3 s for a holder's engine), so a director at work is not taken for a silent
/// one. A fetch does not wait this long: it is hedged before its play time, and the director
/// it waits on is passed over then ([`Passed::pass_over_slow`]). Its answer still counts if
/// it comes first.
pub(super) const ANSWER_WITHIN: Duration = Duration::from_secs(4);
/// How long a director that failed, or was slow past [`ANSWER_WITHIN`], is asked after the
/// others.
pub(super) const PASSED_OVER_FOR: Duration = Duration::from_secs(10);

/// A director to ask, as [`Passed::order`] ranks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Candidate {
    pub(super) director: PeerId,
    /// The console holds a connection to it.
    pub(super) connected: bool,
    /// A content manager or home station: it knows every program.
    pub(super) knows_all: bool,
}

/// The directors passed over lately, the one that answered last, and the asks on their way.
#[derive(Debug, Default)]
pub(super) struct Passed {
    since: HashMap<PeerId, Instant>,
    last_answered: Option<PeerId>,
    /// Asks on their way, by number: the director asked, and since when.
    asking: HashMap<u64, (PeerId, Instant)>,
    next_ask: u64,
}

impl Passed {
    /// An ask of `director` begins: its number, to [`Passed::end`] it with.
    pub(super) fn begin(&mut self, director: PeerId, now: Instant) -> u64 {
        let n = self.next_ask;
        self.next_ask = self.next_ask.wrapping_add(1);
        self.asking.insert(n, (director, now));
        n
    }

    /// Ask `n` ended: answered, failed or given up.
    pub(super) fn end(&mut self, n: u64) {
        self.asking.remove(&n);
    }

    /// A fetch waiting on a director's answer was hedged: every director with an ask on its
    /// way for `silent` or longer is passed over (the fetch does not know which director its
    /// ask waits on, nor whether it waits on an ask another fetch made for it).
    pub(super) fn pass_over_slow(&mut self, silent: Duration, now: Instant) -> Vec<PeerId> {
        let mut slow: Vec<PeerId> = (self.asking.values())
            .filter(|(_, since)| now.saturating_duration_since(*since) >= silent)
            .map(|(director, _)| *director)
            .collect();
        slow.sort();
        slow.dedup();
        for director in &slow {
            self.pass_over(*director, now);
        }
        slow
    }

    /// `director` failed, or kept a request waiting past [`ANSWER_WITHIN`].
    pub(super) fn pass_over(&mut self, director: PeerId, now: Instant) {
        // Bounded by the swarm's directors: the expired ones go.
        self.since
            .retain(|_, at| now.saturating_duration_since(*at) < PASSED_OVER_FOR);
        self.since.insert(director, now);
        if self.last_answered == Some(director) {
            self.last_answered = None;
        }
    }

    /// `director` answered (anything, `NotFound` included: it is there).
    pub(super) fn answered(&mut self, director: PeerId) {
        self.since.remove(&director);
        self.last_answered = Some(director);
    }

    /// Whether `director` is passed over at `now`.
    pub(super) fn is_passed(&self, director: &PeerId, now: Instant) -> bool {
        self.since
            .get(director)
            .is_some_and(|at| now.saturating_duration_since(*at) < PASSED_OVER_FOR)
    }

    /// The order to ask `first` and `others` in at `now`: the first; the others, the one
    /// that answered last first, then those the console is connected to, then those that
    /// know every program; and after all of them, in that same order, the directors passed
    /// over.
    pub(super) fn order(&self, first: PeerId, others: &[Candidate], now: Instant) -> Vec<PeerId> {
        let mut rest = others.to_vec();
        rest.sort_by_key(|c| {
            (
                self.last_answered != Some(c.director),
                !c.connected,
                !c.knows_all,
            )
        });
        let mut order: Vec<PeerId> = std::iter::once(first)
            .chain(rest.iter().map(|c| c.director))
            .collect();
        // Stable: the passed over keep their order among themselves.
        order.sort_by_key(|d| self.is_passed(d, now));
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(connected: bool, knows_all: bool) -> Candidate {
        Candidate {
            director: PeerId::random(),
            connected,
            knows_all,
        }
    }

    #[test]
    fn the_first_goes_first_then_the_last_to_answer_then_the_connected() {
        let t0 = Instant::now();
        let first = PeerId::random();
        let (plain, manager, connected) = (
            candidate(false, false),
            candidate(false, true),
            candidate(true, false),
        );
        let others = [plain, manager, connected];
        let mut passed = Passed::default();
        assert_eq!(
            passed.order(first, &others, t0),
            [first, connected.director, manager.director, plain.director]
        );
        passed.answered(plain.director);
        assert_eq!(
            passed.order(first, &others, t0),
            [first, plain.director, connected.director, manager.director]
        );
    }

    /// The chaos run's stall (seed 1796662158240): the first director passed over, the one
    /// that answered last went silent too, and every ask went to it first. Passed over, it
    /// goes last, after the first, until its time is up or it answers.
    #[test]
    fn a_director_passed_over_is_asked_last_until_its_time_is_up_or_it_answers() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let first = PeerId::random();
        let (b, c) = (candidate(true, false), candidate(false, false));
        let others = [b, c];
        let mut passed = Passed::default();
        passed.pass_over(first, t0);
        passed.answered(b.director);
        assert_eq!(
            passed.order(first, &others, at(100)),
            [b.director, c.director, first]
        );
        passed.pass_over(b.director, at(200));
        assert_eq!(
            passed.order(first, &others, at(300)),
            [c.director, first, b.director]
        );
        // The first's time is up; b's is not.
        assert_eq!(
            passed.order(first, &others, at(10_000)),
            [first, c.director, b.director]
        );
        // b answered (a request it was passed over for, late): in the lead again.
        passed.answered(b.director);
        assert_eq!(
            passed.order(first, &others, at(10_000)),
            [first, b.director, c.director]
        );
        assert!(!passed.is_passed(&b.director, at(10_000)));
    }

    /// A hedge of a fetch waiting on a director passes over the directors it may be waiting
    /// on: those with an ask on its way for the hedge's silence. Not one that answers (its
    /// ask ended), nor one asked only just now.
    #[test]
    fn a_hedge_passes_over_the_directors_silent_for_its_silence() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let first = PeerId::random();
        let (b, c) = (candidate(true, false), candidate(true, false));
        let mut passed = Passed::default();
        let silent = passed.begin(b.director, t0);
        let answered = passed.begin(c.director, t0);
        passed.end(answered);
        let _fresh = passed.begin(first, at(400));
        let slow = passed.pass_over_slow(Duration::from_millis(500), at(600));
        assert_eq!(slow, [b.director]);
        assert_eq!(
            passed.order(first, &[b, c], at(700)),
            [first, c.director, b.director]
        );
        passed.end(silent);
        assert!(passed.pass_over_slow(Duration::ZERO, at(800)) == [first]);
    }

    #[test]
    fn expired_marks_are_forgotten() {
        let t0 = Instant::now();
        let mut passed = Passed::default();
        for _ in 0..100 {
            passed.pass_over(PeerId::random(), t0);
        }
        passed.pass_over(PeerId::random(), t0 + PASSED_OVER_FOR);
        assert_eq!(passed.since.len(), 1);
    }
}
