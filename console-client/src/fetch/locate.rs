//! Asking a director where a segment is (`Locate`): the engines this console could not
//! reach named to be passed over, and at `--speed max` the segments after it asked for too,
//! the first attempt at each of those going where the director named it ([`super::ahead`]).

use std::time::Instant;

use vodmesh_proto::director::{Request, SegmentLocation};
use vodmesh_proto::manifest::Manifest;
use vodmesh_proto::{SegmentId, SegmentIndex};

use super::ahead::{Ahead, Asking};
use super::{Attempt, AttemptError, FetchError, Fetcher, located};
use crate::retry::{Ended, Retry};

impl Fetcher {
    /// Where the director sends this attempt.
    pub(super) async fn locate(
        &self,
        manifest: &Manifest,
        (index, token): (SegmentIndex, Option<&[u8]>),
        retry: &Retry,
    ) -> Result<SegmentLocation, Attempt> {
        let mut avoid = retry.avoid().to_vec();
        for engine in self.unreachable() {
            if !avoid.contains(&engine) {
                avoid.push(engine);
            }
        }
        let named = !avoid.is_empty() || !retry.busy().is_empty();
        let segment = SegmentId::new(manifest.program, index.0);
        let asking = match named_before(&self.ahead, segment, named, retry).await {
            Ok(location) => {
                self.refill(manifest, segment, token);
                return Ok(location);
            }
            Err(asking) => asking,
        };
        let locate = Request::Locate {
            program: manifest.program,
            index,
            complete: false,
            avoid,
            busy: retry.busy().to_vec(),
            ahead: asking.as_ref().map_or(0, |asking| asking.count),
            // Shown so that a station that lacks the segment copies it in for this console.
            token: token.map(|t| serde_bytes::ByteBuf::from(t.to_vec())),
        };
        match located(self.directors.ask(locate).await) {
            Ok(mut location) => {
                let ahead = std::mem::take(&mut location.ahead);
                self.ahead.keep(segment, ahead, Instant::now());
                drop(asking);
                Ok(location)
            }
            // Nothing but what this console named: those engines are tried again.
            Err(Attempt::Final(FetchError::NotFound(reply))) if named => Err(Attempt::Ended(
                Ended::NothingElse,
                AttemptError::Director(reply),
            )),
            other => other,
        }
    }

    /// A fetch of `segment` took the name a director gave it ahead: when the names run short
    /// after it, a director is asked for the next segments in the background, so that no
    /// fetch waits for that ask at its start ([`Ahead::refill_after`]). Its failure costs
    /// nothing: the fetches that waited for it ask for themselves.
    fn refill(&self, manifest: &Manifest, segment: SegmentId, token: Option<&[u8]>) {
        let last = manifest.content.segments.len().saturating_sub(1);
        let last = SegmentIndex(u32::try_from(last).unwrap_or(u32::MAX));
        let Some((first, asking)) = self.ahead.refill_after(segment, last, Instant::now()) else {
            return;
        };
        let locate = Request::Locate {
            program: first.program,
            index: first.index,
            complete: false,
            avoid: self.unreachable(),
            busy: Vec::new(),
            ahead: asking.count,
            token: token.map(|t| serde_bytes::ByteBuf::from(t.to_vec())),
        };
        let (directors, ahead) = (self.directors.clone(), self.ahead.clone());
        tokio::spawn(async move {
            if let Ok(mut location) = located(directors.ask(locate).await) {
                let after = std::mem::take(&mut location.ahead);
                let named = std::iter::once(location).chain(after).collect();
                ahead.keep_from(first, named, Instant::now());
            }
            drop(asking);
        });
    }
}

/// For a first attempt at `segment`, where a director named it ahead, or the answer of an ask
/// on its way that names it, awaited (`fetch::ahead`); else the ask to make, with the segments
/// after it asked for. An attempt that `names` engines (to pass over, or found busy) and a
/// hedge ask a director themselves, for nothing ahead (`Err(None)`): a hedge races the attempt
/// that waits, and leaves the name to it.
async fn named_before(
    ahead: &Ahead,
    segment: SegmentId,
    names: bool,
    retry: &Retry,
) -> Result<SegmentLocation, Option<Asking>> {
    if names || retry.is_hedge() {
        return Err(None);
    }
    ahead.first(segment).await.map_err(Some)
}

#[cfg(test)]
mod tests {
    use libp2p::PeerId;
    use vodmesh_proto::ProgramId;

    use super::*;
    use crate::retry::Next;

    /// A hedge neither takes a location a director named ahead nor waits for one, and leaves
    /// it to the first attempt; so does a retry that names an engine it found busy. Control:
    /// the first attempt takes it (seen in `engine_process_copy`: a hedge that took the
    /// ahead path sent the later segments to the home's engine).
    #[tokio::test]
    async fn a_hedge_asks_a_director_itself_and_leaves_the_name_to_the_first_attempt() {
        let ahead = Ahead::default();
        ahead.ask_for(4);
        let program = ProgramId([9; 32]);
        let (asked, next) = (SegmentId::new(program, 1), SegmentId::new(program, 2));
        let engine = PeerId::random();
        let name = SegmentLocation::new(engine, Vec::new(), PeerId::random());
        ahead.keep(asked, vec![name], Instant::now());

        let hedge = Retry::avoiding(Vec::new());
        let hedged = named_before(&ahead, next, false, &hedge).await;
        assert!(matches!(hedged, Err(None)), "a hedge took the name");
        let mut busy = Retry::default();
        assert!(matches!(
            busy.after(Ended::EngineBusy(engine)),
            Next::Again(_)
        ));
        let retry = named_before(&ahead, next, !busy.busy().is_empty(), &busy);
        assert!(matches!(retry.await, Err(None)), "a retry took the name");
        let first = named_before(&ahead, next, false, &Retry::default()).await;
        assert_eq!(first.ok().map(|l| l.engine), Some(engine));
        // Taken once: the next first attempt asks, for the segments after it too.
        let again = named_before(&ahead, next, false, &Retry::default()).await;
        assert!(matches!(again, Err(Some(Asking { count: 4, .. }))));
    }
}
