//! What a station is configured with (the flags of `vodmesh-node`).

use std::path::PathBuf;

use libp2p::{Multiaddr, PeerId};
use vodmesh_proto::token::IssuerKey;
use vodmesh_registry::RegistryConfig;

use crate::auth;

/// One station's configuration.
#[derive(Clone, Debug)]
pub struct StationConfig {
    /// Data directory: identities, databases, segments.
    pub data: PathBuf,
    /// Director listen addresses; engines listen on the same hosts, on the ports after it
    /// (or ports the system chooses, with port 0).
    pub listen: Vec<Multiaddr>,
    /// Addresses other hosts reach the director at that are on no interface of this host
    /// (`--announce`: behind NAT, a public address elsewhere); announced first, and the
    /// engines on the ports after each (see [`crate::station`]).
    pub announce: Vec<Multiaddr>,
    /// Existing stations' director addresses (each ending in `/p2p/<peer id>`).
    pub bootstrap: Vec<Multiaddr>,
    /// Engines in this station.
    pub engines: usize,
    /// Segment directories (one per disk); default `DATA/segments`.
    pub disks: Vec<PathBuf>,
    /// Bytes of segment storage per engine (0 = unbounded).
    pub capacity: u64,
    /// Concurrent streams per engine.
    pub max_streams: u32,
    /// Re-hash every stored segment at start, dropping any that no longer match.
    pub scrub: bool,
    /// The background scrub of every engine: its rate (`--scrub-rate`) and its pause before
    /// each pass.
    pub scrub_pace: crate::engine::scrub::Pace,
    /// This is a home station (keeps whole programs, never evicts).
    pub home: bool,
    /// This station runs the content manager.
    pub content_manager: bool,
    /// This station runs the auth server.
    pub auth: bool,
    /// Trusted token issuers (`--trust`); an auth station also trusts its own key.
    pub trust: Vec<IssuerKey>,
    /// Peers whose admin proofs this station accepts, besides its own identity (`--admin`).
    pub admins: Vec<PeerId>,
    /// An enrollment token file (`--enroll`): presented to the auth server at start, after
    /// which this station's engines receive engine tokens.
    pub enroll: Option<PathBuf>,
    /// How the auth server behaves when `auth` is set (hash cost, backoff, token lifetimes);
    /// its `admins` and `trust` are filled in from the fields above.
    pub auth_config: auth::Config,
    /// Region name, for choosing nearby stations.
    pub region: Option<String>,
    /// Latitude and longitude.
    pub coords: Option<(f64, f64)>,
    /// Link bandwidth to the rest of the swarm, Mbit/s.
    pub bandwidth_mbps: u32,
    /// Each copy this station's engines serve is paced to this many Mbit/s (0: unpaced).
    pub copy_rate_mbps: u32,
    /// Registry tuning (record TTL).
    pub registry: RegistryConfig,
    /// Where to serve metrics (`/metrics`) and the status page (`/`, `/status.json`);
    /// port 0 picks a free one ([`crate::Station::metrics_addr`] tells which).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Engines in processes of their own that may attach to this director
    /// (`--engine-peer`), each taking the slot after the in-process engines.
    pub engine_peers: Vec<PeerId>,
    /// An ingest that stores no segment for this long is given up and its segments dropped
    /// (`--ingest-timeout`).
    pub ingest_timeout: std::time::Duration,
    /// Where the director answers standard players over HTTP (`--http`): HLS playlists and
    /// redirects to the engines, which then serve HTTP too. Port 0 picks a free one; once the
    /// station started, the bound address.
    pub http: Option<std::net::SocketAddr>,
    /// Where each engine serves HTTP (`--engine-http`, engine i the i-th); an engine without
    /// one listens on the `--http` host at a system-chosen port.
    pub engine_http: Vec<std::net::SocketAddr>,
    /// TLS of the director's and the engines' HTTP edge (`--tls-cert/--tls-key`): HTTPS, and
    /// HTTP/2 by ALPN.
    pub http_tls: Option<crate::tls::Tls>,
}

/// The default of [`StationConfig::ingest_timeout`]: longer than a client waits for one
/// segment's acknowledgement (60 s), so a slow but live ingest is never dropped.
pub const INGEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

impl StationConfig {
    /// A configuration with the defaults of `vodmesh-node`: one engine, listening on loopback
    /// TCP and QUIC at ports chosen by the system.
    pub fn new(data: impl Into<PathBuf>) -> Self {
        Self {
            data: data.into(),
            listen: default_listen("127.0.0.1"),
            announce: Vec::new(),
            bootstrap: Vec::new(),
            engines: 1,
            disks: Vec::new(),
            capacity: 0,
            max_streams: 64,
            scrub: false,
            scrub_pace: crate::engine::scrub::Pace::default(),
            home: false,
            content_manager: false,
            auth: false,
            trust: Vec::new(),
            admins: Vec::new(),
            enroll: None,
            auth_config: auth::Config::default(),
            region: None,
            coords: None,
            bandwidth_mbps: 1000,
            copy_rate_mbps: 0,
            registry: RegistryConfig::default(),
            metrics_addr: None,
            engine_peers: Vec::new(),
            ingest_timeout: INGEST_TIMEOUT,
            http: None,
            engine_http: Vec::new(),
            http_tls: None,
        }
    }
}

/// TCP and QUIC listen addresses on `ip`, ports chosen by the system.
pub fn default_listen(ip: &str) -> Vec<Multiaddr> {
    [
        format!("/ip4/{ip}/tcp/0"),
        format!("/ip4/{ip}/udp/0/quic-v1"),
    ]
    .iter()
    .filter_map(|s| s.parse().ok())
    .collect()
}
