//! The director's side of the blade link: it lets in the engine processes it trusts, each into
//! its [`Bay`], one link at a time, and carries reports up, commands and engine tokens down.

use std::collections::HashMap;
use std::sync::Arc;

use futures::{AsyncReadExt, StreamExt};
use libp2p::PeerId;
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout};
use vodmesh_proto::SegmentId;
use vodmesh_proto::blade::MAX_HELLO;
use vodmesh_proto::codec::read_frame;

use super::{
    DEAD_AFTER, Down, FetchReply, HEARTBEAT, MAX_ADDRS, Up, reader, refuse, send, to_wire,
};
use crate::auth::engines::EngineTokens;
use crate::control::{EngineCommand, EngineEvent, EngineId, EngineReport, FetchFailed};

/// A place among a station's engines that one engine process may take (`--engine-peer`): the
/// peer let in, its place, and the queue of the director's commands to it.
#[derive(Clone)]
pub(crate) struct Bay {
    /// The engine's peer id, the only one let in.
    pub(crate) peer: PeerId,
    /// Its place among the station's engines.
    pub(crate) engine: EngineId,
    /// The director's commands to it. The link holds the lock while it is attached, so that a
    /// second link of the same engine is refused instead of splitting the commands.
    pub(crate) commands: Arc<Mutex<mpsc::Receiver<EngineCommand>>>,
}

/// The director's side: accepts engine links until `shutdown`; every link ends with it.
pub(crate) async fn serve(
    mut incoming: vodmesh_proto::net::streams::IncomingStreams,
    bays: Vec<Bay>,
    reports: mpsc::Sender<EngineReport>,
    tokens: EngineTokens,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut links = JoinSet::new();
    loop {
        let (peer, stream) = tokio::select! {
            next = incoming.next() => match next {
                Some(next) => next,
                None => break,
            },
            Some(_) = links.join_next(), if !links.is_empty() => continue,
            _ = shutdown.changed() => break,
        };
        let bay = bays.iter().find(|b| b.peer == peer).cloned();
        let reports = reports.clone();
        let (tokens, shutdown) = (tokens.clone(), shutdown.clone());
        links.spawn(async move {
            if let Err(e) = link(peer, stream, bay, reports, tokens, shutdown).await {
                tracing::debug!(%peer, error = %e, "engine link failed");
            }
        });
    }
    // Each link sees the same shutdown and reports its engine down before it ends.
    while links.join_next().await.is_some() {}
}

#[tracing::instrument(skip_all, fields(engine = %peer))]
async fn link(
    peer: PeerId,
    stream: libp2p::Stream,
    bay: Option<Bay>,
    reports: mpsc::Sender<EngineReport>,
    mut tokens: EngineTokens,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let (mut rd, mut wr) = stream.split();
    // The peer id is known before a byte is read: a stranger is refused without reading.
    let Some(bay) = bay else {
        tracing::warn!("refused an engine this station does not trust (see --engine-peer)");
        let why = "not an engine of this station (the director trusts --engine-peer peers only)";
        return refuse(&mut wr, why).await;
    };
    let hello = timeout(DEAD_AFTER, read_frame::<_, Up>(&mut rd, MAX_HELLO)).await;
    let Ok(Ok(Up::Hello {
        addrs,
        max_streams,
        capacity,
        http,
        https,
        bulk,
    })) = hello
    else {
        return refuse(&mut wr, "expected Hello first").await;
    };
    if addrs.len() > MAX_ADDRS {
        return refuse(&mut wr, "too many listen addresses").await;
    }
    let Ok(mut commands) = bay.commands.clone().try_lock_owned() else {
        return refuse(&mut wr, "attached already; retry").await;
    };
    let engine = bay.engine;
    let index = u32::try_from(engine.0).unwrap_or(u32::MAX);
    send(&mut wr, &Down::Welcome { index }).await?;
    tracing::info!(%engine, ?addrs, "engine attached");
    let ready = EngineEvent::Ready {
        peer_id: peer,
        addrs,
        http,
        https,
        bulk,
    };
    let _ = reports.send(EngineReport::new(engine, ready)).await;
    if max_streams > 0 {
        let limits = EngineEvent::Limits {
            max_streams,
            capacity,
        };
        let _ = reports.send(EngineReport::new(engine, limits)).await;
    }
    let (mut up, _reading) = reader::<_, Up>(rd);
    let mut pending: HashMap<u64, (SegmentId, FetchReply)> = HashMap::new();
    let mut next_id = 0u64;
    let mut beat = tokio::time::interval(HEARTBEAT);
    let mut deadline = Instant::now() + DEAD_AFTER;
    // The token this engine was last sent: sent on every attach, then on every refresh.
    let mut sent_token: Option<Vec<u8>> = None;
    let mut tokens_live = true;
    let why = loop {
        let token = tokens.get(engine.0);
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
                    Up::Report(EngineReport {
                        event: EngineEvent::Ready { .. } | EngineEvent::Down | EngineEvent::Limits { .. },
                        ..
                    })
                    | Up::Alive | Up::Hello { .. } => {}
                    // It numbers itself 0: its place here is the bay's.
                    Up::Report(EngineReport { event, .. }) => {
                        let _ = reports.send(EngineReport::new(engine, event)).await;
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
                let wire = to_wire(cmd, |segment, done| {
                    next_id += 1;
                    pending.insert(next_id, (segment, done));
                    next_id
                });
                if send(&mut wr, &Down::Command(wire)).await.is_err() {
                    break "cannot write";
                }
            }
        }
    };
    for (_, (segment, done)) in pending {
        let _ = done.send((segment, Err(FetchFailed::EngineStopped))).await;
    }
    tracing::warn!(%engine, why, "engine detached: marked down");
    let _ = reports
        .send(EngineReport::new(engine, EngineEvent::Down))
        .await;
    Ok(())
}
