//! Login rate limiting: exponential backoff per subscriber and per peer, in memory.
//!
//! A plain state machine driven by `now_ms`. Each key (a user name, a peer id) may fail
//! [`Backoff::free_failures`] times; every failure after that locks the key for
//! `base_ms * 2^(failures - free_failures)`, capped at `max_ms`. While a key is locked, attempts
//! are refused before the password is checked (no argon2 work for an attacker). A success
//! clears the subscriber's count; a peer's count only fades, `forget_after_ms` after its last
//! failure, so logging into one's own account does not buy more guesses at another's.
//!
//! An attempt is counted as a failure when it *begins* ([`RateLimiter::begin`]) and un-counted
//! when it succeeds ([`RateLimiter::succeeded`]): guesses sent in parallel see each other's
//! counts, instead of all slipping through before the first failure is recorded.
//!
//! Token exchanges (`Refresh`, `UrlToken`: a console token for a fresh one or for a URL token)
//! check no password, but each costs a signature check, a database read and a signature: they
//! are held per peer to a [`Rate`] ([`RateLimiter::exchange`]), a token bucket of
//! [`Rate::EXCHANGES`], so one console asking in a loop gets refusals, not a core.
//!
//! Counters live in memory, bounded by [`MAX_TRACKED`] keys per kind: a restart forgets them.
//! Persisting them would cost a database commit (an fsync) per guess, which turns the limiter
//! itself into something to flood; a restart costs an attacker at most one fresh round of free
//! failures per key.

use std::collections::HashMap;
use std::hash::Hash;

use libp2p::PeerId;

/// Most keys of one kind (user names, peers) tracked at once. When full, entries past
/// `forget_after_ms` go first, then the least recently failed.
pub const MAX_TRACKED: usize = 100_000;

/// The backoff schedule for one kind of key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Failures allowed before any delay.
    pub free_failures: u32,
    /// Lock after the first failure beyond the free ones, in milliseconds; doubles each time.
    pub base_ms: u64,
    /// Longest lock, in milliseconds.
    pub max_ms: u64,
    /// A key with no failure for this long starts afresh (never less than `max_ms`).
    pub forget_after_ms: u64,
}

impl Backoff {
    /// Per subscriber: 5 free failures, then 1 s, 2 s, 4 s ... up to 15 min; forgotten after 1 h.
    pub const SUBSCRIBER: Self = Self {
        free_failures: 5,
        base_ms: 1_000,
        max_ms: 15 * 60_000,
        forget_after_ms: 60 * 60_000,
    };
    /// Per peer: 10 free failures (a household's console may serve several subscribers), then
    /// the same schedule.
    pub const PEER: Self = Self {
        free_failures: 10,
        base_ms: 1_000,
        max_ms: 15 * 60_000,
        forget_after_ms: 60 * 60_000,
    };

    /// How long a key with `failures` failures stays locked after its last one.
    pub fn delay_ms(&self, failures: u32) -> u64 {
        let Some(over) = failures.checked_sub(self.free_failures) else {
            return 0;
        };
        let factor = 1u64.checked_shl(over).unwrap_or(u64::MAX);
        self.base_ms.saturating_mul(factor).min(self.max_ms)
    }

    fn forget_after(&self) -> u64 {
        self.forget_after_ms.max(self.max_ms)
    }
}

/// A token bucket's schedule: `burst` requests at once, then one every `every_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Requests a key may make at once, after a quiet spell.
    pub burst: u32,
    /// Milliseconds for one more to come back.
    pub every_ms: u64,
}

impl Rate {
    /// Token exchanges per peer: a console refreshes at half its token's life (retrying
    /// within a minute when that fails) and asks for a URL token now and then, so 10 at
    /// once, then one every 6 s, is far more than it needs.
    pub const EXCHANGES: Self = Self {
        burst: 10,
        every_ms: 6_000,
    };
}

/// Token buckets per key (virtual scheduling: each key keeps only the time its bucket is
/// full again), bounded to `cap` keys; a full bucket is the same as none, so those go first.
#[derive(Debug)]
struct Buckets<K> {
    rate: Rate,
    /// When each key's bucket is full again (ms); a request takes `every_ms` of it.
    full_at: HashMap<K, u64>,
    cap: usize,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    fn new(rate: Rate, cap: usize) -> Self {
        Self {
            rate,
            full_at: HashMap::new(),
            cap,
        }
    }

    /// Takes one request of `key` at `now_ms`; refused with the milliseconds until it may.
    fn take(&mut self, key: &K, now_ms: u64) -> Result<(), u64> {
        let full_at = self.full_at.get(key).map_or(now_ms, |&t| t.max(now_ms));
        let slack = (self.rate.every_ms).saturating_mul(u64::from(self.rate.burst.max(1) - 1));
        let ahead = full_at - now_ms;
        if ahead > slack {
            return Err(ahead - slack);
        }
        if !self.full_at.contains_key(key) && self.full_at.len() >= self.cap {
            self.full_at.retain(|_, t| *t > now_ms);
            if self.full_at.len() >= self.cap {
                let soonest = self.full_at.iter().min_by_key(|(_, t)| **t);
                if let Some(k) = soonest.map(|(k, _)| k.clone()) {
                    self.full_at.remove(&k);
                }
            }
        }
        let next = full_at.saturating_add(self.rate.every_ms);
        self.full_at.insert(key.clone(), next);
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    failures: u32,
    last_failure_ms: u64,
}

/// Failure counts for one kind of key.
#[derive(Debug)]
struct Counters<K> {
    policy: Backoff,
    map: HashMap<K, Entry>,
    cap: usize,
}

impl<K: Hash + Eq + Clone> Counters<K> {
    fn new(policy: Backoff, cap: usize) -> Self {
        Self {
            policy,
            map: HashMap::new(),
            cap,
        }
    }

    fn stale(&self, e: &Entry, now_ms: u64) -> bool {
        now_ms.saturating_sub(e.last_failure_ms) >= self.policy.forget_after()
    }

    /// The current entry of `key`, if it still counts.
    fn get(&self, key: &K, now_ms: u64) -> Option<Entry> {
        self.map
            .get(key)
            .copied()
            .filter(|e| !self.stale(e, now_ms))
    }

    /// Milliseconds until `key` may try again; 0 if it may now.
    fn wait_ms(&self, key: &K, now_ms: u64) -> u64 {
        self.get(key, now_ms).map_or(0, |e| {
            let until = e
                .last_failure_ms
                .saturating_add(self.policy.delay_ms(e.failures));
            until.saturating_sub(now_ms)
        })
    }

    /// Counts a failure of `key` at `now_ms`; returns the entry before it.
    fn fail(&mut self, key: &K, now_ms: u64) -> Option<Entry> {
        let before = self.get(key, now_ms);
        if before.is_none() && !self.map.contains_key(key) && self.map.len() >= self.cap {
            self.make_room(now_ms);
        }
        let failures = before.map_or(0, |e| e.failures).saturating_add(1);
        self.map.insert(
            key.clone(),
            Entry {
                failures,
                last_failure_ms: now_ms,
            },
        );
        before
    }

    /// Takes back the failure `fail` counted, if nothing else touched the key since.
    fn undo(&mut self, key: &K, before: Option<Entry>, counted_ms: u64) {
        let Some(cur) = self.map.get_mut(key) else {
            return;
        };
        let expected = before.map_or(0, |e| e.failures).saturating_add(1);
        if cur.failures == expected && cur.last_failure_ms == counted_ms {
            match before {
                Some(b) => *cur = b,
                None => {
                    self.map.remove(key);
                }
            }
        } else {
            // Others failed in between: take back only our one count, keep their time.
            cur.failures = cur.failures.saturating_sub(1);
        }
    }

    fn clear(&mut self, key: &K) {
        self.map.remove(key);
    }

    fn make_room(&mut self, now_ms: u64) {
        let forget = self.policy.forget_after();
        self.map
            .retain(|_, e| now_ms.saturating_sub(e.last_failure_ms) < forget);
        if self.map.len() >= self.cap {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, e)| e.last_failure_ms)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.map.remove(&k);
            }
        }
    }
}

/// A login attempt in progress, counted as a failure until [`RateLimiter::succeeded`].
#[derive(Debug)]
#[must_use = "an attempt counts as a failure unless it is reported as a success"]
pub struct Attempt {
    user: Option<String>,
    user_before: Option<Entry>,
    peer: PeerId,
    peer_before: Option<Entry>,
    at_ms: u64,
}

/// Backoff state for logins, per subscriber and per peer; token exchanges per peer.
#[derive(Debug)]
pub struct RateLimiter {
    users: Counters<String>,
    peers: Counters<PeerId>,
    exchanges: Buckets<PeerId>,
}

impl RateLimiter {
    /// A limiter with these schedules, tracking at most [`MAX_TRACKED`] keys of each kind.
    pub fn new(users: Backoff, peers: Backoff) -> Self {
        Self::with_capacity(users, peers, MAX_TRACKED)
    }

    fn with_capacity(users: Backoff, peers: Backoff, cap: usize) -> Self {
        Self {
            users: Counters::new(users, cap),
            peers: Counters::new(peers, cap),
            exchanges: Buckets::new(Rate::EXCHANGES, cap),
        }
    }

    /// A token exchange (`Refresh`, `UrlToken`) by `peer` at `now_ms`: refused with the
    /// milliseconds to wait once it asked more than [`Rate::EXCHANGES`] allows.
    pub fn exchange(&mut self, peer: PeerId, now_ms: u64) -> Result<(), u64> {
        self.exchanges.take(&peer, now_ms)
    }

    /// Starts an attempt on `user` (`None` for a name that cannot exist, which only the peer
    /// pays for) from `peer`. Refused with the milliseconds to wait while either is locked;
    /// otherwise counted as a failure of both until reported as a success.
    pub fn begin(&mut self, user: Option<&str>, peer: PeerId, now_ms: u64) -> Result<Attempt, u64> {
        let user = user.map(str::to_owned);
        let wait = user
            .as_ref()
            .map_or(0, |u| self.users.wait_ms(u, now_ms))
            .max(self.peers.wait_ms(&peer, now_ms));
        if wait > 0 {
            return Err(wait);
        }
        let user_before = user.as_ref().and_then(|u| self.users.fail(u, now_ms));
        let peer_before = self.peers.fail(&peer, now_ms);
        Ok(Attempt {
            user,
            user_before,
            peer,
            peer_before,
            at_ms: now_ms,
        })
    }

    /// The password was right: the subscriber starts afresh, and the peer's count is as it was
    /// before this attempt.
    pub fn succeeded(&mut self, attempt: Attempt) {
        if let Some(u) = &attempt.user {
            self.users.clear(u);
        }
        self.peers
            .undo(&attempt.peer, attempt.peer_before, attempt.at_ms);
    }

    /// The attempt could not be judged (a server fault): take it back from both counts.
    pub fn aborted(&mut self, attempt: Attempt) {
        if let Some(u) = &attempt.user {
            self.users.undo(u, attempt.user_before, attempt.at_ms);
        }
        self.peers
            .undo(&attempt.peer, attempt.peer_before, attempt.at_ms);
    }

    /// The password was wrong. The failure was counted when the attempt began; this only ends
    /// it.
    pub fn failed(&mut self, attempt: Attempt) {
        let _ = attempt;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn limiter() -> RateLimiter {
        RateLimiter::new(Backoff::SUBSCRIBER, Backoff::PEER)
    }

    #[test]
    fn schedule_doubles_and_caps() {
        let b = Backoff::SUBSCRIBER;
        assert_eq!(b.delay_ms(0), 0);
        assert_eq!(b.delay_ms(4), 0);
        assert_eq!(b.delay_ms(5), 1_000);
        assert_eq!(b.delay_ms(6), 2_000);
        assert_eq!(b.delay_ms(7), 4_000);
        assert_eq!(b.delay_ms(14), 512_000);
        assert_eq!(b.delay_ms(15), 900_000);
        assert_eq!(b.delay_ms(u32::MAX), 900_000);
    }

    #[test]
    fn failures_lock_then_fade() {
        let mut l = limiter();
        let peer = PeerId::random();
        for _ in 0..5 {
            let a = l.begin(Some("alice"), peer, T0).unwrap();
            l.failed(a);
        }
        assert_eq!(l.begin(Some("alice"), peer, T0).unwrap_err(), 1_000);
        assert_eq!(l.begin(Some("alice"), peer, T0 + 400).unwrap_err(), 600);
        // Refusals while locked are not failures: the wait does not grow.
        assert_eq!(l.begin(Some("alice"), peer, T0 + 999).unwrap_err(), 1);
        let a = l.begin(Some("alice"), peer, T0 + 1_000).unwrap();
        l.failed(a);
        assert_eq!(l.begin(Some("alice"), peer, T0 + 1_000).unwrap_err(), 2_000);
        // An hour of quiet and the count is forgotten.
        let later = T0 + 1_000 + Backoff::SUBSCRIBER.forget_after_ms;
        for _ in 0..5 {
            let a = l.begin(Some("alice"), peer, later).unwrap();
            l.failed(a);
        }
        assert!(l.begin(Some("alice"), peer, later).is_err());
    }

    #[test]
    fn success_clears_the_subscriber_but_not_the_peer() {
        let mut l = limiter();
        let peer = PeerId::random();
        for _ in 0..4 {
            let a = l.begin(Some("bob"), peer, T0).unwrap();
            l.failed(a);
        }
        let a = l.begin(Some("bob"), peer, T0).unwrap();
        l.succeeded(a);
        assert!(l.users.get(&"bob".to_string(), T0).is_none());
        assert_eq!(l.peers.get(&peer, T0).unwrap().failures, 4);
    }

    #[test]
    fn parallel_attempts_see_each_other() {
        let mut l = limiter();
        let peer = PeerId::random();
        // Five guesses in flight at once, none finished yet: the sixth must wait.
        let inflight: Vec<_> = (0..5)
            .map(|_| l.begin(Some("carol"), peer, T0).unwrap())
            .collect();
        assert!(l.begin(Some("carol"), peer, T0).is_err());
        drop(inflight);
    }

    #[test]
    fn aborted_attempts_are_taken_back() {
        let mut l = limiter();
        let peer = PeerId::random();
        let a = l.begin(Some("dave"), peer, T0).unwrap();
        l.aborted(a);
        assert!(l.users.get(&"dave".to_string(), T0).is_none());
        assert!(l.peers.get(&peer, T0).is_none());
    }

    #[test]
    fn a_clock_stepping_back_keeps_the_lock() {
        let mut l = limiter();
        let peer = PeerId::random();
        for _ in 0..5 {
            let a = l.begin(Some("erin"), peer, T0).unwrap();
            l.failed(a);
        }
        assert_eq!(
            l.begin(Some("erin"), peer, T0 - 10_000).unwrap_err(),
            11_000
        );
    }

    #[test]
    fn tracked_keys_are_bounded() {
        let mut l = RateLimiter::with_capacity(Backoff::SUBSCRIBER, Backoff::PEER, 8);
        for i in 0..100u64 {
            let a = l
                .begin(Some(&format!("user{i}")), PeerId::random(), T0 + i)
                .unwrap();
            l.failed(a);
        }
        assert!(l.users.map.len() <= 8);
        assert!(l.peers.map.len() <= 8);
        // The most recent survive.
        assert!(l.users.get(&"user99".to_string(), T0 + 100).is_some());
    }

    /// Simulated clock: a peer's burst of exchanges passes, the next is refused with the wait
    /// until one comes back, and after it one more passes; another peer is not held to the
    /// first's count; and a quiet peer gets its whole burst again.
    #[test]
    fn exchanges_are_held_to_a_burst_and_a_rate_per_peer() {
        let mut l = limiter();
        let (peer, other) = (PeerId::random(), PeerId::random());
        let Rate { burst, every_ms } = Rate::EXCHANGES;
        for _ in 0..burst {
            assert_eq!(l.exchange(peer, T0), Ok(()));
        }
        assert_eq!(l.exchange(peer, T0), Err(every_ms));
        assert_eq!(l.exchange(peer, T0 + 1_000), Err(every_ms - 1_000));
        assert_eq!(l.exchange(other, T0), Ok(()), "another peer has its own");
        assert_eq!(l.exchange(peer, T0 + every_ms), Ok(()));
        assert!(l.exchange(peer, T0 + every_ms).is_err());
        let quiet = T0 + every_ms * u64::from(burst + 1);
        for _ in 0..burst {
            assert_eq!(l.exchange(peer, quiet), Ok(()));
        }
        assert!(l.exchange(peer, quiet).is_err());
    }

    #[test]
    fn exchange_buckets_are_bounded() {
        let mut l = RateLimiter::with_capacity(Backoff::SUBSCRIBER, Backoff::PEER, 8);
        let busy = PeerId::random();
        for _ in 0..Rate::EXCHANGES.burst {
            assert!(l.exchange(busy, T0).is_ok());
        }
        for i in 0..100 {
            assert!(l.exchange(PeerId::random(), T0 + i).is_ok());
        }
        assert!(l.exchanges.full_at.len() <= 8);
        // The busy peer's bucket, the emptiest, was kept.
        assert!(l.exchange(busy, T0 + 100).is_err());
    }
}
