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

/// Stations found by a walk: each live station's record, decoded and signed.
pub type Stations = Arc<Vec<(StationRecord, Signed)>>;

/// Walks shared for [`RECENT`]: a walk asks the DHT once a station, and any console can ask a
/// director for one (`Swarm`, `Programs`, the status page), so the asks of two seconds share
/// one walk; those made while it runs wait for it.
#[derive(Clone)]
pub struct RecentWalk {
    registry: RegistryHandle,
    local: PeerId,
    last: Arc<tokio::sync::Mutex<Option<(tokio::time::Instant, Stations)>>>,
}

impl RecentWalk {
    /// Walks from director `local` through `registry`, with the default limits.
    pub fn new(registry: RegistryHandle, local: PeerId) -> Self {
        Self {
            registry,
            local,
            last: Arc::default(),
        }
    }

    /// The live stations, from a walk at most [`RECENT`] old.
    pub async fn stations(&self) -> Result<Stations, RegistryError> {
        let mut last = self.last.lock().await;
        if let Some((at, stations)) = last.as_ref()
            && at.elapsed() < RECENT
        {
            return Ok(stations.clone());
        }
        let found = walk(&self.registry, self.local, WalkLimits::default()).await?;
        let stations: Stations = Arc::new(found);
        *last = Some((tokio::time::Instant::now(), stations.clone()));
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
