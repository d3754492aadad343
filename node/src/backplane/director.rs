//! The director's side of the backplane: it lets in the engine processes it trusts, one
//! link each, and carries reports up, commands and engine tokens down.

use std::collections::HashMap;
use std::sync::Arc;

use futures::{AsyncReadExt, StreamExt};
use libp2p::PeerId;
use tokio::sync::{Mutex, mpsc, watch};
use tokio::time::{Instant, sleep_until, timeout};
use vodmesh_proto::SegmentId;
use vodmesh_proto::codec::read_frame;

use super::{
    DEAD_AFTER, Down, HEARTBEAT, MAX_ADDRS, MAX_HELLO, Up, WireCommand, reader, refuse, send,
};
use crate::auth::engines::EngineTokens;
use crate::control::{Copied, EngineCommand, EngineReport};

type FetchReply = mpsc::Sender<(SegmentId, Result<Copied, String>)>;

/// One engine slot of a station that an engine process may take (`--engine-peer`).
#[derive(Clone)]
pub(crate) struct Slot {
    /// The engine's peer id, the only one let in.
    pub(crate) peer: PeerId,
    /// Its index among the station's engines.
    pub(crate) index: usize,
    /// The director's commands to it; held by the link while attached.
    pub(crate) commands: Arc<Mutex<mpsc::Receiver<EngineCommand>>>,
}

/// The director's side: accepts engine links until `shutdown`.
pub(crate) async fn serve(
    mut incoming: libp2p_stream::IncomingStreams,
    slots: Vec<Slot>,
    reports: mpsc::Sender<EngineReport>,
    tokens: EngineTokens,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (peer, stream) = tokio::select! {
            next = incoming.next() => match next {
                Some(next) => next,
                None => break,
            },
            _ = shutdown.changed() => break,
        };
        let slot = slots.iter().find(|s| s.peer == peer).cloned();
        let reports = reports.clone();
        let (tokens, shutdown) = (tokens.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = link(peer, stream, slot, reports, tokens, shutdown).await {
                tracing::debug!(%peer, error = %e, "engine link failed");
            }
        });
    }
}

#[tracing::instrument(skip_all, fields(engine = %peer))]
async fn link(
    peer: PeerId,
    stream: libp2p::Stream,
    slot: Option<Slot>,
    reports: mpsc::Sender<EngineReport>,
    mut tokens: EngineTokens,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let (mut rd, mut wr) = stream.split();
    // The peer id is known before a byte is read: a stranger is refused without reading.
    let Some(slot) = slot else {
        tracing::warn!("refused an engine this station does not trust (see --engine-peer)");
        let why = "not an engine of this station (the director trusts --engine-peer peers only)";
        return refuse(&mut wr, why).await;
    };
    let hello = timeout(DEAD_AFTER, read_frame::<_, Up>(&mut rd, MAX_HELLO)).await;
    let Ok(Ok(Up::Hello {
        addrs,
        max_streams,
        capacity,
    })) = hello
    else {
        return refuse(&mut wr, "expected Hello first").await;
    };
    if addrs.len() > MAX_ADDRS {
        return refuse(&mut wr, "too many listen addresses").await;
    }
    let Ok(mut commands) = slot.commands.clone().try_lock_owned() else {
        return refuse(&mut wr, "attached already; retry").await;
    };
    let index = slot.index;
    send(
        &mut wr,
        &Down::Welcome {
            index: u32::try_from(index).unwrap_or(u32::MAX),
        },
    )
    .await?;
    tracing::info!(index, ?addrs, "engine attached");
    let _ = reports
        .send(EngineReport::Ready {
            index,
            peer_id: peer,
            addrs,
        })
        .await;
    if max_streams > 0 {
        let limits = EngineReport::Limits {
            index,
            max_streams,
            capacity,
        };
        let _ = reports.send(limits).await;
    }
    let (mut up, reading) = reader::<_, Up>(rd);
    let mut pending: HashMap<u64, (SegmentId, FetchReply)> = HashMap::new();
    let mut next_id = 0u64;
    let mut beat = tokio::time::interval(HEARTBEAT);
    let mut deadline = Instant::now() + DEAD_AFTER;
    // The token this engine was last sent: sent on every attach, then on every refresh.
    let mut sent_token: Option<Vec<u8>> = None;
    let mut tokens_live = true;
    let why = loop {
        let token = tokens.get(index);
        if let Some(t) = token.as_ref().filter(|t| sent_token.as_ref() != Some(*t)) {
            let msg = Down::EngineToken(serde_bytes::ByteBuf::from(t.clone()));
            if send(&mut wr, &msg).await.is_err() {
                break "cannot write";
            }
            tracing::info!("engine token forwarded to the engine");
            sent_token = token;
        }
        tokio::select! {
            _ = shutdown.changed() => break "the station stops",
            // None can come any more (not enrolled): stop asking.
            changed = tokens.changed(), if tokens_live => tokens_live = changed,
            _ = sleep_until(deadline) => break "no heartbeat",
            _ = beat.tick() => {
                if send(&mut wr, &Down::Alive).await.is_err() {
                    break "cannot write";
                }
            }
            msg = up.recv() => {
                let Some(msg) = msg else { break "the link closed" };
                deadline = Instant::now() + DEAD_AFTER;
                match msg {
                    // Its up and down are this link's to say.
                    Up::Report(
                        EngineReport::Ready { .. }
                        | EngineReport::Down { .. }
                        | EngineReport::Limits { .. },
                    )
                    | Up::Alive | Up::Hello { .. } => {}
                    Up::Report(report) => {
                        let _ = reports.send(report.with_index(index)).await;
                    }
                    Up::FetchDone { id, segment, result } => {
                        if let Some((_, done)) = pending.remove(&id) {
                            let _ = done.send((segment, result)).await;
                        }
                    }
                }
            }
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { break "the director stopped" };
                let wire = match cmd {
                    EngineCommand::Expect { segments } => WireCommand::Expect { segments },
                    EngineCommand::Preload { segment } => WireCommand::Preload { segment },
                    EngineCommand::Pin { segments } => WireCommand::Pin { segments },
                    EngineCommand::AllowCopy { peers, until_ms } => {
                        WireCommand::AllowCopy { peers, until_ms }
                    }
                    EngineCommand::Handover { segment, console } => {
                        WireCommand::Handover { segment, console }
                    }
                    EngineCommand::Stop => WireCommand::Stop,
                    EngineCommand::Remove { segments } => WireCommand::Remove { segments },
                    EngineCommand::Fetch { segment, expect, sources, held_elsewhere, done } => {
                        next_id += 1;
                        pending.insert(next_id, (segment, done));
                        WireCommand::Fetch { id: next_id, segment, expect, sources, held_elsewhere }
                    }
                };
                if send(&mut wr, &Down::Command(wire)).await.is_err() {
                    break "cannot write";
                }
            }
        }
    };
    reading.abort();
    for (_, (segment, done)) in pending {
        let _ = done
            .send((
                segment,
                Err("the engine's link to its director was lost".into()),
            ))
            .await;
    }
    tracing::warn!(index, why, "engine detached: marked down");
    let _ = reports.send(EngineReport::Down { index }).await;
    Ok(())
}
