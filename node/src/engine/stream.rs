//! `/vodmesh/stream/1` on an engine: streams a segment from its store to a console, from any
//! byte offset, following a segment that is still filling, with the stream's backpressure.
//! Enforces `--max-streams` (answering [`StreamReply::Busy`] past it, a wait for the console)
//! and reports every start and stop to the director, so the director's view of this engine's
//! load is exact.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use futures::{AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use vodmesh_proto::SegmentId;
use vodmesh_proto::codec::{read_frame, write_frame};
use vodmesh_proto::stream::{MAX_FRAME, StreamReply, StreamRequest};

use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::{Audience, TrustedIssuers};

use crate::control::EngineReport;
use crate::store::{SegmentState, SegmentStore};

/// Bytes per read from the store and write to the stream.
const CHUNK: usize = 256 * 1024;
/// How long a request for a segment not (yet) here waits for a copy in flight to begin.
const ARRIVAL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// A console that takes no bytes for this long loses its stream (and its slot).
const STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What every stream task shares.
#[derive(Clone)]
pub(crate) struct StreamService {
    pub(crate) index: usize,
    pub(crate) store: SegmentStore,
    pub(crate) reports: mpsc::Sender<EngineReport>,
    pub(crate) active: Arc<AtomicU32>,
    pub(crate) max_streams: u32,
    /// Issuers whose console tokens this station accepts; empty = serve no stream.
    pub(crate) trusted: TrustedIssuers,
    /// The streams being served, by segment and console, each with the signal that hands it
    /// over to another engine (claim 22).
    pub(crate) handovers: Handovers,
}

/// Streams an engine serves (segment, console, a number of its own: one console may hold two
/// streams of a segment), each with a token that ends it early for a handover.
pub(crate) type Handovers =
    Arc<std::sync::Mutex<HashMap<(SegmentId, PeerId, u64), CancellationToken>>>;

/// Ends the streams of `segment` to `console`, if this engine serves any; whether it did.
pub(crate) fn hand_over(handovers: &Handovers, segment: SegmentId, console: PeerId) -> bool {
    let Ok(m) = handovers.lock() else {
        return false;
    };
    let mut ended = false;
    for ((s, c, _), token) in m.iter() {
        if *s == segment && *c == console {
            token.cancel();
            ended = true;
        }
    }
    ended
}

/// Numbers the streams in [`Handovers`].
static NEXT_STREAM: AtomicU64 = AtomicU64::new(0);

/// Accepts stream requests until the engine stops, each in a task of its own.
pub(crate) async fn serve(mut incoming: libp2p_stream::IncomingStreams, service: StreamService) {
    while let Some((peer, stream)) = incoming.next().await {
        let service = service.clone();
        tokio::spawn(async move {
            if let Err(e) = service.handle(peer, stream).await {
                tracing::debug!(index = service.index, %peer, error = %e, "stream ended early");
            }
        });
    }
}

/// Counts a stream while it lives; reports start and stop to the director.
struct Slot<'a> {
    service: &'a StreamService,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let active = self.service.active.fetch_sub(1, Ordering::SeqCst) - 1;
        let _ = self.service.reports.try_send(EngineReport::Streams {
            index: self.service.index,
            active,
        });
    }
}

impl StreamService {
    fn acquire(&self) -> Option<Slot<'_>> {
        let mut now = self.active.load(Ordering::SeqCst);
        loop {
            if now >= self.max_streams {
                return None;
            }
            match self
                .active
                .compare_exchange(now, now + 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break,
                Err(actual) => now = actual,
            }
        }
        let _ = self.reports.try_send(EngineReport::Streams {
            index: self.index,
            active: now + 1,
        });
        Some(Slot { service: self })
    }

    async fn send(
        &self,
        stream: &mut Stream,
        reader: &mut crate::store::Reader,
        (offset, handover): (u64, &CancellationToken),
        sent: &mut u64,
    ) -> std::io::Result<()> {
        reader.seek(offset);
        loop {
            let next = tokio::select! {
                // Handed over (claim 22): the stream ends here; the console resumes elsewhere.
                _ = handover.cancelled() => return Ok(()),
                next = reader.read_next(CHUNK) => next,
            };
            match next {
                Ok(Some(bytes)) => {
                    tokio::select! {
                        _ = handover.cancelled() => return Ok(()),
                        written = tokio::time::timeout(STALL_TIMEOUT, stream.write_all(&bytes)) => {
                            written.map_err(|_| {
                                std::io::Error::new(
                                    std::io::ErrorKind::TimedOut,
                                    "console stopped reading",
                                )
                            })??;
                        }
                    }
                    *sent += bytes.len() as u64;
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    // A corrupt chunk is never sent: the console sees the stream end short.
                    tracing::warn!(index = self.index, error = %e, "stream aborted");
                    return Err(std::io::Error::other(e.to_string()));
                }
            }
        }
    }

    fn check_token(&self, peer: &PeerId, request: &StreamRequest) -> Result<(), String> {
        if self.trusted.is_empty() {
            return Err("this station trusts no token issuer and serves no stream".into());
        }
        let Some(token) = &request.token else {
            return Err("no token: log in first (vodmesh-console login)".into());
        };
        self.trusted
            .verify(
                token,
                now_ms(),
                Audience::Console,
                Some(&request.segment.program),
                peer,
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn handle(&self, peer: PeerId, mut stream: Stream) -> std::io::Result<()> {
        let request: StreamRequest = read_frame(&mut stream, MAX_FRAME).await?;
        // No byte of a program leaves an engine without a valid console token, bound to the
        // peer at the other end of this connection, for this program.
        if let Err(why) = self.check_token(&peer, &request) {
            tracing::info!(index = self.index, %peer, refused = %why, "stream refused");
            let _ = self.reports.try_send(EngineReport::Refused {
                index: self.index,
                copy: false,
            });
            write_frame(&mut stream, &StreamReply::Refused(why)).await?;
            return stream.close().await;
        }
        let Some(_slot) = self.acquire() else {
            // A wait for the console, not a refusal: it asks its director for another engine.
            tracing::debug!(index = self.index, %peer, segment = %request.segment, "busy: at --max-streams");
            write_frame(&mut stream, &StreamReply::Busy).await?;
            return stream.close().await;
        };
        // A copy the director just ordered (overload replication) may not have begun to
        // arrive: the console was sent here at once, so wait briefly for the first bytes.
        let waited = std::time::Instant::now();
        while self.store.info(&request.segment).is_none() && waited.elapsed() < ARRIVAL_WAIT {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // Not here (a copy that never came, or a segment dropped since the director heard of
        // it): the console asks its director for another engine.
        let Ok(mut reader) = self.store.open_read(request.segment).await else {
            tracing::debug!(index = self.index, %peer, segment = %request.segment, "absent");
            write_frame(&mut stream, &StreamReply::Absent).await?;
            return stream.close().await;
        };
        let size = reader.len();
        let Some(info) = self.store.info(&request.segment) else {
            write_frame(&mut stream, &StreamReply::Absent).await?;
            return stream.close().await;
        };
        // Claim 21: a console that seeks past what a still-filling copy holds is not made to
        // wait for the copy; it is handed to an engine with the whole segment.
        if info.state == SegmentState::Filling {
            let filled = self.store.filled(&request.segment).map_or(0, |f| f.0);
            if request.play_from > filled && filled < size {
                tracing::debug!(index = self.index, %peer, segment = %request.segment, filled, play_from = request.play_from, "console past the fill: swap");
                let _ = self.reports.try_send(EngineReport::SwapAsked {
                    index: self.index,
                    segment: request.segment,
                    console: peer,
                    filled,
                });
                write_frame(&mut stream, &StreamReply::Swap { filled }).await?;
                return stream.close().await;
            }
        }
        if request.offset > size {
            write_frame(
                &mut stream,
                &StreamReply::Refused("offset past the end of the segment".into()),
            )
            .await?;
            return stream.close().await;
        }
        tracing::debug!(index = self.index, %peer, segment = %request.segment, offset = request.offset, "streaming");
        write_frame(
            &mut stream,
            &StreamReply::Streaming {
                size,
                hash: info.hash,
            },
        )
        .await?;
        let _ = self.reports.try_send(EngineReport::TookOver {
            index: self.index,
            segment: request.segment,
            console: peer,
        });
        let mut sent = 0u64;
        let key = (
            request.segment,
            peer,
            NEXT_STREAM.fetch_add(1, Ordering::Relaxed),
        );
        let handover = CancellationToken::new();
        if let Ok(mut m) = self.handovers.lock() {
            m.insert(key, handover.clone());
        }
        let result = self
            .send(
                &mut stream,
                &mut reader,
                (request.offset, &handover),
                &mut sent,
            )
            .await;
        if let Ok(mut m) = self.handovers.lock() {
            m.remove(&key);
        }
        let _ = self.reports.try_send(EngineReport::Stopped {
            index: self.index,
            segment: request.segment,
            console: peer,
            bytes: sent,
            complete: result.is_ok() && request.offset + sent == size,
        });
        result?;
        stream.close().await
    }
}
