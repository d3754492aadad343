//! Playing a program: ask a director where each segment is, stream it from that engine,
//! verify it against the signed manifest, hand off to the next engine at the boundary.
//!
//! The next segments are fetched while the current one plays (a window of at least two, more
//! to cover the buffer), so a boundary never waits for a connection. At `Speed::Realtime`
//! segments are released by media time, a buffer (default 4 s, at least one segment) ahead of
//! the play position; a segment that arrives after its play time is a stall. The buffer is
//! what rides out a failover: a lost engine or station is replaced and the segment resumed
//! from the bytes received before the player runs dry. Every segment is checked against the
//! BLAKE3 hash in the content manager's signed manifest before a byte of it is written.
//!
//! The output is always a stream a player can start on: an fMP4 program's initialization
//! segment (segment 0) is written first, and again before the first media segment after
//! `--start` or a seek ([`crate::playback::run_segments`]). An engine at `--max-streams` is a
//! wait, never an error: the console asks again and, when nothing can serve, stalls
//! (`waits` in [`PlayStats`]). Fetching a segment is [`crate::fetch`]'s part.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::stream::{self, StreamExt};
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use vodmesh_proto::ProgramId;
use vodmesh_proto::catalog::ProgramState;
use vodmesh_proto::director::{ProgramInfo, Request, Response, SegmentLocation};
use vodmesh_proto::manifest::Manifest;
use vodmesh_proto::time::now_ms;

use crate::client::DirectorClient;
pub use crate::fetch::READ_STALL;
use crate::fetch::{Directors, Fetcher};

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

/// What `--stats` writes (DESIGN.md §11).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PlayStats {
    /// From the play request to the first byte written.
    pub startup_ms: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Segments written.
    pub segments: u32,
    /// Boundaries where the next segment came from another engine.
    pub handoffs: u32,
    /// Segments that arrived after their play time (realtime only).
    pub stalls: u32,
    /// Engines that served, by peer id.
    pub engines: Vec<String>,
    /// Stations (directors) whose engines served.
    pub stations: Vec<String>,
    /// Every segment matched its manifest hash.
    pub verified: bool,
    /// Seeks the viewer made during playback.
    pub seeks: u32,
    /// Segments for which a filling engine handed the console to one with the whole
    /// segment, because the console sought past what it had received (claim 21).
    pub swaps: u32,
    /// The viewer quit before the end.
    pub quit: bool,
    /// Busy answers waited out: an engine at `--max-streams`, or a director with nothing
    /// free to send the console to. The console asks again; it never fails for busy.
    pub waits: u32,
}

/// Finds a program by id or exact title.
pub async fn resolve(client: &Arc<DirectorClient>, program: &str) -> Result<ProgramId> {
    if let Ok(id) = program.parse::<ProgramId>() {
        return Ok(id);
    }
    let list = programs(client).await?;
    let matches: Vec<&ProgramInfo> = list.iter().filter(|p| p.title == program).collect();
    match matches.as_slice() {
        [one] => Ok(one.program),
        [] => bail!("no program titled \"{program}\""),
        _ => bail!("several programs are titled \"{program}\"; give the program id"),
    }
}

/// Every program the swarm's content managers list.
pub async fn programs(client: &Arc<DirectorClient>) -> Result<Vec<ProgramInfo>> {
    let directors = Directors::new(client.clone());
    let mut all = match client.request(Request::Programs).await? {
        Response::Programs(list) => list,
        _ => Vec::new(),
    };
    for station in directors
        .swarm()
        .await
        .iter()
        .filter(|s| s.roles.content_manager)
    {
        let Some(addr) = station.addrs.first() else {
            continue;
        };
        if let Ok(c) = DirectorClient::connect(addr, None).await
            && let Ok(Response::Programs(list)) = c.request(Request::Programs).await
        {
            all.extend(list);
        }
    }
    let mut seen = BTreeSet::new();
    all.retain(|p| seen.insert(p.program));
    Ok(all)
}

/// Published programs, for `vodmesh-console ls`.
pub async fn published(client: &Arc<DirectorClient>) -> Result<Vec<ProgramInfo>> {
    let now = now_ms();
    Ok(programs(client)
        .await?
        .into_iter()
        .filter(|p| p.state == ProgramState::Published && p.publish_at_ms.is_none_or(|t| t <= now))
        .collect())
}

/// A console token that a refresher may replace while segments are being fetched.
pub type SharedToken = Arc<std::sync::RwLock<Option<Vec<u8>>>>;

/// Who is playing: the console's identity and the console token bound to it.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// The console's identity (a fresh one if `None`; then no token can match it).
    pub key: Option<libp2p::identity::Keypair>,
    /// The console token from `vodmesh-console login`, shared with the task that refreshes it
    /// during playback ([`crate::auth::spawn_refresher`]).
    pub token: SharedToken,
}

/// An open program: its verified manifest and the directors to ask for its segments. Used
/// by `play` and by anything else that fetches segments (the HLS gateway).
pub struct Session {
    fetcher: Fetcher,
    manifest: Arc<Manifest>,
    token: SharedToken,
}

impl Session {
    /// Connects to the director at `node`, finds `program` (id or exact title) and verifies
    /// its signed manifest.
    pub async fn open(node: &Multiaddr, credentials: &Credentials, program: &str) -> Result<Self> {
        let client = Arc::new(DirectorClient::connect(node, credentials.key.clone()).await?);
        let program = resolve(&client, program).await?;
        Self::with_client(client, credentials, program).await
    }

    /// As [`Session::open`], over a director connection already open.
    pub async fn with_client(
        client: Arc<DirectorClient>,
        credentials: &Credentials,
        program: ProgramId,
    ) -> Result<Self> {
        let directors = Arc::new(Directors::new(client));
        let manifest = match directors.ask(Request::Manifest { program }).await? {
            Response::Manifest(signed) => {
                Manifest::verify(&signed).context("the program's manifest does not verify")?
            }
            Response::Error(e) => bail!("{}", e.message),
            other => bail!("unexpected answer: {other:?}"),
        };
        // Learn the rest of the swarm now, while the first director answers: if its station
        // goes down mid-play, the console carries on with the others.
        let learn = directors.clone();
        tokio::spawn(async move {
            learn.swarm().await;
        });
        Ok(Self {
            fetcher: Fetcher::new(directors),
            manifest: Arc::new(manifest),
            token: credentials.token.clone(),
        })
    }

    /// The program's verified manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Locates segment `index`, streams it whole from the engine the director names and
    /// verifies it against the manifest; lost streams are retried, refusals are final.
    pub async fn segment(&self, index: u32) -> Result<(SegmentLocation, Vec<u8>)> {
        self.segment_from(index, 0).await
    }

    /// As [`Session::segment`], for a console that will play the segment from byte
    /// `play_from` on (a seek into it): an engine still filling its copy short of that byte
    /// hands the console to one with the whole segment (claim 21). The whole segment is
    /// still fetched, to verify it.
    pub async fn segment_from(
        &self,
        index: u32,
        play_from: u64,
    ) -> Result<(SegmentLocation, Vec<u8>)> {
        // Read per segment: a refreshed token is used from the next segment on.
        let token = self.token.read().ok().and_then(|t| t.clone());
        self.fetcher
            .fetch(&self.manifest, index, token.as_deref(), play_from)
            .await
    }

    /// Busy answers this session waited out so far (an engine at `--max-streams`, or a
    /// director with nothing free to send it to).
    pub fn waits(&self) -> u32 {
        self.fetcher.waits()
    }

    /// Where `at_ms` falls: the segment, and for a program of plain bytes the byte within it
    /// and the media time of that byte. HLS media is entered at segment boundaries (a player
    /// needs the segment's start), so there the byte is 0 and the time the segment's start.
    pub fn position_of(&self, at_ms: u64) -> (u32, u64, u64) {
        let content = &self.manifest.content;
        let index = content.segment_at(at_ms);
        let start_ms: u64 = content
            .segments
            .iter()
            .take(index as usize)
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

/// Where playback stands, for a progress line.
#[derive(Clone, Debug)]
pub struct Progress<'a> {
    /// The statistics so far.
    pub stats: &'a PlayStats,
    /// The play position in media time.
    pub position_ms: u64,
    /// The program's duration.
    pub duration_ms: u64,
    /// Media written ahead of the play position.
    pub buffered_ms: u64,
    /// The engine that served the last segment, and its station's director.
    pub engine: Option<(PeerId, PeerId)>,
    /// Whether the viewer paused.
    pub paused: bool,
}

/// The content type of programs of plain bytes (not HLS media), which may be entered at any
/// byte.
const BYTES: &str = "application/octet-stream";

/// A segment fetched, waiting for its release time.
struct Pending {
    location: SegmentLocation,
    bytes: Vec<u8>,
    /// The first byte to write (a seek into the segment).
    from: usize,
    duration_ms: u64,
    /// When to write it (realtime only).
    release: Option<Instant>,
}

/// A segment's index and what fetching it gave.
type Fetched = (u32, Result<(SegmentLocation, Vec<u8>)>);

/// A spawned fetch, aborted when dropped (a seek or a quit drops the fetches in flight, and
/// with them their streams: the engines report the stops).
struct Spawned(tokio::task::JoinHandle<Fetched>);

impl Future for Spawned {
    type Output = Result<Fetched, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the play loop waits for.
enum Wake {
    Control(Option<Control>),
    Tick,
    Fetched(Box<Option<Result<Fetched, tokio::task::JoinError>>>),
    Release,
}

/// Plays `program` from `start_s` seconds into `out`. `controls` carries the viewer's
/// commands (pause, seek, quit); `progress` is called after every segment and twice a second.
#[allow(clippy::too_many_arguments)]
pub async fn play<W: AsyncWrite + Unpin>(
    node: &Multiaddr,
    credentials: &Credentials,
    program: &str,
    start_s: f64,
    speed: Speed,
    out: &mut W,
    mut controls: Option<tokio::sync::mpsc::Receiver<Control>>,
    mut progress: impl FnMut(&Progress<'_>),
) -> Result<PlayStats> {
    let began = Instant::now();
    let session = Arc::new(Session::open(node, credentials, program).await?);
    let manifest = session.manifest.clone();
    let total_ms = manifest.content.duration_ms;
    let count = manifest.content.segments.len() as u32;
    let mut stats = PlayStats {
        verified: true,
        ..Default::default()
    };
    let mut engines = BTreeSet::new();
    let mut stations = BTreeSet::new();
    let mut last: Option<(PeerId, PeerId)> = None;
    let mut start_ms = (start_s.max(0.0) * 1000.0) as u64;
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    'run: loop {
        // The first segment, the byte of it to start at, and the media time there.
        let (first, skip, mut media_ms) = session.position_of(start_ms);
        let run_start_ms = media_ms;
        // Segments fetched at once: two, or enough to fill the buffer, at most eight.
        let window = match speed {
            Speed::Realtime { buffer } => {
                let per = (total_ms / u64::from(count.max(1))).max(1);
                (buffer.as_millis() as u64).div_ceil(per).clamp(1, 7) as usize + 1
            }
            Speed::Max => 2,
        };
        // (wall time, media time) of the play position, once the first segment is written.
        let mut clock: Option<(Instant, u64)> = None;
        let mut paused: Option<Instant> = None;
        let mut pending: Option<Pending> = None;
        let init = manifest.content.has_init_segment();
        // Each fetch is a task of its own: it streams on (and gives its engine's slot back)
        // while an earlier segment waits for its release time.
        let fetches = stream::iter(crate::playback::run_segments(init, first, count))
            .map(|index| {
                let session = session.clone();
                let play_from = if index == first { skip } else { 0 };
                Spawned(tokio::spawn(async move {
                    (index, session.segment_from(index, play_from).await)
                }))
            })
            .buffered(window);
        futures::pin_mut!(fetches);
        let position = |clock: Option<(Instant, u64)>, paused: Option<Instant>, written: u64| match (
            speed, clock,
        ) {
            (Speed::Realtime { .. }, Some((wall, at_ms))) => {
                let now = paused.unwrap_or_else(Instant::now);
                (at_ms + now.saturating_duration_since(wall).as_millis() as u64).min(written)
            }
            (Speed::Realtime { .. }, None) => run_start_ms,
            (Speed::Max, _) => written,
        };
        loop {
            let release = pending.as_ref().and_then(|p| p.release);
            let wake = tokio::select! {
                biased;
                c = async {
                    match controls.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => Wake::Control(c),
                _ = async {
                    match release {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                }, if paused.is_none() && pending.is_some() => Wake::Release,
                next = fetches.next(), if paused.is_none() && pending.is_none() => Wake::Fetched(Box::new(next)),
                _ = ticker.tick() => Wake::Tick,
            };
            match wake {
                Wake::Control(None) => controls = None,
                Wake::Control(Some(Control::Quit)) => {
                    stats.quit = true;
                    break 'run;
                }
                Wake::Control(Some(Control::TogglePause)) => match paused.take() {
                    // The clock stood still while paused.
                    Some(since) => {
                        if let Some((wall, at)) = clock {
                            clock = Some((wall + since.elapsed(), at));
                        }
                        if let Some(p) = pending.as_mut() {
                            p.release = p.release.map(|r| r + since.elapsed());
                        }
                    }
                    None => paused = Some(Instant::now()),
                },
                Wake::Control(Some(Control::Seek(delta))) => {
                    let at = position(clock, paused, media_ms) as i64;
                    let to = (at + delta).clamp(0, total_ms.saturating_sub(1) as i64) as u64;
                    stats.seeks += 1;
                    start_ms = to;
                    // The segments in flight are dropped with their streams: their engines
                    // report the stops.
                    continue 'run;
                }
                Wake::Tick => {}
                Wake::Fetched(next) => {
                    let Some(joined) = *next else {
                        break 'run;
                    };
                    let (index, fetched) = joined.context("a segment fetch failed")?;
                    let (location, bytes) = fetched?;
                    let entry = manifest
                        .content
                        .segment(index)
                        .context("manifest lost a segment")?;
                    let mut duration_ms = u64::from(entry.duration_ms);
                    let mut from = 0;
                    if index == first && skip > 0 {
                        // Entered mid-segment: only the rest of it plays.
                        from = skip.min(bytes.len() as u64) as usize;
                        duration_ms =
                            duration_ms * (bytes.len() - from) as u64 / (bytes.len() as u64).max(1);
                    }
                    if location.swap {
                        stats.swaps += 1;
                    }
                    let mut release = None;
                    if let Speed::Realtime { buffer } = speed
                        && let Some((wall, at_ms)) = clock
                    {
                        // Play position of this segment's start on the wall clock.
                        let due = wall + Duration::from_millis(media_ms.saturating_sub(at_ms));
                        let now = Instant::now();
                        if now > due + Duration::from_millis(50) {
                            stats.stalls += 1;
                            clock = Some((now, media_ms));
                        } else {
                            // Keep the buffer (at least this segment) ahead of the position.
                            let ahead = buffer.max(Duration::from_millis(duration_ms));
                            release = due.checked_sub(ahead).filter(|r| *r > now);
                        }
                    }
                    pending = Some(Pending {
                        location,
                        bytes,
                        from,
                        duration_ms,
                        release,
                    });
                    if release.is_some() {
                        continue;
                    }
                }
                Wake::Release => {}
            }
            if let Some(p) = pending
                .take_if(|p| paused.is_none() && p.release.is_none_or(|r| r <= Instant::now()))
            {
                let played = p.bytes.get(p.from..).unwrap_or_default();
                out.write_all(played).await?;
                if stats.segments == 0 {
                    stats.startup_ms = began.elapsed().as_millis() as u64;
                }
                if clock.is_none() {
                    clock = Some((Instant::now(), media_ms));
                }
                let served = (p.location.engine, p.location.director);
                if last.is_some_and(|(e, _)| e != served.0) {
                    stats.handoffs += 1;
                }
                last = Some(served);
                engines.insert(served.0.to_string());
                stations.insert(served.1.to_string());
                stats.bytes += played.len() as u64;
                stats.segments += 1;
                media_ms += p.duration_ms;
            }
            stats.waits = session.waits();
            let at = position(clock, paused, media_ms);
            progress(&Progress {
                stats: &stats,
                position_ms: at,
                duration_ms: total_ms,
                buffered_ms: media_ms.saturating_sub(at),
                engine: last,
                paused: paused.is_some(),
            });
        }
    }
    out.flush().await?;
    stats.waits = session.waits();
    stats.engines = engines.into_iter().collect();
    stats.stations = stations.into_iter().collect();
    Ok(stats)
}
