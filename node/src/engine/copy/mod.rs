//! `/vodmesh/copy/1` on an engine: serving segment copies to engines of other stations
//! ([`Server`], in `serve`), and fetching the copies its director asks for ([`Copier`], claim
//! 12).
//!
//! A copy goes over a bulk connection to the source (`vodmesh_proto::net::bulk`, TLS with no
//! yamux, kept per source for the next segments) where the source takes them, else over a
//! libp2p stream; the exchange and the checks are the same on either. It asks for verified
//! mode: the source sends the segment's group leaves first, checked here against the
//! manifest's hash, and every 16 KiB group is then checked as it lands (`store::Writer::know`),
//! so a wrong byte costs one group and the next source resumes after the groups checked, and
//! consoles streaming the copy as it fills get it verified.
//!
//! Serving is gated (see `admit`): a peer may copy only with an engine token of a trusted
//! issuer (claims 24, 25) and while its director-approved entry lasts. The director approves
//! after checking, in the registry, that the requesting station is live and lists the peer as
//! one of its engines; the approvals reach the serving tasks through a watch channel, whose
//! only writer is the engine's command loop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use libp2p::identity::Keypair;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{PeerId, Stream, Swarm};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use vodmesh_proto::codec::{read_frame, write_frame};
use vodmesh_proto::copy::{self, CopyReply, CopyRequest, MAX_FRAME};
use vodmesh_proto::manifest::MAX_SEGMENT_SIZE;
use vodmesh_proto::net::bulk::Exchange;
use vodmesh_proto::net::bulk::pool::{Pool, Wire};
use vodmesh_proto::net::prefer_tcp;
use vodmesh_proto::time::now_ms;
use vodmesh_proto::verified::Leaves;
use vodmesh_proto::{SegmentHash, SegmentId};

use self::error::{Attempt, Next};
use super::peers::fill_within;
use super::{EngineBehaviour, Reporter};
use crate::control::{Copied, FetchFailed, Fetched, Source};
use crate::events::{Kind, Observer};
use crate::store::{self, SegmentState, SegmentStore, Writer};

mod error;
mod serve;

pub(crate) use error::CopyError;
pub(crate) use serve::Server;

/// Bytes per read from the stream or the store. A stall is silence on the link, not a chunk's
/// time (`peers::fill_within`), so a slow link is not one. Not larger: the target writes
/// nothing of a chunk until it is whole, so a copy still filling (which a console may stream
/// as it lands), and the point a cut copy resumes from, move by the chunk, and a paced source
/// goes quiet between chunks (1 MiB was 7 % less CPU per GB copied here, and failed
/// `a_link_cut_during_a_copy_is_survived`: reverted in f290f6a).
const CHUNK: usize = 256 * 1024;
/// Copies an engine fetches at once.
const MAX_FETCHES: usize = 4;
/// A source that sends nothing for this long is given up when it is the last one.
const READ_STALL: Duration = Duration::from_secs(5);
/// A source that sends nothing (or opens no stream) for this long is given up for the next
/// one: shorter than a console's buffer, since a console may be streaming this copy as it
/// fills.
const MOVE_ON_STALL: Duration = Duration::from_secs(2);
/// Attempts per source before the next one is tried.
const ATTEMPTS_PER_SOURCE: u32 = 2;

/// This engine's engine token, filled in by the station when the auth server issues it.
pub type TokenSlot = Arc<Mutex<Option<Vec<u8>>>>;

/// Engines allowed to copy from this one, each until a time (ms since the epoch).
type Approvals = HashMap<PeerId, u64>;

/// A copy the director asked for.
pub(crate) struct Job {
    /// The segment.
    pub(crate) segment: SegmentId,
    /// Its hash and size in the signed manifest, if the director has it.
    pub(crate) expect: Option<(SegmentHash, u64)>,
    /// The engines to copy from, cheapest first.
    pub(crate) sources: Vec<Source>,
    /// Mark the copy evictable once stored.
    pub(crate) held_elsewhere: bool,
}

/// The fetching side: runs the copies the director orders, in tasks the engine owns.
pub(crate) struct Copier {
    peer_id: PeerId,
    control: vodmesh_proto::net::streams::Control,
    store: SegmentStore,
    /// The engine's approvals of other engines; the serving tasks watch it.
    allowed: watch::Sender<Approvals>,
    reporter: Reporter,
    fetches: Arc<Semaphore>,
    token: TokenSlot,
    /// Bulk connections to sources, kept for their next copies.
    bulk: Arc<Pool>,
    /// Counts the copies and their bytes.
    pub(crate) metrics: crate::metrics::Metrics,
    /// Hears of the copies.
    pub(crate) observer: Observer,
}

impl Copier {
    /// Copies made as the engine whose identity is `key`, over `control`'s libp2p streams or
    /// over bulk connections of its own.
    pub(crate) fn new(
        (key, control): (&Keypair, vodmesh_proto::net::streams::Control),
        store: SegmentStore,
        allowed: watch::Sender<Approvals>,
        reporter: Reporter,
        token: TokenSlot,
    ) -> Self {
        Self {
            peer_id: key.public().to_peer_id(),
            control,
            store,
            allowed,
            reporter,
            fetches: Arc::new(Semaphore::new(MAX_FETCHES)),
            token,
            bulk: Arc::new(Pool::new(key.clone(), Exchange::Copy)),
            metrics: Default::default(),
            observer: Default::default(),
        }
    }

    /// Lets `peers` copy from this engine until `until_ms`; forgets approvals that ended.
    pub(crate) fn allow(&self, peers: Vec<PeerId>, until_ms: u64) {
        tracing::debug!(engine = %self.peer_id, ?peers, until_ms, "copies allowed");
        let now = now_ms();
        self.allowed.send_modify(|m| {
            m.retain(|_, until| *until >= now);
            m.extend(peers.into_iter().map(|p| (p, until_ms)));
        });
    }

    /// Starts `job` in `jobs` (at most [`MAX_FETCHES`] copy at once); its outcome goes to
    /// `done`.
    pub(crate) fn fetch(
        &self,
        swarm: &mut Swarm<EngineBehaviour>,
        jobs: &mut JoinSet<()>,
        job: Job,
        done: mpsc::Sender<(SegmentId, Fetched)>,
    ) {
        // The engine's behaviours keep no address book: dial each source with the addresses
        // its director named (`open` below retries until connected).
        for source in &job.sources {
            dial(swarm, source);
        }
        let fetch = Fetch {
            me: self.peer_id,
            token: self.token.lock().ok().and_then(|t| t.clone()),
            job,
            observer: self.observer.clone(),
            bulk: self.bulk.clone(),
        };
        let (control, store) = (self.control.clone(), self.store.clone());
        let (reporter, fetches) = (self.reporter.clone(), self.fetches.clone());
        let metrics = self.metrics.clone();
        jobs.spawn(async move {
            let _permit = fetches.acquire_owned().await;
            let segment = fetch.job.segment;
            let result = fetch.run(control, &store).await;
            match &result {
                Ok(copied) => {
                    let copied_event = Kind::Copied {
                        from: copied.source,
                    };
                    fetch.observer.segment(fetch.me, segment, copied_event);
                    let size = store.info(&segment).map_or(0, |i| i.size);
                    metrics.copied();
                    metrics.received("copy", size);
                    reporter.stored(segment, size).await;
                }
                Err(e) => {
                    tracing::warn!(engine = %reporter.engine(), %segment, error = %e, "copy failed from every source");
                }
            }
            let _ = done.send((segment, result.map_err(FetchFailed::from))).await;
        });
    }
}

/// A copy under way: the job, and what this engine presents to its sources.
struct Fetch {
    /// This engine.
    me: PeerId,
    /// Its engine token (claims 24, 25).
    token: Option<Vec<u8>>,
    job: Job,
    /// Hears of a copy resumed.
    observer: Observer,
    /// Bulk connections to sources.
    bulk: Arc<Pool>,
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

/// How long a copy waits on a silent source before it gives it up: [`MOVE_ON_STALL`] while
/// another source is left, [`READ_STALL`] for the last one (nothing else could do better).
fn patience(another_left: bool) -> Duration {
    if another_left {
        MOVE_ON_STALL
    } else {
        READ_STALL
    }
}

/// A copy stream to `peer`, within `patience`: the source queues it (or answers busy), so
/// there is nothing to retry at the same source.
async fn open(
    control: &mut vodmesh_proto::net::streams::Control,
    peer: PeerId,
    patience: Duration,
) -> Result<Stream, Attempt> {
    let source =
        match tokio::time::timeout(patience, control.open_stream(peer, copy::PROTOCOL)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => std::io::Error::other(e),
            Err(_) => std::io::Error::from(std::io::ErrorKind::TimedOut),
        };
    Err(Attempt::Open { peer, source })
}

impl Fetch {
    /// Copies the segment from the first source that can send it, resuming from the bytes
    /// already received (and hashed as they landed) when a source fails midway. Nothing of a
    /// copy that fails at every source becomes visible.
    async fn run(
        &self,
        mut control: vodmesh_proto::net::streams::Control,
        store: &SegmentStore,
    ) -> Result<Copied, CopyError> {
        let job = &self.job;
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
                corrupt: Vec::new(),
            });
        }
        // With the size known, room is made (or found missing) before any source is asked.
        let mut writer: Option<Writer> = match job.expect {
            Some((hash, size)) => Some(store.begin_write(job.segment, hash, size).await?),
            None => None,
        };
        let mut last = CopyError::NoSource;
        // The sources whose bytes the writer holds, and those whose bytes failed verification.
        let (mut sent, mut corrupt) = (Vec::new(), Vec::new());
        for (n, source) in job.sources.iter().enumerate() {
            for attempt in 1..=ATTEMPTS_PER_SOURCE {
                let from = writer.as_ref().map_or(0, Writer::written);
                let started = std::time::Instant::now();
                let copied = self
                    .copy_from(&mut control, store, source, &mut writer, {
                        patience(n + 1 < job.sources.len())
                    })
                    .await;
                if writer.as_ref().is_some_and(|w| w.written() > from) {
                    sent.push(source.engine);
                }
                let failed = match copied {
                    Ok(()) => {
                        let Some(w) = writer.take() else {
                            return Err(store::Error::Aborted(job.segment).into());
                        };
                        let bytes = w.written() - from;
                        match w.finish().await {
                            Ok(()) => {}
                            // Someone sent wrong bytes: all of them dropped, the copy
                            // starts again from nothing at the next source.
                            Err(store::Error::HashMismatch { .. }) => {
                                corrupt.append(&mut sent);
                                if let Some((hash, size)) = job.expect {
                                    writer =
                                        Some(store.begin_write(job.segment, hash, size).await?);
                                }
                                let failed = Attempt::Corrupt(source.engine);
                                tracing::warn!(segment = %job.segment, source = %source.engine, error = %failed, "copy source lied; moving on");
                                last = CopyError::Sources(failed);
                                break;
                            }
                            Err(e) => return Err(e.into()),
                        }
                        if job.held_elsewhere {
                            store.set_held_elsewhere(job.segment, true).await?;
                        }
                        return Ok(Copied {
                            source: source.engine,
                            bytes,
                            elapsed: started.elapsed(),
                            failovers: u32::try_from(n).unwrap_or(u32::MAX),
                            corrupt,
                        });
                    }
                    Err(failed) => failed,
                };
                // Its bytes from a wrong group on were not kept: the next source goes on
                // from the last group checked.
                if let Attempt::Corrupt(peer) = &failed
                    && !corrupt.contains(peer)
                {
                    corrupt.push(*peer);
                }
                let next = failed.next();
                tracing::debug!(segment = %job.segment, source = %source.engine, attempt, error = %failed, ?next, "copy attempt failed");
                last = CopyError::Sources(failed);
                match next {
                    Next::GiveUp => return Err(last),
                    Next::Move => break,
                    Next::Retry => {
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

    /// A wire to `source` for one attempt: a bulk connection where it takes them (a kept one
    /// unless `fresh`), else (or when that fails) a libp2p stream.
    async fn wire(
        &self,
        control: &mut vodmesh_proto::net::streams::Control,
        source: &Source,
        patience: Duration,
        fresh: bool,
    ) -> Result<Wire, Attempt> {
        let bulk = (source.bulk, source.addrs.as_slice());
        match self.bulk.open(source.engine, bulk, fresh, patience).await {
            Some(wire) => Ok(wire),
            None => open(control, source.engine, patience)
                .await
                .map(Wire::Stream),
        }
    }

    /// Sends `request` to `source` and reads its reply, on the wire it came on. A kept bulk
    /// connection the source closed since fails at once: a new one is made in its place.
    async fn ask(
        &self,
        control: &mut vodmesh_proto::net::streams::Control,
        source: &Source,
        request: &CopyRequest,
        patience: Duration,
    ) -> Result<(Wire, CopyReply), Attempt> {
        let mut fresh = false;
        loop {
            let mut wire = self.wire(control, source, patience, fresh).await?;
            let reused = matches!(wire, Wire::Bulk { reused: true, .. });
            let asked = async {
                write_frame(&mut wire, request)
                    .await
                    .map_err(Attempt::Request)?;
                tokio::time::timeout(patience, read_frame(&mut wire, MAX_FRAME))
                    .await
                    .map_err(|_| Attempt::NoReply)?
                    .map_err(Attempt::Reply)
            };
            match asked.await {
                Ok(reply) => return Ok((wire, reply)),
                Err(Attempt::Request(e) | Attempt::Reply(e)) if reused => {
                    tracing::debug!(engine = %source.engine, error = %e, "a kept bulk connection was closed: a new one");
                    fresh = true;
                }
                Err(failed) => return Err(failed),
            }
        }
    }

    /// One attempt at one source: asks for the bytes from what `writer` already holds on,
    /// and appends them.
    async fn copy_from(
        &self,
        control: &mut vodmesh_proto::net::streams::Control,
        store: &SegmentStore,
        source: &Source,
        writer: &mut Option<Writer>,
        patience: Duration,
    ) -> Result<(), Attempt> {
        let job = &self.job;
        let offset = writer.as_ref().map_or(0, Writer::written);
        let request = CopyRequest {
            segment: job.segment,
            // Claims 24, 25: every copy request carries this engine's token.
            token: self.token.clone().map(serde_bytes::ByteBuf::from),
            offset,
            // Each group checked as it lands, where the source has the tree.
            verified: true,
        };
        let (mut stream, reply) = self.ask(control, source, &request, patience).await?;
        // Told once the source answered: a source that is gone resumes nothing.
        if offset > 0 {
            let resumed = Kind::CopyResumed {
                from: source.engine,
                offset,
            };
            self.observer.segment(self.me, job.segment, resumed);
        }
        let (offered, hash, verified) = match reply {
            CopyReply::Refused(why) => return Err(Attempt::Refused(why)),
            CopyReply::Sending { size, hash } => (size, hash, false),
            CopyReply::Verified { size, hash } => (size, hash, true),
        };
        let (hash, size) = accept_offer(job.expect, offered, hash)?;
        // Verified: the leaves come first, as many as the size says (at most 512 KiB, the
        // size being a segment's at most).
        let leaves = match verified {
            true => Some(read_leaves(&mut stream, (size, offset), patience).await?),
            false => None,
        };
        let w = match writer {
            Some(w) => w,
            None => writer.insert(
                store
                    .begin_write(job.segment, hash, size)
                    .await
                    .map_err(Attempt::Store)?,
            ),
        };
        if let Some(leaves) = leaves {
            // Leaves whose tree is not the segment's hash: the source lied before any byte.
            w.know(leaves).map_err(|e| stored_wrong(e, source.engine))?;
        }
        // Two stages: the next chunk is read from the stream while the disk worker writes
        // (and hashes) the one before, so the link and the disk work side by side. Two
        // buffers take turns: the one the disk worker is done with is read into next, its
        // bytes overwritten, not zeroed again (a fresh one per chunk was a memset per byte).
        let mut spare = BytesMut::new();
        let mut received = w.written();
        let mut pending: Option<Bytes> = None;
        while received < size || pending.is_some() {
            let at = received;
            let n = usize::try_from((size - at).min(CHUNK as u64)).unwrap_or(CHUNK);
            let mut buf = std::mem::take(&mut spare);
            let read = async {
                if n == 0 {
                    return Ok(None);
                }
                // Zeroes only what the buffer lacks: nothing once a whole chunk went through.
                buf.resize(n, 0);
                fill_within(&mut stream, &mut buf, patience).await.map_err(
                    |source| match source.kind() {
                        std::io::ErrorKind::TimedOut => Attempt::Stalled(at),
                        _ => Attempt::Cut { at, source },
                    },
                )?;
                Ok(Some(buf.freeze()))
            };
            // Hashed as it lands: against the leaves group by group in a verified copy (a wrong
            // group ends the attempt, the groups before it kept), else against the hash at
            // `finish` (a wrong byte fails the whole copy). The chunk's buffer comes back once
            // the store let go of it.
            let write = async {
                match pending.take() {
                    // A wrong group of a verified copy: the groups before it are kept.
                    Some(chunk) => {
                        let back = chunk.clone();
                        (w.write_chunk(chunk).await).map_err(|e| stored_wrong(e, source.engine))?;
                        Ok(back.try_into_mut().ok())
                    }
                    None => Ok(None),
                }
            };
            // A failed write is reported first: a resumed copy starts from what was written.
            let (read, written) = tokio::join!(read, write);
            spare = written?.unwrap_or_default();
            if let Some(chunk) = read? {
                received += chunk.len() as u64;
                pending = Some(chunk);
            }
        }
        // Read to the segment's end, no further: a bulk connection carries the next copy.
        self.bulk.done(source.engine, stream).await;
        Ok(())
    }
}

/// The leaves of a segment of `size` bytes, as a verified copy's source sends them before the
/// bytes from `at` on: at most a segment's worth (512 KiB), read within `patience`.
async fn read_leaves(
    stream: &mut Wire,
    (size, at): (u64, u64),
    patience: Duration,
) -> Result<Leaves, Attempt> {
    let len = usize::try_from(copy::leaves_len(size.min(MAX_SEGMENT_SIZE))).unwrap_or(0);
    let mut buf = vec![0u8; len];
    fill_within(stream, &mut buf, patience)
        .await
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::TimedOut => Attempt::Stalled(at),
            _ => Attempt::Cut { at, source },
        })?;
    // Short of one leaf per group only for a size past a segment's (read as a segment's).
    Leaves::from_bytes(size, &buf).ok_or(Attempt::TooLarge(size))
}

/// What a store failure of a copy from `source` means: a tree that is not the segment's, or a
/// group that is not the tree's, is the source's lie (the copy moves on, keeping what was
/// checked); anything else is this engine's store failing.
fn stored_wrong(e: store::Error, source: PeerId) -> Attempt {
    match e {
        store::Error::WrongTree { .. } | store::Error::GroupMismatch { .. } => {
            Attempt::Corrupt(source)
        }
        e => Attempt::Store(e),
    }
}

/// The hash and size to copy, given what the source offers: verified against the manifest's
/// hash, not the source's claim; a sibling engine of this station (no manifest at hand) is
/// taken at its word, its segment verified when it was stored.
fn accept_offer(
    expect: Option<(SegmentHash, u64)>,
    offered: u64,
    hash: SegmentHash,
) -> Result<(SegmentHash, u64), Attempt> {
    match expect {
        Some((_, expected)) if offered != expected => Err(Attempt::WrongSize { offered, expected }),
        Some(expected) => Ok(expected),
        None if offered > MAX_SEGMENT_SIZE => Err(Attempt::TooLarge(offered)),
        None => Ok((hash, offered)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_waited_on_longer_when_it_is_the_last() {
        assert_eq!(patience(true), MOVE_ON_STALL);
        assert_eq!(patience(false), READ_STALL);
        assert!(MOVE_ON_STALL < READ_STALL);
    }

    #[test]
    fn a_broken_stream_retries_the_source_a_refusal_or_silence_moves_on_the_store_stops() {
        let io = || std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let peer = PeerId::random();
        for retry in [
            Attempt::Request(io()),
            Attempt::Reply(io()),
            Attempt::Cut {
                at: 7,
                source: io(),
            },
        ] {
            assert_eq!(retry.next(), Next::Retry, "{retry}");
        }
        for next in [
            Attempt::Open { peer, source: io() },
            Attempt::NoReply,
            Attempt::Refused("not an engine of a live station".into()),
            Attempt::WrongSize {
                offered: 1,
                expected: 2,
            },
            Attempt::TooLarge(MAX_SEGMENT_SIZE + 1),
            Attempt::Stalled(9),
        ] {
            assert_eq!(next.next(), Next::Move, "{next}");
        }
        let full = Attempt::Store(store::Error::Closed);
        assert_eq!(full.next(), Next::GiveUp);
    }

    #[test]
    fn an_offer_is_held_to_the_manifest_not_to_the_source() {
        let (manifest, claimed) = (SegmentHash::of(b"manifest"), SegmentHash::of(b"claim"));
        // The manifest's hash is what the bytes are checked against, whatever the source says.
        assert_eq!(
            accept_offer(Some((manifest, 10)), 10, claimed).ok(),
            Some((manifest, 10))
        );
        assert!(matches!(
            accept_offer(Some((manifest, 10)), 11, claimed),
            Err(Attempt::WrongSize {
                offered: 11,
                expected: 10
            })
        ));
        // A sibling of this station is taken at its word, within a segment's size.
        assert_eq!(accept_offer(None, 10, claimed).ok(), Some((claimed, 10)));
        assert!(matches!(
            accept_offer(None, MAX_SEGMENT_SIZE + 1, claimed),
            Err(Attempt::TooLarge(_))
        ));
    }
}
