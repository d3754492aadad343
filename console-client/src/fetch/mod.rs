//! Fetching one segment from the swarm: ask a director where it is, stream it from the engine
//! it names, verify it against the signed manifest. What happens after an attempt fails is
//! [`Retry`]'s decision; this module only carries it out. Opening the stream at the engine
//! and reading its first answer (a hand-over, busy, absent) is [`open`]'s.
//!
//! A console holds one stream per engine at a time ([`EngineSlots`]): the segments it fetches
//! ahead take an engine in turn instead of competing with each other for its `--max-streams`
//! slots, and a segment earlier than every one streaming from that engine does not wait for
//! its turn (the one to play next is never queued behind the one after it, which over a slow
//! link or from a copy still filling lasts a whole segment). At `--speed max` a stream passes its turn on as its last
//! [`PASS_TURN_AT`] bytes come ([`Turn`]), so the next segment's stream opens while this one
//! ends rather than after it. An engine any fetch found unreachable is named in every fetch's
//! `Locate { avoid }` for a while ([`Recent`]), so the others move on at once.
//!
//! Streams are asked for in verified mode ([`vodmesh_proto::verified`]): every 16 KiB chunk
//! group is checked against the manifest's hash as it arrives, and a wrong one fails its
//! engine there, not at the segment's end. At `--speed max` each verified group is handed to
//! the player through the fetch's own queue of [`GROUPS_QUEUED`] groups ([`Early`]) and not
//! kept: a fetch whose segment is not the next to play stops reading its stream once that
//! queue is full, so a console holds per stream one queue of groups, not a segment (the time it
//! waits there is the player's, not counted against the attempt: [`limit`]). Otherwise
//! the groups are kept until the segment is whole. A copy still filling streams verified too
//! (its tree came before its bytes); one copied without its tree, or an engine of an older
//! version, streams raw bytes, kept and checked against the hash once the segment is whole.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::PeerId;
use tokio::sync::Notify;
use vodmesh_proto::director::{ErrorCode, Response, SegmentLocation};
use vodmesh_proto::manifest::Manifest;
use vodmesh_proto::stream::StreamRequest;
use vodmesh_proto::{SegmentId, SegmentIndex};

use crate::directors::{AskError, Directors};
use crate::hedge::{self, Choice, Due};
use crate::retry::{Ended, Next, Recent, Retry};

pub(crate) mod ahead;
mod bulk;
mod error;
mod limit;
mod locate;
mod open;
mod read;
use self::ahead::Ahead;
pub use self::error::{AttemptError, FetchError};
use self::read::Partial;

/// How long a segment stream may bring no byte (and an engine may take to answer a stream
/// request) before the engine counts as stalled and the segment is resumed elsewhere: longer
/// than an engine waits for a filling copy's next bytes (5 s), so a slow copy is not mistaken
/// for a stuck engine.
pub const READ_STALL: Duration = Duration::from_secs(7);
/// Fetches of one segment racing at most: the first and two hedges.
const MAX_RACING: usize = 3;
/// How long one attempt at a segment may take in all, its waits for the player not counted
/// ([`limit`]).
const ATTEMPT_LIMIT: Duration = Duration::from_secs(60);
/// Engines whose turns are remembered before those nobody holds are forgotten.
const MAX_SLOTS: usize = 64;
/// Bytes read from a stream at a time.
const READ_CHUNK: usize = 256 * 1024;
/// Bytes of a segment left to come when its stream passes its engine turn on, at `--speed
/// max`: about the time it takes to open the next stream (a locate, an open, the engine's
/// answer) at the speed one stream comes.
pub(crate) const PASS_TURN_AT: u64 = 1024 * 1024;

/// A fetch's turn at its engine ([`EngineSlots`]) while it streams. A fetch whose segment goes
/// to the output as it comes (`--speed max`, [`Early`]) passes it on once at most
/// [`PASS_TURN_AT`] bytes are left: for that tail, this console holds two of the engine's
/// streams. Otherwise the turn ends with the stream.
pub(super) struct Turn {
    permit: Option<Slot>,
    pass_early: bool,
}

impl Turn {
    /// `left` bytes of the segment are still to come.
    pub(super) fn left(&mut self, left: u64) {
        if self.pass_early && left <= PASS_TURN_AT {
            self.permit = None;
        }
    }

    /// Gives the turn back while the stream stays open: the fetch waits for the player, not
    /// for the engine, and another fetch (a retry of the segment before it) may need a turn
    /// at that engine to end the wait.
    pub(super) fn release(&mut self) {
        self.permit = None;
    }
}

/// Engines this console streams from, one stream each at a time, in the order of the
/// segments: a fetch takes its turn at the engine before it opens a stream and gives it back
/// when the stream ends. A fetch waits while a segment no later than its own streams from that
/// engine; one earlier than all of them goes at once, beside them, so the next segment to play
/// never waits for the whole stream of one after it (which began first: the fetches ahead
/// start together). At most as many streams at once as segments in flight, which an engine's
/// share of one peer's streams covers (`playback`'s compile-time check).
#[derive(Default)]
pub(crate) struct EngineSlots {
    slots: Mutex<HashMap<PeerId, Arc<Turns>>>,
}

/// One engine's turns: the segments streaming from it and those waiting (index, fetches), and
/// the wake-up of the fetches waiting when that changes.
#[derive(Default)]
struct Turns {
    state: Mutex<TurnState>,
    changed: Notify,
}

#[derive(Default)]
struct TurnState {
    streaming: BTreeMap<u32, usize>,
    waiting: BTreeMap<u32, usize>,
}

/// One more fetch of `index` in `map`.
fn count_in(map: &mut BTreeMap<u32, usize>, index: u32) {
    *map.entry(index).or_default() += 1;
}

/// One fetch of `index` fewer in `map`.
fn count_out(map: &mut BTreeMap<u32, usize>, index: u32) {
    if let Some(n) = map.get_mut(&index) {
        *n -= 1;
        if *n == 0 {
            map.remove(&index);
        }
    }
}

impl TurnState {
    /// Whether a fetch of `index` (counted among the waiting) may stream now: no earlier
    /// segment waits, and it is earlier than every one streaming.
    fn goes(&self, index: u32) -> bool {
        self.waiting
            .keys()
            .next()
            .is_none_or(|first| *first >= index)
            && self
                .streaming
                .keys()
                .next()
                .is_none_or(|first| *first > index)
    }
}

impl Turns {
    fn state(&self) -> std::sync::MutexGuard<'_, TurnState> {
        // Counter maps: a panicked holder left them whole.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A fetch's turn at an engine, for segment `index`: given back when dropped.
pub(crate) struct Slot {
    turns: Arc<Turns>,
    index: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        count_out(&mut self.turns.state().streaming, self.index);
        self.turns.changed.notify_waiters();
    }
}

/// A fetch waiting for its turn; one whose wait is dropped (the fetch given up) stops
/// counting, and the others look again.
struct Waiting<'a> {
    turns: &'a Turns,
    index: u32,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        count_out(&mut self.turns.state().waiting, self.index);
        self.turns.changed.notify_waiters();
    }
}

impl EngineSlots {
    /// Waits for this console's turn at `engine` for segment `index`: until no earlier
    /// segment waits for that engine and none up to `index` streams from it. A turn given back
    /// goes to the earliest segment waiting, whichever fetch wakes first.
    pub(crate) async fn take(&self, engine: PeerId, index: SegmentIndex) -> Slot {
        let turns = {
            let mut slots = self
                .slots
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if slots.len() >= MAX_SLOTS {
                // Forget engines nobody holds or waits for (a turn keeps a reference).
                slots.retain(|_, s| Arc::strong_count(s) > 1);
            }
            slots.entry(engine).or_default().clone()
        };
        let index = index.0;
        count_in(&mut turns.state().waiting, index);
        let waiting = Waiting {
            turns: &turns,
            index,
        };
        loop {
            // Told of every change from here on, before looking: none is missed.
            let changed = turns.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = turns.state();
                if state.goes(index) {
                    count_out(&mut state.waiting, index);
                    count_in(&mut state.streaming, index);
                    drop(state);
                    // Counted out of the waiting already, so its drop must not count it out
                    // again; and no fetch waiting may go now that could not before.
                    std::mem::forget(waiting);
                    return Slot {
                        turns: turns.clone(),
                        index,
                    };
                }
            }
            changed.await;
        }
    }
}

/// Why one attempt at a segment did not bring it.
enum Attempt {
    /// Refused or wrong: retrying cannot help.
    Final(FetchError),
    /// Ended as [`Ended`] says, with the reason to report if the segment is given up.
    Ended(Ended, AttemptError),
}

impl From<FetchError> for Attempt {
    fn from(e: FetchError) -> Self {
        Self::Final(e)
    }
}

/// One segment as a fetch brings it: where it came from and its bytes, verified.
#[derive(Debug)]
pub struct Segment {
    /// The engine that served it, and its station's director.
    pub location: SegmentLocation,
    /// The segment's bytes from byte `start` on, verified against the manifest.
    pub bytes: Vec<u8>,
    /// The byte of the segment `bytes` starts at: those before it went to the player group
    /// by group as they were verified ([`Early`], `--speed max`) and were not kept. 0 when
    /// nothing was handed out that way.
    pub start: u64,
    /// Whether every byte was verified chunk group by chunk group as it came (verified
    /// mode), rather than as a whole at the end.
    pub by_group: bool,
}

impl Segment {
    /// The segment's size: the bytes handed out as they came and those kept.
    pub fn size(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }
}

/// How an engine streams: raw bytes from the offset asked for, or verified mode from the
/// start of the chunk group holding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Raw,
    Verified { from: u64 },
}

/// Verified chunk groups handed to the player as they came, one or more in a row (up to
/// [`read::HAND_AT_MOST`] bytes): the byte of the segment they start at, and their bytes.
pub(crate) type Group = (u64, Vec<u8>);

/// Pieces of verified groups one fetch queues for the player at most (16 KiB to 64 KiB each:
/// 256 KiB to 1 MiB). The queue of the segment playing is drained as it fills; a later
/// segment's fills, and its fetch then waits ([`read::verified`]).
pub(crate) const GROUPS_QUEUED: usize = 16;

/// Where a fetch hands each verified chunk group at once, so the player gets the first bytes
/// after one group rather than one segment and the console never holds a whole segment
/// ([`crate::play`] drains the queue of the segment playing, and of a segment fetched before
/// its turn when its turn comes). Every fetch of a segment, hedges included, hands to the
/// same queue; the player skips the groups it has.
pub(crate) type Early = tokio::sync::mpsc::Sender<Group>;

/// What a fetch brought lately, shared between the fetch and the one watching it for a hedge
/// ([`crate::hedge`]): when the last byte came (or the fetch started), and where the fetch
/// is (the engine and its director; none while it asks a director).
struct Watch {
    state: Mutex<(Instant, Option<(PeerId, PeerId)>)>,
    /// Waiting for its turn at an engine this console streams from already: not silent
    /// (that stream is the engine's work; a frozen one is hedged itself).
    queued: std::sync::atomic::AtomicBool,
    /// Where verified groups go at once, if anywhere.
    early: Option<Early>,
    /// How long it waited for the player to take its groups: not its attempts' own time.
    held: limit::Held,
}

impl Watch {
    fn new(early: Option<Early>) -> Self {
        Self {
            state: Mutex::new((Instant::now(), None)),
            queued: std::sync::atomic::AtomicBool::new(false),
            early,
            held: limit::Held::default(),
        }
    }

    /// Whether the fetch waits for its turn at its engine ([`EngineSlots`]), or for the
    /// player to take its groups ([`read::verified`]); leaving the queue starts its silence
    /// afresh.
    fn queue(&self, queued: bool) {
        self.queued.store(queued, Ordering::Relaxed);
        if !queued {
            self.byte();
        }
    }

    fn is_queued(&self) -> bool {
        self.queued.load(Ordering::Relaxed)
    }

    fn byte(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.0 = Instant::now();
        }
    }

    /// The attempt is at `location`'s engine now (none: asking a director).
    fn at(&self, location: Option<&SegmentLocation>) {
        if let Ok(mut s) = self.state.lock() {
            s.1 = location.map(|l| (l.engine, l.director));
        }
    }

    fn last_byte(&self) -> Instant {
        self.state.lock().map_or_else(|_| Instant::now(), |s| s.0)
    }

    /// The engine the fetch is at, and its director.
    fn at_engine(&self) -> Option<(PeerId, PeerId)> {
        self.state.lock().ok().and_then(|s| s.1)
    }
}

/// What a playing console (or the gateway) uses to fetch segments: its directors, one stream
/// per engine at a time, the engines it found unreachable, and how often it had to wait.
pub(crate) struct Fetcher {
    pub(crate) directors: Arc<Directors>,
    /// Bulk connections to engines, kept between segments.
    bulk: bulk::Pool,
    slots: EngineSlots,
    unreachable: Mutex<Recent>,
    waits: AtomicU32,
    /// Segments named ahead by directors, and how many to ask for; shared with the asks that
    /// keep the names ahead of the fetches ([`Fetcher::refill`]).
    pub(crate) ahead: Arc<Ahead>,
}

impl Fetcher {
    /// A fetcher asking `directors`, streaming as `key` (the identity its tokens are bound to).
    pub(crate) fn new(directors: Arc<Directors>, key: libp2p::identity::Keypair) -> Self {
        Self {
            directors,
            bulk: bulk::Pool::new(key, vodmesh_proto::net::bulk::Exchange::Stream),
            slots: EngineSlots::default(),
            unreachable: Mutex::default(),
            waits: AtomicU32::new(0),
            ahead: Arc::default(),
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

    fn mark_unreachable(&self, engine: PeerId) {
        if let Ok(mut recent) = self.unreachable.lock() {
            recent.mark(engine, Instant::now());
        }
    }

    /// Fetches one whole segment, verified ([`Fetcher::fetch_once`]), to be played at `due`.
    /// When the newest fetch brings nothing as the play time nears ([`hedge::decide`]),
    /// another races it (at most [`MAX_RACING`] in all): it asks again with the engines the
    /// others wait on in `avoid` (and, when the newest waits on the first director or an
    /// engine of its station, the rest of the swarm first). The first to bring the segment
    /// wins; the others are dropped. Only when every one failed does the fetch fail, with the
    /// first one's error.
    pub(crate) async fn fetch(
        &self,
        manifest: &Manifest,
        at: (SegmentIndex, u64),
        token: Option<&[u8]>,
        mut due: Due,
        early: Option<Early>,
    ) -> Result<Segment, FetchError> {
        let index = at.0;
        let watches: [Watch; MAX_RACING] = std::array::from_fn(|_| Watch::new(early.clone()));
        let mut racing = FuturesUnordered::new();
        racing.push(self.fetch_once(manifest, at, token, Retry::default(), &watches[0]));
        let mut started = 1;
        let mut first_error = None;
        loop {
            let newest = &watches[started - 1];
            let now = Instant::now();
            let choice = match (started < MAX_RACING, newest.is_queued()) {
                (true, false) => hedge::decide(now, newest.last_byte(), due.at(), due.buffer),
                // In turn behind this console's own stream from its engine: looked at again.
                (true, true) => Choice::Wait(now + hedge::SILENCE),
                // No more racers: wait for those running.
                (false, _) => Choice::Wait(now + ATTEMPT_LIMIT),
            };
            let until = match choice {
                Choice::Hedge => {
                    let waiting: Vec<(PeerId, PeerId)> = watches[..started]
                        .iter()
                        .filter_map(Watch::at_engine)
                        .collect();
                    let slow = newest.at_engine();
                    tracing::debug!(%index, slow = ?slow.map(|(e, _)| e), racing = started + 1, "segment silent near its play time: hedged");
                    match slow {
                        // Waiting on an engine: its station's director (frozen or cut off with
                        // it, likely) is asked after the rest of the swarm.
                        Some((_, director)) => self.directors.pass_over(director),
                        // Waiting on a director: the ones silent as long are.
                        None => self.directors.pass_over_slow(hedge::SILENCE),
                    }
                    let avoid = waiting.iter().map(|(engine, _)| *engine).collect();
                    let watch = &watches[started];
                    watch.byte();
                    racing.push(self.fetch_once(
                        manifest,
                        at,
                        token,
                        Retry::avoiding(avoid),
                        watch,
                    ));
                    started += 1;
                    continue;
                }
                Choice::Wait(until) => until,
            };
            tokio::select! {
                done = racing.next() => match done {
                    Some(Ok(segment)) => {
                        if started > 1 {
                            self.passed_over(&watches[..started], &segment);
                            tracing::debug!(%index, engine = %segment.location.engine, "a race won");
                        }
                        return Ok(segment);
                    }
                    Some(Err(e)) => {
                        let e = first_error.take().unwrap_or(e);
                        if racing.is_empty() {
                            return Err(e);
                        }
                        first_error = Some(e);
                    }
                    None => {}
                },
                () = tokio::time::sleep_until(until.into()) => {}
                // Paused, resumed, restarted after a stall: the play time moved.
                () = due.changed() => {}
            }
        }
    }

    /// After a race that `won`: the engines the other racers waited on silently are passed
    /// over by this console's other fetches too.
    fn passed_over(&self, watches: &[Watch], won: &Segment) {
        let now = Instant::now();
        for watch in watches {
            if let Some((engine, _)) = watch.at_engine()
                && engine != won.location.engine
                && now.saturating_duration_since(watch.last_byte()) >= hedge::SILENCE
            {
                self.mark_unreachable(engine);
            }
        }
    }

    /// Locates and streams one whole segment, verified; a stream lost on the way (an engine
    /// dies or freezes; an engine hands the console over to another, claim 22) is resumed from the
    /// bytes already received, at whichever engine the director names next. Busy answers are
    /// waited out, refusals are final, and attempts that bring nothing end it (`retry`).
    /// Every byte, and the engine of each attempt, is told to `watch`.
    async fn fetch_once(
        &self,
        manifest: &Manifest,
        (index, play_from): (SegmentIndex, u64),
        token: Option<&[u8]>,
        mut retry: Retry,
        watch: &Watch,
    ) -> Result<Segment, FetchError> {
        let mut partial = Partial::default();
        loop {
            let had = partial.received();
            let attempt = self.attempt(
                manifest,
                (index, play_from),
                token,
                (&mut partial, watch),
                &retry,
            );
            let (ended, error) = match limit::limited(attempt, ATTEMPT_LIMIT, &watch.held).await {
                Some(Ok(done)) => {
                    tracing::debug!(%index, engine = %done.location.engine, director = %done.location.director, "segment fetched");
                    return Ok(done);
                }
                Some(Err(Attempt::Final(e))) => return Err(e),
                Some(Err(Attempt::Ended(ended, e))) => (ended, e),
                None => (
                    Ended::Broke {
                        progress: partial.received() > had,
                    },
                    AttemptError::TimedOut,
                ),
            };
            if ended.is_wait() {
                self.waits.fetch_add(1, Ordering::Relaxed);
            }
            match ended {
                Ended::Unreachable(engine) => self.mark_unreachable(engine),
                Ended::NothingElse => {
                    if let Ok(mut recent) = self.unreachable.lock() {
                        recent.clear();
                    }
                }
                _ => {}
            }
            match retry.after(ended) {
                Next::Again(after) => {
                    tracing::debug!(%index, ?ended, ?after, error = ?error, "segment attempt ended; asking again");
                    if !after.is_zero() {
                        tokio::time::sleep(after).await;
                    }
                }
                Next::GiveUp => return Err(FetchError::GaveUp { index, last: error }),
            }
        }
    }

    /// One attempt: locate, open a stream to the engine named (following a swap), and read
    /// the segment on from the bytes `partial` already holds, telling `watch` of each.
    async fn attempt(
        &self,
        manifest: &Manifest,
        (index, play_from): (SegmentIndex, u64),
        token: Option<&[u8]>,
        (partial, watch): (&mut Partial, &Watch),
        retry: &Retry,
    ) -> Result<Segment, Attempt> {
        let entry = manifest
            .content
            .segment(index.0)
            .ok_or(FetchError::NoSegment(index))?;
        watch.at(None);
        let began = Instant::now();
        let location = self.locate(manifest, (index, token), retry).await?;
        let located = began.elapsed();
        watch.at(Some(&location));
        let mut request = StreamRequest {
            segment: SegmentId::new(manifest.program, index.0),
            // Resumed from what earlier attempts received.
            offset: partial.received(),
            token: token.map(|t| serde_bytes::ByteBuf::from(t.to_vec())),
            play_from,
            verified: true,
        };
        let (mut location, mut s, mut slot, mut mode) = self
            .open(manifest, entry, (location, watch), &request)
            .await?;
        if mode == Mode::Raw && partial.bytes.len() < request.offset as usize {
            // Raw bytes are checked as a whole, and the verified bytes before them went to the
            // player without being kept: the copy is streamed from its start (the player
            // skips what it has).
            tracing::debug!(%index, engine = %location.engine, "a raw stream after bytes handed out: from the start");
            drop((s, slot));
            request.offset = partial.bytes.len() as u64;
            (location, s, slot, mode) = self
                .open(manifest, entry, (location, watch), &request)
                .await?;
        }
        let mut turn = Turn {
            permit: Some(slot),
            pass_early: watch.early.is_some(),
        };
        watch.at(Some(&location));
        let opened = began.elapsed();
        let engine = location.engine;
        let (bytes, start, by_group) = match mode {
            Mode::Raw => read::raw(entry, engine, &mut s, (partial, watch, &mut turn)).await?,
            Mode::Verified { from } => {
                let at = (engine, from);
                read::verified(entry, at, &mut s, (partial, watch, &mut turn)).await?
            }
        };
        self.bulk.done(engine, s).await;
        tracing::debug!(%index, %engine, ?located, ?opened, read = ?began.elapsed().saturating_sub(opened), "segment attempt timed");
        Ok(Segment {
            location,
            bytes,
            start,
            by_group,
        })
    }
}

/// What a director's answer to `Locate` means for this attempt.
#[allow(
    clippy::result_large_err,
    reason = "one value per failed attempt, moved once: boxing buys nothing"
)]
fn located(answer: Result<Response, AskError>) -> Result<SegmentLocation, Attempt> {
    let reply = match answer {
        Ok(Response::Location(l)) => return Ok(l),
        Ok(Response::Error(reply)) => reply,
        Ok(other) => return Err(FetchError::Unexpected(format!("{other:?}")).into()),
        Err(e) => return Err(Attempt::Ended(Ended::DirectorLost, e.into())),
    };
    match reply.code {
        // Every holder busy, or too many misses being filled: a wait.
        ErrorCode::Busy => Err(Attempt::Ended(
            Ended::DirectorBusy,
            AttemptError::Director(reply),
        )),
        // The station could not reach the swarm or failed: worth another try.
        ErrorCode::Unavailable | ErrorCode::Internal => Err(Attempt::Ended(
            Ended::DirectorLost,
            AttemptError::Director(reply),
        )),
        ErrorCode::NotFound => Err(FetchError::NotFound(reply).into()),
        _ => Err(FetchError::Refused(reply).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vodmesh_client::ClientError;
    use vodmesh_proto::director::ErrorReply;

    #[tokio::test]
    async fn one_stream_per_engine_at_a_time() {
        let slots = EngineSlots::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let held = slots.take(a, SegmentIndex(1)).await;
        // Another engine is not held up.
        let other =
            tokio::time::timeout(Duration::from_millis(100), slots.take(b, SegmentIndex(2)));
        assert!(other.await.is_ok());
        // The same engine: a later segment waits its turn, and gets it when the first stream
        // ends; so does the same segment (a second fetch of it).
        for index in [2, 1] {
            let waiting = slots.take(a, SegmentIndex(index));
            let waiting = tokio::time::timeout(Duration::from_millis(100), waiting).await;
            assert!(
                waiting.is_err(),
                "segment {index} beside segment 1 at one engine"
            );
        }
        drop(held);
        let turn = tokio::time::timeout(Duration::from_secs(5), slots.take(a, SegmentIndex(2)));
        assert!(turn.await.is_ok());
    }

    /// The next segment to play is not queued behind the one after it: the fetches ahead start
    /// together, and the later one may take the engine first.
    #[tokio::test]
    async fn an_earlier_segment_does_not_wait_for_a_later_one_at_its_engine() {
        let slots = Arc::new(EngineSlots::default());
        let a = PeerId::random();
        let five = slots.take(a, SegmentIndex(5)).await;
        let four = tokio::time::timeout(Duration::from_secs(5), slots.take(a, SegmentIndex(4)));
        let four = four.await.expect("segment 4 waited behind segment 5");
        // Segment 6 waits while 4 or 5 streams, whichever ends first.
        let six = tokio::spawn({
            let slots = slots.clone();
            async move { slots.take(a, SegmentIndex(6)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(five);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!six.is_finished(), "segment 6 beside segment 4");
        drop(four);
        let six = tokio::time::timeout(Duration::from_secs(5), six).await;
        assert!(matches!(six, Ok(Ok(_))), "segment 6 never had its turn");
    }

    /// A turn given back goes to the earliest segment waiting, not to whichever fetch wakes
    /// first: a later one would stream beside the next to play and slow it.
    #[tokio::test]
    async fn a_turn_given_back_goes_to_the_earliest_segment_waiting() {
        let slots = Arc::new(EngineSlots::default());
        let a = PeerId::random();
        let take = |index: u32| {
            let slots = slots.clone();
            tokio::spawn(async move { slots.take(a, SegmentIndex(index)).await })
        };
        let five = slots.take(a, SegmentIndex(5)).await;
        let seven = take(7);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let six = take(6);
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(five);
        let six = tokio::time::timeout(Duration::from_secs(5), six).await;
        let six = six.expect("segment 6 never had its turn");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!seven.is_finished(), "segment 7 beside segment 6");
        drop(six);
        let seven = tokio::time::timeout(Duration::from_secs(5), seven).await;
        assert!(matches!(seven, Ok(Ok(_))), "segment 7 never had its turn");
        drop(seven);
        // A fetch given up while it waits no longer holds the later ones back.
        let eight = slots.take(a, SegmentIndex(8)).await;
        let nine = take(9);
        let again = tokio::time::timeout(Duration::from_millis(50), slots.take(a, SegmentIndex(8)));
        assert!(
            again.await.is_err(),
            "a second fetch of segment 8 beside the first"
        );
        drop(eight);
        let nine = tokio::time::timeout(Duration::from_secs(5), nine).await;
        assert!(matches!(nine, Ok(Ok(_))), "segment 9 never had its turn");
    }

    #[test]
    fn a_segment_given_up_is_one_line_that_says_what_to_do_not_what_the_transport_said() {
        use libp2p::request_response::OutboundFailure;
        let closed = ClientError::Request(OutboundFailure::ConnectionClosed);
        let raw = closed.to_string();
        let lost = FetchError::GaveUp {
            index: SegmentIndex(5),
            last: AskError::Client(closed).into(),
        };
        // As the binary prints it: the error with its causes.
        let line = format!("{:#}", anyhow::Error::from(lost));
        assert!(!line.contains(&raw), "{line}");
        assert!(!line.contains("Connection was closed"), "{line}");
        assert!(line.starts_with("segment 5 could not be fetched: the director closed"));
        assert!(line.ends_with("then play again"), "{line}");
        assert_eq!(line.lines().count(), 1);
        // Opening the program: the director's address, and what to do.
        let addr: libp2p::Multiaddr = "/ip4/10.77.0.3/tcp/4001".parse().expect("a multiaddr");
        let refused = ClientError::Unreachable {
            addr: addr.clone(),
            reason: Box::new(vodmesh_client::rpc::DialFailure::TimedOut),
        };
        let line = format!(
            "{:#}",
            anyhow::Error::from(crate::play::PlayError::from(
                crate::session::SessionError::from(refused),
            ))
        );
        assert_eq!(
            line,
            format!(
                "cannot reach the director at {addr}: check that its station runs and the \
                 address (--node)"
            )
        );
        // The output refusing: its cause once.
        let full = std::io::Error::other("No space left on device (os error 28)");
        let line = format!(
            "{:#}",
            anyhow::Error::from(crate::play::PlayError::from(full))
        );
        assert_eq!(
            line,
            "cannot write the media: No space left on device (os error 28)"
        );

        let engine = PeerId::random();
        let cause = std::io::Error::other("Connection reset by peer (os error 104)");
        let broke = FetchError::GaveUp {
            index: SegmentIndex(2),
            last: AttemptError::BrokeOff {
                engine,
                at: 10,
                cause,
            },
        };
        let line = format!("{:#}", anyhow::Error::from(broke));
        assert!(!line.contains("os error"), "{line}");
        assert!(line.contains("play again later"), "{line}");
    }

    #[test]
    fn director_answers_are_waits_retries_or_final() {
        let reply = |code| Ok(Response::Error(ErrorReply::new(code, "no")));
        assert!(matches!(
            located(reply(ErrorCode::Busy)),
            Err(Attempt::Ended(Ended::DirectorBusy, _))
        ));
        assert!(matches!(
            located(reply(ErrorCode::Unavailable)),
            Err(Attempt::Ended(Ended::DirectorLost, _))
        ));
        assert!(matches!(
            located(reply(ErrorCode::NotFound)),
            Err(Attempt::Final(FetchError::NotFound(_)))
        ));
        let refused = located(reply(ErrorCode::NotPublished));
        assert!(
            matches!(&refused, Err(Attempt::Final(FetchError::Refused(r))) if r.message == "no")
        );
        let lost = located(Err(AskError::Down(PeerId::random())));
        assert!(matches!(lost, Err(Attempt::Ended(Ended::DirectorLost, _))));
    }
}
