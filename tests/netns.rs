//! Cost inputs from real links (claim 15): stations on hosts that are network namespaces,
//! joined by veth pairs through a bridge, one host's link shaped with `tc` (tbf rate limit and
//! netem delay). The shaped host advertises a fat link and the unshaped one a thin link; the
//! first miss believes the adverts, and once a copy has been measured the director picks the
//! truly faster link. The test creates and removes every namespace itself, and skips with a
//! message where it may not.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use vodmesh_tests::{NodeProcess, bin, random_file};

/// Network namespaces made for one test: a bridge and hosts on 10.77.0.0/24.
struct Hosts {
    prefix: String,
    names: Vec<String>,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Hosts {
    /// A bridge namespace; `None` when namespaces cannot be made here.
    fn new() -> Result<Option<Self>> {
        let prefix = format!("vm{}", std::process::id() % 100_000);
        let bridge = format!("{prefix}br");
        if let Err(e) = ip(&["netns", "add", &bridge]) {
            println!("SKIPPED: cannot create network namespaces here ({e})");
            return Ok(None);
        }
        let hosts = Self {
            prefix,
            names: vec![bridge.clone()],
        };
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &bridge, "link", "set", "br0", "up"])?;
        Ok(Some(hosts))
    }

    /// Host number `n` (10.77.0.n), on the bridge; returns its namespace.
    fn host(&mut self, n: u8) -> Result<String> {
        let ns = format!("{}h{n}", self.prefix);
        let bridge = self.names[0].clone();
        ip(&["netns", "add", &ns])?;
        self.names.push(ns.clone());
        let port = format!("p{n}");
        ip(&[
            "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
            &bridge,
        ])?;
        ip(&["-n", &bridge, "link", "set", &port, "master", "br0"])?;
        ip(&["-n", &bridge, "link", "set", &port, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("10.77.0.{n}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Shapes what `ns` sends: `rate` (tbf), then `delay` (netem) where the kernel has netem
    /// (some sandboxed kernels do not: then the link is shaped by rate alone, and it says so).
    fn shape(&self, ns: &str, rate: &str, delay: &str) -> Result<()> {
        let tc = |args: &[&str]| -> Result<()> {
            let out = Command::new("ip")
                .args(["netns", "exec", ns, "tc"])
                .args(args)
                .output()
                .context("running tc")?;
            if !out.status.success() {
                bail!(
                    "tc {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(())
        };
        tc(&[
            "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "tbf", "rate", rate, "burst",
            "32kbit", "latency", "400ms",
        ])?;
        match tc(&[
            "qdisc", "add", "dev", "eth0", "parent", "1:1", "handle", "10:", "netem", "delay",
            delay,
        ]) {
            Err(e) if e.to_string().contains("unknown") => {
                println!("NOTE: this kernel has no netem; {ns} is shaped by rate only ({e})");
                Ok(())
            }
            other => other,
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in self.names.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Runs a workspace binary in `ns` (with `$VODMESH_HOME` = `home` when given); its stdout.
fn run_in(ns: &str, name: &str, home: Option<&Path>, args: &[&str]) -> Result<String> {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(bin(name)).args(args);
    if let Some(home) = home {
        c.env("VODMESH_HOME", home);
    }
    let out = c.output()?;
    if !out.status.success() {
        bail!(
            "{name} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The log without its colour codes.
fn log_of(node: &NodeProcess) -> String {
    let raw = std::fs::read_to_string(node.data.join("stderr.log")).unwrap_or_default();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
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

fn wait_for_log(node: &NodeProcess, needle: &str, timeout: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    while !log_of(node).contains(needle) {
        if std::time::Instant::now() > deadline {
            bail!(
                "`{needle}` not in {} after {timeout:?}",
                node.data.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// The source station the director chose for each segment it missed: `(index, source)`.
fn choices(node: &NodeProcess) -> Vec<(u32, String)> {
    log_of(node)
        .lines()
        .filter(|l| l.contains("miss: copying from the cheapest station"))
        .filter_map(|l| {
            let field = |name: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .map(str::to_string)
            };
            let index = field("segment=")?.rsplit('/').next()?.parse().ok()?;
            Some((index, field("source=")?))
        })
        .collect()
}

#[test]
fn measured_links_beat_advertised_ones() -> Result<()> {
    let Some(mut hosts) = Hosts::new()? else {
        return Ok(());
    };
    let (h, a, c) = (hosts.host(1)?, hosts.host(2)?, hosts.host(3)?);
    // a's link: 4 Mbit/s and 20 ms, though it advertises 10 Gbit/s; the home's link is
    // unshaped, though it advertises 20 Mbit/s.
    hosts.shape(&a, "4mbit", "20ms")?;
    let dir = tempfile::tempdir()?;
    let home = NodeProcess::start_in(
        Some(&h),
        &dir.path().join("home"),
        &["/ip4/10.77.0.1/tcp/0"],
        &[
            "--engines",
            "1",
            "--home",
            "--content-manager",
            "--auth",
            "--bandwidth",
            "20",
            "--record-ttl",
            "10",
        ],
    )?;
    let boot = home.addr.to_string();
    let admin_key = home.data.join("identity.key").display().to_string();
    let issuer = vodmesh_tests::issuer_of(&home.data)?;
    let enrolled = |name: &str, ns: &str, bandwidth: &str, ip4: &str| -> Result<NodeProcess> {
        let data = dir.path().join(name);
        let peer = run_in(
            ns,
            "vodmesh",
            None,
            &[
                "keygen",
                "--out",
                &data.join("identity.key").display().to_string(),
            ],
        )?;
        let token = dir
            .path()
            .join(format!("{name}.token"))
            .display()
            .to_string();
        run_in(
            ns,
            "vodmesh",
            None,
            &[
                "enroll",
                "--node",
                &boot,
                "--key",
                &admin_key,
                "--station",
                peer.trim(),
                "--out",
                &token,
            ],
        )?;
        NodeProcess::start_in(
            Some(ns),
            &data,
            &[&format!("/ip4/{ip4}/tcp/0")],
            &[
                "--engines",
                "1",
                "--bootstrap",
                &boot,
                "--trust",
                &issuer,
                "--enroll",
                &token,
                "--bandwidth",
                bandwidth,
                "--record-ttl",
                "10",
            ],
        )
    };
    let station_a = enrolled("a", &a, "10000", "10.77.0.2")?;
    wait_for_log(&station_a, "engine token", Duration::from_secs(30))?;

    // A program of four 1 MiB segments, replicated to a.
    let source = dir.path().join("program.bin");
    let bytes = random_file(&source, 4 * 1024 * 1024, 41)?;
    let out = run_in(
        &h,
        "vodmesh",
        None,
        &[
            "ingest",
            "--node",
            &boot,
            "--key",
            &admin_key,
            "--title",
            "shaped",
            "--publish-at",
            "now",
            "--replicas",
            "1",
            "--segment-size",
            "1048576",
            &source.display().to_string(),
        ],
    )?;
    let program = out.lines().last().unwrap_or_default().to_string();
    wait_for_log(&station_a, "ReplicaComplete", Duration::from_secs(60))?;

    // The console's station, c, holds nothing.
    let station_c = enrolled("c", &c, "10000", "10.77.0.3")?;
    wait_for_log(&station_c, "engine token", Duration::from_secs(30))?;
    let console = dir.path().join("console");
    std::fs::create_dir_all(&console)?;
    let password = console.join("password");
    std::fs::write(&password, "correct horse battery staple\n")?;
    let password = password.display().to_string();
    run_in(
        &h,
        "vodmesh",
        None,
        &[
            "user",
            "add",
            "--node",
            &boot,
            "--key",
            &admin_key,
            "dee",
            "--password-file",
            &password,
        ],
    )?;
    let via = station_c.addr.to_string();
    run_in(
        &c,
        "vodmesh-console",
        Some(&console),
        &[
            "login",
            "--node",
            &via,
            "--user",
            "dee",
            "--password-file",
            &password,
        ],
    )?;
    let played = dir.path().join("played.bin").display().to_string();
    run_in(
        &c,
        "vodmesh-console",
        Some(&console),
        &[
            "play", "--node", &via, "--speed", "max", "--out", &played, &program,
        ],
    )?;
    assert!(std::fs::read(&played)? == bytes, "played bytes differ");

    let decided = choices(&station_c);
    let a_peer = station_a
        .addr
        .iter()
        .last()
        .map(|p| format!("{p}"))
        .unwrap_or_default();
    let home_peer = home
        .addr
        .iter()
        .last()
        .map(|p| format!("{p}"))
        .unwrap_or_default();
    let from = |index: u32| {
        decided
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, s)| format!("/p2p/{s}"))
    };
    assert_eq!(decided.len(), 4, "one decision per segment: {decided:?}");
    // Believing the adverts, the first copy comes from a; measured, a's link is slow, and
    // the last segment comes from the home.
    assert_eq!(from(0), Some(a_peer.clone()), "{decided:?}");
    assert_eq!(from(3), Some(home_peer), "{decided:?}");
    Ok(())
}
