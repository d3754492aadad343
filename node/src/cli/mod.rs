//! `vodmesh-node`'s command line (clap): the flags of a station ([`Args`]), of an engine
//! process ([`EngineArgs`]), and how they are read: from the command line, the environment
//! and a `--config` file ([`layers`]), in that order of precedence ([`parse`]).
//!
//! In the library, not the binary, so that tests check every flag that packaging files
//! (compose.yaml, the systemd units, the example configuration) use against the real
//! definition: a renamed flag fails them.

pub mod layers;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser};
use libp2p::{Multiaddr, PeerId};
use vodmesh_client::cli::{Docs, EXIT_CODES, LogArgs};
use vodmesh_proto::token::IssuerKey;

use crate::config::default_listen;

/// How the flags of a station are read, after its options (`after_help`).
const CONFIGURATION: &str = "\
Configuration: every flag above is also a key of the TOML file of --config FILE (or
VODMESH_CONFIG): `max-streams = 64` (`max_streams` too), switches as true or false, repeatable
flags as arrays (`listen = [\"/ip4/0.0.0.0/tcp/4001\"]`); and an environment variable
VODMESH_<FLAG>: VODMESH_MAX_STREAMS=64, repeatable flags comma-separated, switches true or
false (--home is VODMESH_HOME_STATION: VODMESH_HOME is the console's directory). A flag on
the command line beats the environment, which beats the file, which beats the default; an
unknown key is an error. --print-config prints the result. The subcommands (engine,
completions, man) take their flags only.";

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
    version = vodmesh_client::version!(),
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = format!("{CONFIGURATION}\n\n{EXIT_CODES}"),
)]
pub struct Args {
    /// A subcommand instead of a station.
    #[command(subcommand)]
    pub cmd: Option<Sub>,
    /// Read flags from this TOML file (see "Configuration" below); flags given on the command
    /// line and VODMESH_* variables take precedence over it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (TOML, each value with where it came from: flag,
    /// variable, file or default) and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
    /// Data directory: identities (kept across restarts), databases, segments.
    #[arg(long, value_name = "DIR", required = true)]
    pub data: Option<PathBuf>,
    /// Director listen address (repeatable). Engines listen on the same hosts, engine i on
    /// the port + 1 + i (a system-chosen port when it is 0). Default: TCP and QUIC on
    /// 0.0.0.0, system-chosen ports; on 0.0.0.0 the station is announced at every address of
    /// the host.
    #[arg(long, value_name = "MULTIADDR", default_values_t = default_listen("0.0.0.0"))]
    pub listen: Vec<Multiaddr>,
    /// An address other hosts reach the director at that is on no interface of this host
    /// (behind NAT: the public address and forwarded port; repeatable). Announced first: it
    /// is the one printed, and consoles and other stations dial it; engine i is announced at
    /// the port + 1 + i of each.
    #[arg(long, value_name = "MULTIADDR")]
    pub announce: Vec<Multiaddr>,
    /// A director of an existing station, ending in /p2p/<peer id> (repeatable): the
    /// `director` line that station printed.
    #[arg(long, value_name = "MULTIADDR", value_parser = director_addr)]
    pub bootstrap: Vec<Multiaddr>,
    /// Engines in this station (at most 1024, as many as an enrollment lists).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = engine_count)]
    pub engines: usize,
    /// A directory on a disk for segments (repeatable: one per disk); engine i keeps its
    /// segments in DISK/engine-<i>. Default: DIR/engines/<i>/segments under --data.
    #[arg(long = "disk", value_name = "DISK")]
    pub disks: Vec<PathBuf>,
    /// Bytes of segment storage per engine; 0 = bounded only by the disks (a segment the
    /// disk has no room for is refused, 1 MiB kept free for the index).
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    pub capacity: u64,
    /// Concurrent streams per engine (1 or more).
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams: u32,
    /// Re-hash every stored segment at start (slow on big stores) and drop any that no longer
    /// match; without it, corruption is still caught by the background scrub (--scrub-rate)
    /// and by the engine's checked reads (raw streams), and a copy's receiver refuses it.
    #[arg(long)]
    pub scrub: bool,
    /// Re-hash the stored segments in the background at this many MB/s per engine, in passes
    /// an hour apart, and drop any that no longer match (0: no background scrub). Consoles
    /// check every byte they play; this finds a damaged copy before they are sent to it.
    #[arg(long, default_value_t = crate::engine::scrub::DEFAULT_RATE_MB_S, value_name = "MB_S")]
    pub scrub_rate: u32,
    /// An ingest that stores no segment for this many seconds (its client was killed or
    /// lost) is given up, and the segments it stored are dropped (content manager).
    #[arg(long, default_value_t = crate::config::INGEST_TIMEOUT.as_secs(), value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub ingest_timeout: u64,
    /// This is a home station: it keeps whole programs and never evicts them.
    #[arg(long)]
    pub home: bool,
    /// This station runs the content manager (ingest, publish, distribution).
    #[arg(long)]
    pub content_manager: bool,
    /// This station runs the auth server: an issuer key (DIR/issuer.key) and the subscriber
    /// database. Its issuer key goes into node.json as "issuer" and is printed as
    /// `issuer <KEY>` after the director line; other stations pass it to --trust.
    #[arg(long)]
    pub auth: bool,
    /// Accept tokens signed by this issuer (`ed25519:<base58>`, node.json's "issuer" of the
    /// auth station); repeatable. A station with no trusted issuer (and not --auth) serves no
    /// stream and no copy.
    #[arg(long, value_name = "ISSUER")]
    pub trust: Vec<IssuerKey>,
    /// A peer id whose admin proofs this station accepts (repeatable). The station's own
    /// identity (DIR/identity.key) is always an admin.
    #[arg(long = "admin", value_name = "PEERID")]
    pub admins: Vec<PeerId>,
    /// An enrollment token file (`vodmesh enroll`): presented to the auth server at start,
    /// which certifies the station a member of the swarm (with the roles the token grants,
    /// renewed while it runs); its engines then receive engine tokens
    /// (DIR/engines/<i>/engine.token). A token enrolls once: a restart with the same file
    /// renews the certificate kept in DIR/membership.cbor. A token made out to another
    /// station stops the start.
    #[arg(long, value_name = "FILE")]
    pub enroll: Option<PathBuf>,
    /// Region name, used to prefer nearby stations.
    #[arg(long, value_name = "NAME")]
    pub region: Option<String>,
    /// Coordinates as LAT,LON.
    #[arg(long, value_name = "LAT,LON", value_parser = parse_coords)]
    pub coords: Option<(f64, f64)>,
    /// Link bandwidth to the rest of the swarm, Mbit/s, as advertised to other stations for
    /// the cost of copying from this one (corrected by what they measure).
    #[arg(long, default_value_t = 1000, value_name = "MBPS")]
    pub bandwidth: u32,
    /// Pace each copy this station's engines serve to this many Mbit/s (0: unpaced), to keep
    /// copies from crowding out streams on the uplink.
    #[arg(long, default_value_t = 0, value_name = "MBPS")]
    pub copy_rate: u32,
    /// Lifetime of this station's registry records, in seconds; they are republished every
    /// third of it. A stopped station leaves every listing within this time.
    #[arg(long, default_value_t = 60, value_name = "SECS", value_parser = clap::value_parser!(u64).range(3..))]
    pub record_ttl: u64,
    /// Lifetime of this station's provider records (the programs it holds), in seconds; every
    /// program is re-provided every third of it. Default: 30 times --record-ttl. Directors
    /// skip a provider whose station record is gone, so a stopped station listed this long
    /// costs lookups, not plays.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(3..))]
    pub provider_ttl: Option<u64>,
    /// Serve this station's metrics as Prometheus text at http://ADDR:PORT/metrics, and a
    /// status page of the whole swarm at http://ADDR:PORT/ (its data at /status.json).
    /// Prints `metrics http://ADDR:PORT/metrics` once it listens. Port 0 picks a free port.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<std::net::SocketAddr>,
    /// The peer id of an engine process (`vodmesh-node engine`) allowed to attach to this
    /// director over /vodmesh/blade/1 (repeatable; `vodmesh keygen --out DIR/identity.key`
    /// makes its identity and prints the id). Each takes a slot after the --engines N
    /// in-process engines; --engines may then be 0.
    #[arg(long = "engine-peer", value_name = "PEERID")]
    pub engine_peers: Vec<PeerId>,
    /// Serve standard players over HTTP: the director answers
    /// http://ADDR:PORT/v/<program>/index.m3u8?token=<URL token> with an HLS playlist and
    /// redirects each segment to the engine that serves it, which serves HTTP too (on the
    /// same host at a port of its own, or --engine-http). URL tokens come from
    /// `vodmesh-console url`. Prints `http http://ADDR:PORT/` once it listens (`https://` with
    /// --tls-cert). Port 0 picks a free port. Every answer allows any origin (CORS), so a web
    /// page on another site can play with hls.js.
    #[arg(long, value_name = "ADDR:PORT")]
    pub http: Option<std::net::SocketAddr>,
    /// Where engine i serves HTTP, the i-th of these (repeatable; with --http). An engine
    /// without one listens on the --http host at a system-chosen port.
    #[arg(long = "engine-http", value_name = "ADDR:PORT", requires = "http")]
    pub engine_http: Vec<std::net::SocketAddr>,
    /// Serve --http over HTTPS (the director and every engine) with this certificate chain:
    /// PEM, the server's certificate first; with --tls-key. HTTP/2 and HTTP/1.1 are offered
    /// by ALPN, and redirects, `vodmesh-console url` and the station record name https://
    /// URLs. A file that cannot be read or a key that is not the certificate's stops the
    /// start.
    #[arg(long, value_name = "FILE", requires_all = ["http", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires_all = ["http", "tls_cert"])]
    pub tls_key: Option<PathBuf>,
    /// On SIGTERM, drain for at most this many seconds before stopping: new streams go to
    /// other stations that hold the segment and /readyz answers 503, while the streams
    /// running finish; the station stops once none runs, or at this limit. 0 stops at once,
    /// as SIGINT does (a second signal during a drain stops at once too).
    #[arg(long, default_value_t = 20, value_name = "SECS")]
    pub drain_timeout: u64,
}

/// The subcommands of `vodmesh-node`.
#[derive(clap::Subcommand, Debug)]
// Parsed once per process: the size of `EngineArgs` costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Sub {
    /// Runs one engine in a process of its own, attached to its station's director
    /// (deployment mode b). Prints `engine <MULTIADDR>` once it listens; reattaches by itself
    /// when the link drops (the director marks it down meanwhile and up again after).
    ///
    /// Flags only: --config and the VODMESH_* variables configure a station, not an engine
    /// process.
    Engine(EngineArgs),
    /// Completions and man pages.
    #[command(flatten)]
    Docs(Docs),
}

/// The flags of `vodmesh-node engine` (flags only: --config and VODMESH_* configure the
/// station, not an engine process).
#[derive(clap::Args, Debug)]
pub struct EngineArgs {
    /// The director to attach to, ending in /p2p/<peer id>; it must have been started with
    /// --engine-peer <this engine's peer id>.
    #[arg(long, value_name = "MULTIADDR", value_parser = director_addr)]
    pub director: Multiaddr,
    /// Data directory: the engine's identity (DIR/identity.key), its store index, and its
    /// segments unless --disk is given.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// A segment directory, one per disk (repeatable). Default: DIR/segments.
    #[arg(long = "disk", value_name = "DIR")]
    pub disks: Vec<PathBuf>,
    /// Listen address (repeatable). Default: TCP and QUIC on 0.0.0.0, system-chosen ports.
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<Multiaddr>,
    /// An address other hosts reach this engine at that is on no interface of its host
    /// (behind NAT: the public address and the forwarded port of a fixed --listen port;
    /// repeatable). Consoles and other stations' engines dial it first.
    #[arg(long, value_name = "MULTIADDR")]
    pub announce: Vec<Multiaddr>,
    /// Bytes of segment storage; 0 = bounded only by the disks.
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    pub capacity: u64,
    /// Concurrent streams (1 or more).
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams: u32,
    /// Accept console tokens signed by this issuer (repeatable), as the station does; the
    /// engine token its director forwards must come from one of them too.
    #[arg(long, value_name = "ISSUER")]
    pub trust: Vec<IssuerKey>,
    /// Serve this engine's metrics as Prometheus text at http://ADDR:PORT/metrics (streams,
    /// bytes, copies, refusals, store usage per disk, and whether it is attached:
    /// vodmesh_engine_up). Prints `metrics http://ADDR:PORT/metrics`.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Serve segments to standard players over HTTP here (its director redirects them from
    /// its own --http), as a station's engines do. Prints `http http://ADDR:PORT/`. Port 0
    /// picks a free port.
    #[arg(long, value_name = "ADDR:PORT")]
    pub http: Option<std::net::SocketAddr>,
    /// Serve --http over HTTPS with this certificate chain (PEM, the server's certificate
    /// first; with --tls-key), HTTP/2 and HTTP/1.1 by ALPN; its director then redirects
    /// players to https:// URLs here. Prints `http https://ADDR:PORT/`.
    #[arg(long, value_name = "FILE", requires_all = ["http", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires_all = ["http", "tls_cert"])]
    pub tls_key: Option<PathBuf>,
}

/// `--coords LAT,LON`: two numbers in range.
/// A director's address: a multiaddr ending in `/p2p/<peer id>` (checked as the flag is read,
/// before anything starts or is written).
pub fn director_addr(s: &str) -> Result<Multiaddr, String> {
    let addr: Multiaddr = s.parse().map_err(|e| format!("not a multiaddr: {e}"))?;
    match vodmesh_proto::net::peer_of(&addr) {
        Some(_) => Ok(addr),
        None => Err(format!(
            "{addr} does not end in /p2p/<peer id>: give the `director` line the station printed"
        )),
    }
}

/// `--engines`: 0 (only with `--engine-peer`) to 1024, the most an enrollment lists: each
/// engine is a peer with its own listener, identity and store.
pub fn engine_count(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("{s} is not a number of engines"))?;
    match n <= crate::auth::MAX_ENGINES {
        true => Ok(n),
        false => Err(format!(
            "at most {} engines a station",
            crate::auth::MAX_ENGINES
        )),
    }
}

pub fn parse_coords(s: &str) -> Result<(f64, f64), String> {
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

/// The environment variable of the flag `--LONG`: `VODMESH_` and the name in capitals, `-` as
/// `_` (`--max-streams`: `VODMESH_MAX_STREAMS`); `--home` is `VODMESH_HOME_STATION`, because
/// `VODMESH_HOME` is the console's directory (an operator's shell may well have it set).
pub fn env_name(long: &str) -> String {
    match long {
        "home" => "VODMESH_HOME_STATION".into(),
        _ => format!("VODMESH_{}", long.to_ascii_uppercase().replace('-', "_")),
    }
}

/// A parsed command line, and the configuration it came to (for `--print-config`).
#[derive(Debug)]
pub struct Parsed {
    /// The flags, from the command line, the environment, the file and the defaults.
    pub args: Args,
    /// The effective configuration as TOML (what `--print-config` prints).
    pub effective: String,
}

/// Reads `argv` (the binary's name first) with the environment `env` and the `--config` file
/// layered under it ([`layers::layer`]). `Err` is either a refused configuration (one line)
/// or clap's own error (usage, `--help`, `--version`), which the caller prints and exits on
/// with clap's status ([`clap::Error::exit`]).
pub fn parse(
    argv: Vec<OsString>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Parsed, ParseError> {
    let layered = layers::layer(Args::command(), &argv, env, env_name)?;
    let matches = layered.command.clone().try_get_matches_from(argv)?;
    let args = Args::from_arg_matches(&matches)?;
    let effective = layered.print(&matches);
    Ok(Parsed { args, effective })
}

/// Why a command line was not parsed.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The configuration file or an environment variable was refused.
    #[error(transparent)]
    Config(#[from] layers::Error),
    /// clap refused the command line, or it asked for `--help` or `--version`.
    #[error(transparent)]
    Clap(#[from] clap::Error),
}
