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
//! longer than its 2 s buffer (`--stats` `longest_stall_ms`; shorter stalls, a segment that
//! arrived after its play time but less than a buffer late, are reported, not failed, as the
//! issue asks: "0 stalls longer than the buffer"); every segment of every program still stored by the home station's engine
//! processes, byte for byte; every restarted or healed station back in every listing within
//! one record TTL; and the stations' failover counters (`/metrics`) moved.
//!
//! `VODMESH_CHAOS_SECS` sets how long the disruptions go on (default 60 s, about 2 minutes in
//! all, in every suite run and CI; from 90 s on the failover counter must move, a shorter run
//! may disrupt no copy); the same test runs for 30 minutes with `VODMESH_CHAOS_SECS=1800`.
//! `VODMESH_CHAOS_LOOPBACK=1` runs it on loopback where namespaces could be made;
//! `VODMESH_CHAOS_KEEP=1` keeps the logs of a green run too (a red run's are always kept).

#[path = "chaos/consoles.rs"]
mod consoles;
#[path = "chaos/swarm.rs"]
mod swarm;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vodmesh_proto::time::now_ms;
use vodmesh_tests::cli::subscriber_in;
use vodmesh_tests::hosts::Hosts;
use vodmesh_tests::stored;

use consoles::{BUFFER_MS, CONSOLES, Consoles, Played};
use swarm::{COUNTERS, HOME_ENGINES, Log, Net, STATIONS, Swarm, TTL};

/// Disruptions from which on the run must have failed a copy over to another source.
const MIN_FAILOVER_SECS: u64 = 90;

/// A number from the environment, or `default`.
fn env_u64(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v} is no number")),
        Err(_) => Ok(default),
    }
}

// A few minutes' worth in every suite run (the whole machine for about 2 minutes: it runs
// alone, .config/nextest.toml). Its known defects (issue 17) are fixed; a red run is a new
// one, with its seed.
#[test]
fn chaos_loses_nothing_and_sticks_nowhere() -> Result<()> {
    let secs = env_u64("VODMESH_CHAOS_SECS", 60)?;
    let seed = env_u64("VODMESH_CHAOS_SEED", now_ms())?;
    println!("chaos: seed {seed} (VODMESH_CHAOS_SEED={seed} replays it), {secs} s of disruptions");
    // VODMESH_CHAOS_LOOPBACK=1: on loopback even where namespaces can be made.
    let hosts = match env_u64("VODMESH_CHAOS_LOOPBACK", 0)? {
        0 => Hosts::up(STATIONS as u8 + 1)?,
        _ => None,
    };
    let dir = tempfile::tempdir()?;
    let run = chaos(hosts, dir.path(), secs, seed);
    // VODMESH_CHAOS_KEEP=1: the logs stay after a green run too (a slow start's post-mortem).
    if run.is_ok() && env_u64("VODMESH_CHAOS_KEEP", 0)? != 0 {
        println!("chaos: logs kept in {}", dir.keep().display());
        return Ok(());
    }
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
    // (plays with a stall, plays with one longer than the buffer)
    let (stalled, too_long): (Vec<String>, Vec<String>) = {
        let line = |p: &Played, stats: &serde_json::Value| {
            format!(
                "{} stalls, longest {} ms: {}",
                stats["stalls"],
                stats["longest_stall_ms"],
                p.describe(&log)
            )
        };
        let with = |keep: &dyn Fn(&serde_json::Value) -> bool| -> Vec<String> {
            (plays.iter())
                .filter_map(|p| Some((p, p.outcome.as_ref().ok()?)))
                .filter(|(_, stats)| keep(stats))
                .map(|(p, stats)| line(p, stats))
                .collect()
        };
        (
            with(&|s| s["stalls"].as_u64().unwrap_or(0) > 0),
            with(&|s| s["longest_stall_ms"].as_u64().unwrap_or(u64::MAX) > BUFFER_MS),
        )
    };
    // The disruptions that leave a peer silent (no reset): what a stall is expected of.
    let silent = plays
        .iter()
        .filter(|p| p.outcome.as_ref().is_ok_and(|s| s["stalls"] != 0))
        .filter(|p| {
            let during = log.during(p.started_s, p.ended_s);
            during
                .iter()
                .any(|d| d.contains("Frozen") || d.contains("LinkCut"))
        })
        .count();
    println!(
        "  stalled plays that lived through a freeze or a link cut: {silent} of {}",
        stalled.len()
    );
    let failovers = moved(&before, &after, COUNTERS[0]);
    let mut problems = Vec::new();
    if !failed.is_empty() {
        problems.push(format!(
            "{} plays failed:\n  {}",
            failed.len(),
            failed.join("\n  ")
        ));
    }
    if !stalled.is_empty() {
        println!("  plays with a stall:\n    {}", stalled.join("\n    "));
    }
    // Start-up is not asserted, but the slowest one is named, with the disruptions around it,
    // and past a buffer's time with its console's decisions too.
    let startup = |p: &Played| p.outcome.as_ref().ok()?["startup_ms"].as_u64();
    if let Some((p, ms)) = (plays.iter())
        .filter_map(|p| Some((p, startup(p)?)))
        .max_by_key(|(_, ms)| *ms)
    {
        println!("  slowest start {ms} ms: {}", p.describe(&log));
        if ms > BUFFER_MS {
            println!("{}", decisions(dir, p, true));
        }
    }
    if !too_long.is_empty() {
        // CI keeps only what the test prints: the console's decisions in each such play.
        for p in plays.iter().filter(|p| {
            (p.outcome.as_ref()).is_ok_and(|s| s["longest_stall_ms"].as_u64() > Some(BUFFER_MS))
        }) {
            println!("{}", decisions(dir, p, false));
        }
        // A silent fetch is hedged half a buffer before its play time (console-client's
        // hedge.rs): a stall is a hedge that came too late, or found no other holder.
        problems.push(format!(
            "{} plays stalled longer than their {BUFFER_MS} ms buffer:\n  {}",
            too_long.len(),
            too_long.join("\n  ")
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
    // A run shorter than MIN_FAILOVER_SECS may disrupt no copy at all (a copy of a 128 KiB
    // segment lasts half a second): its counter is reported above, not required.
    if failovers <= 0.0 && secs >= MIN_FAILOVER_SECS {
        problems.push("no copy failed over to another source: the run disrupted no copy".into());
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(())
}

/// The lines of a play's console log (kept under `dir`) that are decisions: the session's
/// steps, hedges, attempts timed and ended, directors passed over, segments fetched,
/// warnings; the first 100 (`from_start`: a slow start) or the last 100, each cut at 300
/// bytes, under a line naming the play.
fn decisions(dir: &Path, p: &Played, from_start: bool) -> String {
    let which = if from_start { "first" } else { "last" };
    let head = format!(
        "  console {} play {}, its {which} decisions:",
        p.console, p.n
    );
    let path = dir.join(format!("console{}/play{}.log", p.console, p.n));
    let Ok(text) = std::fs::read_to_string(&path) else {
        return format!("{head}\n    (no log at {})", path.display());
    };
    let marks = [
        "session",
        "attempt timed",
        "fetched",
        "hedged",
        "asking again",
        "race won",
        "slow",
        "WARN",
        "ERROR",
    ];
    let lines: Vec<&str> = (text.lines())
        .filter(|l| marks.iter().any(|m| l.contains(m)))
        .collect();
    let shown = if from_start {
        &lines[..lines.len().min(100)]
    } else {
        &lines[lines.len().saturating_sub(100)..]
    };
    let shown: Vec<String> = (shown.iter())
        .map(|l| format!("    {}", l.get(..300).unwrap_or(l)))
        .collect();
    format!("{head}\n{}", shown.join("\n"))
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
        "  stalls {} (most in a play {}, longest {} ms), waits {} (most {}), handoffs {}, swaps {}, startup max {} ms",
        sum("stalls"),
        max("stalls"),
        max("longest_stall_ms"),
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
