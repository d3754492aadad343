//! The bulk path: `/vodmesh/stream/1` and `/vodmesh/copy/1` exchanges over a TLS connection
//! of their own to an engine, with no yamux between TLS and the segment's bytes.
//!
//! Why: yamux copies every write into a frame of its own (`to_vec`) and hands each frame
//! through the connection's task; a bare TLS connection moved 907-1404 MB/s on the 2-core VM
//! where a yamux stream over the same TLS moved 567-764 MB/s (README, Performance). The
//! libp2p swarm stays the control plane (directors, identify, ingest); segment bytes to
//! consoles and copies between engines take this path where the engine offers it, and the
//! libp2p stream where not.
//!
//! The handshake is libp2p's own (the vendored libp2p-tls configs): each side presents a
//! certificate that carries its peer id, signed by its identity key, so the engine knows the
//! client's peer id as surely as over libp2p (a console token, an engine token, is bound to
//! it), and the client knows it reached the engine it was told of. The ALPN names the
//! [`Exchange`] the connection carries; a client that offers none, or another, is refused.
//!
//! On a connection, exchanges follow one another, each as on a libp2p stream of its protocol:
//! the client's request frame, the engine's reply frame, then the segment's bytes. An exchange
//! the engine ends early (a handover, a refusal, an error) closes the connection; one that
//! ends whole leaves it for the next request, so a client pays one handshake per engine, not
//! one per segment ([`pool`] keeps them).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use libp2p::identity::Keypair;
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{IpAddr, ServerName};
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

pub mod pool;

/// What a bulk connection carries, named by its ALPN: one protocol per connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Exchange {
    /// `/vodmesh/stream/1`: a console streams segments.
    Stream,
    /// `/vodmesh/copy/1`: an engine copies segments.
    Copy,
}

impl Exchange {
    /// Every exchange, as an engine offers them.
    pub const ALL: [Exchange; 2] = [Exchange::Stream, Exchange::Copy];

    /// The ALPN of a connection that carries this exchange: its libp2p protocol name (a test
    /// holds them equal).
    pub fn alpn(self) -> &'static [u8] {
        match self {
            Exchange::Stream => b"/vodmesh/stream/1",
            Exchange::Copy => b"/vodmesh/copy/1",
        }
    }

    fn of(alpn: Option<&[u8]>) -> Option<Self> {
        Self::ALL.into_iter().find(|e| Some(e.alpn()) == alpn)
    }
}

/// A TCP connect, and then the TLS handshake, each within this.
pub const HANDSHAKE_WITHIN: Duration = Duration::from_secs(5);

/// A console's bulk connection, with the `futures` I/O traits the codec reads and writes.
pub type Conn = Compat<tokio_rustls::client::TlsStream<BufReader<TcpStream>>>;

/// An engine's side of a bulk connection.
pub type ServerConn = Compat<tokio_rustls::server::TlsStream<TcpStream>>;

/// The console's read buffer under TLS. rustls reads the socket at most 4 KiB past what it
/// holds (`DeframerVecBuffer::prepare_read`): a read call per 4 KiB of segment. Reads from
/// this buffer are copies in memory, and the socket is read up to 256 KiB a call. The engine
/// reads only requests, and has none.
const READ_BUFFER: usize = 256 * 1024;

/// Why a bulk connection was not made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This peer's certificate could not be made from its identity.
    #[error("cannot make a TLS certificate: {0}")]
    Certificate(#[from] libp2p::tls::certificate::GenError),
    /// The TCP connect or the handshake failed (a certificate refused among others).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The connect or the handshake took longer than [`HANDSHAKE_WITHIN`].
    #[error("no TLS handshake within {HANDSHAKE_WITHIN:?}")]
    TimedOut,
    /// The client offered no protocol of an [`Exchange`].
    #[error("the client speaks neither /vodmesh/stream/1 nor /vodmesh/copy/1")]
    Protocol,
    /// The peer presented no libp2p certificate (a rustls verifier accepted nothing else).
    #[error("the peer presented no libp2p certificate")]
    NoPeerId,
}

/// The engine's side: TLS handshakes of inbound bulk connections.
#[derive(Clone)]
pub struct Acceptor(tokio_rustls::TlsAcceptor);

impl Acceptor {
    /// Presents `key`'s certificate, asks every client for one, and takes every [`Exchange`].
    pub fn new(key: &Keypair) -> Result<Self, Error> {
        let mut config = libp2p::tls::make_server_config(key)?;
        config.alpn_protocols = Exchange::ALL.map(|e| e.alpn().to_vec()).into();
        // No keys logged to $SSLKEYLOGFILE: libp2p-tls sets it, the bulk path does not.
        config.key_log = Arc::new(rustls::NoKeyLog);
        Ok(Self(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
    }

    /// The handshake of `tcp`, within [`HANDSHAKE_WITHIN`]: the client's peer id (from its
    /// verified certificate), the exchange it asked for, and the connection.
    pub async fn accept(&self, tcp: TcpStream) -> Result<(PeerId, Exchange, ServerConn), Error> {
        tcp.set_nodelay(true)?;
        let tls = tokio::time::timeout(HANDSHAKE_WITHIN, self.0.accept(tcp))
            .await
            .map_err(|_| Error::TimedOut)??;
        let session = tls.get_ref().1;
        let exchange = Exchange::of(session.alpn_protocol()).ok_or(Error::Protocol)?;
        let peer = peer_id(session.peer_certificates())?;
        Ok((peer, exchange, tls.compat()))
    }
}

/// The client's side (a console's, an engine's that copies): a TLS client configuration for
/// one engine and one exchange, made once and used for each of its connections.
#[derive(Clone)]
pub struct Connector {
    connector: tokio_rustls::TlsConnector,
}

impl Connector {
    /// For a console's streams: presents `key`'s certificate, and accepts only `engine`'s.
    pub fn new(key: &Keypair, engine: PeerId) -> Result<Self, Error> {
        Self::of(key, engine, Exchange::Stream)
    }

    /// For `exchange`: presents `key`'s certificate, and accepts only `engine`'s.
    pub fn of(key: &Keypair, engine: PeerId, exchange: Exchange) -> Result<Self, Error> {
        let mut config = libp2p::tls::make_client_config(key, Some(engine))?;
        config.alpn_protocols = vec![exchange.alpn().to_vec()];
        config.key_log = Arc::new(rustls::NoKeyLog);
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// Connects to `addr`: the TCP connect and the handshake, each within
    /// [`HANDSHAKE_WITHIN`]. A certificate of another peer than the engine's fails it.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Conn, Error> {
        let tcp = tokio::time::timeout(HANDSHAKE_WITHIN, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::TimedOut)??;
        tcp.set_nodelay(true)?;
        let tcp = BufReader::with_capacity(READ_BUFFER, tcp);
        // As libp2p-tls names the server: the certificate carries the peer id, not a name.
        let name = ServerName::IpAddress(IpAddr::from(std::net::IpAddr::from([0, 0, 0, 0])));
        let tls = tokio::time::timeout(HANDSHAKE_WITHIN, self.connector.connect(name, tcp))
            .await
            .map_err(|_| Error::TimedOut)??;
        Ok(tls.compat())
    }
}

/// The TLS 1.3 suite `conn` negotiated, by its name (`TLS13_AES_128_GCM_SHA256`).
pub fn cipher(conn: &Conn) -> Option<String> {
    let session = conn.get_ref().get_ref().1;
    (session.negotiated_cipher_suite()).map(|s| format!("{:?}", s.suite()))
}

/// The peer id in the one certificate a peer presented (verified by libp2p-tls's verifier
/// during the handshake: its signature and its peer-id extension).
fn peer_id(
    certificates: Option<&[rustls::pki_types::CertificateDer<'_>]>,
) -> Result<PeerId, Error> {
    let [certificate] = certificates.unwrap_or_default() else {
        return Err(Error::NoPeerId);
    };
    let parsed = libp2p::tls::certificate::parse(certificate).map_err(|_| Error::NoPeerId)?;
    Ok(parsed.peer_id())
}

#[cfg(test)]
mod tests {
    use futures::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn listener() -> (tokio::net::TcpListener, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    #[tokio::test]
    async fn each_side_learns_the_others_peer_id_and_bytes_cross() {
        let (engine, console) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (listener, addr) = listener().await;
        let acceptor = Acceptor::new(&engine).unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let (peer, exchange, mut conn) = acceptor.accept(tcp).await.unwrap();
            assert_eq!(exchange, Exchange::Stream);
            let mut got = [0u8; 5];
            conn.read_exact(&mut got).await.unwrap();
            conn.write_all(b"world").await.unwrap();
            conn.flush().await.unwrap();
            (peer, got)
        });
        let connector = Connector::new(&console, engine.public().to_peer_id()).unwrap();
        let mut conn = connector.connect(addr).await.unwrap();
        assert!(
            cipher(&conn).is_some_and(|c| c.contains("AES")),
            "{:?}",
            cipher(&conn)
        );
        conn.write_all(b"hello").await.unwrap();
        conn.flush().await.unwrap();
        let mut back = [0u8; 5];
        conn.read_exact(&mut back).await.unwrap();
        let (peer, got) = server.await.unwrap();
        assert_eq!(peer, console.public().to_peer_id());
        assert_eq!((&got, &back), (b"hello", b"world"));
    }

    #[test]
    fn each_exchange_is_named_by_its_protocol() {
        assert_eq!(
            Exchange::Stream.alpn(),
            crate::stream::PROTOCOL.as_ref().as_bytes()
        );
        assert_eq!(
            Exchange::Copy.alpn(),
            crate::copy::PROTOCOL.as_ref().as_bytes()
        );
        for e in Exchange::ALL {
            assert_eq!(Exchange::of(Some(e.alpn())), Some(e));
        }
        assert_eq!(Exchange::of(Some(b"/libp2p/tls")), None);
        assert_eq!(Exchange::of(None), None);
    }

    #[tokio::test]
    async fn a_copy_connection_is_known_as_one() {
        let (engine, peer) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (listener, addr) = listener().await;
        let acceptor = Acceptor::new(&engine).unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            acceptor
                .accept(tcp)
                .await
                .map(|(peer, exchange, _)| (peer, exchange))
        });
        let connector = Connector::of(&peer, engine.public().to_peer_id(), Exchange::Copy);
        let _conn = connector.unwrap().connect(addr).await.unwrap();
        let accepted = server.await.unwrap().unwrap();
        assert_eq!(accepted, (peer.public().to_peer_id(), Exchange::Copy));
    }

    #[tokio::test]
    async fn a_console_that_expects_another_engine_does_not_connect() {
        let (engine, console) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (listener, addr) = listener().await;
        let acceptor = Acceptor::new(&engine).unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ = acceptor.accept(tcp).await;
        });
        // An impostor at the address the director named: its certificate is not the engine's.
        let wanted = Keypair::generate_ed25519().public().to_peer_id();
        let refused = Connector::new(&console, wanted)
            .unwrap()
            .connect(addr)
            .await;
        assert!(refused.is_err());
    }

    #[tokio::test]
    async fn a_client_of_another_protocol_is_refused() {
        let engine = Keypair::generate_ed25519();
        let (listener, addr) = listener().await;
        let acceptor = Acceptor::new(&engine).unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            acceptor.accept(tcp).await.map(|(peer, _, _)| peer)
        });
        // libp2p's own ALPN, as a libp2p dialer offers it.
        let config = libp2p::tls::make_client_config(&Keypair::generate_ed25519(), None).unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::IpAddress(IpAddr::from(std::net::IpAddr::from([0, 0, 0, 0])));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let _ = connector.connect(name, tcp).await;
        assert!(server.await.unwrap().is_err());
    }
}
