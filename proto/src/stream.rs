//! `/vodmesh/stream/1`: an engine streams one segment to a console.
//!
//! The console opens a stream to the engine its director named, writes a [`StreamRequest`]
//! frame, and reads a [`StreamReply`] frame; after `Streaming` come the segment's bytes from
//! the requested offset to its end, raw, with the stream's own backpressure. A segment still
//! being copied in is streamed as its bytes land (claim 21).

use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::ids::{SegmentHash, SegmentId};

/// The protocol name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/vodmesh/stream/1");
/// Largest request or reply frame (a token fits easily).
pub const MAX_FRAME: usize = 16 * 1024;

/// What a console asks an engine for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRequest {
    /// The segment.
    pub segment: SegmentId,
    /// First byte wanted.
    pub offset: u64,
    /// The console's token, when the station requires one.
    pub token: Option<ByteBuf>,
    /// Where in the segment the console will start playing (a seek into it). An engine whose
    /// copy is still filling and has not reached this byte answers [`StreamReply::Swap`]
    /// instead of making the console wait for the copy (claim 21).
    #[serde(default)]
    pub play_from: u64,
}

/// The engine's answer, before any bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamReply {
    /// Bytes `offset..size` follow.
    Streaming {
        /// The segment's total size.
        size: u64,
        /// Its hash.
        hash: SegmentHash,
    },
    /// Refused; one line for the user.
    Refused(String),
    /// This engine's copy is still filling and holds only `filled` bytes, short of where the
    /// console will play: ask the director for an engine with the whole segment
    /// (`Locate { complete: true }`). The director has been told.
    Swap {
        /// Bytes received so far.
        filled: u64,
    },
    /// This engine serves `--max-streams` streams already: a wait, not a refusal. Ask the
    /// director again, naming this engine in `Locate { busy }`: it sends the console to
    /// another holder, replicates the segment onto an idle engine, or answers `Busy`.
    Busy,
    /// This engine does not hold the segment (a copy it was to receive never came, or it was
    /// dropped): ask the director again, naming this engine in `Locate { avoid }`.
    Absent,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProgramId;
    use crate::codec::{decode, encode};

    #[test]
    fn every_message_round_trips() {
        let request = StreamRequest {
            segment: SegmentId::new(ProgramId([3; 32]), 7),
            offset: 10,
            token: Some(ByteBuf::from(vec![1, 2, 3])),
            play_from: 5,
        };
        assert_eq!(
            decode::<StreamRequest>(&encode(&request), MAX_FRAME).ok(),
            Some(request)
        );
        for reply in [
            StreamReply::Streaming {
                size: 9,
                hash: SegmentHash::of(b"x"),
            },
            StreamReply::Refused("token expired".into()),
            StreamReply::Swap { filled: 4 },
            StreamReply::Busy,
            StreamReply::Absent,
        ] {
            assert_eq!(
                decode::<StreamReply>(&encode(&reply), MAX_FRAME).ok(),
                Some(reply)
            );
        }
    }
}
