//! The backplane over the network (deployment mode b): an engine in a process of its own
//! (`vodmesh-node engine --director MULTIADDR`), on another machine with its own disks,
//! attached to its station's director over `/vodmesh/blade/1`.
//!
//! The engine opens one stream to the director and keeps it: it says [`Up::Hello`] with its
//! listen addresses; the director accepts only peers it was told to trust (`--engine-peer
//! PEERID`: the connection is authenticated by noise, so the peer id is proven), answers
//! [`Down::Welcome`] and from then on treats the engine exactly like one of its in-process
//! engines: the engine's [`EngineReport`]s flow up, the director's [`EngineCommand`]s flow
//! down (a `Fetch`'s outcome comes back as [`Up::FetchDone`] under an id). Both sides send
//! [`Up::Alive`] / [`Down::Alive`] every [`HEARTBEAT`]; a side that hears nothing for
//! [`DEAD_AFTER`], or loses the stream, ends the link: the director marks the engine down (its
//! segments stop being chosen) and the engine reconnects every second until it is welcome
//! again, when the director marks it up.
//!
//! An engine process holds no connection to the auth server: its director obtains its engine
//! token (bound to the engine's peer id, see [`crate::auth::engines`]) and sends it down as
//! [`Down::EngineToken`] on every attach and every refresh; the engine presents it on the
//! copies it makes (claims 24, 25).
//!
//! - [`director`]: the director's side (trusted slots, one link each);
//! - [`engine_process`]: `vodmesh-node engine`'s side.

mod director;
mod engine_process;

pub(crate) use director::{Slot, serve};
pub use engine_process::{EngineProcess, EngineProcessHandle, start_engine};

use std::time::Duration;

use futures::{AsyncRead, AsyncWrite};
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::timeout;
use vodmesh_proto::codec::{read_frame, write_frame};
use vodmesh_proto::{SegmentHash, SegmentId};

use crate::control::{Copied, EngineReport, Expected, Source};
// The wire's counterpart, named in the docs.
#[cfg(doc)]
use crate::control::EngineCommand;

/// The protocol name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/vodmesh/blade/1");
/// Largest frame either side accepts (an `Expect` of a long program is the biggest).
pub const MAX_FRAME: usize = 4 * 1024 * 1024;
/// Largest `Hello` (read before an engine is known to be alive and well).
const MAX_HELLO: usize = 64 * 1024;
/// Listen addresses an engine may announce: they go into the signed station record, which
/// must stay under [`vodmesh_proto::station::MAX_RECORD`].
pub const MAX_ADDRS: usize = crate::listen::MAX_ADDRS;
/// Largest engine token the director forwards (the token decoder's own cap).
const MAX_TOKEN: usize = vodmesh_proto::token::MAX_TOKEN;
/// Disks an engine may report, for the same reason.
pub const MAX_DISKS: usize = 32;
/// How often each side says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Silence after which a side gives the link up (the director marks the engine down).
pub const DEAD_AFTER: Duration = Duration::from_secs(3);

/// From the engine to the director.
#[derive(Debug, Serialize, Deserialize)]
pub enum Up {
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
    },
    /// A report, as an in-process engine makes it (its index is the director's business).
    Report(EngineReport),
    /// The outcome of [`WireCommand::Fetch`] `id`.
    FetchDone {
        /// The fetch.
        id: u64,
        /// Its segment.
        segment: SegmentId,
        /// The copy, or why it failed.
        result: Result<Copied, String>,
    },
    /// Heartbeat.
    Alive,
}

/// From the director to the engine.
#[derive(Debug, Serialize, Deserialize)]
pub enum Down {
    /// The engine is attached, as engine `index` of the station.
    Welcome {
        /// Its slot.
        index: u32,
    },
    /// The engine is not attached, and why.
    Refused(String),
    /// A command.
    Command(WireCommand),
    /// Heartbeat.
    Alive,
    /// The engine's engine token (its station is enrolled), new or refreshed.
    EngineToken(serde_bytes::ByteBuf),
}

/// [`EngineCommand`] on the wire: a fetch's reply channel becomes an id.
#[derive(Debug, Serialize, Deserialize)]
pub enum WireCommand {
    /// [`EngineCommand::Expect`].
    Expect {
        /// The segments.
        segments: Vec<(SegmentId, Expected)>,
    },
    /// [`EngineCommand::Preload`].
    Preload {
        /// The segment.
        segment: SegmentId,
    },
    /// [`EngineCommand::Pin`].
    Pin {
        /// The segments.
        segments: Vec<SegmentId>,
    },
    /// [`EngineCommand::Fetch`]; answered with [`Up::FetchDone`] `id`.
    Fetch {
        /// Correlates the answer.
        id: u64,
        /// The segment.
        segment: SegmentId,
        /// Its hash and size, when known.
        expect: Option<(SegmentHash, u64)>,
        /// Where to copy it from, cheapest first.
        sources: Vec<Source>,
        /// Evictable once stored.
        held_elsewhere: bool,
    },
    /// [`EngineCommand::AllowCopy`].
    AllowCopy {
        /// The engines.
        peers: Vec<PeerId>,
        /// Until when (ms since the epoch).
        until_ms: u64,
    },
    /// [`EngineCommand::Handover`].
    Handover {
        /// The segment.
        segment: SegmentId,
        /// The console.
        console: PeerId,
    },
    /// [`EngineCommand::Stop`].
    Stop,
    /// [`EngineCommand::Remove`].
    Remove {
        /// The segments.
        segments: Vec<SegmentId>,
    },
}

/// Writes one frame, giving up after [`DEAD_AFTER`] (a peer that stopped reading is dead).
async fn send<W: AsyncWrite + Unpin, T: Serialize>(w: &mut W, msg: &T) -> std::io::Result<()> {
    match timeout(DEAD_AFTER, write_frame(w, msg)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Says why the link is refused and closes the stream gracefully, so the answer arrives.
async fn refuse<W: AsyncWrite + Unpin>(wr: &mut W, why: &str) -> std::io::Result<()> {
    send(wr, &Down::Refused(why.into())).await?;
    let _ = timeout(DEAD_AFTER, futures::AsyncWriteExt::close(wr)).await;
    Ok(())
}

/// Reads frames into a channel (reading a frame is not cancel-safe, so it gets a task).
fn reader<R, T>(mut r: R) -> (mpsc::Receiver<T>, tokio::task::JoinHandle<()>)
where
    R: AsyncRead + Unpin + Send + 'static,
    T: serde::de::DeserializeOwned + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        while let Ok(msg) = read_frame::<_, T>(&mut r, MAX_FRAME).await {
            if tx.send(msg).await.is_err() {
                break;
            }
        }
    });
    (rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vodmesh_proto::codec::{decode, encode};

    #[test]
    fn frames_round_trip_and_garbage_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let up = Up::Report(EngineReport::Streams {
            index: 0,
            active: 3,
        });
        let back: Up = decode(&encode(&up), MAX_FRAME)?;
        assert!(matches!(
            back,
            Up::Report(EngineReport::Streams { active: 3, .. })
        ));
        let down = Down::Command(WireCommand::AllowCopy {
            peers: vec![PeerId::random()],
            until_ms: 7,
        });
        let back: Down = decode(&encode(&down), MAX_FRAME)?;
        assert!(matches!(
            back,
            Down::Command(WireCommand::AllowCopy { until_ms: 7, .. })
        ));
        let token = Down::EngineToken(serde_bytes::ByteBuf::from(vec![7u8; 300]));
        let back: Down = decode(&encode(&token), MAX_FRAME)?;
        assert!(matches!(back, Down::EngineToken(t) if t.as_slice() == [7u8; 300]));
        assert!(decode::<Down>(&[0xff, 0x00, 0x13], MAX_FRAME).is_err());
        assert!(decode::<Up>(&encode(&vec![0u8; 64]), 16).is_err());
        Ok(())
    }

    proptest::proptest! {
        /// Whatever a peer sends on the backplane decodes or is refused; nothing panics.
        #[test]
        fn any_bytes_decode_or_fail(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode::<Up>(&bytes, MAX_FRAME);
            let _ = decode::<Down>(&bytes, MAX_FRAME);
        }

        /// A valid frame with bytes changed or cut off: decoded or refused, never a panic.
        #[test]
        fn mangled_frames_decode_or_fail(
            edits in proptest::collection::vec((0usize..4096, proptest::num::u8::ANY), 1..8),
            cut in 0usize..4096,
        ) {
            let frame = encode(&Up::FetchDone {
                id: 9,
                segment: SegmentId::new(vodmesh_proto::ProgramId([3; 32]), 2),
                result: Err("x".repeat(40)),
            });
            let mut bytes = frame.clone();
            for (at, value) in edits {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            bytes.truncate(cut.min(bytes.len()));
            let _ = decode::<Up>(&bytes, MAX_FRAME);
            let _ = decode::<Down>(&frame, MAX_FRAME);
        }
    }
}
