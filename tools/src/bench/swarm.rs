//! Stations in this process for the bench: a home station (auth, content manager) and
//! stations enrolled with it, so that their engines hold engine tokens and copy (claims 24,
//! 25); every station also trusts a bench issuer, which signs console tokens.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use libp2p::Multiaddr;
use libp2p::identity::Keypair;
use vodmesh_node::{Station, StationConfig};
use vodmesh_proto::ProgramId;
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::{Audience, Issuer, Rights};

use crate::ingest::{self, IngestOptions};

/// What a station of the bench swarm looks like.
#[derive(Clone, Debug)]
pub(crate) struct Shape {
    /// Engines.
    pub(crate) engines: usize,
    /// Listen addresses (default: TCP and QUIC on loopback).
    pub(crate) listen: Vec<Multiaddr>,
    /// Where its director serves HTTP (`--http`), if it does.
    pub(crate) http: Option<std::net::SocketAddr>,
    /// Its engines serve copies at this many Mbit/s (`--copy-rate`; 0: unpaced).
    pub(crate) copy_rate_mbps: u32,
}

impl Shape {
    pub(crate) fn new(engines: usize) -> Self {
        Self {
            engines,
            listen: vodmesh_node::config::default_listen("127.0.0.1"),
            http: None,
            copy_rate_mbps: 0,
        }
    }
}

/// A home station and the stations enrolled with it.
pub(crate) struct BenchSwarm {
    /// The home station (auth, content manager, holds every ingested program).
    pub(crate) home: Station,
    pub(crate) home_dir: PathBuf,
    /// The others, in the order asked for.
    pub(crate) others: Vec<Station>,
    /// Signs console tokens every station accepts.
    pub(crate) issuer: Issuer,
}

impl BenchSwarm {
    /// Starts the home station under `dir/home` and one enrolled station per `others`.
    pub(crate) async fn start(dir: &Path, home: Shape, others: &[Shape]) -> Result<Self> {
        let issuer = Issuer::generate();
        let home_dir = dir.join("home");
        let mut config = StationConfig::new(&home_dir);
        config.auth = true;
        config.home = true;
        config.content_manager = true;
        config.engines = home.engines;
        config.listen = home.listen.clone();
        config.http = home.http;
        config.copy_rate_mbps = home.copy_rate_mbps;
        config.trust = vec![issuer.public()];
        config.max_streams = 1024;
        let home_station = Station::start(config)
            .await
            .context("starting the home station")?;
        wait_engine_tokens(&home_station).await?;
        let mut started = Vec::new();
        for (i, shape) in others.iter().enumerate() {
            let sdir = dir.join(format!("station-{i}"));
            let key = vodmesh_client::identity::load_or_create(&sdir.join("identity.key"))?;
            let token = sdir.join("enroll.token");
            crate::admin::enroll(
                home_station.addr(),
                &home_dir.join("identity.key"),
                None,
                Some(key.public().to_peer_id()),
                vodmesh_proto::station::Roles::default(),
                &token,
            )
            .await
            .context("enrolling a bench station")?;
            let mut config = StationConfig::new(&sdir);
            config.enroll = Some(token);
            config.trust = home_station
                .issuer()
                .into_iter()
                .chain([issuer.public()])
                .collect();
            config.engines = shape.engines;
            config.listen = shape.listen.clone();
            config.copy_rate_mbps = shape.copy_rate_mbps;
            config.bootstrap = vec![home_station.addr().clone()];
            config.max_streams = 1024;
            let station = Station::start(config).await.context("starting a station")?;
            wait_engine_tokens(&station).await?;
            started.push(station);
        }
        // The content manager picks replica targets from the stations it finds in the registry.
        let want: std::collections::BTreeSet<_> = started.iter().map(Station::peer_id).collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let listed: std::collections::BTreeSet<_> = home_station
                .swarm()
                .await?
                .into_iter()
                .map(|r| r.director)
                .collect();
            if want.is_subset(&listed) {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the bench stations did not find each other in the registry within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(Self {
            home: home_station,
            home_dir,
            others: started,
            issuer,
        })
    }

    /// Ingests `bytes` of pseudo-random data (written to `dir/<title>.bin`) into the home
    /// station in segments of `segment_size`, published now, with no replica.
    pub(crate) async fn ingest(
        &self,
        dir: &Path,
        title: &str,
        bytes: u64,
        segment_size: u64,
        bitrate: u64,
    ) -> Result<ProgramId> {
        ingest_into(
            self.home.addr(),
            &self.home_dir.join("identity.key"),
            dir,
            (title, 0),
            bytes,
            segment_size,
            bitrate,
        )
        .await
    }

    /// A console home under `dir` (for `VODMESH_HOME`) with an identity and a console token of
    /// the bench issuer.
    pub(crate) fn console_home(&self, dir: &Path) -> Result<PathBuf> {
        let home = vodmesh_client::files::Home {
            dir: dir.to_path_buf(),
        };
        std::fs::create_dir_all(dir)?;
        let key = home.identity()?;
        let token = console_token(&self.issuer, &key)?;
        vodmesh_client::files::write_private(&home.token_path("console"), &token, "token")?;
        Ok(dir.to_path_buf())
    }

    /// Stops every station.
    pub(crate) async fn shutdown(self) {
        for s in self.others {
            s.shutdown().await;
        }
        self.home.shutdown().await;
    }
}

/// Ingests `bytes` of pseudo-random data (written to `dir/<title>.bin`) through the content
/// manager at `node` with the admin key `key`, published now, with `replicas` replicas.
pub(crate) async fn ingest_into(
    node: &Multiaddr,
    key: &Path,
    dir: &Path,
    (title, replicas): (&str, u32),
    bytes: u64,
    segment_size: u64,
    bitrate: u64,
) -> Result<ProgramId> {
    let source = dir.join(format!("{title}.bin"));
    write_pattern(&source, bytes, title)?;
    let info = ingest::run(&IngestOptions {
        allow_hosts: Vec::new(),
        node: node.clone(),
        key: key.to_path_buf(),
        title: title.into(),
        publish_at_ms: Some(now_ms()),
        replicas,
        segment_size,
        bitrate,
        source: source.clone(),
        progress: false,
        ladder: Vec::new(),
        raw: false,
    })
    .await
    .with_context(|| format!("ingesting {title}"))?;
    let _ = std::fs::remove_file(&source);
    Ok(info.program)
}

/// A console token for `key`, valid for an hour, for every program.
pub(crate) fn console_token(issuer: &Issuer, key: &Keypair) -> Result<Vec<u8>> {
    Ok(issuer.issue(
        key.public().to_peer_id(),
        Audience::Console,
        Rights::All,
        now_ms(),
        now_ms() + 3_600_000,
    )?)
}

/// Writes `bytes` of data seeded by `seed` to `path` (BLAKE3 in XOF mode: incompressible,
/// reproducible, fast).
pub(crate) fn write_pattern(path: &Path, bytes: u64, seed: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut xof = blake3::Hasher::new().update(seed.as_bytes()).finalize_xof();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        xof.fill(&mut buf[..n]);
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    Ok(())
}

/// Waits until every engine of `station` holds its engine token.
async fn wait_engine_tokens(station: &Station) -> Result<()> {
    let tokens = station.engine_tokens();
    let n = station.engines.len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !(0..n).all(|i| tokens.get(i).is_some()) {
        if tokio::time::Instant::now() > deadline {
            bail!("engine tokens not issued within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// A `vodmesh-node` process started by the bench; killed when dropped.
pub(crate) struct NodeProcess {
    child: std::process::Child,
    /// The director's address (the `director <MULTIADDR>` line).
    pub(crate) addr: Multiaddr,
}

impl NodeProcess {
    /// Starts `vodmesh-node --data DATA --listen /ip4/127.0.0.1/tcp/0 ARGS` and waits for its
    /// address. Its log goes to `DATA/stderr.log`.
    pub(crate) fn start(data: &Path, args: &[String]) -> Result<Self> {
        use std::io::{BufRead, BufReader};
        std::fs::create_dir_all(data)?;
        let log = std::fs::File::create(data.join("stderr.log"))?;
        let bin = super::sibling_bin("vodmesh-node")?;
        let mut child = std::process::Command::new(&bin)
            .arg("--data")
            .arg(data)
            .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let Some(line) = lines.next() else {
                let _ = child.kill();
                let _ = child.wait();
                bail!("vodmesh-node exited before printing its address");
            };
            if let Some(rest) = line?.strip_prefix("director ") {
                break rest.trim().parse::<Multiaddr>()?;
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Self { child, addr })
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
