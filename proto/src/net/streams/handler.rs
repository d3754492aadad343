//! One connection's side of the stream behaviour: opens requested outbound substreams (as many
//! at once as the muxer takes), negotiates inbound ones for every accepted protocol, and
//! writes or reads the status byte that tells an opener its stream was queued or refused.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt};
use libp2p::core::upgrade::{InboundUpgrade, OutboundUpgrade, UpgradeInfo};
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedOutbound, ListenUpgradeError,
};
use libp2p::swarm::{
    ConnectionHandler, ConnectionHandlerEvent, StreamUpgradeError, SubstreamProtocol,
};
use libp2p::{PeerId, Stream, StreamProtocol};

use super::control::{Inboxes, Open, OpenStreamError};
use super::{BUSY, QUEUED};

/// The handler of one connection.
pub struct Handler {
    remote: PeerId,
    inboxes: Arc<Mutex<Inboxes>>,
    open_timeout: Duration,
    /// Opens routed here, not yet requested from the connection.
    opens: VecDeque<Open>,
}

impl Handler {
    pub(super) fn new(
        remote: PeerId,
        inboxes: Arc<Mutex<Inboxes>>,
        open_timeout: Duration,
    ) -> Self {
        Self {
            remote,
            inboxes,
            open_timeout,
            opens: VecDeque::new(),
        }
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Open;
    type ToBehaviour = Open;
    type InboundProtocol = Accept;
    type OutboundProtocol = Request;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = Open;

    fn listen_protocol(&self) -> SubstreamProtocol<Accept> {
        let protocols = Inboxes::lock(&self.inboxes).protocols();
        SubstreamProtocol::new(
            Accept {
                protocols,
                remote: self.remote,
                inboxes: self.inboxes.clone(),
            },
            (),
        )
    }

    fn connection_keep_alive(&self) -> bool {
        !self.opens.is_empty()
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ConnectionHandlerEvent<Request, Open, Open>> {
        while let Some(open) = self.opens.pop_front() {
            if open.is_abandoned() {
                continue;
            }
            let request = Request {
                protocol: open.protocol.clone(),
            };
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(request, open).with_timeout(self.open_timeout),
            });
        }
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, open: Open) {
        self.opens.push_back(open);
    }

    fn poll_close(&mut self, _: &mut Context<'_>) -> Poll<Option<Open>> {
        // Opens not yet requested go back to the behaviour, for another connection.
        Poll::Ready(self.opens.pop_front())
    }

    fn on_connection_event(&mut self, event: ConnectionEvent<Accept, Request, (), Open>) {
        match event {
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                info: open,
            }) => open.answer(Ok(stream)),
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info: open, error }) => {
                let error = match error {
                    StreamUpgradeError::Timeout => {
                        OpenStreamError::Io(io::Error::from(io::ErrorKind::TimedOut))
                    }
                    StreamUpgradeError::NegotiationFailed => {
                        OpenStreamError::UnsupportedProtocol(open.protocol.clone())
                    }
                    StreamUpgradeError::Apply(Refusal::Busy) => {
                        OpenStreamError::Busy(open.protocol.clone())
                    }
                    StreamUpgradeError::Apply(Refusal::Io(e)) | StreamUpgradeError::Io(e) => {
                        OpenStreamError::Io(e)
                    }
                };
                open.fail(error);
            }
            ConnectionEvent::ListenUpgradeError(ListenUpgradeError { error, .. }) => {
                tracing::debug!(peer = %self.remote, %error, "inbound stream lost before it was queued");
            }
            _ => {}
        }
    }
}

/// The inbound side: every accepted protocol; a negotiated stream takes a place in its
/// protocol's queue (status [`QUEUED`]) or is refused (status [`BUSY`], then closed).
pub struct Accept {
    protocols: Vec<StreamProtocol>,
    remote: PeerId,
    inboxes: Arc<Mutex<Inboxes>>,
}

impl UpgradeInfo for Accept {
    type Info = StreamProtocol;
    type InfoIter = std::vec::IntoIter<StreamProtocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.protocols.clone().into_iter()
    }
}

impl InboundUpgrade<Stream> for Accept {
    type Output = ();
    type Error = io::Error;
    type Future = BoxFuture<'static, Result<(), io::Error>>;

    fn upgrade_inbound(self, mut stream: Stream, protocol: StreamProtocol) -> Self::Future {
        // The place is taken before the byte is written, so that the byte never promises more
        // places than the queue has.
        let remote = self.remote;
        let place = Inboxes::lock(&self.inboxes).reserve(&protocol, remote);
        async move {
            match place {
                Some(place) => {
                    stream.write_all(&[QUEUED]).await?;
                    stream.flush().await?;
                    place.fill(stream);
                }
                None => {
                    tracing::debug!(peer = %remote, %protocol, "inbound queue full, or the peer holds its share of it: answering busy");
                    stream.write_all(&[BUSY]).await?;
                    stream.close().await?;
                }
            }
            Ok(())
        }
        .boxed()
    }
}

/// The outbound side: one protocol; the stream is the opener's once the listener's status
/// byte says [`QUEUED`].
pub struct Request {
    protocol: StreamProtocol,
}

/// Why the listener did not take a stream it negotiated.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Its queue for the protocol was full.
    #[error("busy")]
    Busy,
    /// The status byte did not arrive (or was not one).
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl UpgradeInfo for Request {
    type Info = StreamProtocol;
    type InfoIter = std::iter::Once<StreamProtocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        std::iter::once(self.protocol.clone())
    }
}

impl OutboundUpgrade<Stream> for Request {
    type Output = Stream;
    type Error = Refusal;
    type Future = BoxFuture<'static, Result<Stream, Refusal>>;

    fn upgrade_outbound(self, mut stream: Stream, _: StreamProtocol) -> Self::Future {
        async move {
            let mut status = [0u8; 1];
            stream.read_exact(&mut status).await?;
            match status[0] {
                QUEUED => Ok(stream),
                BUSY => Err(Refusal::Busy),
                other => Err(Refusal::Io(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unknown stream status {other}"),
                ))),
            }
        }
        .boxed()
    }
}
