//! `/vodmesh/copy/1`: one segment copied from a source engine to a receiving engine.
//!
//! The receiving engine (told to by its director, claim 12) opens a stream to the source
//! engine and writes a [`CopyRequest`] frame. The source answers with a [`CopyReply`] frame;
//! after [`CopyReply::Sending`] come the bytes from the requested offset to the segment's end,
//! raw, read from the source's store as they are (a still-filling segment is followed). The
//! receiver verifies every byte against the hash in the program's signed manifest, not against
//! what the source claims.
//!
//! Asked for with [`CopyRequest::verified`], a source that holds the segment's tree answers
//! [`CopyReply::Verified`] instead: the segment's group leaves come first
//! ([`leaves_len`] bytes, the chaining values of its 16 KiB chunk groups,
//! [`crate::verified::Leaves`]), then the same raw bytes. The receiver checks the leaves
//! against the manifest's hash (their tree's root) before any byte, then each group as it
//! lands: a wrong byte costs one group, not the segment, the groups before it are kept for the
//! next source to resume after, and the copy still filling can be streamed to consoles in
//! verified mode (the leaves give the whole tree at once). Leaves first rather than the
//! pre-order stream of `/vodmesh/stream/1`: a receiver that serves what it is still receiving
//! needs the whole tree before the bytes, not the nodes along the way.

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
    /// Answer [`CopyReply::Verified`] where the source holds the segment's tree (a source of
    /// an older version ignores it and answers [`CopyReply::Sending`]).
    #[serde(default)]
    pub verified: bool,
}

/// Bytes of the leaves that follow [`CopyReply::Verified`] for a segment of `size` bytes: one
/// 32-byte chaining value per 16 KiB group, at most 512 KiB for the largest segment.
pub fn leaves_len(size: u64) -> u64 {
    crate::verified::groups(size) * 32
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
    /// Verified mode (asked for with [`CopyRequest::verified`]): the segment's leaves
    /// ([`leaves_len`]`(size)` bytes) follow, then its raw bytes from the requested offset.
    Verified {
        /// The segment's total size.
        size: u64,
        /// The hash the source has for it: the root of the leaves' tree.
        hash: SegmentHash,
    },
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
            verified: true,
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
            CopyReply::Verified {
                size: 9,
                hash: SegmentHash::of(b"x"),
            },
        ] {
            assert_eq!(
                decode::<CopyReply>(&encode(&reply), MAX_FRAME).unwrap(),
                reply
            );
        }
    }

    #[test]
    fn a_request_of_an_older_engine_asks_for_raw_bytes() {
        /// A copy request as engines sent it before verified copies.
        #[derive(Serialize)]
        struct Older {
            segment: SegmentId,
            token: Option<serde_bytes::ByteBuf>,
            offset: u64,
        }
        let segment = SegmentId::new(ProgramId([1; 32]), 4);
        let older = encode(&Older {
            segment,
            token: None,
            offset: 7,
        });
        let req = decode::<CopyRequest>(&older, MAX_FRAME).unwrap();
        assert_eq!((req.segment, req.offset, req.verified), (segment, 7, false));
    }

    #[test]
    fn the_leaves_of_the_largest_segment_are_half_a_mebibyte() {
        use crate::manifest::MAX_SEGMENT_SIZE;
        assert_eq!(leaves_len(MAX_SEGMENT_SIZE), 512 * 1024);
        assert_eq!(leaves_len(1), 32);
        assert_eq!(leaves_len(16 * 1024 + 1), 64);
    }
}
