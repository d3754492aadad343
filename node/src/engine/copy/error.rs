//! Why a copy, or one attempt of it at one source, failed, and what the copy does next.

use libp2p::PeerId;

use crate::control::FetchFailed;
use crate::store;

/// Why a copy failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CopyError {
    /// The local store refused the segment or failed: no source can help.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The director named no source.
    #[error("no source to copy from")]
    NoSource,
    /// Every source failed; this is how the last one did.
    #[error(transparent)]
    Sources(Attempt),
}

impl From<CopyError> for FetchFailed {
    /// What the director hears: the kind of failure, with the engine's own line.
    fn from(e: CopyError) -> Self {
        match e {
            CopyError::NoSource => Self::NoSource,
            CopyError::Store(e) => Self::Store(e.to_string()),
            CopyError::Sources(last) => Self::AtEverySource(last.to_string()),
        }
    }
}

/// Why one attempt at one source failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Attempt {
    /// No stream to the source (its queue of copy streams is full, or it is gone).
    #[error("cannot open a copy stream to {peer}: {source}")]
    Open {
        /// The source.
        peer: PeerId,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The request did not go out.
    #[error("copy request not sent: {0}")]
    Request(#[source] std::io::Error),
    /// The source sent no reply in time.
    #[error("no copy reply in time")]
    NoReply,
    /// The reply did not arrive whole.
    #[error("no copy reply: {0}")]
    Reply(#[source] std::io::Error),
    /// The source refused, in its own words.
    #[error("source refused: {0}")]
    Refused(String),
    /// The source offers another size than the manifest says.
    #[error("source offers {offered} bytes, the manifest says {expected}")]
    WrongSize {
        /// What it offers.
        offered: u64,
        /// What the manifest says.
        expected: u64,
    },
    /// A sibling's offer is larger than any segment.
    #[error("source offers {0} bytes, more than a segment")]
    TooLarge(u64),
    /// The source went silent mid-copy (a dead link, a partition).
    #[error("source stalled at byte {0}")]
    Stalled(u64),
    /// The stream broke mid-copy.
    #[error("stream ended at byte {at}: {source}")]
    Cut {
        /// Bytes received before.
        at: u64,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The local store failed.
    #[error(transparent)]
    Store(store::Error),
    /// The source sent wrong bytes: in a verified copy leaves that do not lead to the
    /// manifest's hash (nothing kept) or a group that is not its leaf (the groups before it
    /// kept, the next source resumes after them); else bytes that, whole, do not hash to what
    /// the manifest says (all dropped, the copy starts again from the next source).
    #[error("the bytes of {0} failed verification")]
    Corrupt(PeerId),
}

/// What a copy does after a failed attempt.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// Ask the same source again (the stream broke; the source may be fine).
    Retry,
    /// Go to the next source (this one said no, or went silent).
    Move,
    /// Stop: no source can help.
    GiveUp,
}

impl Attempt {
    pub(super) fn next(&self) -> Next {
        match self {
            Attempt::Request(_) | Attempt::Reply(_) | Attempt::Cut { .. } => Next::Retry,
            // `open` retried already, for as long as the source is given.
            Attempt::Open { .. }
            | Attempt::NoReply
            | Attempt::Refused(_)
            | Attempt::WrongSize { .. }
            | Attempt::TooLarge(_)
            | Attempt::Stalled(_)
            | Attempt::Corrupt(_) => Next::Move,
            Attempt::Store(_) => Next::GiveUp,
        }
    }
}
