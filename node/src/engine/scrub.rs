//! The background scrub: every stored segment re-hashed now and then, paced, so a copy the disk
//! damaged is found and dropped (and the director told, as for any dropped segment) while the
//! engine runs.
//!
//! A console streams in verified mode, whose reads the engine does not check (the console
//! checks every chunk group and leaves an engine at a bad one), so without this a damaged
//! copy stays here and every console sent to it pays a failed attempt. `--scrub` re-hashes
//! everything once, at start, at the disk's speed; this one runs in passes over the whole
//! store at `--scrub-rate` MB/s, with a pause before each pass.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::SegmentStore;

/// The default `--scrub-rate`, MB/s: a 4 MiB segment every half second, well under one per
/// cent of a core for the hash (BLAKE3 hashes GB/s).
pub const DEFAULT_RATE_MB_S: u32 = 8;
/// The default pause before each pass: the first one starts an hour after the engine does,
/// and a store re-hashed whole waits as long again.
pub const DEFAULT_PAUSE: Duration = Duration::from_secs(3600);

/// The least wait after a pass that found nothing to re-hash.
const EMPTY_PASS_WAIT: Duration = Duration::from_secs(1);

/// How the scrub runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pace {
    /// Bytes re-hashed per second on average (0: no background scrub).
    pub rate: u64,
    /// The pause before each pass.
    pub pause: Duration,
}

impl Default for Pace {
    fn default() -> Self {
        Self {
            rate: u64::from(DEFAULT_RATE_MB_S) * 1_000_000,
            pause: DEFAULT_PAUSE,
        }
    }
}

/// Re-hashes `store`'s segments in passes at `pace` until `stop`; engine `index` logs what
/// it dropped. A failure of the store (closed, a disk error) ends the pass, not the engine.
pub(super) async fn run(index: usize, store: SegmentStore, pace: Pace, stop: CancellationToken) {
    if pace.rate == 0 {
        return;
    }
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pace.pause) => {}
        }
        let (mut checked, mut dropped) = (0usize, 0usize);
        for segment in store.list() {
            let size = match store.scrub_one(segment).await {
                // Removed or evicted since the listing.
                Ok(None) => continue,
                Ok(Some((size, kept))) => {
                    checked += 1;
                    dropped += usize::from(!kept);
                    size
                }
                Err(e) => {
                    tracing::warn!(index, error = %e, "scrub pass ended early");
                    break;
                }
            };
            // On average no faster than the rate: the hash ran at the disk's speed, the rest
            // of the segment's share of time is waited out.
            let share = Duration::from_secs_f64(size as f64 / pace.rate as f64);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(share) => {}
            }
        }
        tracing::info!(index, checked, dropped, "scrub pass done");
        if checked == 0 {
            // An empty store: the next pass waits at least a moment, whatever the pause.
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(EMPTY_PASS_WAIT) => {}
            }
        }
    }
}
