//! A console's `Locate` (claims 16-22): which engine of this station streams a segment to it
//! ([`choose::stream_engine`]), an overload replication when every holder is busy (claims
//! 19, 20, [`super::replicate`]), a miss when the station does not hold it (claims 14, 15,
//! [`super::miss`]); a swap for a console that sought past a filling copy (claim 21), and the
//! exchange of consoles between two engines that follows it (claim 22).
//!
//! A `Locate` is answered, in this order: an engine of this station that holds the segment
//! and has a slot free for the console (its own streams count as free: it takes an engine in
//! turn); else, when holders are busy, an idle engine of the station that copies the segment
//! from one and streams it while it arrives; else another station that holds it (a miss,
//! which also copies it here when the station does not hold it); else `Busy`, which a console
//! waits out. Engines that answered the console busy are holders without a slot for it.
//!
//! Engines the console names in `avoid` (it could not reach them, or they lacked the segment)
//! are no holders for that answer. A console's report is a hint, not proof (its own network
//! may be at fault, and any console can send one), so it is not kept and binds no other
//! console: the console itself names an engine it could not reach in every `Locate` for 10 s,
//! and forgets it when the director has nothing else; other consoles are kept from a dead
//! engine by the heartbeat, which marks it down within 3 s.

use std::collections::HashMap;

use libp2p::PeerId;
use tokio::time::Instant;
use vodmesh_proto::SegmentId;
use vodmesh_proto::director::SegmentLocation;

use super::choose::{self, Asker, Choice, Locating};
use super::context::Ctx;
use super::engines::{EngineId, Streamed};
use super::error::Error;
use super::publish::Publishing;
use super::replicate::Replicating;
use crate::control::EngineCommand;
use crate::expiring::Expiring;
use crate::store::locations::LocationState;

/// What a `Locate` comes to on the loop.
#[derive(Debug)]
// A `Response` with a `SegmentLocation` (and its HTTP address) is over clippy's 200 bytes;
// it is moved once per request, never kept in bulk.
#[allow(clippy::large_enum_variant)]
pub(super) enum Located {
    /// The answer, now.
    Now(Result<SegmentLocation, Error>),
    /// Other stations must be asked: a miss (`held`: this station holds the segment, on
    /// engines busy for the console).
    Miss {
        /// The station holds it, busy.
        held: bool,
    },
    /// The station holds the segment but has not learned the program's catalog record: the
    /// registry must be asked first.
    Unlearned,
}

/// Who is streaming what, from the engines' takeover and stop reports; and the consoles in
/// the middle of a swap or an exchange.
#[derive(Debug, Default)]
pub(super) struct Play {
    /// By engine: the (segment, console) streams it serves.
    streams: HashMap<EngineId, Vec<(SegmentId, PeerId)>>,
    /// A console a filling engine handed back, by segment (claim 21), for a minute: one that
    /// never asks again is forgotten.
    swapped_from: Expiring<(SegmentId, PeerId), EngineId>,
    /// A console handed over in an exchange, by segment: the engine it resumes at (claim 22),
    /// for a minute.
    handed: Expiring<(SegmentId, PeerId), EngineId>,
}

impl Play {
    /// An engine's stream report.
    pub(super) fn on_stream(&mut self, report: Streamed) {
        match report {
            Streamed::TookOver {
                engine,
                segment,
                console,
            } => {
                tracing::debug!(%engine, %segment, %console, "engine took over the stream");
                self.streams
                    .entry(engine)
                    .or_default()
                    .push((segment, console));
            }
            Streamed::Stopped {
                engine,
                segment,
                console,
                bytes,
            } => {
                tracing::debug!(%engine, %segment, %console, bytes, "stream stopped");
                if let Some(list) = self.streams.get_mut(&engine)
                    && let Some(at) = list.iter().position(|s| *s == (segment, console))
                {
                    list.swap_remove(at);
                }
            }
            Streamed::SwapAsked {
                engine,
                segment,
                console,
            } => {
                tracing::debug!(%engine, %segment, %console, "console sought past a filling copy");
                (self.swapped_from).insert((segment, console), engine, Instant::now());
            }
        }
    }

    /// Streams `console` holds, by engine.
    fn held_by(&self, console: &PeerId) -> HashMap<EngineId, u32> {
        (self.streams.iter())
            .map(|(engine, list)| {
                let n = list.iter().filter(|(_, c)| c == console).count() as u32;
                (*engine, n)
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// A console's `Locate` (see the module docs): an engine of this station, an overload
    /// replication, or a miss for the loop to start.
    pub(super) fn locate(
        &mut self,
        ctx: &mut Ctx<'_>,
        publish: &Publishing,
        replicate: &mut Replicating,
        ask: &Locating,
    ) -> Located {
        let located = match self.handed_over(ctx, ask.segment, ask.console) {
            Some(l) if !ask.avoid.contains(&l.engine) && !ask.busy.contains(&l.engine) => Ok(l),
            _ => self.locate_here(ctx, publish, ask),
        };
        let located = match located {
            // Claims 19, 20: every holder busy; an idle engine takes a copy, or another
            // station serves (a miss that finds the station holds it, but busy).
            Err(Error::AtCapacity) => match replicate.overload(ctx, ask) {
                Some(location) => Ok(location),
                None => return Located::Miss { held: true },
            },
            // Held elsewhere: copy it here and stream it as it arrives (claim 14).
            Err(e @ (Error::NotHeld(_) | Error::HeldOnlyUnreachable(_))) => {
                tracing::debug!(?ask, why = %e, "locate: a miss");
                return Located::Miss { held: false };
            }
            Err(Error::Unlearned) => return Located::Unlearned,
            other => other,
        };
        if let Ok(location) = &located {
            preload(ctx, location, ask.segment);
        }
        Located::Now(located)
    }

    /// `Locate { ahead }`: the engines of the segments after `ask`'s, in order, as long as
    /// this station holds each whole and has an engine with a slot for it, chosen as a
    /// `Locate` of each would choose now, and each preloaded as that `Locate` would. A console
    /// fetching several segments at once then asks once for them, not once per segment.
    pub(super) fn locate_ahead(
        &self,
        ctx: &mut Ctx<'_>,
        publish: &Publishing,
        ask: &Locating,
    ) -> Vec<SegmentLocation> {
        let mut ahead = Vec::new();
        for i in 1..=u32::from(ask.ahead) {
            let Some(index) = ask.segment.index.0.checked_add(i) else {
                break;
            };
            let next = Locating {
                console: ask.console,
                segment: SegmentId::new(ask.segment.program, index),
                avoid: ask.avoid.clone(),
                busy: Vec::new(),
                ahead: 0,
                token: None,
            };
            match self.locate_here(ctx, publish, &next) {
                Ok(location) if !location.filling => {
                    preload(ctx, &location, next.segment);
                    ahead.push(location);
                }
                _ => break,
            }
        }
        ahead
    }

    /// The engine of this station that should stream the segment to the console asking
    /// ([`choose::stream_engine`]): not held when no engine that is up and not avoided holds
    /// it, at capacity when those that do have no slot free for it.
    pub(super) fn locate_here(
        &self,
        ctx: &Ctx<'_>,
        publish: &Publishing,
        ask: &Locating,
    ) -> Result<SegmentLocation, Error> {
        let segment = ask.segment;
        let holders = ctx.holders(segment)?;
        if holders.is_empty() {
            return Err(Error::NotHeld(segment));
        }
        // Claim 11: nothing is streamed before the publish time. A station that holds a copy
        // but has not learned the program's catalog record does not stream it either.
        publish
            .playable(ctx, &segment.program)
            .map_err(|e| match e {
                Error::UnknownProgram => Error::Unlearned,
                e => e,
            })?;
        let own = self.held_by(&ask.console);
        let asker = Asker {
            avoid: &ask.avoid,
            busy: &ask.busy,
            own: Some(&own),
        };
        match choose::stream_engine(&ctx.engines.views(), &holders, &asker) {
            Choice::Engine { engine, filling } => {
                (ctx.engines).location(engine, ctx.me.peer_id, (filling, false))
            }
            Choice::Busy => Err(Error::AtCapacity),
            Choice::NotHere => Err(Error::HeldOnlyUnreachable(segment)),
        }
    }

    /// Claim 21: an engine with the whole segment, for a console that a filling engine
    /// handed back. One of this station's engines when one holds a complete copy; otherwise
    /// `source`, the cheapest source of the copy still filling here, at its own station.
    pub(super) fn locate_complete(
        &mut self,
        ctx: &mut Ctx<'_>,
        publish: &Publishing,
        (segment, console): (SegmentId, PeerId),
        source: Option<SegmentLocation>,
    ) -> Result<SegmentLocation, Error> {
        publish.playable(ctx, &segment.program)?;
        let mut complete = ctx.holders(segment)?;
        complete.retain(|l| l.state == LocationState::Complete);
        let filling = (self.swapped_from).remove(&(segment, console), Instant::now());
        let own = match choose::stream_engine(&ctx.engines.views(), &complete, &Asker::default()) {
            Choice::Engine { engine, .. } => Some(engine),
            Choice::Busy | Choice::NotHere => None,
        };
        if let Some(taker) = own {
            let location = (ctx.engines).location(taker, ctx.me.peer_id, (false, true))?;
            if let Some(filling) = filling {
                self.exchange(ctx, segment, console, (taker, filling));
            }
            return Ok(location);
        }
        let mut location = source.ok_or(Error::NoWholeCopy)?;
        location.swap = true;
        Ok(location)
    }

    /// Claim 22: engine `taker` takes `console` over from the filling engine `filling`; the
    /// two engines exchange consoles when [`choose::exchange`] says that balances them.
    fn exchange(
        &mut self,
        ctx: &mut Ctx<'_>,
        segment: SegmentId,
        console: PeerId,
        (taker, filling): (EngineId, EngineId),
    ) {
        let taker_streams = ctx.engines.get(taker).map_or(0, |e| e.streams);
        let serves = self.streams.get(&taker).map_or(&[][..], Vec::as_slice);
        let Some(other) = choose::exchange(
            segment,
            console,
            (taker_streams, serves),
            ctx.engines.get(filling),
        ) else {
            return;
        };
        let handover = EngineCommand::Handover {
            segment,
            console: other,
        };
        if ctx.engines.send(taker, handover).is_ok() {
            tracing::debug!(%segment, %console, %other, %taker, %filling, "exchange: engines swap consoles");
            (self.handed).insert((segment, other), filling, Instant::now());
            ctx.activity.exchanges += 1;
        }
    }

    /// Where a console handed over in an exchange resumes the segment, once.
    fn handed_over(
        &mut self,
        ctx: &Ctx<'_>,
        segment: SegmentId,
        console: PeerId,
    ) -> Option<SegmentLocation> {
        let engine = self.handed.remove(&(segment, console), Instant::now())?;
        let peer = ctx.engines.get(engine).filter(|e| e.up)?.peer_id;
        let state = (ctx.holders(segment).ok()?.into_iter())
            .find(|l| l.engine == peer)?
            .state;
        let filling = state == LocationState::Filling;
        (ctx.engines)
            .location(engine, ctx.me.peer_id, (filling, false))
            .ok()
    }
}

/// Tells the engine a console was just sent to that the segment is coming (claim 16).
fn preload(ctx: &mut Ctx<'_>, location: &SegmentLocation, segment: SegmentId) {
    let Some((engine, _)) = ctx.engines.by_peer(&location.engine) else {
        return;
    };
    if ctx
        .engines
        .send(engine, EngineCommand::Preload { segment })
        .is_ok()
    {
        ctx.activity.preloads += 1;
    }
}
