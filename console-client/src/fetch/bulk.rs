//! The console's side of the bulk path (`vodmesh_proto::net::bulk`): a segment streams over a
//! TLS connection to its engine (no yamux between TLS and the bytes) where the director names
//! the engine's bulk address, and over a libp2p stream where not ([`Wire`] is either).
//!
//! Connections are kept per engine ([`Pool`]): a stream that ends whole leaves its connection
//! for the next segment from that engine, so a console pays one handshake per engine, not one
//! per segment. An engine whose bulk address does not answer is streamed from over libp2p for
//! a while ([`FALLBACK_FOR`]). [`Fetcher::wire`] makes that choice for each attempt.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncWrite, AsyncWriteExt};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use vodmesh_client::ClientError;
use vodmesh_proto::director::SegmentLocation;
use vodmesh_proto::net::bulk;
use vodmesh_proto::stream as wire;

use super::{Attempt, AttemptError, Fetcher};
use crate::directors::AskError;
use crate::retry::Ended;

/// Idle connections kept per engine, at most.
const IDLE_PER_ENGINE: usize = 4;
/// An idle connection is let go after this: before the engine's own idle limit (30 s) would
/// close it under a request.
const KEEP_IDLE: Duration = Duration::from_secs(20);
/// After a failed bulk connection, an engine is streamed from over libp2p for this long.
const FALLBACK_FOR: Duration = Duration::from_secs(30);

/// Where one segment's bytes come from: a libp2p stream, or a bulk connection.
pub(crate) enum Wire {
    /// `/vodmesh/stream/1` on the libp2p connection to the engine.
    Stream(libp2p::Stream),
    /// A bulk connection, new or kept from an earlier segment (`reused`).
    Bulk {
        /// The connection (a TLS session's buffers: boxed, a stream is a handle).
        conn: Box<bulk::Conn>,
        /// The address it was made to.
        addr: SocketAddr,
        /// Whether it carried an earlier exchange (it may have been closed by the engine since).
        reused: bool,
    },
}

impl AsyncRead for Wire {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Wire::Stream(s) => Pin::new(s).poll_read(cx, buf),
            Wire::Bulk { conn, .. } => Pin::new(&mut **conn).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Wire {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Wire::Stream(s) => Pin::new(s).poll_write(cx, buf),
            Wire::Bulk { conn, .. } => Pin::new(&mut **conn).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Wire::Stream(s) => Pin::new(s).poll_flush(cx),
            Wire::Bulk { conn, .. } => Pin::new(&mut **conn).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Wire::Stream(s) => Pin::new(s).poll_close(cx),
            Wire::Bulk { conn, .. } => Pin::new(&mut **conn).poll_close(cx),
        }
    }
}

/// A console's bulk connections, by engine.
pub(crate) struct Pool {
    key: Keypair,
    engines: Mutex<HashMap<PeerId, Engine>>,
}

/// What a [`Pool`] keeps of one engine.
struct Engine {
    connector: bulk::Connector,
    /// Kept connections: when each was left, its address, the connection.
    idle: Vec<(Instant, SocketAddr, Box<bulk::Conn>)>,
    /// When its bulk address last failed.
    failed: Option<Instant>,
}

impl Pool {
    /// Connections made with identity `key` (the one its tokens are bound to).
    pub(crate) fn new(key: Keypair) -> Self {
        Self {
            key,
            engines: Mutex::default(),
        }
    }

    /// The bulk address to reach `location`'s engine at, unless it has none or failed lately.
    pub(crate) fn address(&self, location: &SegmentLocation) -> Option<SocketAddr> {
        let failed = self.engines.lock().ok().and_then(|engines| {
            let engine = engines.get(&location.engine)?;
            engine.failed.filter(|at| at.elapsed() < FALLBACK_FOR)
        });
        if failed.is_some() {
            return None;
        }
        dialed(location.bulk?, &location.addrs)
    }

    /// A connection to `engine` at `addr`: an idle one kept to that address (`fresh` false),
    /// else a new one.
    pub(crate) async fn take(
        &self,
        engine: PeerId,
        addr: SocketAddr,
        fresh: bool,
    ) -> Result<Wire, bulk::Error> {
        let connector = {
            let mut engines = self.engines.lock().unwrap_or_else(|e| e.into_inner());
            let kept = match engines.entry(engine) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(Engine {
                    connector: bulk::Connector::new(&self.key, engine)?,
                    idle: Vec::new(),
                    failed: None,
                }),
            };
            // An engine that started again listens elsewhere: its old connections are dead.
            kept.idle
                .retain(|(at, to, _)| at.elapsed() < KEEP_IDLE && *to == addr);
            if !fresh && let Some((_, _, conn)) = kept.idle.pop() {
                return Ok(Wire::Bulk {
                    conn,
                    addr,
                    reused: true,
                });
            }
            kept.connector.clone()
        };
        match connector.connect(addr).await {
            Ok(conn) => Ok(Wire::Bulk {
                conn: Box::new(conn),
                addr,
                reused: false,
            }),
            Err(e) => {
                if let Ok(mut engines) = self.engines.lock()
                    && let Some(kept) = engines.get_mut(&engine)
                {
                    kept.failed = Some(Instant::now());
                }
                Err(e)
            }
        }
    }

    /// A segment's exchange with `engine` ended whole on `wire`: a bulk connection is kept for
    /// the next, a libp2p stream is closed.
    pub(crate) async fn done(&self, engine: PeerId, wire: Wire) {
        match wire {
            Wire::Stream(mut s) => {
                let _ = s.close().await;
            }
            Wire::Bulk { conn, addr, .. } => {
                let Ok(mut engines) = self.engines.lock() else {
                    return;
                };
                if let Some(kept) = engines.get_mut(&engine)
                    && kept.idle.len() < IDLE_PER_ENGINE
                {
                    kept.idle.push((Instant::now(), addr, conn));
                }
            }
        }
    }
}

impl Fetcher {
    /// Where the stream of an attempt at `location` goes: a bulk connection when the engine
    /// takes them (a kept one unless `fresh`), else (or when it fails) a libp2p stream.
    pub(super) async fn wire(
        &self,
        location: &SegmentLocation,
        fresh: bool,
    ) -> Result<Wire, Attempt> {
        let engine = location.engine;
        if let Some(addr) = self.bulk.address(location) {
            match self.bulk.take(engine, addr, fresh).await {
                Ok(wire) => return Ok(wire),
                Err(e) => {
                    tracing::debug!(%engine, %addr, error = %e, "no bulk connection: a libp2p stream");
                }
            }
        }
        let unreachable = |e: AttemptError| Attempt::Ended(Ended::Unreachable(engine), e);
        let client = &self.directors.first;
        client
            .add_addresses(engine, location.addrs.clone())
            .await
            .map_err(|e| Attempt::Ended(Ended::DirectorLost, AskError::from(e).into()))?;
        match client.open_stream(engine, wire::PROTOCOL).await {
            Ok(s) => Ok(Wire::Stream(s)),
            // The engine's queue of unaccepted streams is full: alive and overloaded, as
            // good as its own `Busy` answer.
            Err(ClientError::Busy(_)) => Err(Attempt::Ended(
                Ended::EngineBusy(engine),
                AttemptError::Busy(engine),
            )),
            Err(cause) => Err(unreachable(AttemptError::Unreachable { engine, cause })),
        }
    }
}

/// The address to dial for an engine's bulk address `bulk`: as it is, or, when the engine
/// listens on every interface (an unspecified IP), on the IP of its first TCP address.
fn dialed(bulk: SocketAddr, addrs: &[Multiaddr]) -> Option<SocketAddr> {
    if !bulk.ip().is_unspecified() {
        return Some(bulk);
    }
    let tcp = addrs.iter().filter(|a| vodmesh_proto::net::is_tcp(a));
    let mut ip = tcp.filter_map(|a| {
        a.iter().find_map(|p| match p {
            Protocol::Ip4(ip) if !ip.is_unspecified() => Some(std::net::IpAddr::V4(ip)),
            Protocol::Ip6(ip) if !ip.is_unspecified() => Some(std::net::IpAddr::V6(ip)),
            _ => None,
        })
    });
    Some(SocketAddr::new(ip.next()?, bulk.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_engine_on_every_interface_is_dialed_on_the_ip_of_its_tcp_address() {
        let a = |s: &str| s.parse::<Multiaddr>().unwrap();
        let addrs = [a("/ip4/10.0.0.2/udp/5/quic-v1"), a("/ip4/10.0.0.1/tcp/4")];
        let own: SocketAddr = ([192, 0, 2, 1], 9).into();
        assert_eq!(dialed(own, &addrs), Some(own));
        let any: SocketAddr = ([0, 0, 0, 0], 9).into();
        assert_eq!(dialed(any, &addrs), Some(([10, 0, 0, 1], 9).into()));
        assert_eq!(dialed(any, &addrs[..1]), None);
    }
}
