//! The pipe a console's play goes through, alone: the same bytes written into a pipe of the
//! system's default size in the console's pieces (64 KiB, `HAND_AT_MOST`) by `dd`, and read by
//! this process as it reads the console's output ([`read_to_end`]). A player on a console's
//! stdout gets the media no faster than this on the machine, whatever the swarm does; nginx's
//! one download, the reference of `copy.stream_vs_nginx_https`, goes through no pipe.

use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::super::{mb_s, median, read_to_end};

/// Runs of the pipe; its figure is their median (on the 2-core machine of the README's table
/// one run moved 1854-3246 MB/s, and `dd | dd` 480-1700, by where the processes happened to
/// run).
const RUNS: usize = 5;
/// The size of each write: a console hands the output at most this much at once.
const WRITE: u64 = 64 * 1024;

/// `bytes` through the pipe, [`RUNS`] times: MB/s, the median; each run timed from the
/// writer's start to its exit, as the console's play is.
pub(super) async fn alone(bytes: u64) -> Result<f64> {
    let count = format!("count={}", bytes.div_ceil(WRITE));
    let bytes = bytes.div_ceil(WRITE) * WRITE;
    let mut runs = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let started = Instant::now();
        let mut dd = tokio::process::Command::new("dd")
            .args([
                "if=/dev/zero",
                &format!("bs={WRITE}"),
                &count,
                "status=none",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("running dd (is coreutils installed?)")?;
        let out = dd.stdout.take().context("no stdout")?;
        let got = read_to_end(out, 0u64, |got, n| *got += n as u64).await?;
        let status = dd.wait().await?;
        let elapsed = started.elapsed();
        if !status.success() || got != bytes {
            bail!("dd into a pipe ended with {status} after {got} of {bytes} bytes");
        }
        runs.push(mb_s(bytes, elapsed));
    }
    Ok(median(&mut runs))
}
