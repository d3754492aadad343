//! The `streams` section: one engine (a `vodmesh-node` process with one engine, so its CPU
//! and memory are its own in `/proc`) streaming to N concurrent consoles, each its own peer,
//! fetching segment after segment over `/vodmesh/stream/1` as `vodmesh-console` does: on a
//! bulk connection of its own (`vodmesh_proto::net::bulk`), kept from segment to segment,
//! where the engine offers one (else on its libp2p connection).
//!
//! Each console asks for verified mode, as `vodmesh-console` does, so the engine serves the
//! path real consoles use (the tree's parent nodes between the groups, the bytes read without
//! a second hash); the bench's consoles count the segment's bytes and do not hash them.
//!
//! Paced: each console takes bytes at 4 Mbit/s, like a player, after a 1 s buffer. A chunk's
//! delivery lag is how long after its place in that schedule it was readable; a stall is a
//! lag beyond the buffer (the player would have run dry; the schedule then restarts, as a
//! player rebuffers). Reference: the demanded rate, N x 4 Mbit/s. A retry is a stream a
//! console had to open again (an open that failed, a stream that broke): with the stream
//! behaviour queueing every inbound stream, there should be none. The largest N is the largest
//! with no stall and no retry; the engine's CPU (its process's, from `/proc`) is also given per
//! GB/s it served. Unpaced: consoles read as fast as they can; the aggregate is set beside the
//! raw libp2p stream ceiling of `copy`.
//!
//! Over capacity: more consoles than a station has stream slots (two engines at
//! `--max-streams 1`), each the console's own playback (`vodmesh_console::play`) at speed 1
//! with a 2 s buffer. A busy engine is a wait, never an error: stalls, waits and the station's
//! replications are reported, and errors must stay 0.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use std::net::SocketAddr;

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use serde_json::{Value, json};
use vodmesh_client::DirectorClient;
use vodmesh_proto::codec::{read_frame, write_frame};
use vodmesh_proto::director::{Request, Response};
use vodmesh_proto::net::bulk;
use vodmesh_proto::stream::{self as wire, StreamReply, StreamRequest};
use vodmesh_proto::token::Issuer;
use vodmesh_proto::verified;
use vodmesh_proto::{ProgramId, SegmentId, SegmentIndex};

use super::swarm::{NodeProcess, console_token, ingest_into};
use super::{Row, cpu_time, quantile_ms, ratio, round2, rss_bytes};

/// Paced rate of one console: 4 Mbit/s.
const RATE: f64 = 4_000_000.0 / 8.0;
/// What a console buffers before it plays.
const BUFFER: Duration = Duration::from_secs(1);
/// Segment size of the program streamed.
const SEGMENT: u64 = 1024 * 1024;
/// Segments in the program (consoles start at different ones).
const SEGMENTS: u64 = 16;
/// Read unit of a console.
const CHUNK: usize = 64 * 1024;

/// One console: its own peer, connected to the station's director, knowing the engine.
struct Console {
    client: DirectorClient,
    token: serde_bytes::ByteBuf,
    /// Its way to the engine's bulk address, when the engine has one.
    bulk: Option<(bulk::Connector, SocketAddr)>,
}

/// A stream's transport: a libp2p stream or a bulk connection.
trait Duplex: futures::AsyncRead + futures::AsyncWrite + Unpin + Send {}
impl<T: futures::AsyncRead + futures::AsyncWrite + Unpin + Send> Duplex for T {}

/// A segment's stream, and whether it is a bulk connection (kept for the next segment once
/// read whole).
struct Wire {
    io: Box<dyn Duplex>,
    bulk: bool,
}

/// What one console saw.
#[derive(Default)]
struct Seen {
    lags: Vec<Duration>,
    stalls: u32,
    bytes: u64,
    /// Streams opened again after a failed open or a broken read.
    retries: u32,
}

/// Runs the section under `dir`; `ceiling` is the raw libp2p stream's MB/s from `copy`.
pub async fn run(dir: &Path, quick: bool, ceiling: f64) -> Result<(Value, Vec<Row>)> {
    let (counts, window, unpaced_n): (&[usize], Duration, usize) = if quick {
        (&[1, 10], Duration::from_secs(3), 4)
    } else {
        (&[1, 10, 100, 500, 1000], Duration::from_secs(10), 10)
    };
    std::fs::create_dir_all(dir)?;
    let issuer = Issuer::generate();
    let data = dir.join("station");
    let node = NodeProcess::start(
        &data,
        &[
            "--engines".into(),
            "1".into(),
            "--home".into(),
            "--content-manager".into(),
            "--max-streams".into(),
            "4096".into(),
            "--trust".into(),
            issuer.public().to_string(),
        ],
    )?;
    let program = ingest_into(
        &node.addr,
        &data.join("identity.key"),
        dir,
        ("streams", 0),
        SEGMENT * SEGMENTS,
        SEGMENT,
        8_000_000,
    )
    .await?;
    let file = vodmesh_node::nodefile::NodeFile::read(&data)?;
    let engine = file.engines.first().context("the station has no engine")?;
    let (engine_peer, engine_addrs) = (engine.peer_id, engine.addrs.clone());
    // Let the station settle after the ingest before measuring its idle memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = rss_bytes(node.pid())?;

    let most = counts.iter().copied().max().unwrap_or(1).max(unpaced_n);
    let bulk = bulk_address(&node.addr, program).await?;
    let engine = (engine_peer, engine_addrs.as_slice(), bulk);
    let consoles = connect(&node.addr, &issuer, engine, most).await?;

    let mut rows = Vec::new();
    let mut runs = Vec::new();
    let mut largest_clean = 0usize;
    let mut per_stream = None;
    let mut retries_total = 0u32;
    // The engine's CPU per GB/s served, and its CPU share, at the largest N up to 500.
    let mut cpu_per_gb_s = 0.0;
    let mut cpu_at_500 = None;
    for &n in counts {
        let cpu0 = cpu_time(node.pid())?;
        let t0 = Instant::now();
        let rss_probe = {
            let pid = node.pid();
            tokio::spawn(async move {
                tokio::time::sleep(window / 2).await;
                rss_bytes(pid).ok()
            })
        };
        let seen = drive(&consoles[..n], program, engine_peer, window, true).await;
        let elapsed = t0.elapsed();
        let cpu = cpu_time(node.pid())?.saturating_sub(cpu0);
        let rss = rss_probe.await.ok().flatten().unwrap_or(idle_rss);
        let lags: Vec<Duration> = seen.iter().flat_map(|s| s.lags.iter().copied()).collect();
        let stalls: u32 = seen.iter().map(|s| s.stalls).sum();
        let retries: u32 = seen.iter().map(|s| s.retries).sum();
        retries_total += retries;
        let bytes: u64 = seen.iter().map(|s| s.bytes).sum();
        let delivered = bytes as f64 / elapsed.as_secs_f64() / 1e6;
        let demanded = n as f64 * RATE / 1e6;
        let cpu_pct = round2(cpu.as_secs_f64() / elapsed.as_secs_f64() * 100.0);
        let p99 = quantile_ms(&lags, 0.99);
        // CPU-seconds per GB is (CPU share) / (GB/s served).
        let per_gb_s = ratio(cpu.as_secs_f64(), bytes as f64 / 1e9);
        if n <= 500 {
            cpu_per_gb_s = per_gb_s;
            cpu_at_500 = (n == 500).then_some(cpu_pct);
        }
        if stalls == 0 && retries == 0 {
            largest_clean = largest_clean.max(n);
        }
        if n > 1 {
            per_stream = Some(rss.saturating_sub(idle_rss) as f64 / n as f64);
        }
        rows.push(
            Row::new(
                "streams",
                format!("{n} paced 4 Mbit/s: stalls {stalls}, p99 lag {p99} ms, engine CPU {cpu_pct}% ({per_gb_s} per GB/s), {retries} retries"),
                format!("{delivered:.1} MB/s"),
            )
            .vs(format!("demanded {demanded:.1} MB/s"), ratio(delivered, demanded)),
        );
        runs.push(json!({
            "consoles": n,
            "seconds": round2(elapsed.as_secs_f64()),
            "stalls": stalls,
            "errors": retries,
            "retries": retries,
            "engine_cpu_per_gb_s": per_gb_s,
            "p50_lag_ms": quantile_ms(&lags, 0.5),
            "p99_lag_ms": p99,
            "engine_cpu_percent": cpu_pct,
            "engine_rss_bytes": rss,
            "delivered_mb_s": round2(delivered),
            "demanded_mb_s": round2(demanded),
            "delivered_vs_demanded": ratio(delivered, demanded),
        }));
    }

    let cpu0 = cpu_time(node.pid())?;
    let t0 = Instant::now();
    let seen = drive(&consoles[..unpaced_n], program, engine_peer, window, false).await;
    let elapsed = t0.elapsed();
    let cpu = cpu_time(node.pid())?.saturating_sub(cpu0);
    let bytes: u64 = seen.iter().map(|s| s.bytes).sum();
    let aggregate = (bytes as f64 / elapsed.as_secs_f64() / 1e6).round();
    let unpaced_cpu = round2(cpu.as_secs_f64() / elapsed.as_secs_f64() * 100.0);
    rows.push(Row::new(
        "streams",
        format!("largest N with zero stalls and zero retries (of {counts:?})"),
        largest_clean.to_string(),
    ));
    rows.push(
        Row::new(
            "streams",
            format!("{unpaced_n} unpaced consoles, aggregate (engine CPU {unpaced_cpu}%)"),
            format!("{aggregate:.0} MB/s"),
        )
        .vs(
            format!("raw libp2p stream {ceiling:.0} MB/s"),
            ratio(aggregate, ceiling),
        ),
    );
    drop(consoles);
    drop(node);
    let (over, over_row) = over_capacity(dir, quick).await?;
    rows.push(over_row);
    let value = json!({
        "segment_bytes": SEGMENT,
        "rate_bit_s": RATE * 8.0,
        "buffer_ms": BUFFER.as_millis() as u64,
        "window_s": window.as_secs(),
        "paced": runs,
        "largest_n_zero_stalls": largest_clean,
        "retries": retries_total,
        "engine_cpu_per_gb_s": cpu_per_gb_s,
        "engine_cpu_percent_at_500": cpu_at_500,
        "unpaced_consoles": unpaced_n,
        "unpaced_aggregate_mb_s": aggregate,
        "unpaced_engine_cpu_percent": unpaced_cpu,
        "unpaced_vs_raw_stream": ratio(aggregate, ceiling),
        "idle_rss_bytes": idle_rss,
        "bytes_per_stream": per_stream.map(f64::round).unwrap_or(0.0),
        "transport": if bulk.is_some() { "bulk connection (TLS, no yamux)" } else { "libp2p stream (TLS + yamux)" },
        "setup": "vodmesh-node process, 1 engine; consoles in the bench process, one peer and one connection each (a bulk connection kept between segments, as vodmesh-console does); the engine and the consoles share the machine's cores",
        "over_capacity": over,
    });
    Ok((value, rows))
}

/// Where the engine that holds segment 0 of `program` takes bulk connections, as the
/// director at `director` says (`None`: the engine takes none).
async fn bulk_address(director: &Multiaddr, program: ProgramId) -> Result<Option<SocketAddr>> {
    let client = DirectorClient::connect(director, None).await?;
    let locate = Request::Locate {
        program,
        index: SegmentIndex(0),
        complete: true,
        avoid: Vec::new(),
        busy: Vec::new(),
        ahead: 0,
        token: None,
    };
    match client.request(locate).await? {
        Response::Location(l) => Ok(l.bulk),
        other => bail!("the director answered Locate with {other:?}"),
    }
}

/// Connects `n` consoles, each with its own identity and token, a few at a time, to the
/// `(peer, addresses, bulk address)` of the engine.
async fn connect(
    director: &Multiaddr,
    issuer: &Issuer,
    (engine, engine_addrs, bulk): (PeerId, &[Multiaddr], Option<SocketAddr>),
    n: usize,
) -> Result<Vec<Arc<Console>>> {
    let mut consoles = Vec::with_capacity(n);
    while consoles.len() < n {
        let batch = (n - consoles.len()).min(16);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..batch {
            let key = Keypair::generate_ed25519();
            let token = serde_bytes::ByteBuf::from(console_token(issuer, &key)?);
            let bulk = match bulk {
                Some(addr) => Some((bulk::Connector::new(&key, engine)?, addr)),
                None => None,
            };
            let director = director.clone();
            let addrs = engine_addrs.to_vec();
            set.spawn(async move {
                let client = DirectorClient::connect(&director, Some(key)).await?;
                client.add_addresses(engine, addrs).await?;
                anyhow::Ok(Console {
                    client,
                    token,
                    bulk,
                })
            });
        }
        while let Some(c) = set.join_next().await {
            consoles.push(Arc::new(c??));
        }
    }
    Ok(consoles)
}

/// Every console streams for `window`, paced or not; returns what each saw.
async fn drive(
    consoles: &[Arc<Console>],
    program: ProgramId,
    engine: PeerId,
    window: Duration,
    paced: bool,
) -> Vec<Seen> {
    let end = Instant::now() + window;
    let mut set = tokio::task::JoinSet::new();
    for (i, c) in consoles.iter().enumerate() {
        let c = c.clone();
        set.spawn(async move { console(&c, program, engine, i as u64, end, paced).await });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r.unwrap_or_default());
    }
    out
}

/// One console's loop: segment after segment until `end`.
async fn console(
    c: &Console,
    program: ProgramId,
    engine: PeerId,
    first: u64,
    end: Instant,
    paced: bool,
) -> Seen {
    let mut seen = Seen::default();
    let mut buf = vec![0u8; CHUNK];
    // Wall time at which byte 0 of the schedule is due.
    let mut origin: Option<Instant> = None;
    let mut played = 0u64;
    let mut index = first % SEGMENTS;
    // The bulk connection kept from the last segment read whole.
    let mut kept: Option<Wire> = None;
    while Instant::now() < end {
        let opened = open(c, kept.take(), program, engine, SegmentIndex(index as u32)).await;
        let Ok((mut s, wire)) = opened else {
            seen.retries += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        // The segment's bytes and the stream's: a read of `n` stream bytes counts as its share
        // of the segment (the parent nodes are 64 bytes per 16 KiB group).
        let media =
            |read: u64| (u128::from(read) * u128::from(wire.0) / u128::from(wire.1.max(1))) as u64;
        let mut on_wire = 0u64;
        loop {
            if paced && let Some(o) = origin {
                // Take bytes no earlier than the buffer ahead of their play time.
                let release = o + Duration::from_secs_f64(played as f64 / RATE);
                let release = release.checked_sub(BUFFER).unwrap_or(release);
                if release > Instant::now() {
                    tokio::time::sleep_until(release.into()).await;
                }
            }
            let now = Instant::now();
            if now >= end {
                break;
            }
            let left = wire.1.saturating_sub(on_wire);
            if left == 0 {
                break;
            }
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = match s.io.read(&mut buf[..want]).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(_) => {
                    seen.retries += 1;
                    break;
                }
            };
            let now = Instant::now();
            let n = {
                let before = media(on_wire);
                on_wire += n as u64;
                media(on_wire) - before
            };
            seen.bytes += n;
            if paced {
                let o = *origin.get_or_insert(now + BUFFER);
                let due = o + Duration::from_secs_f64(played as f64 / RATE);
                let lag = now.saturating_duration_since(due.checked_sub(BUFFER).unwrap_or(due));
                seen.lags.push(lag);
                if now > due {
                    seen.stalls += 1;
                    // The player rebuffers: its schedule restarts from now.
                    origin = Some(now + BUFFER - Duration::from_secs_f64(played as f64 / RATE));
                }
            }
            played += n;
        }
        if on_wire == wire.1 && s.bulk {
            kept = Some(s);
        } else {
            let _ = s.io.close().await;
        }
        index = (index + 1) % SEGMENTS;
    }
    seen
}

/// Opens a stream to the engine (on the bulk connection `kept`, else a new one where the
/// engine takes them, else a libp2p stream) and asks for segment `index` in verified mode
/// (the caller counts a failure as a retry): the stream, and the segment's size and the
/// stream's length.
async fn open(
    c: &Console,
    kept: Option<Wire>,
    program: ProgramId,
    engine: PeerId,
    index: SegmentIndex,
) -> Result<(Wire, (u64, u64))> {
    let mut s = match (kept, &c.bulk) {
        (Some(kept), _) => kept,
        (None, Some((connector, addr))) => Wire {
            io: Box::new(connector.connect(*addr).await?),
            bulk: true,
        },
        (None, None) => Wire {
            io: Box::new(c.client.open_stream(engine, wire::PROTOCOL).await?),
            bulk: false,
        },
    };
    write_frame(
        &mut s.io,
        &StreamRequest {
            segment: SegmentId::new(program, index.0),
            offset: 0,
            token: Some(c.token.clone()),
            play_from: 0,
            verified: true,
        },
    )
    .await?;
    match read_frame::<_, StreamReply>(&mut s.io, wire::MAX_FRAME).await? {
        StreamReply::Verified { size, from: 0, .. } => {
            let wire: u64 = verified::plan(size, 0).map(|i| i.len() as u64).sum();
            Ok((s, (size, wire)))
        }
        StreamReply::Verified { from, .. } => bail!("verified mode from byte {from}, not 0"),
        StreamReply::Streaming { .. } => bail!("raw bytes, where verified mode was asked for"),
        StreamReply::Refused(why) => bail!("refused: {why}"),
        StreamReply::Swap { filled } => bail!("handed back at byte {filled} of a filling copy"),
        StreamReply::Busy => bail!("the engine is at --max-streams"),
        StreamReply::Absent => bail!("the engine does not hold segment {index}"),
    }
}

/// More consoles than stream slots: `n` consoles play a program at speed 1 on a station of
/// two engines at `--max-streams 1`, started 20 ms apart (the load's shape).
async fn over_capacity(dir: &Path, quick: bool) -> Result<(Value, Row)> {
    use vodmesh_console::play::{self, Credentials, Speed};
    const ENGINES: u64 = 2;
    const MAX_STREAMS: u64 = 1;
    let (n, segments): (u64, u64) = if quick { (16, 4) } else { (32, 8) };
    let issuer = Issuer::generate();
    let data = dir.join("over-capacity");
    let node = NodeProcess::start(
        &data,
        &[
            "--engines".into(),
            ENGINES.to_string(),
            "--max-streams".into(),
            MAX_STREAMS.to_string(),
            "--home".into(),
            "--content-manager".into(),
            // Its own auth server gives its engines the engine tokens copies need.
            "--auth".into(),
            "--trust".into(),
            issuer.public().to_string(),
        ],
    )?;
    let program = ingest_into(
        &node.addr,
        &data.join("identity.key"),
        dir,
        ("over-capacity", 0),
        SEGMENT * segments,
        SEGMENT,
        8_000_000,
    )
    .await?;
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let key = Keypair::generate_ed25519();
        let token = console_token(&issuer, &key)?;
        let credentials = Credentials::new(key, token);
        let (addr, program) = (node.addr.clone(), program.to_string());
        set.spawn(async move {
            tokio::time::sleep(Duration::from_millis(20 * i)).await;
            let speed = Speed::Realtime {
                buffer: Duration::from_secs(2),
            };
            let mut sink = tokio::io::sink();
            play::play(
                &addr,
                &credentials,
                &program,
                0.0,
                speed,
                &mut sink,
                None,
                |_| {},
            )
            .await
        });
    }
    let (mut stalls, mut waits, mut errors, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    while let Some(done) = set.join_next().await {
        match done {
            Ok(Ok(stats)) => {
                stalls += u64::from(stats.stalls);
                waits += u64::from(stats.waits);
                bytes += stats.bytes;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "over capacity: a console failed");
                errors += 1;
            }
            Err(_) => errors += 1,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let client = DirectorClient::connect(&node.addr, None).await?;
    let replications = match client.request(Request::Activity).await? {
        Response::Activity(a) => a.replications,
        other => bail!("unexpected answer to Activity: {other:?}"),
    };
    drop(node);
    let slots = ENGINES * MAX_STREAMS;
    let row = Row::new(
        "streams",
        format!(
            "over capacity: {n} consoles, {slots} slots, speed 1: stalls {stalls}, waits {waits}, replications {replications}"
        ),
        format!("{errors} errors"),
    );
    let value = json!({
        "consoles": n,
        "engines": ENGINES,
        "max_streams": MAX_STREAMS,
        "segments": segments,
        "seconds": round2(seconds),
        "stalls": stalls,
        "waits": waits,
        "replications": replications,
        "errors": errors,
        "bytes": bytes,
        "bytes_expected": n * segments * SEGMENT,
    });
    Ok((value, row))
}
