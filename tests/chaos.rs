//! The chaos run (issue 17): nothing lost, nothing stuck, through real processes only.
//!
//! Four stations on hosts of their own (network namespaces, `tests/hosts.sh`; without them,
//! on loopback): the home station (auth, content manager) whose two engines are engine
//! processes (`vodmesh-node engine`), and three enrolled stations with in-process engines.
//! Three programs of 128 KiB segments at 1 Mbit/s (about a second a segment) are ingested at
//! the home station with `--replicas 2`; the other stations serve copies at 2 Mbit/s, so that
//! copies (misses; the home copying back what a killed engine held) last long enough to be
//! disrupted. Twenty consoles on a host of their own play them at
//! `--speed 1 --buffer 2`, each with `--stats` and `--out`, one play after another from
//! stations picked at random, started spread over the run.
//!
//! Meanwhile the test is the scheduler: from a seeded RNG (the seed is printed; set
//! `VODMESH_CHAOS_SEED` to replay it) it SIGKILLs a home engine process and restarts it,
//! SIGSTOPs one and SIGCONTs it, SIGKILLs a whole non-home station and restarts it on its data
//! directory, and cuts a non-home station's link and heals it (without namespaces: SIGSTOP of
//! the whole station, as the output says). One disruption at a time; after each, the test
//! waits until the swarm has recovered (an engine up again at its director; a station listed
//! by every station with a record signed after its restart or heal) before the next one.
//!
//! At the end: every play exited 0 with the bytes of its source, verified, with no stall
//! (`--stats` `stalls`: a segment that arrived after its play time, that is, once the 2 s
//! buffer ran dry); every segment of every program still stored by the home station's engine
//! processes, byte for byte; every restarted or healed station back in every listing within
//! one record TTL; and the stations' failover counters (`/metrics`) moved.
//!
//! `VODMESH_CHAOS_SECS` sets how long the disruptions go on (default 90 s, about 2.5 minutes
//! in all); the same test runs for 30 minutes with `VODMESH_CHAOS_SECS=1800`.
//! `VODMESH_CHAOS_LOOPBACK=1` runs it on loopback where namespaces could be made.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use libp2p::Multiaddr;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vodmesh_proto::time::now_ms;
use vodmesh_tests::cli::{Ingest, Play, keygen, subscriber_in};
use vodmesh_tests::hosts::Hosts;
use vodmesh_tests::http::Scrape;
use vodmesh_tests::media::random_file;
use vodmesh_tests::process::{EngineLine, EngineProcess, Node, NodeProcess, free_port};
use vodmesh_tests::{status, stored, wait};

const KIB: usize = 1024;
/// 128 KiB at 1 Mbit/s: a segment of about a second, so that a 2 s buffer is two segments.
const SEGMENT: usize = 128 * KIB;
const BITRATE: u64 = 1_000_000;
/// Segments of each program: plays of 25 to 40 s at `--speed 1`.
const PROGRAMS: [usize; 3] = [24, 30, 36];
/// Mbit/s at which a non-home station's engines serve copies: a segment's copy takes half a
/// second, long enough for a disruption to catch copies under way (a station filling a miss,
/// the home station copying back what its killed engine held).
const COPY_RATE: u32 = 2;
/// Segment bytes each engine of the last station may hold: a program and a bit, so that it
/// is chosen for no replica (the others have more room), evicts what it copied for one
/// console to copy in what the next asks for, and copies go on for the whole run.
const CACHE_CAPACITY: usize = 3 * 1024 * KIB;
/// Replicas of each program (beside the home's copy): every segment has a holder left when
/// one is disrupted.
const REPLICAS: u32 = 2;
/// Stations; the first is the home.
const STATIONS: usize = 4;
/// The home station's engine processes.
const HOME_ENGINES: usize = 2;
const CONSOLES: usize = 20;
/// `--record-ttl` of every station.
const TTL: Duration = Duration::from_secs(10);
/// Every station's director, engine processes and metrics listen on these ports of their
/// host (namespaces only: on loopback the system picks).
const DIRECTOR_PORT: u16 = 4001;
const ENGINE_PORT: u16 = 4101;
const METRICS_PORT: u16 = 9100;
/// The counters of `/metrics` the run reports; the first ones are the failovers.
const COUNTERS: [&str; 6] = [
    "vodmesh_source_failovers_total",
    "vodmesh_swaps_total",
    "vodmesh_misses_total",
    "vodmesh_replications_total",
    "vodmesh_copies_declined_total",
    "vodmesh_streams_stopped_total{kind=\"early\"}",
];

/// A number from the environment, or `default`.
fn env_u64(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v} is no number")),
        Err(_) => Ok(default),
    }
}

/// Where the run's processes live: stations on hosts 1..=4 and consoles on host 5 when
/// namespaces can be made, everything on loopback otherwise.
struct Net {
    hosts: Option<Hosts>,
}

impl Net {
    /// Host of station `i` (none: loopback).
    fn station_ns(&self, i: usize) -> Option<String> {
        self.hosts.as_ref().map(|h| h.ns(i as u8 + 1))
    }

    /// Host of the consoles and of every `vodmesh` command the test runs.
    fn console_ns(&self) -> Option<String> {
        self.hosts.as_ref().map(|h| h.ns(STATIONS as u8 + 1))
    }

    /// A TCP listen address for station `i`'s host on `port` (loopback: any port).
    fn listen(&self, i: usize, port: u16) -> String {
        match self.hosts {
            Some(_) => format!("/ip4/10.77.0.{}/tcp/{port}", i + 1),
            None => "/ip4/127.0.0.1/tcp/0".into(),
        }
    }

    /// The `--metrics` address of station `i`, kept across its restarts.
    fn metrics(&self, i: usize) -> Result<String> {
        Ok(match self.hosts {
            Some(_) => format!("10.77.0.{}:{METRICS_PORT}", i + 1),
            None => format!("127.0.0.1:{}", free_port()?),
        })
    }

    /// A scrape of `url`, from the consoles' host.
    fn scrape(&self, url: &str) -> Result<Scrape> {
        match self.console_ns() {
            Some(ns) => Scrape::in_netns(&ns, url),
            None => Scrape::blocking(url),
        }
    }
}

/// What the consoles share with the scheduler: the director of each station while it is
/// up and reachable (a console starts only at one of those).
type Directors = Arc<Mutex<Vec<Option<Multiaddr>>>>;

/// A program: its id, and the bytes of its source.
struct Program {
    id: String,
    bytes: Vec<u8>,
    segments: usize,
}

/// The swarm under test.
struct Swarm {
    net: Net,
    dir: PathBuf,
    /// Each station's command line, to restart it on its data.
    lines: Vec<Node>,
    stations: Vec<Option<NodeProcess>>,
    engine_lines: Vec<EngineLine>,
    engines: Vec<Option<EngineProcess>>,
    engine_peers: Vec<String>,
    metrics: Vec<String>,
    directors: Directors,
    programs: Vec<Program>,
    /// Counter values of stations' earlier lives (a restart sets them to zero).
    counted: BTreeMap<&'static str, f64>,
    /// How far the test has read each station's log.
    read_to: BTreeMap<usize, u64>,
}

impl Swarm {
    fn start(net: Net, dir: &Path) -> Result<Self> {
        let mut metrics = Vec::new();
        for i in 0..STATIONS {
            metrics.push(net.metrics(i)?);
        }
        let ns0 = net.station_ns(0);
        let engine_data: Vec<PathBuf> = (0..HOME_ENGINES)
            .map(|k| dir.join(format!("home-engine{k}")))
            .collect();
        let mut engine_peers = Vec::new();
        for data in &engine_data {
            engine_peers.push(keygen(None, &data.join("identity.key"))?);
        }
        let mut home = Node::new(&dir.join("s0"))
            .listen(&[&net.listen(0, DIRECTOR_PORT)])
            .engines(0)
            .home()
            .ttl(TTL.as_secs())
            .args(&["--metrics", &metrics[0]]);
        if let Some(ns) = &ns0 {
            home = home.in_netns(ns);
        }
        for peer in &engine_peers {
            home = home.args(&["--engine-peer", peer]);
        }
        let mut lines = vec![home.clone()];
        let home = home.start()?;
        let issuer = home.issuer()?;
        let mut engine_lines = Vec::new();
        let mut engines = Vec::new();
        for (k, data) in engine_data.iter().enumerate() {
            let listen = net.listen(0, ENGINE_PORT + k as u16);
            let args = ["--listen", &listen, "--trust", &issuer];
            let line = EngineLine::new(ns0.as_deref(), data, &home.addr, &args);
            engines.push(Some(line.start()?));
            engine_lines.push(line);
        }
        let mut stations = vec![Some(home)];
        for (i, metrics) in metrics.iter().enumerate().skip(1) {
            let mut node = Node::new(&dir.join(format!("s{i}")))
                .listen(&[&net.listen(i, DIRECTOR_PORT)])
                .engines(2)
                .ttl(TTL.as_secs())
                .args(&["--metrics", metrics])
                .args(&["--copy-rate", &COPY_RATE.to_string()]);
            if i == STATIONS - 1 {
                node = node.args(&["--capacity", &CACHE_CAPACITY.to_string()]);
            }
            if let Some(ns) = net.station_ns(i) {
                node = node.in_netns(&ns);
            }
            let home = stations[0].as_ref().context("no home")?;
            let node = node.enrolled_with(home)?;
            lines.push(node.clone());
            let station = node.start()?;
            station.wait_engine_token(0)?;
            stations.push(Some(station));
        }
        let directors = stations
            .iter()
            .map(|s| s.as_ref().map(|s| s.addr.clone()))
            .collect();
        let swarm = Self {
            net,
            dir: dir.to_path_buf(),
            lines,
            stations,
            engine_lines,
            engines,
            engine_peers,
            metrics,
            directors: Arc::new(Mutex::new(directors)),
            programs: Vec::new(),
            counted: BTreeMap::new(),
            read_to: BTreeMap::new(),
        };
        for k in 0..HOME_ENGINES {
            swarm.wait_engine_up(k, Duration::from_secs(30))?;
        }
        for i in 0..STATIONS {
            swarm.wait_listed(i, 0, Duration::from_secs(60))?;
        }
        Ok(swarm)
    }

    fn home(&self) -> Result<&NodeProcess> {
        self.stations[0]
            .as_ref()
            .context("the home station is down")
    }

    /// Ingests the programs at the home station with their replicas, and waits until every
    /// replica is complete.
    fn ingest(&mut self) -> Result<()> {
        let home = self.home()?;
        let mut programs = Vec::new();
        for (k, segments) in PROGRAMS.iter().enumerate() {
            let source = self.dir.join(format!("program{k}.bin"));
            // A short last segment, as a real program has.
            let bytes = random_file(&source, segments * SEGMENT - 1000 * k, 70 + k as u64)?;
            let mut ingest = Ingest::new(&home.addr, &home.key(), &format!("chaos{k}"), &source)
                .publish_now()
                .segment_size(SEGMENT)
                .bitrate(BITRATE)
                .replicas(REPLICAS);
            if let Some(ns) = self.net.station_ns(0) {
                ingest = ingest.in_netns(&ns);
            }
            let id = ingest.run()?;
            programs.push(Program {
                id,
                bytes,
                segments: *segments,
            });
        }
        let stations = &self.stations;
        let want = REPLICAS as usize * PROGRAMS.len();
        let complete = || -> Vec<usize> {
            let logs = stations.iter().flatten().map(NodeProcess::log);
            logs.map(|l| l.matches("kind=ReplicaComplete").count())
                .collect()
        };
        let waited = wait::blocking("every replica", Duration::from_secs(120), || {
            Ok(complete().iter().sum::<usize>() >= want)
        });
        waited.with_context(|| format!("replicas complete at each station: {:?}", complete()))?;
        self.programs = programs;
        Ok(())
    }

    /// Waits until the home station lists its engine process `k` up.
    fn wait_engine_up(&self, k: usize, within: Duration) -> Result<Duration> {
        let home = self.home()?;
        let ns = self.net.console_ns();
        let peer = &self.engine_peers[k];
        wait::blocking(&format!("home engine {k} up"), within, || {
            let up = status::engines_up_in(ns.as_deref(), &home.addr).unwrap_or_default();
            Ok(up.iter().any(|(p, up)| p == peer && *up))
        })
    }

    /// Waits until every station up lists station `i` with a record it signed at
    /// `since_ms` or later; the time that took.
    fn wait_listed(&self, i: usize, since_ms: u64, within: Duration) -> Result<Duration> {
        let ns = self.net.console_ns();
        let peer = self.stations[i].as_ref().context("station down")?.peer();
        let listers: Vec<Multiaddr> = self
            .stations
            .iter()
            .flatten()
            .map(|s| s.addr.clone())
            .collect();
        let mut missing = Vec::new();
        let took = wait::blocking(&format!("station {i} in every listing"), within, || {
            missing = listers
                .iter()
                .filter(|at| {
                    let issued = status::issued_in(ns.as_deref(), at).unwrap_or_default();
                    issued.get(&peer).is_none_or(|t| *t < since_ms)
                })
                .cloned()
                .collect();
            Ok(missing.is_empty())
        });
        took.with_context(|| format!("not (afresh) in the listings of {missing:?}"))
    }

    /// Adds each counter of station `i`'s `/metrics` now to what earlier lives counted
    /// (before the station is killed), or returns them (at the end).
    fn scrape(&self, i: usize) -> BTreeMap<&'static str, f64> {
        let url = format!("http://{}/metrics", self.metrics[i]);
        let Ok(scrape) = self.net.scrape(&url) else {
            return BTreeMap::new();
        };
        COUNTERS
            .iter()
            .map(|name| (*name, scrape.get(name).unwrap_or(0.0)))
            .collect()
    }

    /// Every counter over the whole run: earlier lives plus every station now.
    fn counters(&self) -> BTreeMap<&'static str, f64> {
        let mut all = self.counted.clone();
        for i in 0..STATIONS {
            for (name, v) in self.scrape(i) {
                *all.entry(name).or_default() += v;
            }
        }
        all
    }

    /// The non-home station that a station starts copying a segment from next, waiting at
    /// most `within` (none when no copy starts from one): the first new
    /// `miss: copying from the cheapest station ... source=PEER` line in a station's log.
    fn copy_source(&mut self, within: Duration) -> Option<usize> {
        const MISS: &str = "miss: copying from the cheapest station";
        let peers: Vec<Option<String>> = self
            .stations
            .iter()
            .map(|s| s.as_ref().map(NodeProcess::peer))
            .collect();
        // What was logged before now is an old copy: skip it.
        for j in 0..STATIONS {
            self.new_log(j);
        }
        let mut found = None;
        let _ = wait::blocking("a copy to start", within, || {
            for j in 0..STATIONS {
                for line in self.new_log(j).lines().filter(|l| l.contains(MISS)) {
                    let source = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("source="));
                    found = (1..STATIONS).find(|i| peers[*i].as_deref() == source);
                    if found.is_some() {
                        return Ok(true);
                    }
                }
            }
            Ok(false)
        });
        found
    }

    /// What station `j` logged since the last call, without colour codes (from the start
    /// of a new log after a restart).
    fn new_log(&mut self, j: usize) -> String {
        use std::io::{Read, Seek};
        let Some(station) = &self.stations[j] else {
            return String::new();
        };
        let Ok(mut file) = std::fs::File::open(station.data.join("stderr.log")) else {
            return String::new();
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let read = self
            .read_to
            .get(&j)
            .copied()
            .filter(|at| *at <= len)
            .unwrap_or(0);
        let mut text = String::new();
        if file.seek(std::io::SeekFrom::Start(read)).is_err()
            || file.read_to_string(&mut text).is_err()
        {
            return String::new();
        }
        // Only whole lines; the rest is read next time.
        let whole = text.rfind('\n').map_or(0, |n| n + 1);
        text.truncate(whole);
        self.read_to.insert(j, read + whole as u64);
        vodmesh_tests::process::plain(&text)
    }

    fn set_director(&self, i: usize, addr: Option<Multiaddr>) {
        if let Ok(mut d) = self.directors.lock() {
            d[i] = addr;
        }
    }
}

/// One disruption the scheduler makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Disruption {
    /// SIGKILL of a home engine process, restarted on its data after a while.
    EngineKilled,
    /// SIGSTOP of a home engine process, SIGCONT after a while.
    EngineFrozen,
    /// SIGKILL of a whole non-home station, restarted on its data directory after a while.
    StationKilled,
    /// A non-home station's link cut, healed after a while (namespaces only).
    LinkCut,
    /// SIGSTOP of a whole non-home station, SIGCONT after a while: the link cut's stand-in
    /// on loopback.
    StationFrozen,
}

/// What the scheduler did and saw.
#[derive(Default)]
struct Log {
    disruptions: BTreeMap<Disruption, u32>,
    /// Seconds until a restarted or healed station was back in every listing, each time.
    back_after: Vec<f64>,
    /// What went wrong, one line each.
    failures: Vec<String>,
    /// Each disruption: from, until (seconds into the run), and what.
    timeline: Vec<(f64, f64, String)>,
}

impl Log {
    /// The disruptions that overlapped seconds `from..until` of the run.
    fn during(&self, from: f64, until: f64) -> Vec<String> {
        self.timeline
            .iter()
            .filter(|(a, b, _)| *a < until && *b > from)
            .map(|(a, _, what)| format!("{what} at {a:.1}s"))
            .collect()
    }
}

impl Swarm {
    /// Makes one disruption of a kind drawn from `rng`, and waits until the swarm recovered.
    fn disrupt(&mut self, rng: &mut StdRng, log: &mut Log, t0: Instant) -> Result<()> {
        let kinds = [
            Disruption::EngineKilled,
            Disruption::EngineFrozen,
            Disruption::StationKilled,
            match self.net.hosts {
                Some(_) => Disruption::LinkCut,
                None => Disruption::StationFrozen,
            },
        ];
        let kind = kinds[rng.gen_range(0..kinds.len())];
        *log.disruptions.entry(kind).or_default() += 1;
        match kind {
            Disruption::EngineKilled | Disruption::EngineFrozen => {
                let k = rng.gen_range(0..HOME_ENGINES);
                let engine = self.engines[k].take().context("engine down")?;
                let hold = Duration::from_millis(rng.gen_range(1000..6000));
                let at = t0.elapsed().as_secs_f64();
                let what = format!("{kind:?} home engine {k}");
                println!("[{at:6.1}s] {what} for {hold:?}");
                log.timeline.push((at, at + hold.as_secs_f64(), what));
                if kind == Disruption::EngineKilled {
                    engine.kill()?;
                    std::thread::sleep(hold);
                    self.engines[k] = Some(self.engine_lines[k].start()?);
                } else {
                    engine.signal("STOP")?;
                    std::thread::sleep(hold);
                    engine.signal("CONT")?;
                    self.engines[k] = Some(engine);
                }
                if let Err(e) = self.wait_engine_up(k, Duration::from_secs(30)) {
                    log.failures
                        .push(format!("[{at:.1}s] {kind:?} engine {k}: {e}"));
                }
            }
            Disruption::StationKilled | Disruption::LinkCut | Disruption::StationFrozen => {
                // A station serving a copy when there is one (the copy must fail over).
                let i = self
                    .copy_source(Duration::from_secs(5))
                    .unwrap_or_else(|| rng.gen_range(1..STATIONS));
                let hold = Duration::from_millis(rng.gen_range(2000..8000));
                let at = t0.elapsed().as_secs_f64();
                let what = format!("{kind:?} station {i}");
                println!("[{at:6.1}s] {what} for {hold:?}");
                log.timeline.push((at, at + hold.as_secs_f64(), what));
                self.set_director(i, None);
                let since_ms = match kind {
                    Disruption::StationKilled => {
                        for (name, v) in self.scrape(i) {
                            *self.counted.entry(name).or_default() += v;
                        }
                        let node = self.stations[i].take().context("station down")?;
                        node.crash()?;
                        std::thread::sleep(hold);
                        let since = now_ms();
                        self.stations[i] = Some(self.lines[i].clone().start()?);
                        since
                    }
                    Disruption::LinkCut => {
                        let hosts = self.net.hosts.as_ref().context("no hosts")?;
                        hosts.cut(i as u8 + 1, true)?;
                        std::thread::sleep(hold);
                        hosts.cut(i as u8 + 1, false)?;
                        now_ms()
                    }
                    _ => {
                        let node = self.stations[i].as_ref().context("station down")?;
                        node.signal("STOP")?;
                        std::thread::sleep(hold);
                        node.signal("CONT")?;
                        now_ms()
                    }
                };
                match self.wait_listed(i, since_ms, TTL) {
                    Ok(took) => log.back_after.push(took.as_secs_f64()),
                    Err(e) => {
                        log.failures.push(format!(
                            "[{at:.1}s] {kind:?} station {i}: not back in every listing \
                             within one TTL ({TTL:?}): {e:#}"
                        ));
                        // On with the run once it is back at all.
                        let _ = self.wait_listed(i, since_ms, 6 * TTL);
                    }
                }
                let addr = self.stations[i].as_ref().map(|s| s.addr.clone());
                self.set_director(i, addr);
            }
        }
        Ok(())
    }
}

/// One play of one console.
struct Played {
    console: usize,
    /// Its number among the console's plays.
    n: usize,
    program: usize,
    station: usize,
    started_s: f64,
    ended_s: f64,
    outcome: Result<serde_json::Value, String>,
}

impl Played {
    /// The play, where and when, and the disruptions it lived through, for a report line.
    fn describe(&self, log: &Log) -> String {
        format!(
            "console {} program {} at station {} from {:.1}s to {:.1}s (console{}/play{}.log; \
             during: {:?})",
            self.console,
            self.program,
            self.station,
            self.started_s,
            self.ended_s,
            self.console,
            self.n,
            log.during(self.started_s, self.ended_s)
        )
    }
}

/// The consoles' side of the run: what a console needs to play.
struct Consoles<'a> {
    ns: Option<String>,
    dir: &'a Path,
    directors: Directors,
    programs: &'a [Program],
    seed: u64,
}

impl Consoles<'_> {
    /// Console `c`: waits for its turn (the consoles start spread over the first half of the
    /// run), then plays one program after another, each at a station up at the time, until
    /// `until`.
    fn run(&self, c: usize, t0: Instant, spread: Duration, until: Instant) -> Vec<Played> {
        let mut rng = StdRng::seed_from_u64(self.seed ^ (0x9e37_79b9 * (c as u64 + 1)));
        let home = self.dir.join(format!("console{c}"));
        std::thread::sleep(spread * c as u32 / CONSOLES as u32);
        let mut plays = Vec::new();
        while plays.is_empty() || Instant::now() < until {
            let up: Vec<(usize, Multiaddr)> = match self.directors.lock() {
                Ok(d) => d
                    .iter()
                    .enumerate()
                    .filter_map(|(i, a)| Some((i, a.clone()?)))
                    .collect(),
                Err(_) => Vec::new(),
            };
            let Some((station, addr)) = up.get(rng.gen_range(0..up.len().max(1))).cloned() else {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            };
            let program = rng.gen_range(0..self.programs.len());
            let started_s = t0.elapsed().as_secs_f64();
            let outcome = self.play(&home, &addr, program, plays.len());
            // A viewer whose play failed waits a while before the next one, as a person
            // would (and a failing station does not turn the run into a storm of consoles).
            let pause = match outcome {
                Ok(_) => rng.gen_range(0..3000),
                Err(_) => rng.gen_range(5000..10000),
            };
            plays.push(Played {
                console: c,
                n: plays.len(),
                program,
                station,
                started_s,
                ended_s: t0.elapsed().as_secs_f64(),
                outcome: outcome.map_err(|e| format!("{e:#}")),
            });
            std::thread::sleep(Duration::from_millis(pause));
        }
        plays
    }

    /// Plays `program` at `addr` as the console under `home`; its `--stats`, once the bytes
    /// written are checked against the source (and removed).
    fn play(
        &self,
        home: &Path,
        addr: &Multiaddr,
        program: usize,
        n: usize,
    ) -> Result<serde_json::Value> {
        let p = &self.programs[program];
        let mut play = Play::new(home, addr, &p.id)
            .speed("1")
            .args(&["--buffer", "2"])
            .files(home, &format!("play{n}"))
            .debug();
        if let Some(ns) = &self.ns {
            play = play.in_netns(ns);
        }
        // Three times the media time and a minute: a console that takes longer is stuck.
        let limit = Duration::from_secs(3 * p.segments as u64 + 60);
        // The console's decisions, kept for a post-mortem; an error names the file.
        let log = home.join(format!("play{n}.log"));
        let played = match play.run_within(limit) {
            Ok(played) => played,
            Err(e) => {
                let text = format!("{e:#}");
                std::fs::write(&log, &text)?;
                let last = text.lines().rev().find(|l| !l.trim().is_empty());
                bail!("{} (log: {})", last.unwrap_or_default(), log.display());
            }
        };
        std::fs::write(&log, &played.log)?;
        let out = home.join(format!("play{n}.out"));
        let _ = std::fs::remove_file(out);
        if played.bytes != p.bytes {
            bail!(
                "{} bytes played differ from the {} of the source",
                played.bytes.len(),
                p.bytes.len()
            );
        }
        if played.stats["verified"] != true {
            bail!("not verified: {}", played.stats);
        }
        Ok(played.stats)
    }
}

#[test]
fn chaos_loses_nothing_and_sticks_nowhere() -> Result<()> {
    let secs = env_u64("VODMESH_CHAOS_SECS", 90)?;
    let seed = env_u64("VODMESH_CHAOS_SEED", now_ms())?;
    println!("chaos: seed {seed} (VODMESH_CHAOS_SEED={seed} replays it), {secs} s of disruptions");
    // VODMESH_CHAOS_LOOPBACK=1: on loopback even where namespaces can be made.
    let hosts = match env_u64("VODMESH_CHAOS_LOOPBACK", 0)? {
        0 => Hosts::up(STATIONS as u8 + 1)?,
        _ => None,
    };
    let dir = tempfile::tempdir()?;
    let run = chaos(hosts, dir.path(), secs, seed);
    if let Err(e) = run {
        // Every process is gone (dropped with the swarm); its logs stay for a post-mortem.
        let kept = dir.keep();
        bail!(
            "chaos run with seed {seed} ({secs} s) failed; logs kept in {}:\n{e:#}",
            kept.display()
        );
    }
    Ok(())
}

/// The run, in `dir`: the swarm, the consoles and the scheduler, then every check.
fn chaos(hosts: Option<Hosts>, dir: &Path, secs: u64, seed: u64) -> Result<()> {
    match &hosts {
        Some(_) => println!(
            "chaos: stations on hosts 10.77.0.1-4 (network namespaces), consoles on 10.77.0.5"
        ),
        None => println!(
            "chaos: no network namespaces here: on loopback, and a link cut is replaced by \
             SIGSTOP of a whole station"
        ),
    }
    let mut swarm = Swarm::start(Net { hosts }, dir)?;
    swarm.ingest()?;
    let ns = swarm.net.console_ns();
    for c in 0..CONSOLES {
        let home = dir.join(format!("console{c}"));
        subscriber_in(
            ns.as_deref(),
            &swarm.home()?.addr,
            &swarm.home()?.key(),
            &home,
            &format!("viewer{c}"),
        )?;
    }
    let before = swarm.counters();
    println!("chaos: swarm up, programs replicated, {CONSOLES} consoles logged in");

    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(secs);
    let spread = Duration::from_secs(secs / 2);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log = Log::default();
    // The consoles read the programs while the scheduler changes the swarm.
    let programs = std::mem::take(&mut swarm.programs);
    let consoles = Consoles {
        ns: ns.clone(),
        dir,
        directors: swarm.directors.clone(),
        programs: &programs,
        seed,
    };
    let plays: Vec<Played> = std::thread::scope(|scope| -> Result<Vec<Played>> {
        let running: Vec<_> = (0..CONSOLES)
            .map(|c| {
                let consoles = &consoles;
                scope.spawn(move || consoles.run(c, t0, spread, until))
            })
            .collect();
        // A disruption every 2 to 6 s after the swarm recovered from the last one.
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(rng.gen_range(2000..6000)));
            swarm.disrupt(&mut rng, &mut log, t0)?;
        }
        let mut plays = Vec::new();
        for r in running {
            plays.extend(
                r.join()
                    .map_err(|_| anyhow::anyhow!("a console thread panicked"))?,
            );
        }
        Ok(plays)
    })?;
    let after = swarm.counters();
    report(seed, secs, &plays, &log, &before, &after);

    // Nothing lost: the home station's engines hold every segment of every program.
    let mut lost = Vec::new();
    for engine in swarm.engines.iter_mut() {
        if let Some(e) = engine.take() {
            e.kill()?;
        }
    }
    let data: Vec<PathBuf> = (0..HOME_ENGINES)
        .map(|k| dir.join(format!("home-engine{k}")))
        .collect();
    let data: Vec<&Path> = data.iter().map(PathBuf::as_path).collect();
    let rt = tokio::runtime::Runtime::new()?;
    for (k, p) in programs.iter().enumerate() {
        let held = match rt.block_on(stored::engine_process_segments(&data, p.id.parse()?)) {
            Ok((held, _)) => held,
            Err(e) => {
                lost.push(format!("program {k}: {e:#}"));
                continue;
            }
        };
        let whole: Vec<u8> = held.values().flatten().copied().collect();
        if held.len() != p.segments || whole != p.bytes {
            lost.push(format!(
                "program {k}: the home holds {} of {} segments",
                held.len(),
                p.segments
            ));
        }
    }

    let failed: Vec<String> = plays
        .iter()
        .filter_map(|p| {
            Some(format!(
                "{}: {}",
                p.describe(&log),
                p.outcome.as_ref().err()?
            ))
        })
        .collect();
    let stalled: Vec<String> = plays
        .iter()
        .filter_map(|p| {
            let stalls = p.outcome.as_ref().ok()?["stalls"].as_u64().unwrap_or(0);
            (stalls > 0).then(|| format!("{} stalls: {}", stalls, p.describe(&log)))
        })
        .collect();
    let failovers = moved(&before, &after, COUNTERS[0]);
    let mut problems = Vec::new();
    if !failed.is_empty() {
        problems.push(format!(
            "{} plays failed:\n  {}",
            failed.len(),
            failed.join("\n  ")
        ));
    }
    if failed.iter().any(|f| f.contains("program not published")) {
        // Known (issue 17, chaos run): the catalog records a director learned are kept in
        // memory only; restarted on its data, a station still lists the segments it holds
        // and refuses them (`Locate`, node/src/director/play.rs) until it learns the
        // record again, which nothing makes it do.
        problems.push(
            "`program not published`: a station restarted on its data refuses the programs \
             it holds (it forgot the catalog records it had learned)"
                .into(),
        );
    }
    if !stalled.is_empty() {
        // Known (issue 17, chaos run): an engine frozen while it streams a segment holds
        // the console's fetch until it resumes or the console's READ_STALL (7 s,
        // console-client/src/fetch.rs) passes, longer than a 2 s buffer.
        problems.push(format!(
            "{} plays stalled (a segment came after its play time: the 2 s buffer ran dry; \
             a frozen engine holds a fetch for up to the console's 7 s READ_STALL):\n  {}",
            stalled.len(),
            stalled.join("\n  ")
        ));
    }
    if !lost.is_empty() {
        problems.push(format!("segments lost from the home station: {lost:?}"));
    }
    if !log.failures.is_empty() {
        problems.push(format!(
            "the swarm did not recover:\n  {}",
            log.failures.join("\n  ")
        ));
    }
    if failovers <= 0.0 {
        problems.push("no copy failed over to another source: the run disrupted no copy".into());
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(())
}

/// Prints the run's figures.
fn report(
    seed: u64,
    secs: u64,
    plays: &[Played],
    log: &Log,
    before: &BTreeMap<&'static str, f64>,
    after: &BTreeMap<&'static str, f64>,
) {
    let ok: Vec<&serde_json::Value> = plays
        .iter()
        .filter_map(|p| p.outcome.as_ref().ok())
        .collect();
    let sum = |field: &str| {
        ok.iter()
            .map(|s| s[field].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    let max = |field: &str| {
        ok.iter()
            .map(|s| s[field].as_u64().unwrap_or(0))
            .max()
            .unwrap_or(0)
    };
    println!("chaos report (seed {seed}, {secs} s of disruptions)");
    println!(
        "  consoles {CONSOLES}, plays {} ({} ok), bytes played {}, segments {}",
        plays.len(),
        ok.len(),
        sum("bytes"),
        sum("segments")
    );
    println!(
        "  stalls {} (most in a play {}), waits {} (most {}), handoffs {}, swaps {}, startup max {} ms",
        sum("stalls"),
        max("stalls"),
        sum("waits"),
        max("waits"),
        sum("handoffs"),
        sum("swaps"),
        max("startup_ms")
    );
    let plays_from_two = ok
        .iter()
        .filter(|s| s["stations"].as_array().is_some_and(|a| a.len() > 1))
        .count();
    println!("  plays served by more than one station: {plays_from_two}");
    println!("  disruptions: {:?}", log.disruptions);
    let mut errors: BTreeMap<&str, usize> = BTreeMap::new();
    for p in plays {
        if let Err(e) = &p.outcome {
            let error = e.split(" (log: ").next().unwrap_or_default();
            *errors.entry(error).or_default() += 1;
        }
    }
    println!("  failed plays by error: {errors:?}");
    let longest = log.back_after.iter().copied().fold(0.0, f64::max);
    println!(
        "  back in every listing after a restart or heal: {} times, longest {longest:.1} s (TTL {TTL:?})",
        log.back_after.len()
    );
    for name in COUNTERS {
        println!("  {name}: {}", moved(before, after, name));
    }
}

/// How far counter `name` moved from `before` to `after`.
fn moved(
    before: &BTreeMap<&'static str, f64>,
    after: &BTreeMap<&'static str, f64>,
    name: &str,
) -> f64 {
    let at = |m: &BTreeMap<&'static str, f64>| m.get(name).copied().unwrap_or(0.0);
    at(after) - at(before)
}
