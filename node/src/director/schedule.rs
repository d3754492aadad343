//! The content manager's publish times (claim 11): every inactive program's, in one timer
//! queue, each program once, at its latest time ([`Schedule`]).

use std::collections::HashMap;
use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;

use tokio_util::time::{DelayQueue, delay_queue};
use vodmesh_proto::ProgramId;

/// The longest wait in the timer queue: tokio-util's `DelayQueue` takes about two years at
/// most (and panicked past it, stopping the director for good: its schedule is loaded at
/// every start). A publish time further out is waited for in steps.
const MAX_WAIT: Duration = Duration::from_secs(30 * 24 * 3600);
/// A publish time is waited for at most this long (some ten thousand years): past it, never.
const FOREVER: Duration = Duration::from_secs(1 << 38);

/// Publish times, in one timer queue: a program is in it once, at its latest time.
#[derive(Debug, Default)]
pub(super) struct Schedule {
    queue: DelayQueue<ProgramId>,
    /// Each program's key in the queue and when it is due.
    keys: HashMap<ProgramId, (delay_queue::Key, tokio::time::Instant)>,
}

impl Schedule {
    /// Publishes `program` at `at_ms` (at once if that has passed by `now_ms`).
    pub(super) fn arm(&mut self, program: ProgramId, at_ms: u64, now_ms: u64) {
        let wait = Duration::from_millis(at_ms.saturating_sub(now_ms)).min(FOREVER);
        let now = tokio::time::Instant::now();
        let due = now.checked_add(wait).unwrap_or(now + MAX_WAIT);
        let step = wait.min(MAX_WAIT);
        match self.keys.get_mut(&program) {
            Some((key, at)) => {
                self.queue.reset(key, step);
                *at = due;
            }
            None => {
                let key = self.queue.insert(program, step);
                self.keys.insert(program, (key, due));
            }
        }
    }

    /// Forgets the publish time of `program` (it was published by hand).
    pub(super) fn cancel(&mut self, program: &ProgramId) {
        if let Some((key, _)) = self.keys.remove(program) {
            self.queue.remove(&key);
        }
    }

    /// The next program whose time has come; waits forever while none is armed.
    pub(super) async fn due(&mut self) -> ProgramId {
        loop {
            let expired = poll_fn(|cx| match self.queue.poll_expired(cx) {
                Poll::Ready(None) => Poll::Pending,
                other => other,
            })
            .await;
            let Some(program) = expired.map(|e| e.into_inner()) else {
                return std::future::pending().await;
            };
            let now = tokio::time::Instant::now();
            match self.keys.remove(&program) {
                // A step of a longer wait: the next one.
                Some((_, due)) if due > now => {
                    let key = self.queue.insert(program, (due - now).min(MAX_WAIT));
                    self.keys.insert(program, (key, due));
                }
                _ => return program,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn publish_times_fire_in_order_once_each_and_can_be_moved_or_cancelled() {
        let program = |n: u8| ProgramId([n; 32]);
        let mut schedule = Schedule::default();
        let now = 1_000_000;
        let start = tokio::time::Instant::now();
        schedule.arm(program(1), now + 3_600_000, now);
        schedule.arm(program(2), now + 600_000, now);
        // Moved earlier: armed once, at its new time.
        schedule.arm(program(1), now + 300_000, now);
        schedule.arm(program(3), now + 900_000, now);
        schedule.cancel(&program(3));
        // A time that has passed fires at once.
        schedule.arm(program(4), now - 5_000, now);
        assert_eq!(schedule.due().await, program(4));
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(schedule.due().await, program(1));
        assert_eq!(start.elapsed(), Duration::from_secs(300));
        assert_eq!(schedule.due().await, program(2));
        assert_eq!(start.elapsed(), Duration::from_secs(600));
        // Nothing else is armed: the cancelled program never fires.
        let idle = tokio::time::timeout(Duration::from_secs(7200), schedule.due()).await;
        assert!(idle.is_err());
        // Armed again after it fired: it fires again.
        schedule.arm(program(2), now, now);
        assert_eq!(schedule.due().await, program(2));
    }

    /// A publish time years ahead (past the timer queue's two years, where it panicked and
    /// the station could not start again) fires at its time, after the nearer one.
    #[tokio::test(start_paused = true)]
    async fn a_publish_time_years_ahead_fires_at_its_time() {
        const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;
        let program = |n: u8| ProgramId([n; 32]);
        let mut schedule = Schedule::default();
        let now = 1_000_000;
        let start = tokio::time::Instant::now();
        schedule.arm(program(1), now + 3 * YEAR_MS, now);
        schedule.arm(program(2), now + YEAR_MS, now);
        schedule.arm(program(3), u64::MAX, now);
        assert_eq!(schedule.due().await, program(2));
        assert_eq!(start.elapsed(), Duration::from_millis(YEAR_MS));
        assert_eq!(schedule.due().await, program(1));
        assert_eq!(start.elapsed(), Duration::from_millis(3 * YEAR_MS));
        // Moved nearer while it waits in steps: at its new time.
        schedule.arm(program(3), now + 4 * YEAR_MS, now + 3 * YEAR_MS);
        assert_eq!(schedule.due().await, program(3));
        assert_eq!(start.elapsed(), Duration::from_millis(4 * YEAR_MS));
    }
}
