//! The HTTP edge's listener: TCP, optionally TLS (`--tls-cert/--tls-key`, [`crate::tls`]),
//! with the limits of [`Limits`] under both (under TLS they watch the socket, below the TLS
//! layer):
//!
//! - a player that stops reading loses its connection after [`STALL`] ([`Stalling`]'s writes);
//! - a client the server waits on loses it after [`IDLE`] ([`Stalling`]'s reads): one that
//!   connects and sends nothing, sends half a request or drips one byte by byte (a slowloris),
//!   or keeps a keep-alive connection idle. axum's server runs hyper without a timer, so
//!   hyper's own header-read timeout never fires: this one is below it, and covers HTTP/2 too;
//! - at most [`CONNECTIONS`] are open at once: past them a new connection is closed as soon as
//!   it is accepted, so a flood of them cannot take every file descriptor of the process.
//!
//! TLS handshakes run as tasks of their own, at most [`HANDSHAKES`] at once and each for at
//! most [`HANDSHAKE`], so that a client that connects and says nothing holds up no other: the
//! listener hands axum a connection once its handshake is done. HTTP/2 or HTTP/1.1 is then
//! what ALPN chose (axum's server reads the HTTP/2 preface either way). The `--metrics` server
//! takes the same listener, plain, with [`Limits::METRICS`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::tls::Tls;

/// How long a write to a player may make no progress before its connection is dropped: a
/// player that stopped reading gives its stream back (its place under `--max-streams`), as a
/// console that stops reading a libp2p stream does.
pub(crate) const STALL: Duration = Duration::from_secs(30);
/// How long a client may keep the server waiting on it: from the accept, or from the server's
/// last write, until the first byte of a request, and from that byte until the server writes
/// again. Past it the connection is closed. As nginx's `client_header_timeout`, and longer
/// than the director's longest wait for its loop (45 s), so a slow answer is not cut.
pub(crate) const IDLE: Duration = Duration::from_secs(60);
/// Connections one edge listener keeps open at once, TLS handshakes included; past them a new
/// connection is closed at once. A player keeps one to six.
pub(crate) const CONNECTIONS: usize = 1024;
/// How long a TLS handshake may take.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// TLS handshakes under way at once, at most; a connection past this is closed at once.
const HANDSHAKES: usize = 256;

/// What a listener's connections may take: time without progress, and how many at once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// A write making no progress for this long fails ([`STALL`]).
    pub(crate) stall: Duration,
    /// A client keeping the server waiting this long is cut ([`IDLE`]).
    pub(crate) idle: Duration,
    /// Connections open at once, at most ([`CONNECTIONS`]).
    pub(crate) connections: usize,
}

impl Limits {
    /// The HTTP edge's: the director's and every engine's listener.
    pub(crate) const EDGE: Self = Self {
        stall: STALL,
        idle: IDLE,
        connections: CONNECTIONS,
    };
    /// The `--metrics` server's: scrapes, probes and status pages, a few at once.
    pub(crate) const METRICS: Self = Self {
        connections: 64,
        ..Self::EDGE
    };
}

/// A TCP listener, with TLS when given, whose connections are held to `limits` ([`Stalling`],
/// and a cap on how many are open). Served with `tap_io` so that `ConnectInfo<SocketAddr>`
/// works on it.
pub(crate) struct Guarded {
    inner: TcpListener,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    /// A permit per open connection ([`Limits::connections`]), held by its [`Conn`].
    open: Arc<Semaphore>,
    /// TLS handshakes under way, each with the client's address and its connection's permit.
    handshakes: JoinSet<Handshake>,
}

/// A TLS handshake's outcome: the client, its connection's permit, the TLS stream.
type Handshake = (
    SocketAddr,
    OwnedSemaphorePermit,
    std::io::Result<TlsStream<Stalling<TcpStream>>>,
);

impl Guarded {
    /// `inner`, its connections held to `limits`, speaking TLS with `tls`.
    pub(crate) fn new(inner: TcpListener, limits: Limits, tls: Option<&Tls>) -> Self {
        Self {
            inner,
            limits,
            tls: tls.map(Tls::acceptor),
            open: Arc::new(Semaphore::new(limits.connections)),
            handshakes: JoinSet::new(),
        }
    }
}

impl Listener for Guarded {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            // Both arms are cancel-safe: axum drops this future when it shuts down.
            tokio::select! {
                (io, addr) = Listener::accept(&mut self.inner) => {
                    // Dropped at once past the cap: a flood holds no descriptor.
                    let Ok(slot) = Arc::clone(&self.open).try_acquire_owned() else {
                        tracing::debug!(client = %addr, "HTTP: too many connections; closed");
                        continue;
                    };
                    let io = Stalling::new(io, self.limits.stall, self.limits.idle);
                    let Some(acceptor) = &self.tls else {
                        return (Conn { io: Io::Plain(io), _slot: slot }, addr);
                    };
                    if self.handshakes.len() >= HANDSHAKES {
                        tracing::debug!(client = %addr, "HTTP: too many TLS handshakes; closed");
                        continue;
                    }
                    let handshake = acceptor.accept(io);
                    self.handshakes.spawn(async move {
                        let done = tokio::time::timeout(HANDSHAKE, handshake).await;
                        let done = done.unwrap_or_else(|_| {
                            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))
                        });
                        (addr, slot, done)
                    });
                }
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    match done {
                        Ok((addr, slot, Ok(tls))) => {
                            return (Conn { io: Io::Tls(Box::new(tls)), _slot: slot }, addr);
                        }
                        Ok((addr, _, Err(e))) => {
                            tracing::debug!(client = %addr, error = %e, "HTTP: TLS handshake failed");
                        }
                        Err(e) => tracing::warn!(error = %e, "HTTP: a TLS handshake task failed"),
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection of the edge, holding its place among the listener's open connections until
/// it is dropped.
pub(crate) struct Conn {
    io: Io,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A connection's bytes: plain, or TLS over the same guarded socket.
enum Io {
    /// HTTP over TCP.
    Plain(Stalling<TcpStream>),
    /// HTTPS.
    Tls(Box<TlsStream<Stalling<TcpStream>>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(io) => io.is_write_vectored(),
            Io::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_flush(cx),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An I/O object whose writes fail with `TimedOut` once they have been pending for `stall`
/// in a row (a peer that stopped reading; any progress starts that clock again), and whose
/// reads fail with `TimedOut` once the peer has kept it waiting for `idle`: since it was made
/// or last written to, until the peer's next bytes, and from those until the next write.
/// Bytes the peer sends after the first do not move that deadline, so a request dripped byte
/// by byte is cut as one never sent.
pub(crate) struct Stalling<T> {
    io: T,
    stall: Duration,
    /// Running while a write waits.
    timer: Option<Pin<Box<Sleep>>>,
    idle: Duration,
    /// When the peer's turn began: the connection's start, the last write, or the first byte
    /// read after it. A read waiting past `idle` from here fails.
    since: Instant,
    /// Whether the last I/O was a write: the next byte read begins the peer's turn.
    answered: bool,
    /// Running while a read waits.
    waiting: Option<Pin<Box<Sleep>>>,
}

impl<T> Stalling<T> {
    /// `io`, its writes cut after `stall` without progress, its reads after `idle` waiting
    /// on the peer.
    pub(crate) fn new(io: T, stall: Duration, idle: Duration) -> Self {
        Self {
            io,
            stall,
            timer: None,
            idle,
            since: Instant::now(),
            answered: false,
            waiting: None,
        }
    }

    /// What a write's (or flush's) `poll` came to, with the stall clock applied; bytes
    /// written (`wrote`) end the peer's turn.
    fn watch<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<R>>,
        wrote: bool,
    ) -> Poll<std::io::Result<R>> {
        if polled.is_ready() {
            self.timer = None;
            // A flush with nothing to send (HTTP/2 flushes as it reads) is no answer.
            if wrote {
                self.since = Instant::now();
                self.answered = true;
            }
            return polled;
        }
        let stall = self.stall;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Stalling<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if polled.is_ready() {
            if buf.filled().len() > before && this.answered {
                this.since = Instant::now();
                this.answered = false;
            }
            return polled;
        }
        // Writes move the deadline while this read waits (a long answer going out).
        let deadline = this.since + this.idle;
        let waiting = this
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if waiting.deadline() != deadline {
            waiting.as_mut().reset(deadline);
        }
        match waiting.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client kept the server waiting",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stalling<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        let wrote = matches!(polled, Poll::Ready(Ok(n)) if n > 0);
        self.watch(cx, polled, wrote)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        let wrote = matches!(polled, Poll::Ready(Ok(n)) if n > 0);
        self.watch(cx, polled, wrote)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, polled, false)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_write_nobody_reads_fails_after_the_stall_and_progress_resets_the_clock()
    -> std::io::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (near, mut far) = tokio::io::duplex(1024);
        let mut guarded = Stalling::new(near, STALL, IDLE);
        // Read slowly but steadily: every 20 s a little, never 30 s without progress.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let mut got = 0;
            while got < 8 * 1024 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                got += far.read(&mut buf).await?;
            }
            Ok::<_, std::io::Error>(far)
        });
        guarded.write_all(&[7u8; 8 * 1024]).await?;
        let mut far = reader.await.map_err(std::io::Error::other)??;
        // Now nobody reads: the write fails once 30 s pass without progress.
        let started = Instant::now();
        let err = guarded.write_all(&[7u8; 4 * 1024]).await.err();
        assert_eq!(err.map(|e| e.kind()), Some(std::io::ErrorKind::TimedOut));
        assert!(started.elapsed() >= STALL && started.elapsed() < STALL * 2);
        let mut rest = [0u8; 16];
        assert!(far.read(&mut rest).await? > 0);
        Ok(())
    }

    /// Paused time: a read the peer leaves waiting fails after the idle time, whether it sent
    /// nothing or drips a request byte by byte; after each answer the peer has a fresh
    /// `idle` for its next request, so a client that asks and is answered is never cut.
    #[tokio::test(start_paused = true)]
    async fn a_read_the_peer_keeps_waiting_fails_after_the_idle_time() -> std::io::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let idle = Duration::from_secs(10);
        let mut buf = [0u8; 64];
        // Nothing sent.
        let (near, _far) = tokio::io::duplex(1024);
        let mut silent = Stalling::new(near, STALL, idle);
        // (A guard of ten idle times, so that a read never cut fails instead of hanging.)
        let guard = idle * 10;
        let read = tokio::time::timeout(guard, silent.read(&mut buf)).await;
        let err = read.ok().and_then(Result::err).map(|e| e.kind());
        assert_eq!(err, Some(std::io::ErrorKind::TimedOut));
        // A byte every quarter of the idle time, never an answer: cut before the 100th.
        let (near, mut far) = tokio::io::duplex(1024);
        let mut dripped = Stalling::new(near, STALL, idle);
        let drip = tokio::spawn(async move {
            for _ in 0..100 {
                far.write_all(b"G").await?;
                tokio::time::sleep(idle / 4).await;
            }
            Ok::<_, std::io::Error>(far)
        });
        let mut got = 0;
        let cut = async {
            loop {
                match dripped.read(&mut buf).await {
                    Ok(n) => got += n,
                    Err(e) => break e.kind(),
                }
            }
        };
        let err = tokio::time::timeout(guard * 10, cut).await.ok();
        assert_eq!(err, Some(std::io::ErrorKind::TimedOut));
        assert!(got < 100, "{got}");
        drip.abort();
        // Control: a request every 0.9 idle times, each answered, goes on for 10 idle times.
        let (near, mut far) = tokio::io::duplex(1024);
        let mut served = Stalling::new(near, STALL, idle);
        let client = tokio::spawn(async move {
            let mut answer = [0u8; 2];
            for _ in 0..10 {
                tokio::time::sleep(idle * 9 / 10).await;
                far.write_all(b"GET").await?;
                far.read_exact(&mut answer).await?;
            }
            Ok::<_, std::io::Error>(())
        });
        for _ in 0..10 {
            let mut request = [0u8; 3];
            served.read_exact(&mut request).await?;
            served.write_all(b"ok").await?;
        }
        client.await.map_err(std::io::Error::other)??;
        Ok(())
    }

    /// A listener on 127.0.0.1 held to `limits`, serving `GET /` with `ok`.
    async fn server(limits: Limits) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        tokio::spawn(async move {
            let _ = axum::serve(Guarded::new(listener, limits, None), app).await;
        });
        Ok(addr)
    }

    /// Asks `GET /` on `conn` (kept alive): whether the answer came (`false`: the server
    /// closed the connection first).
    async fn served(conn: &mut TcpStream) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let request = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n";
        if conn.write_all(request).await.is_err() {
            return false;
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"\r\n\r\nok") {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        got.starts_with(b"HTTP/1.1 200")
    }

    /// Whether the server closes `conn`: reads until the end or an error. Bounded by a minute
    /// only so that a server that never closes fails the test instead of hanging it.
    async fn closed(conn: &mut TcpStream) -> bool {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1024];
        let until_closed = async {
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), until_closed)
            .await
            .is_ok()
    }

    /// Real sockets through axum: a connection that sends nothing, and one that sends half a
    /// request line, are closed by the server once the idle time passes; a request on
    /// another connection is served meanwhile (with no limit, both would be held forever).
    #[tokio::test]
    async fn silent_and_half_sent_connections_are_closed_and_others_served() -> std::io::Result<()>
    {
        use tokio::io::AsyncWriteExt;
        let idle = Duration::from_secs(2);
        let addr = server(Limits {
            idle,
            ..Limits::EDGE
        })
        .await?;
        let mut silent = TcpStream::connect(addr).await?;
        let mut half = TcpStream::connect(addr).await?;
        half.write_all(b"GET / HT").await?;
        let mut player = TcpStream::connect(addr).await?;
        assert!(served(&mut player).await, "a request is served");
        assert!(closed(&mut silent).await, "a silent connection is closed");
        assert!(closed(&mut half).await, "half a request line is closed");
        let mut next = TcpStream::connect(addr).await?;
        assert!(served(&mut next).await, "and the server still serves");
        Ok(())
    }

    /// Real sockets: with room for two connections, two are served and kept open, a third is
    /// closed at once without an answer; once one of the two closes, a new one is served.
    #[tokio::test]
    async fn connections_past_the_cap_are_closed_at_once() -> std::io::Result<()> {
        let addr = server(Limits {
            connections: 2,
            ..Limits::EDGE
        })
        .await?;
        let mut first = TcpStream::connect(addr).await?;
        assert!(served(&mut first).await);
        let mut second = TcpStream::connect(addr).await?;
        assert!(served(&mut second).await);
        let mut third = TcpStream::connect(addr).await?;
        assert!(!served(&mut third).await, "past the cap: closed, no answer");
        assert!(served(&mut first).await, "the two kept theirs");
        drop(first);
        // The server sees the close, then gives its place back: ask until it has.
        let mut tries = 0;
        loop {
            let mut again = TcpStream::connect(addr).await?;
            if served(&mut again).await {
                break;
            }
            tries += 1;
            assert!(tries < 100, "the closed connection's place never came back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}
