//! `vodmesh ingest`: a program into a home station.
//!
//! The source is cut into segments and hashed here; the station's content manager assigns each
//! segment to an engine; the bytes are pushed to the engines over `/vodmesh/ingest/1`, several
//! engines at once, each verifying as they arrive; the commit makes the content manager sign
//! the manifest and enter the program in the catalog. The last line printed is the program id.
//!
//! A station without room refuses the ingest before a byte moves, with the figures. An
//! engine that refuses a segment midway (its store filled up) answers while the bytes are
//! still being written, and the ingest fails at once; a failed ingest tells the station to
//! drop what it took (`IngestAbort`), so nothing of it stays on the engines.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::stream::{self, StreamExt, TryStreamExt};
use futures::{AsyncReadExt, AsyncWriteExt};
use indicatif::{ProgressBar, ProgressStyle};
use libp2p::Multiaddr;
use libp2p::identity::Keypair;
use vodmesh_client::DirectorClient;
use vodmesh_proto::codec::{read_frame, write_frame};
use vodmesh_proto::director::{EngineTarget, ErrorCode, ProgramInfo, Request, Response};
use vodmesh_proto::ingest::{self, IngestAck, IngestHeader};
use vodmesh_proto::manifest::ManifestContent;
use vodmesh_proto::station::human_bytes;

use crate::source::{Piece, read_piece};
use vodmesh_proto::time::now_ms;
use vodmesh_proto::{ProgramId, SegmentHash, SegmentId, SegmentIndex, admin};

/// Default segment size for files without media segmentation.
pub const DEFAULT_SEGMENT_SIZE: u64 = 4 * 1024 * 1024;
/// Default nominal bitrate of files without media timing, bits per second.
pub const DEFAULT_BITRATE: u64 = 8_000_000;

/// What to ingest and how.
#[derive(Clone, Debug)]
pub struct IngestOptions {
    /// The home station's director.
    pub node: Multiaddr,
    /// The admin key that signs the request.
    pub key: PathBuf,
    /// The program's title.
    pub title: String,
    /// When it becomes playable (`None`: inactive until `vodmesh publish`).
    pub publish_at_ms: Option<u64>,
    /// Copies wanted on other stations.
    pub replicas: u32,
    /// Segment size for plain files.
    pub segment_size: u64,
    /// Nominal bitrate for plain files, bit/s.
    pub bitrate: u64,
    /// The source: a file, an HLS playlist (path or http(s) URL) or an http(s) URL of a file.
    pub source: PathBuf,
    /// Show progress on stderr: a bar on a terminal, else a line every few seconds.
    pub progress: bool,
    /// Hosts a playlist's segments may be fetched from besides the playlist's own
    /// (`--allow-host`).
    pub allow_hosts: Vec<String>,
    /// Heights of an adaptive-bitrate ladder to encode the video file into (`--ladder`);
    /// empty: the source as it is, one rendition.
    pub ladder: Vec<u32>,
    /// Cut the source into fixed-size segments whatever it holds (`--raw`): no packaging of
    /// a video, no playlist parsing.
    pub raw: bool,
}

/// Parses `--publish-at`: `now` or an RFC 3339 time.
pub fn parse_publish_at(s: &str) -> Result<u64> {
    if s == "now" {
        return Ok(now_ms());
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .with_context(|| {
            format!(
                "--publish-at {s}: expected `now` or an RFC 3339 time like 2026-12-01T20:00:00Z"
            )
        })?;
    let ms = t.unix_timestamp_nanos() / 1_000_000;
    u64::try_from(ms).context("--publish-at before 1970")
}

pub use crate::source::segment_file;

/// Ingests as `opts` says; returns the program's catalog entry.
pub async fn run(opts: &IngestOptions) -> Result<ProgramInfo> {
    run_until(opts, std::future::pending()).await
}

/// [`run`], cancelled when `stop` ends before the commit (`vodmesh ingest`: SIGINT or
/// SIGTERM): the station is told to drop what it took at once, as for a failed ingest,
/// instead of keeping it until its `--ingest-timeout`.
pub async fn run_until(
    opts: &IngestOptions,
    stop: impl Future<Output = ()>,
) -> Result<ProgramInfo> {
    let key = vodmesh_client::identity::load(&opts.key)?;
    let source = opts.source.to_string_lossy();
    let source = if opts.raw {
        crate::source::open_raw(&source, opts.segment_size, opts.bitrate).await?
    } else if opts.ladder.is_empty() {
        crate::source::open(&source, opts.segment_size, opts.bitrate, &opts.allow_hosts).await?
    } else {
        crate::ladder::open(&opts.source, &opts.ladder).await?
    };
    let mut content = source.content.clone();
    content.title = opts.title.clone();
    let program = content.program_id();
    let total = content.total_size();
    let client = DirectorClient::connect(&opts.node, None).await?;
    let director = client.peer();
    let proof = admin::prove(&key, "ingest", program.as_bytes(), director, now_ms());
    let plan = match client
        .request(Request::IngestBegin {
            content: content.clone(),
            publish_at_ms: opts.publish_at_ms,
            replicas: opts.replicas,
            admin: proof,
        })
        .await?
    {
        Response::IngestPlan {
            program: p,
            engines,
        } if p == program => engines,
        Response::IngestPlan { .. } => bail!("the station computed another program id"),
        Response::Error(e) => bail!("{}", e.message),
        other => bail!("unexpected answer: {other:?}"),
    };
    // A program the station catalogs already comes back as a repair: only the segments the
    // station lost are planned.
    let planned: Vec<SegmentIndex> = plan.iter().flat_map(|t| t.segments.clone()).collect();
    let (total, count) = if planned.len() < content.segments.len() {
        eprintln!(
            "program {program} is in the station's catalog: repairing the {} of its {} segments \
             the station no longer holds",
            planned.len(),
            content.segments.len()
        );
        let sizes = planned.iter().filter_map(|i| content.segment(*i));
        (sizes.map(|s| s.size).sum(), planned.len())
    } else {
        (total, content.segments.len())
    };
    let progress = Progress::new(opts.progress, total, count);
    let pushed = tokio::select! {
        pushed = push_all(&client, &source.pieces, &content, program, &plan, &progress) => pushed,
        () = stop => Err(anyhow::anyhow!(
            "interrupted: the ingest was cancelled, and the station told to drop what it took"
        )),
    };
    progress.finish();
    let committed = match pushed {
        Ok(()) => commit(&client, &key, program).await,
        Err(e) => Err(e),
    };
    if committed.is_err() {
        abort(&client, &key, program).await;
    }
    committed
}

/// How long a commit waits for the engines' reports that they stored the last segments.
const COMMIT_WAIT: Duration = Duration::from_secs(15);

/// Commits the ingest of `program`, once every segment pushed is reported stored: the push is
/// acknowledged by the engine, and its report to the director may still be on the way (a
/// `Busy` answer), so the commit is asked again for up to [`COMMIT_WAIT`].
async fn commit(client: &DirectorClient, key: &Keypair, program: ProgramId) -> Result<ProgramInfo> {
    let director = client.peer();
    let started = tokio::time::Instant::now();
    loop {
        let proof = admin::prove(key, "ingest-commit", program.as_bytes(), director, now_ms());
        let answer = client
            .request(Request::IngestCommit {
                program,
                admin: proof,
            })
            .await
            .context("committing the ingest")?;
        match answer {
            Response::Program(info) => return Ok(info),
            Response::Error(e) if e.code == ErrorCode::Busy && started.elapsed() < COMMIT_WAIT => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Response::Error(e) => bail!("{}", e.message),
            other => bail!("unexpected answer: {other:?}"),
        }
    }
}

/// Tells the station to drop what it took of a failed ingest (best effort: a station that
/// does not hear it drops the segments after its `--ingest-timeout`).
async fn abort(client: &DirectorClient, key: &Keypair, program: ProgramId) {
    let proof = admin::prove(
        key,
        "ingest-abort",
        program.as_bytes(),
        client.peer(),
        now_ms(),
    );
    let request = Request::IngestAbort {
        program,
        admin: proof,
    };
    match tokio::time::timeout(ABORT_WAIT, client.request(request)).await {
        Ok(Ok(Response::Ok)) => tracing::debug!(%program, "the station dropped the failed ingest"),
        other => {
            tracing::debug!(%program, ?other, "the station did not confirm dropping the ingest")
        }
    }
}

/// How long a failed ingest waits for the station to confirm it dropped the segments.
const ABORT_WAIT: Duration = Duration::from_secs(5);

/// Pushes every segment: one pusher per engine, all engines at once; the first failure ends
/// them all.
async fn push_all(
    client: &DirectorClient,
    pieces: &[Piece],
    content: &ManifestContent,
    program: ProgramId,
    plan: &[EngineTarget],
    progress: &Progress,
) -> Result<()> {
    for target in plan {
        client
            .add_addresses(target.peer_id, target.addrs.clone())
            .await?;
    }
    stream::iter(plan.iter())
        .map(|target| push_engine(client, pieces, content, program, target, progress))
        .buffer_unordered(plan.len().max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Bytes and segments pushed so far, shown as a bar on a terminal or as a line every
/// [`PROGRESS_EVERY`] otherwise (so a script's log shows movement).
struct Progress {
    bar: ProgressBar,
    counts: Arc<(AtomicU64, AtomicU64)>,
    lines: Option<tokio::task::JoinHandle<()>>,
}

/// How often progress is printed as a line when stderr is not a terminal.
const PROGRESS_EVERY: Duration = Duration::from_secs(3);

impl Progress {
    fn new(show: bool, total: u64, segments: usize) -> Self {
        let counts = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let bar = if show && terminal {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} segments {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        } else {
            ProgressBar::hidden()
        };
        let lines = (show && !terminal).then(|| {
            let counts = counts.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let mut tick = tokio::time::interval(PROGRESS_EVERY);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let bytes = counts.0.load(Ordering::Relaxed);
                    let done = counts.1.load(Ordering::Relaxed);
                    eprintln!(
                        "{}",
                        progress_line(bytes, total, done, segments, start.elapsed())
                    );
                }
            })
        });
        Self { bar, counts, lines }
    }

    fn segment_done(&self, size: u64, segments: usize) {
        self.bar.inc(size);
        self.counts.0.fetch_add(size, Ordering::Relaxed);
        let n = self.counts.1.fetch_add(1, Ordering::Relaxed) + 1;
        self.bar.set_message(format!("{n}/{segments}"));
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
        if let Some(lines) = &self.lines {
            lines.abort();
        }
    }
}

/// One progress line: `ingest: 12.6 MB of 33.6 MB (37%), segments 3/8, 4.2 MB/s`.
fn progress_line(bytes: u64, total: u64, done: u64, segments: usize, elapsed: Duration) -> String {
    let percent = (bytes * 100).checked_div(total).unwrap_or(100);
    let rate = (bytes as f64 / elapsed.as_secs_f64().max(1e-3)) as u64;
    format!(
        "ingest: {} of {} ({percent}%), segments {done}/{segments}, {}/s",
        human_bytes(bytes),
        human_bytes(total),
        human_bytes(rate)
    )
}

async fn push_engine(
    client: &DirectorClient,
    pieces: &[Piece],
    content: &ManifestContent,
    program: ProgramId,
    target: &EngineTarget,
    progress: &Progress,
) -> Result<()> {
    for &index in &target.segments {
        let entry = content
            .segment(index)
            .with_context(|| format!("plan names unknown segment {index}"))?;
        let piece = pieces
            .get(index.0 as usize)
            .with_context(|| format!("plan names unknown segment {index}"))?;
        let buf = read_piece(piece).await?;
        if buf.len() as u64 != entry.size || SegmentHash::of(&buf) != entry.hash {
            bail!(
                "the source changed during ingest (segment {index} differs); nothing was committed"
            );
        }
        let header = IngestHeader {
            segment: SegmentId::new(program, index),
            hash: entry.hash,
            size: entry.size,
        };
        // The engine queues the stream (never drops it), so a failed push is final: an
        // engine that refuses, or one that went away.
        match push_segment(client, target.peer_id, &header, &buf).await {
            Ok(IngestAck::Stored) => {}
            Ok(IngestAck::Refused(why)) => {
                bail!("engine refused segment {index}: {why}; nothing was committed")
            }
            Err(e) => {
                return Err(e.context(format!(
                    "pushing segment {index} to engine {}",
                    target.peer_id
                )));
            }
        }
        progress.segment_done(entry.size, content.segments.len());
    }
    Ok(())
}

/// How long an engine may take to acknowledge a segment after its last byte.
const ACK_WAIT: Duration = Duration::from_secs(60);

/// Pushes one segment and returns the engine's answer. The answer is read while the bytes
/// are written: an engine that refuses midway (its store is full) answers at once, and the
/// refusal is returned without waiting for bytes it will never read.
async fn push_segment(
    client: &DirectorClient,
    engine: libp2p::PeerId,
    header: &IngestHeader,
    bytes: &[u8],
) -> Result<IngestAck> {
    let stream = client.open_stream(engine, ingest::PROTOCOL).await?;
    let (mut rd, mut wr) = stream.split();
    let write = async move {
        write_frame(&mut wr, header).await?;
        wr.write_all(bytes).await?;
        wr.flush().await?;
        Ok::<_, std::io::Error>(wr)
    };
    let read = read_frame::<_, IngestAck>(&mut rd, ingest::MAX_FRAME);
    tokio::pin!(write, read);
    let mut written = false;
    let mut write_error = None;
    // Armed once the last byte is written.
    let ack_deadline = tokio::time::sleep(Duration::MAX);
    tokio::pin!(ack_deadline);
    loop {
        tokio::select! {
            done = &mut write, if !written => {
                written = true;
                ack_deadline.as_mut().reset(tokio::time::Instant::now() + ACK_WAIT);
                // A refusing engine may reset the stream: its answer is still read below.
                if let Err(e) = done {
                    write_error = Some(e);
                }
            }
            ack = &mut read => {
                return match (ack, write_error) {
                    (Ok(ack), _) => Ok(ack),
                    (Err(_), Some(e)) => Err(anyhow::Error::new(e).context("writing the segment")),
                    (Err(e), None) => Err(anyhow::Error::new(e).context("reading the acknowledgement")),
                };
            }
            () = &mut ack_deadline => bail!("no acknowledgement within {} s", ACK_WAIT.as_secs()),
        }
    }
}

/// Loads `path` as an identity key (used by `ingest` and `publish`).
pub fn load_key(path: &Path) -> Result<Keypair> {
    Ok(vodmesh_client::identity::load(path)?)
}
