//! `vodmesh-node`: runs one media station (a director and its engines) until SIGINT/SIGTERM.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::CommandFactory;
use vodmesh_client::cli::{Signal, Stop, usage_error};
use vodmesh_node::cli::{Args, EngineArgs, ParseError, Sub};
use vodmesh_node::config::default_listen;
use vodmesh_node::{Station, StationConfig};

/// mimalloc: the glibc allocator costs 20-25 % on the stream read path (DESIGN section 12).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let parsed = match vodmesh_node::cli::parse(std::env::args_os().collect(), &|name| {
        std::env::var(name).ok()
    }) {
        Ok(parsed) => parsed,
        Err(ParseError::Config(e)) => usage_error(e),
        Err(ParseError::Clap(e)) => e.exit(),
    };
    if parsed.args.print_config {
        print!("{}", parsed.effective);
        return;
    }
    if let Some(Sub::Docs(docs)) = &parsed.args.cmd {
        docs.exit(Args::command());
    }
    let args = &parsed.args;
    if args.cmd.is_none() && args.engines == 0 && args.engine_peers.is_empty() {
        usage_error("a station needs at least one engine (--engines N, N >= 1, or --engine-peer)");
    }
    vodmesh_client::cli::main(
        // kad warns "Failed to trigger bootstrap: No known peers" once a station listens with
        // no peer yet (its automatic bootstrap, which cannot be turned off): a first station
        // is alone, which is normal. The periodic one the director drives only with a peer.
        "warn,libp2p_kad::behaviour=error,vodmesh_node=info,vodmesh_registry=info",
        parsed.args.log,
        run(parsed.args),
    );
}

async fn run(args: Args) -> Result<()> {
    let mut stop = Stop::install().context("installing the SIGINT and SIGTERM handlers")?;
    match args.cmd {
        Some(Sub::Engine(engine)) => return run_engine(engine, stop).await,
        Some(Sub::Docs(_)) | None => {}
    }
    let Some(data) = args.data else {
        bail!("--data DIR is required");
    };
    let mut config = StationConfig::new(&data);
    config.listen = args.listen;
    config.announce = args.announce;
    config.bootstrap = args.bootstrap;
    config.engines = args.engines;
    config.disks = args.disks;
    config.capacity = args.capacity;
    config.max_streams = args.max_streams;
    config.home = args.home;
    config.scrub = args.scrub;
    config.scrub_pace.rate = u64::from(args.scrub_rate) * 1_000_000;
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
    config.http = args.http;
    config.engine_http = args.engine_http;
    config.http_tls = tls(args.tls_cert.as_deref(), args.tls_key.as_deref())?;
    let scheme = scheme(&config.http_tls);
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
    if let Some(addr) = station.http_addr() {
        println!("http {scheme}://{addr}/");
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();

    // A station whose enrollment the auth server refused is no member and never will be
    // with that token: it stops, with the reason, rather than run on useless.
    let tokens = station.engine_tokens();
    let signal = tokio::select! {
        signal = stop.wait() => signal,
        line = tokens.refused() => {
            station.shutdown().await;
            bail!("enrollment refused: {line}");
        }
        why = station.director_failed() => {
            station.shutdown().await;
            bail!("the director stopped: {why}; the station stops with it");
        }
    };
    if signal == Signal::Term && !drain_timeout.is_zero() {
        tracing::info!(timeout_s = drain_timeout.as_secs(), "SIGTERM: draining");
        tokio::select! {
            left = station.drain(drain_timeout) => match left {
                0 => tracing::info!("drained: no stream left"),
                n => tracing::warn!(streams = n, "drain timed out; stopping with streams running"),
            },
            _ = stop.wait() => tracing::info!("second signal: stopping now"),
        }
    }
    tracing::info!("shutting down");
    station.shutdown().await;
    Ok(())
}

/// `vodmesh-node engine`: one engine attached to its director until SIGINT/SIGTERM.
async fn run_engine(args: EngineArgs, mut signals: Stop) -> Result<()> {
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
        http: args.http,
        tls: tls(args.tls_cert.as_deref(), args.tls_key.as_deref())?,
    };
    let scheme = scheme(&config.tls);
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
    if let Some(addr) = engine.http_addr {
        println!("http {scheme}://{addr}/");
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    signals.wait().await;
    tracing::info!("shutting down");
    let _ = stop.send(true);
    engine.stopped().await;
    Ok(())
}

/// The HTTP edge's TLS of `--tls-cert` and `--tls-key` (clap requires both or neither).
fn tls(
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
) -> Result<Option<vodmesh_node::tls::Tls>> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(vodmesh_node::tls::Tls::load(cert, key)?)),
        (None, None) => Ok(None),
        _ => bail!("--tls-cert and --tls-key go together"),
    }
}

/// The scheme of the HTTP edge's URLs.
fn scheme(tls: &Option<vodmesh_node::tls::Tls>) -> &'static str {
    if tls.is_some() { "https" } else { "http" }
}
