//! The application's side of the stream behaviour: [`Control`] opens streams and registers
//! protocols, [`IncomingStreams`] yields the queued inbound streams of one protocol.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use futures::SinkExt;
use futures::channel::{mpsc, oneshot};
use libp2p::{PeerId, Stream, StreamProtocol};

/// A handle for opening streams and accepting a protocol's inbound streams; clone it freely.
#[derive(Clone)]
pub struct Control {
    requests: mpsc::Sender<Open>,
    inboxes: Arc<Mutex<Inboxes>>,
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

impl Control {
    pub(super) fn new(requests: mpsc::Sender<Open>, inboxes: Arc<Mutex<Inboxes>>) -> Self {
        Self { requests, inboxes }
    }

    /// Opens a stream of `protocol` to `peer`, dialing the peer when it is not connected, and
    /// returns once the peer has queued the stream for its application.
    ///
    /// Never dropped on the way: the open waits for a connection, then for the muxer, then for
    /// the peer's answer. It fails when the peer cannot be dialed
    /// ([`OpenStreamError::NotConnected`]), does not speak `protocol`, has `protocol`'s queue
    /// full ([`OpenStreamError::Busy`]), or the connection fails.
    pub async fn open_stream(
        &mut self,
        peer: PeerId,
        protocol: StreamProtocol,
    ) -> Result<Stream, OpenStreamError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Open {
                peer,
                protocol,
                reply,
            })
            .await
            .map_err(|_| OpenStreamError::Stopped)?;
        answer
            .await
            .map_err(|_| OpenStreamError::ConnectionClosed)?
    }

    /// Accepts the inbound streams of `protocol` from now on, until the returned
    /// [`IncomingStreams`] is dropped; queued up to the behaviour's
    /// [`super::Config::inbound_queue`].
    pub fn accept(
        &mut self,
        protocol: StreamProtocol,
    ) -> Result<IncomingStreams, AlreadyRegistered> {
        Inboxes::lock(&self.inboxes).register(protocol)
    }
}

/// A request to open a stream, on its way from a [`Control`] to a connection (the message
/// between the behaviour and its handlers).
pub struct Open {
    pub(super) peer: PeerId,
    pub(super) protocol: StreamProtocol,
    reply: oneshot::Sender<Result<Stream, OpenStreamError>>,
}

impl fmt::Debug for Open {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Open")
            .field("peer", &self.peer)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl Open {
    /// Whether the opener stopped waiting (its future was dropped, e.g. by a time-out).
    pub(super) fn is_abandoned(&self) -> bool {
        self.reply.is_canceled()
    }

    /// Answers the opener.
    pub(super) fn answer(self, result: Result<Stream, OpenStreamError>) {
        // An opener that stopped waiting drops the stream with the message.
        let _ = self.reply.send(result);
    }

    /// Answers the opener with `error`.
    pub(super) fn fail(self, error: OpenStreamError) {
        self.answer(Err(error));
    }
}

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenStreamError {
    /// The peer does not accept the protocol (or no longer does).
    #[error("the peer does not accept {0}")]
    UnsupportedProtocol(StreamProtocol),
    /// The peer holds as many unaccepted streams of the protocol as its queue takes: it is
    /// alive and overloaded, a wait rather than a failure.
    #[error("the peer is busy: its queue of {0} streams is full")]
    Busy(StreamProtocol),
    /// The peer could not be dialed.
    #[error("cannot connect: {0}")]
    NotConnected(String),
    /// The connection closed before the stream was open.
    #[error("the connection closed before the stream opened")]
    ConnectionClosed,
    /// The stream failed while it was being opened (negotiation, the status byte, a
    /// time-out).
    #[error("opening the stream: {0}")]
    Io(#[from] io::Error),
    /// The swarm that owns the behaviour is gone.
    #[error("the network task stopped")]
    Stopped,
}

/// The protocol is already accepted by another [`IncomingStreams`].
#[derive(Debug, thiserror::Error)]
#[error("the protocol is already accepted")]
pub struct AlreadyRegistered;

/// The queued inbound streams of one protocol, as `(peer, stream)`; dropping it stops
/// accepting the protocol (and drops what was queued).
#[must_use = "streams queue up until they are taken"]
pub struct IncomingStreams {
    inbox: Arc<Mutex<Inbox>>,
}

impl fmt::Debug for IncomingStreams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingStreams").finish_non_exhaustive()
    }
}

impl futures::Stream for IncomingStreams {
    type Item = (PeerId, Stream);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut inbox = lock(&self.inbox);
        match inbox.queue.pop_front() {
            Some(next) => {
                inbox.release(&next.0);
                Poll::Ready(Some(next))
            }
            None => {
                inbox.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for IncomingStreams {
    fn drop(&mut self) {
        let mut inbox = lock(&self.inbox);
        inbox.open = false;
        inbox.queue.clear();
        inbox.by_peer.clear();
    }
}

/// Every protocol's inbox, shared by the behaviour's handlers and the [`Control`]s.
pub(super) struct Inboxes {
    bound: usize,
    per_peer: usize,
    by_protocol: HashMap<StreamProtocol, Arc<Mutex<Inbox>>>,
}

/// One protocol's queue.
struct Inbox {
    queue: VecDeque<(PeerId, Stream)>,
    /// Places taken by streams whose status byte is being written.
    reserved: usize,
    bound: usize,
    /// Places one peer may hold (queued or reserved).
    per_peer: usize,
    /// Places each peer holds now; peers holding none are not kept.
    by_peer: HashMap<PeerId, usize>,
    waker: Option<Waker>,
    /// False once its [`IncomingStreams`] is dropped.
    open: bool,
}

impl Inbox {
    /// `peer` gives back one place (taken by the application, or never filled).
    fn release(&mut self, peer: &PeerId) {
        if let Some(held) = self.by_peer.get_mut(peer) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                self.by_peer.remove(peer);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned one still holds consistent data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inboxes {
    pub(super) fn new(bound: usize, per_peer: usize) -> Self {
        Self {
            bound: bound.max(1),
            per_peer: per_peer.max(1),
            by_protocol: HashMap::new(),
        }
    }

    pub(super) fn lock(this: &Mutex<Self>) -> MutexGuard<'_, Self> {
        lock(this)
    }

    fn register(&mut self, protocol: StreamProtocol) -> Result<IncomingStreams, AlreadyRegistered> {
        self.by_protocol.retain(|_, inbox| lock(inbox).open);
        if self.by_protocol.contains_key(&protocol) {
            return Err(AlreadyRegistered);
        }
        let inbox = Arc::new(Mutex::new(Inbox {
            queue: VecDeque::new(),
            reserved: 0,
            bound: self.bound,
            per_peer: self.per_peer,
            by_peer: HashMap::new(),
            waker: None,
            open: true,
        }));
        self.by_protocol.insert(protocol, inbox.clone());
        Ok(IncomingStreams { inbox })
    }

    /// The protocols accepted now.
    pub(super) fn protocols(&self) -> Vec<StreamProtocol> {
        self.by_protocol
            .iter()
            .filter(|(_, inbox)| lock(inbox).open)
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// A place in `protocol`'s queue for a stream from `peer`, or `None` when the queue is
    /// full, `peer` holds its share of it already, or the protocol is no longer accepted.
    pub(super) fn reserve(&self, protocol: &StreamProtocol, peer: PeerId) -> Option<Place> {
        let inbox = self.by_protocol.get(protocol)?;
        let mut i = lock(inbox);
        let held = i.by_peer.get(&peer).copied().unwrap_or(0);
        if !i.open || i.queue.len() + i.reserved >= i.bound || held >= i.per_peer {
            return None;
        }
        i.reserved += 1;
        i.by_peer.insert(peer, held + 1);
        drop(i);
        Some(Place {
            inbox: Some(inbox.clone()),
            peer,
        })
    }
}

/// A reserved place in a protocol's queue, held by a peer: filled with its stream, or given
/// back when dropped.
pub(super) struct Place {
    inbox: Option<Arc<Mutex<Inbox>>>,
    peer: PeerId,
}

impl Place {
    /// Queues `stream` in the place (dropping it if the protocol is no longer accepted).
    pub(super) fn fill(mut self, stream: Stream) {
        let Some(inbox) = self.inbox.take() else {
            return;
        };
        let mut i = lock(&inbox);
        i.reserved = i.reserved.saturating_sub(1);
        if i.open {
            i.queue.push_back((self.peer, stream));
            if let Some(w) = i.waker.take() {
                w.wake();
            }
        } else {
            i.release(&self.peer);
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some(inbox) = self.inbox.take() {
            let mut i = lock(&inbox);
            i.reserved = i.reserved.saturating_sub(1);
            i.release(&self.peer);
        }
    }
}
