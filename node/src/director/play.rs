//! The director's part in playback: a console's `Locate` (claims 18-20), which engine streams
//! a segment ([`pick`]), a copy to an idle engine when every holder is at its stream limit
//! (claims 19, 20), another station when the station has nothing free, and whether a program
//! may be streamed at all (claim 11).
//!
//! A `Locate` is answered, in this order: an engine of this station that holds the segment
//! and has a slot free for the console (its own streams count as free: it takes an engine in
//! turn); else, when holders are busy, an idle engine of the station that copies the segment
//! from one and streams it while it arrives; else another station that holds it (a miss,
//! [`super::miss`], which also copies it here when the station does not hold it); else `Busy`,
//! which a console waits out. Engines that answered the console busy are holders without a
//! slot for it.
//!
//! Engines the console names in `avoid` (it could not reach them, or they lacked the segment)
//! are no holders for that answer. A console's report is a hint, not proof (its own network
//! may be at fault, and any console can send one), so it is not kept and binds no other
//! console: the console itself names an engine it could not reach in every `Locate` for 10 s,
//! and forgets it when the director has nothing else; other consoles are kept from a dead
//! engine by the heartbeat, which marks it down within 3 s.

use vodmesh_proto::ProgramId;
use vodmesh_proto::SegmentId;
use vodmesh_proto::director::{ErrorCode, ErrorReply, Response, SegmentLocation};

use std::collections::HashMap;
use std::time::Duration;

use libp2p::PeerId;
use libp2p::request_response::ResponseChannel;

use tokio::sync::mpsc;
use vodmesh_proto::time::now_ms;

use super::Director;
use super::pick::{self, Asker, Choice};
use crate::control::{EngineCommand, Source};
use crate::store::locations::{Location, LocationState};

/// A console's question: which engine streams segment `index` of `program` to it.
#[derive(Clone, Debug)]
pub(super) struct Locating {
    /// The console asking.
    pub(super) console: PeerId,
    /// The program.
    pub(super) program: ProgramId,
    /// The segment.
    pub(super) index: u32,
    /// Engines it could not reach, or that lack the segment.
    pub(super) avoid: Vec<PeerId>,
    /// Engines that answered it busy.
    pub(super) busy: Vec<PeerId>,
}

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

    /// Streams `console` holds, by engine index.
    fn held_by(&self, console: &PeerId) -> HashMap<usize, u32> {
        let mut held = HashMap::new();
        for (engine, list) in &self.streams {
            let n = list.iter().filter(|(_, c)| c == console).count() as u32;
            if n > 0 {
                held.insert(*engine, n);
            }
        }
        held
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

    /// A console's `Locate` (see the module docs). The answer to send now, or `None` when
    /// another station is being looked for: the miss answers on `channel` itself.
    pub(super) fn on_locate(
        &mut self,
        ask: Locating,
        channel: ResponseChannel<Response>,
    ) -> Option<(ResponseChannel<Response>, Response)> {
        let Locating {
            console,
            program,
            index,
            ..
        } = ask;
        let located = match self.handed_over(program, index, console) {
            Some(l) if !ask.avoid.contains(&l.engine) && !ask.busy.contains(&l.engine) => Ok(l),
            _ => self.locate_here(&ask),
        };
        let located = match located {
            // Claims 19, 20: every holder busy; an idle engine takes a copy, or another
            // station serves (a miss that finds the station holds it, but busy).
            Err(e) if e.code == ErrorCode::Busy => {
                match self.replicate_for_load(program, index, &ask.avoid) {
                    Ok(location) => Ok(location),
                    Err(_) => {
                        self.on_miss(ask, true, channel);
                        return None;
                    }
                }
            }
            // Held elsewhere: copy it here and stream it as it arrives (claim 14).
            Err(e) if e.code == ErrorCode::NotFound => {
                tracing::debug!(?ask, why = %e, "locate: a miss");
                self.on_miss(ask, false, channel);
                return None;
            }
            other => other,
        };
        let response = match located {
            Ok(location) => {
                self.metrics.hit();
                self.preload(&location, program, index);
                Response::Location(location)
            }
            Err(e) => Response::Error(e),
        };
        Some((channel, response))
    }

    /// The engine of this station that should stream the segment to the console asking
    /// ([`pick::stream_engine`]): `NotFound` when no engine that is up and not avoided holds
    /// it, `Busy` when those that do have no slot free for it.
    pub(super) fn locate_here(&self, ask: &Locating) -> Result<SegmentLocation, ErrorReply> {
        let (program, index) = (ask.program, ask.index);
        let segment = SegmentId::new(program, index);
        let holders = self
            .locations
            .list(segment)
            .map_err(|e| ErrorReply::new(ErrorCode::Internal, e.to_string()))?;
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
        let own: HashMap<PeerId, u32> = self
            .playing
            .held_by(&ask.console)
            .into_iter()
            .filter_map(|(i, n)| Some((self.engines.get(i)?.as_ref()?.peer_id, n)))
            .collect();
        let asker = Asker {
            avoid: &ask.avoid,
            busy: &ask.busy,
            own: Some(&own),
        };
        match pick::stream_engine(&self.engines, &holders, &asker) {
            Choice::Engine { index, filling } => self.location_of(index, filling, false),
            Choice::Busy => Err(ErrorReply::new(
                ErrorCode::Busy,
                "every engine holding this segment is at capacity",
            )),
            Choice::NotHere => Err(ErrorReply::new(
                ErrorCode::NotFound,
                format!(
                    "segment {index} of {} is held only by engines that are down or unreachable",
                    program.short()
                ),
            )),
        }
    }

    /// Where to reach engine `index` of this station.
    fn location_of(
        &self,
        index: usize,
        filling: bool,
        swap: bool,
    ) -> Result<SegmentLocation, ErrorReply> {
        let engine = self
            .engines
            .get(index)
            .and_then(|e| e.as_ref())
            .ok_or_else(|| ErrorReply::new(ErrorCode::Internal, "engine gone"))?;
        Ok(SegmentLocation {
            engine: engine.peer_id,
            addrs: engine.addrs.clone(),
            director: self.peer_id(),
            filling,
            swap,
        })
    }

    /// Every engine holding the segment is at `--max-streams` (claims 19, 20): an idle engine
    /// of this station copies it from a holder and takes the new console at once, streaming
    /// the segment as it arrives. The copy enters the location table as filling, and as
    /// complete when the engine reports it stored.
    pub(super) fn replicate_for_load(
        &mut self,
        program: ProgramId,
        index: u32,
        avoid: &[PeerId],
    ) -> Result<SegmentLocation, ErrorReply> {
        let segment = SegmentId::new(program, index);
        let busy = || {
            ErrorReply::new(
                ErrorCode::Busy,
                "every engine holding this segment is at capacity",
            )
        };
        // Copies between engines need engine tokens (an enrolled or auth station's).
        if !self.can_copy() {
            return Err(busy());
        }
        let holders = self
            .locations
            .list(segment)
            .map_err(|e| ErrorReply::new(ErrorCode::Internal, e.to_string()))?;
        let failed = self.miss.failed_copies();
        let mut exclude = avoid.to_vec();
        exclude.extend(failed.recent());
        let (Some(source), Some(target)) = (
            pick::copy_source(&self.engines, &holders, avoid),
            pick::idle_engine(&self.engines, &holders, &exclude, 0),
        ) else {
            return Err(busy());
        };
        let (Some(Some(source_info)), Some(Some(target_info))) =
            (self.engines.get(source), self.engines.get(target))
        else {
            return Err(busy());
        };
        let (target_peer, target_addrs) = (target_info.peer_id, target_info.addrs.clone());
        let (Some(source_tx), Some(target_tx)) = (
            self.engine_commands.get(source),
            self.engine_commands.get(target),
        ) else {
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
                failed.note(target_peer);
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
        let complete: Vec<Location> = holders
            .into_iter()
            .filter(|l| l.state == LocationState::Complete)
            .collect();
        let own = match pick::stream_engine(&self.engines, &complete, &Asker::default()) {
            Choice::Engine { index, .. } => self
                .engines
                .get(index)
                .and_then(|e| e.as_ref())
                .map(|e| (index, e.peer_id, e.addrs.clone(), e.streams)),
            Choice::Busy | Choice::NotHere => None,
        };
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
