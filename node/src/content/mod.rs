//! The content manager: ingest sessions, the catalog, publish state.
//!
//! A station started with `--content-manager` takes programs in: `vodmesh ingest` describes a
//! program's segments ([`ManifestContent`]), the content manager assigns each segment to one
//! of the station's engines ([`plan`]: only where there is room, or the ingest is refused at
//! once), the client pushes the bytes to those engines, and on commit the content manager
//! checks that every segment is stored and verified, signs the manifest, and enters the
//! program in its catalog (redb) and in the registry (a signed catalog record under
//! `catalog/<id>`, and a provider record under `program/<id>`).
//!
//! Nothing enters the catalog before every segment is in, and an ingest that never commits
//! leaves nothing behind: a session the client gives up (`IngestAbort`), one that makes no
//! progress for the ingest time-out (the client was killed), and one found open in the
//! catalog's journal at start (the station was stopped mid-ingest) are dropped, their
//! segments removed from the engines and the location table.
//!
//! A program of the catalog that lost segments here (a damaged disk, found by the scrub, and
//! no other station holding them) is repaired by ingesting it again: the same source gives
//! the same program, and the session takes only the segments the station no longer holds.
//! Giving a repair up removes nothing: what it stored belongs to the signed manifest.

pub mod catalog;
pub mod plan;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use libp2p::PeerId;
use vodmesh_proto::manifest::ManifestContent;
use vodmesh_proto::{ProgramId, SegmentIndex};

pub use catalog::{Catalog, CatalogEntry};

/// How long a dropped ingest is remembered: a segment of it that lands afterwards (its push
/// was in flight) is removed again instead of entering the location table.
const REMEMBER_DROPPED: Duration = Duration::from_secs(600);

/// An ingest in progress.
#[derive(Debug)]
pub struct Session {
    /// What is being ingested.
    pub content: ManifestContent,
    /// When it becomes playable (`None`: inactive until published).
    pub publish_at_ms: Option<u64>,
    /// Copies wanted on other stations.
    pub replicas: u32,
    /// Segments stored so far.
    pub stored: HashSet<SegmentIndex>,
    /// The engine (index in the station) each segment goes to, in segment order; `None` for
    /// a segment a repair found held already.
    pub placement: Vec<Option<usize>>,
    /// When it last made progress (began, or a segment was stored), ms since the epoch.
    pub progress_ms: u64,
    /// The peer of the client pushing it (the one that began it last).
    pub client: PeerId,
    /// A repair of a program already in the catalog: `stored` began with the segments the
    /// station still held, only the others are pushed, and giving it up removes nothing
    /// (every segment it stored is one of the signed manifest's, and stays).
    pub repair: bool,
}

impl Session {
    /// Bytes promised on engine `engine` and not stored yet.
    fn pledged(&self, engine: usize) -> u64 {
        self.content
            .segments
            .iter()
            .zip(&self.placement)
            .filter(|(s, e)| **e == Some(engine) && !self.stored.contains(&s.index))
            .fold(0, |sum, (s, _)| sum.saturating_add(s.size))
    }
}

/// Ingest sessions by program, and the programs whose ingest was dropped lately.
#[derive(Debug, Default)]
pub struct Sessions {
    sessions: HashMap<ProgramId, Session>,
    dropped: HashMap<ProgramId, u64>,
}

impl Sessions {
    /// Starts a session (the caller ended any earlier one of the program).
    pub fn begin(&mut self, program: ProgramId, session: Session) {
        self.dropped.remove(&program);
        self.sessions.insert(program, session);
    }

    /// Records that a segment of `program` was stored at `now_ms`.
    pub fn stored(&mut self, program: &ProgramId, index: SegmentIndex, now_ms: u64) {
        if let Some(s) = self.sessions.get_mut(program) {
            s.stored.insert(index);
            s.progress_ms = now_ms;
        }
    }

    /// The session of `program`.
    pub fn get(&self, program: &ProgramId) -> Option<&Session> {
        self.sessions.get(program)
    }

    /// Ends the session of `program` (committed).
    pub fn end(&mut self, program: &ProgramId) -> Option<Session> {
        self.sessions.remove(program)
    }

    /// Ends the session of `program` without a commit, remembering it was dropped at
    /// `now_ms`.
    pub fn drop_session(&mut self, program: &ProgramId, now_ms: u64) -> Option<Session> {
        self.dropped
            .retain(|_, at| now_ms.saturating_sub(*at) < REMEMBER_DROPPED.as_millis() as u64);
        self.dropped.insert(*program, now_ms);
        self.sessions.remove(program)
    }

    /// Whether an ingest of `program` was dropped lately and not begun again.
    pub fn was_dropped(&self, program: &ProgramId, now_ms: u64) -> bool {
        self.dropped
            .get(program)
            .is_some_and(|at| now_ms.saturating_sub(*at) < REMEMBER_DROPPED.as_millis() as u64)
    }

    /// Bytes the sessions promised engine `engine` and that are not stored yet: room the next
    /// ingest's plan must leave free.
    pub fn pledged(&self, engine: usize) -> u64 {
        self.sessions
            .values()
            .fold(0, |sum, s| sum.saturating_add(s.pledged(engine)))
    }

    /// The sessions that made no progress for `idle` up to `now_ms`.
    pub fn expired(&self, now_ms: u64, idle: Duration) -> Vec<ProgramId> {
        let idle = idle.as_millis() as u64;
        self.sessions
            .iter()
            .filter(|(_, s)| now_ms.saturating_sub(s.progress_ms) >= idle)
            .map(|(p, _)| *p)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vodmesh_proto::SegmentHash;
    use vodmesh_proto::manifest::SegmentEntry;

    fn session(sizes: &[u64], placement: Vec<usize>, progress_ms: u64) -> Session {
        let placement = placement.into_iter().map(Some).collect();
        let segments = sizes
            .iter()
            .enumerate()
            .map(|(i, size)| SegmentEntry {
                index: SegmentIndex(i as u32),
                duration_ms: 1000,
                size: *size,
                hash: SegmentHash::of(&[i as u8]),
            })
            .collect();
        Session {
            content: ManifestContent {
                title: "t".into(),
                content_type: "application/octet-stream".into(),
                duration_ms: 1000 * sizes.len() as u64,
                segments,
                renditions: Vec::new(),
            },
            publish_at_ms: None,
            replicas: 0,
            stored: HashSet::new(),
            placement,
            progress_ms,
            client: PeerId::random(),
            repair: false,
        }
    }

    #[test]
    fn pledges_shrink_as_segments_land_and_vanish_with_the_session() {
        let mut s = Sessions::default();
        let (a, b) = (ProgramId([1; 32]), ProgramId([2; 32]));
        s.begin(a, session(&[10, 20, 30], vec![0, 1, 0], 0));
        s.begin(b, session(&[5], vec![1], 0));
        assert_eq!((s.pledged(0), s.pledged(1)), (40, 25));
        s.stored(&a, SegmentIndex(2), 7);
        assert_eq!((s.pledged(0), s.pledged(1)), (10, 25));
        assert!(s.end(&a).is_some());
        assert_eq!((s.pledged(0), s.pledged(1)), (0, 5));
    }

    #[test]
    fn a_session_without_progress_expires_and_a_dropped_one_is_remembered() {
        let mut s = Sessions::default();
        let (a, b) = (ProgramId([1; 32]), ProgramId([2; 32]));
        let idle = Duration::from_secs(10);
        s.begin(a, session(&[1, 1], vec![0, 0], 1_000));
        s.begin(b, session(&[1], vec![0], 1_000));
        s.stored(&b, SegmentIndex(0), 9_000);
        assert!(s.expired(10_999, idle).is_empty());
        assert_eq!(s.expired(11_000, idle), vec![a]);
        assert!(s.drop_session(&a, 11_000).is_some());
        assert!(s.was_dropped(&a, 11_001));
        assert!(!s.was_dropped(&b, 11_001));
        assert!(!s.was_dropped(&a, 11_000 + REMEMBER_DROPPED.as_millis() as u64));
        // Begun again, it is no longer a dropped ingest.
        s.begin(a, session(&[1], vec![0], 12_000));
        assert!(!s.was_dropped(&a, 12_001));
    }
}
