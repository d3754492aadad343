//! Cache misses (claims 14, 15): a console asks this director for a segment none of its
//! engines holds. The director finds the holding stations in the registry, asks each holder's
//! director for the engine and its load (`LocateCopy`, which also lets our engines copy from
//! it), ranks the sources by [`cost`], directs one of its own engines to fetch from the
//! cheapest (the rest are fallbacks, in order), and redirects the console to that engine at
//! once: the engine streams the segment to the console while it is still arriving. Copy-done
//! comes back as the engine's `Stored` report, which enters the location table and, for the
//! station's first segment of the program, provides it in the registry (the MLR learns the
//! new location).
//!
//! The console goes to the cheapest holder's engine itself, with no copy, when this station
//! cannot copy (no engine tokens), when its engines are all busy or their last copy failed at
//! every source (for 30 s: a station whose tokens no holder trusts does not keep making its
//! consoles wait for copies that never come), and when the station holds the segment but
//! every holder is busy (claims 19, 20 across stations). Finding no other station is then a
//! wait (`Busy`), not an end.
//!
//! # The cost of copying from a source
//!
//! ```text
//! cost(s) = size · 8 / B(s) · (1 + L(s)) + RTT(s)          [seconds]
//! ```
//!
//! - `B(s)`: available bandwidth from `s`, bit/s. The exponentially weighted mean of the
//!   throughput measured on recent copies from `s` when there is one (what the link really
//!   gives); otherwise the smaller of `s`'s advertised `--bandwidth` and ours.
//! - `size · 8 / B(s)`: the expected copy time.
//! - `L(s)`: the source engine's load, streams / `--max-streams` (0..1): a busy engine shares
//!   its disk and uplink with its consoles, so its copy is expected to take up to twice as
//!   long.
//! - `RTT(s)`: the distance. The round-trip time to `s`'s director measured by libp2p ping
//!   when connected; otherwise estimated from `--coords` (great-circle distance at 2/3 of the
//!   speed of light, both ways, plus 5 ms), else from `--region` (5 ms in the same region,
//!   80 ms elsewhere), else 50 ms.
//!
//! Every decision is logged at debug level with the candidates and their costs, and counted
//! (`Activity::misses`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use libp2p::request_response::ResponseChannel;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;
use vodmesh_proto::catalog::CatalogRecord;
use vodmesh_proto::director::{ErrorCode, ErrorReply, Request, Response, SegmentLocation};
use vodmesh_proto::manifest::Manifest;
use vodmesh_proto::station::StationRecord;
use vodmesh_proto::time::now_ms;
use vodmesh_proto::{ProgramId, SegmentHash, SegmentId};
use vodmesh_registry::RegistryHandle;

use super::Director;
use super::distribution::{Internal, ask};
use super::pick;
use super::play::Locating;
use super::publish::fetch_record;
use crate::control::{Copied, EngineCommand, Source};
use crate::events::{self, Kind};
use crate::store::locations::{Location, LocationState};

/// How long a miss waits for a holding station's director to name its engine.
const LOCATE_COPY_WAIT: Duration = Duration::from_secs(3);
/// Weight of a new throughput measurement in the running mean.
const EWMA: f64 = 0.5;
/// Copies smaller than this say little about a link's throughput.
const MIN_MEASURED: u64 = 256 * 1024;

/// How long an engine whose miss copy failed at every source is no copy target: a station
/// whose engines cannot copy (no valid engine token) sends its consoles to the holders.
const COPY_FAILED_FOR: Duration = Duration::from_secs(30);

/// Misses being gathered at once, at most: each costs registry lookups and a question to
/// every holder's director, and any console can ask; past this a miss is answered Busy.
const MAX_GATHERING: usize = 32;

/// What the director remembers for misses.
pub(super) struct State {
    /// Bounds the misses being gathered ([`MAX_GATHERING`]).
    gathering: Arc<tokio::sync::Semaphore>,
    /// Verified manifests of programs this station copied segments of.
    manifests: HashMap<ProgramId, Arc<Manifest>>,
    /// Measured copy throughput from each station, bit/s (running mean).
    throughput: HashMap<PeerId, f64>,
    /// Round-trip time to each director this one is connected to.
    pub(super) rtt: HashMap<PeerId, Duration>,
    /// The sources of the copies still filling here, cheapest first: where a console that
    /// seeks past the fill is sent (claim 21).
    filling: Arc<std::sync::Mutex<HashMap<SegmentId, Vec<Candidate>>>>,
    /// Engines of this station whose last copy failed at every source.
    failed: FailedCopies,
}

/// Engines of this station whose last copy (a miss, an overload replication) failed at every
/// source, and when: no copy target for [`COPY_FAILED_FOR`] (their consoles go to a holder,
/// or wait). Shared with the tasks that see the copies end.
#[derive(Clone, Debug, Default)]
pub(super) struct FailedCopies(Arc<std::sync::Mutex<HashMap<PeerId, Instant>>>);

impl FailedCopies {
    /// A copy into `engine` just failed at every source.
    pub(super) fn note(&self, engine: PeerId) {
        if let Ok(mut f) = self.0.lock() {
            f.retain(|_, at| at.elapsed() < COPY_FAILED_FOR);
            f.insert(engine, Instant::now());
        }
    }

    /// Engines whose copies failed within [`COPY_FAILED_FOR`].
    pub(super) fn recent(&self) -> Vec<PeerId> {
        self.0
            .lock()
            .map(|f| {
                f.iter()
                    .filter(|(_, at)| at.elapsed() < COPY_FAILED_FOR)
                    .map(|(e, _)| *e)
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Default for State {
    fn default() -> Self {
        Self {
            gathering: Arc::new(tokio::sync::Semaphore::new(MAX_GATHERING)),
            manifests: HashMap::new(),
            throughput: HashMap::new(),
            rtt: HashMap::new(),
            filling: Arc::default(),
            failed: FailedCopies::default(),
        }
    }
}

impl State {
    /// Engines whose copies failed lately, shared.
    pub(super) fn failed_copies(&self) -> FailedCopies {
        self.failed.clone()
    }

    /// The cheapest source (engine, addresses, its director) of a copy filling here.
    pub(super) fn source_of(
        &self,
        segment: &SegmentId,
    ) -> Option<(PeerId, Vec<Multiaddr>, PeerId)> {
        let filling = self.filling.lock().ok()?;
        let c = filling.get(segment)?.first()?;
        Some((c.engine, c.addrs.clone(), c.station.director))
    }
}

/// A holding station's engine, as its director named it.
#[derive(Clone, Debug)]
pub(super) struct Candidate {
    station: StationRecord,
    engine: PeerId,
    addrs: Vec<Multiaddr>,
    streams: u32,
    max_streams: u32,
}

impl Candidate {
    /// Where a console streams the segment from this holder directly.
    fn location(&self) -> SegmentLocation {
        SegmentLocation {
            engine: self.engine,
            addrs: self.addrs.clone(),
            director: self.station.director,
            filling: false,
            swap: false,
        }
    }
}

/// What the background look-up found, handed back to the director.
pub(super) struct Gathered {
    /// The console's question.
    ask: Locating,
    /// This station holds the segment, on engines busy for the console.
    held: bool,
    channel: ResponseChannel<Response>,
    record: CatalogRecord,
    manifest: Arc<Manifest>,
    candidates: Vec<Candidate>,
}

/// Our side of the cost: where we are and what our link gives.
#[derive(Clone, Debug)]
pub(super) struct Here {
    pub(super) coords: Option<(f64, f64)>,
    pub(super) region: Option<String>,
    pub(super) bandwidth_mbps: u32,
}

/// The cost, in seconds, of copying `size` bytes from `source` (see the module docs).
pub(super) fn cost(
    here: &Here,
    source: &StationRecord,
    load: (u32, u32),
    size: u64,
    measured_bps: Option<f64>,
    rtt: Option<Duration>,
) -> f64 {
    let advertised = f64::from(source.bandwidth_mbps.min(here.bandwidth_mbps).max(1)) * 1e6;
    let bandwidth = measured_bps.filter(|b| *b > 0.0).unwrap_or(advertised);
    let copy_s = size as f64 * 8.0 / bandwidth;
    let (streams, max) = load;
    let load = if max == 0 {
        0.0
    } else {
        (f64::from(streams) / f64::from(max)).min(1.0)
    };
    let rtt_s = match (rtt, here.coords, source.coords) {
        (Some(rtt), _, _) => rtt.as_secs_f64(),
        (None, Some(a), Some(b)) => 2.0 * great_circle_km(a, b) / 200_000.0 + 0.005,
        _ => match (&here.region, &source.region) {
            (Some(a), Some(b)) if a == b => 0.005,
            (Some(_), Some(_)) => 0.080,
            _ => 0.050,
        },
    };
    copy_s * (1.0 + load) + rtt_s
}

/// Great-circle distance between two (latitude, longitude) points, km.
fn great_circle_km((lat1, lon1): (f64, f64), (lat2, lon2): (f64, f64)) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * 6371.0 * a.sqrt().min(1.0).asin()
}

/// The background part of a miss: the catalog record, the manifest, the holders and their
/// engines. Runs off the director's loop; the answer comes back as [`Internal::Miss`].
#[allow(clippy::too_many_arguments)]
async fn gather(
    me: PeerId,
    registry: RegistryHandle,
    internal: mpsc::Sender<Internal>,
    program: ProgramId,
    index: u32,
    known: Option<CatalogRecord>,
    manifest: Option<Arc<Manifest>>,
) -> Result<(CatalogRecord, Arc<Manifest>, Vec<Candidate>), ErrorReply> {
    let not_found = |m: String| ErrorReply::new(ErrorCode::NotFound, m);
    let record = match known {
        Some(r) => r,
        None => fetch_record(&registry, program)
            .await
            .ok_or_else(|| not_found("unknown program".into()))?,
    };
    if !record.playable(now_ms()) {
        return Err(ErrorReply::new(
            ErrorCode::NotPublished,
            super::NOT_PUBLISHED,
        ));
    }
    let manifest = match manifest {
        Some(m) => m,
        None => Arc::new(fetch_manifest(&registry, &internal, &record).await?),
    };
    if manifest.content.segment(index).is_none() {
        return Err(not_found(format!(
            "program {} has no segment {index}",
            program.short()
        )));
    }
    let holders = registry
        .holders(program)
        .await
        .map_err(|e| ErrorReply::new(ErrorCode::Unavailable, e.to_string()))?;
    let asks = holders.into_iter().filter(|h| *h != me).map(|holder| {
        let (registry, internal) = (registry.clone(), internal.clone());
        async move {
            let (station, _) = registry.get_station(holder).await.ok()??;
            let request = Request::LocateCopy { program, index };
            // A holder cut off from us must not hold up the miss: it is left out.
            let asked = tokio::time::timeout(
                LOCATE_COPY_WAIT,
                ask(&internal, holder, station.addrs.clone(), request),
            )
            .await
            .unwrap_or_else(|_| Err("no answer in time".into()));
            match asked {
                Ok(Response::Located {
                    engine,
                    addrs,
                    streams,
                    max_streams,
                    ..
                }) => Some(Candidate {
                    station,
                    engine,
                    addrs,
                    streams,
                    max_streams,
                }),
                Ok(other) => {
                    tracing::debug!(%holder, ?other, "miss: holder answered LocateCopy oddly");
                    None
                }
                Err(e) => {
                    tracing::debug!(%holder, error = %e, "miss: holder cannot serve the segment");
                    None
                }
            }
        }
    });
    let candidates: Vec<Candidate> = join_all(asks).await.into_iter().flatten().collect();
    if candidates.is_empty() {
        return Err(not_found(format!(
            "no station can serve segment {index} of {}",
            program.short()
        )));
    }
    Ok((record, manifest, candidates))
}

/// The program's signed manifest from its content manager, verified and matched to `record`.
async fn fetch_manifest(
    registry: &RegistryHandle,
    internal: &mpsc::Sender<Internal>,
    record: &CatalogRecord,
) -> Result<Manifest, ErrorReply> {
    let unavailable = |m: String| ErrorReply::new(ErrorCode::Unavailable, m);
    let (cm, _) = registry
        .get_station(record.content_manager)
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .ok_or_else(|| unavailable("the program's content manager is not in the swarm".into()))?;
    let request = Request::Manifest {
        program: record.program,
    };
    let signed = match ask(internal, cm.director, cm.addrs, request).await {
        Ok(Response::Manifest(signed)) => signed,
        Ok(other) => return Err(unavailable(format!("unexpected answer: {other:?}"))),
        Err(e) => return Err(unavailable(e)),
    };
    let manifest = Manifest::verify(&signed)
        .map_err(|e| unavailable(format!("the program's manifest does not verify: {e}")))?;
    if SegmentHash::of(&vodmesh_proto::codec::encode(&manifest)) != record.manifest_hash {
        return Err(unavailable(
            "the content manager's manifest does not match its catalog record".into(),
        ));
    }
    if manifest.program != record.program {
        return Err(unavailable("the manifest is of another program".into()));
    }
    Ok(manifest)
}

impl Director {
    /// Starts filling a miss: looks up holders in the background; [`Director::fill_miss`]
    /// finishes on the director's loop. `held`: the station holds the segment, but every
    /// holder is busy for this console (then finding no other station is a wait, `Busy`).
    pub(super) fn on_miss(
        &mut self,
        ask: Locating,
        held: bool,
        channel: ResponseChannel<Response>,
    ) {
        let replies = self.replies.clone();
        let Ok(permit) = self.miss.gathering.clone().try_acquire_owned() else {
            let busy = ErrorReply::new(ErrorCode::Busy, "too many misses being filled; retry");
            tokio::spawn(async move {
                let _ = replies.send((channel, Response::Error(busy))).await;
            });
            return;
        };
        let me = self.peer_id();
        let registry = self.registry_handle.clone();
        let internal = self.dist.internal.clone();
        let program = ask.program;
        // A content manager has the program's record and manifest itself: asking itself
        // over the network fails ("Failed to dial the requested peer").
        let own = self
            .catalog
            .as_ref()
            .and_then(|c| c.get(&program).ok().flatten());
        let known = own
            .as_ref()
            .and_then(|e| e.record())
            .or_else(|| self.dist.learned.get(&program).cloned());
        let manifest = self
            .miss
            .manifests
            .get(&program)
            .cloned()
            .or_else(|| own.as_ref().and_then(|e| e.manifest()).map(Arc::new));
        tokio::spawn(async move {
            let _permit = permit;
            let index = ask.index;
            match gather(
                me,
                registry,
                internal.clone(),
                program,
                index,
                known,
                manifest,
            )
            .await
            {
                Ok((record, manifest, candidates)) => {
                    let gathered = Gathered {
                        ask,
                        held,
                        channel,
                        record,
                        manifest,
                        candidates,
                    };
                    let _ = internal.send(Internal::Miss(Box::new(gathered))).await;
                }
                Err(e) => {
                    let e = match e.code {
                        // Held here, only busy: a wait for the console, not an end.
                        ErrorCode::NotFound if held => ErrorReply::new(
                            ErrorCode::Busy,
                            "every engine holding this segment is busy, and no other station holds it",
                        ),
                        _ => e,
                    };
                    let _ = replies.send((channel, Response::Error(e))).await;
                }
            }
        });
    }

    /// Answers a miss on the director's loop: the station's own engine if one can serve by
    /// now; else, when the station holds the segment but every holder is busy, the cheapest
    /// other station's engine; else a copy from the cheapest station into one of our engines
    /// (whose copy is filling), or the cheapest holder itself when no engine here can copy.
    pub(super) fn fill_miss(&mut self, gathered: Gathered) {
        let Gathered {
            ask,
            held,
            channel,
            record,
            manifest,
            candidates,
        } = gathered;
        self.learn(record);
        self.miss.manifests.insert(ask.program, manifest.clone());
        // Engines the console could not reach are no sources for it either.
        let candidates: Vec<Candidate> = candidates
            .into_iter()
            .filter(|c| !ask.avoid.contains(&c.engine))
            .collect();
        // Another console's miss of the same segment may have been filled meanwhile.
        let answer = match self.locate_here(&ask) {
            Ok(location) => Ok(location),
            Err(e) if e.code == ErrorCode::NotFound && !held => {
                self.order_copy(&ask, &manifest, candidates)
            }
            Err(e) if matches!(e.code, ErrorCode::NotFound | ErrorCode::Busy) => {
                let ranked = self.rank(&ask, &manifest, candidates);
                match ranked.first() {
                    Some((_, holder)) => Ok(holder.location()),
                    None => Err(ErrorReply::new(
                        ErrorCode::Busy,
                        "every engine holding this segment is busy; retry",
                    )),
                }
            }
            Err(e) => Err(e),
        };
        let response = answer.map_or_else(Response::Error, Response::Location);
        let _ = self.replies.try_send((channel, response));
    }

    /// The candidates, cheapest first ([`cost`]), logged.
    fn rank(
        &self,
        ask: &Locating,
        manifest: &Manifest,
        candidates: Vec<Candidate>,
    ) -> Vec<(f64, Candidate)> {
        let size = manifest.content.segment(ask.index).map_or(0, |e| e.size);
        let here = Here {
            coords: self.config.coords,
            region: self.config.region.clone(),
            bandwidth_mbps: self.config.bandwidth_mbps,
        };
        let mut ranked: Vec<(f64, Candidate)> = candidates
            .into_iter()
            .map(|c| {
                let director = c.station.director;
                let cost = cost(
                    &here,
                    &c.station,
                    (c.streams, c.max_streams),
                    size,
                    self.miss.throughput.get(&director).copied(),
                    self.miss.rtt.get(&director).copied(),
                );
                (cost, c)
            })
            .collect();
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
        let table: Vec<String> = ranked
            .iter()
            .map(|(cost, c)| format!("{}={cost:.4}s", c.station.director))
            .collect();
        let segment = SegmentId::new(ask.program, ask.index);
        tracing::debug!(%segment, candidates = ?table, "miss: source costs");
        ranked
    }

    fn order_copy(
        &mut self,
        ask: &Locating,
        manifest: &Manifest,
        candidates: Vec<Candidate>,
    ) -> Result<SegmentLocation, ErrorReply> {
        let (program, index) = (ask.program, ask.index);
        let segment = SegmentId::new(program, index);
        let Some(entry) = manifest.content.segment(index) else {
            return Err(ErrorReply::new(ErrorCode::NotFound, "no such segment"));
        };
        let ranked = self.rank(ask, manifest, candidates);
        let Some((cost, cheapest)) = ranked.first() else {
            return Err(ErrorReply::new(
                ErrorCode::NotFound,
                format!(
                    "no station can serve segment {index} of {}",
                    program.short()
                ),
            ));
        };
        // A station whose engines hold no engine token (not enrolled, not the auth station)
        // cannot copy; an engine whose last copy failed at every source is not asked again
        // for a while; with every engine busy there is nowhere to put the copy. In each case
        // the console is sent to the cheapest holder's engine itself.
        let can_copy = self.can_copy();
        let mut exclude = ask.avoid.clone();
        exclude.extend(self.miss.failed.recent());
        let holders = self.locations.list(segment).unwrap_or_default();
        let target = pick::idle_engine(&self.engines, &holders, &exclude, entry.size)
            .filter(|_| can_copy)
            .and_then(|i| Some((i, self.engines.get(i)?.as_ref()?)))
            .map(|(i, e)| (i, e.peer_id, e.addrs.clone()));
        if target.is_none()
            && can_copy
            && pick::idle_engine(&self.engines, &holders, &exclude, 0).is_some()
        {
            tracing::info!(%segment, need = entry.size, "miss: no room for the copy here, nothing evictable enough; sending the console to the holder");
            self.activity.copies_declined += 1;
        }
        let Some((target, engine, addrs)) = target else {
            tracing::debug!(%segment, source = %cheapest.station.director, "miss: redirecting to the holder");
            return Ok(cheapest.location());
        };
        let Some(tx) = self.engine_commands.get(target) else {
            return Err(ErrorReply::new(ErrorCode::Busy, "engine gone"));
        };
        let stations: HashMap<PeerId, PeerId> = ranked
            .iter()
            .map(|(_, c)| (c.engine, c.station.director))
            .collect();
        let (done, mut done_rx) = mpsc::channel(1);
        let fetch = EngineCommand::Fetch {
            segment,
            expect: Some((entry.hash, entry.size)),
            sources: ranked
                .iter()
                .map(|(_, c)| Source {
                    engine: c.engine,
                    addrs: c.addrs.clone(),
                })
                .collect(),
            // The holders keep the program; this copy is a cache.
            held_elsewhere: true,
            done,
        };
        if tx.try_send(fetch).is_err() {
            return Err(ErrorReply::new(ErrorCode::Busy, "engine queue full"));
        }
        tracing::info!(%segment, source = %cheapest.station.director, cost = format!("{cost:.4}s"), to = %engine, "miss: copying from the cheapest station");
        self.activity.misses += 1;
        let me = self.peer_id();
        events::emit(
            me,
            program,
            Some(index),
            Kind::SourceChosen {
                station: cheapest.station.director,
                engine: cheapest.engine,
            },
        );
        events::emit(me, program, Some(index), Kind::FetchDirected { engine });
        let filling = Location {
            engine,
            state: LocationState::Filling,
            load: 0,
        };
        if let Err(e) = self.locations.insert(segment, &filling) {
            tracing::warn!(%segment, error = %e, "location table write failed");
        }
        let locations = self.locations.clone();
        let internal = self.dist.internal.clone();
        let filling = self.miss.filling.clone();
        let failed = self.miss.failed.clone();
        if let Ok(mut f) = filling.lock() {
            f.insert(segment, ranked.iter().map(|(_, c)| c.clone()).collect());
        }
        tokio::spawn(async move {
            let outcome = done_rx.recv().await;
            if let Ok(mut f) = filling.lock() {
                f.remove(&segment);
            }
            match outcome {
                Some((_, Ok(copied))) => {
                    if let Some(station) = stations.get(&copied.source) {
                        let _ = internal
                            .send(Internal::Copied {
                                station: *station,
                                copied,
                            })
                            .await;
                    }
                }
                Some((_, Err(e))) => {
                    tracing::warn!(%segment, %engine, error = %e, "miss: copy failed at every source");
                    let _ = locations.remove(segment, &engine);
                    failed.note(engine);
                }
                None => {}
            }
        });
        Ok(SegmentLocation {
            engine,
            addrs,
            director: me,
            filling: true,
            swap: false,
        })
    }

    /// Whether this station's engines can copy at all: they hold engine tokens only when the
    /// station is the auth station or enrolled with it.
    pub(super) fn can_copy(&self) -> bool {
        self.config.auth || self.config.enroll.is_some()
    }

    /// A copy from `station` finished: its measured throughput corrects the next cost.
    pub(super) fn on_copied(&mut self, station: PeerId, copied: Copied) {
        self.activity.source_failovers += u64::from(copied.failovers);
        if copied.bytes < MIN_MEASURED || copied.elapsed.is_zero() {
            return;
        }
        let bps = copied.bytes as f64 * 8.0 / copied.elapsed.as_secs_f64();
        let mean = self
            .miss
            .throughput
            .entry(station)
            .and_modify(|m| *m = EWMA * bps + (1.0 - EWMA) * *m)
            .or_insert(bps);
        tracing::debug!(%station, measured_mbps = bps / 1e6, mean_mbps = *mean / 1e6, "copy throughput");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vodmesh_proto::station::Roles;

    fn station(bandwidth_mbps: u32, coords: Option<(f64, f64)>) -> StationRecord {
        StationRecord {
            director: PeerId::random(),
            addrs: vec![],
            engines: vec![],
            region: None,
            coords,
            bandwidth_mbps,
            roles: Roles::default(),
            issuer: None,
            issued_ms: 0,
            expires_ms: u64::MAX,
        }
    }

    const PARIS: (f64, f64) = (48.86, 2.35);
    const BERLIN: (f64, f64) = (52.52, 13.40);
    const TOKYO: (f64, f64) = (35.68, 139.69);
    const MIB4: u64 = 4 * 1024 * 1024;

    fn here() -> Here {
        Here {
            coords: Some(PARIS),
            region: None,
            bandwidth_mbps: 10_000,
        }
    }

    /// The cost of an idle source known only by what it advertises.
    fn advertised(bandwidth_mbps: u32, at: (f64, f64)) -> f64 {
        cost(
            &here(),
            &station(bandwidth_mbps, Some(at)),
            (0, 8),
            MIB4,
            None,
            None,
        )
    }

    #[test]
    fn distances_are_great_circles() {
        let d = great_circle_km(PARIS, BERLIN);
        assert!((870.0..890.0).contains(&d), "{d}");
    }

    #[test]
    fn faster_links_and_nearer_stations_cost_less() {
        let slow = advertised(100, BERLIN);
        let fast = advertised(1000, BERLIN);
        assert!(fast < slow);
        let near = advertised(1000, BERLIN);
        let far = advertised(1000, TOKYO);
        assert!(near < far);
    }

    #[test]
    fn a_loaded_source_costs_more() {
        let s = station(1000, Some(BERLIN));
        let idle = cost(&here(), &s, (0, 8), MIB4, None, None);
        let busy = cost(&here(), &s, (8, 8), MIB4, None, None);
        assert!(busy > 1.9 * (idle - 0.02));
    }

    #[test]
    fn measurements_override_what_is_advertised() {
        // Advertised fast, measured slow: the measurement wins.
        let liar = station(10_000, Some(BERLIN));
        let honest = station(100, Some(BERLIN));
        let measured = cost(&here(), &liar, (0, 8), MIB4, Some(20e6), None);
        let believed = cost(&here(), &honest, (0, 8), MIB4, None, None);
        assert!(measured > believed);
        // A measured round trip replaces the distance estimate.
        let rtt = cost(
            &here(),
            &station(1000, Some(TOKYO)),
            (0, 8),
            MIB4,
            None,
            Some(Duration::from_millis(1)),
        );
        let estimated = advertised(1000, TOKYO);
        assert!(rtt < estimated);
    }
}
