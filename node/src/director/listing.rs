//! `Programs` (and an admin's `AllPrograms`) answered from listings shared by their askers.
//!
//! A listing is dear: this station's catalog and kept manifests read and verified on the
//! loop, `Held` asked of every other station, and a registry look-up of each program's
//! holders. Anyone may ask `Programs`, so before, a stranger asking in a loop made the
//! director do all of it for each request, as many at once as it asked. Now:
//!
//! - one listing runs at a time, and those who wait share it;
//! - a peer asking again within [`FRESH`] of its last ask is answered from the last listing
//!   if that is as recent (a peer asking in a loop costs a copy);
//! - a peer's first ask in a while is answered by a listing started after it (a program
//!   ingested elsewhere a moment before is listed, as a client that lists after an ingest
//!   expects): it starts one, or waits for the next when one runs;
//! - a change of this station's own catalog (a commit, a publish, a record learned) ends the
//!   last answer at once ([`Listing::changed`]).
//!
//! What each asker may see of a listing ([`Viewer`]) is cut at the answer. [`Listing`] is a
//! plain state machine: it takes `now` and says when to start a listing; the publishing
//! family runs it and hands its result back ([`Listing::listed`]).

use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use tokio::time::Instant;
use vodmesh_proto::director::{ProgramInfo, Response};

use super::catalog::Viewer;
use super::context::{Client, Reply};
use super::error::Error;
use crate::expiring::Expiring;

/// How long a listing's answer stands for a peer asking again.
pub(super) const FRESH: Duration = Duration::from_secs(2);
/// Askers waiting for a listing, at most; past that they are told to retry.
const MAX_WAITING: usize = 256;
/// Peers whose last ask is remembered, at most.
const MAX_ASKERS: usize = 1024;

/// What an ask, or a listing's end, comes to.
#[derive(Debug)]
pub(super) struct Next<T> {
    /// The answers to give now.
    pub(super) replies: T,
    /// Whether a listing is to start now.
    pub(super) list: bool,
}

/// The last listing and those waiting for the next.
#[derive(Debug)]
pub(super) struct Listing {
    /// The last listing's programs, every one (cut for each viewer), and when it ended.
    last: Option<(Instant, Arc<Vec<ProgramInfo>>)>,
    /// Listings started so far; the one running, if any, is the last of them.
    started: u64,
    /// A listing runs.
    running: bool,
    /// The first listing that sees this station's last catalog change.
    after_change: u64,
    /// Askers waiting, each with the first listing that may answer it.
    waiting: Vec<(u64, Viewer, Client)>,
    /// Peers that asked lately.
    askers: Expiring<PeerId, ()>,
}

impl Default for Listing {
    fn default() -> Self {
        Self {
            last: None,
            started: 0,
            running: false,
            after_change: 0,
            waiting: Vec::new(),
            askers: Expiring::new(FRESH, MAX_ASKERS),
        }
    }
}

impl Listing {
    /// `peer`, seen as `viewer`, asks on `client` at `now` (`now_ms` on the wall clock, for
    /// what is playable).
    pub(super) fn ask(
        &mut self,
        (now, now_ms): (Instant, u64),
        (peer, viewer): (PeerId, Viewer),
        client: Client,
    ) -> Next<Option<Reply>> {
        let again = self.askers.contains(&peer, now);
        self.askers.insert(peer, (), now);
        if again
            && let Some((at, programs)) = &self.last
            && now.saturating_duration_since(*at) < FRESH
        {
            let reply = (client, answer(programs, viewer, now_ms));
            return Next {
                replies: Some(reply),
                list: false,
            };
        }
        if self.waiting.len() >= MAX_WAITING {
            let busy = Response::Error(Error::ListingBusy.into());
            return Next {
                replies: Some((client, busy)),
                list: false,
            };
        }
        // Asking again, the listing that runs will do (if it sees the last change); a first
        // ask takes one started from now on.
        let needs = match again {
            true => self.after_change,
            false => self.started + 1,
        };
        self.waiting.push((needs, viewer, client));
        Next {
            replies: None,
            list: self.start(),
        }
    }

    /// Starts a listing unless one runs or nobody waits; whether it did.
    fn start(&mut self) -> bool {
        if self.running || self.waiting.is_empty() {
            return false;
        }
        self.started += 1;
        self.running = true;
        true
    }

    /// This station's catalog changed: the last answer is given no more, and who asks from
    /// now on is answered by a listing started after this.
    pub(super) fn changed(&mut self) {
        self.after_change = self.started + 1;
        self.last = None;
    }

    /// The listing that ran ended at `now` with `listed`: the answers of those it may answer;
    /// the next listing starts for the others.
    pub(super) fn listed(
        &mut self,
        (now, now_ms): (Instant, u64),
        listed: Result<Vec<ProgramInfo>, Error>,
    ) -> Next<Vec<Reply>> {
        let this = self.started;
        self.running = false;
        let (done, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(needs, _, _)| *needs <= this);
        self.waiting = later;
        let replies = match listed {
            Ok(programs) => {
                let programs = Arc::new(programs);
                if this >= self.after_change {
                    self.last = Some((now, programs.clone()));
                }
                (done.into_iter())
                    .map(|(_, viewer, client)| (client, answer(&programs, viewer, now_ms)))
                    .collect()
            }
            Err(e) => {
                let refused = Response::Error(e.into());
                (done.into_iter())
                    .map(|(_, _, client)| (client, refused.clone()))
                    .collect()
            }
        };
        Next {
            replies,
            list: self.start(),
        }
    }
}

/// `programs` as `viewer` may see them at `now_ms`.
fn answer(programs: &[ProgramInfo], viewer: Viewer, now_ms: u64) -> Response {
    Response::Programs(viewer.visible(programs.to_vec(), now_ms))
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;
    use vodmesh_proto::ProgramId;
    use vodmesh_proto::catalog::ProgramState;

    use super::*;

    fn client() -> Client {
        Client::Local(oneshot::channel().0)
    }

    fn info(n: u8, state: ProgramState) -> ProgramInfo {
        ProgramInfo {
            program: ProgramId([n; 32]),
            title: format!("p{n}"),
            state,
            publish_at_ms: None,
            size: 1,
            duration_ms: 1,
            segments: 1,
            stations: vec![],
        }
    }

    fn listed(reply: &Reply) -> Vec<ProgramId> {
        match &reply.1 {
            Response::Programs(list) => list.iter().map(|p| p.program).collect(),
            other => panic!("{other:?}"),
        }
    }

    /// A peer asking many times at once shares one listing, and asking again within `FRESH`
    /// is answered from it; past `FRESH`, its asks share one listing again. What a viewer may
    /// see is cut at each answer.
    #[test]
    fn a_peer_asking_again_and_again_costs_one_listing_a_while() {
        let mut listing = Listing::default();
        let t0 = Instant::now();
        let at = |ms: u64| (t0 + Duration::from_millis(ms), 0);
        let peer = PeerId::random();
        let stranger = (peer, Viewer::Other(peer));
        let mut started = 0;
        for _ in 0..100 {
            let asked = listing.ask(at(0), stranger, client());
            assert!(asked.replies.is_none());
            started += usize::from(asked.list);
        }
        assert_eq!(started, 1, "one listing for 100 asks");
        let programs = vec![
            info(1, ProgramState::Published),
            info(2, ProgramState::Inactive),
        ];
        let ended = listing.listed(at(10), Ok(programs));
        assert!(!ended.list);
        assert_eq!(ended.replies.len(), 100);
        assert_eq!(listed(&ended.replies[0]), vec![ProgramId([1; 32])]);

        // Asked again while fresh: answered, nothing started.
        for ms in [500, 1_000, 2_009] {
            let asked = listing.ask(at(ms), stranger, client());
            assert!(asked.replies.is_some() && !asked.list, "at {ms} ms");
        }
        // Past FRESH: its asks wait for one listing.
        let asks: Vec<_> = (0..50)
            .map(|_| listing.ask(at(2_010), stranger, client()))
            .collect();
        assert!(asks.iter().all(|a| a.replies.is_none()));
        assert_eq!(asks.iter().filter(|a| a.list).count(), 1);
        let ended = listing.listed(at(2_100), Ok(vec![info(3, ProgramState::Published)]));
        assert_eq!(ended.replies.len(), 50);
        let asked = listing.ask(at(2_200), stranger, client());
        assert_eq!(
            listed(&asked.replies.expect("fresh")),
            vec![ProgramId([3; 32])]
        );
    }

    /// A peer's first ask is answered by a listing started after it, never from the last one
    /// nor by one that ran when it asked; a trusted viewer sees what others do not.
    #[test]
    fn a_first_ask_is_answered_by_a_listing_started_after_it() {
        let mut listing = Listing::default();
        let now = (Instant::now(), 0);
        let (a, b) = (PeerId::random(), PeerId::random());
        assert!(listing.ask(now, (a, Viewer::Other(a)), client()).list);
        let first = listing.listed(now, Ok(vec![info(1, ProgramState::Inactive)]));
        assert_eq!(listed(&first.replies[0]), Vec::<ProgramId>::new());
        // b asks first while nothing runs: a listing of its own, though the last is fresh.
        let asked = listing.ask(now, (b, Viewer::Trusted), client());
        assert!(asked.replies.is_none() && asked.list);
        // A new peer asking while it runs waits for the next one.
        let c = PeerId::random();
        let asked = listing.ask(now, (c, Viewer::Other(c)), client());
        assert!(asked.replies.is_none() && !asked.list);
        let ended = listing.listed(now, Ok(vec![info(2, ProgramState::Inactive)]));
        assert_eq!(ended.replies.len(), 1, "b only");
        assert_eq!(listed(&ended.replies[0]), vec![ProgramId([2; 32])]);
        assert!(ended.list, "the next, for c");
        let ended = listing.listed(now, Ok(vec![info(3, ProgramState::Published)]));
        assert_eq!(listed(&ended.replies[0]), vec![ProgramId([3; 32])]);
    }

    /// A change of the station's catalog ends the answer: a peer asking again after it is
    /// answered by a listing started after it.
    #[test]
    fn who_asks_after_a_change_is_answered_by_a_listing_after_it() {
        let mut listing = Listing::default();
        let now = (Instant::now(), 0);
        let a = PeerId::random();
        let asker = (a, Viewer::Trusted);
        assert!(listing.ask(now, asker, client()).list);
        listing.listed(now, Ok(vec![info(1, ProgramState::Published)]));
        listing.changed();
        let asked = listing.ask(now, asker, client());
        assert!(
            asked.replies.is_none() && asked.list,
            "not from the old one"
        );
        // A change while that listing runs: asking again waits for the next.
        listing.changed();
        let asked = listing.ask(now, asker, client());
        assert!(asked.replies.is_none() && !asked.list, "waits");
        let ended = listing.listed(now, Ok(vec![info(2, ProgramState::Published)]));
        assert_eq!(ended.replies.len(), 1, "the ask before the change");
        assert!(ended.list, "another listing for the one after it");
        let ended = listing.listed(now, Ok(vec![info(3, ProgramState::Published)]));
        assert_eq!(listed(&ended.replies[0]), vec![ProgramId([3; 32])]);
        let asked = listing.ask(now, asker, client());
        assert_eq!(
            listed(&asked.replies.expect("fresh")),
            vec![ProgramId([3; 32])]
        );
    }

    /// A failed listing is the answer of those who waited for it, and the next ask starts
    /// another; askers past `MAX_WAITING` are told to retry.
    #[test]
    fn a_failed_listing_is_answered_and_waiting_askers_are_capped() {
        let mut listing = Listing::default();
        let now = (Instant::now(), 0);
        let peer = PeerId::random();
        let asker = (peer, Viewer::Trusted);
        for _ in 0..MAX_WAITING {
            assert!(listing.ask(now, asker, client()).replies.is_none());
        }
        let over = listing.ask(now, asker, client());
        assert!(
            matches!(over.replies, Some((_, Response::Error(_)))) && !over.list,
            "{over:?}"
        );
        let ended = listing.listed(now, Err(Error::ManifestSilent));
        assert_eq!(ended.replies.len(), MAX_WAITING);
        assert!(matches!(ended.replies[0].1, Response::Error(_)));
        assert!(listing.ask(now, asker, client()).list, "tried again");
    }
}
