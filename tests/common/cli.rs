//! The `vodmesh` and `vodmesh-console` command lines the tests run (DESIGN.md section 11),
//! each written out once: `keygen`, `enroll`, `user add` and `login`, `ingest` ([`Ingest`])
//! and `play` ([`Play`], run to its end or [`Playing`] while the test acts). Every command can
//! run in a network namespace (through `ip netns exec`).

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};
use libp2p::Multiaddr;

use crate::process::{Child, Tail};

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

/// Runs `command` to its end; its stdout, or an error with its stderr if it exits non-zero.
pub fn run(command: &mut Command) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Runs `command`, which must be refused: exit non-zero with one `error: ...` line on stderr,
/// which is returned.
pub fn refusal(command: &mut Command) -> Result<String> {
    refusal_of(&command.output()?)
}

/// The one `error: ...` line a refused command printed; fails if it succeeded or printed
/// more.
pub fn refusal_of(out: &Output) -> Result<String> {
    if out.status.success() {
        bail!(
            "expected a refusal, got success: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    match stderr.lines().collect::<Vec<_>>()[..] {
        [line] if line.starts_with("error: ") => Ok(line.to_string()),
        _ => bail!("expected one `error: ` line, got: {stderr:?}"),
    }
}

/// Runs `vodmesh ARGS` and returns its stdout; fails with its stderr if it exits non-zero.
pub fn vodmesh(args: &[&str]) -> Result<String> {
    run(command_in(None, "vodmesh").args(args))
}

/// `vodmesh-console` with `$VODMESH_HOME` = `home` (the console's identity and token), in
/// network namespace `netns` when given.
pub fn console(netns: Option<&str>, home: &Path) -> Command {
    let mut command = command_in(netns, "vodmesh-console");
    // The console's home is the test's; no director leaks in from the environment.
    command.env("VODMESH_HOME", home).env_remove("VODMESH_NODE");
    command
}

/// `vodmesh keygen --out PATH` (from host `netns`): a new identity file; its peer id.
pub fn keygen(netns: Option<&str>, path: &Path) -> Result<String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let out = run(command_in(netns, "vodmesh")
        .args(["keygen", "--out"])
        .arg(path))?;
    Ok(out.lines().last().unwrap_or_default().trim().to_string())
}

/// `vodmesh enroll` (from host `netns`): the auth station at `auth`, asked with the key
/// `admin_key`, writes an enrollment token for the station `station` (a peer id) to `out`.
pub fn enroll(
    netns: Option<&str>,
    auth: &Multiaddr,
    admin_key: &Path,
    station: &str,
    out: &Path,
) -> Command {
    let mut command = command_in(netns, "vodmesh");
    command
        .args(["enroll", "--node", &auth.to_string(), "--key"])
        .arg(admin_key)
        .args(["--station", station, "--out"])
        .arg(out);
    command
}

/// Makes the identity of a new station at `data` and has the auth station at `auth` (its
/// admin key: `admin_key`) issue it an enrollment token, all from host `netns`; returns the
/// token file (`data/enroll.token`), for `vodmesh-node --enroll`. Its certificate grants
/// `roles` (`home`, `content-manager`, `auth`: `vodmesh enroll --role`).
pub fn enroll_new_station(
    netns: Option<&str>,
    auth: &Multiaddr,
    admin_key: &Path,
    data: &Path,
    roles: &[&str],
) -> Result<PathBuf> {
    let peer = keygen(netns, &data.join("identity.key"))?;
    let token = data.join("enroll.token");
    let mut command = enroll(netns, auth, admin_key, &peer, &token);
    for role in roles {
        command.args(["--role", role]);
    }
    run(&mut command)?;
    Ok(token)
}

/// `vodmesh user add --node NODE --key KEY NAME --password-file PASSWORD`.
pub fn user_add(
    netns: Option<&str>,
    node: &Multiaddr,
    key: &Path,
    name: &str,
    password: &Path,
) -> Command {
    let mut command = command_in(netns, "vodmesh");
    command
        .args(["user", "add", "--node", &node.to_string(), "--key"])
        .arg(key)
        .args([name, "--password-file"])
        .arg(password);
    command
}

/// `vodmesh-console login --node NODE --user NAME --password-file PASSWORD` as the console
/// under `home`.
pub fn login(
    netns: Option<&str>,
    home: &Path,
    node: &Multiaddr,
    name: &str,
    password: &Path,
) -> Command {
    let mut command = console(netns, home);
    command
        .args(["login", "--node", &node.to_string(), "--user", name])
        .arg("--password-file")
        .arg(password);
    command
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
    run(&mut user_add(netns, auth, admin_key, name, &password))?;
    run(&mut login(netns, home, auth, name, &password)).context("login failed")?;
    Ok(())
}

/// A `vodmesh ingest` command line, built flag by flag.
pub struct Ingest {
    netns: Option<String>,
    node: String,
    key: PathBuf,
    title: String,
    source: OsString,
    args: Vec<String>,
}

impl Ingest {
    /// `vodmesh ingest --node NODE --key KEY --title TITLE SOURCE` (a file, a playlist or a
    /// URL), as the admin whose key is `key`.
    pub fn new(node: &Multiaddr, key: &Path, title: &str, source: impl AsRef<OsStr>) -> Self {
        Self {
            netns: None,
            node: node.to_string(),
            key: key.to_path_buf(),
            title: title.to_string(),
            source: source.as_ref().to_os_string(),
            args: Vec::new(),
        }
    }

    /// Runs it in network namespace `ns`.
    pub fn in_netns(mut self, ns: &str) -> Self {
        self.netns = Some(ns.to_string());
        self
    }

    /// `--publish-at now`.
    pub fn publish_now(self) -> Self {
        self.args(&["--publish-at", "now"])
    }

    /// `--segment-size BYTES`.
    pub fn segment_size(self, bytes: usize) -> Self {
        self.args(&["--segment-size", &bytes.to_string()])
    }

    /// `--bitrate BITS_PER_SECOND`.
    pub fn bitrate(self, bits_per_second: u64) -> Self {
        self.args(&["--bitrate", &bits_per_second.to_string()])
    }

    /// `--replicas N`.
    pub fn replicas(self, n: u32) -> Self {
        self.args(&["--replicas", &n.to_string()])
    }

    /// Any other flags.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// The command, its stdout and stderr piped, to run or spawn.
    pub fn command(&self) -> Command {
        let mut command = command_in(self.netns.as_deref(), "vodmesh");
        command
            .args(["ingest", "--node", &self.node, "--key"])
            .arg(&self.key)
            .args(["--title", &self.title])
            .args(&self.args)
            .arg(&self.source)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Runs it to its end; the program id it printed on its last line.
    pub fn run(&self) -> Result<String> {
        let out = run(&mut self.command())?;
        let program = out.lines().last().unwrap_or_default().trim().to_string();
        if program.len() != 64 {
            bail!("ingest did not print a program id last: {out}");
        }
        Ok(program)
    }
}

/// Where `vodmesh-console play` writes the program.
#[derive(Clone)]
enum Out {
    /// `--out FILE`.
    File(PathBuf),
    /// `--out -`.
    Stdout,
    /// `--player CMD`.
    Player(String),
}

/// A `vodmesh-console play` command line, built flag by flag.
pub struct Play {
    netns: Option<String>,
    home: PathBuf,
    node: Option<String>,
    program: String,
    speed: String,
    args: Vec<String>,
    out: Out,
    stats: Option<PathBuf>,
    debug: bool,
}

impl Play {
    /// `vodmesh-console play --node NODE --speed max PROGRAM` as the console whose identity
    /// and token are under `home`; the bytes go to `HOME/played.bin` and the `--stats` to
    /// `HOME/stats.json`.
    pub fn new(home: &Path, node: &Multiaddr, program: &str) -> Self {
        Self {
            netns: None,
            home: home.to_path_buf(),
            node: Some(node.to_string()),
            program: program.to_string(),
            speed: "max".into(),
            args: Vec::new(),
            out: Out::File(home.join("played.bin")),
            stats: Some(home.join("stats.json")),
            debug: false,
        }
    }

    /// Runs it in network namespace `ns`.
    pub fn in_netns(mut self, ns: &str) -> Self {
        self.netns = Some(ns.to_string());
        self
    }

    /// No `--node`: the console finds the swarm itself (`VODMESH_NODE`, the swarm it
    /// remembered at login).
    pub fn without_node(mut self) -> Self {
        self.node = None;
        self
    }

    /// `--speed SPEED` (`1` or `max`, the default).
    pub fn speed(mut self, speed: &str) -> Self {
        self.speed = speed.to_string();
        self
    }

    /// Any other flags (`--buffer`, `--start`).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// `--out DIR/NAME.out --stats DIR/NAME.json`.
    pub fn files(mut self, dir: &Path, name: &str) -> Self {
        self.out = Out::File(dir.join(format!("{name}.out")));
        self.stats = Some(dir.join(format!("{name}.json")));
        self
    }

    /// `--out PATH`.
    pub fn out(mut self, path: &Path) -> Self {
        self.out = Out::File(path.to_path_buf());
        self
    }

    /// `--out -`: the program on stdout, read through [`Playing::read`].
    pub fn to_stdout(mut self) -> Self {
        self.out = Out::Stdout;
        self
    }

    /// `--player CMD` (no `--out`, no `--stats`).
    pub fn player(mut self, command: &str) -> Self {
        self.out = Out::Player(command.to_string());
        self.stats = None;
        self
    }

    /// Logs the console's decisions (`RUST_LOG=vodmesh_console=debug`) on its stderr.
    pub fn debug(mut self) -> Self {
        self.debug = true;
        self
    }

    /// The command, to run or spawn.
    pub fn command(&self) -> Command {
        let mut command = console(self.netns.as_deref(), &self.home);
        command.arg("play");
        if let Some(node) = &self.node {
            command.args(["--node", node]);
        }
        command.args(["--speed", &self.speed]);
        match &self.out {
            Out::File(path) => command.arg("--out").arg(path),
            Out::Stdout => command.args(["--out", "-"]),
            Out::Player(player) => command.args(["--player", player]),
        };
        if let Some(stats) = &self.stats {
            command.arg("--stats").arg(stats);
        }
        if self.debug {
            command.env("RUST_LOG", "vodmesh_console=debug");
        }
        command.args(&self.args).arg(&self.program);
        command
    }

    /// Plays to the end; fails with the console's stderr unless it exits 0.
    pub fn run(&self) -> Result<Played> {
        let out = self.command().output()?;
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            bail!("play failed: {log}");
        }
        self.played(out.stdout, log)
    }

    /// Plays to the end, as [`Play::run`], but gives up after `limit`: the console is
    /// killed and the error shows what it wrote to stderr.
    pub fn run_within(&self, limit: std::time::Duration) -> Result<Played> {
        let mut child: Child = self
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?
            .into();
        let stdout = Tail::new(child.inner().stdout.take().context("no stdout")?);
        let stderr = Tail::new(child.inner().stderr.take().context("no stderr")?);
        let mut status = None;
        let waited = crate::wait::blocking("the console to exit", limit, || {
            status = child.inner().try_wait()?;
            Ok(status.is_some())
        });
        let ended = status.filter(|_| waited.is_ok());
        // Killed when it did not end; its stderr is read to the end either way (the reader
        // may not have read the last line yet when the exit is seen).
        drop(child);
        let log = crate::process::plain(&String::from_utf8_lossy(&stderr.finish()));
        let Some(status) = ended else {
            bail!("play did not end within {limit:?}; it wrote:\n{log}");
        };
        if !status.success() {
            bail!("play failed ({status}): {log}");
        }
        self.played(stdout.finish(), log)
    }

    /// Plays to stdout (`--out -`, no `--stats`), which must be refused: exit non-zero with
    /// nothing written. Its stderr.
    pub fn refused(mut self) -> Result<String> {
        self.out = Out::Stdout;
        self.stats = None;
        let out = self.command().output()?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            bail!("play succeeded where it should be refused: {stderr}");
        }
        if !out.stdout.is_empty() {
            bail!("a refused play wrote {} bytes", out.stdout.len());
        }
        Ok(stderr)
    }

    /// Starts it, with its stderr read as it comes.
    pub fn spawn(self) -> Result<Playing> {
        let mut child: Child = self
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?
            .into();
        let stdout = child.inner().stdout.take().context("no stdout")?;
        let stderr = Tail::new(child.inner().stderr.take().context("no stderr")?);
        Ok(Playing {
            child,
            stdout,
            stderr,
            read: Vec::new(),
            play: self,
        })
    }

    /// What a finished play left: its bytes (from `stdout` with `--out -`) and stats.
    fn played(&self, stdout: Vec<u8>, log: String) -> Result<Played> {
        let bytes = match &self.out {
            Out::File(path) => std::fs::read(path)?,
            Out::Stdout => stdout,
            Out::Player(_) => Vec::new(),
        };
        let stats = match &self.stats {
            Some(path) => serde_json::from_slice(&std::fs::read(path)?)?,
            None => serde_json::Value::Null,
        };
        Ok(Played { bytes, stats, log })
    }
}

/// A finished play.
pub struct Played {
    /// The bytes the console wrote.
    pub bytes: Vec<u8>,
    /// Its `--stats` JSON (null without `--stats`).
    pub stats: serde_json::Value,
    /// Its stderr.
    pub log: String,
}

/// A `vodmesh-console play` running while the test acts; killed when dropped.
pub struct Playing {
    child: Child,
    stdout: std::process::ChildStdout,
    stderr: Tail,
    read: Vec<u8>,
    play: Play,
}

impl Playing {
    /// Reads the next `n` bytes the console writes to stdout. The console writes only as
    /// fast as the pipe is read: until the next read it is held there (but for the segments
    /// it fetches ahead).
    pub fn read(&mut self, n: usize) -> Result<()> {
        let mut next = vec![0u8; n];
        self.stdout
            .read_exact(&mut next)
            .with_context(|| format!("the console ended early: {}", self.stderr.text()))?;
        self.read.extend(next);
        Ok(())
    }

    /// Its process id.
    pub fn pid(&mut self) -> u32 {
        self.child.inner().id()
    }

    /// Its stderr, as it comes.
    pub fn stderr(&self) -> &Tail {
        &self.stderr
    }

    /// Reads the rest and waits for the exit; fails with the console's last line unless it
    /// exits 0.
    pub fn finish(self) -> Result<Played> {
        let Self {
            mut child,
            mut stdout,
            stderr,
            read: mut bytes,
            play,
        } = self;
        stdout.read_to_end(&mut bytes)?;
        let status = child.inner().wait()?;
        let log = crate::process::plain(&String::from_utf8_lossy(&stderr.finish()));
        if !status.success() {
            bail!("play failed: {}", log.lines().last().unwrap_or_default());
        }
        play.played(bytes, log)
    }
}
