//! What happens in a station, step by step (distribution, publish, misses and copies), for
//! tests and observers.
//!
//! Every step of the claim-12 sequence and of publishing is logged as a `tracing` event and
//! also sent to the station's [`Observer`], fed by its director and its engines:
//! [`crate::Station::subscribe`] hands out receivers. Nothing here is process-wide: each
//! station has an observer of its own. Tests that follow a sequence across several stations
//! in one process give them one shared sink ([`crate::Station::send_events_to`]), which holds
//! their events in the order they happened.

use std::sync::Arc;

use libp2p::PeerId;
use tokio::sync::{broadcast, watch};
use vodmesh_proto::{ProgramId, SegmentId, SegmentIndex};

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The content manager told director `target` to replicate the program.
    ReplicateSent {
        /// The target station's director.
        target: PeerId,
    },
    /// A director was told to replicate the program from `source`.
    ReplicateReceived {
        /// The source director.
        source: PeerId,
    },
    /// The seeking director fetched and verified the signed manifest.
    ManifestVerified,
    /// The seeking director asked the source director where a segment is.
    LocateAsked,
    /// The source director named the engine (as seen by the seeking director).
    Located {
        /// The source engine.
        engine: PeerId,
    },
    /// A director filling a miss chose the cheapest holding station to copy from.
    SourceChosen {
        /// The source station's director.
        station: PeerId,
        /// Its engine.
        engine: PeerId,
    },
    /// The seeking director told one of its engines to fetch the segment.
    FetchDirected {
        /// Its engine.
        engine: PeerId,
    },
    /// A source engine served a copy.
    CopyServed {
        /// The receiving engine.
        to: PeerId,
    },
    /// A copy that lost its source asked the next one for the rest.
    CopyResumed {
        /// The new source engine.
        from: PeerId,
        /// The first byte asked for: what had arrived (and was hashed) before.
        offset: u64,
    },
    /// The receiving engine stored and verified the copy.
    Copied {
        /// The source engine.
        from: PeerId,
    },
    /// The director entered the copy in its location table (copy-done).
    Tabled,
    /// The director provided `program/<id>` in the registry.
    Provided,
    /// Every segment of the program is on this station.
    ReplicaComplete,
    /// The content manager published the program.
    Published,
    /// A director learned a new catalog record (state) of the program.
    Learned,
    /// A copy of the segment dropped the bytes of `station` (they failed verification): the
    /// director costs it more, and skips it while another holder is there, for a while.
    SourcePenalised {
        /// The lying station's director.
        station: PeerId,
        /// Its copies that failed verification lately, this one included.
        failures: u32,
    },
    /// The content manager ended the program's distribution: `placed` of the `wanted`
    /// replicas went to stations that took them (the others declined, or did not answer, or
    /// there were too few stations with room).
    ReplicasPlaced {
        /// `--replicas`.
        wanted: u32,
        /// Stations that took one.
        placed: u32,
    },
}

/// One event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The peer that acted (a director or an engine).
    pub peer: PeerId,
    /// The program.
    pub program: ProgramId,
    /// The segment, when there is one.
    pub segment: Option<SegmentIndex>,
    /// What happened.
    pub kind: Kind,
}

/// Events a receiver may fall behind by before it loses the oldest: a 64 MiB replication
/// is a few hundred.
const BACKLOG: usize = 16 * 1024;

/// A channel several stations can send their events to ([`crate::Station::send_events_to`]).
pub fn sink() -> broadcast::Sender<Event> {
    broadcast::channel(BACKLOG).0
}

/// Where a station's director and engines send their events: the station's own subscribers,
/// and the shared sinks it was given. A cheap handle; clones send to the same places.
#[derive(Clone, Debug)]
pub struct Observer {
    own: broadcast::Sender<Event>,
    /// Shared sinks, added while the station runs.
    sinks: Arc<watch::Sender<Vec<broadcast::Sender<Event>>>>,
}

impl Default for Observer {
    fn default() -> Self {
        Self::new()
    }
}

impl Observer {
    /// An observer nobody listens to yet.
    pub fn new() -> Self {
        Self {
            own: sink(),
            sinks: Arc::new(watch::channel(Vec::new()).0),
        }
    }

    /// Receives every event sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.own.subscribe()
    }

    /// Also sends every event from now on to `sink`.
    pub fn send_to(&self, sink: &broadcast::Sender<Event>) {
        self.sinks.send_modify(|sinks| sinks.push(sink.clone()));
    }

    /// Logs and sends an event about a whole program.
    pub(crate) fn program(&self, peer: PeerId, program: ProgramId, kind: Kind) {
        self.emit(Event {
            peer,
            program,
            segment: None,
            kind,
        });
    }

    /// Logs and sends an event about one segment.
    pub(crate) fn segment(&self, peer: PeerId, segment: SegmentId, kind: Kind) {
        self.emit(Event {
            peer,
            program: segment.program,
            segment: Some(segment.index),
            kind,
        });
    }

    fn emit(&self, event: Event) {
        tracing::info!(peer = %event.peer, program = %event.program.short(), segment = ?event.segment, kind = ?event.kind, "content event");
        for sink in self.sinks.borrow().iter() {
            let _ = sink.send(event.clone());
        }
        // Nobody subscribed is no error: the event was logged.
        let _ = self.own.send(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_and_shared_sinks_hear_events_in_order() -> anyhow::Result<()> {
        let (a, b) = (Observer::new(), Observer::new());
        let mut own = a.subscribe();
        let shared = sink();
        a.send_to(&shared);
        b.send_to(&shared);
        let mut all = shared.subscribe();
        let program = ProgramId([1; 32]);
        let (pa, pb) = (PeerId::random(), PeerId::random());
        a.program(pa, program, Kind::Published);
        b.segment(pb, SegmentId::new(program, 3), Kind::Tabled);
        a.program(pa, program, Kind::Provided);
        assert_eq!(own.recv().await?.kind, Kind::Published);
        assert_eq!(own.recv().await?.kind, Kind::Provided);
        let heard: Vec<(PeerId, Option<SegmentIndex>, Kind)> = (0..3)
            .map(|_| all.try_recv().map(|e| (e.peer, e.segment, e.kind)))
            .collect::<Result<_, _>>()?;
        assert_eq!(
            heard,
            vec![
                (pa, None, Kind::Published),
                (pb, Some(SegmentIndex(3)), Kind::Tabled),
                (pa, None, Kind::Provided),
            ]
        );
        // Another station's observer sends nothing to `a`'s subscribers.
        assert!(own.try_recv().is_err());
        Ok(())
    }
}
