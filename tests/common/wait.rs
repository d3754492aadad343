//! Waiting with a deadline, on a condition or an event, never on the clock alone: each helper
//! polls (or receives) until what it waits for is there, and past its time-out fails with a
//! line that names what it waited for.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use vodmesh_node::events::Event;

/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(200);

/// Polls the async `check` until it returns true; fails after `timeout`.
pub async fn until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// As [`until`], for a blocking `check` (a command, a file, a scrape) polled from an async
/// test: each poll runs on the blocking pool, not on the runtime's workers.
pub async fn until_blocking<F>(what: &str, timeout: Duration, check: F) -> Result<()>
where
    F: Fn() -> Result<bool> + Clone + Send + 'static,
{
    until(what, timeout, || {
        let check = check.clone();
        async move { tokio::task::spawn_blocking(check).await? }
    })
    .await
}

/// Polls the blocking `check` on this thread until it returns true; the time that took.
/// Fails after `timeout`.
pub fn blocking(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        if check()? {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(POLL);
    }
}

/// Waits until `path` exists.
pub fn file(path: &Path, timeout: Duration) -> Result<()> {
    let what = format!("{}", path.display());
    blocking(&what, timeout, || Ok(path.exists())).map(drop)
}

/// How many of the events received a failed wait prints.
const LOG_TAIL: usize = 30;

/// Receives events from the director's event bus into `log` until `done` holds for `log`
/// (at once if it does already). Fails with `what` after `timeout`.
pub async fn events(
    events: &mut tokio::sync::broadcast::Receiver<Event>,
    log: &mut Vec<Event>,
    what: &str,
    timeout: Duration,
    done: impl Fn(&[Event]) -> bool,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    while !done(log) {
        let Ok(received) = tokio::time::timeout_at(deadline, events.recv()).await else {
            // What came instead tells a failed run's story (CI keeps no logs).
            let last: Vec<String> = (log.iter().rev().take(LOG_TAIL).rev())
                .map(|e| format!("{:?} {:?} {:?}", e.peer, e.segment, e.kind))
                .collect();
            bail!(
                "no event after {timeout:?}: {what}; the last {} of {} events:\n{}",
                last.len(),
                log.len(),
                last.join("\n")
            );
        };
        log.push(received?);
    }
    Ok(())
}

/// The first event in `log` that matches `f`, receiving events into `log` until one does.
/// Fails with `what` after `timeout`.
pub async fn event(
    events: &mut tokio::sync::broadcast::Receiver<Event>,
    log: &mut Vec<Event>,
    what: &str,
    timeout: Duration,
    f: impl Fn(&Event) -> bool,
) -> Result<Event> {
    self::events(events, log, what, timeout, |log| log.iter().any(&f)).await?;
    log.iter()
        .find(|e| f(e))
        .cloned()
        .context("an event matched and is gone")
}
