//! Cost inputs from real links (claim 15): stations on hosts that are network namespaces,
//! joined by veth pairs through a bridge, one host's link shaped with `tc` (tbf rate limit and
//! netem delay). The shaped host advertises a fat link and the unshaped one a thin link; the
//! first miss believes the adverts, and once a copy has been measured the director picks the
//! truly faster link. The test creates and removes every namespace itself, and skips with a
//! message where it may not.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use vodmesh_tests::{NodeProcess, bin, random_file};

/// Hosts made by `tests/hosts.sh` for one test, removed when dropped.
struct Hosts {
    prefix: String,
}

fn script(args: &[&str]) -> Result<std::process::Output> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("hosts.sh");
    Command::new("bash")
        .arg(path)
        .args(args)
        .output()
        .context("running tests/hosts.sh")
}

impl Hosts {
    /// `n` hosts (10.77.0.1..n) on one bridge; `None` when namespaces cannot be made here.
    fn up(n: u8) -> Result<Option<Self>> {
        let prefix = format!("vm{}", std::process::id() % 100_000);
        let out = script(&["up", &prefix, &n.to_string()])?;
        if !out.status.success() {
            let _ = script(&["down", &prefix]);
            println!(
                "SKIPPED: cannot create network namespaces here ({})",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return Ok(None);
        }
        Ok(Some(Self { prefix }))
    }

    /// Host `i`'s namespace.
    fn ns(&self, i: u8) -> String {
        format!("{}h{i}", self.prefix)
    }

    fn run(&self, args: &[&str]) -> Result<std::process::Output> {
        let mut all = vec![args[0], &self.prefix];
        all.extend_from_slice(&args[1..]);
        script(&all)
    }

    /// Shapes what host `i` sends; false when the kernel has no netem (rate only).
    fn shape(&self, i: u8, rate: &str, delay: &str, loss: &str) -> Result<bool> {
        let out = self.run(&["shape", &i.to_string(), rate, delay, loss])?;
        match out.status.code() {
            Some(0) => Ok(true),
            Some(3) => {
                println!("NOTE: {}", String::from_utf8_lossy(&out.stderr).trim());
                Ok(false)
            }
            _ => bail!("shape: {}", String::from_utf8_lossy(&out.stderr)),
        }
    }

    /// Cuts (`true`) or restores host `i`'s link.
    fn cut(&self, i: u8, cut: bool) -> Result<()> {
        let out = self.run(&[if cut { "cut" } else { "heal" }, &i.to_string()])?;
        if !out.status.success() {
            bail!("cut: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = script(&["down", &self.prefix]);
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
    let Some(hosts) = Hosts::up(3)? else {
        return Ok(());
    };
    let (h, a, c) = (hosts.ns(1), hosts.ns(2), hosts.ns(3));
    // a's link: 4 Mbit/s and 20 ms, though it advertises 10 Gbit/s; the home's link is
    // unshaped, though it advertises 20 Mbit/s.
    hosts.shape(2, "4mbit", "20ms", "0%")?;
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

/// The stations `vodmesh status` lists from the director at `addr`, asked from host `ns`.
fn listed(ns: &str, addr: &str) -> BTreeSet<String> {
    let out = match run_in(ns, "vodmesh", None, &["status", "--node", addr, "--json"]) {
        Ok(out) => out,
        Err(e) => {
            println!("status failed: {e}");
            return BTreeSet::new();
        }
    };
    let json: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    json["stations"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|s| s["director"]["peer_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn peer_of(node: &NodeProcess) -> String {
    node.addr
        .iter()
        .last()
        .map(|p| p.to_string().trim_start_matches("/p2p/").to_string())
        .unwrap_or_default()
}

fn wait_listing(
    what: &str,
    ns: &str,
    node: &NodeProcess,
    want: &BTreeSet<String>,
    within: Duration,
) -> Result<Duration> {
    let started = std::time::Instant::now();
    loop {
        let got = listed(ns, &node.addr.to_string());
        if &got == want {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            bail!("{what}: after {within:?} it lists {got:?}, not {want:?}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A station cut off from the others drops out of their listings within one record TTL, and
/// once the link heals every station lists every other again within one TTL.
#[test]
fn a_partition_that_heals_reconverges() -> Result<()> {
    let Some(hosts) = Hosts::up(3)? else {
        return Ok(());
    };
    const TTL: Duration = Duration::from_secs(6);
    let dir = tempfile::tempdir()?;
    let ttl = TTL.as_secs().to_string();
    let first = NodeProcess::start_in(
        Some(&hosts.ns(1)),
        &dir.path().join("s1"),
        &["/ip4/10.77.0.1/tcp/0"],
        &["--record-ttl", &ttl],
    )?;
    let boot = first.addr.to_string();
    let mut nodes = vec![first];
    for i in 2..=3u8 {
        nodes.push(NodeProcess::start_in(
            Some(&hosts.ns(i)),
            &dir.path().join(format!("s{i}")),
            &[&format!("/ip4/10.77.0.{i}/tcp/0")],
            &["--bootstrap", &boot, "--record-ttl", &ttl],
        )?);
    }
    let all: BTreeSet<String> = nodes.iter().map(peer_of).collect();
    for (i, node) in nodes.iter().enumerate() {
        wait_listing("joined", &hosts.ns(i as u8 + 1), node, &all, 4 * TTL)?;
    }

    hosts.cut(3, true)?;
    let majority: BTreeSet<String> = nodes[..2].iter().map(peer_of).collect();
    let alone: BTreeSet<String> = [peer_of(&nodes[2])].into_iter().collect();
    wait_listing(
        "cut off (majority)",
        &hosts.ns(1),
        &nodes[0],
        &majority,
        3 * TTL,
    )?;
    wait_listing("cut off (alone)", &hosts.ns(3), &nodes[2], &alone, 3 * TTL)?;

    hosts.cut(3, false)?;
    for (i, node) in nodes.iter().enumerate() {
        let took = wait_listing("healed", &hosts.ns(i as u8 + 1), node, &all, 3 * TTL)?;
        println!("station {} lists all {took:?} after the heal", i + 1);
        assert!(took <= TTL, "station {} took {took:?} to reconverge", i + 1);
    }
    Ok(())
}
