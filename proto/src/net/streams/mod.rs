//! vodmesh's stream behaviour: raw streams of any protocol (`/vodmesh/stream/1`,
//! `/vodmesh/copy/1`, `/vodmesh/ingest/1`, `/vodmesh/blade/1`) opened to a peer and accepted
//! from peers, with the API of libp2p-stream 0.5 ([`Behaviour`], [`Control::open_stream`],
//! [`Control::accept`] -> [`IncomingStreams`]) and none of its losses.
//!
//! libp2p-stream 0.5 hands each inbound stream to the application through a one-slot channel
//! (`mpsc::channel(0)` + `try_send`) and drops the stream when the slot is taken; its dial
//! requests go through a one-slot channel too and are dropped the same way (rust-libp2p issue
//! 6157). Under load, openers saw streams that never completed and retried. Here:
//!
//! - **Inbound streams are queued, per protocol, up to a bound** ([`Config::inbound_queue`],
//!   256 by default) until the application takes them from its [`IncomingStreams`]. Below the
//!   bound no stream is ever dropped.
//! - **One peer holds a share of the queue at most** ([`Config::inbound_per_peer`], 64 by
//!   default): a peer that opens streams faster than the application takes them (a flood, or
//!   a client gone wrong) is answered busy past its share, while other peers' streams still
//!   find places.
//! - **Past the bound the opener is told.** Every stream opened through this behaviour starts
//!   with one status byte from the listener, written right after protocol negotiation:
//!   [`QUEUED`] once the stream holds a place in the queue, or [`BUSY`] (then end of stream)
//!   when the queue is full. [`Control::open_stream`] returns only after the byte, so the
//!   opener tells a busy peer ([`OpenStreamError::Busy`], a wait) from a lost stream (an I/O
//!   error: the connection or the peer went away). The byte rides in the round trip that
//!   multistream-select's confirmation costs anyway.
//! - **Opens wait, they are never dropped.** An open to a peer without a connection dials it
//!   (once, however many opens wait) and is handed to the connection when it is established;
//!   it fails only when the dial does. Opens to a connected peer are all requested at once,
//!   not one at a time per connection: yamux bounds them (its ACK backlog of 256 makes the
//!   rest wait in the muxer) and [`super::MAX_STREAMS_PER_CONNECTION`] is raised above the
//!   default so that a few hundred queued streams do not close the connection.
//!
//! The module keeps the shape rust-libp2p's maintainers advise for bulk streams: a
//! [`libp2p::swarm::NetworkBehaviour`] (this file: routing opens to connections, dialing)
//! and a [`libp2p::swarm::ConnectionHandler`] (`handler`: the substreams and the status byte),
//! with [`Control`] and [`IncomingStreams`] (`control`) as the application's side.

mod control;
mod handler;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc;
use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::behaviour::ConnectionEstablished;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionId, DialError, DialFailure, FromSwarm,
    NetworkBehaviour, NotifyHandler, PeerAddresses, THandler, THandlerOutEvent, ToSwarm,
};

use control::Inboxes;
pub use control::{AlreadyRegistered, Control, IncomingStreams, Open, OpenStreamError};
pub use handler::{Accept, Handler, Refusal, Request};

/// The listener's first byte on a stream it queued for the application.
pub const QUEUED: u8 = 0;
/// The listener's first (and only) byte on a stream it refused because the protocol's inbound
/// queue was full.
pub const BUSY: u8 = 1;

/// Opens that may wait for the behaviour at once, beyond one per [`Control`] clone: the
/// channel's bound, not a limit on open streams (a full channel makes `open_stream` wait).
const REQUESTS: usize = 64;

/// How the behaviour queues and opens streams.
#[derive(Clone, Debug)]
pub struct Config {
    /// Inbound streams of one protocol held for the application (accepted by the peer, not yet
    /// taken from [`IncomingStreams`]); past it, openers are answered [`BUSY`].
    pub inbound_queue: usize,
    /// Places in one protocol's queue that one peer may hold at once; past it, that peer is
    /// answered [`BUSY`] while others are still queued.
    pub inbound_per_peer: usize,
    /// How long opening one stream may take once its connection is up: muxer slot,
    /// protocol negotiation and the listener's status byte.
    pub open_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            inbound_queue: 256,
            inbound_per_peer: 64,
            open_timeout: Duration::from_secs(30),
        }
    }
}

impl Config {
    /// The same with `n` inbound streams queued per protocol at most (at least 1).
    pub fn with_inbound_queue(mut self, n: usize) -> Self {
        self.inbound_queue = n.max(1);
        self
    }

    /// The same with `n` places of a protocol's queue held by one peer at most (at least 1).
    pub fn with_inbound_per_peer(mut self, n: usize) -> Self {
        self.inbound_per_peer = n.max(1);
        self
    }
}

/// The stream behaviour: put it in a swarm's behaviour, and take [`Control`]s from it.
pub struct Behaviour {
    inboxes: Arc<Mutex<Inboxes>>,
    config: Config,
    /// Opens from every [`Control`].
    requests: mpsc::Receiver<Open>,
    sender: mpsc::Sender<Open>,
    /// Established connections per peer, newest last (opens go to the newest).
    connections: HashMap<PeerId, Vec<ConnectionId>>,
    /// Where peers listen, as told by `Swarm::add_peer_address` (and other behaviours): a dial
    /// by peer id for an open finds the addresses here.
    addresses: PeerAddresses,
    /// Opens waiting for a connection to their peer, which is being dialed.
    waiting: HashMap<PeerId, Vec<Open>>,
    events: VecDeque<ToSwarm<(), Open>>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self::new()
    }
}

impl Behaviour {
    /// A behaviour with the default [`Config`].
    pub fn new() -> Self {
        Self::with_config(Config::default())
    }

    /// A behaviour with `config`.
    pub fn with_config(config: Config) -> Self {
        let (sender, requests) = mpsc::channel(REQUESTS);
        Self {
            inboxes: Arc::new(Mutex::new(Inboxes::new(
                config.inbound_queue,
                config.inbound_per_peer,
            ))),
            config,
            requests,
            sender,
            connections: HashMap::new(),
            addresses: PeerAddresses::default(),
            waiting: HashMap::new(),
            events: VecDeque::new(),
        }
    }

    /// A new [`Control`] (cheap to clone) for opening and accepting streams.
    pub fn new_control(&self) -> Control {
        Control::new(self.sender.clone(), self.inboxes.clone())
    }

    fn handler(&self, peer: PeerId) -> Handler {
        Handler::new(peer, self.inboxes.clone(), self.config.open_timeout)
    }

    /// Sends `open` to the peer's newest connection, or waits for one (dialing it when no
    /// other open waits already).
    fn route(&mut self, open: Open) {
        if open.is_abandoned() {
            return;
        }
        let peer = open.peer;
        if let Some(&connection) = self.connections.get(&peer).and_then(|c| c.last()) {
            self.events.push_back(ToSwarm::NotifyHandler {
                peer_id: peer,
                handler: NotifyHandler::One(connection),
                event: open,
            });
            return;
        }
        let waiting = self.waiting.entry(peer).or_default();
        waiting.retain(|o| !o.is_abandoned());
        if waiting.is_empty() {
            tracing::debug!(%peer, "not connected; dialing for a stream");
            // A dial already under way (the caller's own) is not doubled: its outcome
            // reaches `waiting` just the same.
            self.events.push_back(ToSwarm::Dial {
                opts: DialOpts::peer_id(peer)
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build(),
            });
        }
        waiting.push(open);
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = ();

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        Ok(peer
            .map(|p| self.addresses.get(&p).collect())
            .unwrap_or_default())
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.addresses.on_swarm_event(&event);
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id,
                connection_id,
                ..
            }) => {
                self.connections
                    .entry(peer_id)
                    .or_default()
                    .push(connection_id);
                for open in self.waiting.remove(&peer_id).unwrap_or_default() {
                    self.route(open);
                }
            }
            FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id,
                connection_id,
                ..
            }) => {
                if let Some(c) = self.connections.get_mut(&peer_id) {
                    c.retain(|&id| id != connection_id);
                    if c.is_empty() {
                        self.connections.remove(&peer_id);
                    }
                }
            }
            // Our dial was not started because one is under way: its own outcome counts.
            FromSwarm::DialFailure(DialFailure {
                error: DialError::DialPeerConditionFalse(_),
                ..
            }) => {}
            FromSwarm::DialFailure(DialFailure {
                peer_id: Some(peer),
                error,
                ..
            }) => {
                if self.connections.contains_key(&peer) {
                    return;
                }
                let reason = error.to_string();
                for open in self.waiting.remove(&peer).unwrap_or_default() {
                    open.fail(OpenStreamError::NotConnected(reason.clone()));
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        open: THandlerOutEvent<Self>,
    ) {
        // A closing connection hands back the opens it had not started: they go to another
        // connection, or wait for a new one.
        if let Some(c) = self.connections.get_mut(&peer) {
            c.retain(|&id| id != connection);
            if c.is_empty() {
                self.connections.remove(&peer);
            }
        }
        self.route(open);
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<(), Open>> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Poll::Ready(event);
            }
            match self.requests.poll_next_unpin(cx) {
                Poll::Ready(Some(open)) => self.route(open),
                // The behaviour holds a sender itself: the channel never ends.
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}
