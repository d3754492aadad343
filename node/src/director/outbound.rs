//! Asking other directors (`/vodmesh/director/1` as a client): work that runs off the loop
//! (a miss, a replication, a publish) sends its request through an [`Asker`]; the loop puts
//! it on the swarm and keeps its reply channel by request id ([`Outbound`]) until the answer,
//! or the failure, arrives.

use std::collections::HashMap;
use std::time::Duration;

use libp2p::request_response::{OutboundFailure, OutboundRequestId};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};
use vodmesh_proto::director::{ErrorReply, Request, Response};

/// Why another director gave no answer to use.
#[derive(Debug, thiserror::Error)]
pub(super) enum AskError {
    /// This director is stopping.
    #[error("director stopped")]
    Stopped,
    /// The request did not get through (no connection, a time-out, a closed stream).
    #[error(transparent)]
    Failed(#[from] OutboundFailure),
    /// No answer within the caller's patience.
    #[error("no answer in time")]
    TimedOut,
    /// The other director refused.
    #[error("{0}")]
    Refused(ErrorReply),
    /// An answer of another kind than the request calls for.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

impl AskError {
    /// An answer of the wrong kind.
    pub(super) fn unexpected(response: &Response) -> Self {
        Self::Unexpected(format!("{response:?}"))
    }
}

/// A request for the loop to send.
#[derive(Debug)]
pub(super) struct Ask {
    /// The director asked.
    pub(super) peer: PeerId,
    /// Where it may be reached (added to the swarm's address book).
    pub(super) addrs: Vec<Multiaddr>,
    /// The request.
    pub(super) request: Request,
    /// Where its answer goes.
    pub(super) reply: oneshot::Sender<Result<Response, AskError>>,
}

/// Asks other directors through the loop; cheap to clone into background work.
#[derive(Clone, Debug)]
pub(super) struct Asker {
    asks: mpsc::Sender<Ask>,
}

impl Asker {
    /// Sends `request` to director `peer` (reachable at `addrs`, or where the swarm knows it)
    /// and waits for its answer; a refusal is an error.
    pub(super) async fn ask(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: Request,
    ) -> Result<Response, AskError> {
        let (reply, answer) = oneshot::channel();
        let ask = Ask {
            peer,
            addrs,
            request,
            reply,
        };
        self.asks.send(ask).await.map_err(|_| AskError::Stopped)?;
        match answer.await {
            Ok(Ok(Response::Error(e))) => Err(AskError::Refused(e)),
            Ok(answer) => answer,
            Err(_) => Err(AskError::Stopped),
        }
    }

    /// [`Asker::ask`], giving up after `patience`.
    pub(super) async fn ask_within(
        &self,
        patience: Duration,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: Request,
    ) -> Result<Response, AskError> {
        tokio::time::timeout(patience, self.ask(peer, addrs, request))
            .await
            .unwrap_or(Err(AskError::TimedOut))
    }
}

/// The loop's side: requests waiting to be sent, and those waiting for their answer.
#[derive(Debug)]
pub(super) struct Outbound {
    asks: mpsc::Receiver<Ask>,
    pending: HashMap<OutboundRequestId, oneshot::Sender<Result<Response, AskError>>>,
}

impl Outbound {
    /// The loop's side and the askers' handle, with room for `queue` requests not sent yet.
    pub(super) fn new(queue: usize) -> (Self, Asker) {
        let (asks, rx) = mpsc::channel(queue);
        let outbound = Self {
            asks: rx,
            pending: HashMap::new(),
        };
        (outbound, Asker { asks })
    }

    /// The next request to send (never ends while an [`Asker`] lives).
    pub(super) async fn next(&mut self) -> Option<Ask> {
        self.asks.recv().await
    }

    /// Request `id` was sent; its answer goes to `reply`.
    pub(super) fn sent(
        &mut self,
        id: OutboundRequestId,
        reply: oneshot::Sender<Result<Response, AskError>>,
    ) {
        self.pending.insert(id, reply);
    }

    /// The answer to request `id`.
    pub(super) fn answered(&mut self, id: OutboundRequestId, response: Response) {
        if let Some(reply) = self.pending.remove(&id) {
            let _ = reply.send(Ok(response));
        }
    }

    /// Request `id` failed.
    pub(super) fn failed(&mut self, id: OutboundRequestId, error: OutboundFailure) {
        if let Some(reply) = self.pending.remove(&id) {
            let _ = reply.send(Err(error.into()));
        }
    }
}
