//! An attempt's time limit, net of the time its fetch waits for the player.
//!
//! At `--speed max` a fetch ahead of the play position hands its verified groups to a queue of
//! its own and waits when the queue is full, until the player takes them
//! ([`super::read`]). That wait is the player's time, not the engine's: a viewer who pauses a
//! player fed by `--out -` for minutes leaves the fetches ahead waiting as long, and they must
//! not be counted stalled and started over for it. [`Held`] counts that wait; [`limited`]
//! gives an attempt up after [`super::ATTEMPT_LIMIT`] of its own time only.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How long a fetch waited for the player in all, counted while it waits.
#[derive(Default)]
pub(super) struct Held {
    /// The waits that ended, and when the current one began (if it waits now).
    state: Mutex<(Duration, Option<Instant>)>,
}

impl Held {
    /// The fetch waits for the player until the guard is dropped (the group queued, or the
    /// attempt dropped while it waited).
    pub(super) fn wait(&self) -> Waiting<'_> {
        if let Ok(mut s) = self.state.lock() {
            s.1 = Some(Instant::now());
        }
        Waiting(self)
    }

    /// All the time waited, the current wait included.
    pub(super) fn total(&self) -> Duration {
        self.state.lock().map_or(Duration::ZERO, |s| {
            s.0 + s.1.map_or(Duration::ZERO, |since| since.elapsed())
        })
    }
}

/// A wait for the player, counted until dropped.
pub(super) struct Waiting<'a>(&'a Held);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.state.lock()
            && let Some(since) = s.1.take()
        {
            s.0 += since.elapsed();
        }
    }
}

/// `attempt`'s output, or `None` once it took `limit` of its own time: the time `held` counts
/// (waits for the player) while it runs is not counted.
pub(super) async fn limited<F: Future>(
    attempt: F,
    limit: Duration,
    held: &Held,
) -> Option<F::Output> {
    let (started, held_before) = (Instant::now(), held.total());
    let mut deadline = started + limit;
    tokio::pin!(attempt);
    loop {
        tokio::select! {
            out = &mut attempt => return Some(out),
            () = tokio::time::sleep_until(deadline) => {
                let due = started + limit + held.total().saturating_sub(held_before);
                if due <= Instant::now() {
                    return None;
                }
                deadline = due;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = super::super::ATTEMPT_LIMIT;

    /// An attempt that waits for the player for `waiting`, then works for `working`.
    async fn attempt(held: &Held, waiting: Duration, working: Duration) -> u8 {
        {
            let _waiting = held.wait();
            tokio::time::sleep(waiting).await;
        }
        tokio::time::sleep(working).await;
        7
    }

    #[tokio::test(start_paused = true)]
    async fn time_waiting_for_the_player_is_not_an_attempts_own() {
        let held = Held::default();
        // Ten minutes paused, then a little work: whole.
        let paused = attempt(&held, 10 * LIMIT, LIMIT / 2);
        assert_eq!(limited(paused, LIMIT, &held).await, Some(7));
        // Control: the same time working is given up at the limit.
        let held = Held::default();
        let started = Instant::now();
        let working = attempt(&held, Duration::ZERO, 10 * LIMIT);
        assert_eq!(limited(working, LIMIT, &held).await, None);
        assert_eq!(started.elapsed(), LIMIT);
        // A wait does not excuse work past the limit after it.
        let held = Held::default();
        let started = Instant::now();
        let both = attempt(&held, 3 * LIMIT, LIMIT + Duration::from_secs(1));
        assert_eq!(limited(both, LIMIT, &held).await, None);
        assert_eq!(started.elapsed(), 4 * LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ended_by_a_dropped_attempt_stops_counting() {
        let held = Held::default();
        let waiting = async {
            let _waiting = held.wait();
            std::future::pending::<()>().await;
        };
        let cut = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert!(cut.is_err());
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert_eq!(held.total(), Duration::from_secs(5));
        // Waits before an attempt began are not its excuse.
        let working = async {
            tokio::time::sleep(10 * LIMIT).await;
        };
        assert_eq!(limited(working, LIMIT, &held).await, None);
    }
}
