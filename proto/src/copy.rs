//! `/vodmesh/copy/1`: one segment copied from a source engine to a receiving engine.
//!
//! The receiving engine (told to by its director, claim 12) opens a stream to the source
//! engine and writes a [`CopyRequest`] frame. The source answers with a [`CopyReply`] frame;
//! after [`CopyReply::Sending`] come exactly `size` raw bytes, read from the source's store as
//! they are (a still-filling segment is followed). The receiver verifies every byte against the
//! hash in the program's signed manifest, not against what the source claims.

use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

use crate::ids::{SegmentHash, SegmentId};

/// The protocol name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/vodmesh/copy/1");
/// Largest request or reply frame (a request may carry an engine token).
pub const MAX_FRAME: usize = 16 * 1024;

/// What the receiving engine asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyRequest {
    /// The segment.
    pub segment: SegmentId,
    /// The receiving engine's engine token (claims 24, 25), from the auth server.
    pub token: Option<serde_bytes::ByteBuf>,
    /// Send from this byte on: a copy that lost its source resumes from the bytes it already
    /// has (and verified as they landed) at the next source.
    #[serde(default)]
    pub offset: u64,
}

/// The source engine's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CopyReply {
    /// `size` raw bytes follow.
    Sending {
        /// Bytes that follow.
        size: u64,
        /// The hash the source has for them.
        hash: SegmentHash,
    },
    /// Refused; one line for logs.
    Refused(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};
    use crate::ids::ProgramId;

    #[test]
    fn frames_round_trip() {
        let req = CopyRequest {
            segment: SegmentId::new(ProgramId([1; 32]), 4),
            token: None,
            offset: 7,
        };
        assert_eq!(
            decode::<CopyRequest>(&encode(&req), MAX_FRAME).unwrap(),
            req
        );
        for reply in [
            CopyReply::Sending {
                size: 9,
                hash: SegmentHash::of(b"x"),
            },
            CopyReply::Refused("no".into()),
        ] {
            assert_eq!(
                decode::<CopyReply>(&encode(&reply), MAX_FRAME).unwrap(),
                reply
            );
        }
    }
}
