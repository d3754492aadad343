//! `/vodmesh/ingest/1`: segment bytes pushed into a home station's engine during ingest.
//!
//! The client opens one stream per segment to the engine its director assigned, writes an
//! [`IngestHeader`] frame, then exactly `size` raw bytes, then reads one [`IngestAck`] frame.
//! The engine verifies the bytes against the hash while they arrive and refuses a segment its
//! director did not announce for this client.

use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

use crate::ids::{SegmentHash, SegmentId};

/// The protocol name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/vodmesh/ingest/1");
/// Largest header or ack frame.
pub const MAX_FRAME: usize = 4096;

/// What precedes a segment's bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestHeader {
    /// The segment.
    pub segment: SegmentId,
    /// Its BLAKE3 hash.
    pub hash: SegmentHash,
    /// Its size in bytes.
    pub size: u64,
}

/// The engine's answer after the last byte.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IngestAck {
    /// Stored, verified and committed.
    Stored,
    /// Refused; the message is one line for the user.
    Refused(String),
}
