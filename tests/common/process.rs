//! `vodmesh-node` processes driven through the command-line contract (DESIGN.md section 11):
//! stations ([`Node`] builds the command line, [`NodeProcess`] runs it: the `director
//! <MULTIADDR>` line, `DATA/node.json`, `DATA/stderr.log`) and engine processes of deployment
//! mode b ([`EngineProcess`]). Every child a test starts is killed when its handle is dropped
//! ([`Child`]); what a child writes to a pipe can be waited on as it comes ([`Tail`]).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use libp2p::Multiaddr;
use vodmesh_node::nodefile::{NodeFile, PeerEntry};

use crate::cli::{self, command_in};

/// The loopback addresses a station listens on unless told otherwise: TCP and QUIC.
const LOOPBACK: [&str; 2] = ["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"];

/// A child process, killed (SIGKILL) and reaped when dropped.
pub struct Child(std::process::Child);

impl Child {
    /// Spawns `command` with its stdout piped and reads stdout's lines until `found` makes
    /// something of one (a `director <MULTIADDR>` line, say); stdout is drained on a thread
    /// from then on, so the child never blocks on a full pipe.
    pub(crate) fn spawn_until<T>(
        command: &mut Command,
        what: &str,
        mut found: impl FnMut(&str) -> Result<Option<T>>,
    ) -> Result<(Self, T)> {
        let mut child = Self(
            command
                .stdout(Stdio::piped())
                .spawn()
                .with_context(|| format!("starting {what}"))?,
        );
        let stdout = child.0.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let value = loop {
            let Some(line) = lines.next() else {
                bail!("{what} exited before it printed what it must");
            };
            if let Some(value) = found(&line?)? {
                break value;
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Ok((child, value))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Sends `signal` (`STOP`, `CONT`, `INT`, `TERM`) to the process.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()?;
        anyhow::ensure!(sent.success(), "kill -{signal} failed");
        Ok(())
    }

    /// Kills the process with SIGKILL (no clean-up of any kind) and waits for it to be gone.
    pub fn kill(mut self) -> Result<()> {
        self.0.kill()?;
        self.0.wait()?;
        Ok(())
    }

    /// Sends SIGTERM and waits (at most 20 s) for the process to exit; whether it exited with
    /// status 0.
    pub fn terminate(mut self) -> Result<bool> {
        self.signal("TERM")?;
        self.wait_exit(Duration::from_secs(20))
    }

    /// Waits (at most `timeout`) for the process to exit by itself; whether it exited with
    /// status 0.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait()? {
                return Ok(status.success());
            }
            if Instant::now() > deadline {
                bail!("the process did not stop within {timeout:?}");
            }
            // Polls the exit, which no event announces to a thread that does not wait.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The child itself, to take its pipes or wait for it.
    pub fn inner(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl From<std::process::Child> for Child {
    fn from(child: std::process::Child) -> Self {
        Self(child)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A station's `vodmesh-node` command line, built flag by flag before it starts (and kept
/// by the running station, to start it again: [`NodeProcess::crash`]).
#[derive(Clone)]
pub struct Node {
    data: PathBuf,
    netns: Option<String>,
    listen: Vec<String>,
    args: Vec<String>,
    /// Whether `--data DATA` goes on the command line (not when a `--config` file says it).
    data_flag: bool,
}

impl Node {
    /// A station under `data`, listening on loopback (TCP and QUIC, ports of its own), with
    /// `vodmesh-node`'s defaults for the rest.
    pub fn new(data: &Path) -> Self {
        Self {
            data: data.to_path_buf(),
            netns: None,
            listen: LOOPBACK.map(String::from).to_vec(),
            args: Vec::new(),
            data_flag: true,
        }
    }

    /// `vodmesh-node --config FILE` and nothing else: the file names `data` (which must be
    /// `data`, where the log goes) and the listen addresses.
    pub fn from_config(data: &Path, file: &Path) -> Self {
        Self {
            data: data.to_path_buf(),
            netns: None,
            listen: Vec::new(),
            args: vec!["--config".into(), file.to_string_lossy().into_owned()],
            data_flag: false,
        }
    }

    /// Runs it (and, for [`Node::enrolled_with`], `vodmesh keygen` and `vodmesh enroll`) in
    /// network namespace `ns`, through `ip netns exec`.
    pub fn in_netns(mut self, ns: &str) -> Self {
        self.netns = Some(ns.to_string());
        self
    }

    /// Listens on `addrs` instead of loopback; none: `vodmesh-node`'s default (0.0.0.0).
    pub fn listen(mut self, addrs: &[&str]) -> Self {
        self.listen = addrs.iter().map(|a| a.to_string()).collect();
        self
    }

    /// `--engines N`.
    pub fn engines(self, n: usize) -> Self {
        self.args(&["--engines", &n.to_string()])
    }

    /// The home station of a test: `--home --content-manager --auth`.
    pub fn home(self) -> Self {
        self.args(&["--home", "--content-manager", "--auth"])
    }

    /// `--record-ttl SECS`.
    pub fn ttl(self, secs: u64) -> Self {
        self.args(&["--record-ttl", &secs.to_string()])
    }

    /// `--metrics 127.0.0.1:0`: the station picks its metrics port, and [`Node::start`] waits
    /// for the `metrics URL` line too ([`NodeProcess::metrics`]). A port chosen by the test
    /// beforehand could be taken by another test before the station binds it.
    pub fn metrics(self) -> Self {
        self.args(&["--metrics", "127.0.0.1:0"])
    }

    /// `--bootstrap ADDR`.
    pub fn bootstrap(self, addr: &Multiaddr) -> Self {
        self.args(&["--bootstrap", &addr.to_string()])
    }

    /// `--trust ISSUER`.
    pub fn trust(self, issuer: &str) -> Self {
        self.args(&["--trust", issuer])
    }

    /// Any other flags.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// A station enrolled with the auth station `auth`: its identity is made first
    /// (`vodmesh keygen`), the auth station's admin key issues it an enrollment token
    /// (`vodmesh enroll`, to `DATA/enroll.token`), and it trusts the auth station's issuer
    /// and joins through it. Its certificate grants the roles its flags so far ask for
    /// (`--home`, `--content-manager`, `--auth`).
    pub fn enrolled_with(self, auth: &NodeProcess) -> Result<Self> {
        let netns = self.netns.clone();
        let roles: Vec<&str> = [
            ("--home", "home"),
            ("--content-manager", "content-manager"),
            ("--auth", "auth"),
        ]
        .into_iter()
        .filter(|(flag, _)| self.args.iter().any(|a| a == flag))
        .map(|(_, role)| role)
        .collect();
        let token = cli::enroll_new_station(
            netns.as_deref(),
            &auth.addr,
            &auth.key(),
            &self.data,
            &roles,
        )?;
        Ok(self
            .bootstrap(&auth.addr)
            .trust(&auth.issuer()?)
            .args(&["--enroll", &token.to_string_lossy()]))
    }

    /// Its command line.
    fn command(&self) -> Command {
        let mut command = command_in(self.netns.as_deref(), "vodmesh-node");
        for addr in &self.listen {
            command.args(["--listen", addr]);
        }
        if self.data_flag {
            command.arg("--data").arg(&self.data);
        }
        command.args(&self.args);
        command
    }

    /// Runs it expecting a refusal to start: the one `error: ...` line it printed.
    pub fn refused(&self) -> Result<String> {
        cli::refusal(&mut self.command())
    }

    /// Runs it expecting it to fail once started (its log lines before): its last line,
    /// `error: ...`.
    pub fn failed(&self) -> Result<String> {
        let out = self.command().output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        match stderr.lines().last() {
            Some(line) if !out.status.success() && line.starts_with("error: ") => {
                Ok(line.to_string())
            }
            _ => bail!("expected a failure ending in an `error: ` line, got {out:?}"),
        }
    }

    /// Starts it and waits for its `director <MULTIADDR>` line (and its `metrics <URL>` line
    /// with `--metrics`). Its log goes to `DATA/stderr.log`.
    pub fn start(self) -> Result<NodeProcess> {
        std::fs::create_dir_all(&self.data)?;
        let log = std::fs::File::create(self.data.join("stderr.log"))?;
        let mut command = self.command();
        command.stderr(Stdio::from(log));
        let wants_metrics = self.args.iter().any(|a| a == "--metrics");
        let mut director = None;
        let (child, (addr, metrics)) = Child::spawn_until(&mut command, "vodmesh-node", |line| {
            if let Some(rest) = line.strip_prefix("director ") {
                director = Some(rest.trim().parse::<Multiaddr>()?);
            }
            let metrics = line.strip_prefix("metrics ").map(|u| u.trim().to_string());
            Ok(match (&director, metrics) {
                (Some(addr), metrics) if metrics.is_some() || !wants_metrics => {
                    Some((addr.clone(), metrics))
                }
                _ => None,
            })
        })?;
        Ok(NodeProcess {
            child,
            addr,
            metrics,
            data: self.data.clone(),
            node: self,
        })
    }
}

/// A running `vodmesh-node` station; killed when dropped.
pub struct NodeProcess {
    child: Child,
    /// The address it printed after `director `.
    pub addr: Multiaddr,
    /// The URL it printed after `metrics ` (with `--metrics`).
    pub metrics: Option<String>,
    /// Its data directory.
    pub data: PathBuf,
    /// The command line it was started with.
    node: Node,
}

impl NodeProcess {
    /// Starts `vodmesh-node --data DATA ARGS` on loopback (see [`Node`] for more).
    pub fn start(data: &Path, args: &[&str]) -> Result<Self> {
        Node::new(data).args(args).start()
    }

    /// Its director's peer id, from the address it printed.
    pub fn peer(&self) -> String {
        vodmesh_proto::net::peer_of(&self.addr)
            .map(|p| p.to_string())
            .unwrap_or_default()
    }

    /// Its identity file, `DATA/identity.key`: an admin key of the station.
    pub fn key(&self) -> PathBuf {
        self.data.join("identity.key")
    }

    /// The issuer string an `--auth` station wrote to its node.json.
    pub fn issuer(&self) -> Result<String> {
        issuer_of(&self.data)
    }

    /// Its engines, as its node.json lists them.
    pub fn engines(&self) -> Result<Vec<PeerEntry>> {
        Ok(NodeFile::read(&self.data)?.engines)
    }

    /// Its metrics URL (`http://127.0.0.1:PORT/metrics`); an error unless started with
    /// [`Node::metrics`].
    pub fn metrics_url(&self) -> Result<String> {
        self.metrics
            .clone()
            .context("the station was started without --metrics")
    }

    /// The peer id of its first engine.
    pub fn engine(&self) -> Result<String> {
        let engines = self.engines()?;
        let first = engines.first().context("the station has no engine")?;
        Ok(first.peer_id.to_string())
    }

    /// Its log so far, without colour codes.
    pub fn log(&self) -> String {
        plain(&std::fs::read_to_string(self.data.join("stderr.log")).unwrap_or_default())
    }

    /// Waits until its log holds `needle`; the error shows the log.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        let what = format!("`{needle}` in the log of {}", self.data.display());
        match crate::wait::blocking(&what, timeout, || Ok(self.log().contains(needle))) {
            Ok(_) => Ok(()),
            Err(e) => bail!("{e}:\n{}", self.log()),
        }
    }

    /// Waits until its engine `index` holds its engine token (`DATA/engines/I/engine.token`).
    pub fn wait_engine_token(&self, index: usize) -> Result<PathBuf> {
        let path = self
            .data
            .join("engines")
            .join(index.to_string())
            .join("engine.token");
        let what = format!("an engine token at {}", path.display());
        if let Err(e) = crate::wait::blocking(&what, Duration::from_secs(30), || Ok(path.exists()))
        {
            bail!("{e}:\n{}", self.log());
        }
        Ok(path)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Sends `signal` (`STOP`, `CONT`) to the process.
    pub fn signal(&self, signal: &str) -> Result<()> {
        self.child.signal(signal)
    }

    /// Kills it with SIGKILL and waits for it to be gone.
    pub fn kill(self) -> Result<()> {
        self.child.kill()
    }

    /// Sends SIGTERM and waits for the exit; whether it exited with status 0.
    pub fn terminate(self) -> Result<bool> {
        self.child.terminate()
    }

    /// Waits (at most `timeout`) for it to exit by itself (after a SIGTERM's drain, say);
    /// whether it exited with status 0.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<bool> {
        self.child.wait_exit(timeout)
    }

    /// Kills it with SIGKILL, as a crash would, and returns its command line to start it
    /// again on the same data directory. Its log is kept as `DATA/stderr.<pid>.log` (the
    /// next start writes a new `stderr.log`).
    pub fn crash(self) -> Result<Node> {
        let pid = self.pid();
        self.child.kill()?;
        keep_log(&self.data, pid)?;
        Ok(self.node)
    }
}

/// Renames `DATA/stderr.log` of the dead process `pid` to `DATA/stderr.<pid>.log`.
fn keep_log(data: &Path, pid: u32) -> Result<()> {
    let log = data.join("stderr.log");
    if log.exists() {
        std::fs::rename(&log, data.join(format!("stderr.{pid}.log")))?;
    }
    Ok(())
}

/// The issuer string a `--auth` station under `data` wrote to its node.json.
pub fn issuer_of(data: &Path) -> Result<String> {
    NodeFile::read(data)?
        .issuer
        .context("node.json has no issuer: not an --auth station")
}

/// A `vodmesh-node engine` process (deployment mode b); killed when dropped.
pub struct EngineProcess {
    child: Child,
    /// The address it printed after `engine `.
    pub addr: Multiaddr,
    /// Its `/metrics` URL (empty without `--metrics`).
    pub metrics: String,
    /// The command line it was started with.
    line: EngineLine,
}

/// A `vodmesh-node engine` command line, kept to start the engine again on its data
/// ([`EngineProcess::crash`]).
#[derive(Clone)]
pub struct EngineLine {
    netns: Option<String>,
    data: PathBuf,
    director: Multiaddr,
    args: Vec<String>,
}

impl EngineLine {
    /// `vodmesh-node engine --director DIRECTOR --data DATA ARGS`, in network namespace
    /// `netns` when given.
    pub fn new(netns: Option<&str>, data: &Path, director: &Multiaddr, args: &[&str]) -> Self {
        Self {
            netns: netns.map(String::from),
            data: data.to_path_buf(),
            director: director.clone(),
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// Starts the engine (again), as [`EngineProcess::start_in`] does.
    pub fn start(&self) -> Result<EngineProcess> {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        EngineProcess::start_in(self.netns.as_deref(), &self.data, &self.director, &args)
    }
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
        command
            .args(["engine", "--director", &director.to_string(), "--data"])
            .arg(data)
            .args(args)
            .stderr(Stdio::from(log));
        let with_metrics = args.contains(&"--metrics");
        let (mut addr, mut metrics) = (None, String::new());
        let (child, addr) = Child::spawn_until(&mut command, "vodmesh-node engine", |line| {
            if let Some(rest) = line.strip_prefix("engine ") {
                addr = Some(rest.trim().parse::<Multiaddr>()?);
            } else if let Some(url) = line.strip_prefix("metrics ") {
                metrics = url.trim().to_string();
            }
            let done = !with_metrics || !metrics.is_empty();
            Ok(addr.clone().filter(|_| done))
        })?;
        let line = EngineLine::new(netns, data, director, args);
        Ok(Self {
            child,
            addr,
            metrics,
            line,
        })
    }

    /// Sends `signal` (`STOP`, `CONT`) to the process.
    pub fn signal(&self, signal: &str) -> Result<()> {
        self.child.signal(signal)
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(self) -> Result<()> {
        self.child.kill()
    }

    /// Kills the process (SIGKILL), as a crash would, and returns its command line to start
    /// it again on the same data (its log, `DATA/stderr.log`, goes on).
    pub fn crash(self) -> Result<EngineLine> {
        self.child.kill()?;
        Ok(self.line)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }
}

/// A free TCP port on loopback (for a process's `--metrics`, which prints nothing a test
/// reads back).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// What a child writes to one of its pipes, read on a thread of its own as it comes (so that
/// the child never blocks on a full pipe), to wait on.
pub struct Tail {
    read: Arc<(Mutex<Received>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What a [`Tail`] has read, and whether the pipe has closed.
#[derive(Default)]
struct Received {
    bytes: Vec<u8>,
    closed: bool,
}

impl Tail {
    /// Starts reading `pipe`.
    pub fn new(mut pipe: impl Read + Send + 'static) -> Self {
        let read: Arc<(Mutex<Received>, Condvar)> = Arc::default();
        let shared = read.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                let n = pipe.read(&mut buf).unwrap_or(0);
                let (lock, changed) = &*shared;
                if let Ok(mut r) = lock.lock() {
                    r.bytes.extend_from_slice(&buf[..n]);
                    r.closed = n == 0;
                }
                changed.notify_all();
                if n == 0 {
                    return;
                }
            }
        });
        Self {
            read,
            thread: Some(thread),
        }
    }

    /// How many bytes were read so far.
    pub fn bytes_read(&self) -> usize {
        let (lock, _) = &*self.read;
        lock.lock().map(|r| r.bytes.len()).unwrap_or_default()
    }

    /// What was read so far, as text.
    pub fn text(&self) -> String {
        let (lock, _) = &*self.read;
        lock.lock()
            .map(|r| String::from_utf8_lossy(&r.bytes).into_owned())
            .unwrap_or_default()
    }

    /// Waits until what was read so far satisfies `done`; fails once the pipe closed without
    /// it, or after `timeout`. The error shows what was read.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[u8]) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let (lock, changed) = &*self.read;
        let mut read = lock
            .lock()
            .map_err(|_| anyhow::anyhow!("a reader panicked"))?;
        loop {
            if done(&read.bytes) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if read.closed || left.is_zero() {
                let why = if read.closed { "it ended" } else { "timed out" };
                bail!(
                    "{why} waiting for {what}; it wrote:\n{}",
                    String::from_utf8_lossy(&read.bytes)
                );
            }
            read = changed
                .wait_timeout(read, left)
                .map_err(|_| anyhow::anyhow!("a reader panicked"))?
                .0;
        }
    }

    /// Everything read, once the pipe has closed.
    pub fn finish(mut self) -> Vec<u8> {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let (lock, _) = &*self.read;
        lock.lock()
            .map(|mut r| std::mem::take(&mut r.bytes))
            .unwrap_or_default()
    }
}

/// `log` without its ANSI colour codes.
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
