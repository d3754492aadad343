//! `/vodmesh/stream/1`: an engine streams one segment to a console.
//!
//! The console opens a stream to the engine its director named, writes a [`StreamRequest`]
//! frame, and reads a [`StreamReply`] frame; after `Streaming` come the segment's bytes from
//! the requested offset to its end, raw, with the stream's own backpressure. A segment still
//! being copied in is streamed as its bytes land (claim 21).
//!
//! Verified mode ([`StreamRequest::verified`]): an engine that holds the segment complete
//! answers [`StreamReply::Verified`] instead and sends, from the start of the 16 KiB chunk
//! group that holds the offset, the segment's BLAKE3 tree in pre-order with the data
//! ([`crate::verified`]), so the console checks and hands out each group as it arrives. A copy
//! still filling is streamed so too when its tree came before its bytes (a verified copy,
//! [`crate::copy::CopyReply::Verified`]), each group as it lands; one without a tree (copied
//! from an engine of an older version) is answered `Streaming` with raw bytes, which the
//! console checks against the segment hash at the end.

use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::ids::{SegmentHash, SegmentId};

/// The protocol name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/vodmesh/stream/1");
/// Largest request or reply frame (a token fits easily).
pub const MAX_FRAME: usize = 16 * 1024;
/// Streams an engine serves one peer at once, at most; past this, it answers busy. A console
/// at `--speed max` keeps up to eight segments in flight, all at one engine where only one
/// holds them, and a fetch ahead that waits for the player keeps its stream open wherever the
/// link's buffers do not take the rest of its segment (over libp2p, yamux's window): the share
/// is twice that, so a console never meets it by itself (`vodmesh-console` checks its window
/// against it). With a share of four, a program of 2 MiB segments on one engine played at
/// `--speed max` over libp2p waited 30 s at a time: the fetches of later segments took each
/// stream the refused one freed, then waited for the player, until the engine cut them.
pub const MAX_STREAMS_PER_PEER: usize = 16;

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
    /// Asks for verified mode: [`StreamReply::Verified`] and the stream of
    /// [`crate::verified::plan`], when the engine can. Absent (an older console): raw bytes.
    #[serde(default)]
    pub verified: bool,
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
    /// Verified mode (asked for with [`StreamRequest::verified`]): the segment's tree and
    /// bytes follow in the order of [`crate::verified::plan`]`(size, offset)`, from `from`,
    /// the start of the chunk group holding the requested offset.
    Verified {
        /// The segment's total size.
        size: u64,
        /// Its hash: the tree's root.
        hash: SegmentHash,
        /// The first byte of the first group sent.
        from: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProgramId;
    use crate::codec::{decode, encode};

    #[test]
    fn a_request_from_an_older_console_asks_for_raw_bytes() {
        #[derive(Serialize)]
        struct Old {
            segment: SegmentId,
            offset: u64,
            token: Option<ByteBuf>,
            play_from: u64,
        }
        let old = Old {
            segment: SegmentId::new(ProgramId([3; 32]), 7),
            offset: 0,
            token: None,
            play_from: 0,
        };
        let decoded = decode::<StreamRequest>(&encode(&old), MAX_FRAME).ok();
        assert_eq!(decoded.map(|r| r.verified), Some(false));
    }

    #[test]
    fn every_message_round_trips() {
        let request = StreamRequest {
            segment: SegmentId::new(ProgramId([3; 32]), 7),
            offset: 10,
            token: Some(ByteBuf::from(vec![1, 2, 3])),
            play_from: 5,
            verified: true,
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
            StreamReply::Verified {
                size: 40_000,
                hash: SegmentHash::of(b"y"),
                from: 16_384,
            },
        ] {
            assert_eq!(
                decode::<StreamReply>(&encode(&reply), MAX_FRAME).ok(),
                Some(reply)
            );
        }
    }
}
