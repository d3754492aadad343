//! `vodmesh bench`: every hot path measured next to a reference in the same run (the machine
//! is shared and noisy; only ratios between figures of one run mean much). DESIGN.md §9.
//!
//! One module per section, each returning its JSON object and its rows of the printed table:
//!
//! - [`copy`]: engine -> engine copies through real stations (claim 12's distribution) and one
//!   console at `--speed max`, beside raw libp2p streams from memory (TCP+TLS, TCP+noise,
//!   QUIC; the cipher each negotiated), the store's write rate and nginx over HTTPS and HTTP;
//! - [`streams`]: one engine (a `vodmesh-node` process) streaming to N consoles, each its own
//!   peer, paced at 4 Mbit/s: stalls, p99 lag, engine CPU; and unpaced aggregate throughput;
//! - [`startup`]: `vodmesh-console play` process start -> first verified byte, hit and miss;
//!   director redirect latency;
//! - [`handoff`]: gaps at segment boundaries at `--speed max`; stalls at `--speed 1`;
//! - [`registry`]: find-holders latency and Kademlia requests in an in-process swarm;
//! - [`store`]: segment store write and read next to `dd`;
//! - [`footprint`]: RSS of an idle station with 4 engines; memory per active stream;
//! - [`edge`]: the HTTP edge (`--http`, director redirect then engine) beside nginx on the
//!   same bytes, one client and many at once.

pub mod copy;
pub mod edge;
pub mod footprint;
pub mod handoff;
mod nginx;
pub mod registry;
pub mod startup;
pub mod store;
pub mod streams;
mod swarm;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};

/// The sections, in the order they run: the names `--only` takes.
pub const SECTIONS: [&str; 8] = [
    "store",
    "copy",
    "streams",
    "startup",
    "handoff",
    "registry",
    "footprint",
    "edge",
];

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where the stations, the store probe and `dd` write (a temp directory is made in it).
    pub dir: PathBuf,
    /// Small sizes: the whole run in well under two minutes (the CI smoke test).
    pub quick: bool,
    /// Run only these sections (all when empty; names of [`SECTIONS`]), e.g. to profile one
    /// path.
    pub only: Vec<String>,
}

/// One line of the printed table.
#[derive(Clone, Debug)]
pub struct Row {
    /// Section name.
    pub section: &'static str,
    /// What was measured.
    pub what: String,
    /// The figure, with its unit.
    pub value: String,
    /// The reference it is compared with (name and figure), if any.
    pub reference: String,
    /// value / reference, where one is meaningful.
    pub ratio: Option<f64>,
}

impl Row {
    fn new(section: &'static str, what: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            section,
            what: what.into(),
            value: value.into(),
            reference: String::new(),
            ratio: None,
        }
    }

    fn vs(mut self, reference: impl Into<String>, ratio: f64) -> Self {
        self.reference = reference.into();
        self.ratio = Some(round2(ratio));
        self
    }
}

/// `a / b`, rounded to two decimals (0 when `b` is 0, so ratios stay finite in the JSON).
pub fn ratio(a: f64, b: f64) -> f64 {
    if b.abs() < 1e-12 || !a.is_finite() || !b.is_finite() {
        return 0.0;
    }
    round2(a / b)
}

/// The median of `v` (0 when empty).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Rounds to two decimals.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Bytes per second as MB/s (10^6 bytes), rounded.
pub fn mb_s(bytes: u64, elapsed: Duration) -> f64 {
    (bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)).round()
}

/// The `q` quantile (0..=1) of `values` in milliseconds, rounded to 0.01 ms; 0 when empty.
pub fn quantile_ms(values: &[Duration], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v: Vec<Duration> = values.to_vec();
    v.sort();
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    round2(v[i.min(v.len() - 1)].as_secs_f64() * 1000.0)
}

/// Path of a workspace binary built next to the running `vodmesh`.
pub fn sibling_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the vodmesh binary")?;
    let dir = exe
        .parent()
        .context("the vodmesh binary has no directory")?;
    let path = dir.join(name);
    if !path.exists() {
        anyhow::bail!(
            "{} not found next to vodmesh: build the workspace's binaries (cargo build --bins)",
            path.display()
        );
    }
    Ok(path)
}

/// Reads a console's stdout (`play --out -`) to its end as a player reads its input: blocking,
/// on a thread of its own, as [`nginx`]'s client reads a download. `each(state, n)` runs right
/// after every read, with its length; `state` comes back at the end.
///
/// Read through the runtime's poller instead (as the bench did before), every pipe-full cost
/// the reader a wake-up of the poller and of its task, and the console waited on those: one
/// console played at a median 590 MB/s into that reader against 736 into this one (six
/// alternating `--only copy` rounds each). That slower reader also hid the console's own gaps
/// at a boundary: the pipe was full whenever it came back, the next segment's first bytes
/// already in it. Read as fast as the console writes, the gaps are the console's.
pub async fn read_to_end<T: Send + 'static>(
    stdout: tokio::process::ChildStdout,
    mut state: T,
    mut each: impl FnMut(&mut T, usize) + Send + 'static,
) -> Result<T> {
    // A blocking descriptor (tokio hands it back so).
    let mut pipe = std::fs::File::from(stdout.into_owned_fd()?);
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => return Ok(state),
                Ok(n) => each(&mut state, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    })
    .await?
}

/// Resident set size of process `pid` in bytes, from `/proc/<pid>/status`.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    status_bytes(pid, "VmRSS")
}

/// A memory figure of process `pid` in bytes, from its line `field` (`VmRSS`, `VmHWM`: the
/// peak) in `/proc/<pid>/status`.
pub fn status_bytes(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(kb * 1024)
}

/// CPU time (user + system) of process `pid` so far, from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let total = ticks(11) + ticks(12);
    Ok(Duration::from_secs_f64(total as f64 / clock_ticks() as f64))
}

/// The CPU time this process has used, all its threads (those ended too), to the
/// nanosecond: [`cpu_time`] counts in clock ticks (10 ms), too coarse for a section's
/// sub-second parts.
pub fn own_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        t.tv_sec.unsigned_abs(),
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// The CPU time of this process's children that ended and were waited for, to the
/// microsecond: a child's own figures, which `/proc` no longer has once it exited.
#[allow(unsafe_code)]
pub fn children_cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one `rusage` where it is pointed, and the pointer is to one.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) } != 0 {
        return Duration::ZERO;
    }
    // SAFETY: a `rusage` is integers only, so the zeroed one is valid, and getrusage filled it.
    let usage = unsafe { usage.assume_init() };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.unsigned_abs())
            + Duration::from_micros(t.tv_usec.unsigned_abs())
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// The CPU time of the process `pid`'s threads alive now, to the nanosecond
/// (`/proc/<pid>/task/*/schedstat`; a thread that ends while they are read is left out);
/// `None` when none can be read.
pub fn threads_cpu_time(pid: u32) -> Option<Duration> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let ns = tasks.flatten().filter_map(|task| {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
        stat.split_whitespace().next()?.parse::<u64>().ok()
    });
    ns.map(Duration::from_nanos).reduce(|a, b| a + b)
}

/// The machine's cores (1 when they cannot be told).
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// The machine: CPU model and count, from `/proc/cpuinfo`.
fn machine(quick: bool) -> Value {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let cpus = cpus();
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    json!({ "cpus": cpus, "model": model, "build": profile, "quick": quick })
}

/// Runs one section, turning a failure into `{"error": ...}` so that one broken path does not
/// hide the others' figures.
async fn section<F>(only: &[String], name: &'static str, rows: &mut Vec<Row>, f: F) -> Value
where
    F: Future<Output = Result<(Value, Vec<Row>)>>,
{
    debug_assert!(SECTIONS.contains(&name), "{name} is missing from SECTIONS");
    if !only.is_empty() && !only.iter().any(|o| o == name) {
        return json!({ "skipped": "not selected (--only)" });
    }
    eprintln!("bench: {name} ...");
    let started = std::time::Instant::now();
    match f.await {
        Ok((mut value, r)) => {
            rows.extend(r);
            if let Some(obj) = value.as_object_mut() {
                obj.insert(
                    "seconds".into(),
                    json!(round2(started.elapsed().as_secs_f64())),
                );
            }
            value
        }
        Err(e) => {
            eprintln!("bench: {name} failed: {e:#}");
            rows.push(Row::new(name, "error", format!("{e:#}")));
            json!({ "error": format!("{e:#}") })
        }
    }
}

/// Every section, in an order that lets later ones use earlier references (the raw-stream
/// ceiling of `copy` is the reference of the unpaced `streams` aggregate).
pub async fn run(options: &Options) -> Result<(Value, Vec<Row>)> {
    let work = tempfile::Builder::new()
        .prefix("vodmesh-bench-")
        .tempdir_in(&options.dir)
        .with_context(|| format!("creating a directory in {}", options.dir.display()))?;
    let dir = work.path();
    let quick = options.quick;
    let mut rows = Vec::new();
    let store_mib = if quick { 32 } else { 256 };
    let store = section(
        &options.only,
        "store",
        &mut rows,
        store::run(&dir.join("store"), store_mib),
    )
    .await;
    let copy = section(
        &options.only,
        "copy",
        &mut rows,
        copy::run(&dir.join("copy"), quick),
    )
    .await;
    let ceiling = copy["raw_libp2p_stream_tcp_mb_s"].as_f64().unwrap_or(0.0);
    let streams = section(
        &options.only,
        "streams",
        &mut rows,
        streams::run(&dir.join("streams"), quick, ceiling),
    )
    .await;
    let startup = section(
        &options.only,
        "startup",
        &mut rows,
        startup::run(&dir.join("startup"), quick),
    )
    .await;
    let handoff = section(
        &options.only,
        "handoff",
        &mut rows,
        handoff::run(&dir.join("handoff"), quick),
    )
    .await;
    let registry = section(&options.only, "registry", &mut rows, registry::run(quick)).await;
    let per_stream = streams["bytes_per_stream"].as_f64();
    let footprint = section(
        &options.only,
        "footprint",
        &mut rows,
        footprint::run(&dir.join("footprint"), per_stream),
    )
    .await;
    let edge = section(
        &options.only,
        "edge",
        &mut rows,
        edge::run(&dir.join("edge"), quick),
    )
    .await;
    let value = json!({
        "machine": machine(quick),
        "edge": edge,
        "copy": copy,
        "streams": streams,
        "startup": startup,
        "handoff": handoff,
        "registry": registry,
        "store": store,
        "footprint": footprint,
    });
    Ok((value, rows))
}

/// The table, as printed.
pub fn table(rows: &[Row]) -> String {
    use std::fmt::Write;
    let w = |f: &dyn Fn(&Row) -> usize, min: usize| rows.iter().map(f).max().unwrap_or(0).max(min);
    let ws = w(&|r| r.section.len(), 7);
    let ww = w(&|r| r.what.len(), 4);
    let wv = w(&|r| r.value.len(), 5);
    let wr = w(&|r| r.reference.len(), 9);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| {:ws$} | {:ww$} | {:>wv$} | {:wr$} | ratio |",
        "section", "what", "value", "reference"
    );
    let _ = writeln!(
        out,
        "|{}|{}|{}|{}|-------|",
        "-".repeat(ws + 2),
        "-".repeat(ww + 2),
        "-".repeat(wv + 2),
        "-".repeat(wr + 2)
    );
    for r in rows {
        let ratio = r.ratio.map(|x| format!("{x:.2}")).unwrap_or_default();
        let _ = writeln!(
            out,
            "| {:ws$} | {:ww$} | {:>wv$} | {:wr$} | {:>5} |",
            r.section, r.what, r.value, r.reference, ratio
        );
    }
    out
}

/// A fresh subdirectory `name` of `dir`.
fn subdir(dir: &Path, name: &str) -> Result<PathBuf> {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}
