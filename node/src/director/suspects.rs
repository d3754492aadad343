//! Engines of this station that consoles reported unreachable (`Locate { avoid }`).
//!
//! A console's report is a hint, not proof: its own network may be at fault, and any console
//! can send one. So a report makes the director skip that engine for the console that sent it
//! for [`SKIP_FOR`]; once [`QUORUM`] different consoles reported the same engine within
//! [`SKIP_FOR`], it is skipped for every console until the newest report is [`SKIP_FOR`] old.
//! Either way the heartbeat settles it: a dead engine is marked down within 3 s, and an engine
//! that (re)attaches is cleared of every report. A live engine that one console cannot reach
//! keeps serving the others; a dead one stops being named the moment a console finds it so.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// How long a report counts: longer than the heartbeat takes to mark a dead engine down.
pub(super) const SKIP_FOR: Duration = Duration::from_secs(10);
/// Different consoles whose reports make an engine skipped for everyone.
pub(super) const QUORUM: usize = 2;
/// Reports kept per engine (the newest, one per console).
const MAX_PER_ENGINE: usize = 16;

/// The reports, by engine.
#[derive(Debug, Default)]
pub(super) struct Suspects {
    reports: HashMap<PeerId, Vec<(PeerId, Instant)>>,
}

impl Suspects {
    /// `console` could not reach `engine` (one of this station's) at `now`.
    pub(super) fn report(&mut self, console: PeerId, engine: PeerId, now: Instant) {
        let list = self.reports.entry(engine).or_default();
        list.retain(|(c, at)| *c != console && now.saturating_duration_since(*at) < SKIP_FOR);
        if list.len() >= MAX_PER_ENGINE {
            list.remove(0);
        }
        list.push((console, now));
    }

    /// Whether `engine` is skipped for `console` at `now`.
    pub(super) fn skipped(&self, console: &PeerId, engine: &PeerId, now: Instant) -> bool {
        let Some(list) = self.reports.get(engine) else {
            return false;
        };
        let fresh = list
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(*at) < SKIP_FOR);
        let mut consoles = 0;
        for (c, _) in fresh {
            if c == console {
                return true;
            }
            consoles += 1;
        }
        consoles >= QUORUM
    }

    /// `engine` (re)attached: whatever consoles saw before no longer holds.
    pub(super) fn clear(&mut self, engine: &PeerId) {
        self.reports.remove(engine);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_console_s_report_skips_the_engine_for_that_console_only() {
        let now = Instant::now();
        let (engine, a, b) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut s = Suspects::default();
        s.report(a, engine, now);
        assert!(s.skipped(&a, &engine, now));
        assert!(!s.skipped(&b, &engine, now), "one report is a hint");
        assert!(!s.skipped(&a, &engine, now + SKIP_FOR), "and it expires");
        assert!(!s.skipped(&a, &PeerId::random(), now));
    }

    #[test]
    fn reports_of_several_consoles_skip_it_for_everyone_until_they_expire() {
        let now = Instant::now();
        let (engine, a, b, c) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        let mut s = Suspects::default();
        s.report(a, engine, now);
        // The same console again is still one console.
        s.report(a, engine, now + Duration::from_secs(1));
        assert!(!s.skipped(&c, &engine, now + Duration::from_secs(1)));
        s.report(b, engine, now + Duration::from_secs(2));
        assert!(s.skipped(&c, &engine, now + Duration::from_secs(2)));
        // Until the older report expires.
        assert!(!s.skipped(&c, &engine, now + Duration::from_secs(1) + SKIP_FOR));
        // An engine that reattaches starts clean.
        s.clear(&engine);
        assert!(!s.skipped(&b, &engine, now + Duration::from_secs(3)));
    }

    #[test]
    fn reports_per_engine_are_bounded() {
        let now = Instant::now();
        let engine = PeerId::random();
        let mut s = Suspects::default();
        for _ in 0..100 {
            s.report(PeerId::random(), engine, now);
        }
        assert_eq!(s.reports.get(&engine).map(Vec::len), Some(MAX_PER_ENGINE));
    }
}
