//! The director's decisions, as plain functions of what it knows: which engine streams a
//! segment to a console (claim 18), which engine takes a copy and from where when every
//! holder is busy (claims 19, 20), what a miss does (claims 14, 15: copy here or send the
//! console to a holder), how much copying from each holding station costs, which consoles two
//! engines exchange (claim 22), and which stations receive a program's replicas (claim 12).
//!
//! Nothing here does I/O: no redb, no channel, no clock. Each function takes the engines'
//! state (up, streams, `--max-streams`, room), a segment's holders and the question, and
//! returns a choice; the request families apply it.
//!
//! # The one rule behind every engine choice
//!
//! An engine serves a console when it is up, holds the segment, was not found unreachable by
//! that console, and has a stream slot free for it; among those a complete copy goes before
//! a filling one, then the fewest streams. An engine takes a copy when it is up, has a slot
//! free for the console it will serve, does not hold the segment, and has room for it.
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
//! A station whose bytes failed verification lately ([`penalise`]) costs `1 +` [`PENALTY`]
//! `· failures` times as much, and goes after every station that did not: it is skipped
//! while another holder is there, and tried last when none is.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use vodmesh_proto::director::SegmentLocation;
use vodmesh_proto::station::{EngineInfo, StationRecord};
use vodmesh_proto::stream::MAX_STREAMS_PER_PEER;
use vodmesh_proto::{SegmentId, StationId};

use super::engines::{EngineId, EngineView};
use crate::store::locations::{Location, LocationState};

/// A console's question: which engine streams `segment` to it.
#[derive(Clone, Debug)]
pub(super) struct Locating {
    /// The console asking.
    pub(super) console: PeerId,
    /// The segment.
    pub(super) segment: SegmentId,
    /// Engines it could not reach, or that lack the segment: no holders to it.
    pub(super) avoid: Vec<PeerId>,
    /// Engines that answered it busy: alive holders without a slot for it now.
    pub(super) busy: Vec<PeerId>,
    /// Segments after this one to name too, when held whole here (`Locate { ahead }`).
    pub(super) ahead: u8,
    /// The console token it showed: checked only if a miss would start for it.
    pub(super) token: Option<serde_bytes::ByteBuf>,
}

/// What the director knows of the console asking.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Asker<'a> {
    /// Engines the console could not reach or that lack the segment: no holders to it.
    pub(super) avoid: &'a [PeerId],
    /// Engines that answered it busy: alive holders without a slot for it now.
    pub(super) busy: &'a [PeerId],
    /// Streams the console holds on each engine. They count as free to it: a console takes
    /// an engine in turn, so it waits for its own stream rather than need a second slot.
    pub(super) own: Option<&'a HashMap<EngineId, u32>>,
}

/// Where a console asking for a segment can be sent in this station.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Choice {
    /// To this engine.
    Engine {
        /// The engine.
        engine: EngineId,
        /// Its copy is still filling.
        filling: bool,
    },
    /// Held by an engine that is up, but none has a slot free for this console.
    Busy,
    /// No engine here that is up and not avoided holds it.
    NotHere,
}

/// The engine with `peer`, when it is up.
fn up<'e>(engines: &[EngineView<'e>], peer: &PeerId) -> Option<EngineView<'e>> {
    engines
        .iter()
        .find(|(_, e)| e.peer_id == *peer && e.up)
        .copied()
}

/// The streams `engine` serves for others than a console holding `own` of them, when it has
/// a slot free for that console (`--max-streams`); the load every engine choice compares.
fn free_slot(engine: &EngineInfo, own: u32) -> Option<u32> {
    let streams = engine.streams.saturating_sub(own);
    (streams < engine.max_streams).then_some(streams)
}

/// Whether this director's table bears out a console's word that `engine` answered it busy:
/// the engine is within a quarter of its `--max-streams` (streams may have ended since it
/// answered), or the console holds within a quarter of its share of the engine's streams
/// ([`MAX_STREAMS_PER_PEER`]). A console's word alone is not taken: where every holder is
/// busy an idle engine takes a copy, so a peer naming idle engines busy, segment after
/// segment, would have the station copy every segment onto every engine. Its `busy` is
/// passed over instead, and the engine named again: one that is busy answers so again.
fn busy_borne_out(engine: &EngineInfo, own: u32) -> bool {
    let near = |n: u32, limit: u32| n.saturating_add((limit / 4).max(1)) >= limit;
    near(engine.streams, engine.max_streams) || near(own, MAX_STREAMS_PER_PEER as u32)
}

/// The engine to stream a segment held by `holders` to the console `asker` (claim 18).
pub(super) fn stream_engine(
    engines: &[EngineView<'_>],
    holders: &[Location],
    asker: &Asker<'_>,
) -> Choice {
    let mut held = false;
    let mut best: Option<((bool, u32), EngineId)> = None;
    for holder in holders {
        if asker.avoid.contains(&holder.engine) {
            continue;
        }
        let Some((id, engine)) = up(engines, &holder.engine) else {
            continue;
        };
        held = true;
        let own = asker.own.and_then(|o| o.get(&id)).copied().unwrap_or(0);
        let Some(streams) = free_slot(engine, own) else {
            continue;
        };
        if asker.busy.contains(&holder.engine) && busy_borne_out(engine, own) {
            continue;
        }
        let key = (holder.state != LocationState::Complete, streams);
        if best.is_none_or(|(k, _)| key < k) {
            best = Some((key, id));
        }
    }
    match best {
        Some(((filling, _), engine)) => Choice::Engine { engine, filling },
        None if held => Choice::Busy,
        None => Choice::NotHere,
    }
}

/// An engine to take a copy of a segment of `size` bytes (a miss, an overload replication;
/// 0 when the size is not known here): up, a slot free for the console it will serve, not
/// holding the segment, not in `exclude`, room for the copy (what eviction may free counts:
/// the copy is a cache like the segments it would push out); the fewest streams.
pub(super) fn idle_engine(
    engines: &[EngineView<'_>],
    holders: &[Location],
    exclude: &[PeerId],
    size: u64,
) -> Option<EngineId> {
    engines
        .iter()
        .filter(|(_, e)| e.up && !exclude.contains(&e.peer_id))
        .filter(|(_, e)| holders.iter().all(|l| l.engine != e.peer_id))
        .filter(|(_, e)| e.room_for_copies().is_none_or(|room| room >= size))
        .filter_map(|(id, e)| Some((*id, free_slot(e, 0)?)))
        .min_by_key(|(_, streams)| *streams)
        .map(|(id, _)| id)
}

/// An engine of the station to copy a segment from: a complete copy, up, not in `avoid`. A
/// busy one will do: copies do not take stream slots.
pub(super) fn copy_source(
    engines: &[EngineView<'_>],
    holders: &[Location],
    avoid: &[PeerId],
) -> Option<EngineId> {
    holders
        .iter()
        .filter(|l| l.state == LocationState::Complete && !avoid.contains(&l.engine))
        .find_map(|l| up(engines, &l.engine).map(|(id, _)| id))
}

/// An overload replication (claims 19, 20): engine `to` copies the segment from engine
/// `from`, and takes the console at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Replication {
    /// A complete holder (busy: copies take no stream slot).
    pub(super) from: EngineId,
    /// An idle engine that does not hold the segment.
    pub(super) to: EngineId,
}

/// Whether every holder being busy for a console calls for an overload replication, and
/// between which engines: only where engines can copy (they hold engine tokens), from a
/// complete holder the console did not avoid, to an idle engine that neither the console
/// avoided nor failed its last copy (`failed`).
pub(super) fn overload(
    can_copy: bool,
    engines: &[EngineView<'_>],
    holders: &[Location],
    avoid: &[PeerId],
    failed: &[PeerId],
) -> Option<Replication> {
    if !can_copy {
        return None;
    }
    let exclude: Vec<PeerId> = avoid.iter().chain(failed).copied().collect();
    Some(Replication {
        from: copy_source(engines, holders, avoid)?,
        to: idle_engine(engines, holders, &exclude, 0)?,
    })
}

/// What a miss does once the holders are known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MissPlan {
    /// Engine `into` copies the segment from the ranked sources and streams it as it lands.
    Copy {
        /// The engine taking the copy.
        into: EngineId,
    },
    /// The console goes to the cheapest holder itself: this station cannot copy (no engine
    /// tokens), or no engine of it is free (busy, or its last copy failed).
    Redirect,
    /// The same, because no free engine has room for the copy, even counting what eviction
    /// may free: the copy is declined (counted).
    Declined,
}

/// Where a missed segment of `size` bytes goes: into an idle engine with room (not in
/// `exclude`: engines the console avoided, engines whose last copy failed), or to a holder.
pub(super) fn miss(
    can_copy: bool,
    engines: &[EngineView<'_>],
    holders: &[Location],
    exclude: &[PeerId],
    size: u64,
) -> MissPlan {
    if !can_copy {
        return MissPlan::Redirect;
    }
    match idle_engine(engines, holders, exclude, size) {
        Some(into) => MissPlan::Copy { into },
        None if idle_engine(engines, holders, exclude, 0).is_some() => MissPlan::Declined,
        None => MissPlan::Redirect,
    }
}

/// Claim 22: engine `taker` takes over a console from engine `filling`, which handed it back
/// (it sought past the fill). When the taker already streams the same segment to another
/// console, and with the new one would serve more streams than the filler (which is up),
/// that other console goes to the filler (it holds the bytes that console plays: it is behind
/// the fill). Returns that console, or `None` to leave things as they are.
pub(super) fn exchange(
    segment: SegmentId,
    console: PeerId,
    (taker_streams, taker_serves): (u32, &[(SegmentId, PeerId)]),
    filling: Option<&EngineInfo>,
) -> Option<PeerId> {
    let filler = filling.filter(|e| e.up)?;
    if taker_streams <= filler.streams {
        return None;
    }
    taker_serves
        .iter()
        .find(|(s, c)| *s == segment && *c != console)
        .map(|(_, c)| *c)
}

/// A holding station's engine, as its director named it (`LocateCopy`).
#[derive(Clone, Debug)]
pub(super) struct Holder {
    /// The holding station.
    pub(super) station: StationRecord,
    /// Its engine.
    pub(super) engine: PeerId,
    /// Where to reach it.
    pub(super) addrs: Vec<Multiaddr>,
    /// Streams it serves now.
    pub(super) streams: u32,
    /// Its `--max-streams`.
    pub(super) max_streams: u32,
}

impl Holder {
    /// The holding station.
    pub(super) fn station_id(&self) -> StationId {
        StationId(self.station.director)
    }

    /// Where a console streams the segment from this holder directly.
    pub(super) fn location(&self) -> SegmentLocation {
        let mut location =
            SegmentLocation::new(self.engine, self.addrs.clone(), self.station.director);
        if let Some(e) = (self.station.engines.iter()).find(|e| e.peer_id == self.engine) {
            location.http = e.http;
            location.https = e.https;
            location.bulk = e.bulk;
        }
        location
    }
}

/// Our side of the cost: where this station is and what its link gives.
#[derive(Clone, Debug, Default)]
pub(super) struct Link {
    /// `--coords`.
    pub(super) coords: Option<(f64, f64)>,
    /// `--region`.
    pub(super) region: Option<String>,
    /// `--bandwidth`, Mbit/s.
    pub(super) bandwidth_mbps: u32,
}

/// What this director measured of other stations: copy throughput (bit/s, running mean) and
/// round trips to their directors.
#[derive(Clone, Copy, Debug)]
pub(super) struct Measured<'a> {
    /// Copy throughput from each station, bit/s.
    pub(super) throughput: &'a HashMap<StationId, f64>,
    /// Round trip to each station's director.
    pub(super) rtt: &'a HashMap<StationId, Duration>,
}

/// The cost, in seconds, of copying `size` bytes from `source` (see the module docs).
pub(super) fn cost(
    here: &Link,
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

/// The holders of a segment of `size` bytes, cheapest source first ([`cost`]).
pub(super) fn rank(
    here: &Link,
    holders: Vec<Holder>,
    size: u64,
    measured: Measured<'_>,
) -> Vec<(f64, Holder)> {
    let mut ranked: Vec<(f64, Holder)> = holders
        .into_iter()
        .map(|h| {
            let station = h.station_id();
            let cost = cost(
                here,
                &h.station,
                (h.streams, h.max_streams),
                size,
                measured.throughput.get(&station).copied(),
                measured.rtt.get(&station).copied(),
            );
            (cost, h)
        })
        .collect();
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
    ranked
}

/// How much more a station costs for each copy whose bytes from it failed verification
/// lately ([`penalise`]).
pub(super) const PENALTY: f64 = 10.0;

/// `ranked` with the stations whose bytes failed verification lately (`failures` of them)
/// costing more and put after all others, cheapest first in each part.
pub(super) fn penalise(
    ranked: Vec<(f64, Holder)>,
    failures: impl Fn(StationId) -> u32,
) -> Vec<(f64, Holder)> {
    let mut penalised: Vec<(u32, f64, Holder)> = (ranked.into_iter())
        .map(|(cost, h)| {
            let failed = failures(h.station_id());
            (failed, cost * (1.0 + PENALTY * f64::from(failed)), h)
        })
        .collect();
    penalised.sort_by(|a, b| (a.0 > 0).cmp(&(b.0 > 0)).then(a.1.total_cmp(&b.1)));
    (penalised.into_iter()).map(|(_, c, h)| (c, h)).collect()
}

/// What `engines` could take for copies (which are caches): free room and what eviction may
/// free, summed over those up; `None` when one of them is bounded only by its disks. What a
/// content manager reads in a station record, and what the station itself checks a replica
/// against.
pub(super) fn room<'e>(engines: impl IntoIterator<Item = &'e EngineInfo>) -> Option<u64> {
    (engines.into_iter().filter(|e| e.up)).try_fold(0u64, |sum, e| {
        e.room_for_copies().map(|r| sum.saturating_add(r))
    })
}

/// Every station that may hold a replica of a program of `size` bytes (claim 12), in the
/// order to ask them: among live stations, never `exclude` nor a home station, only stations
/// with engines up whose [`room`] (as their records say) takes the program; most free
/// capacity first, and new regions before regions already chosen. The content manager asks
/// them in turn until enough took one.
pub(super) fn replica_targets(
    stations: &[StationRecord],
    exclude: &[PeerId],
    size: u64,
) -> Vec<StationRecord> {
    let mut candidates: Vec<(u64, &StationRecord)> = stations
        .iter()
        .filter(|s| !exclude.contains(&s.director) && !s.roles.home)
        .filter(|s| s.engines.iter().any(|e| e.up))
        .filter_map(|s| match room(&s.engines) {
            // Bounded only by its disks: first.
            None => Some((u64::MAX, s)),
            Some(room) => (room >= size).then_some((room, s)),
        })
        .collect();
    candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.director.cmp(&b.1.director)));
    let mut chosen: Vec<StationRecord> = Vec::new();
    let mut regions: HashSet<Option<String>> = HashSet::new();
    // First pass: one per region; second pass: the rest.
    for pass in 0..2 {
        for (_, s) in &candidates {
            if chosen.iter().any(|c| c.director == s.director) {
                continue;
            }
            if pass == 0 && !regions.insert(s.region.clone()) {
                continue;
            }
            chosen.push((*s).clone());
        }
    }
    chosen
}

#[cfg(test)]
mod tests;
