//! The consoles of the chaos run: each plays one program after another at `--speed 1
//! --buffer 2`, at a station up at the time, and checks the bytes it wrote.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use libp2p::Multiaddr;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vodmesh_tests::cli::Play;

use crate::swarm::{Directors, Log, Program};

/// Consoles playing through the run.
pub(crate) const CONSOLES: usize = 20;
/// Each console's `--buffer`: a fetch that brings nothing is hedged half of it before its
/// play time, and a stall longer than it is what the run must never see (issue 17).
pub(crate) const BUFFER_MS: u64 = 2000;

/// One play of one console.
pub(crate) struct Played {
    pub(crate) console: usize,
    /// Its number among the console's plays.
    pub(crate) n: usize,
    pub(crate) program: usize,
    pub(crate) station: usize,
    pub(crate) started_s: f64,
    pub(crate) ended_s: f64,
    pub(crate) outcome: Result<serde_json::Value, String>,
}

impl Played {
    /// The play, where and when, and the disruptions it lived through, for a report line.
    pub(crate) fn describe(&self, log: &Log) -> String {
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
pub(crate) struct Consoles<'a> {
    pub(crate) ns: Option<String>,
    pub(crate) dir: &'a Path,
    pub(crate) directors: Directors,
    pub(crate) programs: &'a [Program],
    pub(crate) seed: u64,
}

impl Consoles<'_> {
    /// Console `c`: waits for its turn (the consoles start spread over the first half of the
    /// run), then plays one program after another, each at a station up at the time, until
    /// `until`.
    pub(crate) fn run(
        &self,
        c: usize,
        t0: Instant,
        spread: Duration,
        until: Instant,
    ) -> Vec<Played> {
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
            .args(&["--buffer", &(BUFFER_MS / 1000).to_string()])
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
