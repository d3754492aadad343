//! Shared helpers of vodmesh's integration tests: stations in this process, `vodmesh-node`
//! processes driven through the command-line contract, and waiting for a swarm to converge.

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

/// The peer id of a new identity written to `path` (`vodmesh keygen`).
pub fn keygen(path: &Path) -> Result<String> {
    let out = vodmesh(&["keygen", "--out", &path.to_string_lossy()])?;
    Ok(out.lines().last().unwrap_or_default().trim().to_string())
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
    /// when given, listening on `listen`.
    pub fn start_in(
        netns: Option<&str>,
        data: &Path,
        listen: &[&str],
        args: &[&str],
    ) -> Result<Self> {
        std::fs::create_dir_all(data)?;
        let log = std::fs::File::create(data.join("stderr.log"))?;
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin("vodmesh-node"));
                c
            }
            None => Command::new(bin("vodmesh-node")),
        };
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

/// A `vodmesh-node engine` process; killed when dropped.
pub struct EngineProcess {
    child: Child,
    /// Its `/metrics` URL.
    pub metrics: String,
}

impl EngineProcess {
    /// Starts an engine on loopback under `data` (`--max-streams 5`), attached to `director`,
    /// trusting `issuer`; returns once it printed the address of its `/metrics`.
    pub fn start(data: &Path, director: &Multiaddr, issuer: &str) -> Result<Self> {
        std::fs::create_dir_all(data)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.join("stderr.log"))?;
        let mut child = Command::new(bin("vodmesh-node"))
            .args(["engine", "--director", &director.to_string(), "--data"])
            .arg(data)
            .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--trust", issuer])
            .args(["--metrics", "127.0.0.1:0", "--max-streams", "5"])
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let metrics = loop {
            let Some(line) = lines.next() else {
                let _ = child.kill();
                bail!("vodmesh-node engine exited before printing its metrics address");
            };
            if let Some(url) = line?.strip_prefix("metrics ") {
                break url.trim().to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Ok(Self { child, metrics })
    }

    /// Sends `signal` (`STOP`, `CONT`) to the process.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(sent.success(), "kill -{signal} failed");
        Ok(())
    }

    /// Kills it (SIGKILL) and waits for it.
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

/// Runs `vodmesh ARGS` and returns its stdout; fails with its stderr if it exits non-zero.
pub fn vodmesh(args: &[&str]) -> Result<String> {
    let out = Command::new(bin("vodmesh")).args(args).output()?;
    if !out.status.success() {
        bail!(
            "vodmesh {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
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
/// request (the last one from then on), to play a source that changes during ingest.
pub struct HttpServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    files: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<Vec<u8>>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// Starts the server.
    pub async fn start() -> Result<Self> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let files: std::sync::Arc<
            std::sync::Mutex<std::collections::HashMap<String, Vec<Vec<u8>>>>,
        > = Default::default();
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
                    let body = files.lock().ok().and_then(|mut m| {
                        let versions = m.get_mut(&path)?;
                        if versions.len() > 1 {
                            Some(versions.remove(0))
                        } else {
                            versions.first().cloned()
                        }
                    });
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
        if let Ok(mut m) = self.files.lock() {
            m.insert(name.to_string(), versions);
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
    std::fs::create_dir_all(home)?;
    let password = home.join("password");
    std::fs::write(&password, "correct horse battery staple\n")?;
    vodmesh(&[
        "user",
        "add",
        "--node",
        &auth.to_string(),
        "--key",
        &admin_key.to_string_lossy(),
        name,
        "--password-file",
        &password.to_string_lossy(),
    ])?;
    let out = Command::new(bin("vodmesh-console"))
        .env("VODMESH_HOME", home)
        .args(["login", "--node", &auth.to_string(), "--user", name])
        .arg("--password-file")
        .arg(&password)
        .output()?;
    if !out.status.success() {
        bail!(
            "login failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
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
pub fn play(
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

/// The command [`play`] runs, to spawn it instead.
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
    _client: vodmesh_console::client::DirectorClient,
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
        let client = vodmesh_console::client::DirectorClient::connect(director, Some(key)).await?;
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

/// The value of the series `name` (with its labels) in a scrape of `url`.
pub fn metric(url: &str, name: &str) -> Result<f64> {
    let body = ureq::get(url).call()?.body_mut().read_to_string()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .with_context(|| format!("no {name} in\n{body}"))
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
    let client = vodmesh_console::client::DirectorClient::connect(node, None).await?;
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
