//! The engine's side of the bulk path (`vodmesh_proto::net::bulk`): `/vodmesh/stream/1` and
//! `/vodmesh/copy/1` exchanges on TLS connections of their own, served by the same
//! [`StreamService`] and copy [`Server`](super::copy::Server) as the libp2p streams (the same
//! tokens, bound to the peer id of the client's certificate, the same `--max-streams`,
//! handovers, copy approvals and slots).
//!
//! Any host can connect, so every stage is bounded: connections at once
//! ([`MAX_CONNECTIONS`], past it a connection is closed unread), the handshake
//! ([`bulk::HANDSHAKE_WITHIN`]), connections a peer holds ([`MAX_CONNECTIONS_PER_PEER`]:
//! past it, the first request is answered busy and the connection closed), a request's size
//! (`stream::MAX_FRAME`) and the wait for it ([`IDLE_WITHIN`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::AsyncWriteExt;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use vodmesh_proto::net::bulk::{self, Exchange};

use super::accept;
use super::copy;
use super::peers::{REQUEST_WITHIN, read_within};
use super::stream::{MAX_STREAMS_PER_PEER, StreamService};
use crate::peer_slots::PeerSlots;

/// Bulk connections an engine holds at once, handshakes included; past it, a new one is
/// closed at once (the console falls back to a libp2p stream).
pub(crate) const MAX_CONNECTIONS: usize = 2048;

/// Connections one peer holds at once: its streams at once, and as many idle for the next
/// segments (an engine that copies holds fewer: its fetches at once).
pub(crate) const MAX_CONNECTIONS_PER_PEER: usize = 2 * MAX_STREAMS_PER_PEER;

/// A connection with no request for this long is closed (the console's pool lets its idle
/// connections go sooner).
pub(crate) const IDLE_WITHIN: Duration = Duration::from_secs(30);

/// Binds the bulk listener on the IP of the engine's first TCP listen address in `listened`
/// (any port): the address consoles are told of.
pub(crate) async fn bind(listened: &[Multiaddr]) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(SocketAddr::new(ip_of(listened), 0)).await?;
    let bound = listener.local_addr()?;
    Ok((listener, bound))
}

/// The IP of the first TCP address in `addrs` (else of the first address, else 127.0.0.1).
fn ip_of(addrs: &[Multiaddr]) -> IpAddr {
    let ip = |a: &Multiaddr| {
        a.iter().find_map(|p| match p {
            Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
            Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
            _ => None,
        })
    };
    (addrs.iter().filter(|a| vodmesh_proto::net::is_tcp(a)))
        .chain(addrs)
        .find_map(ip)
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// What a bulk connection's exchanges are served by.
#[derive(Clone)]
struct Services {
    /// `/vodmesh/stream/1`: consoles' streams.
    streams: StreamService,
    /// `/vodmesh/copy/1`: other engines' copies.
    copies: copy::Server,
}

/// Serves the bulk connections of `listener` with `streams` and `copies`, each in a task,
/// until `stop`; counts each handshake done in `metrics`.
pub(crate) async fn serve(
    (index, metrics): (usize, crate::metrics::Metrics),
    listener: TcpListener,
    acceptor: bulk::Acceptor,
    (streams, copies): (StreamService, copy::Server),
    stop: CancellationToken,
) {
    let services = Services { streams, copies };
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_peer = PeerSlots::new(MAX_CONNECTIONS_PER_PEER);
    let incoming = Box::pin(futures::stream::unfold(listener, |listener| async move {
        loop {
            match listener.accept().await {
                Ok((tcp, from)) => return Some(((from, tcp), listener)),
                // Out of descriptors, a connection reset before it was accepted: the next.
                Err(e) => {
                    tracing::debug!(error = %e, "bulk accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }));
    let ends = stop.clone();
    accept::each(incoming, stop, move |from: SocketAddr, tcp: TcpStream| {
        let permit = connections.clone().try_acquire_owned();
        let (acceptor, services, per_peer) = (acceptor.clone(), services.clone(), per_peer.clone());
        let metrics = metrics.clone();
        let stop = ends.clone();
        async move {
            let Ok(_permit) = permit else {
                tracing::debug!(index, %from, "bulk connection refused: at the engine's bound");
                return;
            };
            let (peer, exchange, conn) = match acceptor.accept(tcp).await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!(index, %from, error = %e, "bulk handshake failed");
                    return;
                }
            };
            metrics.bulk_connection();
            let Some(_mine) = per_peer.take(peer) else {
                tracing::debug!(index, %peer, "bulk connection refused: at the peer's bound");
                answer_busy(exchange, conn).await;
                return;
            };
            tokio::select! {
                () = stop.cancelled() => {}
                () = exchanges(index, (peer, exchange), conn, &services) => {}
            }
        }
    })
    .await;
}

/// A connection past its peer's share ([`MAX_CONNECTIONS_PER_PEER`]): its first request (read
/// within [`REQUEST_WITHIN`]) is answered busy, as a stream past the peer's streams is, then
/// the connection is closed. A console that holds its share already (two plays from one
/// identity at once, say) then waits as for any busy engine: closed unanswered, the
/// connection looked like an engine lost, and the play ended if no other engine held the
/// segment.
async fn answer_busy(exchange: Exchange, mut conn: bulk::ServerConn) {
    use vodmesh_proto::copy::{self, CopyReply, CopyRequest};
    use vodmesh_proto::stream::{self, StreamReply, StreamRequest};
    let answered = match exchange {
        Exchange::Stream => {
            let busy = StreamReply::Busy;
            answer_first::<StreamRequest, _>(&mut conn, stream::MAX_FRAME, &busy).await
        }
        Exchange::Copy => {
            let busy = CopyReply::Refused("busy: at the peer's bulk connections".into());
            answer_first::<CopyRequest, _>(&mut conn, copy::MAX_FRAME, &busy).await
        }
    };
    if let Err(e) = answered {
        tracing::debug!(?exchange, error = %e, "a connection past the peer's share");
    }
    let _ = conn.close().await;
}

/// Reads a request `Q` on `conn` (at most `limit` bytes, within [`REQUEST_WITHIN`]) and sends
/// `answer`, whatever it asked.
async fn answer_first<Q: serde::de::DeserializeOwned, A: serde::Serialize>(
    conn: &mut bulk::ServerConn,
    limit: usize,
    answer: &A,
) -> std::io::Result<()> {
    read_within::<_, Q>(conn, limit, REQUEST_WITHIN).await?;
    vodmesh_proto::codec::write_frame(conn, answer).await
}

/// The exchanges of one connection from `peer`, one after another, until one does not end
/// whole, the peer sends nothing for [`IDLE_WITHIN`] or closes; then the connection is closed.
async fn exchanges(
    index: usize,
    (peer, exchange): (PeerId, Exchange),
    mut conn: bulk::ServerConn,
    services: &Services,
) {
    loop {
        let served = match exchange {
            Exchange::Stream => {
                match read_within(&mut conn, vodmesh_proto::stream::MAX_FRAME, IDLE_WITHIN).await {
                    Ok(request) => services.streams.serve(peer, &mut conn, request).await,
                    Err(e) => Err(e),
                }
            }
            Exchange::Copy => {
                match read_within(&mut conn, vodmesh_proto::copy::MAX_FRAME, IDLE_WITHIN).await {
                    Ok(request) => services.copies.exchange(peer, &mut conn, request).await,
                    Err(e) => Err(e),
                }
            }
        };
        match served {
            Ok(true) => {}
            Ok(false) => break,
            // Closed by the client between exchanges: the connection ends.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => {
                tracing::debug!(index, %peer, ?exchange, error = %e, "bulk exchange ended early");
                break;
            }
        }
    }
    let _ = conn.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listener_takes_the_ip_of_the_tcp_address() {
        let a = |s: &str| s.parse::<Multiaddr>().unwrap();
        let quic = a("/ip4/10.0.0.2/udp/1/quic-v1");
        let tcp = a("/ip4/10.0.0.1/tcp/1");
        assert_eq!(ip_of(&[quic.clone(), tcp]), IpAddr::from([10, 0, 0, 1]));
        assert_eq!(ip_of(&[quic]), IpAddr::from([10, 0, 0, 2]));
        assert_eq!(ip_of(&[]), IpAddr::from([127, 0, 0, 1]));
    }
}
