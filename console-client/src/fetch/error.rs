//! Why a segment fetch failed: one attempt ([`AttemptError`]) and the segment as a whole
//! ([`FetchError`]), each one line a user can act on.

use libp2p::PeerId;
use vodmesh_client::ClientError;
use vodmesh_proto::SegmentIndex;
use vodmesh_proto::director::ErrorReply;

use crate::directors::{self, AskError};

/// Why a segment could not be had. The `Display` text is the one line a user sees.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// A director answered that the segment is nowhere to be had.
    #[error("{}", .0.message)]
    NotFound(ErrorReply),
    /// A director refused (`program not published`, `token expired`, ...).
    #[error("{}", .0.message)]
    Refused(ErrorReply),
    /// The engine refused the stream; its one line (`token expired`, ...).
    #[error("{0}")]
    EngineRefused(String),
    /// The manifest has no such segment.
    #[error("the manifest has no segment {0}")]
    NoSegment(SegmentIndex),
    /// An engine offers other bytes than the manifest's.
    #[error("engine {engine} offers segment {index} that does not match the manifest")]
    Mismatch {
        /// The engine.
        engine: PeerId,
        /// The segment.
        index: SegmentIndex,
    },
    /// A director or an engine answered something the protocol does not allow here.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
    /// Attempts kept failing without a byte or anything learned: the last one's reason, and
    /// what to do.
    #[error("segment {index} could not be fetched: {last}; {}", last.advice())]
    GaveUp {
        /// The segment.
        index: SegmentIndex,
        /// How the last attempt ended.
        last: AttemptError,
    },
}

/// Why one attempt at a segment ended without it (the segment is tried again, and this is
/// what a user sees when it is given up). Its `Display` is a plain line; what the transport
/// said is kept (`Debug`, the debug log), not shown.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// No director answered.
    #[error("{0}")]
    Ask(AskError),
    /// A director answered busy or failed; its one line.
    #[error("{}", .0.message)]
    Director(ErrorReply),
    /// No stream to the engine named could be opened.
    #[error("engine {engine} could not be reached ({})", directors::client_line(.cause))]
    Unreachable {
        /// The engine.
        engine: PeerId,
        /// What the connection said.
        cause: ClientError,
    },
    /// Another fetch of this console found the engine named unreachable meanwhile.
    #[error("engine {0} was found unreachable")]
    Avoided(PeerId),
    /// The engine did not answer the stream request within [`READ_STALL`].
    #[error("engine {0} did not answer")]
    NoAnswer(PeerId),
    /// The stream's request or reply was lost on the way.
    #[error("the stream from engine {engine} closed before it began")]
    Lost {
        /// The engine.
        engine: PeerId,
        /// What the stream said.
        cause: std::io::Error,
    },
    /// The engine a director named for a swap (claim 21) is still filling its copy too.
    #[error("engine {0}, named for a swap, is still filling its copy")]
    SwapFilling(PeerId),
    /// The engine is at `--max-streams`.
    #[error("engine {0} is busy")]
    Busy(PeerId),
    /// The engine does not hold the segment.
    #[error("engine {0} does not hold it")]
    Absent(PeerId),
    /// The stream broke off.
    #[error("the stream from engine {engine} broke off at byte {at}")]
    BrokeOff {
        /// The engine.
        engine: PeerId,
        /// Bytes received in all.
        at: u64,
        /// The read error.
        cause: std::io::Error,
    },
    /// The stream brought no byte for [`READ_STALL`].
    #[error("engine {0} stopped sending")]
    Stalled(PeerId),
    /// The stream ended before the segment did.
    #[error("the stream from engine {engine} ended early at byte {at}")]
    EndedEarly {
        /// The engine.
        engine: PeerId,
        /// Bytes received in all.
        at: u64,
    },
    /// The bytes did not match the manifest's hash; none of them is written.
    #[error("the bytes from engine {0} failed verification")]
    Unverified(PeerId),
    /// In verified mode, a chunk group (or a node of the segment's tree) did not match the
    /// manifest's hash: the engine is left at once, at that group, not at the segment's end.
    #[error("engine {engine} sent bytes that fail verification ({cause})")]
    Forged {
        /// The engine.
        engine: PeerId,
        /// Which bytes.
        cause: vodmesh_proto::verified::VerifyError,
    },
    /// The attempt took longer than its limit.
    #[error("the attempt timed out")]
    TimedOut,
}

impl AttemptError {
    /// What a user can do when a segment was given up after this.
    fn advice(&self) -> &'static str {
        match self {
            Self::Ask(_) => "check that the stations run and are reachable, then play again",
            Self::Director(_) => "the swarm is short of capacity: play again later",
            _ => "no other holder answered: play again later, or from another station (--node)",
        }
    }
}

impl From<AskError> for AttemptError {
    fn from(e: AskError) -> Self {
        Self::Ask(e)
    }
}
