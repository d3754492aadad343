//! A request-response client of one peer for any vodmesh CBOR protocol: dials it, sends
//! requests, returns answers. [`crate::auth::AuthClient`] is built on it.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use vodmesh_proto::codec::{CborCodec, Limits};
use vodmesh_proto::net::{build_swarm, peer_of};

use crate::client::{CONNECT_TIMEOUT, ClientError};

type Reply<Resp> = oneshot::Sender<Result<Resp, ClientError>>;

/// A connection to one peer speaking one request-response protocol.
#[derive(Debug)]
pub struct RpcClient<Req, Resp> {
    peer: PeerId,
    local: PeerId,
    tx: mpsc::Sender<(Req, Reply<Resp>)>,
    task: JoinHandle<()>,
}

impl<Req, Resp> RpcClient<Req, Resp>
where
    Req: Serialize + DeserializeOwned + Send + 'static,
    Resp: Serialize + DeserializeOwned + Send + 'static,
{
    /// Connects with identity `key` to the peer at the first of `addrs` that answers (each
    /// ending in `/p2p/<peer id>`, all the same peer), for `protocol` with `limits`; each
    /// request may take `timeout`.
    pub async fn connect(
        addrs: &[Multiaddr],
        key: Keypair,
        protocol: StreamProtocol,
        limits: Limits,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let Some(first) = addrs.first() else {
            return Err(ClientError::Setup("no address to dial".into()));
        };
        let peer = peer_of(first).ok_or_else(|| ClientError::NoPeerId(first.clone()))?;
        let local = key.public().to_peer_id();
        let mut swarm = build_swarm(key, |_| {
            request_response::Behaviour::<CborCodec<Req, Resp>>::with_codec(
                CborCodec::new(limits),
                [(protocol, ProtocolSupport::Outbound)],
                request_response::Config::default().with_request_timeout(timeout),
            )
        })
        .map_err(|e| ClientError::Setup(e.to_string()))?;
        let mut last_error = String::from("no address answered");
        let mut connected = false;
        for addr in addrs {
            if peer_of(addr) != Some(peer) {
                continue;
            }
            if let Err(e) = swarm.dial(addr.clone()) {
                last_error = e.to_string();
                continue;
            }
            let outcome = tokio::time::timeout(CONNECT_TIMEOUT, async {
                loop {
                    match swarm.select_next_some().await {
                        SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == peer => {
                            return Ok(());
                        }
                        SwarmEvent::OutgoingConnectionError { error, .. } => {
                            return Err(error.to_string());
                        }
                        _ => {}
                    }
                }
            })
            .await;
            match outcome {
                Ok(Ok(())) => {
                    connected = true;
                    break;
                }
                Ok(Err(reason)) => last_error = reason,
                Err(_) => last_error = "timed out".into(),
            }
        }
        if !connected {
            return Err(ClientError::Unreachable {
                addr: first.clone(),
                reason: last_error,
            });
        }
        let (tx, mut rx) = mpsc::channel::<(Req, Reply<Resp>)>(16);
        let task = tokio::spawn(async move {
            let mut pending: HashMap<OutboundRequestId, Reply<Resp>> = HashMap::new();
            loop {
                tokio::select! {
                    cmd = rx.recv() => match cmd {
                        Some((request, reply)) => {
                            let id = swarm.behaviour_mut().send_request(&peer, request);
                            pending.insert(id, reply);
                        }
                        None => break,
                    },
                    event = swarm.select_next_some() => match event {
                        SwarmEvent::Behaviour(request_response::Event::Message {
                            message: request_response::Message::Response { request_id, response },
                            ..
                        }) => {
                            if let Some(reply) = pending.remove(&request_id) {
                                let _ = reply.send(Ok(response));
                            }
                        }
                        SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                            request_id, error, ..
                        }) => {
                            if let Some(reply) = pending.remove(&request_id) {
                                let _ = reply.send(Err(ClientError::Request(error.to_string())));
                            }
                        }
                        _ => {}
                    },
                }
            }
        });
        Ok(Self {
            peer,
            local,
            tx,
            task,
        })
    }

    /// The remote peer.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// This client's own peer id (the identity the remote sees).
    pub fn local_peer(&self) -> PeerId {
        self.local
    }

    /// Sends `request` and waits for the answer.
    pub async fn request(&self, request: Req) -> Result<Resp, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((request, reply))
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)?
    }
}

impl<Req, Resp> Drop for RpcClient<Req, Resp> {
    fn drop(&mut self) {
        self.task.abort();
    }
}
