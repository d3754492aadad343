//! Opening a segment's stream at the engine a director named: in turn with this console's
//! other fetches from that engine, on a kept bulk connection or a new one, and what the
//! engine's first answer means (the stream in verified or raw mode, a hand-over to an engine
//! with the whole segment, busy, absent, refused).

use vodmesh_proto::codec::{read_frame, write_frame};
use vodmesh_proto::director::{Request, SegmentLocation};
use vodmesh_proto::manifest::{MAX_SEGMENT_SIZE, Manifest, SegmentEntry};
use vodmesh_proto::stream::{self as wire, StreamReply, StreamRequest};
use vodmesh_proto::verified;

use super::bulk::Wire;
use super::{Attempt, AttemptError, FetchError, Fetcher, Mode, READ_STALL, Watch, located};
use crate::retry::Ended;

impl Fetcher {
    /// Opens the stream of `request` for segment `entry` at the engine `location` names, in
    /// turn with this console's other fetches from that engine; an engine that hands the
    /// console over (claim 21) is followed once to the engine with the whole segment. Returns
    /// where the stream comes from, the stream, the engine's slot (held while it streams) and
    /// how the engine streams.
    pub(super) async fn open(
        &self,
        manifest: &Manifest,
        entry: &SegmentEntry,
        (mut location, watch): (SegmentLocation, &Watch),
        request: &StreamRequest,
    ) -> Result<(SegmentLocation, Wire, super::Slot, Mode), Attempt> {
        let index = request.segment.index;
        // A kept bulk connection that the engine closed since fails its first exchange: it is
        // asked again once, on a new connection.
        let mut fresh = false;
        loop {
            let engine = location.engine;
            let unreachable = |e: AttemptError| Attempt::Ended(Ended::Unreachable(engine), e);
            let lost = |cause: std::io::Error| {
                Attempt::Ended(
                    Ended::Broke { progress: false },
                    AttemptError::Lost { engine, cause },
                )
            };
            watch.queue(true);
            let slot = self.slots.take(engine, index).await;
            watch.queue(false);
            if self.is_unreachable(&engine) {
                return Err(unreachable(AttemptError::Avoided(engine)));
            }
            let mut s = self.wire(&location, fresh).await?;
            let reused = matches!(s, Wire::Bulk { reused: true, .. });
            let asked = write_frame(&mut s, request).await;
            // A stream that closes before its answer (the engine stopping) ends here with an
            // error: the engine answered the open, so it is not avoided.
            let reply = match asked {
                Ok(()) => {
                    tokio::time::timeout(
                        READ_STALL,
                        read_frame::<_, StreamReply>(&mut s, wire::MAX_FRAME),
                    )
                    .await
                }
                Err(e) => Ok(Err(e)),
            };
            let reply = match reply {
                Ok(Err(e)) if reused => {
                    tracing::debug!(%index, %engine, error = %e, "a kept bulk connection was closed: a new one");
                    fresh = true;
                    drop(slot);
                    continue;
                }
                reply => reply,
            };
            let reply = reply
                .map_err(|_| unreachable(AttemptError::NoAnswer(engine)))?
                .map_err(lost)?;
            // An answer alone (swap, busy, absent) ends the exchange whole: the engine keeps
            // a bulk connection for the next one, and so does this console, so a wait for a
            // busy engine costs no new handshake with it.
            match reply {
                // Claim 21: this engine's copy has not reached our position; its director
                // names one with the whole segment, which takes us over.
                StreamReply::Swap { filled } if !location.swap => {
                    tracing::debug!(%index, %engine, filled, play_from = request.play_from, "handed over: asking for a complete copy");
                    self.bulk.done(engine, s).await;
                    let complete = Request::Locate {
                        program: manifest.program,
                        index,
                        complete: true,
                        avoid: Vec::new(),
                        busy: Vec::new(),
                        ahead: 0,
                        token: request.token.clone(),
                    };
                    let answer = self
                        .directors
                        .ask_director(location.director, complete)
                        .await;
                    location = located(answer)?;
                }
                StreamReply::Swap { .. } => {
                    self.bulk.done(engine, s).await;
                    return Err(Attempt::Ended(
                        Ended::Broke { progress: false },
                        AttemptError::SwapFilling(engine),
                    ));
                }
                StreamReply::Busy => {
                    self.bulk.done(engine, s).await;
                    return Err(Attempt::Ended(
                        Ended::EngineBusy(engine),
                        AttemptError::Busy(engine),
                    ));
                }
                StreamReply::Absent => {
                    self.bulk.done(engine, s).await;
                    return Err(Attempt::Ended(
                        Ended::Absent(engine),
                        AttemptError::Absent(engine),
                    ));
                }
                // The engine's one line is the user's one line (`token expired`, ...).
                StreamReply::Refused(why) => return Err(FetchError::EngineRefused(why).into()),
                StreamReply::Streaming { size, hash } => {
                    if size != entry.size || hash != entry.hash || size > MAX_SEGMENT_SIZE {
                        return Err(FetchError::Mismatch { engine, index }.into());
                    }
                    return Ok((location, s, slot, Mode::Raw));
                }
                StreamReply::Verified { size, hash, from } => {
                    let mismatch = size != entry.size || hash != entry.hash;
                    // Verified mode starts where it must: the group of the offset asked for.
                    if mismatch || from != verified::group_start(request.offset) {
                        return Err(FetchError::Mismatch { engine, index }.into());
                    }
                    return Ok((location, s, slot, Mode::Verified { from }));
                }
            }
        }
    }
}
