//! `vodmesh-node`: runs one media station (a director and its engines) until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use libp2p::{Multiaddr, PeerId};
use vodmesh_node::config::default_listen;
use vodmesh_node::{Station, StationConfig};
use vodmesh_proto::token::IssuerKey;

/// Starts one vodmesh station: a director (its seat in the media location registry) and N
/// engines, each a libp2p peer with its own identity and listen address.
///
/// Prints `director <MULTIADDR>` on stdout once it listens and writes DIR/node.json with the
/// peer ids and addresses of the director and every engine. Other stations join the swarm by
/// giving that address to --bootstrap, and consoles and tools take it as --node: it is one
/// other hosts can reach (the first --announce address, else the host's first address that
/// is not loopback; loopback only when the host has nothing else).
///
/// Behind NAT (or with a public address that is on no interface of the host): listen on
/// fixed ports, forward the director's port and the N ports after it (one per engine: engine
/// i listens on the director's port + 1 + i) to this host, TCP and UDP for QUIC, and give
/// the public address with --announce. For example `--listen /ip4/0.0.0.0/tcp/4001 --announce
/// /ip4/203.0.113.7/tcp/4001 --engines 2` announces the engines at ports 4002 and 4003.
///
/// Deployment modes: (a) without a subcommand, one process holds the director and its
/// --engines N engines; (b) `vodmesh-node engine --director MULTIADDR` runs one engine in a
/// process of its own (another machine, its own disks), attached to a director started with
/// --engine-peer <that engine's peer id>. The director treats both kinds alike.
#[derive(Parser, Debug)]
#[command(
    name = "vodmesh-node",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Sub>,
    /// Data directory: identities (kept across restarts), databases, segments.
    #[arg(long, value_name = "DIR", required = true)]
    data: Option<PathBuf>,
    /// Director listen address (repeatable). Engines listen on the same hosts, engine i on
    /// the port + 1 + i (a system-chosen port when it is 0). Default: TCP and QUIC on
    /// 0.0.0.0, system-chosen ports; on 0.0.0.0 the station is announced at every address of
    /// the host.
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// An address other hosts reach the director at that is on no interface of this host
    /// (behind NAT: the public address and forwarded port; repeatable). Announced first: it
    /// is the one printed, and consoles and other stations dial it; engine i is announced at
    /// the port + 1 + i of each.
    #[arg(long, value_name = "MULTIADDR")]
    announce: Vec<Multiaddr>,
    /// A director of an existing station, ending in /p2p/<peer id> (repeatable): the
    /// `director` line that station printed.
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<Multiaddr>,
    /// Engines in this station.
    #[arg(long, default_value_t = 1, value_name = "N")]
    engines: usize,
    /// A segment directory, one per disk (repeatable). Default: DIR/segments.
    #[arg(long = "disk", value_name = "DIR")]
    disks: Vec<PathBuf>,
    /// Bytes of segment storage per engine; 0 = bounded only by the disks.
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    capacity: u64,
    /// Concurrent streams per engine.
    #[arg(long, default_value_t = 64, value_name = "N")]
    max_streams: u32,
    /// Re-hash every stored segment at start (slow on big stores) and drop any that no longer
    /// match; without it, corruption is still caught when a segment is read.
    #[arg(long)]
    scrub: bool,
    /// An ingest that stores no segment for this many seconds (its client was killed or
    /// lost) is given up, and the segments it stored are dropped (content manager).
    #[arg(long, default_value_t = vodmesh_node::config::INGEST_TIMEOUT.as_secs(), value_name = "SECS")]
    ingest_timeout: u64,
    /// This is a home station: it keeps whole programs and never evicts them.
    #[arg(long)]
    home: bool,
    /// This station runs the content manager (ingest, publish, distribution).
    #[arg(long)]
    content_manager: bool,
    /// This station runs the auth server: an issuer key (DIR/issuer.key) and the subscriber
    /// database. Its issuer key goes into node.json as "issuer" and is printed as
    /// `issuer <KEY>` after the director line; other stations pass it to --trust.
    #[arg(long)]
    auth: bool,
    /// Accept tokens signed by this issuer (`ed25519:<base58>`, node.json's "issuer" of the
    /// auth station); repeatable. A station with no trusted issuer (and not --auth) serves no
    /// stream and no copy.
    #[arg(long, value_name = "ISSUER")]
    trust: Vec<IssuerKey>,
    /// A peer id whose admin proofs this station accepts (repeatable). The station's own
    /// identity (DIR/identity.key) is always an admin.
    #[arg(long = "admin", value_name = "PEERID")]
    admins: Vec<PeerId>,
    /// An enrollment token file (`vodmesh enroll`): presented to the auth server at start;
    /// the station's engines then receive engine tokens (DIR/engines/<i>/engine.token).
    #[arg(long, value_name = "FILE")]
    enroll: Option<PathBuf>,
    /// Region name, used to prefer nearby stations.
    #[arg(long, value_name = "NAME")]
    region: Option<String>,
    /// Coordinates as LAT,LON.
    #[arg(long, value_name = "LAT,LON", value_parser = parse_coords)]
    coords: Option<(f64, f64)>,
    /// Link bandwidth to the rest of the swarm, Mbit/s, as advertised to other stations for
    /// the cost of copying from this one (corrected by what they measure).
    #[arg(long, default_value_t = 1000, value_name = "MBPS")]
    bandwidth: u32,
    /// Pace each copy this station's engines serve to this many Mbit/s (0: unpaced), to keep
    /// copies from crowding out streams on the uplink.
    #[arg(long, default_value_t = 0, value_name = "MBPS")]
    copy_rate: u32,
    /// Lifetime of this station's registry records, in seconds; they are republished every
    /// third of it. A stopped station leaves every listing within this time.
    #[arg(long, default_value_t = 60, value_name = "SECS", value_parser = clap::value_parser!(u64).range(3..))]
    record_ttl: u64,
    /// Lifetime of this station's provider records (the programs it holds), in seconds; every
    /// program is re-provided every third of it. Default: 30 times --record-ttl. Directors
    /// skip a provider whose station record is gone, so a stopped station listed this long
    /// costs lookups, not plays.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(3..))]
    provider_ttl: Option<u64>,
    /// Serve this station's metrics as Prometheus text at http://ADDR:PORT/metrics, and a
    /// status page of the whole swarm at http://ADDR:PORT/ (its data at /status.json).
    /// Prints `metrics http://ADDR:PORT/metrics` once it listens. Port 0 picks a free port.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<std::net::SocketAddr>,
    /// The peer id of an engine process (`vodmesh-node engine`) allowed to attach to this
    /// director over /vodmesh/blade/1 (repeatable; `vodmesh keygen --out DIR/identity.key`
    /// makes its identity and prints the id). Each takes a slot after the --engines N
    /// in-process engines; --engines may then be 0.
    #[arg(long = "engine-peer", value_name = "PEERID")]
    engine_peers: Vec<PeerId>,
    /// On SIGTERM, drain for at most this many seconds before stopping: new streams go to
    /// other stations that hold the segment and /readyz answers 503, while the streams
    /// running finish; the station stops once none runs, or at this limit. 0 stops at once,
    /// as SIGINT does (a second signal during a drain stops at once too).
    #[arg(long, default_value_t = 20, value_name = "SECS")]
    drain_timeout: u64,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    /// Runs one engine in a process of its own, attached to its station's director
    /// (deployment mode b). Prints `engine <MULTIADDR>` once it listens; reattaches by itself
    /// when the link drops (the director marks it down meanwhile and up again after).
    Engine(EngineArgs),
}

#[derive(clap::Args, Debug)]
struct EngineArgs {
    /// The director to attach to, ending in /p2p/<peer id>; it must have been started with
    /// --engine-peer <this engine's peer id>.
    #[arg(long, value_name = "MULTIADDR")]
    director: Multiaddr,
    /// Data directory: the engine's identity (DIR/identity.key), its store index, and its
    /// segments unless --disk is given.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// A segment directory, one per disk (repeatable). Default: DIR/segments.
    #[arg(long = "disk", value_name = "DIR")]
    disks: Vec<PathBuf>,
    /// Listen address (repeatable). Default: TCP and QUIC on 0.0.0.0, system-chosen ports.
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// An address other hosts reach this engine at that is on no interface of its host
    /// (behind NAT: the public address and the forwarded port of a fixed --listen port;
    /// repeatable). Consoles and other stations' engines dial it first.
    #[arg(long, value_name = "MULTIADDR")]
    announce: Vec<Multiaddr>,
    /// Bytes of segment storage; 0 = bounded only by the disks.
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    capacity: u64,
    /// Concurrent streams.
    #[arg(long, default_value_t = 64, value_name = "N")]
    max_streams: u32,
    /// Accept console tokens signed by this issuer (repeatable), as the station does; the
    /// engine token its director forwards must come from one of them too.
    #[arg(long, value_name = "ISSUER")]
    trust: Vec<IssuerKey>,
    /// Serve this engine's metrics as Prometheus text at http://ADDR:PORT/metrics (streams,
    /// bytes, copies, refusals, store usage per disk, and whether it is attached:
    /// vodmesh_engine_up). Prints `metrics http://ADDR:PORT/metrics`.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<std::net::SocketAddr>,
}

fn parse_coords(s: &str) -> Result<(f64, f64), String> {
    let (lat, lon) = s.split_once(',').ok_or("expected LAT,LON")?;
    let lat: f64 = lat.trim().parse().map_err(|_| "latitude is not a number")?;
    let lon: f64 = lon
        .trim()
        .parse()
        .map_err(|_| "longitude is not a number")?;
    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        return Err("coordinates out of range".into());
    }
    Ok((lat, lon))
}

/// mimalloc: the glibc allocator costs 20-25 % on the stream read path (DESIGN section 12).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    vodmesh_client::cli::main(
        "warn,vodmesh_node=info,vodmesh_registry=info",
        run(Args::parse()),
    );
}

async fn run(args: Args) -> Result<()> {
    if let Some(Sub::Engine(engine)) = args.cmd {
        return run_engine(engine).await;
    }
    let Some(data) = args.data else {
        bail!("--data DIR is required");
    };
    if args.engines == 0 && args.engine_peers.is_empty() {
        bail!("a station needs at least one engine (--engines N, N >= 1, or --engine-peer)");
    }
    let mut config = StationConfig::new(&data);
    config.listen = if args.listen.is_empty() {
        default_listen("0.0.0.0")
    } else {
        args.listen
    };
    config.announce = args.announce;
    config.bootstrap = args.bootstrap;
    config.engines = args.engines;
    config.disks = args.disks;
    config.capacity = args.capacity;
    config.max_streams = args.max_streams;
    config.home = args.home;
    config.scrub = args.scrub;
    config.ingest_timeout = Duration::from_secs(args.ingest_timeout);
    config.content_manager = args.content_manager;
    config.auth = args.auth;
    config.trust = args.trust;
    config.admins = args.admins;
    config.enroll = args.enroll;
    config.region = args.region;
    config.coords = args.coords;
    config.bandwidth_mbps = args.bandwidth;
    config.copy_rate_mbps = args.copy_rate;
    config.registry.record_ttl = Duration::from_secs(args.record_ttl);
    config.registry.provider_ttl = args.provider_ttl.map(Duration::from_secs);
    config.metrics_addr = args.metrics;
    config.engine_peers = args.engine_peers;
    let drain_timeout = Duration::from_secs(args.drain_timeout);

    let station = Station::start(config)
        .await
        .context("starting the station")?;
    println!("director {}", station.addr());
    for engine in &station.engines {
        if let Some(addr) = engine.addrs.first() {
            println!("engine {addr}");
        }
    }
    if let Some(issuer) = station.issuer() {
        println!("issuer {issuer}");
    }
    if let Some(addr) = station.metrics_addr() {
        println!("metrics http://{addr}/metrics");
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();

    if wait_for_signal().await? == Signal::Term && !drain_timeout.is_zero() {
        tracing::info!(timeout_s = drain_timeout.as_secs(), "SIGTERM: draining");
        tokio::select! {
            left = station.drain(drain_timeout) => match left {
                0 => tracing::info!("drained: no stream left"),
                n => tracing::warn!(streams = n, "drain timed out; stopping with streams running"),
            },
            _ = wait_for_signal() => tracing::info!("second signal: stopping now"),
        }
    }
    tracing::info!("shutting down");
    station.shutdown().await;
    Ok(())
}

/// `vodmesh-node engine`: one engine attached to its director until SIGINT/SIGTERM.
async fn run_engine(args: EngineArgs) -> Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let config = vodmesh_node::blade::EngineProcess {
        director: args.director,
        data: args.data,
        disks: args.disks,
        listen: if args.listen.is_empty() {
            default_listen("0.0.0.0")
        } else {
            args.listen
        },
        announce: args.announce,
        capacity: args.capacity,
        max_streams: args.max_streams,
        trust: args.trust,
        metrics: args.metrics,
    };
    let engine = vodmesh_node::blade::start_engine(config, stopped)
        .await
        .context("starting the engine")?;
    // The address to give other hosts, as a station prints its director's.
    if let Some(addr) = engine.addrs.first() {
        println!("engine {addr}");
    }
    if let Some(addr) = engine.metrics_addr {
        println!("metrics http://{addr}/metrics");
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    wait_for_signal().await?;
    tracing::info!("shutting down");
    let _ = stop.send(true);
    engine.stopped().await;
    Ok(())
}

/// The signal that asked the process to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signal {
    /// SIGINT (Ctrl-C): stop now.
    Int,
    /// SIGTERM (systemd, docker, kubernetes): a station drains first.
    Term,
}

async fn wait_for_signal() -> Result<Signal> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT").map(|()| Signal::Int),
            _ = term.recv() => Ok(Signal::Term),
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")
        .map(|()| Signal::Int)
}
