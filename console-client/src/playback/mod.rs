//! The console's playback decisions as a state machine without I/O ([`Playback`]): which
//! segments to fetch and how many ahead (the window), when a fetched segment is written (at
//! `--speed 1`, by media time, a buffer ahead of the play position), the play clock and its
//! pause, seeks, stall detection and handoff counting.
//!
//! It takes `now` and an [`Event`] (a segment fetched, a viewer's [`Control`], a tick) and
//! returns [`Action`]s (fetch segment n, drop the fetches in flight, write these bytes,
//! report progress, finished); [`crate::play`] carries them out with tokio. Its tests run on
//! a simulated clock.
//!
//! - **Runs.** Playback is a run of segments from a start position; a seek starts a new run
//!   (the fetches of the old one are dropped, their results ignored). An fMP4 program's run
//!   starts with its init segment ([`run_segments`]).
//! - **Window.** A run fetches ahead: at `--speed max` as many segments as
//!   [`MAX_SPEED_BYTES`] hold (three to eight), at `--speed 1` enough to cover the buffer (at
//!   most eight); segments are written in order, a segment fetched early waits for those
//!   before it.
//! - **Clock.** The play position runs on the wall clock from the first segment written,
//!   which at `--speed 1` waits until the segments fetched cover the buffer (a full buffer
//!   from the start); a pause stops it. A segment is released `buffer` (at least its own length) before its
//!   play time; one fetched after its play time (plus [`STALL_SLACK`]) is a stall, and the
//!   clock restarts from it.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use vodmesh_proto::SegmentIndex;
use vodmesh_proto::director::SegmentLocation;
use vodmesh_proto::manifest::ManifestContent;

use crate::fetch::Segment;
use crate::hedge::Clock;

mod stats;
pub use self::stats::{PlayStats, Progress};

/// How late a segment may be fetched past its play time before it counts as a stall.
pub(crate) const STALL_SLACK: Duration = Duration::from_millis(50);
/// The content type of programs of plain bytes (not HLS media), which may be entered at any
/// byte.
const BYTES: &str = "application/octet-stream";
/// The most segments a run fetches ahead.
const MAX_WINDOW: u64 = 8;
// An engine serves one peer twice the window's streams at once: a console whose segments are
// all at one engine never meets that bound by itself.
const _: () = assert!(2 * MAX_WINDOW as usize <= vodmesh_proto::stream::MAX_STREAMS_PER_PEER);
/// Bytes of segments in flight at `--speed max` (the one playing and those fetched ahead), at
/// most: as many segments as this holds, at least three and at most [`MAX_WINDOW`]. A
/// segment's fetch must locate it at a director and open a stream at its engine before its
/// first byte (on a loaded 2-core machine, 1.2 ms at the median and 2.6 ms at p90 together),
/// and a 1 MiB segment plays in under 2 ms: with three in flight the next segment's stream was
/// often not open at a boundary, with more each is located several segments ahead (its stream
/// still waits for its engine's turn: one stream per engine at a time, `crate::fetch`). Eight
/// alternating rounds of `vodmesh bench --only handoff` (1 MiB segments at `--speed max`, read
/// by a blocking reader): gap p99 median 0.82 ms with six, under 1 ms in 7 rounds, against
/// 1.76 ms and none with three; eight keep up with a pipe written without the 1 MiB gathering
/// ([`crate::play::PIPE_OUT_BUFFER`]). Larger segments play longer, so fewer cover the same
/// time: a 4 MiB segment's play three in flight or six made no difference. The bound is on
/// memory too: a fetch holds at most one queue of verified groups (1 MiB,
/// `crate::fetch::GROUPS_QUEUED`), but one whose engine streams raw bytes (a copy still
/// filling that came from an engine of an older version, without its tree) holds its segment
/// whole until it is checked.
pub(crate) const MAX_SPEED_BYTES: u64 = 16 * 1024 * 1024;

/// How fast to play.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speed {
    /// By media time, `buffer` of media (at least one segment) written ahead of the play
    /// position.
    Realtime {
        /// How much media to keep ahead.
        buffer: Duration,
    },
    /// As fast as the swarm delivers.
    Max,
}

impl Speed {
    /// Real time with the default buffer of 4 s.
    pub const REALTIME: Speed = Speed::Realtime {
        buffer: Duration::from_secs(4),
    };
}

/// A viewer's command during playback (the terminal's keys, or any other front end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Pause, or resume when paused.
    TogglePause,
    /// Jump this many milliseconds forward (or back, when negative) from the play position.
    Seek(i64),
    /// Stop playing.
    Quit,
}

/// The segments a run from segment `first` writes, in order. An fMP4 program (`init`: its
/// segment 0 is the initialization segment) gets that segment first, since a player can
/// start on nothing else: at the start, after `--start`, and after every seek, which starts a
/// new run (a player reading the pipe sees the init segment again before the first media
/// segment after the jump; ffmpeg skips it as a repeated `moov` and decodes on).
pub(crate) fn run_segments(init: bool, first: SegmentIndex, count: u32) -> RunOrder {
    RunOrder {
        init: (init && first.0 > 0 && count > 0).then_some(SegmentIndex(0)),
        next: first.0,
        end: count,
    }
}

/// The segments of a run still to fetch, in order ([`run_segments`]).
#[derive(Clone, Debug)]
pub(crate) struct RunOrder {
    init: Option<SegmentIndex>,
    next: u32,
    end: u32,
}

impl Iterator for RunOrder {
    type Item = SegmentIndex;

    fn next(&mut self) -> Option<SegmentIndex> {
        if let Some(init) = self.init.take() {
            return Some(init);
        }
        (self.next < self.end).then(|| {
            self.next += 1;
            SegmentIndex(self.next - 1)
        })
    }
}

/// Where media time `at_ms` falls in `content`: the segment, and for a program of plain bytes
/// the byte within it and the media time of that byte. HLS media is entered at segment
/// boundaries (a player needs the segment's start), so there the byte is 0 and the time the
/// segment's start.
pub(crate) fn position_of(content: &ManifestContent, at_ms: u64) -> (SegmentIndex, u64, u64) {
    let index = content.segment_at(at_ms);
    let start_ms: u64 = content
        .segments
        .iter()
        .take(index.0 as usize)
        .map(|s| u64::from(s.duration_ms))
        .sum();
    let within_ms = at_ms.saturating_sub(start_ms);
    match content.segment(index) {
        Some(entry) if content.content_type == BYTES && entry.duration_ms > 0 => {
            let within_ms = within_ms.min(u64::from(entry.duration_ms));
            let byte = (u128::from(within_ms) * u128::from(entry.size)
                / u128::from(entry.duration_ms)) as u64;
            (index, byte, start_ms + within_ms)
        }
        _ => (index, 0, start_ms),
    }
}

/// Segments fetched at once: at `--speed max` as many as [`MAX_SPEED_BYTES`] hold of the
/// program's largest segment, three to eight (the next segments' locates and opens overlap the
/// one streaming, so a boundary rarely waits for a stream to open); at
/// `--speed 1` one more than it takes to fill the buffer with segments of the program's mean
/// length, at most [`MAX_WINDOW`].
pub(crate) fn window(speed: Speed, content: &ManifestContent) -> usize {
    match speed {
        Speed::Realtime { buffer } => {
            let count = content.segments.len() as u64;
            let per = (content.duration_ms / count.max(1)).max(1);
            let to_fill = (buffer.as_millis() as u64).div_ceil(per);
            to_fill.clamp(1, MAX_WINDOW - 1) as usize + 1
        }
        Speed::Max => {
            let largest = content.segments.iter().map(|s| s.size).max().unwrap_or(1);
            (MAX_SPEED_BYTES / largest.max(1)).clamp(3, MAX_WINDOW) as usize
        }
    }
}

/// A run's number: fetches of an earlier run (before a seek) are told apart by it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Run(u32);

impl Run {
    /// Its number: with the position, it keys the fetches' group queues in [`crate::play`].
    pub(crate) fn id(self) -> u32 {
        self.0
    }
}

/// What happens to playback.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "one event per segment or key, handled at once: boxing buys nothing"
)]
pub(crate) enum Event<E> {
    /// A fetch that an [`Action::Fetch`] of run `run` started ended.
    Fetched {
        /// The run that asked for it.
        run: Run,
        /// The segment.
        index: SegmentIndex,
        /// The segment, or why it could not be had.
        result: Result<Segment, E>,
    },
    /// The viewer's command.
    Control(Control),
    /// Time passed: a release time may have come, a segment fetched earlier may be next, a
    /// progress report is due.
    Tick,
}

/// What playback asks of its driver, in order.
#[derive(Debug)]
pub(crate) enum Action<E> {
    /// Start fetching segment `index`, to be played from byte `play_from` on; its result
    /// comes back as [`Event::Fetched`] with `run`.
    Fetch {
        /// The run asking.
        run: Run,
        /// The segment.
        index: SegmentIndex,
        /// The first byte that will be played (a seek into the segment).
        play_from: u64,
        /// Media time where it plays (its play time on the clock, [`Playback::clock`]).
        at_ms: u64,
    },
    /// Drop every fetch in flight (a seek, a quit): their streams end, their engines report
    /// the stops.
    CancelFetches,
    /// Write segment `index` from byte `from` on: the groups its fetch queued, then `bytes`.
    Write {
        /// The segment.
        index: SegmentIndex,
        /// The segment's bytes the fetch kept, from byte `start` on.
        bytes: Vec<u8>,
        /// The byte of the segment `bytes` starts at ([`Segment::start`]).
        start: u64,
        /// The first byte to write (a seek into the segment).
        from: usize,
    },
    /// Report progress ([`Playback::progress`]).
    Progress,
    /// A segment could not be had: playback ends with this error.
    Failed(E),
    /// Playback is over: the end of the program, or the viewer quit.
    Finished,
}

/// A segment fetched, waiting for its release time.
#[derive(Debug)]
struct Pending {
    index: SegmentIndex,
    location: SegmentLocation,
    /// The segment's bytes kept by its fetch, from byte `start` on.
    bytes: Vec<u8>,
    start: u64,
    /// The first byte to write (a seek into the segment).
    from: usize,
    duration_ms: u64,
    /// When to write it (realtime only).
    release: Option<Instant>,
}

/// The playback of one program; see the module docs.
#[derive(Debug)]
pub(crate) struct Playback<'a, E> {
    content: &'a ManifestContent,
    speed: Speed,
    window: usize,
    /// When the viewer asked to play: startup is measured from it.
    began: Instant,
    run: Run,
    /// The run's first segment, and the byte of it to start at.
    first: SegmentIndex,
    skip: u64,
    /// Media time where the run starts.
    run_start_ms: u64,
    /// Media time at the end of what was written.
    media_ms: u64,
    to_fetch: RunOrder,
    /// Fetches started and not yet written, in order.
    in_flight: VecDeque<SegmentIndex>,
    ready: HashMap<SegmentIndex, Result<Segment, E>>,
    /// (wall time, media time) of the play position, once the run's first segment is written.
    clock: Option<(Instant, u64)>,
    paused: Option<Instant>,
    pending: Option<Pending>,
    stats: PlayStats,
    engines: BTreeSet<PeerId>,
    stations: BTreeSet<PeerId>,
    /// The engine that served the last segment, and its director.
    last: Option<(PeerId, PeerId)>,
    finished: bool,
}

impl<'a, E> Playback<'a, E> {
    /// Playback of `content` at `speed` from `start_ms`, asked for at `began`; the actions
    /// that start it (the first fetches).
    pub(crate) fn start(
        content: &'a ManifestContent,
        speed: Speed,
        start_ms: u64,
        began: Instant,
    ) -> (Self, Vec<Action<E>>) {
        let mut playback = Self {
            content,
            speed,
            window: window(speed, content),
            began,
            run: Run::default(),
            first: SegmentIndex(0),
            skip: 0,
            run_start_ms: 0,
            media_ms: 0,
            to_fetch: run_segments(false, SegmentIndex(0), 0),
            in_flight: VecDeque::new(),
            ready: HashMap::new(),
            clock: None,
            paused: None,
            pending: None,
            stats: PlayStats {
                verified: true,
                ..PlayStats::default()
            },
            engines: BTreeSet::new(),
            stations: BTreeSet::new(),
            last: None,
            finished: false,
        };
        let mut out = Vec::new();
        playback.new_run(start_ms, &mut out);
        (playback, out)
    }

    /// What to do after `event` at `now`.
    pub(crate) fn handle(&mut self, now: Instant, event: Event<E>) -> Vec<Action<E>> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        match event {
            Event::Control(Control::Quit) => {
                self.stats.quit = true;
                self.finished = true;
                out.extend([Action::CancelFetches, Action::Finished]);
                return out;
            }
            Event::Control(Control::Seek(delta)) => {
                let at = self.position(now) as i64;
                let last_ms = self.content.duration_ms.saturating_sub(1) as i64;
                let to = at.saturating_add(delta).clamp(0, last_ms) as u64;
                self.stats.seeks += 1;
                out.push(Action::CancelFetches);
                self.new_run(to, &mut out);
                return out;
            }
            Event::Control(Control::TogglePause) => match self.paused.take() {
                // The clock stood still while paused.
                Some(since) => {
                    let stood = now.saturating_duration_since(since);
                    if let Some((wall, _)) = self.clock.as_mut() {
                        *wall += stood;
                    }
                    if let Some(release) = self.pending.as_mut().and_then(|p| p.release.as_mut()) {
                        *release += stood;
                    }
                }
                None => self.paused = Some(now),
            },
            Event::Fetched { run, index, result } => {
                if run == self.run && self.in_flight.contains(&index) {
                    self.ready.insert(index, result);
                }
            }
            Event::Tick => {}
        }
        self.step(now, &mut out);
        out
    }

    /// Whether a step is due at once, without waiting for an event: the next segment was
    /// fetched while an earlier one was being written, or the run has nothing left.
    pub(crate) fn wants_step(&self) -> bool {
        !self.finished
            && self.paused.is_none()
            && self.pending.is_none()
            && self
                .in_flight
                .front()
                .is_none_or(|next| self.ready.contains_key(next))
    }

    /// The segment whose verified bytes may go to the output as they arrive, before its fetch
    /// ends, with the byte of it to start at: at `--speed max`, the next one in order while
    /// nothing else waits to be written (at `--speed 1` segments are released by media time).
    pub(crate) fn streaming_head(&self) -> Option<(Run, SegmentIndex, usize)> {
        if self.speed != Speed::Max
            || self.finished
            || self.paused.is_some()
            || self.pending.is_some()
        {
            return None;
        }
        let next = *self.in_flight.front()?;
        if self.ready.contains_key(&next) {
            return None;
        }
        let from = if next == self.first { self.skip } else { 0 };
        Some((self.run, next, usize::try_from(from).unwrap_or(usize::MAX)))
    }

    /// The current run.
    pub(crate) fn run(&self) -> Run {
        self.run
    }

    /// When the segment waiting for its release time is due (none while paused).
    pub(crate) fn wake_at(&self) -> Option<Instant> {
        if self.paused.is_some() {
            return None;
        }
        self.pending.as_ref().and_then(|p| p.release)
    }

    /// The play clock as fetches see it, for their play times: none while it stands (not
    /// started, paused, `--speed max`).
    pub(crate) fn clock(&self) -> Clock {
        match self.speed {
            Speed::Realtime { .. } if self.paused.is_none() => self.clock,
            _ => None,
        }
    }

    /// Where playback stands at `now`, with `waits` busy answers waited out so far.
    pub(crate) fn progress(&mut self, now: Instant, waits: u32) -> Progress<'_> {
        self.stats.waits = waits;
        let at = self.position(now);
        Progress {
            stats: &self.stats,
            position_ms: at,
            duration_ms: self.content.duration_ms,
            buffered_ms: self.media_ms.saturating_sub(at),
            engine: self.last,
            paused: self.paused.is_some(),
            rendition: None,
        }
    }

    /// Media written ahead of the play position at `now`.
    pub(crate) fn buffered(&self, now: Instant) -> Duration {
        Duration::from_millis(self.media_ms.saturating_sub(self.position(now)))
    }

    /// The statistics of the whole playback, with `waits` busy answers waited out.
    pub(crate) fn into_stats(self, waits: u32) -> PlayStats {
        PlayStats {
            waits,
            engines: self.engines.iter().map(ToString::to_string).collect(),
            stations: self.stations.iter().map(ToString::to_string).collect(),
            ..self.stats
        }
    }

    /// Starts a run at media time `start_ms`: from its segment (and byte), clock stopped.
    fn new_run(&mut self, start_ms: u64, out: &mut Vec<Action<E>>) {
        let (first, skip, media_ms) = position_of(self.content, start_ms);
        let count = self.content.segments.len() as u32;
        self.run = Run(self.run.0.wrapping_add(1));
        self.first = first;
        self.skip = skip;
        self.run_start_ms = media_ms;
        self.media_ms = media_ms;
        self.to_fetch = run_segments(self.content.has_init_segment(), first, count);
        self.in_flight.clear();
        self.ready.clear();
        self.clock = None;
        self.paused = None;
        self.pending = None;
        self.refill(out);
    }

    /// Media time where segment `index` of the run starts playing: the run's start for its
    /// first segment (and the init segment before it).
    fn start_ms(&self, index: SegmentIndex) -> u64 {
        let start: u64 = self
            .content
            .segments
            .iter()
            .take(index.0 as usize)
            .map(|s| u64::from(s.duration_ms))
            .sum();
        start.max(self.run_start_ms)
    }

    /// Starts fetches up to the window.
    fn refill(&mut self, out: &mut Vec<Action<E>>) {
        while self.in_flight.len() < self.window {
            let Some(index) = self.to_fetch.next() else {
                break;
            };
            self.in_flight.push_back(index);
            let play_from = if index == self.first { self.skip } else { 0 };
            out.push(Action::Fetch {
                run: self.run,
                index,
                play_from,
                at_ms: self.start_ms(index),
            });
        }
    }

    /// One step: the next segment in order, once fetched, is taken up; the segment taken up
    /// is written when its release time has come; progress is reported (except when a
    /// segment was just taken up to wait for its release time).
    fn step(&mut self, now: Instant, out: &mut Vec<Action<E>>) {
        if self.paused.is_none() && self.pending.is_none() {
            self.refill(out);
            let Some(next) = self.in_flight.front().copied() else {
                self.finished = true;
                out.push(Action::Finished);
                return;
            };
            if let Some(result) = self.ready.remove(&next) {
                self.in_flight.pop_front();
                match result {
                    Ok(segment) => {
                        if self.take_up(now, next, segment) {
                            return;
                        }
                    }
                    Err(e) => {
                        self.finished = true;
                        out.push(Action::Failed(e));
                        return;
                    }
                }
            }
        }
        let due = (self.pending.as_ref())
            .is_some_and(|p| p.release.is_none_or(|r| r <= now) && self.prebuffered(p));
        if self.paused.is_none()
            && due
            && let Some(p) = self.pending.take()
        {
            self.write(now, p, out);
            self.refill(out);
        }
        out.push(Action::Progress);
    }

    /// Whether the run may start its clock with `pending` (its first segment): at `--speed
    /// 1` only once the segments fetched from it on, in order, cover the buffer (or all in
    /// flight are fetched, or one failed). A run starts on a full buffer, as a player does,
    /// so a fetch that fails among the first segments has the whole buffer to be hedged or
    /// retried in, not one segment.
    fn prebuffered(&self, pending: &Pending) -> bool {
        let Speed::Realtime { buffer } = self.speed else {
            return true;
        };
        if self.clock.is_some() {
            return true;
        }
        let want = buffer.as_millis() as u64;
        let mut have = pending.duration_ms;
        for index in &self.in_flight {
            if have >= want {
                return true;
            }
            match self.ready.get(index) {
                Some(Ok(_)) => {
                    have += (self.content.segment(index.0)).map_or(0, |e| u64::from(e.duration_ms));
                }
                Some(Err(_)) => return true,
                None => return false,
            }
        }
        // The window is all fetched: nothing more comes before the clock starts.
        true
    }

    /// Takes up segment `index`, fetched, to be written: where a seek entered it, how long it
    /// plays, when it is released, and whether it came too late (a stall). Whether it waits
    /// for a release time.
    fn take_up(&mut self, now: Instant, index: SegmentIndex, segment: Segment) -> bool {
        let size = segment.size();
        let mut duration_ms = self
            .content
            .segment(index.0)
            .map_or(0, |e| u64::from(e.duration_ms));
        let mut from = 0;
        if index == self.first && self.skip > 0 {
            // Entered mid-segment: only the rest of it plays.
            from = self.skip.min(size) as usize;
            duration_ms = duration_ms * (size - from as u64) / size.max(1);
        }
        if segment.location.swap {
            self.stats.swaps += 1;
        }
        let mut release = None;
        if let Speed::Realtime { buffer } = self.speed
            && let Some((wall, at_ms)) = self.clock
        {
            // Play position of this segment's start on the wall clock.
            let due = wall + Duration::from_millis(self.media_ms.saturating_sub(at_ms));
            if now > due + STALL_SLACK {
                self.stats.stalls += 1;
                let waited = now.saturating_duration_since(due).as_millis() as u64;
                self.stats.longest_stall_ms = self.stats.longest_stall_ms.max(waited);
                self.clock = Some((now, self.media_ms));
            } else {
                // Keep the buffer (at least this segment) ahead of the position.
                let ahead = buffer.max(Duration::from_millis(duration_ms));
                release = due.checked_sub(ahead).filter(|r| *r > now);
            }
        }
        self.pending = Some(Pending {
            index,
            location: segment.location,
            bytes: segment.bytes,
            start: segment.start,
            from,
            duration_ms,
            release,
        });
        release.is_some()
    }

    /// Writes segment `p` at `now`: counts it, starts the clock on a run's first segment,
    /// counts a handoff when another engine served it than the one before.
    fn write(&mut self, now: Instant, p: Pending, out: &mut Vec<Action<E>>) {
        let played = (p.start + p.bytes.len() as u64).saturating_sub(p.from as u64);
        if self.stats.segments == 0 {
            self.stats.startup_ms = now.saturating_duration_since(self.began).as_millis() as u64;
        }
        if self.clock.is_none() {
            self.clock = Some((now, self.media_ms));
        }
        let served = (p.location.engine, p.location.director);
        if self.last.is_some_and(|(engine, _)| engine != served.0) {
            self.stats.handoffs += 1;
        }
        self.last = Some(served);
        self.engines.insert(served.0);
        self.stations.insert(served.1);
        self.stats.bytes += played;
        self.stats.segments += 1;
        self.media_ms += p.duration_ms;
        out.push(Action::Write {
            index: p.index,
            bytes: p.bytes,
            start: p.start,
            from: p.from,
        });
    }

    /// The play position at `now` in media time: the clock's, never past what was written;
    /// at `--speed max`, what was written.
    fn position(&self, now: Instant) -> u64 {
        match (self.speed, self.clock) {
            (Speed::Realtime { .. }, Some((wall, at_ms))) => {
                let now = self.paused.unwrap_or(now);
                let ran = now.saturating_duration_since(wall).as_millis() as u64;
                (at_ms + ran).min(self.media_ms)
            }
            (Speed::Realtime { .. }, None) => self.run_start_ms,
            (Speed::Max, _) => self.media_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use vodmesh_proto::SegmentHash;
    use vodmesh_proto::manifest::{FMP4, SegmentEntry};

    use super::*;

    /// Fetches of `indices`, each from its first byte.
    fn from_start(indices: std::ops::Range<u32>) -> Vec<(u32, u64)> {
        indices.map(|i| (i, 0)).collect()
    }

    /// A program of `n` segments of 1 s and 1000 bytes each; fMP4 gets an init segment first.
    fn program(content_type: &str, n: u32) -> ManifestContent {
        let init = content_type == FMP4;
        let segments = (0..n + u32::from(init))
            .map(|index| SegmentEntry {
                index: index.into(),
                duration_ms: if init && index == 0 { 0 } else { 1000 },
                size: 1000,
                hash: SegmentHash([0; 32]),
            })
            .collect();
        ManifestContent {
            title: "t".into(),
            content_type: content_type.into(),
            duration_ms: u64::from(n) * 1000,
            segments,
            renditions: Vec::new(),
        }
    }

    fn location(engine: PeerId, director: PeerId) -> SegmentLocation {
        SegmentLocation::new(engine, Vec::new(), director)
    }

    /// The segments fetched, with the byte each starts at.
    fn fetches(actions: &[Action<String>]) -> Vec<(u32, u64)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Fetch {
                    index, play_from, ..
                } => Some((index.0, *play_from)),
                _ => None,
            })
            .collect()
    }

    /// The bytes written.
    fn written(actions: &[Action<String>]) -> Vec<usize> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Write {
                    bytes, start, from, ..
                } => Some(*start as usize + bytes.len() - from),
                _ => None,
            })
            .collect()
    }

    fn run_of(actions: &[Action<String>]) -> Run {
        actions
            .iter()
            .find_map(|a| match a {
                Action::Fetch { run, .. } => Some(*run),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// A test's playback and its simulated clock.
    struct Sim<'a> {
        playback: Playback<'a, String>,
        run: Run,
        t0: Instant,
        engine: PeerId,
        director: PeerId,
    }

    impl<'a> Sim<'a> {
        fn start(
            content: &'a ManifestContent,
            speed: Speed,
            start_ms: u64,
        ) -> (Self, Vec<Action<String>>) {
            let t0 = Instant::now();
            let (playback, actions) = Playback::start(content, speed, start_ms, t0);
            let sim = Self {
                playback,
                run: run_of(&actions),
                t0,
                engine: PeerId::random(),
                director: PeerId::random(),
            };
            (sim, actions)
        }

        fn at(&self, ms: u64) -> Instant {
            self.t0 + Duration::from_millis(ms)
        }

        /// Segment `index` arrives at `ms` from the current engine.
        fn fetched(&mut self, ms: u64, index: u32) -> Vec<Action<String>> {
            let event = Event::Fetched {
                run: self.run,
                index: SegmentIndex(index),
                result: Ok(Segment {
                    location: location(self.engine, self.director),
                    bytes: vec![7; 1000],
                    start: 0,
                    by_group: true,
                }),
            };
            self.playback.handle(self.at(ms), event)
        }

        fn tick(&mut self, ms: u64) -> Vec<Action<String>> {
            self.playback.handle(self.at(ms), Event::Tick)
        }

        fn control(&mut self, ms: u64, control: Control) -> Vec<Action<String>> {
            let actions = self.playback.handle(self.at(ms), Event::Control(control));
            if let Control::Seek(_) = control {
                self.run = run_of(&actions);
            }
            actions
        }
    }

    #[test]
    fn an_fmp4_run_starts_with_its_init_segment_wherever_it_starts() {
        let run = |init, first, count| {
            run_segments(init, SegmentIndex(first), count)
                .map(|i| i.0)
                .collect::<Vec<_>>()
        };
        // From the start: media time 0 falls in segment 1 (the init segment lasts 0 ms).
        assert_eq!(run(true, 1, 4), vec![0, 1, 2, 3]);
        // After --start or a seek into segment 3: the init segment again, then 3 on.
        assert_eq!(run(true, 3, 5), vec![0, 3, 4]);
        // MPEG-TS and plain bytes: from the segment sought, nothing before it.
        assert_eq!(run(false, 0, 3), vec![0, 1, 2]);
        assert_eq!(run(false, 2, 4), vec![2, 3]);
        assert_eq!(run(true, 0, 0), Vec::<u32>::new());
    }

    #[test]
    fn the_window_covers_the_buffer_and_refills_as_segments_are_written() {
        let content = program(BYTES, 20);
        assert_eq!(
            window(Speed::Max, &content),
            8,
            "small segments: at most eight"
        );
        let sized = |size: u64| {
            let mut content = program(BYTES, 20);
            content.segments.iter_mut().for_each(|s| s.size = size);
            window(Speed::Max, &content)
        };
        assert_eq!(sized(1 << 20), 8);
        assert_eq!(sized(4 << 20), 4, "16 MiB of 4 MiB segments");
        assert_eq!(sized(256 << 20), 3, "at least three");
        assert_eq!(
            window(Speed::REALTIME, &content),
            5,
            "4 s of 1 s segments, and one"
        );
        let long = Speed::Realtime {
            buffer: Duration::from_secs(60),
        };
        assert_eq!(window(long, &content), 8, "at most eight");
        let none = Speed::Realtime {
            buffer: Duration::ZERO,
        };
        assert_eq!(window(none, &content), 2, "at least one segment ahead");

        let (mut sim, first) = Sim::start(&content, Speed::Max, 0);
        let w = window(Speed::Max, &content) as u32;
        assert_eq!(fetches(&first), from_start(0..w));
        // Segment 1 first: it waits for segment 0, and nothing new is fetched.
        let early = sim.fetched(5, 1);
        assert!(written(&early).is_empty() && fetches(&early).is_empty());
        assert!(!sim.playback.wants_step());
        // Segment 0: written, and the window refilled with the segment after it.
        let zero = sim.fetched(6, 0);
        assert_eq!(written(&zero), vec![1000]);
        assert_eq!(fetches(&zero), vec![(w, 0)]);
        // Segment 1 was ready all along: the driver steps again at once and writes it.
        assert!(sim.playback.wants_step());
        let one = sim.tick(6);
        assert_eq!(written(&one), vec![1000]);
        assert_eq!(fetches(&one), vec![(w + 1, 0)]);
        assert_eq!(sim.playback.progress(sim.at(6), 0).stats.segments, 2);
    }

    #[test]
    fn at_speed_one_segments_are_released_a_buffer_ahead_of_their_play_time() {
        let content = program(BYTES, 10);
        let speed = Speed::Realtime {
            buffer: Duration::from_secs(2),
        };
        let (mut sim, _) = Sim::start(&content, speed, 0);
        // Segment 0 alone is half the buffer: nothing is written yet, the clock stands.
        assert!(written(&sim.fetched(100, 0)).is_empty());
        assert_eq!(sim.playback.clock(), None);
        // Segment 1 fills the buffer: segment 0 is written and starts the clock, then
        // segment 1 (it plays at 1.15 s, within the buffer).
        assert_eq!(written(&sim.fetched(150, 1)), vec![1000]);
        assert_eq!(sim.playback.clock(), Some((sim.at(150), 0)));
        assert!(sim.playback.wants_step());
        assert_eq!(written(&sim.tick(150)), vec![1000]);
        // Segment 2 plays at 2.15 s: within the buffer, written at once.
        assert_eq!(written(&sim.fetched(200, 2)), vec![1000]);
        // Segment 3 plays at 3.15 s: released 2 s before, at 1.15 s.
        let early = sim.fetched(250, 3);
        assert!(written(&early).is_empty());
        assert!(
            !early.iter().any(|a| matches!(a, Action::Progress)),
            "no report for a segment taken up to wait"
        );
        assert_eq!(sim.playback.wake_at(), Some(sim.at(1150)));
        assert!(written(&sim.tick(1149)).is_empty());
        assert_eq!(written(&sim.tick(1150)), vec![1000]);
        let p = sim.playback.progress(sim.at(1150), 0);
        assert_eq!((p.position_ms, p.buffered_ms), (1000, 3000));
        assert_eq!(
            p.stats.startup_ms, 150,
            "from the ask to the first byte written"
        );
        assert_eq!(p.stats.stalls, 0);
    }

    #[test]
    fn a_segment_fetched_after_its_play_time_is_a_stall_and_the_clock_restarts() {
        let content = program(BYTES, 10);
        let speed = Speed::Realtime {
            buffer: Duration::from_secs(1),
        };
        let (mut sim, _) = Sim::start(&content, speed, 0);
        // One segment covers the buffer: written at once.
        assert_eq!(written(&sim.fetched(0, 0)), vec![1000]);
        // Segment 1 was due at 1 s; 50 ms late is still on time.
        assert_eq!(written(&sim.fetched(1050, 1)), vec![1000]);
        assert_eq!(sim.playback.progress(sim.at(1050), 0).stats.stalls, 0);
        // Segment 2 was due at 2 s and comes at 3 s: a stall; the position restarts there.
        assert_eq!(written(&sim.fetched(3000, 2)), vec![1000]);
        let p = sim.playback.progress(sim.at(3500), 0);
        assert_eq!((p.stats.stalls, p.stats.longest_stall_ms), (1, 1000));
        assert_eq!(
            p.position_ms, 2500,
            "the clock restarted at segment 2's start"
        );
        // At speed max nothing is ever late.
        let (mut max, _) = Sim::start(&content, Speed::Max, 0);
        max.fetched(0, 0);
        max.fetched(60_000, 1);
        assert_eq!(max.playback.progress(max.at(60_000), 0).stats.stalls, 0);
    }

    #[test]
    fn a_pause_stops_the_clock_and_holds_every_write() {
        let content = program(BYTES, 10);
        let speed = Speed::Realtime {
            buffer: Duration::from_secs(1),
        };
        let (mut sim, _) = Sim::start(&content, speed, 0);
        sim.fetched(0, 0);
        sim.fetched(10, 1);
        // Segment 2 plays at 2 s: released at 1 s.
        sim.fetched(20, 2);
        assert_eq!(sim.playback.wake_at(), Some(sim.at(1000)));
        sim.control(500, Control::TogglePause);
        assert_eq!(sim.playback.wake_at(), None, "nothing is due while paused");
        assert!(written(&sim.tick(5000)).is_empty());
        let p = sim.playback.progress(sim.at(5000), 0);
        assert!(p.paused);
        assert_eq!(p.position_ms, 500, "the position stood still");
        // Paused for 4.5 s: the release moves by as much.
        sim.control(5000, Control::TogglePause);
        assert_eq!(sim.playback.wake_at(), Some(sim.at(5500)));
        assert_eq!(written(&sim.tick(5500)), vec![1000]);
        assert_eq!(sim.playback.progress(sim.at(5600), 0).position_ms, 1100);
        // A segment that arrives while paused waits, without a stall, until resumed.
        sim.control(5600, Control::TogglePause);
        assert!(written(&sim.fetched(20_000, 3)).is_empty());
        sim.control(20_000, Control::TogglePause);
        assert_eq!(sim.playback.progress(sim.at(20_000), 0).stats.stalls, 0);
    }

    #[test]
    fn a_segment_whose_groups_went_out_as_they_came_counts_whole_and_writes_the_rest() {
        let content = program(BYTES, 4);
        let (mut sim, _) = Sim::start(&content, Speed::Max, 0);
        // Segment 0 went to the player group by group: its fetch kept nothing.
        let handed = |sim: &mut Sim<'_>, index: u32, kept: Vec<u8>, start: u64| {
            let event = Event::Fetched {
                run: sim.run,
                index: SegmentIndex(index),
                result: Ok(Segment {
                    location: location(sim.engine, sim.director),
                    bytes: kept,
                    start,
                    by_group: true,
                }),
            };
            sim.playback.handle(sim.at(0), event)
        };
        let zero = handed(&mut sim, 0, Vec::new(), 1000);
        let write = zero.iter().find_map(|a| match a {
            Action::Write {
                bytes, start, from, ..
            } => Some((bytes.len(), *start, *from)),
            _ => None,
        });
        assert_eq!(
            write,
            Some((0, 1000, 0)),
            "nothing kept, all of it to write"
        );
        let p = sim.playback.progress(sim.at(0), 0);
        assert_eq!((p.stats.bytes, p.position_ms), (1000, 1000));
        // A seek into segment 2 at its half: a segment whose last 200 bytes were kept plays
        // its second half, and lasts half its length.
        let seek = sim.control(1, Control::Seek(1500));
        assert_eq!(fetches(&seek)[0], (2, 500));
        let two = handed(&mut sim, 2, vec![9; 200], 800);
        assert_eq!(written(&two), vec![500]);
        let p = sim.playback.progress(sim.at(1), 0);
        assert_eq!((p.stats.bytes, p.position_ms), (1500, 3000));
    }

    #[test]
    fn a_seek_drops_the_fetches_and_plays_on_from_the_byte_sought() {
        let content = program(BYTES, 10);
        let (mut sim, _) = Sim::start(&content, Speed::Max, 0);
        let old = sim.run;
        sim.fetched(0, 0);
        sim.tick(0);
        sim.fetched(0, 1);
        // Two segments written (2 s): forward 2.5 s, into segment 4 at its half.
        let seek = sim.control(10, Control::Seek(2500));
        assert!(matches!(seek.first(), Some(Action::CancelFetches)));
        let mut sought = vec![(4, 500)];
        let w = window(Speed::Max, &content) as u32;
        sought.extend(from_start(5..(4 + w).min(10)));
        assert_eq!(fetches(&seek), sought);
        assert_ne!(sim.run, old);
        // A fetch of the old run that still comes back is ignored.
        let stale = sim.playback.handle(
            sim.at(11),
            Event::Fetched {
                run: old,
                index: SegmentIndex(4),
                result: Ok(Segment {
                    location: location(sim.engine, sim.director),
                    bytes: vec![1; 1000],
                    start: 0,
                    by_group: true,
                }),
            },
        );
        assert!(written(&stale).is_empty());
        // Half of segment 4 plays, then all of 5.
        assert_eq!(written(&sim.fetched(20, 4)), vec![500]);
        assert_eq!(written(&sim.fetched(30, 5)), vec![1000]);
        let p = sim.playback.progress(sim.at(30), 0);
        assert_eq!((p.stats.seeks, p.position_ms), (1, 6000));
        // Back past the start clamps at 0; past the end, at the last millisecond.
        let back = sim.control(40, Control::Seek(-60_000));
        assert_eq!(fetches(&back)[0], (0, 0));
        let forward = sim.control(50, Control::Seek(60_000));
        assert_eq!(fetches(&forward), vec![(9, 999)]);
    }

    #[test]
    fn an_fmp4_seek_writes_the_init_segment_again_from_a_segment_start() {
        let content = program(FMP4, 6);
        let (mut sim, first) = Sim::start(&content, Speed::Max, 0);
        let w = window(Speed::Max, &content) as u32;
        // The init segment and six of media.
        assert_eq!(fetches(&first), from_start(0..w.min(7)));
        sim.fetched(0, 0);
        sim.tick(0);
        sim.fetched(0, 1);
        // HLS media is entered at a segment's start: 1 s + 2.5 s falls in segment 4 (the
        // init segment is 0), played from its first byte after the init segment.
        let seek = sim.control(10, Control::Seek(2500));
        let mut sought = vec![(0, 0)];
        sought.extend(from_start(4..(4 + w - 1).min(7)));
        assert_eq!(fetches(&seek), sought);
    }

    #[test]
    fn handoffs_count_boundaries_where_another_engine_served() {
        let content = program(BYTES, 4);
        let (mut sim, _) = Sim::start(&content, Speed::Max, 0);
        sim.fetched(0, 0);
        sim.fetched(0, 1);
        sim.engine = PeerId::random();
        sim.fetched(0, 2);
        sim.fetched(0, 3);
        let done = sim.tick(0);
        assert!(matches!(done.last(), Some(Action::Finished)));
        let stats = sim.playback.into_stats(3);
        assert_eq!((stats.segments, stats.handoffs), (4, 1));
        assert_eq!((stats.engines.len(), stats.stations.len()), (2, 1));
        assert_eq!((stats.bytes, stats.waits, stats.quit), (4000, 3, false));
        assert!(stats.verified);
    }

    #[test]
    fn a_failed_fetch_ends_playback_in_its_turn_and_quit_drops_the_fetches() {
        let content = program(BYTES, 4);
        let (mut sim, _) = Sim::start(&content, Speed::Max, 0);
        let failed = sim.playback.handle(
            sim.at(0),
            Event::Fetched {
                run: sim.run,
                index: SegmentIndex(1),
                result: Err("segment 1: token expired".into()),
            },
        );
        assert!(
            failed.iter().all(|a| !matches!(a, Action::Failed(_))),
            "segment 0 first"
        );
        let zero = sim.fetched(5, 0);
        assert_eq!(written(&zero), vec![1000]);
        let end = sim.tick(5);
        assert!(matches!(end.as_slice(), [Action::Failed(e)] if e == "segment 1: token expired"));
        assert!(sim.tick(6).is_empty(), "nothing after the end");

        let (mut sim, _) = Sim::start(&content, Speed::Max, 0);
        let quit = sim.control(0, Control::Quit);
        assert!(matches!(
            quit.as_slice(),
            [Action::CancelFetches, Action::Finished]
        ));
        assert!(sim.playback.into_stats(0).quit);
    }
}
