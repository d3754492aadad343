//! The blade link over the network (deployment mode b): an engine in a process of its own
//! (`vodmesh-node engine --director MULTIADDR`), on another machine with its own disks,
//! attached to its station's director over `/vodmesh/blade/1` ([`vodmesh_proto::blade`]
//! describes the exchange).
//!
//! The director lets in only the peers it was told to trust (`--engine-peer PEERID`), each
//! into its [`Bay`], and from then on treats the engine exactly like one of its in-process
//! engines: the engine's [`EngineReport`]s flow up, the director's [`EngineCommand`]s flow
//! down. A side that hears nothing for [`DEAD_AFTER`] ends the link: the director marks the
//! engine down (its segments stop being chosen) and the engine reconnects every second until it
//! is welcome again, when the director marks it up.
//!
//! An engine process holds no connection to the auth server: its director obtains its engine
//! token (bound to the engine's peer id, see [`crate::auth::engines`]) and sends it down on
//! every attach and every refresh; the engine presents it on the copies it makes (claims 24,
//! 25).
//!
//! - [`director`]: the director's side (the bays, one link each);
//! - [`engine_process`]: `vodmesh-node engine`'s side.
//!
//! The wire messages are [`vodmesh_proto::blade`]'s, filled in with this station's types
//! ([`Up`], [`Down`], [`WireCommand`]). [`EngineCommand`] and [`WireCommand`] stay two types on
//! purpose: an in-process `Fetch` carries the channel its outcome goes to, which no wire can;
//! [`to_wire`] and [`from_wire`] are the one place where a fetch's channel becomes an id and
//! back.

mod director;
mod engine_process;

pub(crate) use director::{Bay, serve};
pub use engine_process::{EngineProcess, EngineProcessHandle, Error, start_engine};
pub use vodmesh_proto::blade::{DEAD_AFTER, HEARTBEAT, PROTOCOL};

use futures::{AsyncRead, AsyncWrite};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::task::AbortOnDropHandle;
use vodmesh_proto::blade::{self, MAX_FRAME};
use vodmesh_proto::codec::{read_frame, write_frame};
use vodmesh_proto::{SegmentId, token};

use crate::control::{Copied, EngineCommand, EngineReport, Expected, FetchFailed, Fetched, Source};

/// What an engine process says to its director.
pub type Up = blade::Up<EngineReport, Copied, FetchFailed>;
/// What a director says to its engine process.
pub type Down = blade::Down<Expected, Source>;
/// [`EngineCommand`] on the wire: a fetch's reply channel becomes an id.
pub type WireCommand = blade::WireCommand<Expected, Source>;

/// Listen addresses an engine may announce: they go into the signed station record, which
/// must stay under [`vodmesh_proto::station::MAX_RECORD`].
pub const MAX_ADDRS: usize = crate::listen::MAX_ADDRS;
/// Disks an engine may report, for the same reason.
pub const MAX_DISKS: usize = 32;
/// Largest engine token the director forwards (the token decoder's own cap).
const MAX_TOKEN: usize = token::MAX_TOKEN;

/// Where the outcome of an in-process fetch goes.
type FetchReply = mpsc::Sender<(SegmentId, Fetched)>;

/// `cmd` on the wire; a fetch's reply channel is handed to `pending`, which names the id its
/// outcome will come back under.
fn to_wire(cmd: EngineCommand, pending: impl FnOnce(SegmentId, FetchReply) -> u64) -> WireCommand {
    match cmd {
        EngineCommand::Expect { segments } => WireCommand::Expect { segments },
        EngineCommand::Preload { segment } => WireCommand::Preload { segment },
        EngineCommand::Pin { segments } => WireCommand::Pin { segments },
        EngineCommand::AllowCopy { peers, until_ms } => WireCommand::AllowCopy { peers, until_ms },
        EngineCommand::Handover { segment, console } => WireCommand::Handover { segment, console },
        EngineCommand::Stop => WireCommand::Stop,
        EngineCommand::Remove { segments } => WireCommand::Remove { segments },
        EngineCommand::PublishAt { program, at_ms } => WireCommand::PublishAt { program, at_ms },
        EngineCommand::Fetch {
            segment,
            expect,
            sources,
            held_elsewhere,
            done,
        } => WireCommand::Fetch {
            id: pending(segment, done),
            segment,
            expect,
            sources,
            held_elsewhere,
        },
    }
}

/// `cmd` as the engine takes it; a fetch's outcome goes to the channel `reply` makes for its
/// id.
fn from_wire(cmd: WireCommand, reply: impl FnOnce(u64) -> FetchReply) -> EngineCommand {
    match cmd {
        WireCommand::Expect { segments } => EngineCommand::Expect { segments },
        WireCommand::Preload { segment } => EngineCommand::Preload { segment },
        WireCommand::Pin { segments } => EngineCommand::Pin { segments },
        WireCommand::AllowCopy { peers, until_ms } => EngineCommand::AllowCopy { peers, until_ms },
        WireCommand::Handover { segment, console } => EngineCommand::Handover { segment, console },
        WireCommand::Stop => EngineCommand::Stop,
        WireCommand::Remove { segments } => EngineCommand::Remove { segments },
        WireCommand::PublishAt { program, at_ms } => EngineCommand::PublishAt { program, at_ms },
        WireCommand::Fetch {
            id,
            segment,
            expect,
            sources,
            held_elsewhere,
        } => EngineCommand::Fetch {
            segment,
            expect,
            sources,
            held_elsewhere,
            done: reply(id),
        },
    }
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

/// Reads frames into a channel: reading a frame is not cancel-safe, so it gets a task of its
/// own, which the returned guard ends when the link does.
fn reader<R, T>(mut r: R) -> (mpsc::Receiver<T>, AbortOnDropHandle<()>)
where
    R: AsyncRead + Unpin + Send + 'static,
    T: serde::de::DeserializeOwned + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    let task = AbortOnDropHandle::new(tokio::spawn(async move {
        while let Ok(msg) = read_frame::<_, T>(&mut r, MAX_FRAME).await {
            if tx.send(msg).await.is_err() {
                break;
            }
        }
    }));
    (rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{EngineEvent, EngineId};
    use libp2p::PeerId;
    use vodmesh_proto::codec::{decode, encode};

    #[test]
    fn this_stations_frames_round_trip() -> Result<(), Box<dyn std::error::Error>> {
        let streams = EngineEvent::Streams { active: 3 };
        let up = Up::Report(EngineReport::new(EngineId(2), streams));
        let back: Up = decode(&encode(&up), MAX_FRAME)?;
        assert!(matches!(
            back,
            Up::Report(EngineReport {
                engine: EngineId(2),
                event: EngineEvent::Streams { active: 3 }
            })
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
        Ok(())
    }

    #[tokio::test]
    async fn a_fetch_crosses_the_wire_under_an_id_and_comes_back_to_its_channel() {
        let segment = SegmentId::new(vodmesh_proto::ProgramId([1; 32]), 4);
        let (done, mut outcome) = mpsc::channel(1);
        let cmd = EngineCommand::Fetch {
            segment,
            expect: None,
            sources: Vec::new(),
            held_elsewhere: true,
            done,
        };
        let mut kept = None;
        let wire = to_wire(cmd, |s, reply| {
            kept = Some((s, reply));
            41
        });
        assert!(matches!(
            wire,
            WireCommand::Fetch {
                id: 41,
                held_elsewhere: true,
                ..
            }
        ));
        let (engine_done, mut engine_outcome) = mpsc::channel(1);
        let mut asked = None;
        let back = from_wire(wire, |id| {
            asked = Some(id);
            engine_done
        });
        assert_eq!(asked, Some(41));
        let EngineCommand::Fetch { done, .. } = back else {
            panic!("a fetch stays a fetch");
        };
        // The engine answers on its channel; the director's side answers the original one.
        let _ = done.send((segment, Err(FetchFailed::NoSource))).await;
        assert_eq!(
            engine_outcome.recv().await,
            Some((segment, Err(FetchFailed::NoSource)))
        );
        let Some((s, reply)) = kept else {
            panic!("the director kept the reply channel");
        };
        assert_eq!(s, segment);
        let lost = FetchFailed::AtEverySource("stream ended at byte 9".into());
        let _ = reply.send((segment, Err(lost.clone()))).await;
        assert_eq!(outcome.recv().await, Some((segment, Err(lost))));
    }

    proptest::proptest! {
        /// A valid frame with bytes changed or cut off: decoded or refused, never a panic.
        #[test]
        fn mangled_frames_decode_or_fail(
            edits in proptest::collection::vec((0usize..4096, proptest::num::u8::ANY), 1..8),
            cut in 0usize..4096,
        ) {
            let frame = encode(&Up::FetchDone {
                id: 9,
                segment: SegmentId::new(vodmesh_proto::ProgramId([3; 32]), 2),
                result: Err(FetchFailed::AtEverySource("x".repeat(40))),
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
