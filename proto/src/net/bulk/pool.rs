//! A client's bulk connections, kept per engine ([`Pool`]): an exchange that ends whole leaves
//! its connection for the next segment from that engine, so a client pays one handshake per
//! engine, not one per segment. An engine whose bulk address does not answer is reached over
//! libp2p for a while ([`FALLBACK_FOR`]). A console's streams and an engine's copies each keep
//! a pool; [`Wire`] is either a bulk connection or a libp2p stream, as the caller could open.

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

use super::{Conn, Connector, Error, Exchange};

/// Idle connections kept per engine, at most.
const IDLE_PER_ENGINE: usize = 4;
/// An idle connection is let go after this: before the engine's own idle limit (30 s) would
/// close it under a request.
const KEEP_IDLE: Duration = Duration::from_secs(20);
/// After a failed bulk connection, an engine is streamed from over libp2p for this long.
const FALLBACK_FOR: Duration = Duration::from_secs(30);

/// Where one segment's bytes come from: a libp2p stream, or a bulk connection.
pub enum Wire {
    /// The exchange's protocol on the libp2p connection to the engine.
    Stream(libp2p::Stream),
    /// A bulk connection, new or kept from an earlier segment (`reused`).
    Bulk {
        /// The connection (a TLS session's buffers: boxed, a stream is a handle).
        conn: Box<Conn>,
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

/// A client's bulk connections of one [`Exchange`], by engine.
pub struct Pool {
    key: Keypair,
    exchange: Exchange,
    engines: Mutex<HashMap<PeerId, Engine>>,
}

/// What a [`Pool`] keeps of one engine.
struct Engine {
    connector: Connector,
    /// Kept connections: when each was left, its address, the connection.
    idle: Vec<(Instant, SocketAddr, Box<Conn>)>,
    /// When its bulk address last failed.
    failed: Option<Instant>,
}

impl Pool {
    /// Connections for `exchange`, made with identity `key` (the one its tokens are bound to).
    pub fn new(key: Keypair, exchange: Exchange) -> Self {
        Self {
            key,
            exchange,
            engines: Mutex::default(),
        }
    }

    /// A bulk connection to `engine`, whose bulk listener is `bulk` and libp2p addresses
    /// `addrs`: a kept one (unless `fresh`), else a new one within `within`. `None` when the
    /// engine has no bulk address, failed lately, or fails now (a connect that does not
    /// finish in time counts as failed): the caller takes a libp2p stream.
    pub async fn open(
        &self,
        engine: PeerId,
        (bulk, addrs): (Option<SocketAddr>, &[Multiaddr]),
        fresh: bool,
        within: Duration,
    ) -> Option<Wire> {
        let addr = self.address(engine, bulk, addrs)?;
        let failed = match tokio::time::timeout(within, self.take(engine, addr, fresh)).await {
            Ok(Ok(wire)) => return Some(wire),
            Ok(Err(e)) => e.to_string(),
            Err(_) => {
                self.failed(engine);
                format!("no connection within {within:?}")
            }
        };
        tracing::debug!(%engine, %addr, error = %failed, "no bulk connection: a libp2p stream");
        None
    }

    /// The address to reach `engine`'s bulk listener `bulk` at (its libp2p addresses are
    /// `addrs`), unless it has none or failed lately.
    fn address(
        &self,
        engine: PeerId,
        bulk: Option<SocketAddr>,
        addrs: &[Multiaddr],
    ) -> Option<SocketAddr> {
        let failed = self.engines.lock().ok().and_then(|engines| {
            let engine = engines.get(&engine)?;
            engine.failed.filter(|at| at.elapsed() < FALLBACK_FOR)
        });
        if failed.is_some() {
            return None;
        }
        dialed(bulk?, addrs)
    }

    /// A connection to `engine` at `addr`: an idle one kept to that address (`fresh` false),
    /// else a new one.
    async fn take(&self, engine: PeerId, addr: SocketAddr, fresh: bool) -> Result<Wire, Error> {
        let connector = {
            let mut engines = self.engines.lock().unwrap_or_else(|e| e.into_inner());
            let kept = match engines.entry(engine) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(Engine {
                    connector: Connector::of(&self.key, engine, self.exchange)?,
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
                self.failed(engine);
                Err(e)
            }
        }
    }

    /// `engine`'s bulk address failed: it is passed over for [`FALLBACK_FOR`].
    fn failed(&self, engine: PeerId) {
        if let Ok(mut engines) = self.engines.lock()
            && let Some(kept) = engines.get_mut(&engine)
        {
            kept.failed = Some(Instant::now());
        }
    }

    /// A segment's exchange with `engine` ended whole on `wire`: a bulk connection is kept for
    /// the next, a libp2p stream is closed. A wire that did not end whole is dropped instead.
    pub async fn done(&self, engine: PeerId, wire: Wire) {
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

/// The address to dial for an engine's bulk address `bulk`: as it is, or, when the engine
/// listens on every interface (an unspecified IP), on the IP of its first TCP address.
fn dialed(bulk: SocketAddr, addrs: &[Multiaddr]) -> Option<SocketAddr> {
    if !bulk.ip().is_unspecified() {
        return Some(bulk);
    }
    let tcp = addrs.iter().filter(|a| crate::net::is_tcp(a));
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

    /// An engine whose bulk port takes the TCP connect but never answers the handshake (a
    /// wedged process, a middlebox): the connect in time fails, and the next segment is not
    /// held up by it again: the address is passed over (no second connect). Control: an engine
    /// that answers is connected to.
    #[tokio::test(start_paused = true)]
    async fn a_bulk_address_that_does_not_answer_in_time_is_passed_over() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        silent.set_nonblocking(true).unwrap();
        let addr = silent.local_addr().unwrap();
        let engine = Keypair::generate_ed25519();
        let peer = engine.public().to_peer_id();
        let pool = Pool::new(Keypair::generate_ed25519(), Exchange::Copy);
        let within = Duration::from_secs(2);
        assert!(
            pool.open(peer, (Some(addr), &[]), false, within)
                .await
                .is_none()
        );
        assert!(
            pool.open(peer, (Some(addr), &[]), false, within)
                .await
                .is_none()
        );
        let connects = std::iter::from_fn(|| silent.accept().ok()).count();
        assert_eq!(connects, 1, "connects to a silent bulk address");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = super::super::Acceptor::new(&engine).unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let _kept = acceptor.accept(tcp).await;
            std::future::pending::<()>().await;
        });
        let other = Pool::new(Keypair::generate_ed25519(), Exchange::Copy);
        let wire = other.open(peer, (Some(addr), &[]), false, within).await;
        assert!(matches!(wire, Some(Wire::Bulk { reused: false, .. })));
    }

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
