//! Reconciling what the station holds with what it knows and provides (issue 17), at start
//! and every [`RECONCILE_EVERY`].
//!
//! The catalog records a director learned and the programs it provides are kept in memory,
//! while its engines' segments and its location table outlive a restart: without this, a
//! restarted station refuses the programs it still holds (`program not published`) and
//! no longer announces them. So a station learns, from the registry, the record of every
//! program its location table lists, and provides every program it holds a complete copy of
//! (its manifest's segment count, from the content manager, says what complete is).
//!
//! The decisions are pure functions here; [`super::publish::Publishing`] runs them.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use libp2p::PeerId;
use tokio::time::Instant;
use vodmesh_proto::ProgramId;
use vodmesh_registry::{RegistryConfig, RegistryHandle};

use super::catalog::{Learned, fetch_record};
use super::error::Error;
use crate::store::locations::{LocationState, LocationTable};

/// How often a station reconciles after the round at start, at most.
pub(super) const RECONCILE_EVERY: Duration = Duration::from_secs(180);

/// How often a station reconciles: every [`RECONCILE_EVERY`], or a third of the provider
/// TTL when that is shorter, since a round also puts the catalog records of what the station
/// holds again (they live the provider TTL).
pub(super) fn interval(registry: &RegistryConfig) -> Duration {
    (RECONCILE_EVERY.min(registry.provider_republish_interval())).max(Duration::from_secs(1))
}

/// How long a `Locate` of a segment held here waits for the program's record from the
/// registry (a station just restarted may not have joined the swarm yet).
pub(super) const LOCATE_FETCH_WITHIN: Duration = Duration::from_secs(5);

/// The first wait before fetching a record again.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// The longest wait between two fetches of a record.
const MAX_BACKOFF: Duration = Duration::from_secs(20);

/// What this station holds of one program, from its location table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Held {
    /// The program.
    pub(super) program: ProgramId,
    /// The indices of its segments held complete by some engine.
    pub(super) complete: BTreeSet<u32>,
}

/// What a round does for one program held here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// A program of this station's own catalog: record and manifest are here.
    Own(ProgramId),
    /// Fetch its record (and, when `manifest`, its manifest) off the loop.
    Fetch {
        /// The program.
        program: ProgramId,
        /// Its manifest is needed to decide whether to provide it (not provided yet).
        manifest: bool,
    },
}

/// The steps of a round: every held program, except those whose fetch is still running.
pub(super) fn plan(
    held: &[ProgramId],
    own: &HashSet<ProgramId>,
    running: &HashSet<ProgramId>,
    provided: &HashSet<ProgramId>,
) -> Vec<Step> {
    (held.iter())
        .filter_map(|program| {
            if own.contains(program) {
                Some(Step::Own(*program))
            } else if running.contains(program) {
                None
            } else {
                let manifest = !provided.contains(program);
                Some(Step::Fetch {
                    program: *program,
                    manifest,
                })
            }
        })
        .collect()
}

/// Whether to provide `held`, a program of `segments` segments (unknown: `None`), which
/// this station does (`provided`) or does not provide yet: only a complete copy.
pub(super) fn should_provide(held: &Held, segments: Option<u32>, provided: bool) -> bool {
    let Some(segments) = segments else {
        return false;
    };
    !provided && segments > 0 && (0..segments).all(|i| held.complete.contains(&i))
}

/// The wait before fetch number `attempt + 1` (doubling, capped).
pub(super) fn backoff(attempt: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << attempt.min(16))
        .min(MAX_BACKOFF)
}

/// What the location table lists of `program`.
pub(super) fn held(locations: &LocationTable, program: ProgramId) -> Result<Held, Error> {
    let complete = (locations.for_program(program)?.into_iter())
        .filter(|(_, l)| l.state == LocationState::Complete)
        .map(|(index, _)| index.0)
        .collect();
    Ok(Held { program, complete })
}

/// The program's newest valid record in the registry, fetched again with a backoff while
/// the registry gives none newer than `known` (its content manager and issue time: only
/// that content manager's records count), as it may not have joined the swarm yet, or not
/// heard back from the directors that have the new one, for at most `within`; the newest
/// found by then.
pub(super) async fn fetch_within(
    registry: &RegistryHandle,
    program: ProgramId,
    within: Duration,
    known: Option<(PeerId, u64)>,
) -> Option<Learned> {
    let deadline = Instant::now() + within;
    let mut attempt = 0;
    let mut best: Option<Learned> = None;
    let owner = known.map(|(owner, _)| owner);
    loop {
        if let Some(found) = fetch_record(registry, program, owner).await {
            if known.is_none_or(|(_, issued)| found.record.issued_ms > issued) {
                return Some(found);
            }
            if best.as_ref().is_none_or(|b| found.newer_than(b)) {
                best = Some(found);
            }
        }
        let wait = backoff(attempt);
        if Instant::now() + wait > deadline {
            tracing::debug!(%program, attempts = attempt + 1, "registry has no newer record of the program");
            return best;
        }
        // A retry's backoff, not a wait on an event: the registry says nothing when it joins.
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(n: u8) -> ProgramId {
        ProgramId([n; 32])
    }

    #[test]
    fn a_round_looks_up_every_held_program_once_and_own_ones_locally() {
        let held = [program(1), program(2), program(3), program(4)];
        let own: HashSet<_> = [program(1)].into();
        let running: HashSet<_> = [program(2)].into();
        let provided: HashSet<_> = [program(4)].into();
        assert_eq!(
            plan(&held, &own, &running, &provided),
            vec![
                Step::Own(program(1)),
                Step::Fetch {
                    program: program(3),
                    manifest: true
                },
                // Provided already: its record is refreshed, its manifest not needed.
                Step::Fetch {
                    program: program(4),
                    manifest: false
                },
            ]
        );
        assert!(plan(&[], &own, &running, &provided).is_empty());
    }

    #[test]
    fn only_a_complete_copy_not_provided_yet_is_provided() {
        let held = |complete: &[u32]| Held {
            program: program(1),
            complete: complete.iter().copied().collect(),
        };
        assert!(should_provide(&held(&[0, 1, 2]), Some(3), false));
        // A segment missing, or filling only.
        assert!(!should_provide(&held(&[0, 2]), Some(3), false));
        // Provided already.
        assert!(!should_provide(&held(&[0, 1, 2]), Some(3), true));
        // The manifest could not be had: nothing is decided.
        assert!(!should_provide(&held(&[0, 1, 2]), None, false));
        assert!(!should_provide(&held(&[]), Some(0), false));
        // Extra indices (a bad table row) do not make a copy incomplete.
        assert!(should_provide(&held(&[0, 1, 7]), Some(2), false));
    }

    #[test]
    fn the_backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(0), FIRST_BACKOFF);
        assert_eq!(backoff(1), FIRST_BACKOFF * 2);
        assert_eq!(backoff(3), FIRST_BACKOFF * 8);
        assert_eq!(backoff(10), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
