//! The blade controller: the in-process channels between a station's director and its engines.
//!
//! Engines are separate libp2p peers, but they run in the station's process, so the director
//! and its engines talk over bounded channels rather than the network: engines report
//! ([`EngineReport`]), the director commands ([`EngineCommand`]).

use std::fmt;

use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;
use vodmesh_proto::director::Activity;
use vodmesh_proto::{ProgramId, SegmentHash, SegmentId};

/// An engine of a station: its place among the station's engines (in-process engines first,
/// then the `--engine-peer` slots). An engine process numbers itself 0; its director's
/// backplane gives its reports the id of its slot.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct EngineId(pub usize);

impl fmt::Display for EngineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What an engine tells its director (also carried over `/vodmesh/blade/1` from an engine
/// in a process of its own, see [`crate::blade`]): which engine, and what happened.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct EngineReport {
    /// The engine that reports.
    pub engine: EngineId,
    /// What it reports.
    pub event: EngineEvent,
}

impl EngineReport {
    /// `event` of `engine`.
    pub fn new(engine: EngineId, event: EngineEvent) -> Self {
        Self { engine, event }
    }

    /// Counts this report into `activity`: streams taken over and stopped, swaps asked,
    /// token refusals. The one place reports become counters: a director counts its engines'
    /// reports with it, an engine process its own (for `vodmesh-node engine --metrics`).
    pub fn count(&self, activity: &mut Activity) {
        match self.event {
            EngineEvent::TookOver { .. } => activity.takeovers += 1,
            EngineEvent::Stopped { complete: true, .. } => activity.stops_complete += 1,
            EngineEvent::Stopped {
                complete: false, ..
            } => activity.stops_early += 1,
            EngineEvent::SwapAsked { .. } => activity.swaps += 1,
            EngineEvent::Refused { copy: true } => activity.refused_copies += 1,
            EngineEvent::Refused { copy: false } => activity.refused_streams += 1,
            EngineEvent::Ready { .. }
            | EngineEvent::Stored { .. }
            | EngineEvent::Dropped { .. }
            | EngineEvent::Streams { .. }
            | EngineEvent::Usage { .. }
            | EngineEvent::Limits { .. }
            | EngineEvent::Down => {}
        }
    }
}

/// What happened at an engine.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum EngineEvent {
    /// The engine listens and is ready to serve.
    Ready {
        /// The engine's peer id.
        peer_id: PeerId,
        /// Where it listens.
        addrs: Vec<Multiaddr>,
        /// Where it serves HTTP (`--http`), if it does (absent from engines of earlier
        /// releases).
        #[serde(default)]
        http: Option<std::net::SocketAddr>,
        /// Whether it serves `http` over TLS (`--tls-cert`).
        #[serde(default)]
        https: bool,
        /// Where it takes bulk connections from consoles (`net::bulk`), if it does.
        #[serde(default)]
        bulk: Option<std::net::SocketAddr>,
    },
    /// A segment was stored, verified and committed.
    Stored {
        /// The segment.
        segment: SegmentId,
        /// Its size.
        size: u64,
    },
    /// A segment is gone (found corrupt, or evicted).
    Dropped {
        /// The segment.
        segment: SegmentId,
    },
    /// The number of streams this engine serves changed.
    Streams {
        /// Streams being served now.
        active: u32,
    },
    /// A console started streaming a segment from this engine (the new engine has taken
    /// over, claim 17).
    TookOver {
        /// The segment.
        segment: SegmentId,
        /// The console.
        console: PeerId,
    },
    /// A stream ended (claim 17): the whole segment was sent, or the console went away.
    Stopped {
        /// The segment.
        segment: SegmentId,
        /// The console.
        console: PeerId,
        /// Bytes sent.
        bytes: u64,
        /// Whether the stream reached the segment's end.
        complete: bool,
    },
    /// A console sought past what this engine's filling copy holds; it was told to ask the
    /// director for an engine with the whole segment (claim 21).
    SwapAsked {
        /// The segment.
        segment: SegmentId,
        /// The console.
        console: PeerId,
        /// Bytes of the segment received so far.
        filled: u64,
    },
    /// A request was refused for want of a valid token (counted by the director).
    Refused {
        /// A copy (engine token) rather than a stream (console token).
        copy: bool,
    },
    /// What the engine stores, per disk (sent every few seconds while it changes).
    Usage {
        /// Per disk.
        disks: Vec<vodmesh_proto::station::DiskUsage>,
    },
    /// The engine's own limits, when they are not the station's (an engine process has its
    /// own `--max-streams` and `--capacity`).
    Limits {
        /// Concurrent streams at most.
        max_streams: u32,
        /// Bytes it may store (0: bounded by its disks).
        capacity: u64,
    },
    /// The engine stopped.
    Down,
}

/// A segment an engine should accept from a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Expected {
    /// The peer allowed to push it.
    pub from: PeerId,
    /// Its hash.
    pub hash: SegmentHash,
    /// Its size.
    pub size: u64,
}

/// An engine a segment can be copied from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Source {
    /// The source engine.
    pub engine: PeerId,
    /// Its addresses.
    pub addrs: Vec<Multiaddr>,
    /// Where it takes bulk connections (`vodmesh_proto::net::bulk`), when it does: the copy
    /// goes over one of those rather than a libp2p stream.
    #[serde(default)]
    pub bulk: Option<std::net::SocketAddr>,
}

/// A finished copy: who sent the bytes and how fast, for the cost of the next copy (claim 15).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Copied {
    /// The source that sent the last bytes.
    pub source: PeerId,
    /// Bytes that source sent.
    pub bytes: u64,
    /// How long it took to send them.
    pub elapsed: std::time::Duration,
    /// Sources that failed before it.
    pub failovers: u32,
    /// Sources whose bytes failed verification on the way (the copy dropped them and started
    /// again from the next source): the director costs them more for a while.
    #[serde(default)]
    pub corrupt: Vec<PeerId>,
}

/// Why an engine's copy ([`EngineCommand::Fetch`]) brought no segment, as its director hears
/// it (over the backplane too, from an engine process).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum FetchFailed {
    /// The engine stopped, or its link to the director dropped, before it told the outcome.
    #[error("the engine stopped before the copy ended")]
    EngineStopped,
    /// The director named no source.
    #[error("no source to copy from")]
    NoSource,
    /// The engine's own store refused the segment or failed: no source can help.
    #[error("{0}")]
    Store(String),
    /// Every source failed; how the last one did, in the engine's words.
    #[error("{0}")]
    AtEverySource(String),
}

/// What came of a copy: where its bytes came from, or why there are none.
pub type Fetched = Result<Copied, FetchFailed>;

/// What a director tells one of its engines.
#[derive(Clone, Debug)]
pub enum EngineCommand {
    /// Accept these segments, pushed over `/vodmesh/ingest/1` by the named peer.
    Expect {
        /// The segments.
        segments: Vec<(SegmentId, Expected)>,
    },
    /// A console will ask for this segment next: read it ahead (claim 16).
    Preload {
        /// The segment.
        segment: SegmentId,
    },
    /// Keep these segments forever (the home station never evicts).
    Pin {
        /// The segments.
        segments: Vec<SegmentId>,
    },
    /// Copy a segment from another engine over `/vodmesh/copy/1` (claims 12, 19), verify it,
    /// store it, report [`EngineReport::Stored`], and send the outcome on `done`.
    Fetch {
        /// The segment.
        segment: SegmentId,
        /// Its hash and size in the signed manifest, which the copy is verified against.
        /// `None` only for a sibling engine of the same station (overload replication): the
        /// source verified the segment when it stored it, and its hash is taken as given.
        expect: Option<(SegmentHash, u64)>,
        /// The engines to copy from, cheapest first: a source that fails mid-copy is
        /// replaced by the next, which sends from the first byte not yet received.
        sources: Vec<Source>,
        /// Mark the copy evictable (another station, the home, keeps the program).
        held_elsewhere: bool,
        /// Where the outcome goes.
        done: mpsc::Sender<(SegmentId, Fetched)>,
    },
    /// Take the engine out of service: it stops serving and copying, and reports `Down`.
    Stop,
    /// Claim 22: end the stream of `segment` to `console` early, so that the console resumes
    /// it at another engine (the director has told it which); the engines exchange consoles.
    Handover {
        /// The segment.
        segment: SegmentId,
        /// The console.
        console: PeerId,
    },
    /// Let these peers (engines of a live station, checked by the director) copy segments
    /// from this engine until `until_ms`.
    AllowCopy {
        /// The engines.
        peers: Vec<PeerId>,
        /// Until when (ms since the epoch).
        until_ms: u64,
    },
    /// Drop these segments (an ingest that never committed): forget their announcements,
    /// remove those stored, and report each one [`EngineReport::Dropped`].
    Remove {
        /// The segments.
        segments: Vec<SegmentId>,
    },
    /// Stream no byte of `program` before `at_ms` (ms since the epoch; `u64::MAX`: not until
    /// told again, `0`: it is published).
    PublishAt {
        /// The program.
        program: ProgramId,
        /// When it becomes playable.
        at_ms: u64,
    },
}
