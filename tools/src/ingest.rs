//! `vodmesh ingest`: a program into a home station.
//!
//! The source is cut into segments and hashed here; the station's content manager assigns each
//! segment to an engine; the bytes are pushed to the engines over `/vodmesh/ingest/1`, several
//! engines at once, each verifying as they arrive; the commit makes the content manager sign
//! the manifest and enter the program in the catalog. The last line printed is the program id.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use futures::AsyncWriteExt;
use futures::stream::{self, StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use libp2p::Multiaddr;
use libp2p::identity::Keypair;
use vodmesh_console::client::DirectorClient;
use vodmesh_proto::codec::{read_frame, write_frame};
use vodmesh_proto::director::{EngineTarget, ProgramInfo, Request, Response};
use vodmesh_proto::ingest::{self, IngestAck, IngestHeader};
use vodmesh_proto::manifest::ManifestContent;

use crate::source::{Piece, read_piece};
use vodmesh_proto::time::now_ms;
use vodmesh_proto::{ProgramId, SegmentHash, SegmentId, admin};

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
    /// Show a progress bar.
    pub progress: bool,
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
    let key = vodmesh_node::identity::load(&opts.key)?;
    let source = crate::source::open(
        &opts.source.to_string_lossy(),
        opts.segment_size,
        opts.bitrate,
    )
    .await?;
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
    let bar = if opts.progress {
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
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = content.segments.len();
    for target in &plan {
        client
            .add_addresses(target.peer_id, target.addrs.clone())
            .await?;
    }
    // One pusher per engine, all engines at once.
    stream::iter(plan.iter())
        .map(|target| {
            push_engine(
                &client,
                &source.pieces,
                &content,
                program,
                target,
                &bar,
                &done,
                count,
            )
        })
        .buffer_unordered(plan.len().max(1))
        .try_collect::<Vec<()>>()
        .await?;
    bar.finish_and_clear();
    let proof = admin::prove(
        &key,
        "ingest-commit",
        program.as_bytes(),
        director,
        now_ms(),
    );
    match client
        .request(Request::IngestCommit {
            program,
            admin: proof,
        })
        .await?
    {
        Response::Program(info) => Ok(info),
        Response::Error(e) => bail!("{}", e.message),
        other => bail!("unexpected answer: {other:?}"),
    }
}

#[allow(clippy::too_many_arguments)]
async fn push_engine(
    client: &DirectorClient,
    pieces: &[Piece],
    content: &ManifestContent,
    program: ProgramId,
    target: &EngineTarget,
    bar: &ProgressBar,
    done: &std::sync::atomic::AtomicUsize,
    count: usize,
) -> Result<()> {
    for &index in &target.segments {
        let entry = content
            .segment(index)
            .with_context(|| format!("plan names unknown segment {index}"))?;
        let piece = pieces
            .get(index as usize)
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
        // A stream can be lost on the way (libp2p-stream drops inbound streams it cannot
        // hand over at once); an engine that refuses is final, a lost stream is retried.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match push_segment(client, target.peer_id, &header, &buf).await {
                Ok(IngestAck::Stored) => break,
                Ok(IngestAck::Refused(why)) => bail!("engine refused segment {index}: {why}"),
                Err(e) if attempt < 4 => {
                    tracing::debug!(index, attempt, error = %e, "segment push failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
                }
                Err(e) => {
                    return Err(e.context(format!(
                        "pushing segment {index} to engine {}",
                        target.peer_id
                    )));
                }
            }
        }
        bar.inc(entry.size);
        let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        bar.set_message(format!("{n}/{count}"));
    }
    Ok(())
}

async fn push_segment(
    client: &DirectorClient,
    engine: libp2p::PeerId,
    header: &IngestHeader,
    bytes: &[u8],
) -> Result<IngestAck> {
    let mut stream = client.open_stream(engine, ingest::PROTOCOL).await?;
    write_frame(&mut stream, header).await?;
    stream.write_all(bytes).await?;
    stream.flush().await?;
    let ack = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        read_frame::<_, IngestAck>(&mut stream, ingest::MAX_FRAME),
    )
    .await
    .context("no acknowledgement within 60 s")??;
    let _ = stream.close().await;
    Ok(ack)
}

/// Loads `path` as an identity key (used by `ingest` and `publish`).
pub fn load_key(path: &Path) -> Result<Keypair> {
    vodmesh_node::identity::load(path)
}
