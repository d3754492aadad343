//! The swarm walk: every live station, found through the DHT.
//!
//! A director's routing table knows only some of the swarm. The walk crawls: starting from the
//! routing table, it asks the DHT for the peers closest to each director it has heard of, until
//! no new director turns up (or a bound is reached); then it fetches each one's station record
//! from the DHT. A station whose record has expired (it stopped republishing) is not listed,
//! even if some routing table still remembers its peer id.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use libp2p::PeerId;
use vodmesh_proto::signed::Signed;
use vodmesh_proto::station::StationRecord;

use crate::registry::{RegistryError, RegistryHandle};

/// How far a walk may go.
#[derive(Clone, Copy, Debug)]
pub struct WalkLimits {
    /// Directors looked at, at most.
    pub max_stations: usize,
    /// Queries in flight at once.
    pub concurrency: usize,
}

impl Default for WalkLimits {
    fn default() -> Self {
        Self {
            max_stations: 4096,
            concurrency: 16,
        }
    }
}

/// How long a walk's result stands for the next asker ([`RecentWalk`]).
pub const RECENT: Duration = Duration::from_secs(2);

/// How long a walk's result may still be answered while a fresh walk runs behind it
/// ([`RecentWalk`]).
pub const STALE: Duration = Duration::from_secs(15);

/// Stations found by a walk: each live station's record, decoded and signed.
pub type Stations = Arc<Vec<(StationRecord, Signed)>>;

type Walker = dyn Fn() -> BoxFuture<'static, Result<Vec<(StationRecord, Signed)>, RegistryError>>
    + Send
    + Sync;

/// Walks shared: a walk asks the DHT once a station, and any console can ask a director for
/// one (`Swarm`, `Programs`, the status page). A walk stands for [`RECENT`]; those who ask
/// while one runs wait for it. Past that and up to [`STALE`], the last walk is answered at
/// once and a fresh one starts behind it, so that a swarm with a hung station (whose every
/// query waits out the DHT's patience, seconds) does not make every asker wait; past
/// [`STALE`], the asker waits for a fresh walk.
#[derive(Clone)]
pub struct RecentWalk {
    walker: Arc<Walker>,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    last: std::sync::Mutex<Last>,
    /// Held by the walk running, so that two never run at once.
    walking: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Last {
    walked: Option<(tokio::time::Instant, Stations)>,
    /// A walk behind a stale answer runs.
    refreshing: bool,
}

impl RecentWalk {
    /// Walks from director `local` through `registry`, with the default limits.
    pub fn new(registry: RegistryHandle, local: PeerId) -> Self {
        Self::with_walker(move || {
            let registry = registry.clone();
            async move { walk(&registry, local, WalkLimits::default()).await }.boxed()
        })
    }

    /// Shares the walks `walker` makes.
    fn with_walker(
        walker: impl Fn() -> BoxFuture<'static, Result<Vec<(StationRecord, Signed)>, RegistryError>>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        Self {
            walker: Arc::new(walker),
            shared: Arc::default(),
        }
    }

    fn last(&self) -> std::sync::MutexGuard<'_, Last> {
        // Nothing panics while holding it; a poisoned lock still holds a whole value.
        self.shared
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The live stations: from a walk at most [`RECENT`] old, else from one at most [`STALE`]
    /// old while a fresh one starts, else from a fresh one.
    pub async fn stations(&self) -> Result<Stations, RegistryError> {
        {
            let mut last = self.last();
            let refresh = !last.refreshing;
            if let Some((at, stations)) = &last.walked {
                let age = at.elapsed();
                if age < RECENT {
                    return Ok(stations.clone());
                }
                if age < STALE {
                    let stations = stations.clone();
                    if refresh {
                        last.refreshing = true;
                        let this = self.clone();
                        tokio::spawn(async move {
                            if let Err(e) = this.walk_now().await {
                                tracing::debug!("a walk behind a stale answer failed: {e}");
                            }
                        });
                    }
                    return Ok(stations);
                }
            }
        }
        self.walk_now().await
    }

    /// The live stations from a walk at most [`RECENT`] old, else from a fresh one (never a
    /// stale one): for an answer a console checks signatures against. A pinned console
    /// verifies a manifest's signer by the `Swarm` answer, and a station missing from a
    /// stale walk (cut off when it ran) failed its play: "not a content manager certified by
    /// ...".
    pub async fn stations_recent(&self) -> Result<Stations, RegistryError> {
        {
            let last = self.last();
            if let Some((at, stations)) = &last.walked
                && at.elapsed() < RECENT
            {
                return Ok(stations.clone());
            }
        }
        self.walk_now().await
    }

    /// Walks, unless a walk that ended while this one waited for its turn is recent.
    async fn walk_now(&self) -> Result<Stations, RegistryError> {
        let _walking = self.shared.walking.lock().await;
        {
            let mut last = self.last();
            if let Some((at, stations)) = &last.walked
                && at.elapsed() < RECENT
            {
                let stations = stations.clone();
                last.refreshing = false;
                return Ok(stations);
            }
        }
        let found = (self.walker)().await;
        let mut last = self.last();
        last.refreshing = false;
        let stations: Stations = Arc::new(found?);
        last.walked = Some((tokio::time::Instant::now(), stations.clone()));
        Ok(stations)
    }
}

/// Every live station record reachable from this director, ordered by director peer id.
pub async fn walk(
    registry: &RegistryHandle,
    local: PeerId,
    limits: WalkLimits,
) -> Result<Vec<(StationRecord, Signed)>, RegistryError> {
    let mut known: HashSet<PeerId> = HashSet::new();
    known.insert(local);
    let mut frontier: Vec<PeerId> = registry.routing_table().await?;
    frontier.push(local);
    known.extend(frontier.iter().copied());
    let mut asked: HashSet<PeerId> = HashSet::new();
    while !frontier.is_empty() && known.len() < limits.max_stations {
        let batch: Vec<PeerId> = frontier.drain(..).filter(|p| asked.insert(*p)).collect();
        let found: Vec<Vec<PeerId>> = stream::iter(batch)
            .map(|p| async move { registry.closest(p.to_bytes()).await.unwrap_or_default() })
            .buffer_unordered(limits.concurrency)
            .collect()
            .await;
        for peer in found.into_iter().flatten() {
            if known.len() >= limits.max_stations {
                break;
            }
            if known.insert(peer) {
                frontier.push(peer);
            }
        }
    }
    let records: Vec<Option<(StationRecord, Signed)>> = stream::iter(known)
        .map(|p| async move { registry.get_station(p).await.ok().flatten() })
        .buffer_unordered(limits.concurrency)
        .collect()
        .await;
    let by_director: BTreeMap<PeerId, (StationRecord, Signed)> = records
        .into_iter()
        .flatten()
        .map(|(rec, signed)| (rec.director, (rec, signed)))
        .collect();
    Ok(by_director.into_values().collect())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::time::{Instant, sleep};

    use super::*;

    /// How long each test walk takes: as a walk waiting out a hung station.
    const SLOW: Duration = Duration::from_secs(5);

    /// Walks that take [`SLOW`], counted; the walk numbered `fail` fails.
    fn counted(fail: Option<usize>) -> (RecentWalk, Arc<AtomicUsize>) {
        let walks = Arc::new(AtomicUsize::new(0));
        let counter = walks.clone();
        let recent = RecentWalk::with_walker(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                sleep(SLOW).await;
                if Some(n) == fail {
                    return Err(RegistryError::Closed);
                }
                Ok(Vec::new())
            }
            .boxed()
        });
        (recent, walks)
    }

    /// Asks, and how long the answer took.
    async fn ask(recent: &RecentWalk) -> (Stations, Duration) {
        let asked = Instant::now();
        let stations = recent.stations().await.expect("the walk succeeds");
        (stations, asked.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_recent_walk_is_shared_and_a_stale_one_answers_at_once_while_a_fresh_one_runs() {
        let (recent, walks) = counted(None);
        // The first ask waits for its walk; one right after shares it.
        let (first, took) = ask(&recent).await;
        assert_eq!(took, SLOW);
        let (again, took) = ask(&recent).await;
        assert!(Arc::ptr_eq(&first, &again) && took.is_zero());
        assert_eq!(walks.load(Ordering::SeqCst), 1);

        // Past RECENT: the last walk at once, and one fresh walk behind it, however many ask.
        sleep(RECENT).await;
        for _ in 0..3 {
            let (stale, took) = ask(&recent).await;
            assert!(Arc::ptr_eq(&first, &stale) && took.is_zero());
        }
        tokio::task::yield_now().await;
        assert_eq!(walks.load(Ordering::SeqCst), 2);
        // Once it ends, it is the answer.
        sleep(SLOW + Duration::from_millis(1)).await;
        tokio::task::yield_now().await;
        let (fresh, took) = ask(&recent).await;
        assert!(!Arc::ptr_eq(&first, &fresh) && took.is_zero());
        assert_eq!(walks.load(Ordering::SeqCst), 2);

        // Past RECENT, one who may not take a stale answer waits for a fresh walk.
        sleep(RECENT).await;
        let asked = Instant::now();
        let walked = recent.stations_recent().await.expect("the walk succeeds");
        assert_eq!(asked.elapsed(), SLOW);
        assert!(!Arc::ptr_eq(&fresh, &walked));
        assert_eq!(walks.load(Ordering::SeqCst), 3);
        let fresh = walked;

        // Control: past STALE the asker waits for a fresh walk.
        sleep(STALE).await;
        let (waited, took) = ask(&recent).await;
        assert!(!Arc::ptr_eq(&fresh, &waited));
        assert_eq!(took, SLOW);
        assert_eq!(walks.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_walk_behind_a_stale_answer_is_tried_again_by_the_next_asker() {
        let (recent, walks) = counted(Some(2));
        let (first, _) = ask(&recent).await;
        sleep(RECENT).await;
        let (stale, _) = ask(&recent).await;
        assert!(Arc::ptr_eq(&first, &stale));
        // The walk behind it fails: the last walk still answers, and the next ask past
        // RECENT starts another.
        sleep(SLOW + Duration::from_millis(1)).await;
        tokio::task::yield_now().await;
        assert_eq!(walks.load(Ordering::SeqCst), 2);
        let (still, took) = ask(&recent).await;
        assert!(Arc::ptr_eq(&first, &still) && took.is_zero());
        tokio::task::yield_now().await;
        assert_eq!(walks.load(Ordering::SeqCst), 3);
    }
}
