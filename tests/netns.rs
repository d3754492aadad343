//! Stations on hosts that are network namespaces, joined by veth pairs through a bridge
//! ([`Hosts`], `tests/hosts.sh`).
//!
//! - Addresses that work from other hosts: a station started with the default listen
//!   addresses prints a `director` line another host joins through, and a console on a third
//!   host plays from its engine; the same for a station behind a NAT, announced with
//!   `--announce`.
//! - Cost inputs from real links (claim 15): one host's link shaped with `tc` (tbf rate limit
//!   and netem delay). The shaped host advertises a fat link and the unshaped one a thin link;
//!   the first miss believes the adverts, and once a copy has been measured the director picks
//!   the truly faster link.
//! - A link cut during a copy, loss and delay, a partition that heals.
//!
//! Each test creates and removes every namespace itself; it skips with a message where it
//! may not (not root, no iproute2), and fails under CI when it cannot make them.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use vodmesh_tests::hosts::Hosts;
use vodmesh_tests::{
    NodeProcess, enroll_new_station, ingest, issuer_of, play, random_file, run_bin, subscriber_in,
};

/// Runs a workspace binary in `ns` (with `$VODMESH_HOME` = `home` when given); its stdout.
fn run_in(ns: &str, name: &str, home: Option<&Path>, args: &[&str]) -> Result<String> {
    run_bin(Some(ns), name, home, args)
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
        let admin_key = home.data.join("identity.key");
        let issuer = issuer_of(&home.data)?;
        let enrolled = |name: &str, ns: &str, ip4: &str, extra: &[&str]| -> Result<NodeProcess> {
            let data = dir.path().join(name);
            let token = enroll_new_station(Some(ns), &home.addr, &admin_key, &data)?;
            let token = token.display().to_string();
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
        let replicas = ["--replicas", "1"];
        let program = ingest(
            Some(&h),
            &home.addr,
            &admin_key,
            "shaped",
            &source,
            &replicas,
        )?;
        wait_for_log(&a, "ReplicaComplete", Duration::from_secs(60))?;
        let c_ns = hosts.ns(3);
        let c = enrolled("c", &c_ns, "10.77.0.3", &["--bandwidth", "10000"])?;
        let console = dir.path().join("console");
        subscriber_in(Some(&c_ns), &home.addr, &admin_key, &console, "dee")?;
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
        let console = self.dir.path().join("console");
        Ok(play(Some(&self.c_ns), &console, &self.c.addr, &self.program)?.0)
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

/// The IPv4 address `addr` starts with, as text.
fn ip4_of(addr: &Multiaddr) -> Option<String> {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => Some(ip.to_string()),
        _ => None,
    }
}

/// Whether `addrs` has both a TCP and a QUIC address on `ip`.
fn tcp_and_quic_on(addrs: &[Multiaddr], ip: &str) -> bool {
    let on = |quic: bool| {
        addrs.iter().any(|a| {
            ip4_of(a).as_deref() == Some(ip) && a.iter().any(|p| p == Protocol::QuicV1) == quic
        })
    };
    on(false) && on(true)
}

/// Station a on host 1 (home, content manager, auth, one engine), listening on `a_listen`
/// (none: the defaults) with `a_args`, must print a `director` line on `public`, the address
/// other hosts reach it at, and list its director and engine there for TCP and QUIC in
/// node.json. Station b on host 2 joins through exactly that line; it is not enrolled, so it
/// sends consoles to the engine holding a segment. A console on host 3 logs in, ingests a
/// program into a and plays it through b: the bytes come from a's engine. With `private`
/// (a's interface address behind a NAT), host 3 must not reach a there: only the announced
/// address works.
fn plays_across_hosts(
    hosts: &Hosts,
    a_listen: &[&str],
    a_args: &[&str],
    public: &str,
    private: Option<&str>,
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (h1, h2, h3) = (hosts.ns(1), hosts.ns(2), hosts.ns(3));
    let mut args = vec!["--engines", "1", "--home", "--content-manager", "--auth"];
    args.extend_from_slice(&["--record-ttl", "10"]);
    args.extend_from_slice(a_args);
    let a = NodeProcess::start_in(Some(&h1), &dir.path().join("a"), a_listen, &args)?;
    assert_eq!(
        ip4_of(&a.addr).as_deref(),
        Some(public),
        "a printed {}",
        a.addr
    );
    let node = vodmesh_node::nodefile::NodeFile::read(&a.data)?;
    assert_eq!(node.director.addrs.first(), Some(&a.addr), "{node:?}");
    for entry in std::iter::once(&node.director).chain(&node.engines) {
        assert!(tcp_and_quic_on(&entry.addrs, public), "{entry:?}");
        if let Some(private) = private {
            // Listed too (it is a's interface), after the announced address.
            assert!(tcp_and_quic_on(&entry.addrs, private), "{entry:?}");
        }
    }
    let a_engine = node.engines.first().map(|e| e.peer_id.to_string());
    if let Some(private) = private {
        // The engine on the port after the director's, at the announced address.
        let engine_at = node.engines.first().and_then(|e| e.addrs.first());
        let want = format!("/ip4/{public}/tcp/4002/p2p/");
        assert!(
            engine_at.is_some_and(|a| a.to_string().starts_with(&want)),
            "engine at {engine_at:?}"
        );
        let behind = format!("/ip4/{private}/tcp/4001/p2p/{}", peer_of(&a));
        let direct = run_in(&h3, "vodmesh", None, &["status", "--node", &behind]);
        assert!(
            direct.is_err(),
            "host 3 reached a behind its NAT: {direct:?}"
        );
    }

    let issuer = issuer_of(&a.data)?;
    let boot = a.addr.to_string();
    let b_args = [
        "--bootstrap",
        &boot,
        "--trust",
        &issuer,
        "--record-ttl",
        "10",
    ];
    let b = NodeProcess::start_in(Some(&h2), &dir.path().join("b"), &[], &b_args)?;
    let both: BTreeSet<String> = [peer_of(&a), peer_of(&b)].into();
    wait_listing("b joined a", &h3, &b, &both, Duration::from_secs(40))?;

    let admin_key = a.data.join("identity.key");
    let console = dir.path().join("console");
    subscriber_in(Some(&h3), &a.addr, &admin_key, &console, "eve")?;
    let source = dir.path().join("program.bin");
    let bytes = random_file(&source, 3 * 1024 * 1024 + 7, 29)?;
    // Ingested from host 3 as well: the segments go to a's engine at the addresses a named.
    let program = ingest(Some(&h3), &a.addr, &admin_key, "far", &source, &[])?;
    let (played, stats) = play(Some(&h3), &console, &b.addr, &program)?;
    assert!(played == bytes, "played bytes differ from the source");
    assert_eq!(stats["verified"], true);
    assert_eq!(stats["engines"], serde_json::json!([a_engine]), "{stats}");
    Ok(())
}

/// Issue 29: a station on the default listen addresses (TCP and QUIC on 0.0.0.0) prints an
/// address of its host that other hosts reach, and is joined and played from there.
#[test]
fn a_station_on_the_default_addresses_is_joined_and_played_from_other_hosts() -> Result<()> {
    let Some(hosts) = Hosts::up(3)? else {
        return Ok(());
    };
    plays_across_hosts(&hosts, &[], &[], "10.77.0.1", None)
}

/// Issue 29: a station behind a NAT (its interface address unreachable from the other
/// hosts) is announced at its public address with `--announce`, every port forwarded: the
/// director on the fixed ports, its engine on the next ones.
#[test]
fn a_station_behind_a_nat_is_reached_at_its_announced_address() -> Result<()> {
    let Some(hosts) = Hosts::up(3)? else {
        return Ok(());
    };
    let Some((public, private)) = hosts.behind_nat(1)? else {
        return Ok(());
    };
    let (tcp, quic) = (
        format!("/ip4/{public}/tcp/4001"),
        format!("/ip4/{public}/udp/4001/quic-v1"),
    );
    let listen = ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"];
    let announce = ["--announce", &tcp, "--announce", &quic];
    plays_across_hosts(&hosts, &listen, &announce, &public, Some(&private))
}
