//! The swarm of the chaos run and its scheduler: four stations on hosts of their own (or on
//! loopback), the home's engines as engine processes, the programs and their replicas; one
//! disruption at a time, and the wait until the swarm has recovered from it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use libp2p::Multiaddr;
use rand::Rng;
use rand::rngs::StdRng;
use vodmesh_proto::time::now_ms;
use vodmesh_tests::cli::{Ingest, keygen};
use vodmesh_tests::hosts::Hosts;
use vodmesh_tests::http::Scrape;
use vodmesh_tests::media::random_file;
use vodmesh_tests::process::{EngineLine, EngineProcess, Node, NodeProcess, free_port};
use vodmesh_tests::{status, wait};

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
pub(crate) const STATIONS: usize = 4;
/// The home station's engine processes.
pub(crate) const HOME_ENGINES: usize = 2;
/// `--record-ttl` of every station.
pub(crate) const TTL: Duration = Duration::from_secs(10);
/// Every station's director, engine processes and metrics listen on these ports of their
/// host (namespaces only: on loopback the system picks).
const DIRECTOR_PORT: u16 = 4001;
const ENGINE_PORT: u16 = 4101;
const METRICS_PORT: u16 = 9100;
/// The counters of `/metrics` the run reports; the first ones are the failovers.
pub(crate) const COUNTERS: [&str; 6] = [
    "vodmesh_source_failovers_total",
    "vodmesh_swaps_total",
    "vodmesh_misses_total",
    "vodmesh_replications_total",
    "vodmesh_copies_declined_total",
    "vodmesh_streams_stopped_total{kind=\"early\"}",
];

/// Where the run's processes live: stations on hosts 1..=4 and consoles on host 5 when
/// namespaces can be made, everything on loopback otherwise.
pub(crate) struct Net {
    pub(crate) hosts: Option<Hosts>,
}

impl Net {
    /// Host of station `i` (none: loopback).
    fn station_ns(&self, i: usize) -> Option<String> {
        self.hosts.as_ref().map(|h| h.ns(i as u8 + 1))
    }

    /// Host of the consoles and of every `vodmesh` command the test runs.
    pub(crate) fn console_ns(&self) -> Option<String> {
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
pub(crate) type Directors = Arc<Mutex<Vec<Option<Multiaddr>>>>;

/// A program: its id, and the bytes of its source.
pub(crate) struct Program {
    pub(crate) id: String,
    pub(crate) bytes: Vec<u8>,
    pub(crate) segments: usize,
}

/// The swarm under test.
pub(crate) struct Swarm {
    pub(crate) net: Net,
    dir: PathBuf,
    /// Each station's command line, to restart it on its data.
    lines: Vec<Node>,
    stations: Vec<Option<NodeProcess>>,
    pub(crate) engines: Vec<Option<EngineProcess>>,
    engine_peers: Vec<String>,
    metrics: Vec<String>,
    pub(crate) directors: Directors,
    pub(crate) programs: Vec<Program>,
    /// Counter values of stations' earlier lives (a restart sets them to zero).
    counted: BTreeMap<&'static str, f64>,
    /// How far the test has read each station's log.
    read_to: BTreeMap<usize, u64>,
}

impl Swarm {
    pub(crate) fn start(net: Net, dir: &Path) -> Result<Self> {
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
        let mut engines = Vec::new();
        for (k, data) in engine_data.iter().enumerate() {
            let listen = net.listen(0, ENGINE_PORT + k as u16);
            let args = ["--listen", &listen, "--trust", &issuer];
            let line = EngineLine::new(ns0.as_deref(), data, &home.addr, &args);
            engines.push(Some(line.start()?));
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

    pub(crate) fn home(&self) -> Result<&NodeProcess> {
        self.stations[0]
            .as_ref()
            .context("the home station is down")
    }

    /// Ingests the programs at the home station with their replicas, and waits until every
    /// replica is complete.
    pub(crate) fn ingest(&mut self) -> Result<()> {
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
    pub(crate) fn counters(&self) -> BTreeMap<&'static str, f64> {
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
pub(crate) enum Disruption {
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
pub(crate) struct Log {
    pub(crate) disruptions: BTreeMap<Disruption, u32>,
    /// Seconds until a restarted or healed station was back in every listing, each time.
    pub(crate) back_after: Vec<f64>,
    /// What went wrong, one line each.
    pub(crate) failures: Vec<String>,
    /// Each disruption: from, until (seconds into the run), and what.
    timeline: Vec<(f64, f64, String)>,
}

impl Log {
    /// The disruptions that overlapped seconds `from..until` of the run.
    pub(crate) fn during(&self, from: f64, until: f64) -> Vec<String> {
        self.timeline
            .iter()
            .filter(|(a, b, _)| *a < until && *b > from)
            .map(|(a, _, what)| format!("{what} at {a:.1}s"))
            .collect()
    }
}

impl Swarm {
    /// Makes one disruption of a kind drawn from `rng`, and waits until the swarm recovered.
    pub(crate) fn disrupt(&mut self, rng: &mut StdRng, log: &mut Log, t0: Instant) -> Result<()> {
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
                    let line = engine.crash()?;
                    std::thread::sleep(hold);
                    self.engines[k] = Some(line.start()?);
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
                // A station serving a copy when one starts within 5 s (the copy must fail
                // over: a short run has few station disruptions, and each should count);
                // otherwise any.
                let source = self.copy_source(Duration::from_secs(5));
                let i = source.unwrap_or_else(|| rng.gen_range(1..STATIONS));
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
                    // The poll that saw it may have begun within the TTL and ended past it.
                    Ok(took) if took > TTL => log.failures.push(format!(
                        "[{at:.1}s] {kind:?} station {i}: back in every listing only after \
                         {took:?}, more than one TTL ({TTL:?})"
                    )),
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
