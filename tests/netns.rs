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

/// Three hosts: the home (10.77.0.1, holds the program, advertises 20 Mbit/s), station a
/// (10.77.0.2, a replica, advertises 10 Gbit/s, started with `a_args`) and station c
/// (10.77.0.3, holds nothing: the console's station), with a logged-in console.
struct Trio {
    dir: tempfile::TempDir,
    home: NodeProcess,
    a: NodeProcess,
    c: NodeProcess,
    c_ns: String,
    program: String,
    bytes: Vec<u8>,
}

impl Trio {
    fn start(hosts: &Hosts, a_args: &[&str], segments: usize) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let h = hosts.ns(1);
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
        let enrolled = |name: &str, ns: &str, ip4: &str, extra: &[&str]| -> Result<NodeProcess> {
            let data = dir.path().join(name);
            let key = data.join("identity.key").display().to_string();
            let peer = run_in(ns, "vodmesh", None, &["keygen", "--out", &key])?;
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
            let mut args = vec![
                "--engines",
                "1",
                "--bootstrap",
                &boot,
                "--trust",
                &issuer,
                "--enroll",
                &token,
                "--record-ttl",
                "10",
            ];
            args.extend_from_slice(extra);
            let node =
                NodeProcess::start_in(Some(ns), &data, &[&format!("/ip4/{ip4}/tcp/0")], &args)?;
            wait_for_log(&node, "engine token", Duration::from_secs(30))?;
            Ok(node)
        };
        let a = enrolled("a", &hosts.ns(2), "10.77.0.2", a_args)?;
        // A program of 1 MiB segments, replicated to a.
        let source = dir.path().join("program.bin");
        let bytes = random_file(&source, segments * 1024 * 1024, 41)?;
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
        wait_for_log(&a, "ReplicaComplete", Duration::from_secs(60))?;
        let c_ns = hosts.ns(3);
        let c = enrolled("c", &c_ns, "10.77.0.3", &["--bandwidth", "10000"])?;
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
        run_in(
            &c_ns,
            "vodmesh-console",
            Some(&console),
            &[
                "login",
                "--node",
                &c.addr.to_string(),
                "--user",
                "dee",
                "--password-file",
                &password,
            ],
        )?;
        Ok(Self {
            dir,
            home,
            a,
            c,
            c_ns,
            program,
            bytes,
        })
    }

    /// Plays the program at c, from host c, at full speed; returns the bytes played.
    fn play(&self) -> Result<Vec<u8>> {
        let played = self.dir.path().join("played.bin").display().to_string();
        run_in(
            &self.c_ns,
            "vodmesh-console",
            Some(&self.dir.path().join("console")),
            &[
                "play",
                "--node",
                &self.c.addr.to_string(),
                "--speed",
                "max",
                "--out",
                &played,
                &self.program,
            ],
        )?;
        Ok(std::fs::read(&played)?)
    }
}

#[test]
fn measured_links_beat_advertised_ones() -> Result<()> {
    let Some(hosts) = Hosts::up(3)? else {
        return Ok(());
    };
    // a's link: 4 Mbit/s and 20 ms, though it advertises 10 Gbit/s; the home's link is
    // unshaped, though it advertises 20 Mbit/s.
    hosts.shape(2, "4mbit", "20ms", "0%")?;
    let trio = Trio::start(&hosts, &["--bandwidth", "10000"], 4)?;
    assert!(trio.play()? == trio.bytes, "played bytes differ");
    let decided = choices(&trio.c);
    let from = |index: u32| {
        decided
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, s)| s.clone())
    };
    assert_eq!(decided.len(), 4, "one decision per segment: {decided:?}");
    // Believing the adverts, the first copy comes from a; measured, a's link is slow, and
    // the last segment comes from the home.
    assert_eq!(from(0), Some(peer_of(&trio.a)), "{decided:?}");
    assert_eq!(from(3), Some(peer_of(&trio.home)), "{decided:?}");
    Ok(())
}

/// The link of the source of a copy is cut in the middle of it: the copy goes on from the
/// next source, from the first byte it lacks, and the console's bytes match the source.
#[test]
fn a_link_cut_during_a_copy_is_survived() -> Result<()> {
    let Some(hosts) = Hosts::up(3)? else {
        return Ok(());
    };
    // a serves copies at 4 Mbit/s: a 1 MiB segment takes two seconds.
    let trio = Trio::start(&hosts, &["--bandwidth", "10000", "--copy-rate", "4"], 2)?;
    std::thread::scope(|scope| -> Result<()> {
        let playing = scope.spawn(|| trio.play());
        // Once c chose a for its first copy, a's link goes down.
        let started = std::time::Instant::now();
        while !choices(&trio.c).iter().any(|(_, s)| *s == peer_of(&trio.a)) {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "c never chose a"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
        hosts.cut(2, true)?;
        let played = playing
            .join()
            .map_err(|_| anyhow::anyhow!("the player thread panicked"))??;
        assert!(played == trio.bytes, "played bytes differ");
        Ok(())
    })?;
    wait_for_log(&trio.c, "CopyResumed", Duration::from_secs(5))?;
    Ok(())
}

/// 2 % packet loss and 80 ms of delay between every pair of hosts (1 % and 40 ms on each
/// host's link): playback is still correct. Needs netem in the kernel; skipped without it.
#[test]
fn loss_and_delay_keep_playback_correct() -> Result<()> {
    let Some(hosts) = Hosts::up(3)? else {
        return Ok(());
    };
    for i in 1..=3 {
        if !hosts.shape(i, "-", "40ms", "1%")? {
            println!("SKIPPED: this kernel has no netem, so no loss or delay can be made");
            return Ok(());
        }
    }
    let trio = Trio::start(&hosts, &["--bandwidth", "10000"], 3)?;
    assert!(trio.play()? == trio.bytes, "played bytes differ");
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
