//! Asking a director where a segment is (`Locate`): the engines this console could not
//! reach named to be passed over, and at `--speed max` the segments after it asked for too,
//! the first attempt at each of those going where the director named it ([`super::ahead`]).

use std::time::Instant;

use vodmesh_proto::director::{Request, SegmentLocation};
use vodmesh_proto::manifest::Manifest;
use vodmesh_proto::{SegmentId, SegmentIndex};

use super::{Attempt, AttemptError, FetchError, Fetcher, located};
use crate::retry::{Ended, Retry};

impl Fetcher {
    /// Where the director sends this attempt.
    pub(super) async fn locate(
        &self,
        manifest: &Manifest,
        index: SegmentIndex,
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
        // A first attempt: where a director named it ahead, or soon will (`fetch::ahead`). A
        // hedge asks a director itself: it races the attempt that waits.
        let asking = match named || retry.is_hedge() {
            true => None,
            false => match self.ahead.first(segment).await {
                Ok(location) => return Ok(location),
                Err(asking) => Some(asking),
            },
        };
        let locate = Request::Locate {
            program: manifest.program,
            index,
            complete: false,
            avoid,
            busy: retry.busy().to_vec(),
            ahead: asking.as_ref().map_or(0, |asking| asking.count),
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
}
