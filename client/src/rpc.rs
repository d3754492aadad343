//! A client of one peer for any vodmesh request-response protocol (CBOR): the one dial loop,
//! the one loop that matches answers to requests, and streams to the peers it is told about.
//! [`crate::director::DirectorClient`] and [`crate::auth::AuthClient`] are built on it.
//!
//! The swarm belongs to a task of its own; an [`RpcClient`] holds a bounded channel to it
//! and each request carries a `oneshot` for its answer. Dropping the client ends the task.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::ping;
use libp2p::request_response::{self, OutboundFailure, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, Swarm, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use vodmesh_proto::codec::{CborCodec, Limits};
use vodmesh_proto::net::streams::OpenStreamError;
use vodmesh_proto::net::{BuildError, build_swarm, peer_of, prefer_tcp};

/// How long the first connection to the peer may take, per address tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening one stream may take: a peer that does not queue it by then (a frozen
/// process) is taken as unreachable.
pub const OPEN_STREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// Commands waiting for the client's task, at most.
const QUEUE: usize = 16;
/// How often each connection is pinged, and how long an answer may take: a peer that stops
/// answering (a frozen process, a cut link) has its connection closed within the sum, which
/// fails the requests and streams on it at once instead of at their own (long) time-outs.
const PING_INTERVAL: Duration = Duration::from_secs(2);
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request (or a stream) did not get through.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address has no `/p2p/<peer id>`.
    #[error("address {0} does not end in /p2p/<peer id>")]
    NoPeerId(Multiaddr),
    /// There was no address to dial.
    #[error("no address to dial")]
    NoAddress,
    /// The peer could not be reached at any of its addresses.
    #[error("cannot reach the director at {addr}: {reason}")]
    Unreachable {
        /// The first address given.
        addr: Multiaddr,
        /// What went wrong at the last address tried (boxed: libp2p's dial errors are
        /// large, and every `Result` of this crate would carry their size).
        reason: Box<DialFailure>,
    },
    /// The request failed on the way (connection lost, time-out, refused protocol).
    #[error("request failed: {}", outbound_reason(.0))]
    Request(#[from] OutboundFailure),
    /// A stream to a peer could not be opened.
    #[error("cannot open a stream to {peer}: {reason}")]
    Stream {
        /// The peer.
        peer: PeerId,
        /// What went wrong at the last try.
        reason: String,
    },
    /// A stream's peer cannot be dialed at all (no address, every dial refused).
    #[error("cannot connect to {peer}: {reason}")]
    NotConnected {
        /// The peer.
        peer: PeerId,
        /// What the dial said.
        reason: String,
    },
    /// A stream's peer holds as many unaccepted streams of the protocol as it queues: alive
    /// and overloaded, a wait rather than a failure.
    #[error("{0} is busy")]
    Busy(PeerId),
    /// The client's network task is gone.
    #[error("client stopped")]
    Closed,
    /// The swarm could not be built.
    #[error("network setup: {0}")]
    Setup(#[from] BuildError),
}

/// Why one address of the peer could not be dialed.
#[derive(Debug, thiserror::Error)]
pub enum DialFailure {
    /// The dial failed (refused, no route, another peer answered, ...).
    #[error("{}", dial_reason(.0))]
    Dial(#[from] libp2p::swarm::DialError),
    /// No connection within [`CONNECT_TIMEOUT`].
    #[error("timed out")]
    TimedOut,
}

/// A failed request as a user reads it: what happened, in words, where libp2p's text is
/// written for its own developers.
pub fn outbound_reason(failure: &OutboundFailure) -> String {
    match failure {
        OutboundFailure::DialFailure => "the peer could not be dialed".into(),
        OutboundFailure::Timeout => "no answer in time".into(),
        OutboundFailure::ConnectionClosed => "the connection closed before the answer".into(),
        OutboundFailure::UnsupportedProtocols => {
            "the peer does not speak this protocol (not a vodmesh station, or another version)"
                .into()
        }
        OutboundFailure::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            format!("an answer that does not decode (a peer of another vodmesh version?): {e}")
        }
        OutboundFailure::Io(e) => e.to_string(),
    }
}

/// A dial error as a user reads it: for each address tried, its root cause alone
/// ("Connection refused (os error 111)"), where libp2p's text nests the same cause two or
/// three times over several lines.
pub fn dial_reason(error: &libp2p::swarm::DialError) -> String {
    use libp2p::swarm::DialError;
    match error {
        DialError::Transport(errors) => {
            let mut causes: Vec<String> = Vec::new();
            for (_, e) in errors {
                let mut root: &(dyn std::error::Error + 'static) = e;
                while let Some(next) = root.source() {
                    root = next;
                }
                let text = root.to_string();
                // libp2p's own wrappers, when they are the root, read "Multiple dial errors
                // occurred:\n - cause": the cause alone.
                let text = (text.rsplit("\n - ").next().unwrap_or(&text)).replace('\n', " ");
                if !causes.contains(&text) {
                    causes.push(text);
                }
            }
            match causes.is_empty() {
                true => "no transport could dial it".into(),
                false => causes.join("; "),
            }
        }
        DialError::WrongPeerId { obtained, .. } => {
            format!("another peer answered there ({obtained}): is the address out of date?")
        }
        other => other.to_string().replace('\n', " "),
    }
}

/// A request-response protocol as a client speaks it.
#[derive(Clone, Debug)]
pub struct Protocol {
    /// Its versioned name.
    pub name: StreamProtocol,
    /// Its size caps.
    pub limits: Limits,
    /// How long one request may take.
    pub timeout: Duration,
}

#[derive(NetworkBehaviour)]
#[behaviour(prelude = "libp2p::swarm::derive_prelude")]
struct Behaviour<Req, Resp>
where
    Req: Serialize + DeserializeOwned + Send + 'static,
    Resp: Serialize + DeserializeOwned + Send + 'static,
{
    control: request_response::Behaviour<CborCodec<Req, Resp>>,
    streams: vodmesh_proto::net::streams::Behaviour,
    ping: ping::Behaviour,
}

type Reply<Resp> = oneshot::Sender<Result<Resp, ClientError>>;

enum Command<Req, Resp> {
    Request(Req, Reply<Resp>),
    /// Where a peer listens; answered once the swarm knows (and dials) them.
    Addresses(PeerId, Vec<Multiaddr>, oneshot::Sender<()>),
}

/// A connection to one peer speaking one request-response protocol, which can also open
/// streams to other peers (the engines a director names).
pub struct RpcClient<Req, Resp> {
    peer: PeerId,
    local: PeerId,
    tx: mpsc::Sender<Command<Req, Resp>>,
    streams: vodmesh_proto::net::streams::Control,
    task: JoinHandle<()>,
}

impl<Req, Resp> RpcClient<Req, Resp>
where
    Req: Serialize + DeserializeOwned + Send + 'static,
    Resp: Serialize + DeserializeOwned + Send + 'static,
{
    /// Connects with identity `key` to the peer at the first of `addrs` that answers (each
    /// ending in `/p2p/<peer id>`; addresses of another peer than the first's are skipped),
    /// for `protocol`.
    pub async fn connect(
        addrs: &[Multiaddr],
        key: Keypair,
        protocol: Protocol,
    ) -> Result<Self, ClientError> {
        let first = addrs.first().ok_or(ClientError::NoAddress)?;
        let peer = peer_of(first).ok_or_else(|| ClientError::NoPeerId(first.clone()))?;
        let local = key.public().to_peer_id();
        let mut swarm = build_swarm(key, |_| Behaviour {
            control: request_response::Behaviour::with_codec(
                CborCodec::new(protocol.limits),
                [(protocol.name, ProtocolSupport::Outbound)],
                request_response::Config::default().with_request_timeout(protocol.timeout),
            ),
            streams: vodmesh_proto::net::streams::Behaviour::new(),
            ping: ping::Behaviour::new(
                ping::Config::new()
                    .with_interval(PING_INTERVAL)
                    .with_timeout(PING_TIMEOUT),
            ),
        })?;
        let mut reached = Err(DialFailure::TimedOut);
        for addr in addrs.iter().filter(|a| peer_of(a) == Some(peer)) {
            reached = dial(&mut swarm, peer, addr).await.map(|()| addr.clone());
            if reached.is_ok() {
                break;
            }
        }
        let addr = reached.map_err(|reason| ClientError::Unreachable {
            addr: first.clone(),
            reason: Box::new(reason),
        })?;
        let streams = swarm.behaviour().streams.new_control();
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(drive(swarm, (peer, addr), rx));
        Ok(Self {
            peer,
            local,
            tx,
            streams,
            task,
        })
    }

    /// Sends `request` and waits for the answer.
    pub async fn request(&self, request: Req) -> Result<Resp, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Request(request, reply))
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)?
    }
}

impl<Req, Resp> RpcClient<Req, Resp> {
    /// The remote peer.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// This client's own peer id (the identity the remote sees).
    pub fn local_peer(&self) -> PeerId {
        self.local
    }

    /// Tells the client where `peer` (an engine) listens, so streams to it can be opened;
    /// only its TCP addresses when it has any ([`prefer_tcp`]).
    pub async fn add_addresses(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    ) -> Result<(), ClientError> {
        let (known, ack) = oneshot::channel();
        self.tx
            .send(Command::Addresses(peer, prefer_tcp(&addrs), known))
            .await
            .map_err(|_| ClientError::Closed)?;
        // Before a stream is opened, the swarm must know the addresses: a stream's own dial
        // by peer id finds none otherwise, and fails.
        ack.await.map_err(|_| ClientError::Closed)
    }

    /// Opens a stream of `protocol` to `peer` (whose addresses were added before), dialing it
    /// if needed. The stream is queued at the peer when this returns; a peer whose queue for
    /// `protocol` is full answers [`ClientError::Busy`] (a wait), one that cannot be dialed
    /// fails at once, and one that does not answer (frozen) within [`OPEN_STREAM_TIMEOUT`]
    /// fails then: the caller has other engines to try.
    pub async fn open_stream(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
    ) -> Result<libp2p::Stream, ClientError> {
        let mut control = self.streams.clone();
        let open = control.open_stream(peer, protocol);
        match tokio::time::timeout(OPEN_STREAM_TIMEOUT, open).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(OpenStreamError::NotConnected(reason))) => {
                Err(ClientError::NotConnected { peer, reason })
            }
            Ok(Err(OpenStreamError::Busy(_))) => Err(ClientError::Busy(peer)),
            Ok(Err(e)) => Err(ClientError::Stream {
                peer,
                reason: e.to_string(),
            }),
            Err(_) => Err(ClientError::Stream {
                peer,
                reason: "timed out".into(),
            }),
        }
    }
}

impl<Req, Resp> std::fmt::Debug for RpcClient<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient")
            .field("peer", &self.peer)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl<Req, Resp> Drop for RpcClient<Req, Resp> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Dials `peer` at `addr` and waits until connected; the reason when it is not.
async fn dial<B: NetworkBehaviour>(
    swarm: &mut Swarm<B>,
    peer: PeerId,
    addr: &Multiaddr,
) -> Result<(), DialFailure> {
    swarm.dial(addr.clone())?;
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == peer => {
                    return Ok(());
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    return Err(error.into());
                }
                _ => {}
            }
        }
    })
    .await;
    connected.unwrap_or(Err(DialFailure::TimedOut))
}

/// The client's task: sends what the client asks, matches each answer to its request, and
/// ends when the client is dropped.
async fn drive<Req, Resp>(
    mut swarm: Swarm<Behaviour<Req, Resp>>,
    (peer, addr): (PeerId, Multiaddr),
    mut rx: mpsc::Receiver<Command<Req, Resp>>,
) where
    Req: Serialize + DeserializeOwned + Send + 'static,
    Resp: Serialize + DeserializeOwned + Send + 'static,
{
    let mut pending: HashMap<OutboundRequestId, Reply<Resp>> = HashMap::new();
    loop {
        tokio::select! {
            command = rx.recv() => match command {
                Some(Command::Request(request, reply)) => {
                    // With the address it was reached at: a connection that closed (an idle
                    // time-out, the peer restarting) is dialed again there. By peer id alone,
                    // the first failed dial made libp2p forget the address, and every request
                    // after it failed at once with "Failed to dial the requested peer".
                    let again = vec![addr.clone()];
                    let control = &mut swarm.behaviour_mut().control;
                    let id = control.send_request_with_addresses(&peer, request, again);
                    pending.insert(id, reply);
                }
                Some(Command::Addresses(other, addrs, known)) => {
                    // The stream behaviour dials by peer id when a stream is opened, with the
                    // addresses known by then.
                    for addr in addrs {
                        swarm.add_peer_address(other, addr);
                    }
                    let _ = known.send(());
                }
                None => break,
            },
            event = swarm.select_next_some() => match event {
                SwarmEvent::Behaviour(BehaviourEvent::Control(
                    request_response::Event::Message {
                        message: request_response::Message::Response { request_id, response },
                        ..
                    },
                )) => {
                    if let Some(reply) = pending.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Control(
                    request_response::Event::OutboundFailure { request_id, error, .. },
                )) => {
                    if let Some(reply) = pending.remove(&request_id) {
                        let _ = reply.send(Err(ClientError::Request(error)));
                    }
                }
                // A peer that does not speak ping is left alone; one that stopped answering
                // is gone: its connection is closed, which fails what waits on it.
                SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                    peer,
                    connection,
                    result: Err(error),
                })) if !matches!(error, ping::Failure::Unsupported) => {
                    tracing::debug!(%peer, %error, "peer stopped answering pings; closing the connection");
                    swarm.close_connection(connection);
                }
                _ => {}
            },
        }
    }
}
