//! What a segment fetch does after an attempt failed ([`Retry`]), and which engines this
//! console found unreachable lately ([`Recent`]): decisions apart from the I/O that carries
//! them out ([`crate::fetch`]). Plain synchronous code that takes `now` where time matters, so
//! it is tested without sockets or sleeps.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// How one attempt at a segment ended, when it did not bring the whole segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// No director answered, or one answered with a failure worth another try.
    DirectorLost,
    /// The director answered that nothing can serve the segment now (every holder busy, no
    /// idle engine to replicate onto, no other station): a wait.
    DirectorBusy,
    /// The engine named answered that it is at `--max-streams`: a wait.
    EngineBusy(PeerId),
    /// The engine named could not be reached: no connection, no answer, or a stream that
    /// brought nothing for the stall limit (a frozen engine).
    Unreachable(PeerId),
    /// The engine named does not hold the segment (a copy that never came), or sent bytes that
    /// failed verification: ask for another.
    Absent(PeerId),
    /// The director found nothing to offer but the engines this console named in `avoid` or
    /// `busy`: they are forgotten, and it is asked again (a report that was wrong, a copy that
    /// never came, must not end the play while those engines can serve).
    NothingElse,
    /// The stream broke or ended early; `progress`: it brought new bytes first.
    Broke {
        /// New bytes arrived in this attempt.
        progress: bool,
    },
}

impl Ended {
    /// A busy answer: the console waits, it does not fail.
    pub(crate) fn is_wait(&self) -> bool {
        matches!(self, Self::DirectorBusy | Self::EngineBusy(_))
    }
}

/// What to do after an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Ask the director again after this long.
    Again(Duration),
    /// Give up on the segment: attempts keep failing without a byte or anything learned.
    GiveUp,
}

/// Attempts in a row that bring no byte and teach nothing new before a segment is given up.
const MAX_FRUITLESS: u32 = 3;
/// Engines a fetch names in `avoid` or `busy` at most (the request has a size cap).
const MAX_NAMED: usize = 32;
/// The first wait after a busy answer, doubled each time up to [`LONGEST_WAIT`].
const FIRST_WAIT: Duration = Duration::from_millis(100);
/// The longest wait between asks while everything is busy.
const LONGEST_WAIT: Duration = Duration::from_secs(1);

/// One segment's retry state: the engines to avoid and the busy ones to name in the next
/// `Locate`, and how long to wait before it.
///
/// - A busy engine is named in `busy` and the director asked again at once: it sends the
///   console to another holder, replicates the segment onto an idle engine (claims 19, 20)
///   or to another station. When the director itself answers busy, the console waits (100 ms,
///   doubling to 1 s) and asks again, forgetting which engines were busy: it never gives up
///   for busy, it stalls.
/// - An engine that could not be reached, or does not hold the segment, is named in `avoid`
///   and the director asked again at once.
/// - A stream that broke after new bytes is resumed at once from those bytes.
/// - When the director has nothing but the engines named, they are forgotten and the
///   director asked again: the hint gives way.
/// - Anything else (a lost stream, a director that did not answer) is retried after
///   100 ms, 200 ms; the third such attempt in a row ends the segment.
#[derive(Clone, Debug, Default)]
pub(crate) struct Retry {
    avoid: Vec<PeerId>,
    busy: Vec<PeerId>,
    fruitless: u32,
    waits: u32,
    /// A hedge: it races the fetch it hedges, so it neither takes a location named ahead nor
    /// waits for an answer on its way (`fetch::ahead`).
    hedge: bool,
}

impl Retry {
    /// The retry state of a hedge: the engines the fetches it races wait on avoided.
    pub(crate) fn avoiding(mut avoid: Vec<PeerId>) -> Self {
        avoid.truncate(MAX_NAMED);
        Self {
            avoid,
            hedge: true,
            ..Self::default()
        }
    }

    /// Whether this is a hedge's ([`Retry::avoiding`]).
    pub(crate) fn is_hedge(&self) -> bool {
        self.hedge
    }

    /// Engines the console could not reach, or that lack the segment.
    pub(crate) fn avoid(&self) -> &[PeerId] {
        &self.avoid
    }

    /// Engines that answered busy since the director last did.
    pub(crate) fn busy(&self) -> &[PeerId] {
        &self.busy
    }

    /// The decision after an attempt ended with `ended`.
    pub(crate) fn after(&mut self, ended: Ended) -> Next {
        match ended {
            Ended::EngineBusy(engine) if add(&mut self.busy, engine) => Next::Again(Duration::ZERO),
            // Named busy again despite `busy` (or too many named): wait as for the director.
            Ended::EngineBusy(_) | Ended::DirectorBusy => {
                self.waits += 1;
                self.busy.clear();
                let doubled = FIRST_WAIT.saturating_mul(1 << (self.waits - 1).min(10));
                Next::Again(doubled.min(LONGEST_WAIT))
            }
            Ended::Unreachable(engine) | Ended::Absent(engine) if add(&mut self.avoid, engine) => {
                Next::Again(Duration::ZERO)
            }
            Ended::Broke { progress: true } => {
                self.fruitless = 0;
                Next::Again(Duration::ZERO)
            }
            Ended::NothingElse => {
                self.avoid.clear();
                self.busy.clear();
                self.fruitless()
            }
            Ended::Unreachable(_)
            | Ended::Absent(_)
            | Ended::Broke { progress: false }
            | Ended::DirectorLost => self.fruitless(),
        }
    }

    /// One more attempt that brought nothing: retried after 100 ms, 200 ms, then given up.
    fn fruitless(&mut self) -> Next {
        self.fruitless += 1;
        if self.fruitless >= MAX_FRUITLESS {
            Next::GiveUp
        } else {
            Next::Again(Duration::from_millis(100 * u64::from(self.fruitless)))
        }
    }
}

/// Adds `peer` to `list` unless it is there or the list is full; whether it was added.
fn add(list: &mut Vec<PeerId>, peer: PeerId) -> bool {
    if list.contains(&peer) || list.len() >= MAX_NAMED {
        return false;
    }
    list.push(peer);
    true
}

/// How long an engine this console could not reach is named in every `Locate { avoid }`:
/// longer than a director takes to mark a dead engine down (3 s of missed heartbeats).
pub(crate) const UNREACHABLE_FOR: Duration = Duration::from_secs(10);

/// Engines this console could not reach lately, shared by all its fetches: a segment fetched
/// ahead does not wait out its own time-out on an engine another fetch found dead.
#[derive(Clone, Debug, Default)]
pub(crate) struct Recent {
    at: HashMap<PeerId, Instant>,
}

impl Recent {
    /// `engine` could not be reached at `now`.
    pub(crate) fn mark(&mut self, engine: PeerId, now: Instant) {
        if self.at.len() >= MAX_NAMED {
            self.at
                .retain(|_, t| now.saturating_duration_since(*t) < UNREACHABLE_FOR);
        }
        if self.at.len() < MAX_NAMED {
            self.at.insert(engine, now);
        }
    }

    /// Whether `engine` could not be reached within [`UNREACHABLE_FOR`] before `now`.
    pub(crate) fn contains(&self, engine: &PeerId, now: Instant) -> bool {
        self.at
            .get(engine)
            .is_some_and(|t| now.saturating_duration_since(*t) < UNREACHABLE_FOR)
    }

    /// Forgets every engine (a director had nothing else: they are tried again).
    pub(crate) fn clear(&mut self) {
        self.at.clear();
    }

    /// Every engine still counted unreachable at `now`.
    pub(crate) fn list(&self, now: Instant) -> Vec<PeerId> {
        self.at
            .keys()
            .filter(|e| self.contains(e, now))
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_engine_is_named_and_the_director_asked_again_at_once() {
        let mut retry = Retry::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        assert_eq!(
            retry.after(Ended::EngineBusy(a)),
            Next::Again(Duration::ZERO)
        );
        assert_eq!(
            retry.after(Ended::EngineBusy(b)),
            Next::Again(Duration::ZERO)
        );
        assert_eq!(retry.busy(), &[a, b]);
        assert!(retry.avoid().is_empty(), "a busy engine is alive");
        // The same engine busy again: the director did not help, so the console waits.
        assert_eq!(retry.after(Ended::EngineBusy(a)), Next::Again(FIRST_WAIT));
        assert!(
            retry.busy().is_empty(),
            "after a wait every engine may have a slot"
        );
    }

    #[test]
    fn busy_directors_are_waited_out_with_doubling_waits_and_never_given_up() {
        let mut retry = Retry::default();
        let waits: Vec<Next> = (0..40).map(|_| retry.after(Ended::DirectorBusy)).collect();
        assert_eq!(waits[0], Next::Again(Duration::from_millis(100)));
        assert_eq!(waits[1], Next::Again(Duration::from_millis(200)));
        assert_eq!(waits[2], Next::Again(Duration::from_millis(400)));
        assert_eq!(waits[4], Next::Again(LONGEST_WAIT));
        assert_eq!(waits[39], Next::Again(LONGEST_WAIT));
        // Waits do not use up the attempts a lost stream has.
        assert_ne!(retry.after(Ended::DirectorLost), Next::GiveUp);
        assert!(Ended::DirectorBusy.is_wait() && Ended::EngineBusy(PeerId::random()).is_wait());
        assert!(!Ended::DirectorLost.is_wait());
    }

    #[test]
    fn unreachable_engines_are_avoided_at_once_and_only_fruitless_attempts_count() {
        let mut retry = Retry::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        // Each new dead engine teaches the director something: asked again at once.
        assert_eq!(
            retry.after(Ended::Unreachable(a)),
            Next::Again(Duration::ZERO)
        );
        assert_eq!(retry.after(Ended::Absent(b)), Next::Again(Duration::ZERO));
        assert_eq!(retry.avoid(), &[a, b]);
        // A stream that broke after bytes resumes at once and clears the count.
        assert_eq!(
            retry.after(Ended::Broke { progress: false }),
            Next::Again(Duration::from_millis(100))
        );
        assert_eq!(
            retry.after(Ended::Broke { progress: true }),
            Next::Again(Duration::ZERO)
        );
        // Three attempts in a row that bring nothing end the segment.
        assert_eq!(
            retry.after(Ended::Unreachable(a)),
            Next::Again(Duration::from_millis(100))
        );
        assert_eq!(
            retry.after(Ended::DirectorLost),
            Next::Again(Duration::from_millis(200))
        );
        assert_eq!(retry.after(Ended::Broke { progress: false }), Next::GiveUp);
    }

    #[test]
    fn the_engines_named_are_forgotten_when_the_director_has_nothing_else() {
        let mut retry = Retry::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        retry.after(Ended::Absent(a));
        retry.after(Ended::EngineBusy(b));
        assert_eq!(
            retry.after(Ended::NothingElse),
            Next::Again(Duration::from_millis(100))
        );
        assert!(retry.avoid().is_empty() && retry.busy().is_empty());
        // Named again, found absent again: the segment is given up on the third try.
        retry.after(Ended::Absent(a));
        assert_eq!(
            retry.after(Ended::NothingElse),
            Next::Again(Duration::from_millis(200))
        );
        assert_eq!(retry.after(Ended::NothingElse), Next::GiveUp);
    }

    #[test]
    fn the_named_lists_are_capped() {
        let mut retry = Retry::default();
        for _ in 0..MAX_NAMED {
            assert_eq!(
                retry.after(Ended::Unreachable(PeerId::random())),
                Next::Again(Duration::ZERO)
            );
        }
        assert_eq!(retry.avoid().len(), MAX_NAMED);
        assert_ne!(
            retry.after(Ended::Unreachable(PeerId::random())),
            Next::Again(Duration::ZERO)
        );
        assert_eq!(retry.avoid().len(), MAX_NAMED);
    }

    #[test]
    fn engines_found_unreachable_are_shared_for_a_while() {
        let now = Instant::now();
        let mut recent = Recent::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        recent.mark(a, now);
        assert!(recent.contains(&a, now + Duration::from_secs(1)));
        assert!(!recent.contains(&b, now));
        assert_eq!(recent.list(now), vec![a]);
        recent.clear();
        assert!(recent.list(now).is_empty());
        recent.mark(a, now);
        assert!(!recent.contains(&a, now + UNREACHABLE_FOR));
        assert!(recent.list(now + UNREACHABLE_FOR).is_empty());
        // Bounded: old entries make room; fresh ones are kept up to the cap.
        for _ in 0..2 * MAX_NAMED {
            recent.mark(PeerId::random(), now + UNREACHABLE_FOR);
        }
        assert!(recent.at.len() <= MAX_NAMED);
    }
}
