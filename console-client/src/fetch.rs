//! Fetching one segment from the swarm: ask a director where it is, stream it from the engine
//! it names, verify it against the signed manifest. What happens after an attempt fails is
//! [`Retry`]'s decision; this module only carries it out.
//!
//! A console holds at most one stream per engine at a time ([`EngineSlots`]): the segments it
//! fetches ahead take an engine in turn instead of competing with each other for its
//! `--max-streams` slots. An engine any fetch found unreachable is named in every fetch's
//! `Locate { avoid }` for a while ([`Recent`]), so the others move on at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::PeerId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use vodmesh_proto::codec::{read_frame, write_frame};
use vodmesh_proto::director::{ErrorCode, Request, Response, SegmentLocation};
use vodmesh_proto::manifest::{MAX_SEGMENT_SIZE, Manifest};
use vodmesh_proto::station::StationRecord;
use vodmesh_proto::stream::{self as wire, StreamReply, StreamRequest};
use vodmesh_proto::time::now_ms;
use vodmesh_proto::{SegmentHash, SegmentId};

use crate::client::DirectorClient;
use crate::playback::{Ended, Next, Recent, Retry};

/// How long a segment stream may bring no byte (and an engine may take to answer a stream
/// request) before the engine counts as stalled and the segment is resumed elsewhere: longer
/// than an engine waits for a filling copy's next bytes (5 s), so a slow copy is not mistaken
/// for a stuck engine.
pub const READ_STALL: Duration = Duration::from_secs(7);
/// How long one attempt at a segment may take in all.
const ATTEMPT_LIMIT: Duration = Duration::from_secs(60);
/// How long a first director that failed is passed over before it is asked again.
const FIRST_DOWN_FOR: Duration = Duration::from_secs(10);

/// The directors a console may ask: the one it was pointed at first, then the rest of the
/// swarm (found lazily through the first one).
pub(crate) struct Directors {
    pub(crate) first: Arc<DirectorClient>,
    others: tokio::sync::OnceCell<Vec<StationRecord>>,
    /// Connections to the other directors, opened once and kept for every later segment.
    clients: tokio::sync::Mutex<HashMap<PeerId, Arc<DirectorClient>>>,
    /// When the first director last failed to answer.
    first_down: std::sync::Mutex<Option<Instant>>,
}

impl Directors {
    /// The directors reached through `first`.
    pub(crate) fn new(first: Arc<DirectorClient>) -> Self {
        Self {
            first,
            others: Default::default(),
            clients: Default::default(),
            first_down: Default::default(),
        }
    }

    /// The other live stations of the swarm, as the first director listed them once.
    pub(crate) async fn swarm(&self) -> &[StationRecord] {
        self.others
            .get_or_init(|| async {
                match self.first.request(Request::Swarm).await {
                    Ok(Response::Swarm(list)) => list
                        .iter()
                        .filter_map(|s| StationRecord::verify(s, now_ms()).ok())
                        .filter(|r| r.director != self.first.peer())
                        .collect(),
                    _ => Vec::new(),
                }
            })
            .await
    }

    /// A kept connection to `station`'s director, opened on first use.
    async fn client(&self, station: &StationRecord) -> Option<Arc<DirectorClient>> {
        let mut clients = self.clients.lock().await;
        if let Some(c) = clients.get(&station.director) {
            return Some(c.clone());
        }
        let addr = station.addrs.first()?;
        let client = Arc::new(DirectorClient::connect(addr, None).await.ok()?);
        clients.insert(station.director, client.clone());
        Some(client)
    }

    /// Sends `request` to the director `peer` (the first one, or another station's).
    pub(crate) async fn ask_director(&self, peer: PeerId, request: Request) -> Result<Response> {
        if peer == self.first.peer() {
            return Ok(self.first.request(request).await?);
        }
        let station = self
            .swarm()
            .await
            .iter()
            .find(|s| s.director == peer)
            .cloned()
            .with_context(|| format!("director {peer} is not in the swarm"))?;
        let client = self
            .client(&station)
            .await
            .with_context(|| format!("cannot reach director {peer}"))?;
        Ok(client.request(request).await?)
    }

    /// Whether the first director failed within [`FIRST_DOWN_FOR`].
    fn first_is_down(&self) -> bool {
        self.first_down
            .lock()
            .ok()
            .and_then(|d| *d)
            .is_some_and(|at| at.elapsed() < FIRST_DOWN_FOR)
    }

    /// Asks the first director, noting when it fails.
    async fn ask_first(&self, request: Request) -> Result<Response> {
        let answer = self.first.request(request).await;
        if let Ok(mut down) = self.first_down.lock() {
            *down = answer.is_err().then(Instant::now);
        }
        if let Err(e) = &answer {
            tracing::warn!(director = %self.first.peer(), error = %e, "director did not answer; asking the rest of the swarm");
        }
        Ok(answer?)
    }

    /// Sends `request` to the first director, then to the content managers and other
    /// stations of the swarm, until one answers with something other than `NotFound`.
    ///
    /// A first director that cannot be reached (its station went down) is passed over for
    /// a while: the console carries on with the rest of the swarm, which it learned at the
    /// start, and asks the first again when nobody else answers.
    pub(crate) async fn ask(&self, request: Request) -> Result<Response> {
        let skipped = self.first_is_down();
        let first = if skipped {
            Err(anyhow::anyhow!("director {} is down", self.first.peer()))
        } else {
            self.ask_first(request.clone()).await
        };
        if let Ok(answer) = &first
            && !matches!(answer, Response::Error(e) if e.code == ErrorCode::NotFound)
        {
            return first;
        }
        let mut stations: Vec<&StationRecord> = self.swarm().await.iter().collect();
        stations.sort_by_key(|s| !(s.roles.content_manager || s.roles.home));
        // The director that answered last goes first: the next segment is likely there too.
        {
            let known = self.clients.lock().await;
            stations.sort_by_key(|s| !known.contains_key(&s.director));
        }
        for station in stations {
            let Some(client) = self.client(station).await else {
                continue;
            };
            match client.request(request.clone()).await {
                Ok(Response::Error(e)) if e.code == ErrorCode::NotFound => continue,
                Ok(answer) => return Ok(answer),
                Err(_) => continue,
            }
        }
        if skipped {
            // Nobody else answered: the first may be back.
            return self.ask_first(request).await;
        }
        first
    }
}

/// Engines this console streams from, one stream each at a time: a fetch takes the engine's
/// slot before it opens a stream and gives it back when the stream ends.
#[derive(Default)]
pub(crate) struct EngineSlots {
    slots: std::sync::Mutex<HashMap<PeerId, Arc<Semaphore>>>,
}

impl EngineSlots {
    /// Waits for this console's turn at `engine`.
    pub(crate) async fn take(&self, engine: PeerId) -> OwnedSemaphorePermit {
        let slot = match self.slots.lock() {
            Ok(mut slots) => {
                if slots.len() >= 64 {
                    // Forget engines nobody holds or waits for (the permit keeps a reference).
                    slots.retain(|_, s| Arc::strong_count(s) > 1);
                }
                slots
                    .entry(engine)
                    .or_insert_with(|| Arc::new(Semaphore::new(1)))
                    .clone()
            }
            // A panicked holder: go on without turns rather than stop playing.
            Err(_) => Arc::new(Semaphore::new(1)),
        };
        slot.acquire_owned()
            .await
            .expect("engine slots are never closed")
    }
}

/// Why one attempt at a segment did not bring it.
enum Attempt {
    /// Refused or wrong: retrying cannot help.
    Final(anyhow::Error),
    /// Ended as [`Ended`] says, with the error to report if the segment is given up.
    Ended(Ended, anyhow::Error),
}

impl Attempt {
    fn ended(ended: Ended, why: impl std::fmt::Display) -> Self {
        Self::Ended(ended, anyhow::anyhow!("{why}"))
    }
}

/// What a playing console (or the gateway) uses to fetch segments: its directors, one stream
/// per engine at a time, the engines it found unreachable, and how often it had to wait.
pub(crate) struct Fetcher {
    pub(crate) directors: Arc<Directors>,
    slots: EngineSlots,
    unreachable: std::sync::Mutex<Recent>,
    waits: AtomicU32,
}

impl Fetcher {
    /// A fetcher asking `directors`.
    pub(crate) fn new(directors: Arc<Directors>) -> Self {
        Self {
            directors,
            slots: EngineSlots::default(),
            unreachable: Default::default(),
            waits: AtomicU32::new(0),
        }
    }

    /// Busy answers (from engines or directors) this console waited out so far.
    pub(crate) fn waits(&self) -> u32 {
        self.waits.load(Ordering::Relaxed)
    }

    fn unreachable(&self) -> Vec<PeerId> {
        self.unreachable
            .lock()
            .map(|r| r.list(Instant::now()))
            .unwrap_or_default()
    }

    fn is_unreachable(&self, engine: &PeerId) -> bool {
        self.unreachable
            .lock()
            .is_ok_and(|r| r.contains(engine, Instant::now()))
    }

    /// Locates and streams one whole segment, verified; a stream lost on the way
    /// (libp2p-stream drops an inbound stream its receiver is not ready for; an engine dies or
    /// freezes; an engine hands the console over to another, claim 22) is resumed from the
    /// bytes already received, at whichever engine the director names next. Busy answers are
    /// waited out, refusals are final, and attempts that bring nothing end it ([`Retry`]).
    pub(crate) async fn fetch(
        &self,
        manifest: &Manifest,
        index: u32,
        token: Option<&[u8]>,
        play_from: u64,
    ) -> Result<(SegmentLocation, Vec<u8>)> {
        let mut retry = Retry::default();
        let mut partial = Vec::new();
        loop {
            let had = partial.len();
            let attempt = self.attempt(manifest, (index, play_from), token, &mut partial, &retry);
            let (ended, error) = match tokio::time::timeout(ATTEMPT_LIMIT, attempt).await {
                Ok(Ok(done)) => {
                    tracing::debug!(index, engine = %done.0.engine, director = %done.0.director, "segment fetched");
                    return Ok(done);
                }
                Ok(Err(Attempt::Final(e))) => return Err(e),
                Ok(Err(Attempt::Ended(ended, e))) => (ended, e),
                Err(_) => (
                    Ended::Broke {
                        progress: partial.len() > had,
                    },
                    anyhow::anyhow!("segment {index} timed out"),
                ),
            };
            if ended.is_wait() {
                self.waits.fetch_add(1, Ordering::Relaxed);
            }
            if let Ok(mut recent) = self.unreachable.lock() {
                match ended {
                    Ended::Unreachable(engine) => recent.mark(engine, Instant::now()),
                    Ended::NothingElse => recent.clear(),
                    _ => {}
                }
            }
            match retry.after(ended) {
                Next::Again(after) => {
                    tracing::debug!(index, ?ended, ?after, error = %error, "segment attempt ended; asking again");
                    if !after.is_zero() {
                        tokio::time::sleep(after).await;
                    }
                }
                Next::GiveUp => return Err(error),
            }
        }
    }

    /// Where the director sends this attempt.
    async fn locate(
        &self,
        manifest: &Manifest,
        index: u32,
        retry: &Retry,
    ) -> Result<SegmentLocation, Attempt> {
        let mut avoid = retry.avoid().to_vec();
        for engine in self.unreachable() {
            if !avoid.contains(&engine) {
                avoid.push(engine);
            }
        }
        let named = !avoid.is_empty() || !retry.busy().is_empty();
        let locate = Request::Locate {
            program: manifest.program,
            index,
            complete: false,
            avoid,
            busy: retry.busy().to_vec(),
        };
        match located(self.directors.ask(locate).await) {
            // Nothing but what this console named: those engines are tried again.
            Err(Attempt::Final(e)) if named && not_found(&e) => {
                Err(Attempt::Ended(Ended::NothingElse, e))
            }
            other => other,
        }
    }

    async fn attempt(
        &self,
        manifest: &Manifest,
        (index, play_from): (u32, u64),
        token: Option<&[u8]>,
        partial: &mut Vec<u8>,
        retry: &Retry,
    ) -> Result<(SegmentLocation, Vec<u8>), Attempt> {
        let fail = |m: String| Attempt::Final(anyhow::anyhow!(m));
        let entry = manifest
            .content
            .segment(index)
            .ok_or_else(|| fail(format!("the manifest has no segment {index}")))?;
        let mut location = self.locate(manifest, index, retry).await?;
        let client = &self.directors.first;
        let (mut s, reply, _slot) = loop {
            let engine = location.engine;
            let unreachable = |why: &dyn std::fmt::Display| {
                Attempt::ended(
                    Ended::Unreachable(engine),
                    format!("segment {index}: engine {engine}: {why}"),
                )
            };
            // In turn with this console's other fetches from the same engine.
            let slot = self.slots.take(engine).await;
            if self.is_unreachable(&engine) {
                return Err(unreachable(&"found unreachable meanwhile"));
            }
            client
                .add_addresses(engine, location.addrs.clone())
                .await
                .map_err(|e| Attempt::ended(Ended::DirectorLost, e))?;
            let mut s = client
                .open_stream(engine, wire::PROTOCOL)
                .await
                .map_err(|e| unreachable(&e))?;
            let request = StreamRequest {
                segment: SegmentId::new(manifest.program, index),
                // Resumed from what earlier attempts received.
                offset: partial.len() as u64,
                token: token.map(|t| serde_bytes::ByteBuf::from(t.to_vec())),
                play_from,
            };
            let broke = |e: &dyn std::fmt::Display| {
                Attempt::ended(
                    Ended::Broke { progress: false },
                    format!("segment {index}: {e}"),
                )
            };
            write_frame(&mut s, &request).await.map_err(|e| broke(&e))?;
            // A stream dropped before it was read (libp2p-stream's one-deep inbound queue)
            // ends here with an error: the engine is alive, so it is not avoided.
            let reply = tokio::time::timeout(
                READ_STALL,
                read_frame::<_, StreamReply>(&mut s, wire::MAX_FRAME),
            )
            .await
            .map_err(|_| unreachable(&"no answer"))?
            .map_err(|e| broke(&e))?;
            match reply {
                // Claim 21: this engine's copy has not reached our position; its director
                // names one with the whole segment, which takes us over.
                StreamReply::Swap { filled } if !location.swap => {
                    tracing::debug!(index, %engine, filled, play_from, "handed over: asking for a complete copy");
                    let complete = Request::Locate {
                        program: manifest.program,
                        index,
                        complete: true,
                        avoid: Vec::new(),
                        busy: Vec::new(),
                    };
                    location = located(
                        self.directors
                            .ask_director(location.director, complete)
                            .await,
                    )?;
                }
                StreamReply::Swap { .. } => {
                    return Err(broke(&"the engine named for a swap is still filling"));
                }
                StreamReply::Busy => {
                    return Err(Attempt::ended(
                        Ended::EngineBusy(engine),
                        format!("segment {index}: engine {engine} is busy"),
                    ));
                }
                StreamReply::Absent => {
                    return Err(Attempt::ended(
                        Ended::Absent(engine),
                        format!("segment {index} is not stored at engine {engine}"),
                    ));
                }
                // The engine's one line is the user's one line (`token expired`, ...).
                StreamReply::Refused(why) => return Err(fail(why)),
                reply @ StreamReply::Streaming { .. } => break (s, reply, slot),
            }
        };
        let engine = location.engine;
        let StreamReply::Streaming { size, hash } = reply else {
            return Err(fail(format!("segment {index}: unexpected reply {reply:?}")));
        };
        if size != entry.size || hash != entry.hash || size > MAX_SEGMENT_SIZE {
            return Err(fail(format!(
                "engine {engine} offers segment {index} that does not match the manifest"
            )));
        }
        let had = partial.len();
        partial.reserve(size as usize - partial.len());
        let mut buf = vec![0u8; 256 * 1024];
        while (partial.len() as u64) < size {
            let n = (size as usize - partial.len()).min(buf.len());
            let got = match tokio::time::timeout(READ_STALL, s.read(&mut buf[..n])).await {
                Ok(Ok(got)) => got,
                Ok(Err(e)) => {
                    return Err(Attempt::ended(
                        Ended::Broke {
                            progress: partial.len() > had,
                        },
                        format!("segment {index} broke off from engine {engine}: {e}"),
                    ));
                }
                // Connected but silent (frozen, cut off): resumed elsewhere.
                Err(_) => {
                    return Err(Attempt::ended(
                        Ended::Unreachable(engine),
                        format!("segment {index} stalled at engine {engine}"),
                    ));
                }
            };
            if got == 0 {
                // Ended early: handed over, or the engine went away. The next attempt resumes.
                return Err(Attempt::ended(
                    Ended::Broke {
                        progress: partial.len() > had,
                    },
                    format!(
                        "segment {index} ended early from engine {engine} at byte {}",
                        partial.len()
                    ),
                ));
            }
            partial.extend_from_slice(&buf[..got]);
        }
        let _ = s.close().await;
        let bytes = std::mem::take(partial);
        if SegmentHash::of(&bytes) != entry.hash {
            // Another attempt starts over at another engine; the bad bytes are never written.
            return Err(Attempt::ended(
                Ended::Absent(engine),
                format!("segment {index} from engine {engine} failed verification"),
            ));
        }
        Ok((location, bytes))
    }
}

/// Whether a director's refusal said the segment is nowhere to be had.
fn not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<NotFound>().is_some()
}

/// A director's `NotFound` answer, kept apart from other refusals.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NotFound(String);

/// What a director's answer to `Locate` means for this attempt.
fn located(answer: Result<Response>) -> Result<SegmentLocation, Attempt> {
    match answer {
        Ok(Response::Location(l)) => Ok(l),
        // Every holder busy, or too many misses being filled: a wait.
        Ok(Response::Error(e)) if e.code == ErrorCode::Busy => {
            Err(Attempt::ended(Ended::DirectorBusy, e.message))
        }
        // The station could not reach the swarm or failed: worth another try.
        Ok(Response::Error(e))
            if matches!(e.code, ErrorCode::Unavailable | ErrorCode::Internal) =>
        {
            Err(Attempt::ended(Ended::DirectorLost, e.message))
        }
        Ok(Response::Error(e)) if e.code == ErrorCode::NotFound => {
            Err(Attempt::Final(NotFound(e.message).into()))
        }
        Ok(Response::Error(e)) => Err(Attempt::Final(anyhow::anyhow!(e.message))),
        Ok(other) => Err(Attempt::Final(anyhow::anyhow!(
            "unexpected answer: {other:?}"
        ))),
        Err(e) => Err(Attempt::Ended(Ended::DirectorLost, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_stream_per_engine_at_a_time() {
        let slots = EngineSlots::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let held = slots.take(a).await;
        // Another engine is not held up.
        let other = tokio::time::timeout(Duration::from_millis(100), slots.take(b)).await;
        assert!(other.is_ok());
        // The same engine waits its turn, and gets it when the first stream ends.
        let waiting = tokio::time::timeout(Duration::from_millis(100), slots.take(a)).await;
        assert!(waiting.is_err(), "a second stream to one engine at once");
        drop(held);
        let turn = tokio::time::timeout(Duration::from_secs(5), slots.take(a)).await;
        assert!(turn.is_ok());
    }
}
