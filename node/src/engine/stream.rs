//! `/vodmesh/stream/1` on an engine: streams a segment from its store to a console, from any
//! byte offset, following a segment that is still filling, with the stream's backpressure.
//! Enforces `--max-streams` with a semaphore (answering [`StreamReply::Busy`] past it, a wait
//! for the console) and reports every start and stop to the director, so the director's view
//! of this engine's load is exact. A console that asks for verified mode gets the segment with
//! its chunk-group tree (`vodmesh_proto::verified`) from the start of the group holding its
//! offset: a complete segment, or a copy still filling whose tree came before its bytes (a
//! verified copy, `/vodmesh/copy/1`), followed as its groups land. A filling copy without its
//! tree (from a source of an older version) is streamed raw, and the reply says so.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures::{AsyncWrite, AsyncWriteExt};
use libp2p::{PeerId, Stream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use vodmesh_proto::SegmentId;
use vodmesh_proto::codec::write_frame;
use vodmesh_proto::stream::{MAX_FRAME, StreamReply, StreamRequest};
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::TrustedIssuers;
use vodmesh_proto::verified::{self, Item, Outboard};

use super::Reporter;
use super::admit;
use super::peers::read_request;
use crate::control::{EngineEvent, EngineId, EngineReport};
use crate::expiring::Expiring;
use crate::peer_slots::PeerSlots;
use crate::store::{SegmentState, SegmentStore};

/// Bytes per read from the store and write to the stream.
const CHUNK: usize = 256 * 1024;
/// How long a request for a segment not (yet) here waits for a copy in flight to begin.
const ARRIVAL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// A console that takes no bytes for this long loses its stream (and its place).
const STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
pub(crate) use vodmesh_proto::stream::MAX_STREAMS_PER_PEER;

/// `buf` up to `end`, grown (zeroed) where it was shorter.
fn room(buf: &mut Vec<u8>, end: usize) -> &mut [u8] {
    if buf.len() < end {
        buf.resize(end, 0);
    }
    &mut buf[..end]
}

/// What every stream task shares.
#[derive(Clone)]
pub(crate) struct StreamService {
    pub(crate) store: SegmentStore,
    pub(crate) reporter: Reporter,
    /// `--max-streams`, and the count the director hears of.
    pub(crate) load: Load,
    /// Issuers whose console tokens this station accepts; empty = serve no stream.
    pub(crate) trusted: TrustedIssuers,
    /// The streams being served, each with the signal that hands it over to another engine
    /// (claim 22).
    pub(crate) handovers: Handovers,
    /// Programs not to stream yet ([`super::embargo`]).
    pub(crate) embargoes: super::embargo::Embargoes,
    /// Streams each peer is being served ([`MAX_STREAMS_PER_PEER`] at most).
    pub(crate) per_peer: PeerSlots,
    /// Copies the director ordered lately: only for those is a console's request waited on.
    pub(crate) arriving: Arriving,
    /// Readers preloads opened, each for the stream that follows.
    pub(crate) preopened: Preopened,
}

/// How long a reader a preload opened waits for its console's stream ([`Preopened`]).
pub(crate) const PREOPENED_FOR: std::time::Duration = std::time::Duration::from_secs(2);
/// Readers a preload opened that wait for a stream at once, at most ([`Preopened`]).
const MAX_PREOPENED: usize = 16;

/// Readers of complete segments that a preload opened (the director's
/// `EngineCommand::Preload`, sent as it names this engine to a console) for the stream that
/// follows (or the HTTP edge's request: the director's redirect is a `Locate` too): that
/// stream takes its segment's reader at once instead of opening it (the chunk
/// hashes read from the index on the blocking pool, then the file opened on the disk's worker:
/// two trips between threads, 0.27 ms at the median and 1.7-1.8 ms at p90 with both cores
/// busy, of the 1.5 and 3.7 ms an engine took to answer a stream request in `vodmesh bench
/// --only handoff`). Each is taken once. One not taken within [`PREOPENED_FOR`] is closed by
/// the preload's job, so it holds its segment against eviction no longer than that, and a
/// removal closes those of the segments it removes first. Only the director sends preloads,
/// and it caps what one console's `Locate`s cause; the map is bounded besides.
#[derive(Clone)]
pub(crate) struct Preopened(Arc<Mutex<Expiring<SegmentId, crate::store::Reader>>>);

impl Default for Preopened {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(Expiring::new(
            PREOPENED_FOR,
            MAX_PREOPENED,
        ))))
    }
}

impl Preopened {
    fn map(&self) -> std::sync::MutexGuard<'_, Expiring<SegmentId, crate::store::Reader>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `reader` for the next stream of its segment, if the segment is complete (a copy
    /// still filling is opened when its stream comes, to see how far it got).
    pub(crate) fn keep(&self, reader: crate::store::Reader) {
        if reader.is_complete() {
            let now = tokio::time::Instant::now();
            self.map().insert(reader.segment(), reader, now);
        }
    }

    /// `segment` of `store` opened for reading: the reader a preload kept for it, if any,
    /// else opened now.
    pub(crate) async fn open_read(
        &self,
        store: &SegmentStore,
        segment: SegmentId,
    ) -> Result<crate::store::Reader, crate::store::Error> {
        match self.take(&segment) {
            Some(reader) => Ok(reader),
            None => store.open_read(segment).await,
        }
    }

    /// The reader kept for `segment`, if one is and has not expired.
    fn take(&self, segment: &SegmentId) -> Option<crate::store::Reader> {
        self.map().remove(segment, tokio::time::Instant::now())
    }

    /// Closes the readers not taken within [`PREOPENED_FOR`].
    pub(crate) fn prune(&self) {
        let expired = self.map().prune(tokio::time::Instant::now());
        drop(expired);
    }

    /// Closes the readers kept for `segments` (being removed).
    pub(crate) fn forget(&self, segments: &[SegmentId]) {
        let now = tokio::time::Instant::now();
        let closed: Vec<_> = {
            let mut map = self.map();
            segments.iter().filter_map(|s| map.remove(s, now)).collect()
        };
        drop(closed);
    }
}

/// The segments whose copy the director ordered in the last seconds: a console sent to this
/// engine at once (overload replication) may ask before the first byte arrived, and is waited
/// for briefly; a request for any other segment that is not here is answered at once.
#[derive(Clone, Default)]
pub(crate) struct Arriving(Arc<Mutex<Expiring<SegmentId, ()>>>);

impl Arriving {
    /// The director ordered a copy of `segment`.
    pub(crate) fn ordered(&self, segment: SegmentId) {
        let mut ordered = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        ordered.insert(segment, (), tokio::time::Instant::now());
    }

    /// Whether a copy of `segment` was ordered lately.
    fn expected(&self, segment: &SegmentId) -> bool {
        let ordered = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        ordered.contains(segment, tokio::time::Instant::now())
    }
}

/// The stream cap of an engine: a semaphore of `--max-streams` permits, and the number of
/// streams being served, reported to the director whenever it changes.
#[derive(Clone)]
pub(crate) struct Load {
    permits: Arc<Semaphore>,
    max: u32,
    /// The last count reported. The count and its report change together under this lock, so
    /// reports reach the director in the order of the changes and the last one is the truth.
    reported: Arc<Mutex<u32>>,
    engine: EngineId,
    reports: mpsc::Sender<EngineReport>,
}

impl Load {
    /// At most `max` streams at once for `engine`, reported on `reports`.
    pub(crate) fn new(max: u32, engine: EngineId, reports: mpsc::Sender<EngineReport>) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max as usize)),
            max,
            reported: Arc::default(),
            engine,
            reports,
        }
    }

    /// A place for one more stream, unless `--max-streams` are served already.
    pub(crate) fn try_start(&self) -> Option<ActiveStream> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        self.report();
        Some(ActiveStream {
            permit: Some(permit),
            load: self.clone(),
        })
    }

    /// Streams being served now.
    pub(crate) fn active(&self) -> u32 {
        let free = u32::try_from(self.permits.available_permits()).unwrap_or(u32::MAX);
        self.max.saturating_sub(free)
    }

    fn report(&self) {
        let mut reported = self.reported.lock().unwrap_or_else(PoisonError::into_inner);
        *reported = self.active();
        let streams = EngineEvent::Streams { active: *reported };
        let _ = (self.reports).try_send(EngineReport::new(self.engine, streams));
    }
}

/// One stream being served: it holds a permit of its engine's [`Load`] until it ends, and the
/// director hears of the start and the end.
pub(crate) struct ActiveStream {
    permit: Option<OwnedSemaphorePermit>,
    load: Load,
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        // The permit goes back before the count is taken, so the count includes this end.
        drop(self.permit.take());
        self.load.report();
    }
}

/// The streams an engine serves, each with a token that ends it early for a handover.
///
/// A map behind a mutex: the engine's command loop looks streams up by (segment, console) and
/// every stream task enters and leaves it, each for one short map operation; an owner task
/// would cost two messages per stream for the same effect.
#[derive(Clone, Default)]
pub(crate) struct Handovers {
    streams: Arc<Mutex<Streams>>,
    /// Numbers the streams (one console may hold two streams of a segment).
    next: Arc<AtomicU64>,
}

/// The streams of [`Handovers`] by number: segment, console, and the signal that ends it.
type Streams = HashMap<u64, (SegmentId, PeerId, CancellationToken)>;

/// A stream's entry in [`Handovers`], left when the stream ends.
pub(crate) struct Handover<'a> {
    handovers: &'a Handovers,
    id: u64,
    /// Cancelled when the director hands the console over to another engine.
    pub(crate) token: CancellationToken,
}

impl Handovers {
    fn map(&self) -> std::sync::MutexGuard<'_, Streams> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Enters a stream of `segment` to `console`.
    pub(crate) fn enter(&self, segment: SegmentId, console: PeerId) -> Handover<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        self.map().insert(id, (segment, console, token.clone()));
        Handover {
            handovers: self,
            id,
            token,
        }
    }

    /// Ends the streams of `segment` to `console`, if this engine serves any; whether it did.
    pub(crate) fn hand_over(&self, segment: SegmentId, console: PeerId) -> bool {
        let mut ended = false;
        for (s, c, token) in self.map().values() {
            if *s == segment && *c == console {
                token.cancel();
                ended = true;
            }
        }
        ended
    }
}

impl Drop for Handover<'_> {
    fn drop(&mut self) {
        self.handovers.map().remove(&self.id);
    }
}

impl StreamService {
    async fn send(
        &self,
        stream: &mut (impl AsyncWrite + Unpin),
        reader: &mut crate::store::Reader,
        (offset, handover): (u64, &CancellationToken),
        sent: &mut u64,
    ) -> std::io::Result<()> {
        reader.seek(offset);
        loop {
            let next = tokio::select! {
                // Handed over (claim 22): the stream ends here; the console resumes elsewhere.
                _ = handover.cancelled() => return Ok(()),
                // Reads end on CHUNK boundaries (a multiple of the store's chunk), so a stream
                // from an unaligned offset reads and hashes no store chunk twice, and only its
                // first read is cut out of a chunk.
                next = reader.read_next(CHUNK - (reader.position() % CHUNK as u64) as usize) => next,
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
                    tracing::warn!(engine = %self.reporter.engine(), error = %e, "stream aborted");
                    return Err(std::io::Error::other(e));
                }
            }
        }
    }

    /// Writes `bytes` to the console, unless handed over first (then `false`).
    async fn write(
        stream: &mut (impl AsyncWrite + Unpin),
        bytes: &[u8],
        handover: &CancellationToken,
    ) -> std::io::Result<bool> {
        tokio::select! {
            _ = handover.cancelled() => Ok(false),
            written = tokio::time::timeout(STALL_TIMEOUT, stream.write_all(bytes)) => {
                written.map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "console stopped reading")
                })??;
                Ok(true)
            }
        }
    }

    /// Verified mode: sends `outboard`'s parent nodes and the segment's groups from `from` in
    /// the order of [`verified::plan`], in writes of about [`CHUNK`]. Each write's buffer is laid
    /// out first (the parent nodes copied in, room left for the groups) and its groups are
    /// then read straight into place, in one trip to the disk worker: a stream holds that one
    /// buffer, reused, and no block of the segment besides. The bytes are read without their
    /// chunk groups checked: the console checks every group against the tree and the
    /// manifest's hash (and fails this engine at the first wrong one), so they are not hashed
    /// here a second time. `sent` counts the segment bytes sent.
    async fn send_verified(
        &self,
        stream: &mut (impl AsyncWrite + Unpin),
        reader: &mut crate::store::Reader,
        outboard: &Outboard,
        (from, handover): (u64, &CancellationToken),
        sent: &mut u64,
    ) -> std::io::Result<()> {
        let mut plan = verified::plan(reader.len(), from);
        // Laid out in place write after write: its bytes are overwritten, never zeroed again
        // (a write's parent nodes and groups fill `..len` whole).
        let mut out = vec![0u8; CHUNK + CHUNK / 8];
        loop {
            // This write: `runs` are where its groups go, `(at, offset, len)`.
            let mut len = 0;
            let mut runs: Vec<(usize, u64, usize)> = Vec::new();
            let mut groups = 0u64;
            while len < CHUNK
                && let Some(item) = plan.next()
            {
                match item {
                    Item::Parent { index, .. } => {
                        let pair = outboard.pair(index).ok_or_else(|| {
                            std::io::Error::other("the segment's tree is shorter than its size")
                        })?;
                        let at = len;
                        len += pair.len();
                        room(&mut out, len)[at..].copy_from_slice(pair);
                    }
                    Item::Group { start, end, .. } => {
                        let (at, n) = (len, (end - start) as usize);
                        match runs.last_mut() {
                            // Follows the last group in the file and in the buffer: one read.
                            Some((a, o, l)) if *a + *l == at && *o + *l as u64 == start => *l += n,
                            _ => runs.push((at, start, n)),
                        }
                        len += n;
                        room(&mut out, len);
                        groups += end - start;
                    }
                }
            }
            if len == 0 {
                return Ok(());
            }
            if !runs.is_empty() {
                let buf = std::mem::take(&mut out);
                out = tokio::select! {
                    _ = handover.cancelled() => return Ok(()),
                    read = reader.read_unchecked_runs(buf, runs) => read.map_err(|e| {
                        tracing::warn!(engine = %self.reporter.engine(), error = %e, "stream aborted");
                        std::io::Error::other(e)
                    })?,
                };
            }
            if !Self::write(stream, out.get(..len).unwrap_or_default(), handover).await? {
                return Ok(());
            }
            *sent += groups;
        }
    }

    /// Answers `reply`: the exchange ends before any byte, whole.
    async fn answer(
        stream: &mut (impl AsyncWrite + Unpin),
        reply: &StreamReply,
    ) -> std::io::Result<bool> {
        write_frame(stream, reply).await?;
        stream.flush().await?;
        Ok(true)
    }

    /// Serves one stream request from `peer` on a libp2p stream, and closes it.
    pub(crate) async fn handle(&self, peer: PeerId, mut stream: Stream) -> std::io::Result<()> {
        let request: StreamRequest = read_request(&mut stream, MAX_FRAME).await?;
        self.serve(peer, &mut stream, request).await?;
        stream.close().await
    }

    /// Serves `request` from `peer` on `stream` (a libp2p stream, or a bulk connection):
    /// whether the exchange ended whole (an answer alone, or every byte asked for sent), so
    /// that a bulk connection may carry the next; one handed over or cut short did not.
    pub(crate) async fn serve(
        &self,
        peer: PeerId,
        stream: &mut (impl AsyncWrite + Unpin),
        request: StreamRequest,
    ) -> std::io::Result<bool> {
        let segment = request.segment;
        // No byte of a program leaves an engine without a valid console token, bound to the
        // peer at the other end of this connection, for this program.
        let token = request.token.as_deref().map(Vec::as_slice);
        let published = self.embargoes.allows(&segment.program, now_ms());
        let admitted = admit::stream(&self.trusted, token, &segment.program, &peer, now_ms())
            .and_then(|()| admit::published(published));
        if let Err(why) = admitted {
            tracing::info!(engine = %self.reporter.engine(), %peer, refused = %why, "stream refused");
            self.reporter.try_send(EngineEvent::Refused { copy: false });
            return Self::answer(stream, &StreamReply::Refused(why.to_string())).await;
        }
        let Some(_mine) = self.per_peer.take(peer) else {
            tracing::debug!(engine = %self.reporter.engine(), %peer, %segment, "busy: at the peer's streams");
            return Self::answer(stream, &StreamReply::Busy).await;
        };
        let Some(_active) = self.load.try_start() else {
            // A wait for the console, not a refusal: it asks its director for another engine.
            tracing::debug!(engine = %self.reporter.engine(), %peer, %segment, "busy: at --max-streams");
            return Self::answer(stream, &StreamReply::Busy).await;
        };
        // A copy the director just ordered (overload replication) may not have begun to
        // arrive: the console was sent here at once, so wait briefly for the first bytes.
        let waited = std::time::Instant::now();
        let expected = self.arriving.expected(&segment);
        while expected && self.store.info(&segment).is_none() && waited.elapsed() < ARRIVAL_WAIT {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // Not here (a copy that never came, or a segment dropped since the director heard of
        // it): the console asks its director for another engine.
        let (Ok(mut reader), Some(info)) = (
            self.preopened.open_read(&self.store, segment).await,
            self.store.info(&segment),
        ) else {
            tracing::debug!(engine = %self.reporter.engine(), %peer, %segment, "absent");
            return Self::answer(stream, &StreamReply::Absent).await;
        };
        let size = reader.len();
        // Claim 21: a console that seeks past what a still-filling copy holds is not made to
        // wait for the copy; it is handed to an engine with the whole segment.
        if info.state == SegmentState::Filling {
            let filled = self.store.filled(&segment).map_or(0, |f| f.0);
            if request.play_from > filled && filled < size {
                tracing::debug!(engine = %self.reporter.engine(), %peer, %segment, filled, play_from = request.play_from, "console past the fill: swap");
                self.reporter.try_send(EngineEvent::SwapAsked {
                    segment,
                    console: peer,
                    filled,
                });
                return Self::answer(stream, &StreamReply::Swap { filled }).await;
            }
        }
        if request.offset > size {
            let why = StreamReply::Refused("offset past the end of the segment".into());
            return Self::answer(stream, &why).await;
        }
        // Verified mode needs the segment's tree: a complete segment's, which its reader holds
        // already (the store computes it for a segment stored before trees were kept), or a
        // filling copy's that came before its bytes. A copy still filling without one streams
        // raw, as it lands, and the reply says so.
        let outboard = match info.state {
            SegmentState::Complete if request.verified => {
                let held = reader.outboard();
                let outboard = match held {
                    Some(outboard) => Ok(Some(outboard)),
                    None => self.store.outboard(segment).await,
                };
                match outboard {
                    Ok(outboard) => outboard,
                    Err(e) => {
                        tracing::warn!(engine = %self.reporter.engine(), %segment, error = %e, "no chunk-group tree: streaming raw");
                        None
                    }
                }
            }
            // The copy's writer begins before its source answers, and the console is sent here
            // at once: its tree comes before its first byte, so wait for one or the other
            // (within what is left of the arrival's wait, below the console's patience).
            SegmentState::Filling if request.verified => {
                let left = ARRIVAL_WAIT.saturating_sub(waited.elapsed());
                reader.tree_within(left).await.map(|t| t.1.clone())
            }
            _ => None,
        };
        let from = match outboard {
            Some(_) => verified::group_start(request.offset),
            None => request.offset,
        };
        tracing::debug!(engine = %self.reporter.engine(), %peer, %segment, offset = request.offset, verified = outboard.is_some(), "streaming");
        let streaming = match outboard {
            Some(_) => StreamReply::Verified {
                size,
                hash: info.hash,
                from,
            },
            None => StreamReply::Streaming {
                size,
                hash: info.hash,
            },
        };
        write_frame(&mut *stream, &streaming).await?;
        self.reporter.try_send(EngineEvent::TookOver {
            segment,
            console: peer,
        });
        let mut sent = 0u64;
        let handover = self.handovers.enter(segment, peer);
        let result = match &outboard {
            Some(outboard) => {
                let at = (from, &handover.token);
                (self.send_verified(stream, &mut reader, outboard, at, &mut sent)).await
            }
            None => {
                let at = (from, &handover.token);
                self.send(stream, &mut reader, at, &mut sent).await
            }
        };
        let whole = result.is_ok() && from + sent == size;
        drop(handover);
        self.reporter.try_send(EngineEvent::Stopped {
            segment,
            console: peer,
            bytes: sent,
            complete: whole,
        });
        result?;
        stream.flush().await?;
        Ok(whole)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader a preload opened serves one stream of its segment and only one, and holds
    /// its segment against removal until it is taken, forgotten (a removal) or expired. A
    /// copy still filling is not kept. Control: once let go, the segment is removed.
    #[tokio::test]
    async fn a_preopened_reader_is_taken_once_and_holds_its_segment_only_for_its_time()
    -> Result<(), Box<dyn std::error::Error>> {
        use bytes::Bytes;
        use vodmesh_proto::{ProgramId, SegmentHash};
        let dir = tempfile::tempdir()?;
        let config = crate::store::Config::new(
            dir.path().join("index.redb"),
            vec![dir.path().join("disk")],
            1 << 30,
        );
        let (store, _events) = SegmentStore::open(config).await?;
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let seg = |i| SegmentId::new(ProgramId([7; 32]), i);
        for i in 0..3 {
            let mut w =
                (store.begin_write(seg(i), SegmentHash::of(&data), data.len() as u64)).await?;
            w.write_chunk(Bytes::copy_from_slice(&data)).await?;
            w.finish().await?;
        }
        let preopened = Preopened::default();

        // Taken once, and it reads the segment.
        preopened.keep(store.open_read(seg(0)).await?);
        let mut taken = preopened.take(&seg(0)).ok_or("not kept")?;
        assert!(preopened.take(&seg(0)).is_none(), "taken twice");
        assert_eq!(taken.read_range(0, data.len() as u64).await?, data);
        drop(taken);

        // Kept, it holds its segment; a removal forgets it first.
        preopened.keep(store.open_read(seg(1)).await?);
        let (_, busy) = store.remove_all(&[seg(1)]).await;
        assert_eq!(busy, vec![seg(1)], "a kept reader holds its segment");
        preopened.forget(&[seg(1)]);
        let (removed, busy) = store.remove_all(&[seg(1)]).await;
        assert_eq!((removed, busy), (vec![seg(1)], Vec::new()));

        // Not taken in its time: no stream gets it, and pruning lets the segment go.
        preopened.keep(store.open_read(seg(2)).await?);
        tokio::time::pause();
        tokio::time::advance(PREOPENED_FOR).await;
        preopened.prune();
        assert!(preopened.take(&seg(2)).is_none(), "taken after its time");
        tokio::time::resume();
        let (removed, _) = store.remove_all(&[seg(2)]).await;
        assert_eq!(
            removed,
            vec![seg(2)],
            "an expired reader still held its segment"
        );

        // A copy still filling is opened when its stream comes, not kept.
        let mut w = (store.begin_write(seg(3), SegmentHash::of(&data), data.len() as u64)).await?;
        w.write_chunk(Bytes::copy_from_slice(&data[..50_000]))
            .await?;
        preopened.keep(store.open_read(seg(3)).await?);
        assert!(preopened.take(&seg(3)).is_none(), "a filling copy was kept");
        drop(w);
        store.shutdown().await?;
        Ok(())
    }

    fn counts(reports: &mut mpsc::Receiver<EngineReport>) -> Vec<u32> {
        let mut out = Vec::new();
        while let Ok(EngineReport {
            event: EngineEvent::Streams { active },
            ..
        }) = reports.try_recv()
        {
            out.push(active);
        }
        out
    }

    #[test]
    fn the_cap_admits_max_streams_and_the_director_hears_every_change() {
        let (tx, mut rx) = mpsc::channel(16);
        let load = Load::new(2, EngineId(0), tx);
        let first = load.try_start();
        let second = load.try_start();
        assert!(first.is_some() && second.is_some());
        // The third is a wait for the console, and changes nothing.
        assert!(load.try_start().is_none());
        assert_eq!(load.active(), 2);
        drop(first);
        // A place freed is a place to take.
        let third = load.try_start();
        assert!(third.is_some());
        drop(second);
        drop(third);
        assert_eq!(load.active(), 0);
        assert_eq!(counts(&mut rx), [1, 2, 1, 2, 1, 0]);
    }

    #[test]
    fn an_engine_with_no_streams_allowed_is_always_busy() {
        let (tx, mut rx) = mpsc::channel(4);
        let load = Load::new(0, EngineId(0), tx);
        assert!(load.try_start().is_none());
        assert!(counts(&mut rx).is_empty());
    }

    #[tokio::test]
    async fn streams_ending_at_once_leave_the_true_count_last() {
        let (tx, mut rx) = mpsc::channel(1024);
        let load = Load::new(64, EngineId(3), tx);
        let streams: Vec<ActiveStream> = (0..64).filter_map(|_| load.try_start()).collect();
        assert_eq!(streams.len(), 64);
        let mut ends = tokio::task::JoinSet::new();
        for s in streams {
            ends.spawn_blocking(move || drop(s));
        }
        while ends.join_next().await.is_some() {}
        assert_eq!(counts(&mut rx).last(), Some(&0));
    }

    #[test]
    fn a_handover_ends_only_the_streams_of_its_segment_and_console() {
        let handovers = Handovers::default();
        let program = vodmesh_proto::ProgramId([1; 32]);
        let (segment, next) = (SegmentId::new(program, 3), SegmentId::new(program, 4));
        let (console, other) = (PeerId::random(), PeerId::random());
        let a = handovers.enter(segment, console);
        let b = handovers.enter(segment, console);
        let c = handovers.enter(segment, other);
        let d = handovers.enter(next, console);
        assert!(handovers.hand_over(segment, console));
        assert!(a.token.is_cancelled() && b.token.is_cancelled());
        assert!(!c.token.is_cancelled() && !d.token.is_cancelled());
        // An ended stream leaves the map: nothing is left to hand over.
        drop(c);
        assert!(!handovers.hand_over(segment, other));
        drop((a, b, d));
        assert!(handovers.map().is_empty());
    }
}
