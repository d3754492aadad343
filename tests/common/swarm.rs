//! Stations in this process, as many as a test needs, on loopback with a short record TTL:
//! [`station`] describes one ([`Spec`]: a home station that is also the auth server and
//! content manager, stations enrolled with it, engines, trust, anything else of its
//! configuration) and starts it; [`wait_listed`] waits for a swarm to converge; an ingest
//! through the library starts from [`ingest_options`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use libp2p::PeerId;
use vodmesh_node::{Station, StationConfig};
use vodmesh_proto::token::Issuer;
use vodmesh_tools::ingest::{self, IngestOptions};

/// Record TTL used by the swarm tests: short, so that a stopped station leaves quickly.
pub const TEST_TTL: Duration = Duration::from_secs(6);

/// Logs to stderr (shown by the test runner on failure) when `RUST_LOG` is set.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A station under `dir` with one engine and [`TEST_TTL`], to describe further and start.
pub fn station(dir: impl Into<PathBuf>) -> Spec<'static> {
    let mut config = StationConfig::new(dir);
    config.registry.record_ttl = TEST_TTL;
    Spec {
        config,
        enroll_with: None,
    }
}

/// A station of a test swarm, described before it starts.
pub struct Spec<'a> {
    config: StationConfig,
    /// The auth station to enroll with, and its data directory (its admin key).
    enroll_with: Option<(&'a Station, PathBuf)>,
}

impl<'a> Spec<'a> {
    /// The home station: auth server, content manager and home; its engines get their tokens
    /// from its own auth server.
    pub fn home(mut self) -> Self {
        self.config.auth = true;
        self.content_home()
    }

    /// A home station and content manager without an auth server (ingest needs no token;
    /// streams need a trusted issuer: [`Spec::trusting`]).
    pub fn content_home(mut self) -> Self {
        self.config.home = true;
        self.config.content_manager = true;
        self
    }

    /// `n` engines.
    pub fn engines(mut self, n: usize) -> Self {
        self.config.engines = n;
        self
    }

    /// Joins the swarm through `station`.
    pub fn bootstrap(mut self, station: &Station) -> Self {
        self.config.bootstrap = vec![station.addr().clone()];
        self
    }

    /// Enrolled with the auth station `auth` (whose data directory is `auth_data`): its
    /// identity is made first, the auth station's admin issues it an enrollment token, it
    /// trusts the auth station's issuer and joins through it.
    pub fn enrolled_with<'b>(self, auth: &'b Station, auth_data: &Path) -> Spec<'b> {
        Spec {
            config: self.config,
            enroll_with: Some((auth, auth_data.to_path_buf())),
        }
        .bootstrap(auth)
    }

    /// Also trusts `issuer` (a test's own issuer of console tokens).
    pub fn trusting(mut self, issuer: &Issuer) -> Self {
        self.config.trust.push(issuer.public());
        self
    }

    /// Anything else of its configuration.
    pub fn with(mut self, change: impl FnOnce(&mut StationConfig)) -> Self {
        change(&mut self.config);
        self
    }

    /// Starts it; a station with engine tokens to get (an auth station, an enrolled one) is
    /// returned once every engine holds its token.
    pub async fn start(self) -> Result<Station> {
        let mut config = self.config;
        if let Some((auth, auth_data)) = self.enroll_with {
            let dir = config.data.clone();
            let key = vodmesh_node::identity::load_or_create(&dir.join("identity.key"))?;
            let token = dir.join("enroll.token");
            // A station started again is enrolled anew: its last token goes first (`vodmesh
            // enroll` overwrites no file).
            match std::fs::remove_file(&token) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
            vodmesh_tools::admin::enroll(
                auth.addr(),
                &auth_data.join("identity.key"),
                None,
                Some(key.public().to_peer_id()),
                vodmesh_proto::station::Roles {
                    home: config.home,
                    content_manager: config.content_manager,
                    auth: config.auth,
                },
                &token,
            )
            .await?;
            config.enroll = Some(token);
            config.trust.extend(auth.issuer());
        }
        let tokens = config.auth || config.enroll.is_some();
        let station = Station::start(config).await?;
        if tokens {
            wait_engine_tokens(&station).await?;
        }
        Ok(station)
    }
}

/// Waits until every engine of `station` holds its engine token.
pub async fn wait_engine_tokens(station: &Station) -> Result<()> {
    let tokens = station.engine_tokens();
    let n = station.engines.len();
    crate::wait::until("engine tokens", Duration::from_secs(30), || {
        let ready = (0..n).all(|i| tokens.get(i).is_some());
        async move { Ok(ready) }
    })
    .await
}

/// The directors a station's registry lists.
pub async fn listed(station: &Station) -> Result<BTreeSet<PeerId>> {
    Ok(station
        .swarm()
        .await?
        .into_iter()
        .map(|r| r.director)
        .collect())
}

/// Waits until each of `stations` lists exactly the directors `want`.
pub async fn wait_listed(
    what: &str,
    stations: &[&Station],
    want: &BTreeSet<PeerId>,
    timeout: Duration,
) -> Result<()> {
    crate::wait::until(what, timeout, || async {
        for s in stations {
            if listed(s).await? != *want {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await
}

/// An ingest of `source` into the home station `home` as the admin whose key is `key`,
/// titled `title`: not published, no replica, the default segment size and bitrate, no
/// progress. Change what a test needs with struct update syntax.
pub fn ingest_options(
    home: &Station,
    key: &Path,
    title: &str,
    source: impl Into<PathBuf>,
) -> IngestOptions {
    IngestOptions {
        allow_hosts: Vec::new(),
        node: home.addr().clone(),
        key: key.to_path_buf(),
        title: title.into(),
        publish_at_ms: None,
        replicas: 0,
        segment_size: ingest::DEFAULT_SEGMENT_SIZE,
        bitrate: ingest::DEFAULT_BITRATE,
        source: source.into(),
        progress: false,
        ladder: Vec::new(),
        raw: false,
    }
}

/// A content home trusting `issuer` under `dir/home`, with a program `title` of `len` random
/// bytes from `seed` ingested in segments of `segment_size` and published: the station, its
/// data directory, the bytes and the program.
pub async fn home_with_program(
    dir: &Path,
    issuer: &Issuer,
    (title, len, seed): (&str, usize, u64),
    segment_size: u64,
) -> Result<(Station, PathBuf, Vec<u8>, vodmesh_proto::ProgramId)> {
    let data = dir.join("home");
    let station = station(&data)
        .content_home()
        .trusting(issuer)
        .start()
        .await?;
    let source = dir.join(format!("{title}.bin"));
    let bytes = crate::media::random_file(&source, len, seed)?;
    let key = data.join("identity.key");
    let program = ingest::run(&IngestOptions {
        publish_at_ms: Some(vodmesh_proto::time::now_ms()),
        segment_size,
        ..ingest_options(&station, &key, title, source)
    })
    .await?
    .program;
    Ok((station, data, bytes, program))
}

/// The station's counter `name` (a line of its `/metrics` without labels).
pub fn counter(station: &Station, name: &str) -> Result<u64> {
    let text = station.metrics().encode();
    let value = (text.lines())
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .with_context(|| format!("no {name} in the station's metrics"))?;
    Ok(value.trim().parse()?)
}
