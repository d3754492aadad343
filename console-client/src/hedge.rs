//! When a segment fetch that brings nothing is hedged ([`decide`]): the console's patience
//! with an engine is tied to its buffer, not to a fixed time-out.
//!
//! A fetch whose stream (or whose wait for a stream: a director's answer, the engine's turn,
//! its reply) has brought no byte for a while is *hedged* once the play position comes within
//! `margin` of the segment's play time, half the buffer (at least [`MIN_MARGIN`]): another
//! fetch asks again with the silent engine in `avoid`, and whichever brings the verified
//! segment first wins; the others are dropped (a hedge that is silent too is hedged in turn,
//! up to three fetches: `crate::fetch`). An engine that freezes, a
//! link that goes silent, a filling copy whose source went quiet then cost the console at
//! most the silence and one more fetch, and the buffer rides them out.
//!
//! Before the play clock runs (the first segment) and at `--speed max` there is no play time:
//! a fetch is hedged after [`BLIND_SILENCE`] without a byte.
//!
//! Plain synchronous code that takes `now`: tested on simulated time.

use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How long a fetch must have brought nothing before it may be hedged: a stream that is
/// bringing bytes is left alone, however close its play time.
pub(crate) const SILENCE: Duration = Duration::from_millis(500);
/// The least time before its play time at which a silent fetch is hedged.
pub(crate) const MIN_MARGIN: Duration = Duration::from_millis(500);
/// How long a fetch with no play time (startup, `--speed max`) may bring nothing before it
/// is hedged.
pub(crate) const BLIND_SILENCE: Duration = Duration::from_secs(2);

/// What a silent fetch does now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Choice {
    /// Keep waiting on it; decide again at this time (or sooner, when the clock changes).
    Wait(Instant),
    /// Ask for the segment again elsewhere, racing this fetch.
    Hedge,
}

/// The decision for a fetch that last brought a byte (or started) at `last_byte`, whose
/// segment plays at `due` (none: no play time known), with `buffer` of media kept ahead.
pub(crate) fn decide(
    now: Instant,
    last_byte: Instant,
    due: Option<Instant>,
    buffer: Duration,
) -> Choice {
    let at = match due {
        Some(due) => {
            let margin = (buffer / 2).max(MIN_MARGIN);
            let near = due.checked_sub(margin).unwrap_or(due);
            near.max(last_byte + SILENCE)
        }
        None => last_byte + BLIND_SILENCE,
    };
    if now >= at {
        Choice::Hedge
    } else {
        Choice::Wait(at)
    }
}

/// When a segment starting at media time `at_ms` plays, on a play clock that showed media
/// time `clock_ms` at wall time `wall` (none while the clock stands: not started, paused, or
/// at `--speed max`). A segment whose media time is already past plays now: at `wall`.
pub(crate) fn due(clock: Clock, at_ms: u64) -> Option<Instant> {
    let (wall, clock_ms) = clock?;
    Some(wall + Duration::from_millis(at_ms.saturating_sub(clock_ms)))
}

/// The play clock as fetches see it: (wall time, media time) of the play position while it
/// runs; none while it stands (not started, paused, `--speed max`).
pub(crate) type Clock = Option<(Instant, u64)>;

/// When the segment a fetch brings plays, following the play clock as it moves (a pause, a
/// restart after a stall).
pub(crate) struct Due {
    clock: Option<watch::Receiver<Clock>>,
    /// Media time where the segment starts.
    at_ms: u64,
    /// Media kept ahead of the play position.
    pub(crate) buffer: Duration,
}

impl Due {
    /// No play time (a fetch for the HLS gateway, or for a caller without a clock).
    pub(crate) fn none() -> Self {
        Self {
            clock: None,
            at_ms: 0,
            buffer: Duration::ZERO,
        }
    }

    /// The segment starting at media time `at_ms`, on `clock`, with `buffer` kept ahead.
    pub(crate) fn new(clock: watch::Receiver<Clock>, at_ms: u64, buffer: Duration) -> Self {
        Self {
            clock: Some(clock),
            at_ms,
            buffer,
        }
    }

    /// When the segment plays, as the clock stands now.
    pub(crate) fn at(&self) -> Option<Instant> {
        due(*self.clock.as_ref()?.borrow(), self.at_ms)
    }

    /// Returns when the clock changed (never, without one).
    pub(crate) async fn changed(&mut self) {
        let Some(rx) = self.clock.as_mut() else {
            return std::future::pending().await;
        };
        if rx.changed().await.is_err() {
            // Playback is over: no play time any more.
            self.clock = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUFFER: Duration = Duration::from_secs(2);

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_silent_fetch_is_hedged_half_a_buffer_before_its_play_time() {
        let t0 = Instant::now();
        // Due at 3 s, buffer 2 s: hedged at 2 s if silent since then.
        let due = Some(ms(t0, 3000));
        assert_eq!(
            decide(ms(t0, 100), t0, due, BUFFER),
            Choice::Wait(ms(t0, 2000))
        );
        assert_eq!(decide(ms(t0, 2000), t0, due, BUFFER), Choice::Hedge);
        // A byte came at 1.8 s: half a second more of patience.
        assert_eq!(
            decide(ms(t0, 2000), ms(t0, 1800), due, BUFFER),
            Choice::Wait(ms(t0, 2300))
        );
        assert_eq!(
            decide(ms(t0, 2300), ms(t0, 1800), due, BUFFER),
            Choice::Hedge
        );
    }

    #[test]
    fn a_fetch_bringing_bytes_is_left_alone_even_past_its_play_time() {
        let t0 = Instant::now();
        let due = Some(ms(t0, 1000));
        // Late already, but a byte came 100 ms ago.
        assert_eq!(
            decide(ms(t0, 5000), ms(t0, 4900), due, BUFFER),
            Choice::Wait(ms(t0, 5400))
        );
    }

    #[test]
    fn a_small_buffer_still_leaves_a_margin() {
        let t0 = Instant::now();
        let due = Some(ms(t0, 3000));
        let tiny = Duration::from_millis(200);
        assert_eq!(
            decide(t0, t0, due, tiny),
            Choice::Wait(ms(t0, 3000) - MIN_MARGIN)
        );
        // A play time within the margin at the start: hedged after the silence alone.
        assert_eq!(
            decide(t0, t0, Some(ms(t0, 100)), BUFFER),
            Choice::Wait(ms(t0, 500))
        );
    }

    #[test]
    fn without_a_play_time_a_fetch_is_hedged_after_a_longer_silence() {
        let t0 = Instant::now();
        assert_eq!(
            decide(t0, t0, None, BUFFER),
            Choice::Wait(t0 + BLIND_SILENCE)
        );
        assert_eq!(decide(t0 + BLIND_SILENCE, t0, None, BUFFER), Choice::Hedge);
    }

    #[test]
    fn play_time_follows_the_clock() {
        let t0 = Instant::now();
        assert_eq!(due(None, 5000), None, "no clock, no play time");
        // The clock showed 2 s at t0: media time 5 s plays 3 s later.
        assert_eq!(due(Some((t0, 2000)), 5000), Some(ms(t0, 3000)));
        // Already past: it plays now.
        assert_eq!(due(Some((t0, 2000)), 1000), Some(t0));
    }
}
