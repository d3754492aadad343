//! `Playable` and `Manifest` of a program this director neither catalogs nor keeps need the
//! registry (a walk of the DHT) and, for a manifest, a download from the program's content
//! manager or a holder (up to 4 MiB). Any peer may ask them, as often as it likes, so:
//! - one fetch runs a program at a time (a manifest's: a program and a viewer), however many
//!   ask meanwhile, each answered when it ends ([`Waiting`]);
//! - [`MAX_FETCHES`] programs are fetched at once at most; past that the answer is busy;
//! - one peer starts [`MAX_FETCHES_PER_PEER`] of them at once at most (asks that join a fetch
//!   running do not count): a peer asking for made-up program ids, each a walk of its own,
//!   is answered busy past its share, and cannot take every fetch from the others;
//! - the manifest of a published program fetched lately answers at once for
//!   [`RECENT_FOR`]: a published program's manifest is anyone's to see, and it never changes
//!   (its hash is in the record).

use std::collections::HashMap;
use std::time::Duration;

use libp2p::PeerId;
use tokio::time::Instant;
use vodmesh_proto::ProgramId;
use vodmesh_proto::director::Response;
use vodmesh_proto::signed::Signed;

use super::catalog::Viewer;
use super::context::{Client, Reply};
use super::error::{Error, respond};
use crate::expiring::{Expiring, Waiting};

/// Fetches of `Playable` and of `Manifest` running at once, at most.
pub(super) const MAX_FETCHES: usize = 32;

/// Fetches one peer has started that run at once, at most. A console asks for one program
/// at a time.
pub(super) const MAX_FETCHES_PER_PEER: usize = 4;

/// How long a published program's manifest fetched here answers `Manifest` at once.
const RECENT_FOR: Duration = Duration::from_secs(30);

/// Published programs' manifests kept, at most.
const RECENT_KEPT: usize = 64;

/// The fetches running, who waits on each, and the manifests fetched lately.
#[derive(Debug)]
pub(super) struct Fetches {
    playable: Fetching<ProgramId>,
    manifests: Fetching<(ProgramId, Viewer)>,
    recent: Expiring<ProgramId, Signed>,
    /// How many of the fetches running each peer started.
    by: HashMap<PeerId, usize>,
}

/// One kind of fetch: those running, by key, who waits on each and who started it.
#[derive(Debug)]
struct Fetching<K> {
    waiting: Waiting<K, Client>,
    starter: HashMap<K, PeerId>,
}

impl<K: std::hash::Hash + Eq> Default for Fetching<K> {
    fn default() -> Self {
        Self {
            waiting: Waiting::default(),
            starter: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Copy> Fetching<K> {
    /// `peer` asks for `key` from `channel`: it joins the fetch running, or starts one
    /// (`Ok(true)`) unless `running` fetches run already or the peer started its share.
    fn ask(
        &mut self,
        (key, peer): (K, PeerId),
        channel: Client,
        running: usize,
        by: &mut HashMap<PeerId, usize>,
    ) -> Result<bool, Box<Reply>> {
        let busy = |channel| Box::new((channel, Response::Error(Error::FetchesBusy.into())));
        let mine = by.get(&peer).copied().unwrap_or(0);
        let new = !self.waiting.contains(&key);
        if new && (running >= MAX_FETCHES || mine >= MAX_FETCHES_PER_PEER) {
            return Err(busy(channel));
        }
        let started = self.waiting.push(key, channel).map_err(busy)?;
        if started {
            self.starter.insert(key, peer);
            *by.entry(peer).or_default() += 1;
        }
        Ok(started)
    }

    /// The fetch of `key` ended: whoever waited on it; its starter's share comes back.
    fn done(&mut self, key: &K, by: &mut HashMap<PeerId, usize>) -> Vec<Client> {
        if let Some(peer) = self.starter.remove(key)
            && let Some(n) = by.get_mut(&peer)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                by.remove(&peer);
            }
        }
        self.waiting.take(key)
    }
}

impl Default for Fetches {
    fn default() -> Self {
        Self {
            playable: Fetching::default(),
            manifests: Fetching::default(),
            recent: Expiring::new(RECENT_FOR, RECENT_KEPT),
            by: HashMap::new(),
        }
    }
}

impl Fetches {
    /// A `Playable` of `program` from `channel`, asked by `peer` (for the HTTP edge, the
    /// subscriber its URL token names): `Ok(true)` when the caller starts the fetch,
    /// `Ok(false)` when it waits on one running, `Err` the busy answer (boxed: it is rare, and
    /// large).
    pub(super) fn playable(
        &mut self,
        program: ProgramId,
        peer: PeerId,
        channel: Client,
    ) -> Result<bool, Box<Reply>> {
        let running = self.running();
        (self.playable).ask((program, peer), channel, running, &mut self.by)
    }

    /// A `Manifest` of `program` from `channel`, seen as `viewer`: as [`Self::playable`].
    pub(super) fn manifest(
        &mut self,
        program: ProgramId,
        viewer: Viewer,
        peer: PeerId,
        channel: Client,
    ) -> Result<bool, Box<Reply>> {
        let running = self.running();
        (self.manifests).ask(((program, viewer), peer), channel, running, &mut self.by)
    }

    /// The fetch of `program`'s record for `Playable` ended: `answer` for everyone waiting.
    pub(super) fn playable_done(&mut self, program: &ProgramId, answer: &Response) -> Vec<Reply> {
        everyone(self.playable.done(program, &mut self.by), answer)
    }

    /// The fetch of a manifest ended with `answer` (and whether its record says published):
    /// the answer for everyone waiting; a published one is kept for [`RECENT_FOR`].
    pub(super) fn manifest_done(
        &mut self,
        key: (ProgramId, Viewer),
        answer: Result<(Signed, bool), Error>,
    ) -> Vec<Reply> {
        if let Ok((signed, true)) = &answer {
            self.recent.insert(key.0, signed.clone(), Instant::now());
        }
        let answer = respond(answer, |(signed, _)| Response::Manifest(signed));
        everyone(self.manifests.done(&key, &mut self.by), &answer)
    }

    /// The manifest of published `program` fetched within [`RECENT_FOR`], if any.
    pub(super) fn recent_manifest(&self, program: &ProgramId) -> Option<Signed> {
        self.recent.get(program, Instant::now()).cloned()
    }

    fn running(&self) -> usize {
        self.playable.waiting.keys() + self.manifests.waiting.keys()
    }
}

/// `answer` for each client of `waiting`.
fn everyone(waiting: Vec<Client>, answer: &Response) -> Vec<Reply> {
    (waiting.into_iter()).map(|c| (c, answer.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Client {
        Client::Local(tokio::sync::oneshot::channel().0)
    }

    #[test]
    fn one_fetch_a_key_and_a_bounded_number_at_once() {
        let mut fetches = Fetches::default();
        // Each ask from a peer of its own: the bound of all fetches, not a peer's share.
        let peer = PeerId::random;
        let p = |n: u8| ProgramId([n; 32]);
        let starts = |r: Result<bool, Box<Reply>>| matches!(r, Ok(true));
        let joins = |r: Result<bool, Box<Reply>>| matches!(r, Ok(false));
        let busy =
            |r: Result<bool, Box<Reply>>| r.is_err_and(|busy| matches!(busy.1, Response::Error(_)));
        assert!(starts(fetches.playable(p(0), peer(), client())));
        assert!(joins(fetches.playable(p(0), peer(), client())));
        let viewer = Viewer::Trusted;
        assert!(starts(fetches.manifest(p(0), viewer, peer(), client())));
        for n in 1..(MAX_FETCHES - 1) as u8 {
            assert!(starts(fetches.playable(p(n), peer(), client())));
        }
        assert!(busy(fetches.playable(p(200), peer(), client())));
        // One that runs still takes who asks for it.
        assert!(joins(fetches.playable(p(1), peer(), client())));
        assert_eq!(fetches.playable_done(&p(0), &Response::Ok).len(), 2);
        assert!(starts(fetches.playable(p(200), peer(), client())));
        let failed = Err(Error::UnknownProgram);
        assert_eq!(fetches.manifest_done((p(0), viewer), failed).len(), 1);
        assert!(fetches.recent_manifest(&p(0)).is_none());
    }

    /// A peer asking for made-up programs, each a walk of the registry, starts its share of
    /// fetches and is answered busy past it; other peers still start theirs, and asks that join a running fetch are not counted. Its share comes back
    /// as its fetches end.
    #[test]
    fn a_peer_starts_its_share_of_fetches_and_no_more() {
        let mut fetches = Fetches::default();
        let p = |n: u8| ProgramId([n; 32]);
        let starts = |r: Result<bool, Box<Reply>>| matches!(r, Ok(true));
        let joins = |r: Result<bool, Box<Reply>>| matches!(r, Ok(false));
        let busy =
            |r: Result<bool, Box<Reply>>| r.is_err_and(|busy| matches!(busy.1, Response::Error(_)));
        let (hostile, other, edge) = (PeerId::random(), PeerId::random(), PeerId::random());
        let viewer = Viewer::Trusted;
        for n in 0..MAX_FETCHES_PER_PEER as u8 - 1 {
            assert!(starts(fetches.playable(p(n), hostile, client())));
        }
        assert!(starts(fetches.manifest(p(100), viewer, hostile, client())));
        assert!(busy(fetches.playable(p(101), hostile, client())));
        assert!(busy(fetches.manifest(p(102), viewer, hostile, client())));
        // Joining what runs, its own or another's, is not a new fetch.
        assert!(joins(fetches.playable(p(0), hostile, client())));
        assert!(joins(fetches.manifest(p(100), viewer, other, client())));
        // The control: the others start theirs.
        assert!(starts(fetches.playable(p(101), other, client())));
        assert!(starts(fetches.playable(p(102), edge, client())));
        // One of its fetches ends: it may start one more, not two.
        assert_eq!(fetches.playable_done(&p(0), &Response::Ok).len(), 2);
        assert!(starts(fetches.playable(p(103), hostile, client())));
        assert!(busy(fetches.playable(p(104), hostile, client())));
        let failed = Err(Error::UnknownProgram);
        assert_eq!(fetches.manifest_done((p(100), viewer), failed).len(), 2);
        assert!(starts(fetches.manifest(p(104), viewer, hostile, client())));
        assert!(busy(fetches.playable(p(105), hostile, client())));
    }
}
