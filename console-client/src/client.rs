//! A client of one director: dials it, sends `/vodmesh/director/1` requests, returns answers.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use vodmesh_proto::codec::CborCodec;
use vodmesh_proto::director::{self, Request, Response};
use vodmesh_proto::net::{build_swarm, peer_of};

/// How long the first connection to a director may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening one stream may take before it is retried (a stream lost by the remote's
/// one-deep inbound queue never completes).
pub const OPEN_STREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one request may take (a swarm walk of a large swarm takes a while).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address has no `/p2p/<peer id>`.
    #[error("address {0} does not end in /p2p/<peer id>")]
    NoPeerId(Multiaddr),
    /// The director could not be reached.
    #[error("cannot reach the director at {addr}: {reason}")]
    Unreachable {
        /// The address dialed.
        addr: Multiaddr,
        /// What went wrong.
        reason: String,
    },
    /// The request failed on the way.
    #[error("request failed: {0}")]
    Request(String),
    /// The client's network task is gone.
    #[error("client stopped")]
    Closed,
    /// The swarm could not be built.
    #[error("network setup: {0}")]
    Setup(String),
}

#[derive(NetworkBehaviour)]
struct ClientBehaviour {
    control: request_response::Behaviour<CborCodec<Request, Response>>,
    streams: libp2p_stream::Behaviour,
}

type Reply = oneshot::Sender<Result<Response, ClientError>>;

enum Cmd {
    Request(Request, Reply),
    /// Where a peer listens; answered once the swarm knows (and dials) them.
    Addresses(PeerId, Vec<Multiaddr>, oneshot::Sender<()>),
}

/// A connection to one director.
pub struct DirectorClient {
    peer: PeerId,
    local: PeerId,
    tx: mpsc::Sender<Cmd>,
    streams: libp2p_stream::Control,
    task: JoinHandle<()>,
}

impl DirectorClient {
    /// Connects to the director at `addr` with identity `key` (a new one if `None`).
    pub async fn connect(addr: &Multiaddr, key: Option<Keypair>) -> Result<Self, ClientError> {
        let peer = peer_of(addr).ok_or_else(|| ClientError::NoPeerId(addr.clone()))?;
        let key = key.unwrap_or_else(Keypair::generate_ed25519);
        let local = key.public().to_peer_id();
        let mut swarm = build_swarm(key, |_| ClientBehaviour {
            control: request_response::Behaviour::with_codec(
                CborCodec::new(director::LIMITS),
                [(director::PROTOCOL, ProtocolSupport::Outbound)],
                request_response::Config::default().with_request_timeout(REQUEST_TIMEOUT),
            ),
            streams: libp2p_stream::Behaviour::new(),
        })
        .map_err(|e| ClientError::Setup(e.to_string()))?;
        let unreachable = |reason: String| ClientError::Unreachable {
            addr: addr.clone(),
            reason,
        };
        // Known by peer id too: a connection that closes (an idle time-out, the director
        // closing it) is dialed again by the next request instead of failing it with
        // "Failed to dial the requested peer".
        swarm.add_peer_address(peer, addr.clone());
        swarm
            .dial(addr.clone())
            .map_err(|e| unreachable(e.to_string()))?;
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, async {
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
        match connected {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => return Err(unreachable(reason)),
            Err(_) => return Err(unreachable("timed out".into())),
        }
        let streams = swarm.behaviour().streams.new_control();
        let (tx, mut rx) = mpsc::channel::<Cmd>(16);
        let task = tokio::spawn(async move {
            let mut pending: HashMap<OutboundRequestId, Reply> = HashMap::new();
            loop {
                tokio::select! {
                    cmd = rx.recv() => match cmd {
                        Some(Cmd::Request(request, reply)) => {
                            let id = swarm.behaviour_mut().control.send_request(&peer, request);
                            pending.insert(id, reply);
                        }
                        Some(Cmd::Addresses(peer, addrs, known)) => {
                            // Dial now rather than leave it to libp2p-stream: its dial
                            // requests go through a one-slot channel, and when streams to
                            // several new peers are opened at once the extra dial requests
                            // are dropped and those opens wait forever (seen as 3-10 s
                            // stalls at the start of an ingest to three engines).
                            let opts = DialOpts::peer_id(peer)
                                .addresses(addrs.clone())
                                .condition(PeerCondition::DisconnectedAndNotDialing)
                                .build();
                            for addr in addrs {
                                swarm.add_peer_address(peer, addr);
                            }
                            if let Err(e) = swarm.dial(opts) {
                                tracing::trace!(%peer, error = %e, "dial not started");
                            }
                            let _ = known.send(());
                        }
                        None => break,
                    },
                    event = swarm.select_next_some() => match event {
                        SwarmEvent::Behaviour(ClientBehaviourEvent::Control(
                            request_response::Event::Message {
                                message: request_response::Message::Response { request_id, response },
                                ..
                            },
                        )) => {
                            if let Some(reply) = pending.remove(&request_id) {
                                let _ = reply.send(Ok(response));
                            }
                        }
                        SwarmEvent::Behaviour(ClientBehaviourEvent::Control(
                            request_response::Event::OutboundFailure { request_id, error, .. },
                        )) => {
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
            streams,
            task,
        })
    }

    /// The director's peer id.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// This client's own peer id.
    pub fn local_peer(&self) -> PeerId {
        self.local
    }

    /// Tells the client where `peer` (an engine) listens, so streams to it can be opened.
    pub async fn add_addresses(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    ) -> Result<(), ClientError> {
        // Only TCP addresses when the peer has any: dialing TCP and QUIC at once races two
        // connections, and an open_stream waiting on the loser hung forever (libp2p-stream
        // 0.5); TCP also connects faster on a cold start (1.3 ms against 49 ms for a
        // process's first QUIC dial).
        let tcp: Vec<Multiaddr> = addrs
            .iter()
            .filter(|a| {
                a.iter()
                    .any(|p| matches!(p, libp2p::multiaddr::Protocol::Tcp(_)))
            })
            .cloned()
            .collect();
        let addrs = if tcp.is_empty() { addrs } else { tcp };
        let (known, ack) = oneshot::channel();
        self.tx
            .send(Cmd::Addresses(peer, addrs, known))
            .await
            .map_err(|_| ClientError::Closed)?;
        // Before a stream is opened, the swarm must know the addresses: a stream's own dial
        // by peer id finds none otherwise, and fails.
        ack.await.map_err(|_| ClientError::Closed)
    }

    /// Opens a stream of `protocol` to `peer` (whose address was added before), retrying
    /// once: the remote accepts one pending stream at a time, and libp2p-stream may drop a
    /// dial. A peer that cannot be dialed fails at once, and one that does not answer (frozen)
    /// within two tries: the caller has other engines to try.
    pub async fn open_stream(
        &self,
        peer: PeerId,
        protocol: libp2p::StreamProtocol,
    ) -> Result<libp2p::Stream, ClientError> {
        let mut control = self.streams.clone();
        let mut last = String::new();
        for attempt in 0..2u64 {
            let open = control.open_stream(peer, protocol.clone());
            match tokio::time::timeout(OPEN_STREAM_TIMEOUT, open).await {
                Ok(Ok(s)) => return Ok(s),
                Ok(Err(libp2p_stream::OpenStreamError::Io(e)))
                    if e.kind() == std::io::ErrorKind::NotConnected =>
                {
                    return Err(ClientError::Request(format!(
                        "cannot connect to {peer}: {e}"
                    )));
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "timed out".into(),
            }
            tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await;
        }
        Err(ClientError::Request(format!(
            "cannot open a stream to {peer}: {last}"
        )))
    }

    /// Sends `request` and waits for the answer.
    pub async fn request(&self, request: Request) -> Result<Response, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Request(request, reply))
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)?
    }
}

impl std::fmt::Debug for DirectorClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectorClient")
            .field("peer", &self.peer)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl Drop for DirectorClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}
