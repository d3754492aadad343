//! `/vodmesh/blade/1`: the backplane between a station's director and an engine in a process
//! of its own (deployment mode b, `vodmesh-node engine --director MULTIADDR`).
//!
//! The engine opens one stream to the director and keeps it. Its first frame is [`Up::Hello`]
//! with its listen addresses; the director, which lets in only the engine peers it was told to
//! trust (the connection is authenticated by noise, so the peer id is proven), answers
//! [`Down::Welcome`] or [`Down::Refused`]. From then on the engine's reports flow up
//! ([`Up::Report`]) and the director's commands flow down ([`Down::Command`]); a
//! [`WireCommand::Fetch`]'s outcome comes back as [`Up::FetchDone`] under the fetch's id. Both
//! sides send `Alive` every [`HEARTBEAT`]; a side that hears nothing for [`DEAD_AFTER`], or
//! loses the stream, ends the link (the director marks the engine down, the engine reconnects).
//! An engine's engine token comes down as [`Down::EngineToken`] on every attach and refresh.
//!
//! Every frame is a [`crate::codec::write_frame`] frame of at most [`MAX_FRAME`] bytes
//! ([`MAX_HELLO`] for the first, read before the engine is known to be well).
//!
//! The messages are plain data, generic over what the station puts inside them: `R` is an
//! engine's report, `C` a finished copy, `F` why a copy failed, `E` a segment an engine is to accept and `S` a copy
//! source. The station's own types fill them in (`vodmesh-node`'s `blade` module): this crate
//! knows the exchange, not the roles. Variants are only ever appended.

use std::time::Duration;

use libp2p::{Multiaddr, PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

use crate::ids::{SegmentHash, SegmentId};

/// The protocol name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/vodmesh/blade/1");
/// Largest frame either side accepts (an `Expect` of a long program is the biggest).
pub const MAX_FRAME: usize = 4 * 1024 * 1024;
/// Largest [`Up::Hello`] (read before the engine is known to be alive and well).
pub const MAX_HELLO: usize = 64 * 1024;
/// How often each side says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Silence after which a side gives the link up (the director marks the engine down).
pub const DEAD_AFTER: Duration = Duration::from_secs(3);

/// From the engine to the director.
#[derive(Debug, Serialize, Deserialize)]
pub enum Up<R, C, F> {
    /// The first frame: where the engine listens.
    Hello {
        /// Its listen addresses.
        addrs: Vec<Multiaddr>,
        /// Its `--max-streams` (0: the station's).
        #[serde(default)]
        max_streams: u32,
        /// Its `--capacity`.
        #[serde(default)]
        capacity: u64,
        /// Where it serves HTTP (`vodmesh-node engine --http`), if it does.
        #[serde(default)]
        http: Option<std::net::SocketAddr>,
        /// Whether it serves `http` over TLS (`--tls-cert`).
        #[serde(default)]
        https: bool,
        /// Where it takes bulk connections from consoles (`net::bulk`), if it does.
        #[serde(default)]
        bulk: Option<std::net::SocketAddr>,
    },
    /// A report, as an in-process engine makes it (which engine it is, is the director's
    /// business: it knows the link it came on).
    Report(R),
    /// The outcome of [`WireCommand::Fetch`] `id`.
    FetchDone {
        /// The fetch.
        id: u64,
        /// Its segment.
        segment: SegmentId,
        /// The copy, or why it failed.
        result: Result<C, F>,
    },
    /// Heartbeat.
    Alive,
}

/// From the director to the engine.
#[derive(Debug, Serialize, Deserialize)]
pub enum Down<E, S> {
    /// The engine is attached, as engine `index` of the station.
    Welcome {
        /// Its place among the station's engines.
        index: u32,
    },
    /// The engine is not attached, and why.
    Refused(String),
    /// A command.
    Command(WireCommand<E, S>),
    /// Heartbeat.
    Alive,
    /// The engine's engine token (its station is enrolled), new or refreshed.
    EngineToken(serde_bytes::ByteBuf),
}

/// A director's command to its engine, on the wire. The station's in-process command type
/// carries a reply channel in its `Fetch`, which no wire can: here a fetch carries an `id`
/// instead, and its outcome comes back as [`Up::FetchDone`] with that id. Otherwise the two
/// are the same, variant for variant.
#[derive(Debug, Serialize, Deserialize)]
pub enum WireCommand<E, S> {
    /// Accept these segments, pushed over `/vodmesh/ingest/1`.
    Expect {
        /// The segments.
        segments: Vec<(SegmentId, E)>,
    },
    /// A console will ask for this segment next: read it ahead.
    Preload {
        /// The segment.
        segment: SegmentId,
    },
    /// Keep these segments forever.
    Pin {
        /// The segments.
        segments: Vec<SegmentId>,
    },
    /// Copy a segment from another engine; answered with [`Up::FetchDone`] `id`.
    Fetch {
        /// Correlates the answer.
        id: u64,
        /// The segment.
        segment: SegmentId,
        /// Its hash and size, when known.
        expect: Option<(SegmentHash, u64)>,
        /// Where to copy it from, cheapest first.
        sources: Vec<S>,
        /// Evictable once stored.
        held_elsewhere: bool,
    },
    /// Let these engines copy from this one until `until_ms`.
    AllowCopy {
        /// The engines.
        peers: Vec<PeerId>,
        /// Until when (ms since the epoch).
        until_ms: u64,
    },
    /// End the stream of `segment` to `console` (the engines exchange consoles).
    Handover {
        /// The segment.
        segment: SegmentId,
        /// The console.
        console: PeerId,
    },
    /// Take the engine out of service.
    Stop,
    /// Drop these segments (an ingest that never committed).
    Remove {
        /// The segments.
        segments: Vec<SegmentId>,
    },
    /// Stream no byte of `program` before `at_ms` (`0`: published).
    PublishAt {
        /// The program.
        program: crate::ProgramId,
        /// When it becomes playable (ms since the epoch).
        at_ms: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProgramId;
    use crate::codec::{decode, encode};

    /// The parameters a test fills in: any plain data does.
    type TestUp = Up<(u32, String), u64, String>;
    type TestDown = Down<(u8, u64), String>;

    fn segment(i: u32) -> SegmentId {
        SegmentId::new(ProgramId([3; 32]), i)
    }

    #[test]
    fn every_message_round_trips() -> Result<(), Box<dyn std::error::Error>> {
        let ups: Vec<TestUp> = vec![
            Up::Hello {
                addrs: vec!["/ip4/127.0.0.1/tcp/1".parse()?],
                max_streams: 4,
                capacity: 9,
                http: Some(([127, 0, 0, 1], 8080).into()),
                https: false,
                bulk: Some(([127, 0, 0, 1], 8081).into()),
            },
            Up::Report((3, "stored".into())),
            Up::FetchDone {
                id: 7,
                segment: segment(1),
                result: Ok(12),
            },
            Up::FetchDone {
                id: 8,
                segment: segment(2),
                result: Err("no source".into()),
            },
            Up::Alive,
        ];
        for up in ups {
            let back: TestUp = decode(&encode(&up), MAX_FRAME)?;
            assert_eq!(format!("{back:?}"), format!("{up:?}"));
        }
        let downs: Vec<TestDown> = vec![
            Down::Welcome { index: 2 },
            Down::Refused("not an engine of this station".into()),
            Down::Command(WireCommand::Expect {
                segments: vec![(segment(0), (1, 2))],
            }),
            Down::Command(WireCommand::Fetch {
                id: 1,
                segment: segment(3),
                expect: Some((SegmentHash::of(b"x"), 1)),
                sources: vec!["engine".into()],
                held_elsewhere: true,
            }),
            Down::Command(WireCommand::AllowCopy {
                peers: vec![PeerId::random()],
                until_ms: 7,
            }),
            Down::Command(WireCommand::Stop),
            Down::Alive,
            Down::EngineToken(serde_bytes::ByteBuf::from(vec![7u8; 300])),
        ];
        for down in downs {
            let back: TestDown = decode(&encode(&down), MAX_FRAME)?;
            assert_eq!(format!("{back:?}"), format!("{down:?}"));
        }
        Ok(())
    }

    #[test]
    fn garbage_and_oversized_frames_are_refused() {
        assert!(decode::<TestDown>(&[0xff, 0x00, 0x13], MAX_FRAME).is_err());
        assert!(decode::<TestUp>(&encode(&vec![0u8; 64]), 16).is_err());
    }

    proptest::proptest! {
        /// Whatever a peer sends on the backplane decodes or is refused; nothing panics.
        #[test]
        fn any_bytes_decode_or_fail(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode::<TestUp>(&bytes, MAX_FRAME);
            let _ = decode::<TestDown>(&bytes, MAX_FRAME);
        }
    }
}
