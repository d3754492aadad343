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
use vodmesh_proto::director::Response;
use vodmesh_proto::signed::Signed;

use super::catalog::Viewer;
use super::context::{Client, Reply};
use super::error::{Error, respond};
use crate::expiring::{Expiring, Waiting};

/// Fetches of `Playable` and of `Manifest` running at once, at most.
pub(super) const MAX_FETCHES: usize = 32;

/// How long a published program's manifest fetched here answers `Manifest` at once.
const RECENT_FOR: Duration = Duration::from_secs(30);

/// Published programs' manifests kept, at most.
const RECENT_KEPT: usize = 64;

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
    /// A `Playable` of `program` from `channel`: `Ok(true)` when the caller starts the fetch,
    /// `Ok(false)` when it waits on one running, `Err` the busy answer (boxed: it is rare, and
    /// large).
    pub(super) fn playable(
        &mut self,
        program: ProgramId,
        channel: Client,
    ) -> Result<bool, Box<Reply>> {
        let full = self.running() >= MAX_FETCHES && !self.playable.contains(&program);
        join(&mut self.playable, program, channel, full)
    }

    /// A `Manifest` of `program` from `channel`, seen as `viewer`: as [`Self::playable`].
    pub(super) fn manifest(
        &mut self,
        program: ProgramId,
        viewer: Viewer,
        channel: Client,
    ) -> Result<bool, Box<Reply>> {
        let key = (program, viewer);
        let full = self.running() >= MAX_FETCHES && !self.manifests.contains(&key);
        join(&mut self.manifests, key, channel, full)
    }

    /// The fetch of `program`'s record for `Playable` ended: `answer` for everyone waiting.
    pub(super) fn playable_done(&mut self, program: &ProgramId, answer: &Response) -> Vec<Reply> {
        everyone(self.playable.take(program), answer)
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
        everyone(self.manifests.take(&key), &answer)
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
) -> Result<bool, Box<Reply>> {
    let busy = |channel| Box::new((channel, Response::Error(Error::FetchesBusy.into())));
    if full {
        return Err(busy(channel));
    }
    waiting.push(key, channel).map_err(busy)
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
        let p = |n: u8| ProgramId([n; 32]);
        let starts = |r: Result<bool, Box<Reply>>| matches!(r, Ok(true));
        let joins = |r: Result<bool, Box<Reply>>| matches!(r, Ok(false));
        let busy =
            |r: Result<bool, Box<Reply>>| r.is_err_and(|busy| matches!(busy.1, Response::Error(_)));
        assert!(starts(fetches.playable(p(0), client())));
        assert!(joins(fetches.playable(p(0), client())));
        let viewer = Viewer::Trusted;
        assert!(starts(fetches.manifest(p(0), viewer, client())));
        for n in 1..(MAX_FETCHES - 1) as u8 {
            assert!(starts(fetches.playable(p(n), client())));
        }
        assert!(busy(fetches.playable(p(200), client())));
        // One that runs still takes who asks for it.
        assert!(joins(fetches.playable(p(1), client())));
        assert_eq!(fetches.playable_done(&p(0), &Response::Ok).len(), 2);
        assert!(starts(fetches.playable(p(200), client())));
        let failed = Err(Error::UnknownProgram);
        assert_eq!(fetches.manifest_done((p(0), viewer), failed).len(), 1);
        assert!(fetches.recent_manifest(&p(0)).is_none());
    }
}
