//! `/vodmesh/ingest/1` on an engine: accepts segments its director announced, verifies them
//! while they arrive, commits them to the store and reports them to the director.
//!
//! A segment the store cannot take (full, a write failing) is refused at once, before or in
//! the middle of its bytes: the client reads the answer while it writes, so the refusal
//! reaches it within a round trip instead of after the whole segment (or never, when the
//! stream's window is full of bytes nobody reads). A segment whose announcement was taken
//! back while it arrived (the director dropped the ingest) is removed again once written.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::BytesMut;
use futures::{AsyncRead, AsyncWriteExt};
use libp2p::{PeerId, Stream};
use vodmesh_proto::SegmentId;
use vodmesh_proto::codec::write_frame;
use vodmesh_proto::ingest::{IngestAck, IngestHeader, MAX_FRAME};

use super::Reporter;
use super::peers::{fill_within, read_request};
use crate::control::Expected;
use crate::store::{self, SegmentState, SegmentStore};

/// Bytes read from the stream per store write.
const CHUNK: usize = 256 * 1024;
/// How long a refused client gets to read the refusal before the stream is dropped.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a push's bytes may stop before it is given up: any peer can open ingest
/// streams, and one that goes silent must not hold its stream and task for good.
const SILENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Why a pushed segment is refused. The `Display` text is the line the client shows.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    /// The director announced no such segment.
    #[error("segment not announced by this station's director")]
    NotAnnounced,
    /// The director announced it for another client.
    #[error("segment announced for another peer")]
    OtherPeer,
    /// The header says another size or hash than the announcement.
    #[error("segment header does not match the manifest")]
    Mismatch,
    /// The bytes stopped before the segment's end.
    #[error("stream ended early: {0}")]
    Cut(#[source] std::io::Error),
    /// The store cannot take it (full, a write failing, the bytes not matching the hash).
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The director dropped the ingest while the segment arrived.
    #[error("the station dropped this ingest (it was given up or expired)")]
    Dropped,
}

/// Whether a push from `peer` with `header` matches what the director announced.
fn check(expected: Option<Expected>, peer: &PeerId, header: &IngestHeader) -> Result<(), Refusal> {
    let expected = expected.ok_or(Refusal::NotAnnounced)?;
    if expected.from != *peer {
        return Err(Refusal::OtherPeer);
    }
    if expected.hash != header.hash || expected.size != header.size {
        return Err(Refusal::Mismatch);
    }
    Ok(())
}

/// What an ingest stream's task needs.
pub(crate) struct Push {
    pub(crate) store: SegmentStore,
    pub(crate) expectations: Expectations,
    pub(crate) reporter: Reporter,
    pub(crate) metrics: crate::metrics::Metrics,
}

impl Push {
    /// Takes one pushed segment from `peer`, or refuses it.
    pub(crate) async fn handle(&self, peer: PeerId, mut stream: Stream) -> std::io::Result<()> {
        // Within REQUEST_WITHIN of the stream's opening, as a stream or copy request.
        let header: IngestHeader = read_request(&mut stream, MAX_FRAME).await?;
        let segment = header.segment;
        let pushed = match check(self.expectations.get(&segment), &peer, &header) {
            Ok(()) => self.receive(&mut stream, &header).await,
            Err(refused) => Err(refused),
        };
        if let Err(refused) = pushed {
            tracing::warn!(%segment, %peer, error = %refused, "ingest segment refused");
            return refuse_with(stream, &refused).await;
        }
        // Claimed under the lock: either this push claims the announcement and the segment
        // stays, or the director took it back first and the segment goes again.
        if !self.expectations.claim(&segment) {
            if let Err(e) = self.store.remove(segment).await {
                tracing::debug!(%segment, error = %e, "segment of a dropped ingest not removed");
            }
            self.reporter.dropped(segment).await;
            return refuse_with(stream, &Refusal::Dropped).await;
        }
        self.metrics.received("ingest", header.size);
        self.reporter.stored(segment, header.size).await;
        write_frame(&mut stream, &IngestAck::Stored).await?;
        stream.close().await
    }

    async fn receive(&self, stream: &mut Stream, header: &IngestHeader) -> Result<(), Refusal> {
        let held = self.store.info(&header.segment);
        if held.is_some_and(|i| i.state == SegmentState::Complete) {
            // Already here (a retried ingest): drain and accept.
            let mut scratch = vec![0u8; CHUNK];
            let mut left = header.size;
            while left > 0 {
                let n = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
                (fill_within(stream, &mut scratch[..n], SILENCE).await).map_err(Refusal::Cut)?;
                left -= n as u64;
            }
            return Ok(());
        }
        receive_segment(&self.store, stream, header).await
    }
}

/// Writes exactly `header.size` bytes arriving on `stream` into `store` as `header.segment`,
/// verified against `header.hash` as they land. Nothing of a failed or short transfer
/// becomes visible.
async fn receive_segment<R: AsyncRead + Unpin>(
    store: &SegmentStore,
    stream: &mut R,
    header: &IngestHeader,
) -> Result<(), Refusal> {
    let mut writer = store
        .begin_write(header.segment, header.hash, header.size)
        .await?;
    let mut buf = BytesMut::new();
    while writer.written() < header.size {
        let n = usize::try_from(header.size - writer.written())
            .unwrap_or(CHUNK)
            .min(CHUNK);
        // The chunk written last has left the disk worker: its room is taken back.
        buf.reserve(CHUNK);
        buf.resize(n, 0);
        (fill_within(stream, &mut buf, SILENCE).await).map_err(Refusal::Cut)?;
        writer.write_chunk(buf.split().freeze()).await?;
    }
    Ok(writer.finish().await?)
}

/// Answers `Refused(reason)` and closes; the client reads it while it still writes.
async fn refuse_with(mut stream: Stream, reason: &Refusal) -> std::io::Result<()> {
    write_frame(&mut stream, &IngestAck::Refused(reason.to_string())).await?;
    // Bytes still on their way are not read: the close (or, past the wait, dropping the
    // stream) ends the exchange.
    let _ = tokio::time::timeout(CLOSE_WAIT, stream.close()).await;
    Ok(())
}

/// Segments the director told this engine to accept over `/vodmesh/ingest/1`.
///
/// A map behind a mutex: the command loop enters and withdraws announcements, and each ingest
/// task claims its own one atomically against a withdrawal (see [`Self::claim`]); that
/// check-and-take is what a lock gives for free.
#[derive(Clone, Default)]
pub(crate) struct Expectations(Arc<Mutex<HashMap<SegmentId, Expected>>>);

impl Expectations {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<SegmentId, Expected>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Announces `segments`.
    pub(crate) fn expect(&self, segments: impl IntoIterator<Item = (SegmentId, Expected)>) {
        self.map().extend(segments);
    }

    /// Takes the announcements of `segments` back.
    pub(crate) fn withdraw(&self, segments: &[SegmentId]) {
        let mut map = self.map();
        for s in segments {
            map.remove(s);
        }
    }

    /// What `segment` was announced as, if it was.
    pub(crate) fn get(&self, segment: &SegmentId) -> Option<Expected> {
        self.map().get(segment).copied()
    }

    /// Takes the announcement of `segment` for the push that just stored it: true if it was
    /// still there, false if the director withdrew it meanwhile (the push is then undone).
    pub(crate) fn claim(&self, segment: &SegmentId) -> bool {
        self.map().remove(segment).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vodmesh_proto::{ProgramId, SegmentHash, SegmentId};

    #[test]
    fn a_push_must_match_its_announcement() {
        let (client, other) = (PeerId::random(), PeerId::random());
        let hash = SegmentHash::of(b"segment");
        let header = IngestHeader {
            segment: SegmentId::new(ProgramId([2; 32]), 0),
            hash,
            size: 7,
        };
        let announced = Expected {
            from: client,
            hash,
            size: 7,
        };
        assert!(check(Some(announced), &client, &header).is_ok());
        assert!(matches!(
            check(None, &client, &header),
            Err(Refusal::NotAnnounced)
        ));
        assert!(matches!(
            check(Some(announced), &other, &header),
            Err(Refusal::OtherPeer)
        ));
        let longer = IngestHeader { size: 8, ..header };
        assert!(matches!(
            check(Some(announced), &client, &longer),
            Err(Refusal::Mismatch)
        ));
        let other_bytes = IngestHeader {
            hash: SegmentHash::of(b"other"),
            ..header
        };
        assert!(matches!(
            check(Some(announced), &client, &other_bytes),
            Err(Refusal::Mismatch)
        ));
    }

    #[tokio::test]
    async fn a_short_push_leaves_nothing_and_a_whole_one_is_stored()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let config = store::Config::new(
            dir.path().join("index.redb"),
            vec![dir.path().join("disk")],
            1 << 30,
        );
        let (store, _events) = SegmentStore::open(config).await?;
        let bytes: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let header = IngestHeader {
            segment: SegmentId::new(ProgramId([5; 32]), 1),
            hash: SegmentHash::of(&bytes),
            size: bytes.len() as u64,
        };
        // The stream ends 10 bytes early: refused, and nothing of it is visible.
        let mut short = futures::io::Cursor::new(bytes[..bytes.len() - 10].to_vec());
        let cut = receive_segment(&store, &mut short, &header).await;
        assert!(matches!(cut, Err(Refusal::Cut(_))), "{cut:?}");
        assert!(store.info(&header.segment).is_none());
        // A flipped byte: refused by the store's hash check.
        let mut flipped = bytes.clone();
        flipped[300_000] ^= 1;
        let bad = receive_segment(&store, &mut futures::io::Cursor::new(flipped), &header).await;
        assert!(
            matches!(bad, Err(Refusal::Store(store::Error::HashMismatch { .. }))),
            "{bad:?}"
        );
        assert!(store.info(&header.segment).is_none());
        // The whole segment: stored, and read back as sent.
        receive_segment(
            &store,
            &mut futures::io::Cursor::new(bytes.clone()),
            &header,
        )
        .await?;
        let back = store.read_range(header.segment, 0, header.size).await?;
        assert_eq!(back, bytes);
        store.shutdown().await?;
        Ok(())
    }
}
