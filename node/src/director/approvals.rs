//! Which other stations' engines may copy from this station's (`LocateCopy`): a station is
//! let copy once a registry look-up found it live, for [`ALLOW_FOR`]; it is looked up again
//! when its approval nears its end or it names an engine the approval lacks
//! ([`recently_checked`]), and one look-up of a station runs at a time, however many
//! requests it sends meanwhile ([`Waiting`]). [`super::replicate`] holds the approvals and
//! answers the requests.

use std::collections::HashMap;
use std::time::Duration;

use libp2p::PeerId;
use tokio::time::Instant;
use vodmesh_proto::StationId;

/// How long a checked station's engines may copy from this station's engines.
pub(super) const ALLOW_FOR: Duration = Duration::from_secs(600);
/// A station checked this recently is not checked again (unless it names an engine it was
/// not approved for: [`recently_checked`]).
const RECHECK_BEFORE: u64 = 60_000;
/// `LocateCopy` requests of one station kept waiting while it is looked up; past them it is
/// told to retry.
const WAITING_PER_CHECK: usize = 64;
/// A look-up of a station running this long is taken as lost (a registry query ends well
/// before, [`vodmesh_registry`]'s query time-out): the next request starts another, and the
/// requests that waited wait for that one.
const CHECK_LOST_AFTER: Duration = Duration::from_secs(60);

/// Whether a station whose standing approval is `allowed` (until when, which engines), asking
/// at `now` and naming engines `named`, need not be looked up: its approval has more than
/// [`RECHECK_BEFORE`] left and covers `named`.
pub(super) fn recently_checked(
    allowed: Option<&(u64, Vec<PeerId>)>,
    named: &[PeerId],
    now: u64,
) -> bool {
    let Some((until, peers)) = allowed else {
        return false;
    };
    *until > now + RECHECK_BEFORE && named.iter().all(|e| peers.contains(e))
}

/// The `LocateCopy` requests waiting on a look-up of their station: one look-up per station
/// at a time, however many requests it sends meanwhile, each answered when it ends.
#[derive(Debug)]
pub(super) struct Waiting<T> {
    /// When the station's look-up started, and the requests waiting for it.
    by_station: HashMap<StationId, (Instant, Vec<T>)>,
}

impl<T> Default for Waiting<T> {
    fn default() -> Self {
        Self {
            by_station: HashMap::new(),
        }
    }
}

/// What to do with a `LocateCopy` that needs its station looked up.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Wait<T> {
    /// No look-up of the station runs (or one was lost): start one; the request waits for it.
    LookUp,
    /// One runs: the request waits for it.
    Waits,
    /// One runs and [`WAITING_PER_CHECK`] requests wait already: refuse this one.
    Full(T),
}

impl<T> Waiting<T> {
    /// Keeps `request`, come at `now`, until the look-up of `station` ends.
    pub(super) fn wait(&mut self, station: StationId, request: T, now: Instant) -> Wait<T> {
        let Some((started, waiting)) = self.by_station.get_mut(&station) else {
            self.by_station.insert(station, (now, vec![request]));
            return Wait::LookUp;
        };
        if now.saturating_duration_since(*started) >= CHECK_LOST_AFTER {
            *started = now;
            waiting.push(request);
            return Wait::LookUp;
        }
        if waiting.len() >= WAITING_PER_CHECK {
            return Wait::Full(request);
        }
        waiting.push(request);
        Wait::Waits
    }

    /// A look-up of `station` ended: the requests that waited, in order.
    pub(super) fn ended(&mut self, station: &StationId) -> Vec<T> {
        (self.by_station.remove(station)).map_or_else(Vec::new, |(_, waiting)| waiting)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_station_naming_an_engine_its_approval_lacks_is_looked_up_again() {
        let now = 10_000_000;
        let (e1, e2) = (PeerId::random(), PeerId::random());
        let given_at = |at: u64| (at + ALLOW_FOR.as_millis() as u64, vec![e1]);
        // Never checked: looked up.
        assert!(!recently_checked(None, &[e1], now));
        // Checked a moment ago: its approval covers what it names (or it names nothing, as
        // an older director does), no look-up.
        let just_now = given_at(now - 100);
        assert!(recently_checked(Some(&just_now), &[e1], now));
        assert!(recently_checked(Some(&just_now), &[], now));
        // It names an engine the approval lacks: looked up again.
        assert!(!recently_checked(Some(&just_now), &[e1, e2], now));
        // Near its end an approval is renewed whatever is named.
        let old = given_at(now - ALLOW_FOR.as_millis() as u64 + 30_000);
        assert!(!recently_checked(Some(&old), &[e1], now));
    }

    #[test]
    fn requests_of_a_station_being_looked_up_wait_for_that_one_look_up() {
        let (a, b) = (StationId(PeerId::random()), StationId(PeerId::random()));
        let t0 = Instant::now();
        let mut waiting = Waiting::default();
        // The first request of a starts its look-up; the next ones wait for it, up to the
        // bound, and the one past it is handed back to be refused.
        assert_eq!(waiting.wait(a, 0, t0), Wait::LookUp);
        for n in 1..WAITING_PER_CHECK {
            assert_eq!(waiting.wait(a, n, t0), Wait::Waits);
        }
        assert_eq!(waiting.wait(a, 999, t0), Wait::Full(999));
        // Another station's look-up is its own.
        assert_eq!(waiting.wait(b, 1000, t0), Wait::LookUp);
        // When a's look-up ends, every request that waited is answered, in order, and a's
        // next request starts a new look-up; b's still waits.
        let answered: Vec<usize> = (0..WAITING_PER_CHECK).collect();
        assert_eq!(waiting.ended(&a), answered);
        assert_eq!(waiting.ended(&a), Vec::<usize>::new());
        assert_eq!(waiting.wait(a, 1, t0), Wait::LookUp);
        assert_eq!(waiting.wait(b, 1001, t0), Wait::Waits);
        assert_eq!(waiting.ended(&b), vec![1000, 1001]);
    }

    #[test]
    fn a_look_up_that_never_ends_does_not_hold_its_station_s_requests_for_ever() {
        let a = StationId(PeerId::random());
        let t0 = Instant::now();
        let mut waiting = Waiting::default();
        assert_eq!(waiting.wait(a, 0, t0), Wait::LookUp);
        // Its task was lost (a panic): just before the limit, requests still wait ...
        let late = t0 + CHECK_LOST_AFTER - Duration::from_millis(1);
        assert_eq!(waiting.wait(a, 1, late), Wait::Waits);
        // ... and at it, the next starts another look-up, which all of them wait for.
        let lost = t0 + CHECK_LOST_AFTER;
        assert_eq!(waiting.wait(a, 2, lost), Wait::LookUp);
        assert_eq!(waiting.wait(a, 3, lost), Wait::Waits);
        assert_eq!(waiting.ended(&a), vec![0, 1, 2, 3]);
    }
}
