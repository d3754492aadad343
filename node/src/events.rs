//! Content events (distribution, publish, misses and copies), for tests and observers in this
//! process.
//!
//! Every step of the claim-12 sequence and of publishing is logged as a `tracing` event and
//! also sent on a process-wide bounded broadcast channel, so an integration test that runs
//! several stations in one process can assert the order of the messages.

use std::sync::OnceLock;

use libp2p::PeerId;
use tokio::sync::broadcast;
use vodmesh_proto::ProgramId;

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
}

/// One event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The peer that acted (a director or an engine).
    pub peer: PeerId,
    /// The program.
    pub program: ProgramId,
    /// The segment, when there is one.
    pub segment: Option<u32>,
    /// What happened.
    pub kind: Kind,
}

fn bus() -> &'static broadcast::Sender<Event> {
    static BUS: OnceLock<broadcast::Sender<Event>> = OnceLock::new();
    BUS.get_or_init(|| broadcast::channel(16 * 1024).0)
}

/// Receives every event emitted from now on in this process.
pub fn subscribe() -> broadcast::Receiver<Event> {
    bus().subscribe()
}

/// Logs and broadcasts an event.
pub(crate) fn emit(peer: PeerId, program: ProgramId, segment: Option<u32>, kind: Kind) {
    tracing::info!(%peer, program = %program.short(), ?segment, ?kind, "content event");
    let _ = bus().send(Event {
        peer,
        program,
        segment,
        kind,
    });
}
