//! The `copy` section: engine -> engine copies of a program in 4 MiB segments through real
//! stations (a `Replicate` to an enrolled station: locate, fetch over `/vodmesh/copy/1`,
//! verify, store, commit, table, as in distribution) over the bulk path (TCP + TLS with
//! AES-GCM, no yamux: `vodmesh_proto::net::bulk`), then a console playing the program at
//! `--speed max` into a pipe (twice) and into /dev/null (twice); beside:
//!
//! - the transport ceiling: one bulk connection (what copies and consoles' streams take)
//!   moving the same bytes from memory; and one raw libp2p stream, with the swarm vodmesh
//!   builds (TCP + TLS + yamux, what copies take where an engine offers no bulk address, and
//!   QUIC) and with TCP + noise only (the transport before AES-GCM, and the one a noise-only
//!   peer gets);
//! - the store's durable write rate on the same disk (the other bound of a copy: a copy is
//!   durable on arrival);
//! - the pipe the console's play goes through, alone ([`pipe`]);
//! - nginx serving the same bytes over HTTPS and plain HTTP on loopback ([`super::nginx`]; its
//!   rows are skipped with a note when `nginx` is not installed).
//!
//! Each libp2p run records the TLS suite its handshakes negotiated, counted by the vendored
//! libp2p-tls (`vodmesh_proto::net::negotiated_ciphers`), not assumed. Each part's CPU is
//! timed with it, per GB moved: the raw stream's, the bulk connection's, the store's write, the
//! copy's, the console's play and nginx's one download, and from the first two the rate the
//! machine's cores allow a copy (the README's Performance section reads them).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use libp2p::Multiaddr;
use serde_json::{Value, json};
use vodmesh_node::events::{self, Kind};
use vodmesh_proto::ProgramId;
use vodmesh_proto::net::negotiated_ciphers;

use self::cpu::Cpu;
use self::phases::Phases;
use self::raw::{Security, raw_bulk, raw_stream};
use super::swarm::{BenchSwarm, Shape};
use super::{
    Row, children_cpu_time, mb_s, nginx, own_cpu_time, ratio, read_to_end, sibling_bin, subdir,
};

mod cpu;
mod phases;
mod pipe;
mod raw;

const SEGMENT: u64 = 4 * 1024 * 1024;
/// The seed and title of the copied program (the bytes nginx serves too).
const TITLE: &str = "copy";

/// Runs the section under `dir`.
pub async fn run(dir: &Path, quick: bool) -> Result<(Value, Vec<Row>)> {
    let mib: u64 = if quick { 32 } else { 256 };
    let bytes = mib * 1024 * 1024;
    let tcp: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse()?;
    let quic: Multiaddr = "/ip4/127.0.0.1/udp/0/quic-v1".parse()?;

    let (t, raw_tcp_cipher) = ciphers_of(raw_stream(Security::Vodmesh, tcp.clone(), bytes)).await;
    let (t, raw_tcp_cpu) = t?;
    let raw_tcp = mb_s(bytes, t);
    let (t, bare_cipher, bare_cpu) = raw_bulk(bytes).await?;
    let bare_tls = mb_s(bytes, t);
    let (t, noise_cipher) = ciphers_of(raw_stream(Security::NoiseOnly, tcp.clone(), bytes)).await;
    let raw_noise = mb_s(bytes, t?.0);
    let (t, quic_cipher) = ciphers_of(raw_stream(Security::Vodmesh, quic, bytes)).await;
    let raw_quic = mb_s(bytes, t?.0);
    // The store's own durable write rate on the same disk, probed before the copy and after
    // it; the bound takes the better of the two. Right after the copy the disk may still be
    // busy with the copy's bytes: probes there gave 95-175 MB/s in runs where the store
    // wrote 974-1121 MB/s on its own. Each probe's write is timed with the CPU it took.
    let probe = |name: &'static str| async move {
        let dir = subdir(dir, name)?;
        let probe = vodmesh_node::store::bench::Probe::open(&dir, bytes).await?;
        let cpu = own_cpu_time();
        let write = probe.write().await?;
        let cpu = own_cpu_time().saturating_sub(cpu);
        probe.close().await?;
        anyhow::Ok((write.round(), cpu))
    };
    let (store_before, store_before_cpu) = probe("store-before").await?;
    let run = replicate_and_play(&subdir(dir, "tcp")?, vec![tcp], bytes).await?;
    let copy_tcp = mb_s(bytes, run.copy);
    let stream = mb_s(bytes, run.stream);
    let discarded = mb_s(bytes, run.discarded);
    let pipe = pipe::alone(bytes).await?;
    let (store_after, store_after_cpu) = probe("store").await?;
    let (store_write, store_cpu) = if store_before >= store_after {
        (store_before, store_before_cpu)
    } else {
        (store_after, store_after_cpu)
    };
    // The transport the copy took: the bulk path where the source's engine took connections
    // (as it does on loopback), else the libp2p stream.
    let over_bulk = run.copy_bulk_connections > 0;
    let (transport, transport_mb_s, transport_cpu) = if over_bulk {
        ("bulk connection", bare_tls, bare_cpu)
    } else {
        ("raw libp2p stream", raw_tcp, raw_tcp_cpu)
    };
    let bound = transport_mb_s.min(store_write);
    let cpu = Cpu {
        transport: transport_cpu,
        store: store_cpu,
        copy: run.copy_cpu,
        bytes,
    };
    let cpu_limit = cpu.limit_mb_s();
    // The play's CPU per GB: the console's and this process's together.
    let stream_cpu = cpu.per_gb(run.stream_cpu.0 + run.stream_cpu.1);
    let nginx = nginx::run(&subdir(dir, "nginx")?, bytes, SEGMENT, (bytes, TITLE)).await;
    // A run without a TLS handshake counted went over noise.
    let cipher = |c: Option<String>| c.unwrap_or_else(|| "noise (ChaChaPoly)".into());
    let tcp_name = format!("TCP+{}", cipher(raw_tcp_cipher.clone()));
    let copy_name = match over_bulk {
        true => format!("engine->engine copy, bulk connection TCP+{bare_cipher}"),
        false => format!("engine->engine copy, libp2p stream {tcp_name}"),
    };

    let mut rows = vec![
        Row::new(
            "copy",
            format!("raw libp2p stream, {tcp_name}"),
            format!("{raw_tcp:.0} MB/s"),
        )
        .vs(
            format!("raw libp2p stream TCP+noise {raw_noise:.0} MB/s"),
            ratio(raw_tcp, raw_noise),
        ),
        Row::new(
            "copy",
            format!("bulk connection, TCP+{bare_cipher} without yamux (consoles' streams)"),
            format!("{bare_tls:.0} MB/s"),
        )
        .vs(
            format!("raw libp2p stream {tcp_name} {raw_tcp:.0} MB/s"),
            ratio(bare_tls, raw_tcp),
        ),
        Row::new(
            "copy",
            format!("raw libp2p stream, QUIC {}", cipher(quic_cipher.clone())),
            format!("{raw_quic:.0} MB/s"),
        )
        .vs(
            format!("raw libp2p stream {tcp_name} {raw_tcp:.0} MB/s"),
            ratio(raw_quic, raw_tcp),
        ),
        Row::new("copy", copy_name.clone(), format!("{copy_tcp:.0} MB/s")).vs(
            format!("min({transport}, store write {store_write:.0}) {bound:.0} MB/s"),
            ratio(copy_tcp, bound),
        ),
        Row::new("copy", copy_name.clone(), format!("{copy_tcp:.0} MB/s")).vs(
            format!("raw libp2p stream TCP {raw_tcp:.0} MB/s"),
            ratio(copy_tcp, raw_tcp),
        ),
        Row::new("copy", copy_name.clone(), format!("{copy_tcp:.0} MB/s")).vs(
            format!(
                "the cores' limit for transport + store work {cpu_limit:.0} MB/s ({} cores; {:.2} + {:.2} core-s/GB)",
                cpu.cores(),
                cpu.per_gb(cpu.transport),
                cpu.per_gb(cpu.store),
            ),
            ratio(copy_tcp, cpu_limit),
        ),
        Row::new(
            "copy",
            "one console, play --speed max, verified",
            format!("{stream:.0} MB/s"),
        )
        .vs(
            format!("the pipe alone (dd, 64 KiB writes, median of 5) {pipe:.0} MB/s"),
            ratio(stream, pipe),
        ),
    ];
    let mut value = json!({
        "bytes": bytes,
        "segment_bytes": SEGMENT,
        // The suite of the transport consoles' streams take: the bulk path.
        "cipher": bare_cipher.clone(),
        "ciphers": {
            "raw_tcp": cipher(raw_tcp_cipher),
            "raw_tcp_noise_only": cipher(noise_cipher),
            "raw_quic": cipher(quic_cipher),
            "copy": cipher(run.copy_cipher),
            "stream": cipher(run.stream_cipher),
        },
        "copy_tcp_mb_s": copy_tcp,
        // The transport the copy took (the bulk path unless the source's engine took no bulk
        // connection during it), and the bulk connections that engine took: a handful for
        // the program's 64 segments, each kept for the next.
        "copy_transport": transport,
        "copy_bulk_connections": run.copy_bulk_connections,
        // Cores busy in the bench's process (both stations, sending and receiving) during the
        // copy, of the machine's 2: short of 2, the copy waited on something else than the CPU
        // (the disk, or a stage of its own pipeline).
        "copy_cpu_cores": ratio(run.copy_cpu.as_secs_f64(), run.copy.as_secs_f64()),
        // CPU seconds per GB (10^9 bytes) of this process (both ends, or the store alone):
        // of the copy, of the raw libp2p stream over TCP, of the bulk connection, of the
        // store's durable write (the probe the bound took). A copy does its transport's work
        // and the store's on the same cores: `copy_cpu_limit_mb_s` is the rate the machine's
        // cores allow for both together (cores / the sum of the two), whatever the disk and
        // the link could do.
        "copy_cpu_s_per_gb": cpu.per_gb(cpu.copy),
        // When the copy's steps happened, in ms from the content manager's `Replicate`: what
        // a copy spends before its first segment and after its last, beside its bytes.
        "copy_phases": run.copy_phases.json(),
        "raw_libp2p_stream_tcp_cpu_s_per_gb": cpu.per_gb(raw_tcp_cpu),
        "raw_tls_no_yamux_cpu_s_per_gb": cpu.per_gb(bare_cpu),
        "store_write_cpu_s_per_gb": cpu.per_gb(cpu.store),
        "copy_cpu_limit_mb_s": cpu_limit,
        "copy_vs_cpu_limit": ratio(copy_tcp, cpu_limit),
        // The one console's play (below): CPU seconds per GB played, of the console and of
        // this process (the home engine, its director, and the bench reading the console's
        // output from its pipe), beside nginx's one download (`nginx_https_one_download_*`).
        "stream_cpu_s_per_gb": {
            "console": cpu.per_gb(run.stream_cpu.0),
            "stations_and_reader": cpu.per_gb(run.stream_cpu.1),
            "total": stream_cpu,
        },
        // The same play writing to /dev/null (the mean of two, as `stream_mb_s` is): the play
        // without the pipe to a player (nginx's one download writes nowhere either), and its
        // CPU as above.
        "stream_discarded_mb_s": discarded,
        "stream_discarded_cpu_s_per_gb": {
            "console": cpu.per_gb(run.discarded_cpu.0),
            "stations": cpu.per_gb(run.discarded_cpu.1),
            "total": cpu.per_gb(run.discarded_cpu.0 + run.discarded_cpu.1),
        },
        // The pipe alone (`pipe`): what a player on stdout could get at most on this machine.
        "pipe_mb_s": pipe,
        "stream_vs_pipe": ratio(stream, pipe),
        "raw_libp2p_stream_tcp_mb_s": raw_tcp,
        "raw_libp2p_stream_tcp_noise_mb_s": raw_noise,
        "raw_libp2p_stream_quic_mb_s": raw_quic,
        // The same bytes over a bulk connection (`net::bulk`: libp2p's TLS on a bare TCP
        // connection, no yamux), the transport of copies and consoles' streams: the ceiling.
        "raw_tls_no_yamux_mb_s": bare_tls,
        "raw_tls_no_yamux_cipher": bare_cipher,
        "ceiling_mb_s": bare_tls,
        "no_yamux_vs_ceiling": ratio(bare_tls, raw_tcp),
        "tls_vs_noise_ceiling": ratio(raw_tcp, raw_noise),
        "copy_vs_ceiling_tcp": ratio(copy_tcp, raw_tcp),
        "quic_vs_tcp_ceiling": ratio(raw_quic, raw_tcp),
        "store_write_mb_s": store_write,
        "store_write_before_copy_mb_s": store_before,
        "store_write_after_copy_mb_s": store_after,
        "copy_bound_mb_s": bound,
        "copy_vs_bound": ratio(copy_tcp, bound),
        "stream_mb_s": stream,
        "stream_first_byte_ms": (run.first_byte.as_secs_f64() * 1e5).round() / 100.0,
        "quic_copy": "not measured: a station's director and engines share --listen, and the registry runs over TCP, so stations cannot be made to copy over QUIC alone",
        "setup": "home station (1 engine) -> enrolled station (1 engine): ingest with 1 replica; timed from the content manager's Replicate to the target's ReplicaComplete; then `vodmesh-console play --speed max --out -` of the program from the home, timed from its start to its exit, and with `--out /dev/null`, two plays of each in the order pipe, /dev/null, /dev/null, pipe, each figure their mean; the pipe alone: `dd if=/dev/zero bs=64K` into the same reader, five runs",
    });
    match nginx {
        Ok(Some(n)) => {
            rows.push(
                Row::new(
                    "copy",
                    format!("raw libp2p stream, {tcp_name}"),
                    format!("{raw_tcp:.0} MB/s"),
                )
                .vs(
                    format!("nginx HTTPS {:.0} MB/s", n.https),
                    ratio(raw_tcp, n.https),
                ),
            );
            rows.push(
                Row::new(
                    "copy",
                    format!("bulk connection, TCP+{bare_cipher} without yamux"),
                    format!("{bare_tls:.0} MB/s"),
                )
                .vs(
                    format!("nginx HTTPS {:.0} MB/s", n.https),
                    ratio(bare_tls, n.https),
                ),
            );
            rows.push(
                Row::new(
                    "copy",
                    "one console, play --speed max, verified",
                    format!("{stream:.0} MB/s"),
                )
                .vs(
                    format!("one nginx HTTPS download {:.0} MB/s", n.https_one),
                    ratio(stream, n.https_one),
                ),
            );
            rows.push(
                Row::new(
                    "copy",
                    "one console, play --speed max, verified, into /dev/null (no pipe)",
                    format!("{discarded:.0} MB/s"),
                )
                .vs(
                    format!("one nginx HTTPS download {:.0} MB/s", n.https_one),
                    ratio(discarded, n.https_one),
                ),
            );
            rows.push(
                Row::new(
                    "copy",
                    "the pipe alone (dd, 64 KiB writes, median of 5)",
                    format!("{pipe:.0} MB/s"),
                )
                .vs(
                    format!("one nginx HTTPS download {:.0} MB/s", n.https_one),
                    ratio(pipe, n.https_one),
                ),
            );
            let (nginx_cpu, client_cpu) = n.https_one_cpu;
            if let Some(nginx_cpu) = nginx_cpu {
                let one_cpu = cpu.per_gb(nginx_cpu + client_cpu);
                rows.push(
                    Row::new(
                        "copy",
                        "one console, play --speed max: CPU (console, engine, reader)",
                        format!("{stream_cpu:.2} core-s/GB"),
                    )
                    .vs(
                        format!(
                            "one nginx HTTPS download {one_cpu:.2} core-s/GB (nginx {:.2}, client {:.2})",
                            cpu.per_gb(nginx_cpu),
                            cpu.per_gb(client_cpu),
                        ),
                        ratio(stream_cpu, one_cpu),
                    ),
                );
            }
            rows.push(
                Row::new("copy", copy_name, format!("{copy_tcp:.0} MB/s")).vs(
                    format!("nginx HTTPS {:.0} MB/s", n.https),
                    ratio(copy_tcp, n.https),
                ),
            );
            rows.push(
                Row::new(
                    "copy",
                    "nginx HTTPS (TLS 1.3)",
                    format!("{:.0} MB/s", n.https),
                )
                .vs(
                    format!("nginx HTTP {:.0} MB/s", n.http),
                    ratio(n.https, n.http),
                ),
            );
            if let Some(obj) = value.as_object_mut() {
                obj.insert("nginx_https_mb_s".into(), json!(n.https));
                obj.insert("nginx_http_mb_s".into(), json!(n.http));
                obj.insert("nginx_https_one_download_mb_s".into(), json!(n.https_one));
                obj.insert(
                    "nginx_https_one_download_cpu_s_per_gb".into(),
                    json!({
                        "nginx": nginx_cpu.map(|c| cpu.per_gb(c)),
                        "client": cpu.per_gb(client_cpu),
                        "total": nginx_cpu.map(|c| cpu.per_gb(c + client_cpu)),
                    }),
                );
                obj.insert(
                    "copy_vs_nginx_https".into(),
                    json!(ratio(copy_tcp, n.https)),
                );
                obj.insert("copy_vs_nginx_http".into(), json!(ratio(copy_tcp, n.http)));
                // The transport of consoles' streams, the bulk path, against nginx.
                obj.insert(
                    "ceiling_vs_nginx_https".into(),
                    json!(ratio(bare_tls, n.https)),
                );
                obj.insert(
                    "libp2p_stream_vs_nginx_https".into(),
                    json!(ratio(raw_tcp, n.https)),
                );
                obj.insert(
                    "stream_vs_nginx_https".into(),
                    json!(ratio(stream, n.https_one)),
                );
                // The play without the pipe, and the pipe alone (the most a play into it
                // could reach), against the same download.
                obj.insert(
                    "stream_discarded_vs_nginx_https".into(),
                    json!(ratio(discarded, n.https_one)),
                );
                obj.insert(
                    "pipe_vs_nginx_https".into(),
                    json!(ratio(pipe, n.https_one)),
                );
                obj.insert(
                    "no_yamux_vs_nginx_https".into(),
                    json!(ratio(bare_tls, n.https)),
                );
            }
        }
        skipped => {
            let why = match skipped {
                Err(e) => format!("{e:#}"),
                _ => "nginx is not installed".into(),
            };
            rows.push(Row::new(
                "copy",
                "nginx HTTPS/HTTP",
                format!("skipped: {why}"),
            ));
            if let Some(obj) = value.as_object_mut() {
                obj.insert("nginx".into(), json!({ "skipped": why }));
            }
        }
    }
    Ok((value, rows))
}

/// Runs `f`; returns its output and the TLS suites this process's handshakes negotiated
/// meanwhile ([`used_since`]).
async fn ciphers_of<T>(f: impl Future<Output = T>) -> (T, Option<String>) {
    let before = negotiated_ciphers();
    let out = f.await;
    (out, used_since(&before))
}

/// The TLS suites negotiated since `before` (a `negotiated_ciphers()`), joined by `+`, e.g.
/// `TLS13_AES_128_GCM_SHA256`; `None` when no TLS handshake was made.
fn used_since(before: &[(String, u64)]) -> Option<String> {
    let used: Vec<String> = negotiated_ciphers()
        .into_iter()
        .filter(|(name, n)| {
            let was = before
                .iter()
                .find(|(b, _)| b == name)
                .map_or(0, |(_, n)| *n);
            *n > was
        })
        .map(|(name, _)| name)
        .collect();
    (!used.is_empty()).then(|| used.join("+"))
}

/// What [`replicate_and_play`] timed, and the suites its handshakes negotiated.
struct Run {
    copy: Duration,
    /// The CPU time the bench's process (both stations) spent during the copy.
    copy_cpu: Duration,
    /// When the copy's steps happened.
    copy_phases: Phases,
    copy_cipher: Option<String>,
    /// Bulk connections the home's engine took during the copy.
    copy_bulk_connections: u64,
    /// The console's run into the pipe, start to exit: the mean of two.
    stream: Duration,
    /// The first of them: the console's start to its first byte out.
    first_byte: Duration,
    /// The CPU the play took: the console's, and this process's (the stations, and the
    /// bench reading the console's output); the mean of the two plays.
    stream_cpu: (Duration, Duration),
    stream_cipher: Option<String>,
    /// A console's run writing to /dev/null, start to exit, and its CPU (as `stream_cpu`):
    /// the mean of two.
    discarded: Duration,
    discarded_cpu: (Duration, Duration),
}

/// A home station and one enrolled station listening on `listen`; `bytes` ingested into the
/// home, then replicated to the other; then one console plays it from the home.
async fn replicate_and_play(dir: &Path, listen: Vec<Multiaddr>, bytes: u64) -> Result<Run> {
    let shape = Shape {
        listen,
        ..Shape::new(1)
    };
    // The stations' own connections (enrollment, registry) count with the copy's: the
    // engines may reuse one of them.
    let before = negotiated_ciphers();
    let swarm = BenchSwarm::start(dir, shape.clone(), &[shape]).await?;
    let result = async {
        let connections = swarm.home.metrics().bulk_connections();
        let (program, copy, copy_cpu, copy_phases) = replicate(dir, &swarm, bytes).await?;
        let copy_bulk_connections = swarm.home.metrics().bulk_connections() - connections;
        let copy_cipher = used_since(&before);
        // Into the pipe and into /dev/null twice each, in the order pipe, discard, discard,
        // pipe: a play right after another may find the engine warmer (its preloads, the
        // page cache), and this order gives each output that place once.
        let (first, stream_cipher) = ciphers_of(play(dir, &swarm, program, bytes, Out::Pipe)).await;
        let first = first?;
        let discarded = [
            play(dir, &swarm, program, bytes, Out::Discard).await?,
            play(dir, &swarm, program, bytes, Out::Discard).await?,
        ];
        let piped = [first, play(dir, &swarm, program, bytes, Out::Pipe).await?];
        let first_byte = piped[0].first_byte.unwrap_or(piped[0].elapsed);
        let (stream, stream_cpu) = Played::mean(&piped);
        let (discarded, discarded_cpu) = Played::mean(&discarded);
        Ok(Run {
            copy,
            copy_cpu,
            copy_phases,
            copy_cipher,
            copy_bulk_connections,
            stream,
            first_byte,
            stream_cpu,
            stream_cipher,
            discarded,
            discarded_cpu,
        })
    }
    .await;
    swarm.shutdown().await;
    result
}

/// Ingests `bytes` into the home with one replica; returns the program, the replication
/// time and the CPU time this process (both stations) spent meanwhile.
async fn replicate(
    dir: &Path,
    swarm: &BenchSwarm,
    bytes: u64,
) -> Result<(ProgramId, Duration, Duration, Phases)> {
    let target = swarm.others[0].peer_id();
    let home = swarm.home.peer_id();
    let sink = events::sink();
    swarm.home.send_events_to(&sink);
    swarm.others[0].send_events_to(&sink);
    let mut log = sink.subscribe();
    let key = swarm.home_dir.join("identity.key");
    // The content manager sends `Replicate` once the ingest commits (claim 12); the copy
    // is timed from that message to the target's last segment tabled.
    let ingest = super::swarm::ingest_into(
        swarm.home.addr(),
        &key,
        dir,
        (TITLE, 1),
        bytes,
        SEGMENT,
        8_000_000,
    );
    tokio::pin!(ingest);
    let mut program = None;
    let mut start = None;
    let mut phases = Phases::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120 + bytes / 4_000_000);
    loop {
        let event = tokio::select! {
            done = &mut ingest, if program.is_none() => {
                program = Some(done?);
                continue;
            }
            e = tokio::time::timeout_at(deadline, log.recv()) => e,
        };
        let e = match event {
            Err(_) => bail!("the copy did not complete in time (see the station logs)"),
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(e)) => bail!("event bus: {e}"),
            Ok(Ok(e)) => e,
        };
        if e.peer == home && e.kind == (Kind::ReplicateSent { target }) {
            start = Some((e.program, Instant::now(), own_cpu_time()));
        }
        if let Some((p, t, _)) = start
            && e.program == p
        {
            phases.see(&e.kind, t.elapsed());
        }
        if let Some((p, t, cpu)) = start
            && e.program == p
            && e.peer == target
            && e.kind == Kind::ReplicaComplete
        {
            let elapsed = t.elapsed();
            let cpu = own_cpu_time().saturating_sub(cpu);
            let program = match program {
                Some(program) => program,
                None => (&mut ingest).await?,
            };
            return Ok((program, elapsed, cpu, phases));
        }
    }
}

/// Where the console's play writes.
#[derive(Clone, Copy)]
enum Out {
    /// `--out -`: stdout, a pipe this process reads (a player's place).
    Pipe,
    /// `--out /dev/null`: no pipe, as nginx's one download writes nowhere.
    Discard,
}

/// What one console's play took.
struct Played {
    /// Its start to its exit.
    elapsed: Duration,
    /// Its start to its first byte out (read from the pipe; none when discarded).
    first_byte: Option<Duration>,
    /// The console's CPU, and this process's (the stations, and the reader of the pipe).
    cpu: (Duration, Duration),
}

impl Played {
    /// The mean time and the mean CPU (the console's, this process's) of `plays`.
    fn mean(plays: &[Played; 2]) -> (Duration, (Duration, Duration)) {
        let [a, b] = plays;
        (
            (a.elapsed + b.elapsed) / 2,
            ((a.cpu.0 + b.cpu.0) / 2, (a.cpu.1 + b.cpu.1) / 2),
        )
    }
}

/// `vodmesh-console play --speed max` of `program` from the home into `out`: the time from the
/// console's start to its exit and to its first byte out, and the CPU it took (the console's,
/// this process's). Fails unless every byte came out (read from the pipe, or as the console's
/// statistics count them) and the console says it verified them.
async fn play(
    dir: &Path,
    swarm: &BenchSwarm,
    program: ProgramId,
    bytes: u64,
    out: Out,
) -> Result<Played> {
    let home = swarm.console_home(&dir.join("console"))?;
    let console = sibling_bin("vodmesh-console")?;
    let stats_path = dir.join("play-stats.json");
    // The play before's statistics are not this one's.
    let _ = std::fs::remove_file(&stats_path);
    let started = Instant::now();
    let (cpu, children) = (own_cpu_time(), children_cpu_time());
    let (to, stdout) = match out {
        Out::Pipe => ("-", Stdio::piped()),
        Out::Discard => ("/dev/null", Stdio::null()),
    };
    let mut child = tokio::process::Command::new(&console)
        .env("VODMESH_HOME", &home)
        .args(["play", "--node", &swarm.home.addr().to_string()])
        .arg(program.to_string())
        .args(["--speed", "max", "--out", to, "--stats"])
        .arg(&stats_path)
        .stdout(stdout)
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", console.display()))?;
    // Bytes read from the pipe, and when the first came (none for /dev/null).
    let (got, first_byte) = match child.stdout.take() {
        Some(stdout) => {
            let (got, first) = read_to_end(stdout, (0u64, None), move |(got, first), n| {
                first.get_or_insert_with(|| started.elapsed());
                *got += n as u64;
            })
            .await?;
            (Some(got), first)
        }
        None => (None, None),
    };
    let status = child.wait().await?;
    let elapsed = started.elapsed();
    // The console is the one child that ended meanwhile.
    let cpu = (
        children_cpu_time().saturating_sub(children),
        own_cpu_time().saturating_sub(cpu),
    );
    if !status.success() {
        bail!("play --speed max ended with {status} after {got:?} of {bytes} bytes read");
    }
    let stats: Value = serde_json::from_slice(&std::fs::read(&stats_path)?)?;
    // What the console says it played, and for a pipe what came out of it too.
    let played = stats["bytes"].as_u64().unwrap_or_default();
    if played != bytes || got.is_some_and(|got| got != bytes) {
        bail!("play --speed max played {played} of {bytes} bytes ({got:?} read from its pipe)");
    }
    if stats["verified"] != true {
        bail!("the console did not verify what it played: {stats}");
    }
    Ok(Played {
        elapsed,
        first_byte,
        cpu,
    })
}
