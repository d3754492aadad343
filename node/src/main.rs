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
/// giving that address to --bootstrap.
#[derive(Parser, Debug)]
#[command(name = "vodmesh-node", version)]
struct Args {
    /// Data directory: identities (kept across restarts), databases, segments.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Director listen address (repeatable). Engines listen on the same hosts, ports of their
    /// own. Default: TCP and QUIC on 0.0.0.0, system-chosen ports.
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// A director of an existing station, ending in /p2p/<peer id> (repeatable).
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
    /// Link bandwidth to the rest of the swarm, Mbit/s.
    #[arg(long, default_value_t = 1000, value_name = "MBPS")]
    bandwidth: u32,
    /// Lifetime of this station's registry records, in seconds; they are republished every
    /// third of it. A stopped station leaves every listing within this time.
    #[arg(long, default_value_t = 60, value_name = "SECS", value_parser = clap::value_parser!(u64).range(3..))]
    record_ttl: u64,
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

#[tokio::main]
async fn main() {
    init_tracing();
    if let Err(e) = run(Args::parse()).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "warn,vodmesh_node=info,vodmesh_registry=info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(args: Args) -> Result<()> {
    if args.engines == 0 {
        bail!("a station needs at least one engine (--engines N, N >= 1)");
    }
    let mut config = StationConfig::new(&args.data);
    config.listen = if args.listen.is_empty() {
        default_listen("0.0.0.0")
    } else {
        args.listen
    };
    config.bootstrap = args.bootstrap;
    config.engines = args.engines;
    config.disks = args.disks;
    config.capacity = args.capacity;
    config.max_streams = args.max_streams;
    config.home = args.home;
    config.scrub = args.scrub;
    config.content_manager = args.content_manager;
    config.auth = args.auth;
    config.trust = args.trust;
    config.admins = args.admins;
    config.enroll = args.enroll;
    config.region = args.region;
    config.coords = args.coords;
    config.bandwidth_mbps = args.bandwidth;
    config.registry.record_ttl = Duration::from_secs(args.record_ttl);

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
    use std::io::Write;
    let _ = std::io::stdout().flush();

    wait_for_signal().await?;
    tracing::info!("shutting down");
    station.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}
