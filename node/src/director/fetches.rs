//! `Playable` and `Manifest` of a program this director neither catalogs nor keeps need the
//! registry (a walk of the DHT) and, for a manifest, a download from the program's content
//! manager or a holder (up to 4 MiB). Any peer may ask them, as often as it likes, so:
//! - one fetch runs a program at a time (a manifest's: a program and a viewer), however many
//!   ask meanwhile, each answered when it ends ([`Waiting`]);
//! - [`MAX_FETCHES`] programs are fetched at once at most; past that the answer is busy;
//! - the manifest of a published program fetched lately answers at once for
//!   [`RECENT_FOR`]: a published program's manifest is anyone's to see, and it never changes
//!   (its hash is in the record).

use std::time::Duration;

use tokio::time::Instant;
use vodmesh_proto::ProgramId;
use vodmesh_proto::signed::Signed;

use super::catalog::Viewer;
use super::context::Client;
use crate::expiring::{Expiring, Waiting};

/// Fetches of `Playable` and of `Manifest` running at once, at most.
pub(super) const MAX_FETCHES: usize = 32;

/// How long a published program's manifest fetched here answers `Manifest` at once.
const RECENT_FOR: Duration = Duration::from_secs(30);

/// Published programs' manifests kept, at most.
const RECENT_KEPT: usize = 64;

/// What to do with a request that needs a fetch.
#[derive(Debug)]
pub(super) enum Join {
    /// None of its key runs: start one; the request waits for it.
    Start,
    /// One of its key runs: the request waits for it.
    Joined,
    /// Too many fetches run, or wait on this one already: answer busy.
    Busy(Client),
}

/// The fetches running, who waits on each, and the manifests fetched lately.
#[derive(Debug)]
pub(super) struct Fetches {
    playable: Waiting<ProgramId, Client>,
    manifests: Waiting<(ProgramId, Viewer), Client>,
    recent: Expiring<ProgramId, Signed>,
}

impl Default for Fetches {
    fn default() -> Self {
        Self {
            playable: Waiting::default(),
            manifests: Waiting::default(),
            recent: Expiring::new(RECENT_FOR, RECENT_KEPT),
        }
    }
}

impl Fetches {
    /// A `Playable` of `program` from `channel`.
    pub(super) fn playable(&mut self, program: ProgramId, channel: Client) -> Join {
        let full = self.running() >= MAX_FETCHES && !self.playable.contains(&program);
        join(&mut self.playable, program, channel, full)
    }

    /// A `Manifest` of `program` from `channel`, seen as `viewer`.
    pub(super) fn manifest(&mut self, program: ProgramId, viewer: Viewer, channel: Client) -> Join {
        let key = (program, viewer);
        let full = self.running() >= MAX_FETCHES && !self.manifests.contains(&key);
        join(&mut self.manifests, key, channel, full)
    }

    /// The fetch of `program`'s record for `Playable` ended: who waited on it.
    pub(super) fn playable_done(&mut self, program: &ProgramId) -> Vec<Client> {
        self.playable.take(program)
    }

    /// The fetch of `program`'s manifest for `viewer` ended: who waited on it. `published`:
    /// the manifest fetched, of a program its record says is published.
    pub(super) fn manifest_done(
        &mut self,
        (program, viewer): (ProgramId, Viewer),
        published: Option<&Signed>,
    ) -> Vec<Client> {
        if let Some(signed) = published {
            self.recent.insert(program, signed.clone(), Instant::now());
        }
        self.manifests.take(&(program, viewer))
    }

    /// The manifest of published `program` fetched within [`RECENT_FOR`], if any.
    pub(super) fn recent_manifest(&self, program: &ProgramId) -> Option<Signed> {
        self.recent.get(program, Instant::now()).cloned()
    }

    fn running(&self) -> usize {
        self.playable.keys() + self.manifests.keys()
    }
}

fn join<K: std::hash::Hash + Eq>(
    waiting: &mut Waiting<K, Client>,
    key: K,
    channel: Client,
    full: bool,
) -> Join {
    if full {
        return Join::Busy(channel);
    }
    match waiting.push(key, channel) {
        Ok(true) => Join::Start,
        Ok(false) => Join::Joined,
        Err(channel) => Join::Busy(channel),
    }
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
        let p = |n: u8| ProgramId([n; 32]);
        assert!(matches!(fetches.playable(p(0), client()), Join::Start));
        assert!(matches!(fetches.playable(p(0), client()), Join::Joined));
        let viewer = Viewer::Trusted;
        assert!(matches!(
            fetches.manifest(p(0), viewer, client()),
            Join::Start
        ));
        for n in 1..(MAX_FETCHES - 1) as u8 {
            assert!(matches!(fetches.playable(p(n), client()), Join::Start));
        }
        assert!(matches!(fetches.playable(p(200), client()), Join::Busy(_)));
        // One that runs still takes who asks for it.
        assert!(matches!(fetches.playable(p(1), client()), Join::Joined));
        assert_eq!(fetches.playable_done(&p(0)).len(), 2);
        assert!(matches!(fetches.playable(p(200), client()), Join::Start));
        assert_eq!(fetches.manifest_done((p(0), viewer), None).len(), 1);
        assert!(fetches.recent_manifest(&p(0)).is_none());
    }
}
