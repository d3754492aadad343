//! Programs that are not published yet (claim 11): no byte of one leaves an engine before its
//! publish time, even to a console that holds a valid token and knows the engine's address.
//!
//! The director tells its engines what it knows of each program it has them store or copy
//! (`EngineCommand::PublishAt`): when it becomes playable (`u64::MAX` while it has no publish
//! time), and `0` once it is published. An engine refuses a stream of a program under embargo
//! ([`Embargoes::check`]); a program it was never told of is the director's to refuse (every
//! console is sent to an engine by a director that checked the publish time). The list lives
//! in memory, bounded by [`MAX_EMBARGOES`], and in the engine's store: each change
//! ([`Change`]) is kept there before the next command is taken, and an engine that starts
//! again takes the list back ([`Embargoes::restore`]), so that it refuses a program not
//! published yet before its director tells it again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use vodmesh_proto::ProgramId;

/// Programs remembered at most; past it, the embargoes that end first are dropped.
pub(crate) const MAX_EMBARGOES: usize = 65_536;

/// A change for the store to keep: `program`'s embargo ends at `Some(ms)`, or there is none.
pub(crate) type Change = (ProgramId, Option<u64>);

/// Whether a program under embargo until `until_ms` may be streamed at `now_ms`.
pub(crate) fn lifted(until_ms: Option<u64>, now_ms: u64) -> bool {
    until_ms.is_none_or(|until| now_ms >= until)
}

/// The programs this engine may not stream yet, shared by its stream tasks.
#[derive(Clone, Debug, Default)]
pub(crate) struct Embargoes(Arc<Mutex<HashMap<ProgramId, u64>>>);

impl Embargoes {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<ProgramId, u64>> {
        // Plain entries: consistent after any panic.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `program` may be streamed from `until_ms` on (`0`: now); returns the changes for the
    /// store to keep, in order.
    pub(crate) fn set(&self, program: ProgramId, until_ms: u64, now_ms: u64) -> Vec<Change> {
        let mut map = self.map();
        if lifted(Some(until_ms), now_ms) {
            return (map.remove(&program).map(|_| (program, None)))
                .into_iter()
                .collect();
        }
        let mut changes = Vec::new();
        if map.len() >= MAX_EMBARGOES && !map.contains_key(&program) {
            map.retain(|p, until| {
                let keep = !lifted(Some(*until), now_ms);
                if !keep {
                    changes.push((*p, None));
                }
                keep
            });
            if map.len() >= MAX_EMBARGOES
                && let Some(first) = map.iter().min_by_key(|(_, u)| **u).map(|(p, _)| *p)
            {
                map.remove(&first);
                changes.push((first, None));
            }
        }
        if map.insert(program, until_ms) != Some(until_ms) {
            changes.push((program, Some(until_ms)));
        }
        changes
    }

    /// Takes back the embargoes a store `kept`, at `now_ms`; returns the changes that drop
    /// from the store those that ended meanwhile (or did not fit).
    pub(crate) fn restore(&self, kept: Vec<(ProgramId, u64)>, now_ms: u64) -> Vec<Change> {
        let mut changes = Vec::new();
        for (program, until) in kept {
            if lifted(Some(until), now_ms) {
                changes.push((program, None));
            } else {
                let dropped = self.set(program, until, now_ms).into_iter();
                changes.extend(dropped.filter(|(_, until)| until.is_none()));
            }
        }
        changes
    }

    /// Whether `program` may be streamed at `now_ms`.
    pub(crate) fn allows(&self, program: &ProgramId, now_ms: u64) -> bool {
        lifted(self.map().get(program).copied(), now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_is_refused_until_its_time_or_its_publish() {
        let embargoes = Embargoes::default();
        let (p, q) = (ProgramId([1; 32]), ProgramId([2; 32]));
        assert!(
            embargoes.allows(&p, 10),
            "never told: the director's to refuse"
        );
        embargoes.set(p, u64::MAX, 10);
        embargoes.set(q, 100, 10);
        assert!(!embargoes.allows(&p, 10) && !embargoes.allows(&q, 99));
        assert!(embargoes.allows(&q, 100), "its publish time came");
        assert_eq!(embargoes.set(p, 0, 20), vec![(p, None)]);
        assert!(embargoes.allows(&p, 20), "published");
    }

    #[test]
    fn every_change_is_handed_to_the_store_and_a_restart_takes_back_what_still_holds() {
        let embargoes = Embargoes::default();
        let (p, q, r) = (ProgramId([1; 32]), ProgramId([2; 32]), ProgramId([3; 32]));
        assert_eq!(embargoes.set(p, u64::MAX, 10), vec![(p, Some(u64::MAX))]);
        assert_eq!(embargoes.set(p, u64::MAX, 10), vec![], "nothing new");
        assert_eq!(embargoes.set(q, 0, 10), vec![], "never under embargo");
        // A restart: what the store kept, one of them over by now.
        let restarted = Embargoes::default();
        let kept = vec![(p, u64::MAX), (q, 50), (r, 30)];
        assert_eq!(restarted.restore(kept, 40), vec![(r, None)]);
        assert!(!restarted.allows(&p, 40) && !restarted.allows(&q, 40));
        assert!(restarted.allows(&r, 40));
    }

    #[test]
    fn the_list_stays_bounded() {
        let embargoes = Embargoes::default();
        for i in 0..(MAX_EMBARGOES as u64 + 10) {
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&i.to_le_bytes());
            let changes = embargoes.set(ProgramId(id), 1_000 + i, 10);
            // Past the bound, the one that ends first goes, from the store too.
            let dropped = changes.iter().filter(|(_, until)| until.is_none()).count();
            assert_eq!(dropped, usize::from(i >= MAX_EMBARGOES as u64), "{i}");
        }
        assert!(embargoes.map().len() <= MAX_EMBARGOES);
    }
}
