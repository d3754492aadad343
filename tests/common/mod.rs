//! Shared helpers of vodmesh's integration tests: stations in this process, `vodmesh-node`
//! processes (stations and engine processes) driven through the command-line contract, the
//! `vodmesh` and `vodmesh-console` commands the tests run, waiting for a swarm to converge,
//! and hosts as network namespaces ([`hosts`]).

pub mod hosts;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use libp2p::{Multiaddr, PeerId};
use vodmesh_node::{Station, StationConfig};

pub mod media;

/// Record TTL used by the swarm tests: short, so that a stopped station leaves quickly.
pub const TEST_TTL: Duration = Duration::from_secs(6);

/// Logs to stderr (shown by the test runner on failure) when `RUST_LOG` is set.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Starts a station in this process under `dir`, with one engine and [`TEST_TTL`].
pub async fn start_station(dir: &Path, bootstrap: Option<&Multiaddr>) -> Result<Station> {
    let mut config = StationConfig::new(dir);
    config.registry.record_ttl = TEST_TTL;
    config.bootstrap = bootstrap.cloned().into_iter().collect();
    Station::start(config).await
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

/// Polls `check` every 250 ms until it returns true; fails after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Path of a workspace binary (`vodmesh-node`, `vodmesh`, `vodmesh-console`) built next to
/// the running test.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    dir.join(name)
}

/// The workspace binary `name`, to run in network namespace `netns` (through `ip netns
/// exec`) when given.
pub fn command_in(netns: Option<&str>, name: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin(name));
            c
        }
        None => Command::new(bin(name)),
    }
}

/// A `vodmesh-node` process; killed when dropped.
pub struct NodeProcess {
    child: Child,
    /// The address it printed after `director `.
    pub addr: Multiaddr,
    /// Its data directory.
    pub data: PathBuf,
}

impl NodeProcess {
    /// Starts `vodmesh-node --data DATA` with `args` on loopback and waits for its
    /// `director <MULTIADDR>` line. Its log goes to `DATA/stderr.log`.
    pub fn start(data: &Path, args: &[&str]) -> Result<Self> {
        Self::start_in(
            None,
            data,
            &["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"],
            args,
        )
    }

    /// As [`NodeProcess::start`], in network namespace `netns` (through `ip netns exec`)
    /// when given, listening on `listen` (none: `vodmesh-node`'s default, 0.0.0.0).
    pub fn start_in(
        netns: Option<&str>,
        data: &Path,
        listen: &[&str],
        args: &[&str],
    ) -> Result<Self> {
        std::fs::create_dir_all(data)?;
        let log = std::fs::File::create(data.join("stderr.log"))?;
        let mut command = command_in(netns, "vodmesh-node");
        for addr in listen {
            command.args(["--listen", addr]);
        }
        let mut child = command
            .arg("--data")
            .arg(data)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", bin("vodmesh-node").display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let Some(line) = lines.next() else {
                let _ = child.kill();
                bail!("vodmesh-node exited before printing its address");
            };
            let line = line?;
            if let Some(rest) = line.strip_prefix("director ") {
                break rest.trim().parse::<Multiaddr>()?;
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Self {
            child,
            addr,
            data: data.to_path_buf(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it with SIGKILL (no clean-up of any kind) and waits for it to be gone.
    pub fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Sends SIGTERM and waits for a clean exit; returns whether it exited with status 0.
    pub fn terminate(mut self) -> Result<bool> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.success());
            }
            if std::time::Instant::now() > deadline {
                bail!("vodmesh-node did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `vodmesh ARGS` and returns its stdout; fails with its stderr if it exits non-zero.
pub fn vodmesh(args: &[&str]) -> Result<String> {
    run_bin(None, "vodmesh", None, args)
}

/// Runs the workspace binary `name` with `args`, in network namespace `netns` when given
/// (through `ip netns exec`), with `$VODMESH_HOME` = `home` when given; returns its stdout,
/// or fails with its stderr if it exits non-zero.
pub fn run_bin(
    netns: Option<&str>,
    name: &str,
    home: Option<&Path>,
    args: &[&str],
) -> Result<String> {
    let mut c = command_in(netns, name);
    c.args(args);
    if let Some(home) = home {
        c.env("VODMESH_HOME", home);
    }
    let out = c.output().with_context(|| format!("running {name}"))?;
    if !out.status.success() {
        bail!(
            "{name} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// `vodmesh keygen --out PATH` (from host `netns`): a new identity file; its peer id.
pub fn keygen(netns: Option<&str>, path: &Path) -> Result<String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let out = run_bin(
        netns,
        "vodmesh",
        None,
        &["keygen", "--out", &path_str(path)],
    )?;
    Ok(out.lines().last().unwrap_or_default().trim().to_string())
}

/// Makes the identity of a new station at `data` and has the auth station at `auth` (its
/// admin key: `admin_key`) issue it an enrollment token, all from host `netns`; returns the
/// token file (`data/enroll.token`), for `vodmesh-node --enroll`.
pub fn enroll_new_station(
    netns: Option<&str>,
    auth: &Multiaddr,
    admin_key: &Path,
    data: &Path,
) -> Result<PathBuf> {
    let peer = keygen(netns, &data.join("identity.key"))?;
    let token = data.join("enroll.token");
    run_bin(
        netns,
        "vodmesh",
        None,
        &[
            "enroll",
            "--node",
            &auth.to_string(),
            "--key",
            &path_str(admin_key),
            "--station",
            &peer,
            "--out",
            &path_str(&token),
        ],
    )?;
    Ok(token)
}

/// `vodmesh ingest` (from host `netns`) of `source` into the home station at `node`, as the
/// admin whose key is `key`: titled `title`, published now, in 1 MiB segments, with `extra`
/// arguments (`--replicas N`, ...). Returns the program id.
pub fn ingest(
    netns: Option<&str>,
    node: &Multiaddr,
    key: &Path,
    title: &str,
    source: &Path,
    extra: &[&str],
) -> Result<String> {
    let (node, key, source) = (node.to_string(), path_str(key), path_str(source));
    let mut args = vec!["ingest", "--node", &node, "--key", &key, "--title", title];
    args.extend(["--publish-at", "now", "--segment-size", "1048576"]);
    args.extend_from_slice(extra);
    args.push(&source);
    let out = run_bin(netns, "vodmesh", None, &args)?;
    Ok(out.lines().last().unwrap_or_default().trim().to_string())
}

/// `vodmesh-console play --speed max` (from host `netns`) of `program` through the director
/// at `node`, as the console whose identity and token are under `home`; returns the bytes
/// played and its `--stats` JSON (both also left in `home`).
pub fn play(
    netns: Option<&str>,
    home: &Path,
    node: &Multiaddr,
    program: &str,
) -> Result<(Vec<u8>, serde_json::Value)> {
    let (out, stats) = (home.join("played.bin"), home.join("stats.json"));
    let node = node.to_string();
    let (out_arg, stats_arg) = (path_str(&out), path_str(&stats));
    let args = [
        "play", "--node", &node, "--speed", "max", "--out", &out_arg, "--stats", &stats_arg,
        program,
    ];
    run_bin(netns, "vodmesh-console", Some(home), &args)?;
    Ok((
        std::fs::read(&out)?,
        serde_json::from_slice(&std::fs::read(&stats)?)?,
    ))
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// The value of series `name` (with its labels) in a scrape of the metrics at `url`.
pub fn metric(url: &str, name: &str) -> Result<f64> {
    let body = ureq::get(url).call()?.body_mut().read_to_string()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .with_context(|| format!("no {name} in\n{body}"))
}

/// A `vodmesh-node engine` process (deployment mode b); killed when dropped.
pub struct EngineProcess {
    child: Child,
    /// The address it printed after `engine `.
    pub addr: Multiaddr,
    /// Its `/metrics` URL (empty without `--metrics`).
    pub metrics: String,
}

impl EngineProcess {
    /// Starts an engine on loopback under `data`, attached to `director`, trusting `issuer`,
    /// with `--max-streams 5` and its metrics on a port of its own.
    pub fn start(data: &Path, director: &Multiaddr, issuer: &str) -> Result<Self> {
        let args = ["--listen", "/ip4/127.0.0.1/tcp/0", "--trust", issuer];
        let more = ["--metrics", "127.0.0.1:0", "--max-streams", "5"];
        Self::start_in(None, data, director, &[&args[..], &more[..]].concat())
    }

    /// Starts `vodmesh-node engine --director DIRECTOR --data DATA ARGS` in network namespace
    /// `netns` when given, and returns once it printed its `engine <MULTIADDR>` line (and its
    /// `metrics` line, with `--metrics`). Its log goes to `DATA/stderr.log`.
    pub fn start_in(
        netns: Option<&str>,
        data: &Path,
        director: &Multiaddr,
        args: &[&str],
    ) -> Result<Self> {
        std::fs::create_dir_all(data)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.join("stderr.log"))?;
        let mut command = command_in(netns, "vodmesh-node");
        let mut child = command
            .args(["engine", "--director", &director.to_string(), "--data"])
            .arg(data)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let with_metrics = args.contains(&"--metrics");
        let (mut addr, mut metrics) = (None, String::new());
        while addr.is_none() || (with_metrics && metrics.is_empty()) {
            let Some(line) = lines.next() else {
                let _ = child.kill();
                bail!("vodmesh-node engine exited before printing its addresses");
            };
            let line = line?;
            if let Some(rest) = line.strip_prefix("engine ") {
                addr = Some(rest.trim().parse::<Multiaddr>()?);
            } else if let Some(url) = line.strip_prefix("metrics ") {
                metrics = url.trim().to_string();
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Ok(Self {
            child,
            addr: addr.context("no engine line")?,
            metrics,
        })
    }

    /// Sends `signal` (`STOP`, `CONT`) to the process.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(sent.success(), "kill -{signal} failed");
        Ok(())
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The director peer ids `vodmesh status --node ADDR --json` lists.
pub fn status_directors(addr: &Multiaddr) -> Result<BTreeSet<String>> {
    let out = vodmesh(&["status", "--node", &addr.to_string(), "--json"])?;
    let json: serde_json::Value = serde_json::from_str(&out)?;
    let stations = json["stations"].as_array().context("no stations array")?;
    Ok(stations
        .iter()
        .filter_map(|s| s["director"]["peer_id"].as_str().map(String::from))
        .collect())
}

/// The station whose director is `addr`, as `vodmesh status --json` lists it (fresh from
/// that director: its engines, its activity).
pub fn station_status(addr: &Multiaddr) -> Result<serde_json::Value> {
    let director = vodmesh_proto::net::peer_of(addr)
        .context("address without /p2p/")?
        .to_string();
    let out = vodmesh(&["status", "--node", &addr.to_string(), "--json"])?;
    let json: serde_json::Value = serde_json::from_str(&out)?;
    let stations = json["stations"].as_array().context("no stations array")?;
    stations
        .iter()
        .find(|s| s["director"]["peer_id"].as_str() == Some(director.as_str()))
        .cloned()
        .with_context(|| format!("station {director} not in vodmesh status"))
}

/// The engines of the station whose director is `addr`, as `vodmesh status --json` lists
/// them.
pub fn status_engines(addr: &Multiaddr) -> Result<Vec<serde_json::Value>> {
    Ok(station_status(addr)?["engines"]
        .as_array()
        .context("no engines array")?
        .clone())
}

/// Each engine's used bytes, as `vodmesh status --json` reports them for the station whose
/// director is `addr`.
pub fn used_bytes(addr: &Multiaddr) -> Result<Vec<u64>> {
    status_engines(addr)?
        .iter()
        .map(|e| e["used"].as_u64().context("engine without used bytes"))
        .collect()
}

/// Bytes of the segment files engine `index` of the station at `data` holds on disk (its
/// default disk, `DATA/engines/<index>/segments`), counted file by file.
pub fn bytes_on_disk(data: &Path, index: usize) -> u64 {
    let disk = data
        .join("engines")
        .join(index.to_string())
        .join("segments");
    segment_bytes(&disk)
}

/// Bytes of the complete segment files on an engine's disk directory (its `segments/`; the
/// writes in progress in `tmp/` do not count).
pub fn segment_bytes(disk: &Path) -> u64 {
    fn walk(dir: &Path) -> u64 {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => walk(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    }
    walk(&disk.join("segments"))
}

/// Writes `len` pseudo-random bytes (seeded, so failures reproduce) to `path`.
pub fn random_file(path: &Path, len: usize, seed: u64) -> Result<Vec<u8>> {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut bytes = vec![0u8; len];
    rng.fill_bytes(&mut bytes);
    std::fs::write(path, &bytes)?;
    Ok(bytes)
}

/// Every complete segment of `program` stored by engine `index` of the station at `data`
/// (the station must be stopped), read back through the store, which verifies each chunk.
/// Also returns what reconciling the store on open found.
pub async fn engine_segments(
    data: &Path,
    engines: usize,
    program: vodmesh_proto::ProgramId,
) -> Result<(
    std::collections::BTreeMap<u32, Vec<u8>>,
    Vec<vodmesh_node::store::Reconciled>,
)> {
    use vodmesh_node::store::{self, SegmentState, SegmentStore};
    let config = StationConfig::new(data);
    let mut found = std::collections::BTreeMap::new();
    let mut reports = Vec::new();
    for index in 0..engines {
        let storage = vodmesh_node::station::engine_storage(&config, index);
        let (st, _events, reconciled) = SegmentStore::open_reconciled(store::Config::new(
            &storage.index,
            storage.disks.clone(),
            u64::MAX / 4,
        ))
        .await?;
        reports.push(reconciled);
        for seg in st.list() {
            if seg.program != program {
                continue;
            }
            let info = st.info(&seg).context("listed segment without info")?;
            if info.state != SegmentState::Complete {
                bail!("segment {seg} is visible while still filling");
            }
            let mut reader = st.open_read(seg).await?;
            let mut bytes = Vec::new();
            while let Some(chunk) = reader.read_next(1 << 20).await? {
                bytes.extend_from_slice(&chunk);
            }
            if found.insert(seg.index.0, bytes).is_some() {
                bail!("segment {seg} stored twice");
            }
        }
        st.shutdown().await?;
    }
    Ok((found, reports))
}

/// A tiny HTTP/1.1 file server on 127.0.0.1 for ingest tests: `GET /name` answers the bytes
/// registered under `name`; a name with several versions answers the next version on each
/// request (the last one from then on), to play a source that changes during ingest. A name
/// put with [`HttpServer::put_gated`] answers its odd requests at once and its even ones only
/// once its gate opens (an ingest reads every segment twice, to hash it and to push it: it
/// then stalls on the push), and one put with [`HttpServer::put_slow`] answers every request
/// after a delay.
pub struct HttpServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    files: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Served>>>,
    task: tokio::task::JoinHandle<()>,
}

/// What the server answers for one name.
#[derive(Clone, Default)]
struct Served {
    versions: Vec<Vec<u8>>,
    gate: Option<tokio::sync::watch::Receiver<bool>>,
    delay: Duration,
    requests: usize,
}

/// Opens the gate of a name put with [`HttpServer::put_gated`].
pub struct Gate(tokio::sync::watch::Sender<bool>);

impl Gate {
    /// Lets the held and later requests through.
    pub fn open(&self) {
        let _ = self.0.send(true);
    }
}

impl HttpServer {
    /// Starts the server.
    pub async fn start() -> Result<Self> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let files: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Served>>> =
            Default::default();
        let served = files.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let files = served.clone();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 65536 {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&req);
                    let path = text
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or("/")
                        .trim_start_matches('/')
                        .to_string();
                    let found = files.lock().ok().and_then(|mut m| {
                        let served = m.get_mut(&path)?;
                        served.requests += 1;
                        let gate = served.gate.clone().filter(|_| served.requests % 2 == 0);
                        let versions = &mut served.versions;
                        let body = if versions.len() > 1 {
                            Some(versions.remove(0))
                        } else {
                            versions.first().cloned()
                        };
                        Some((body, gate, served.delay))
                    });
                    let (body, gate, delay) = found.unwrap_or_default();
                    if let Some(mut gate) = gate {
                        // Held until the test opens the gate (or the server is dropped).
                        if gate.wait_for(|open| *open).await.is_err() {
                            return;
                        }
                    }
                    tokio::time::sleep(delay).await;
                    let head = match &body {
                        Some(b) => format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            b.len()
                        ),
                        None => {
                            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                                .to_string()
                        }
                    };
                    let _ = sock.write_all(head.as_bytes()).await;
                    if let Some(b) = body {
                        let _ = sock.write_all(&b).await;
                    }
                    let _ = sock.shutdown().await;
                });
            }
        });
        Ok(Self { base, files, task })
    }

    /// Serves `bytes` at `/name`.
    pub fn put(&self, name: &str, bytes: Vec<u8>) {
        self.put_versions(name, vec![bytes]);
    }

    /// Serves `versions[0]` at the first request of `/name`, `versions[1]` at the second, ...
    pub fn put_versions(&self, name: &str, versions: Vec<Vec<u8>>) {
        self.serve(
            name,
            Served {
                versions,
                ..Served::default()
            },
        );
    }

    /// Serves `bytes` at `/name`: the first, third, ... request at once, the second, fourth,
    /// ... once the returned gate is opened.
    pub fn put_gated(&self, name: &str, bytes: Vec<u8>) -> Gate {
        let (open, gate) = tokio::sync::watch::channel(false);
        self.serve(
            name,
            Served {
                versions: vec![bytes],
                gate: Some(gate),
                ..Served::default()
            },
        );
        Gate(open)
    }

    /// Serves `bytes` at `/name`, each request after `delay`.
    pub fn put_slow(&self, name: &str, bytes: Vec<u8>, delay: Duration) {
        self.serve(
            name,
            Served {
                versions: vec![bytes],
                delay,
                ..Served::default()
            },
        );
    }

    fn serve(&self, name: &str, served: Served) {
        if let Ok(mut m) = self.files.lock() {
            m.insert(name.to_string(), served);
        }
    }

    /// The URL of `/name`.
    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HLS VOD media playlist over `segments` (`(uri, seconds)`), with an `#EXT-X-MAP` when
/// `init` is given.
pub fn hls_playlist(segments: &[(&str, f32)], init: Option<&str>) -> String {
    use std::fmt::Write;
    let mut s = String::from("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:4\n");
    s.push_str("#EXT-X-PLAYLIST-TYPE:VOD\n");
    if let Some(init) = init {
        let _ = writeln!(s, "#EXT-X-MAP:URI=\"{init}\"");
    }
    for (uri, secs) in segments {
        let _ = writeln!(s, "#EXTINF:{secs:.3},\n{uri}");
    }
    s.push_str("#EXT-X-ENDLIST\n");
    s
}

/// Adds subscriber `name` to the auth station at `auth` (with its admin key `admin_key`) and
/// logs a console in as that subscriber, keeping its identity and token under `home`.
pub fn subscriber(auth: &Multiaddr, admin_key: &Path, home: &Path, name: &str) -> Result<()> {
    subscriber_in(None, auth, admin_key, home, name)
}

/// As [`subscriber`], both commands run from host `netns` when given.
pub fn subscriber_in(
    netns: Option<&str>,
    auth: &Multiaddr,
    admin_key: &Path,
    home: &Path,
    name: &str,
) -> Result<()> {
    std::fs::create_dir_all(home)?;
    let password = home.join("password");
    std::fs::write(&password, "correct horse battery staple\n")?;
    let (auth, password) = (auth.to_string(), path_str(&password));
    let key = path_str(admin_key);
    let add = ["user", "add", "--node", &auth, "--key", &key, name];
    run_bin(
        netns,
        "vodmesh",
        None,
        &[&add[..], &["--password-file", &password]].concat(),
    )?;
    let login = [
        "login",
        "--node",
        &auth,
        "--user",
        name,
        "--password-file",
        &password,
    ];
    run_bin(netns, "vodmesh-console", Some(home), &login)
        .map_err(|e| anyhow::anyhow!("login failed: {e}"))?;
    Ok(())
}

/// The issuer string a `--auth` station wrote to its node.json.
pub fn issuer_of(data: &Path) -> Result<String> {
    vodmesh_node::nodefile::NodeFile::read(data)?
        .issuer
        .context("node.json has no issuer: not an --auth station")
}

/// A configuration for a station at `dir` enrolled with the auth station `auth` (whose data
/// directory is `auth_data`): its identity is made first, the auth station's admin issues it
/// an enrollment token, and it trusts the auth station's issuer.
pub async fn enrolled_config(
    dir: &Path,
    auth: &Station,
    auth_data: &Path,
) -> Result<StationConfig> {
    let key = vodmesh_node::identity::load_or_create(&dir.join("identity.key"))?;
    let token = dir.join("enroll.token");
    vodmesh_tools::admin::enroll(
        auth.addr(),
        &auth_data.join("identity.key"),
        None,
        Some(key.public().to_peer_id()),
        &token,
    )
    .await?;
    let mut config = StationConfig::new(dir);
    config.enroll = Some(token);
    config.trust = auth.issuer().into_iter().collect();
    Ok(config)
}

/// Waits until every engine of `station` holds its engine token.
pub async fn wait_engine_tokens(station: &Station) -> Result<()> {
    let tokens = station.engine_tokens();
    let n = station.engines.len();
    wait_until("engine tokens", Duration::from_secs(30), || {
        let ready = (0..n).all(|i| tokens.get(i).is_some());
        async move { Ok(ready) }
    })
    .await
}

/// A console token for `console` from `issuer`: every right, valid for an hour from now.
pub fn console_token(issuer: &vodmesh_proto::token::Issuer, console: PeerId) -> Result<Vec<u8>> {
    let now = vodmesh_proto::time::now_ms();
    Ok(issuer.issue(
        console,
        vodmesh_proto::token::Audience::Console,
        vodmesh_proto::token::Rights::All,
        now,
        now + 3_600_000,
    )?)
}

/// Runs `vodmesh-console play --node NODE --out DIR/NAME.out --stats DIR/NAME.json ARGS...`
/// with the console home `console`; returns the bytes played and the stats, or fails with
/// the console's stderr.
pub fn play_args(
    node: &Multiaddr,
    console: &Path,
    args: &[&str],
    dir: &Path,
    name: &str,
) -> Result<(Vec<u8>, serde_json::Value)> {
    let out = dir.join(format!("{name}.out"));
    let stats = dir.join(format!("{name}.json"));
    let run = play_command(node, console, args, &out, &stats).output()?;
    if !run.status.success() {
        bail!("play failed: {}", String::from_utf8_lossy(&run.stderr));
    }
    Ok((
        std::fs::read(&out)?,
        serde_json::from_slice(&std::fs::read(&stats)?)?,
    ))
}

/// The command [`play_args`] runs, to spawn it instead.
pub fn play_command(
    node: &Multiaddr,
    console: &Path,
    args: &[&str],
    out: &Path,
    stats: &Path,
) -> Command {
    let mut command = Command::new(bin("vodmesh-console"));
    command
        .env("VODMESH_HOME", console)
        .args(["play", "--node", &node.to_string()])
        .arg("--out")
        .arg(out)
        .arg("--stats")
        .arg(stats)
        .args(args);
    command
}

/// Starts a `vodmesh-node` under `data` enrolled with the auth station `auth` (its identity
/// made first, an enrollment token issued by the auth station's admin key), trusting its
/// issuer and bootstrapping through it, with `args` on top.
pub fn enrolled_process(data: &Path, auth: &NodeProcess, args: &[&str]) -> Result<NodeProcess> {
    std::fs::create_dir_all(data)?;
    let key = data.join("identity.key");
    let peer = vodmesh(&["keygen", "--out", &key.to_string_lossy()])?;
    let token = data.join("enroll.token");
    vodmesh(&[
        "enroll",
        "--node",
        &auth.addr.to_string(),
        "--key",
        &auth.data.join("identity.key").to_string_lossy(),
        "--station",
        peer.trim(),
        "--out",
        &token.to_string_lossy(),
    ])?;
    let issuer = issuer_of(&auth.data)?;
    let mut all = vec![
        "--bootstrap".to_string(),
        auth.addr.to_string(),
        "--trust".into(),
        issuer,
        "--enroll".into(),
        token.to_string_lossy().into_owned(),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    NodeProcess::start(data, &all)
}

/// A viewer that asked an engine for a segment and stopped reading: the engine's stream
/// waits on backpressure and keeps one of its `--max-streams` slots until the viewer is
/// dropped (or the engine's stall time-out of 30 s).
pub struct StalledViewer {
    _stream: libp2p::Stream,
    _client: vodmesh_client::DirectorClient,
}

impl StalledViewer {
    /// Takes a slot of `engine` (of the station whose director is `director`): asks it for
    /// the first segment of `program` it holds, below `segments`, with a console token of
    /// `issuer` (which the station must trust), and reads nothing past the reply.
    pub async fn hold(
        director: &Multiaddr,
        engine: &vodmesh_node::nodefile::PeerEntry,
        program: vodmesh_proto::ProgramId,
        segments: u32,
        issuer: &vodmesh_proto::token::Issuer,
    ) -> Result<Self> {
        use vodmesh_proto::codec::{read_frame, write_frame};
        use vodmesh_proto::stream::{self as wire, StreamReply, StreamRequest};
        let key = libp2p::identity::Keypair::generate_ed25519();
        let token = console_token(issuer, key.public().to_peer_id())?;
        let client = vodmesh_client::DirectorClient::connect(director, Some(key)).await?;
        client
            .add_addresses(engine.peer_id, engine.addrs.clone())
            .await?;
        for index in 0..segments {
            let mut stream = client.open_stream(engine.peer_id, wire::PROTOCOL).await?;
            let request = StreamRequest {
                segment: vodmesh_proto::SegmentId::new(program, index),
                offset: 0,
                token: Some(serde_bytes::ByteBuf::from(token.clone())),
                play_from: 0,
            };
            write_frame(&mut stream, &request).await?;
            match read_frame::<_, StreamReply>(&mut stream, wire::MAX_FRAME).await? {
                StreamReply::Streaming { .. } => {
                    return Ok(Self {
                        _stream: stream,
                        _client: client,
                    });
                }
                StreamReply::Absent => continue,
                other => bail!("engine {} answered {other:?}", engine.peer_id),
            }
        }
        bail!("engine {} holds no segment of the program", engine.peer_id)
    }
}

/// A free TCP port on loopback (for a process's `--metrics`, which prints nothing a test
/// reads back).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until the station of director `director` (at `node`) holds every one of the
/// `segments` segments of `program` completely, asking it to `Locate` each (a segment it
/// lacks is a miss it fills, so asking also hurries a replica on).
pub async fn wait_holds_all(
    node: &Multiaddr,
    program: vodmesh_proto::ProgramId,
    segments: u32,
    timeout: Duration,
) -> Result<()> {
    use vodmesh_proto::director::{Request, Response};
    let director = vodmesh_proto::net::peer_of(node).context("no /p2p/ in the address")?;
    let client = vodmesh_client::DirectorClient::connect(node, None).await?;
    wait_until("the station to hold every segment", timeout, || async {
        for index in 0..segments {
            let answer = client
                .request(Request::Locate {
                    program,
                    index,
                    complete: false,
                    avoid: Vec::new(),
                    busy: Vec::new(),
                })
                .await?;
            match answer {
                Response::Location(l) if l.director == director && !l.filling => {}
                _ => return Ok(false),
            }
        }
        Ok(true)
    })
    .await
}

/// Lines of a log without ANSI colour codes.
pub fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
