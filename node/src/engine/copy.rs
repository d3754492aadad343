//! `/vodmesh/copy/1` on an engine: serving segment copies to engines of other stations, and
//! fetching copies its director asks for (claim 12).
//!
//! Serving is gated: a peer may copy only while its director-approved entry in [`Allowed`]
//! lasts. The director fills it after checking, in the registry, that the requesting station
//! is live and lists the peer as one of its engines. Engine tokens (claims 24, 25) plug in at
//! [`authorize`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{PeerId, Stream, Swarm};
use tokio::sync::{Semaphore, mpsc};
use vodmesh_proto::codec::{read_frame, write_frame};
use vodmesh_proto::copy::{self, CopyReply, CopyRequest, MAX_FRAME};
use vodmesh_proto::manifest::MAX_SEGMENT_SIZE;
use vodmesh_proto::net::prefer_tcp;
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::{Audience, TrustedIssuers};
use vodmesh_proto::{SegmentHash, SegmentId};

use super::EngineBehaviour;
use crate::control::{Copied, EngineCommand, EngineReport, Source};
use crate::events::{Kind, Observer};
use crate::store::{SegmentState, SegmentStore, Writer};

/// Bytes per read from the stream or the store.
const CHUNK: usize = 256 * 1024;
/// Copies an engine fetches at once.
const MAX_FETCHES: usize = 4;
/// Copies an engine serves at once.
const MAX_SERVES: usize = 8;

/// Peers allowed to copy from this engine, with the time their permission ends.
pub(crate) type Allowed = Arc<Mutex<HashMap<PeerId, u64>>>;

/// The fetching side: takes the copy commands of the engine's command channel.
pub(crate) struct Copier {
    index: usize,
    peer_id: PeerId,
    control: libp2p_stream::Control,
    store: SegmentStore,
    allowed: Allowed,
    reporter: super::Reporter,
    fetches: Arc<Semaphore>,
    token: TokenSlot,
    /// Counts the copies and their bytes.
    pub(crate) metrics: crate::metrics::Metrics,
    /// Hears of the copies.
    pub(crate) observer: Observer,
}

impl Copier {
    pub(crate) fn new(
        index: usize,
        peer_id: PeerId,
        control: libp2p_stream::Control,
        store: SegmentStore,
        allowed: Allowed,
        reporter: super::Reporter,
        token: TokenSlot,
    ) -> Self {
        Self {
            index,
            peer_id,
            control,
            store,
            allowed,
            reporter,
            fetches: Arc::new(Semaphore::new(MAX_FETCHES)),
            token,
            metrics: Default::default(),
            observer: Default::default(),
        }
    }

    /// Handles `cmd` if it is a copy command; gives any other command back.
    pub(crate) fn take(
        &self,
        swarm: &mut Swarm<EngineBehaviour>,
        cmd: EngineCommand,
    ) -> Option<EngineCommand> {
        match cmd {
            EngineCommand::AllowCopy { peers, until_ms } => {
                if let Ok(mut m) = self.allowed.lock() {
                    let now = now_ms();
                    m.retain(|_, until| *until >= now);
                    for p in peers {
                        m.insert(p, until_ms);
                    }
                }
                None
            }
            EngineCommand::Fetch {
                segment,
                expect,
                sources,
                held_elsewhere,
                done,
            } => {
                // The engine's behaviours keep no address book: dial each source with the
                // addresses its director named (open_stream below retries until connected).
                for source in &sources {
                    dial(swarm, source);
                }
                let job = Fetch {
                    me: self.peer_id,
                    token: self.token.lock().ok().and_then(|t| t.clone()),
                    segment,
                    expect,
                    sources,
                    held_elsewhere,
                    observer: self.observer.clone(),
                };
                let (index, peer_id) = (self.index, self.peer_id);
                let (control, store) = (self.control.clone(), self.store.clone());
                let (reporter, fetches) = (self.reporter.clone(), self.fetches.clone());
                let metrics = self.metrics.clone();
                tokio::spawn(async move {
                    let _permit = fetches.acquire_owned().await;
                    let result = fetch(control, &store, &job).await;
                    match &result {
                        Ok(copied) => {
                            let copied_event = Kind::Copied {
                                from: copied.source,
                            };
                            job.observer.segment(peer_id, segment, copied_event);
                            let size = store.info(&segment).map_or(0, |i| i.size);
                            metrics.copied();
                            metrics.received("copy", size);
                            reporter.stored(segment, size).await;
                        }
                        Err(e) => {
                            tracing::warn!(index, %segment, error = %e, "copy failed from every source");
                        }
                    }
                    let _ = done.send((segment, result)).await;
                });
                None
            }
            other => Some(other),
        }
    }
}

struct Fetch {
    /// This engine.
    me: PeerId,
    token: Option<Vec<u8>>,
    segment: SegmentId,
    expect: Option<(SegmentHash, u64)>,
    sources: Vec<Source>,
    held_elsewhere: bool,
    observer: Observer,
}

/// Dials a source engine unless connected, TCP only when it has TCP addresses: dialing TCP
/// and QUIC at once races two connections, and a stream opened on the loser never completes.
fn dial(swarm: &mut Swarm<EngineBehaviour>, source: &Source) {
    if swarm.is_connected(&source.engine) {
        return;
    }
    let opts = DialOpts::peer_id(source.engine)
        .addresses(prefer_tcp(&source.addrs))
        .condition(PeerCondition::DisconnectedAndNotDialing)
        .build();
    if let Err(e) = swarm.dial(opts) {
        tracing::debug!(source = %source.engine, error = %e, "dial to source engine failed");
    }
}

async fn open(control: &mut libp2p_stream::Control, peer: PeerId) -> Result<Stream, String> {
    let mut last = String::new();
    // The source accepts one pending stream at a time: retry briefly.
    for attempt in 0..6u64 {
        match tokio::time::timeout(
            Duration::from_secs(3),
            control.open_stream(peer, copy::PROTOCOL),
        )
        .await
        {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await;
    }
    Err(format!("cannot open a copy stream to {peer}: {last}"))
}

/// Why one attempt at one source failed.
enum Attempt {
    /// The source said no, or offers something else: go to the next source.
    Refused(String),
    /// The stream broke: this source may be tried again.
    Lost(String),
    /// The source went silent (a dead link, a partition): go to the next source.
    Stalled(String),
    /// The local store failed: no source can help.
    Store(String),
}

/// A source that sends nothing for this long is given up (the next source takes over).
const READ_STALL: Duration = Duration::from_secs(5);
/// Attempts per source before the next one is tried.
const ATTEMPTS_PER_SOURCE: u32 = 2;

/// Copies the segment from the first source that can send it, resuming from the bytes
/// already received (and hashed as they landed) when a source fails midway. Nothing of a copy
/// that fails at every source becomes visible.
async fn fetch(
    mut control: libp2p_stream::Control,
    store: &SegmentStore,
    job: &Fetch,
) -> Result<Copied, String> {
    if let Some(held) = store.info(&job.segment)
        && held.state == SegmentState::Complete
        && job.expect.is_none_or(|(hash, _)| held.hash == hash)
    {
        let source = job.sources.first().map_or(PeerId::random(), |s| s.engine);
        return Ok(Copied {
            source,
            bytes: 0,
            elapsed: Duration::ZERO,
            failovers: 0,
        });
    }
    // With the size known, room is made (or found missing) before any source is asked.
    let mut writer: Option<Writer> = match job.expect {
        Some((hash, size)) => Some(
            store
                .begin_write(job.segment, hash, size)
                .await
                .map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    let mut last = "no source to copy from".to_string();
    for (n, source) in job.sources.iter().enumerate() {
        for attempt in 1..=ATTEMPTS_PER_SOURCE {
            let from = writer.as_ref().map_or(0, Writer::written);
            let started = std::time::Instant::now();
            match copy_from(&mut control, store, job, source.engine, &mut writer).await {
                Ok(()) => {
                    let Some(w) = writer.take() else {
                        return Err("copy finished without a writer".into());
                    };
                    let bytes = w.written() - from;
                    w.finish().await.map_err(|e| e.to_string())?;
                    if job.held_elsewhere {
                        store
                            .set_held_elsewhere(job.segment, true)
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    return Ok(Copied {
                        source: source.engine,
                        bytes,
                        elapsed: started.elapsed(),
                        failovers: n as u32,
                    });
                }
                Err(Attempt::Store(e)) => return Err(e),
                Err(Attempt::Refused(e) | Attempt::Stalled(e)) => {
                    tracing::debug!(segment = %job.segment, source = %source.engine, error = %e, "copy source refused or went silent");
                    last = e;
                    break;
                }
                Err(Attempt::Lost(e)) => {
                    tracing::debug!(segment = %job.segment, source = %source.engine, attempt, error = %e, "copy attempt lost");
                    last = e;
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
            }
        }
        if let Some(w) = &writer {
            tracing::info!(segment = %job.segment, failed = %source.engine, have = w.written(), "copy source failed; resuming from the next source");
        }
    }
    Err(last)
}

/// One attempt at one source: asks for the bytes from what `writer` already holds on, and
/// appends them.
async fn copy_from(
    control: &mut libp2p_stream::Control,
    store: &SegmentStore,
    job: &Fetch,
    source: PeerId,
    writer: &mut Option<Writer>,
) -> Result<(), Attempt> {
    let mut stream = open(control, source).await.map_err(Attempt::Lost)?;
    let offset = writer.as_ref().map_or(0, Writer::written);
    if offset > 0 {
        let resumed = Kind::CopyResumed {
            from: source,
            offset,
        };
        job.observer.segment(job.me, job.segment, resumed);
    }
    let request = CopyRequest {
        segment: job.segment,
        // Claims 24, 25: every copy request carries this engine's token.
        token: job.token.clone().map(serde_bytes::ByteBuf::from),
        offset,
    };
    write_frame(&mut stream, &request)
        .await
        .map_err(|e| Attempt::Lost(e.to_string()))?;
    let reply: CopyReply = tokio::time::timeout(READ_STALL, read_frame(&mut stream, MAX_FRAME))
        .await
        .map_err(|_| Attempt::Stalled("no copy reply in time".into()))?
        .map_err(|e| Attempt::Lost(format!("no copy reply: {e}")))?;
    let (size, hash) = match reply {
        CopyReply::Refused(why) => return Err(Attempt::Refused(format!("source refused: {why}"))),
        CopyReply::Sending { size, hash } => (size, hash),
    };
    // Verified against the manifest's hash, not the source's claim; a sibling engine of this
    // station (no manifest at hand) is taken at its word, its segment verified when stored.
    let (hash, size) = match job.expect {
        Some((_, expected)) if size != expected => {
            return Err(Attempt::Refused(format!(
                "source offers {size} bytes, the manifest says {expected}"
            )));
        }
        Some(expected) => expected,
        None if size > MAX_SEGMENT_SIZE => {
            return Err(Attempt::Refused(format!(
                "source offers {size} bytes, more than a segment"
            )));
        }
        None => (hash, size),
    };
    let w = match writer {
        Some(w) => w,
        None => writer.insert(
            store
                .begin_write(job.segment, hash, size)
                .await
                .map_err(|e| Attempt::Store(e.to_string()))?,
        ),
    };
    let mut buf = vec![0u8; CHUNK];
    while w.written() < size {
        let n = usize::try_from((size - w.written()).min(CHUNK as u64)).unwrap_or(CHUNK);
        tokio::time::timeout(READ_STALL, stream.read_exact(&mut buf[..n]))
            .await
            .map_err(|_| Attempt::Stalled(format!("source stalled at byte {}", w.written())))?
            .map_err(|e| Attempt::Lost(format!("stream ended at byte {}: {e}", w.written())))?;
        // Hashed as it lands; a wrong byte fails the whole copy at `finish`.
        w.write_chunk(&buf[..n])
            .await
            .map_err(|e| Attempt::Store(e.to_string()))?;
    }
    let _ = stream.close().await;
    Ok(())
}

/// This engine's engine token, filled in by the station when the auth server issues it.
pub type TokenSlot = Arc<Mutex<Option<Vec<u8>>>>;

/// Whether `peer` may copy `segment` from this engine: its director approved it (its station
/// is live and lists it as an engine), and it presents an engine token of a trusted issuer,
/// bound to itself (claims 24, 25). A station with no trusted issuer serves no copy.
fn authorize(
    peer: &PeerId,
    segment: &SegmentId,
    token: Option<&[u8]>,
    allowed: &Allowed,
    trusted: &TrustedIssuers,
) -> Result<(), String> {
    if trusted.is_empty() {
        return Err("this station trusts no token issuer and serves no copy".into());
    }
    let Some(token) = token else {
        return Err("no engine token: enroll the station first (vodmesh enroll)".into());
    };
    trusted
        .verify(
            token,
            now_ms(),
            Audience::Engine,
            Some(&segment.program),
            peer,
        )
        .map_err(|e| e.to_string())?;
    let approved = allowed
        .lock()
        .ok()
        .and_then(|m| m.get(peer).copied())
        .is_some_and(|until| until >= now_ms());
    if !approved {
        return Err("not an engine of a live station known to this station".into());
    }
    Ok(())
}

/// Serves copy streams until the engine stops.
pub(crate) async fn serve(
    mut incoming: libp2p_stream::IncomingStreams,
    peer_id: PeerId,
    store: SegmentStore,
    allowed: Allowed,
    trusted: TrustedIssuers,
    (index, reports, observer): (usize, mpsc::Sender<EngineReport>, Observer),
    rate: u64,
) {
    let serves = Arc::new(Semaphore::new(MAX_SERVES));
    while let Some((peer, stream)) = incoming.next().await {
        let (store, allowed, serves) = (store.clone(), allowed.clone(), serves.clone());
        let trusted = trusted.clone();
        let (reports, observer) = (reports.clone(), observer.clone());
        tokio::spawn(async move {
            let _permit = serves.acquire_owned().await;
            if let Err(e) = handle(
                (peer_id, &observer),
                peer,
                stream,
                &store,
                &allowed,
                &trusted,
                (index, &reports, rate),
            )
            .await
            {
                tracing::debug!(%peer, error = %e, "copy stream failed");
            }
        });
    }
}

async fn handle(
    (me, observer): (PeerId, &Observer),
    peer: PeerId,
    mut stream: Stream,
    store: &SegmentStore,
    allowed: &Allowed,
    trusted: &TrustedIssuers,
    (index, reports, rate): (usize, &mpsc::Sender<EngineReport>, u64),
) -> std::io::Result<()> {
    let request: CopyRequest = read_frame(&mut stream, MAX_FRAME).await?;
    if let Err(why) = authorize(
        &peer,
        &request.segment,
        request.token.as_ref().map(|t| t.as_slice()),
        allowed,
        trusted,
    ) {
        tracing::info!(%peer, segment = %request.segment, refused = %why, "copy refused");
        let _ = reports.try_send(EngineReport::Refused { index, copy: true });
        write_frame(&mut stream, &CopyReply::Refused(why)).await?;
        return stream.close().await;
    }
    let segment = request.segment;
    let (Some(info), Ok(mut reader)) = (store.info(&segment), store.open_read(segment).await)
    else {
        write_frame(&mut stream, &CopyReply::Refused("segment not here".into())).await?;
        return stream.close().await;
    };
    if request.offset > info.size {
        write_frame(
            &mut stream,
            &CopyReply::Refused("offset past the end of the segment".into()),
        )
        .await?;
        return stream.close().await;
    }
    write_frame(
        &mut stream,
        &CopyReply::Sending {
            size: info.size,
            hash: info.hash,
        },
    )
    .await?;
    reader.seek(request.offset);
    let started = tokio::time::Instant::now();
    let mut sent = 0u64;
    while let Some(chunk) = reader
        .read_next(CHUNK)
        .await
        .map_err(std::io::Error::other)?
    {
        stream.write_all(&chunk).await?;
        sent += chunk.len() as u64;
        if rate > 0 {
            // Paced to --copy-rate: no faster than `rate` bytes per second on average.
            let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
            tokio::time::sleep_until(due).await;
        }
    }
    stream.flush().await?;
    observer.segment(me, segment, Kind::CopyServed { to: peer });
    stream.close().await
}
