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

use futures::{AsyncWriteExt, StreamExt};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId, Stream, Swarm};
use tokio::sync::{Semaphore, mpsc};
use vodmesh_proto::codec::{read_frame, write_frame};
use vodmesh_proto::copy::{self, CopyReply, CopyRequest, MAX_FRAME};
use vodmesh_proto::manifest::MAX_SEGMENT_SIZE;
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::{Audience, TrustedIssuers};
use vodmesh_proto::{SegmentHash, SegmentId};

use super::EngineBehaviour;
use crate::control::{EngineCommand, EngineReport};
use crate::events::{self, Kind};
use crate::store::{SegmentState, SegmentStore};

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
    reports: mpsc::Sender<EngineReport>,
    fetches: Arc<Semaphore>,
    token: TokenSlot,
}

impl Copier {
    pub(crate) fn new(
        index: usize,
        peer_id: PeerId,
        control: libp2p_stream::Control,
        store: SegmentStore,
        allowed: Allowed,
        reports: mpsc::Sender<EngineReport>,
        token: TokenSlot,
    ) -> Self {
        Self {
            index,
            peer_id,
            control,
            store,
            allowed,
            reports,
            fetches: Arc::new(Semaphore::new(MAX_FETCHES)),
            token,
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
                source,
                addrs,
                held_elsewhere,
                done,
            } => {
                // The engine's behaviours keep no address book: dial with the addresses the
                // source director named (open_stream below retries until it is connected).
                if !swarm.is_connected(&source) {
                    // TCP only when there is one: dialing TCP and QUIC at once races two
                    // connections, and a stream opened on the loser never completes.
                    let tcp: Vec<Multiaddr> = addrs
                        .iter()
                        .filter(|a| a.iter().any(|p| matches!(p, Protocol::Tcp(_))))
                        .cloned()
                        .collect();
                    let addrs = if tcp.is_empty() { addrs } else { tcp };
                    let opts = DialOpts::peer_id(source)
                        .addresses(addrs)
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build();
                    if let Err(e) = swarm.dial(opts) {
                        tracing::debug!(%source, error = %e, "dial to source engine failed");
                    }
                }
                let job = Fetch {
                    token: self.token.lock().ok().and_then(|t| t.clone()),
                    segment,
                    expect,
                    source,
                    held_elsewhere,
                };
                let (index, peer_id) = (self.index, self.peer_id);
                let (control, store) = (self.control.clone(), self.store.clone());
                let (reports, fetches) = (self.reports.clone(), self.fetches.clone());
                tokio::spawn(async move {
                    let _permit = fetches.acquire_owned().await;
                    // A stream can be lost on the way (the source's inbound queue holds one
                    // stream): each attempt is bounded in time, and lost ones are retried.
                    let mut result: Result<u64, String> = Err(String::new());
                    for attempt in 1..=4u64 {
                        result = tokio::time::timeout(
                            Duration::from_secs(60),
                            fetch(control.clone(), &store, &job),
                        )
                        .await
                        .unwrap_or_else(|_| Err("copy timed out".into()));
                        match &result {
                            Ok(_) => break,
                            Err(e) if e.starts_with("source refused") => break,
                            Err(e) => {
                                tracing::debug!(index, %segment, attempt, error = %e, "copy attempt failed");
                                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                            }
                        }
                    }
                    match &result {
                        Ok(size) => {
                            let size = *size;
                            events::emit(
                                peer_id,
                                segment.program,
                                Some(segment.index.0),
                                Kind::Copied { from: source },
                            );
                            let _ = reports
                                .send(EngineReport::Stored {
                                    index,
                                    segment,
                                    size,
                                })
                                .await;
                        }
                        Err(e) => {
                            tracing::warn!(index, %segment, %source, error = %e, "copy failed");
                        }
                    }
                    let _ = done.send((segment, result.map(|_| ()))).await;
                });
                None
            }
            other => Some(other),
        }
    }
}

struct Fetch {
    token: Option<Vec<u8>>,
    segment: SegmentId,
    expect: Option<(SegmentHash, u64)>,
    source: PeerId,
    held_elsewhere: bool,
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

/// Copies the segment; returns its size.
async fn fetch(
    mut control: libp2p_stream::Control,
    store: &SegmentStore,
    job: &Fetch,
) -> Result<u64, String> {
    if let Some(held) = store.info(&job.segment)
        && held.state == SegmentState::Complete
        && job.expect.is_none_or(|(hash, _)| held.hash == hash)
    {
        return Ok(held.size);
    }
    let mut stream = open(&mut control, job.source).await?;
    let request = CopyRequest {
        segment: job.segment,
        // Claims 24, 25: every copy request carries this engine's token.
        token: job.token.clone().map(serde_bytes::ByteBuf::from),
    };
    write_frame(&mut stream, &request)
        .await
        .map_err(|e| e.to_string())?;
    let reply: CopyReply = read_frame(&mut stream, MAX_FRAME)
        .await
        .map_err(|e| format!("no copy reply: {e}"))?;
    let (hash, size) = match (reply, job.expect) {
        (CopyReply::Refused(why), _) => return Err(format!("source refused: {why}")),
        (CopyReply::Sending { size, .. }, Some((_, expected))) if size != expected => {
            return Err(format!(
                "source offers {size} bytes, the manifest says {expected}"
            ));
        }
        // Verified against the manifest's hash, not the source's claim.
        (CopyReply::Sending { .. }, Some(expected)) => expected,
        (CopyReply::Sending { size, .. }, None) if size > MAX_SEGMENT_SIZE => {
            return Err(format!("source offers {size} bytes, more than a segment"));
        }
        // A sibling engine of this station: its stored hash is the manifest's.
        (CopyReply::Sending { size, hash }, None) => (hash, size),
    };
    super::receive_segment(store, &mut stream, job.segment, hash, size).await?;
    let _ = stream.close().await;
    if job.held_elsewhere {
        store
            .set_held_elsewhere(job.segment, true)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(size)
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
    (index, reports): (usize, mpsc::Sender<EngineReport>),
) {
    let serves = Arc::new(Semaphore::new(MAX_SERVES));
    while let Some((peer, stream)) = incoming.next().await {
        let (store, allowed, serves) = (store.clone(), allowed.clone(), serves.clone());
        let trusted = trusted.clone();
        let reports = reports.clone();
        tokio::spawn(async move {
            let _permit = serves.acquire_owned().await;
            if let Err(e) = handle(
                peer_id,
                peer,
                stream,
                &store,
                &allowed,
                &trusted,
                (index, &reports),
            )
            .await
            {
                tracing::debug!(%peer, error = %e, "copy stream failed");
            }
        });
    }
}

async fn handle(
    me: PeerId,
    peer: PeerId,
    mut stream: Stream,
    store: &SegmentStore,
    allowed: &Allowed,
    trusted: &TrustedIssuers,
    (index, reports): (usize, &mpsc::Sender<EngineReport>),
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
    write_frame(
        &mut stream,
        &CopyReply::Sending {
            size: info.size,
            hash: info.hash,
        },
    )
    .await?;
    while let Some(chunk) = reader
        .read_next(CHUNK)
        .await
        .map_err(std::io::Error::other)?
    {
        stream.write_all(&chunk).await?;
    }
    stream.flush().await?;
    events::emit(
        me,
        segment.program,
        Some(segment.index.0),
        Kind::CopyServed { to: peer },
    );
    stream.close().await
}
