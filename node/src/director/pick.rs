//! Which of a station's engines: the one rule behind every choice the director makes
//! (claims 18-20), as plain functions of the engines' state (up, streams, `--max-streams`)
//! and a segment's holders. An engine serves a console when it is up, holds the segment, was
//! not found unreachable by that console, and has a slot free for it; among those a complete
//! copy goes before a filling one, then the fewest streams.

use std::collections::HashMap;

use libp2p::PeerId;
use vodmesh_proto::station::EngineInfo;

use crate::store::locations::{Location, LocationState};

/// What the director knows of the console asking.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Asker<'a> {
    /// Engines the console could not reach or that lack the segment: no holders to it.
    pub(super) avoid: &'a [PeerId],
    /// Engines that answered it busy: alive holders without a slot for it now.
    pub(super) busy: &'a [PeerId],
    /// Streams the console holds on each engine. They count as free to it: a console takes
    /// an engine in turn, so it waits for its own stream rather than need a second slot.
    pub(super) own: Option<&'a HashMap<PeerId, u32>>,
}

/// Where a console asking for a segment can be sent in this station.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Choice {
    /// To the engine at this index; `filling`: its copy is still arriving.
    Engine {
        /// The engine's index in the station.
        index: usize,
        /// Its copy is still filling.
        filling: bool,
    },
    /// Held by an engine that is up, but none has a slot free for this console.
    Busy,
    /// No engine here that is up and not avoided holds it.
    NotHere,
}

/// The up engine with `peer` and its index.
fn up<'e>(engines: &'e [Option<EngineInfo>], peer: &PeerId) -> Option<(usize, &'e EngineInfo)> {
    engines.iter().enumerate().find_map(|(i, e)| {
        e.as_ref()
            .filter(|e| e.peer_id == *peer && e.up)
            .map(|e| (i, e))
    })
}

/// The engine to stream a segment held by `holders` to the console `asker` (claim 18).
pub(super) fn stream_engine(
    engines: &[Option<EngineInfo>],
    holders: &[Location],
    asker: &Asker<'_>,
) -> Choice {
    let mut held = false;
    let mut best: Option<((bool, u32), usize)> = None;
    for holder in holders {
        if asker.avoid.contains(&holder.engine) {
            continue;
        }
        let Some((index, engine)) = up(engines, &holder.engine) else {
            continue;
        };
        held = true;
        let own = asker
            .own
            .and_then(|o| o.get(&holder.engine))
            .copied()
            .unwrap_or(0);
        let streams = engine.streams.saturating_sub(own);
        if asker.busy.contains(&holder.engine) || streams >= engine.max_streams {
            continue;
        }
        let key = (holder.state != LocationState::Complete, streams);
        if best.is_none_or(|(k, _)| key < k) {
            best = Some((key, index));
        }
    }
    match best {
        Some(((filling, _), index)) => Choice::Engine { index, filling },
        None if held => Choice::Busy,
        None => Choice::NotHere,
    }
}

/// An engine to take a copy of a segment of `size` bytes (a miss, an overload replication;
/// 0 when the size is not known here): up, a slot free for the console it will serve, not
/// holding the segment, not in `exclude`, room for the copy (what eviction may free counts:
/// the copy is a cache like the segments it would push out); the fewest streams.
pub(super) fn idle_engine(
    engines: &[Option<EngineInfo>],
    holders: &[Location],
    exclude: &[PeerId],
    size: u64,
) -> Option<usize> {
    engines
        .iter()
        .enumerate()
        .filter_map(|(i, e)| Some((i, e.as_ref()?)))
        .filter(|(_, e)| e.up && e.streams < e.max_streams && !exclude.contains(&e.peer_id))
        .filter(|(_, e)| holders.iter().all(|l| l.engine != e.peer_id))
        .filter(|(_, e)| e.room_for_copies().is_none_or(|room| room >= size))
        .min_by_key(|(_, e)| e.streams)
        .map(|(i, _)| i)
}

/// An engine of the station to copy a segment from: a complete copy, up, not in `avoid`. A
/// busy one will do: copies do not take stream slots.
pub(super) fn copy_source(
    engines: &[Option<EngineInfo>],
    holders: &[Location],
    avoid: &[PeerId],
) -> Option<usize> {
    holders
        .iter()
        .filter(|l| l.state == LocationState::Complete && !avoid.contains(&l.engine))
        .find_map(|l| up(engines, &l.engine).map(|(i, _)| i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(streams: u32, max_streams: u32, up: bool) -> Option<EngineInfo> {
        Some(EngineInfo {
            peer_id: PeerId::random(),
            addrs: vec![],
            streams,
            max_streams,
            used: 0,
            capacity: 0,
            up,
            disks: vec![],
        })
    }

    fn peer(engines: &[Option<EngineInfo>], i: usize) -> PeerId {
        engines[i]
            .as_ref()
            .map(|e| e.peer_id)
            .unwrap_or(PeerId::random())
    }

    fn held(engines: &[Option<EngineInfo>], at: &[(usize, LocationState)]) -> Vec<Location> {
        at.iter()
            .map(|(i, state)| Location {
                engine: peer(engines, *i),
                state: *state,
                load: 0,
            })
            .collect()
    }

    use LocationState::{Complete, Filling};

    #[test]
    fn the_least_loaded_complete_holder_that_is_up_serves() {
        let engines = [engine(3, 8, true), engine(1, 8, true), engine(0, 8, false)];
        let holders = held(&engines, &[(0, Complete), (1, Complete), (2, Complete)]);
        assert_eq!(
            stream_engine(&engines, &holders, &Asker::default()),
            Choice::Engine {
                index: 1,
                filling: false
            }
        );
        // A complete copy goes before an idler filling one.
        let holders = held(&engines, &[(0, Complete), (1, Filling)]);
        assert_eq!(
            stream_engine(&engines, &holders, &Asker::default()),
            Choice::Engine {
                index: 0,
                filling: false
            }
        );
    }

    #[test]
    fn full_or_busy_holders_are_busy_and_avoided_or_down_ones_are_not_holders() {
        let engines = [engine(2, 2, true), engine(0, 2, true), engine(0, 2, false)];
        let holders = held(&engines, &[(0, Complete), (1, Complete)]);
        let busy = [peer(&engines, 1)];
        let asker = Asker {
            busy: &busy,
            ..Default::default()
        };
        assert_eq!(stream_engine(&engines, &holders, &asker), Choice::Busy);
        let avoid = [peer(&engines, 1)];
        let asker = Asker {
            avoid: &avoid,
            ..Default::default()
        };
        assert_eq!(stream_engine(&engines, &holders, &asker), Choice::Busy);
        let avoid = [peer(&engines, 0), peer(&engines, 1)];
        let asker = Asker {
            avoid: &avoid,
            ..Default::default()
        };
        assert_eq!(stream_engine(&engines, &holders, &asker), Choice::NotHere);
        let holders = held(&engines, &[(2, Complete)]);
        assert_eq!(
            stream_engine(&engines, &holders, &Asker::default()),
            Choice::NotHere
        );
    }

    #[test]
    fn a_console_s_own_streams_leave_it_the_engine_in_turn() {
        // At --max-streams 1 and streaming to this console already: still its engine.
        let engines = [engine(1, 1, true)];
        let holders = held(&engines, &[(0, Complete)]);
        let own = HashMap::from([(peer(&engines, 0), 1)]);
        let mine = Asker {
            own: Some(&own),
            ..Default::default()
        };
        assert_eq!(
            stream_engine(&engines, &holders, &mine),
            Choice::Engine {
                index: 0,
                filling: false
            }
        );
        // Another console finds it busy.
        assert_eq!(
            stream_engine(&engines, &holders, &Asker::default()),
            Choice::Busy
        );
    }

    #[test]
    fn copies_go_to_idle_non_holders_and_come_from_complete_holders() {
        let engines = [
            engine(1, 1, true),
            engine(0, 1, false),
            engine(0, 4, true),
            engine(2, 4, true),
            engine(0, 4, true),
        ];
        let holders = held(&engines, &[(0, Complete), (4, Filling)]);
        // Engine 2: up, free, holds nothing (1 is down, 3 busier, 4 holds it).
        assert_eq!(idle_engine(&engines, &holders, &[], 0), Some(2));
        assert_eq!(
            idle_engine(&engines, &holders, &[peer(&engines, 2)], 0),
            Some(3)
        );
        // The source may be busy, never filling, down or avoided.
        assert_eq!(copy_source(&engines, &holders, &[]), Some(0));
        assert_eq!(copy_source(&engines, &holders, &[peer(&engines, 0)]), None);
    }
}
