//! The director's part in playback: which engine streams a segment (claim 18), a copy to an
//! idle engine when every holder is at its stream limit (claims 19, 20), and whether a program
//! may be streamed at all (claim 11).

use vodmesh_proto::ProgramId;
use vodmesh_proto::SegmentId;
use vodmesh_proto::director::{ErrorCode, ErrorReply, SegmentLocation};

use std::collections::HashMap;
use std::time::Duration;

use libp2p::PeerId;

use tokio::sync::mpsc;
use vodmesh_proto::time::now_ms;

use super::Director;
use crate::control::{EngineCommand, Source};
use crate::store::locations::{Location, LocationState};

/// Who is streaming what, from the engines' takeover and stop reports; and the consoles in
/// the middle of a swap or an exchange.
#[derive(Default)]
pub(super) struct Playing {
    /// By engine index: the (segment, console) streams it serves.
    streams: HashMap<usize, Vec<(SegmentId, PeerId)>>,
    /// A console a filling engine (by index) handed back, by segment (claim 21).
    pub(super) swapped_from: HashMap<(SegmentId, PeerId), usize>,
    /// A console handed over in an exchange, by segment: the engine it resumes at (claim 22).
    handed: HashMap<(SegmentId, PeerId), usize>,
}

impl Playing {
    pub(super) fn started(&mut self, engine: usize, segment: SegmentId, console: PeerId) {
        self.streams
            .entry(engine)
            .or_default()
            .push((segment, console));
    }

    pub(super) fn stopped(&mut self, engine: usize, segment: SegmentId, console: PeerId) {
        if let Some(list) = self.streams.get_mut(&engine)
            && let Some(at) = list.iter().position(|s| *s == (segment, console))
        {
            list.swap_remove(at);
        }
    }
}

/// How long a sibling engine may copy from a busy one for an overload replication.
const SIBLING_COPY_FOR: Duration = Duration::from_secs(120);

impl Director {
    /// Tells the engine a console was just sent to that the segment is coming (claim 16).
    pub(super) fn preload(&mut self, location: &SegmentLocation, program: ProgramId, index: u32) {
        let engine = self
            .engines
            .iter()
            .position(|e| e.as_ref().is_some_and(|e| e.peer_id == location.engine));
        if let Some(tx) = engine.and_then(|i| self.engine_commands.get(i))
            && tx
                .try_send(EngineCommand::Preload {
                    segment: SegmentId::new(program, index),
                })
                .is_ok()
        {
            self.activity.preloads += 1;
        }
    }

    /// The engine of this station that should stream `program`'s segment `index`, never one
    /// in `avoid` (engines the console could not reach: dead, though not yet known to be):
    /// among the engines holding it that are up and below their stream limit, a complete copy
    /// before a filling one, then the fewest active streams.
    pub(super) fn locate_avoiding(
        &self,
        program: ProgramId,
        index: u32,
        avoid: &[PeerId],
    ) -> Result<SegmentLocation, ErrorReply> {
        let segment = SegmentId::new(program, index);
        let mut holders = self
            .locations
            .list(segment)
            .map_err(|e| ErrorReply::new(ErrorCode::Internal, e.to_string()))?;
        holders.retain(|l| !avoid.contains(&l.engine));
        if holders.is_empty() {
            return Err(ErrorReply::new(
                ErrorCode::NotFound,
                format!(
                    "segment {index} of {} is not held by this station",
                    program.short()
                ),
            ));
        }
        // Claim 11: nothing is streamed before the publish time. A station that holds a copy
        // but has not learned the program's catalog record refuses too.
        self.playable(&program).map_err(|e| match e.code {
            ErrorCode::NotFound => {
                ErrorReply::new(ErrorCode::NotPublished, "program not published")
            }
            _ => e,
        })?;
        let up = |peer: &PeerId| {
            self.engines
                .iter()
                .flatten()
                .any(|e| e.peer_id == *peer && e.up)
        };
        if !holders.iter().any(|l| up(&l.engine)) {
            // Held only by engines that are down: as good as not held (a miss).
            return Err(ErrorReply::new(
                ErrorCode::NotFound,
                format!(
                    "segment {index} of {} is held only by engines that are down",
                    program.short()
                ),
            ));
        }
        let best = holders
            .iter()
            .filter_map(|loc| {
                let info = self
                    .engines
                    .iter()
                    .flatten()
                    .find(|e| e.peer_id == loc.engine && e.up)?;
                (info.streams < info.max_streams).then_some((loc, info))
            })
            .min_by_key(|(loc, info)| (loc.state != LocationState::Complete, info.streams));
        match best {
            Some((loc, info)) => Ok(SegmentLocation {
                engine: info.peer_id,
                addrs: info.addrs.clone(),
                director: self.peer_id(),
                filling: loc.state == LocationState::Filling,
                swap: false,
            }),
            None => Err(ErrorReply::new(
                ErrorCode::Busy,
                "every engine holding this segment is at capacity",
            )),
        }
    }

    /// Every engine holding the segment is at `--max-streams` (claims 19, 20): an idle engine
    /// of this station copies it from a holder and takes the new console at once, streaming
    /// the segment as it arrives. The copy enters the location table as filling, and as
    /// complete when the engine reports it stored.
    pub(super) fn replicate_for_load(
        &mut self,
        program: ProgramId,
        index: u32,
    ) -> Result<SegmentLocation, ErrorReply> {
        let segment = SegmentId::new(program, index);
        let busy = || {
            ErrorReply::new(
                ErrorCode::Busy,
                "every engine holding this segment is at capacity",
            )
        };
        let holders = self
            .locations
            .list(segment)
            .map_err(|e| ErrorReply::new(ErrorCode::Internal, e.to_string()))?;
        let up = |peer| {
            self.engines
                .iter()
                .position(|e| e.as_ref().is_some_and(|e| e.peer_id == peer && e.up))
        };
        let Some(source) = holders
            .iter()
            .filter(|l| l.state == LocationState::Complete)
            .find_map(|l| up(l.engine))
        else {
            return Err(busy());
        };
        let target = self
            .engines
            .iter()
            .enumerate()
            .filter_map(|(i, e)| Some((i, e.as_ref()?)))
            .filter(|(_, e)| e.up && e.streams < e.max_streams)
            .filter(|(_, e)| holders.iter().all(|l| l.engine != e.peer_id))
            .min_by_key(|(_, e)| e.streams)
            .map(|(i, e)| (i, e.peer_id, e.addrs.clone()));
        let Some((target, target_peer, target_addrs)) = target else {
            return Err(busy());
        };
        let (Some(source_tx), Some(target_tx)) = (
            self.engine_commands.get(source),
            self.engine_commands.get(target),
        ) else {
            return Err(busy());
        };
        let Some(source_info) = self.engines.get(source).and_then(|e| e.as_ref()) else {
            return Err(busy());
        };
        let (done, mut done_rx) = mpsc::channel(1);
        let allow = EngineCommand::AllowCopy {
            peers: vec![target_peer],
            until_ms: now_ms() + SIBLING_COPY_FOR.as_millis() as u64,
        };
        let fetch = EngineCommand::Fetch {
            segment,
            expect: None,
            sources: vec![Source {
                engine: source_info.peer_id,
                addrs: source_info.addrs.clone(),
            }],
            held_elsewhere: false,
            done,
        };
        if source_tx.try_send(allow).is_err() || target_tx.try_send(fetch).is_err() {
            return Err(busy());
        }
        tracing::info!(%segment, from = %source_info.peer_id, to = %target_peer, "overload: replicating to an idle engine");
        self.activity.replications += 1;
        let filling = Location {
            engine: target_peer,
            state: LocationState::Filling,
            load: 0,
        };
        if let Err(e) = self.locations.insert(segment, &filling) {
            tracing::warn!(%segment, error = %e, "location table write failed");
        }
        // A failed copy leaves no filling location behind.
        let locations = self.locations.clone();
        tokio::spawn(async move {
            if let Some((_, Err(e))) = done_rx.recv().await {
                tracing::warn!(%segment, engine = %target_peer, error = %e, "overload replication failed");
                let _ = locations.remove(segment, &target_peer);
            }
        });
        Ok(SegmentLocation {
            engine: target_peer,
            addrs: target_addrs,
            director: self.peer_id(),
            filling: true,
            swap: false,
        })
    }

    /// Claim 21: an engine with the whole segment, for a console that a filling engine
    /// handed back. One of this station's engines when one holds a complete copy; otherwise
    /// the cheapest source of the copy still filling here, at its own station.
    pub(super) fn locate_complete(
        &mut self,
        program: ProgramId,
        index: u32,
        console: PeerId,
    ) -> Result<SegmentLocation, ErrorReply> {
        self.playable(&program)?;
        let segment = SegmentId::new(program, index);
        let holders = self
            .locations
            .list(segment)
            .map_err(|e| ErrorReply::new(ErrorCode::Internal, e.to_string()))?;
        let own = holders
            .iter()
            .filter(|l| l.state == LocationState::Complete)
            .filter_map(|l| {
                self.engines.iter().enumerate().find_map(|(i, e)| {
                    e.as_ref()
                        .filter(|e| e.peer_id == l.engine && e.up && e.streams < e.max_streams)
                        .map(|e| (i, e))
                })
            })
            .min_by_key(|(_, e)| e.streams)
            .map(|(i, e)| (i, e.peer_id, e.addrs.clone(), e.streams));
        let filling = self.playing.swapped_from.remove(&(segment, console));
        if let Some((taker, engine, addrs, streams)) = own {
            if let Some(filling) = filling {
                self.exchange(segment, console, (taker, streams), filling);
            }
            return Ok(SegmentLocation {
                engine,
                addrs,
                director: self.peer_id(),
                filling: false,
                swap: true,
            });
        }
        match self.miss.source_of(&segment) {
            Some((engine, addrs, director)) => Ok(SegmentLocation {
                engine,
                addrs,
                director,
                filling: false,
                swap: true,
            }),
            None => Err(ErrorReply::new(
                ErrorCode::Busy,
                "no engine with the whole segment can take this console now",
            )),
        }
    }

    /// Claim 22: the engine `taker` takes `console` over from the filling engine `filling`.
    /// When `taker` is itself streaming the same segment to another console, and keeping
    /// both would leave it two or more streams above `filling`, that other console is handed
    /// to `filling` (which holds the bytes it is playing: it is behind the fill): the two
    /// engines exchange consoles.
    fn exchange(
        &mut self,
        segment: SegmentId,
        console: PeerId,
        (taker, taker_streams): (usize, u32),
        filling: usize,
    ) {
        let filling_streams = match self.engines.get(filling) {
            Some(Some(e)) if e.up => e.streams,
            _ => return,
        };
        // With the new console the taker would serve two or more streams above the filler.
        if taker_streams <= filling_streams {
            return;
        }
        let Some(other) = self.playing.streams.get(&taker).and_then(|list| {
            list.iter()
                .find(|(s, c)| *s == segment && *c != console)
                .map(|(_, c)| *c)
        }) else {
            return;
        };
        let Some(tx) = self.engine_commands.get(taker) else {
            return;
        };
        if tx
            .try_send(EngineCommand::Handover {
                segment,
                console: other,
            })
            .is_ok()
        {
            tracing::debug!(%segment, %console, %other, taker, filling, "exchange: engines swap consoles");
            self.playing.handed.insert((segment, other), filling);
            self.activity.exchanges += 1;
        }
    }

    /// Where a console handed over in an exchange resumes the segment, once.
    pub(super) fn handed_over(
        &mut self,
        program: ProgramId,
        index: u32,
        console: PeerId,
    ) -> Option<SegmentLocation> {
        let segment = SegmentId::new(program, index);
        let engine = self.playing.handed.remove(&(segment, console))?;
        let e = self.engines.get(engine)?.as_ref().filter(|e| e.up)?;
        let state = self
            .locations
            .list(segment)
            .ok()?
            .into_iter()
            .find(|l| l.engine == e.peer_id)?
            .state;
        Some(SegmentLocation {
            engine: e.peer_id,
            addrs: e.addrs.clone(),
            director: self.peer_id(),
            filling: state == LocationState::Filling,
            swap: false,
        })
    }
}
