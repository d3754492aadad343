//! `/vodmesh/ingest/1` on an engine: accepts segments its director announced, verifies them
//! while they arrive, commits them to the store and reports them to the director.

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream};
use tokio::sync::mpsc;
use vodmesh_proto::codec::{read_frame, write_frame};
use vodmesh_proto::ingest::{IngestAck, IngestHeader, MAX_FRAME};

use super::Expectations;
use crate::control::EngineReport;
use crate::store::SegmentStore;

/// Bytes read from the stream per store write.
const CHUNK: usize = 256 * 1024;

/// Accepts ingest streams until the engine stops; each stream in a task of its own (the
/// stream behaviour queues at most one pending inbound stream, so accepting must be prompt).
pub(crate) async fn serve(
    mut incoming: libp2p_stream::IncomingStreams,
    index: usize,
    store: SegmentStore,
    expectations: Expectations,
    reports: mpsc::Sender<EngineReport>,
    metrics: crate::metrics::Metrics,
) {
    while let Some((peer, stream)) = incoming.next().await {
        let metrics = metrics.clone();
        let store = store.clone();
        let expectations = expectations.clone();
        let reports = reports.clone();
        tokio::spawn(async move {
            let ingest = (&store, &expectations, &reports, &metrics);
            if let Err(e) = handle(index, peer, stream, ingest).await {
                tracing::debug!(index, %peer, error = %e, "ingest stream failed");
            }
        });
    }
}

async fn handle(
    index: usize,
    peer: PeerId,
    mut stream: Stream,
    (store, expectations, reports, metrics): (
        &SegmentStore,
        &Expectations,
        &mpsc::Sender<EngineReport>,
        &crate::metrics::Metrics,
    ),
) -> std::io::Result<()> {
    let header: IngestHeader = read_frame(&mut stream, MAX_FRAME).await?;
    let expected = expectations
        .lock()
        .ok()
        .and_then(|m| m.get(&header.segment).copied());
    let refuse = match expected {
        None => Some("segment not announced by this station's director".to_string()),
        Some(e) if e.from != peer => Some("segment announced for another peer".to_string()),
        Some(e) if e.hash != header.hash || e.size != header.size => {
            Some("segment header does not match the manifest".to_string())
        }
        Some(_) => None,
    };
    if let Some(reason) = refuse {
        write_frame(&mut stream, &IngestAck::Refused(reason)).await?;
        return stream.close().await;
    }
    let ack = match receive(&mut stream, store, &header).await {
        Ok(()) => {
            if let Ok(mut m) = expectations.lock() {
                m.remove(&header.segment);
            }
            metrics.received("ingest", header.size);
            let _ = reports
                .send(EngineReport::Stored {
                    index,
                    segment: header.segment,
                    size: header.size,
                })
                .await;
            IngestAck::Stored
        }
        Err(e) => IngestAck::Refused(e),
    };
    write_frame(&mut stream, &ack).await?;
    stream.close().await
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
