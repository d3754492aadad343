//! Playing a program: ask a director where each segment is, stream it from that engine,
//! verify it against the signed manifest, hand off to the next engine at the boundary.
//!
//! The next segments are fetched while the current one plays (a window of at least two, more
//! to cover the buffer), so a boundary never waits for a connection. At `Speed::Realtime`
//! segments are released by media time, a buffer (default 4 s, at least one segment) ahead of
//! the play position; a segment that arrives after its play time is a stall. The buffer is
//! what rides out a failover: a lost engine or station is replaced and the segment resumed
//! from the bytes received before the player runs dry. Every segment is checked against the
//! BLAKE3 hash in the content manager's signed manifest before a byte of it is written; at
//! `--speed max` the next segment to play goes out chunk group by chunk group as each is
//! verified against that hash (verified mode), so the first byte waits for one 16 KiB group,
//! not one segment, and no segment is held whole: each fetch hands its groups over a queue of
//! its own ([`crate::fetch::GROUPS_QUEUED`] groups), drained while its segment plays, and a
//! fetch ahead of the play position waits once its queue is full.
//!
//! The output is always a stream a player can start on: an fMP4 program's initialization
//! segment (segment 0) is written first, and again before the first media segment after
//! `--start` or a seek. An engine at `--max-streams` is a wait, never an error: the console
//! asks again and, when nothing can serve, stalls (`waits` in [`PlayStats`]).
//!
//! The decisions (window, clock, pause, seek, stalls, handoffs) are
//! [`crate::playback::Playback`]'s; fetching a segment is [`crate::fetch`]'s. [`play`] only
//! drives them: fetches run as tasks of a `JoinSet`, dropped on a seek or at the end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::Multiaddr;
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinError, JoinSet};
use vodmesh_proto::SegmentIndex;

use crate::abr::{Ladder, UnknownRendition};
pub use crate::fetch::{AttemptError, FetchError, READ_STALL, Segment};
use crate::fetch::{GROUPS_QUEUED, Group};
use crate::hedge::Due;
use crate::playback::{Action, Event, Playback, Run};
pub use crate::playback::{Control, PlayStats, Progress, Speed};
pub use crate::session::{
    Credentials, Session, SessionError, SharedToken, keep_fresh, programs, programs_json,
    published, resolve,
};

/// How often progress is reported while nothing else happens.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// Bytes gathered before they go to the output, at most: while verified groups come faster
/// than the output drains, a file is written in pieces of up to this size, not group by group
/// (each write to a file is a hop to tokio's blocking pool). Whatever is gathered goes out as
/// soon as nothing more waits. A segment's first piece goes out on its own, flushed: at a
/// boundary the player does not wait for the next segment's queue, up to a megabyte, to be
/// copied twice before its first byte.
pub const OUT_BUFFER: usize = 1024 * 1024;
/// [`OUT_BUFFER`] for a pipe written from the task ([`crate::output::Piped`]): a write there is
/// a system call that takes what the pipe has room for (64 KiB by default), so gathering a
/// megabyte first only copied every byte once more. At this size the fetches' pieces (up to
/// 64 KiB, [`crate::fetch`]) go to the pipe as they are, and smaller ones are gathered. Twelve
/// alternating rounds of `vodmesh bench --only copy --only handoff`: one console's play at a
/// median 1014 MB/s against 857 with the megabyte (eight segments in flight against six;
/// the handoff's gap p99 0.90 ms against 0.92).
pub const PIPE_OUT_BUFFER: usize = 64 * 1024;

/// Why playback stopped short. The `Display` text is the one line a user sees.
#[derive(Debug, thiserror::Error)]
pub enum PlayError {
    /// The program could not be opened.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// A segment could not be had.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The output refused the media (a player that quit, a full disk); the cause is its
    /// source, so the one line (`{:#}`) names it once.
    #[error("cannot write the media")]
    Write(#[from] std::io::Error),
    /// A fetch task failed.
    #[error("a segment fetch failed")]
    Task(#[from] JoinError),
    /// `--rendition` named none of the program's.
    #[error(transparent)]
    Rendition(#[from] UnknownRendition),
    /// `--start` at or past the program's end: nothing would be played.
    #[error(
        "--start {} s is past the end of the program ({} s long)",
        *start_ms as f64 / 1000.0,
        *duration_ms as f64 / 1000.0
    )]
    PastTheEnd {
        /// Where the play was to start, ms.
        start_ms: u64,
        /// The program's duration, ms.
        duration_ms: u64,
    },
    /// Bytes of a segment fetched and verified never reached the output: a bug, caught before
    /// the output went on past the hole.
    #[error("segment {index}: bytes {from}..{to} never reached the output (a console bug)")]
    Lost {
        /// The segment.
        index: SegmentIndex,
        /// The first byte missing.
        from: usize,
        /// The first byte there after it.
        to: usize,
    },
}

/// A fetch's result, as its task returns it: its run, its position, the rendition it was
/// fetched in, when it started and how it went.
type Done = (
    Run,
    SegmentIndex,
    Option<String>,
    Instant,
    Result<Segment, FetchError>,
);

/// Plays `program` from `start_s` seconds into `out`, gathering up to [`OUT_BUFFER`] bytes per
/// write. `controls` carries the viewer's commands (pause, seek, quit); `progress` is called
/// after every segment and twice a second. A program with renditions is played in the
/// rendition [`crate::abr`] picks per segment.
#[allow(clippy::too_many_arguments)]
pub async fn play<W: AsyncWrite + Unpin + ?Sized>(
    node: &Multiaddr,
    credentials: &Credentials,
    program: &str,
    start_s: f64,
    speed: Speed,
    out: &mut W,
    controls: Option<mpsc::Receiver<Control>>,
    progress: impl FnMut(&Progress<'_>),
) -> Result<PlayStats, PlayError> {
    let target = (node, credentials, program, None);
    let out = (out, OUT_BUFFER);
    play_rendition(target, start_s, speed, out, controls, progress).await
}

/// [`play`], with a program's rendition pinned (`--rendition`): `target` is the director,
/// the credentials, the program and the rendition's name (`None`: picked per segment); `out`
/// is written through a buffer gathering up to `gather` bytes ([`OUT_BUFFER`], or
/// [`PIPE_OUT_BUFFER`] for a [`crate::output::Piped`]).
pub async fn play_rendition<W: AsyncWrite + Unpin + ?Sized>(
    (node, credentials, program, rendition): (&Multiaddr, &Credentials, &str, Option<&str>),
    start_s: f64,
    speed: Speed,
    (out, gather): (&mut W, usize),
    mut controls: Option<mpsc::Receiver<Control>>,
    mut progress: impl FnMut(&Progress<'_>),
) -> Result<PlayStats, PlayError> {
    let began = Instant::now();
    // Flushed whenever nothing more waits to be written, so a player is never kept waiting
    // on bytes that are here.
    let mut out = tokio::io::BufWriter::with_capacity(gather, out);
    let session = Arc::new(Session::open(node, credentials, program).await?);
    // A slow start tells here whether the session (the manifest, the signer's check) or the
    // first segments took the time.
    tracing::debug!(
        ms = began.elapsed().as_millis() as u64,
        "session open: the manifest verified"
    );
    let mut ladder = Ladder::new(&session.manifest().content, rendition)?;
    if let Some(l) = &ladder {
        tracing::debug!(renditions = %l.describe(), "abr: the program's renditions");
    }
    // Playback works on positions; each fetch goes to the rendition picked for it.
    let content = Ladder::positions(&session.manifest().content);
    let start_ms = (start_s.max(0.0) * 1000.0) as u64;
    let duration_ms: u64 = (content.segments.iter())
        .map(|e| u64::from(e.duration_ms))
        .sum();
    if start_ms > 0 && start_ms >= duration_ms {
        return Err(PlayError::PastTheEnd {
            start_ms,
            duration_ms,
        });
    }
    let (mut playback, mut actions) =
        Playback::<FetchError>::start(&content, speed, start_ms, began);
    // At `--speed max` a fetch starts at every boundary: a director names the next segments
    // with each one it is asked for, so most boundaries ask none.
    if speed == Speed::Max {
        session.locate_ahead(vodmesh_proto::director::MAX_AHEAD);
    }
    // The rendition each position was fetched in, and when the last fetch ended (fetches
    // from one engine take turns: a fetch's throughput is measured from then).
    let mut fetched_in: HashMap<SegmentIndex, String> = HashMap::new();
    let mut last_done = began;
    // Each fetch is a task of its own: it streams on (and gives its engine's slot back)
    // while an earlier segment waits for its release time. Dropped with the set, their
    // streams end and the engines report the stops.
    let mut fetches: JoinSet<Done> = JoinSet::new();
    // The play clock, for the fetches' play times (a silent fetch is hedged as its time
    // nears, crate::hedge).
    let (clock, _) = watch::channel(playback.clock());
    let buffer = match speed {
        Speed::Realtime { buffer } => buffer,
        Speed::Max => Duration::ZERO,
    };
    // At `--speed max` the next segment to play goes to the output group by group as the
    // fetches verify them (`Playback::streaming_head`); `head` is how far it was written.
    let mut head: Option<(Run, SegmentIndex, usize)> = None;
    // Each fetch's queue of verified groups, by run and segment: the head's is drained as it
    // fills; a later segment's fills and holds its fetch until it is the head (its stream is
    // open and its first groups are here, so a boundary does not wait for it). Dropped with
    // their run.
    let mut queues: HashMap<(u32, SegmentIndex), mpsc::Receiver<Group>> = HashMap::new();
    // Groups written to `out` and not flushed yet.
    let mut gathered = false;
    let mut ticker = tokio::time::interval(PROGRESS_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // `Ok` at the end of the program or a quit; the statistics are taken after.
    let ended: Result<(), PlayError> = async { loop {
        for action in actions.drain(..) {
            match action {
                Action::Fetch {
                    run,
                    index,
                    play_from,
                    at_ms,
                } => {
                    let session = session.clone();
                    let due = Due::new(clock.subscribe(), at_ms, buffer);
                    let target = matches!(speed, Speed::Realtime { .. }).then_some(buffer);
                    let buffered = playback.buffered(Instant::now());
                    let (segment, name) = match ladder.as_mut() {
                        Some(l) => {
                            let bps = l.throughput();
                            let (segment, name) = l.pick(index, buffered, target);
                            tracing::debug!(%index, rendition = name, throughput_bps = ?bps.map(|b| b as u64), buffered_ms = buffered.as_millis() as u64, "abr: picked");
                            (segment, Some(name.to_string()))
                        }
                        None => (index, None),
                    };
                    // Queued by the position, as playback knows it.
                    let early = (speed == Speed::Max).then(|| {
                        let (tx, rx) = mpsc::channel(GROUPS_QUEUED);
                        queues.insert((run.id(), index), rx);
                        tx
                    });
                    fetches.spawn(async move {
                        let started = Instant::now();
                        let fetched = session.segment_due(segment, play_from, due, early).await;
                        (run, index, name, started, fetched)
                    });
                }
                Action::CancelFetches => {
                    fetches.abort_all();
                    queues.clear();
                }
                Action::Write {
                    index,
                    bytes,
                    start,
                    from,
                } => {
                    // What went out early of this segment is not written again.
                    let run = playback.run();
                    let (mut written, mut begun) = match head.take() {
                        Some((r, at, written)) if r == run && at == index => {
                            (from.max(written), true)
                        }
                        _ => (from, false),
                    };
                    // Its fetch ended: the groups it queued that did not go out yet are all
                    // here, then the bytes it kept. The first piece of a segment goes out
                    // on its own (a boundary).
                    if let Some(mut queue) = queues.remove(&(run.id(), index)) {
                        while let Ok((at, group)) = queue.try_recv() {
                            written = write_on(&mut out, written, at, &group).await?;
                            if !std::mem::replace(&mut begun, true) {
                                out.flush().await?;
                            }
                        }
                    }
                    let start = usize::try_from(start).unwrap_or(usize::MAX);
                    if written < start {
                        let (from, to) = (written, start);
                        return Err(PlayError::Lost { index, from, to });
                    }
                    out.write_all(bytes.get(written - start..).unwrap_or_default())
                        .await?;
                    out.flush().await?;
                }
                Action::Progress => {
                    let mut p = playback.progress(Instant::now(), session.waits());
                    let playing = content.segment_at(p.position_ms);
                    p.rendition = fetched_in.get(&playing).cloned();
                    progress(&p);
                }
                Action::Failed(e) => return Err(e.into()),
                Action::Finished => {
                    out.flush().await?;
                    return Ok(());
                }
            }
        }
        // A viewer's key goes before anything else, the bytes already here included: a seek,
        // a pause or a quit takes effect before more of the old position goes out.
        let pending = controls.as_mut().and_then(|rx| rx.try_recv().ok());
        // The segment whose groups go out as they come, and its queue's key.
        let streaming = playback.streaming_head();
        let key = streaming.map(|(run, next, _)| (run.id(), next));
        // Gathered while more groups were queued; out once none is.
        if gathered
            && key
                .and_then(|k| queues.get(&k))
                .is_none_or(mpsc::Receiver::is_empty)
        {
            out.flush().await?;
            gathered = false;
        }
        let release = playback.wake_at();
        // Biased: a viewer's key goes before anything else, as it always did; then a
        // segment already fetched, then fetches ending, release times and ticks.
        let event = if let Some(control) = pending {
            Event::Control(control)
        } else {
            tokio::select! {
            biased;
            control = async {
                match controls.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => match control {
                Some(control) => Event::Control(control),
                None => {
                    controls = None;
                    continue;
                }
            },
            () = std::future::ready(()), if playback.wants_step() => Event::Tick,
            group = async {
                match key.and_then(|k| queues.get_mut(&k)) {
                    Some(queue) => queue.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let Some((run, next, from)) = streaming else {
                    continue;
                };
                let key = (run.id(), next);
                let Some(group) = group else {
                    // Its fetch ended with every group taken.
                    queues.remove(&key);
                    continue;
                };
                let (mut written, begun) = match head {
                    Some((r, i, written)) if r == run && i == next => (written, true),
                    _ => (from, false),
                };
                written = write_on(&mut out, written, group.0, &group.1).await?;
                if !begun {
                    // The first piece of a segment (a boundary) goes out on its own.
                    out.flush().await?;
                }
                // And what else its queue holds now, at most a queue's worth before the
                // viewer's keys are looked at again.
                if let Some(queue) = queues.get_mut(&key) {
                    for _ in 0..GROUPS_QUEUED {
                        let Ok((at, bytes)) = queue.try_recv() else {
                            break;
                        };
                        written = write_on(&mut out, written, at, &bytes).await?;
                    }
                }
                head = Some((run, next, written));
                gathered = true;
                continue;
            }
            Some(joined) = fetches.join_next() => match joined {
                Ok((run, index, name, started, result)) => {
                    let now = Instant::now();
                    if let (Some(l), Ok(segment)) = (ladder.as_mut(), &result) {
                        l.measured(segment.size(), now - started.max(last_done));
                    }
                    last_done = now;
                    if let Some(name) = name {
                        fetched_in.insert(index, name);
                    }
                    Event::Fetched { run, index, result }
                }
                // A fetch of a run a seek ended.
                Err(e) if e.is_cancelled() => continue,
                Err(e) => return Err(e.into()),
            },
            () = async {
                match release {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            } => Event::Tick,
            _ = ticker.tick() => Event::Tick,
            }
        };
        actions = playback.handle(Instant::now(), event);
        clock.send_if_modified(|c| {
            let was = std::mem::replace(c, playback.clock());
            was != *c
        });
    } }.await;
    // A player that quit (or a reader of the pipe that has what it wanted, `| head`) closed
    // the output: the viewer ended the play, as with `q`, not a failure.
    let closed =
        matches!(&ended, Err(PlayError::Write(e)) if e.kind() == std::io::ErrorKind::BrokenPipe);
    if !closed {
        ended?;
    }
    let mut stats = playback.into_stats(session.waits());
    stats.quit |= closed;
    for name in fetched_in.into_values() {
        *stats.renditions.entry(name).or_default() += 1;
    }
    stats.rendition_switches = ladder.as_ref().map_or(0, Ladder::switches);
    Ok(stats)
}

/// Writes what of the verified bytes `bytes`, from byte `start` of a segment, continues the
/// `written` bytes of it already out; returns how many are out now. A group the output has
/// (a hedge's, or a resumed stream's, repeating what another brought) is skipped; one past
/// the end of what is out cannot come (each fetch hands its groups in order, from where the
/// playing starts), and would be left.
async fn write_on<W: AsyncWrite + Unpin>(
    out: &mut W,
    written: usize,
    start: u64,
    bytes: &[u8],
) -> Result<usize, std::io::Error> {
    let start = usize::try_from(start).unwrap_or(usize::MAX);
    let end = start.saturating_add(bytes.len());
    match bytes.get(written.wrapping_sub(start)..) {
        Some(rest) if start <= written && written < end => {
            out.write_all(rest).await?;
            Ok(end)
        }
        _ => Ok(written),
    }
}
