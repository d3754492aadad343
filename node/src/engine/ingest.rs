//! `/vodmesh/ingest/1` on an engine: accepts segments its director announced, verifies them
//! while they arrive, commits them to the store and reports them to the director.
//!
//! A segment the store cannot take (full, a write failing) is refused at once, before or in
//! the middle of its bytes: the client reads the answer while it writes, so the refusal
//! reaches it within a round trip instead of after the whole segment (or never, when the
//! stream's window is full of bytes nobody reads). A segment whose announcement was taken
//! back while it arrived (the director dropped the ingest) is removed again once written.

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream};
use vodmesh_proto::codec::{read_frame, write_frame};
use vodmesh_proto::ingest::{IngestAck, IngestHeader, MAX_FRAME};

use super::{Expectations, Reporter};
use crate::store::SegmentStore;

/// Bytes read from the stream per store write.
const CHUNK: usize = 256 * 1024;
/// How long a refused client gets to read the refusal before the stream is dropped.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Accepts ingest streams until the engine stops; each stream in a task of its own (the
/// stream behaviour queues at most one pending inbound stream, so accepting must be prompt).
pub(crate) async fn serve(
    mut incoming: libp2p_stream::IncomingStreams,
    store: SegmentStore,
    expectations: Expectations,
    reporter: Reporter,
    metrics: crate::metrics::Metrics,
) {
    while let Some((peer, stream)) = incoming.next().await {
        let metrics = metrics.clone();
        let store = store.clone();
        let expectations = expectations.clone();
        let reporter = reporter.clone();
        tokio::spawn(async move {
            let ingest = (&store, &expectations, &reporter, &metrics);
            if let Err(e) = handle(peer, stream, ingest).await {
                tracing::debug!(%peer, error = %e, "ingest stream failed");
            }
        });
    }
}

async fn handle(
    peer: PeerId,
    mut stream: Stream,
    (store, expectations, reporter, metrics): (
        &SegmentStore,
        &Expectations,
        &Reporter,
        &crate::metrics::Metrics,
    ),
) -> std::io::Result<()> {
    let header: IngestHeader = read_frame(&mut stream, MAX_FRAME).await?;
    let segment = header.segment;
    let expected = expectations
        .lock()
        .ok()
        .and_then(|m| m.get(&segment).copied());
    let refuse = match expected {
        None => Some("segment not announced by this station's director".to_string()),
        Some(e) if e.from != peer => Some("segment announced for another peer".to_string()),
        Some(e) if e.hash != header.hash || e.size != header.size => {
            Some("segment header does not match the manifest".to_string())
        }
        Some(_) => None,
    };
    if let Some(reason) = refuse {
        return refuse_with(stream, reason).await;
    }
    if let Err(reason) = receive(&mut stream, store, &header).await {
        tracing::warn!(%segment, %peer, error = %reason, "ingest segment refused");
        return refuse_with(stream, reason).await;
    }
    // Claimed under the lock: either this push claims the announcement and the segment
    // stays, or the director took it back first and the segment goes again.
    let claimed = expectations
        .lock()
        .ok()
        .and_then(|mut m| m.remove(&segment))
        .is_some();
    if !claimed {
        if let Err(e) = store.remove(segment).await {
            tracing::debug!(%segment, error = %e, "segment of a dropped ingest not removed");
        }
        reporter.dropped(segment).await;
        let reason = "the station dropped this ingest (it was given up or expired)".to_string();
        return refuse_with(stream, reason).await;
    }
    metrics.received("ingest", header.size);
    reporter.stored(segment, header.size).await;
    write_frame(&mut stream, &IngestAck::Stored).await?;
    stream.close().await
}

/// Answers `Refused(reason)` and closes; the client reads it while it still writes.
async fn refuse_with(mut stream: Stream, reason: String) -> std::io::Result<()> {
    write_frame(&mut stream, &IngestAck::Refused(reason)).await?;
    // Bytes still on their way are not read: the close (or, past the wait, dropping the
    // stream) ends the exchange.
    let _ = tokio::time::timeout(CLOSE_WAIT, stream.close()).await;
    Ok(())
}

async fn receive(
    stream: &mut Stream,
    store: &SegmentStore,
    header: &IngestHeader,
) -> Result<(), String> {
    if store
        .info(&header.segment)
        .is_some_and(|i| i.state == crate::store::SegmentState::Complete)
    {
        // Already here (a retried ingest): drain and accept.
        let mut left = header.size;
        let mut buf = vec![0u8; CHUNK];
        while left > 0 {
            let n = (left as usize).min(CHUNK);
            stream
                .read_exact(&mut buf[..n])
                .await
                .map_err(|e| e.to_string())?;
            left -= n as u64;
        }
        return Ok(());
    }
    super::receive_segment(store, stream, header.segment, header.hash, header.size).await
}
