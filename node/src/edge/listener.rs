//! The HTTP edge's listener: TCP, optionally TLS (`--tls-cert/--tls-key`, [`crate::tls`]),
//! with the idle cut of [`Stalling`] under both: a player that stops reading loses its
//! connection after [`STALL`], whether its bytes go out plain or encrypted (under TLS the cut
//! watches the socket's writes, below the TLS layer).
//!
//! TLS handshakes run as tasks of their own, at most [`HANDSHAKES`] at once and each for at
//! most [`HANDSHAKE`], so that a client that connects and says nothing holds up no other: the
//! listener hands axum a connection once its handshake is done. HTTP/2 or HTTP/1.1 is then
//! what ALPN chose (axum's server reads the HTTP/2 preface either way).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::tls::Tls;

/// How long a write to a player may make no progress before its connection is dropped: a
/// player that stopped reading gives its stream back (its place under `--max-streams`), as a
/// console that stops reading a libp2p stream does.
pub(crate) const STALL: Duration = Duration::from_secs(30);
/// How long a TLS handshake may take.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// TLS handshakes under way at once, at most; a connection past this is closed at once.
const HANDSHAKES: usize = 256;

/// A TCP listener, with TLS when given, whose connections fail a write that makes no
/// progress for `stall` ([`Stalling`]). Served with `tap_io` so that
/// `ConnectInfo<SocketAddr>` works on it.
pub(crate) struct Guarded {
    inner: TcpListener,
    stall: Duration,
    tls: Option<TlsAcceptor>,
    /// TLS handshakes under way, each with the client's address.
    handshakes: JoinSet<(SocketAddr, std::io::Result<TlsStream<Stalling<TcpStream>>>)>,
}

impl Guarded {
    /// `inner`, its writes cut after `stall` without progress, speaking TLS with `tls`.
    pub(crate) fn new(inner: TcpListener, stall: Duration, tls: Option<&Tls>) -> Self {
        Self {
            inner,
            stall,
            tls: tls.map(Tls::acceptor),
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
                    let io = Stalling::new(io, self.stall);
                    let Some(acceptor) = &self.tls else {
                        return (Conn::Plain(io), addr);
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
                        (addr, done)
                    });
                }
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    match done {
                        Ok((addr, Ok(tls))) => return (Conn::Tls(Box::new(tls)), addr),
                        Ok((addr, Err(e))) => {
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

/// A connection of the edge: plain, or TLS over the same guarded socket.
pub(crate) enum Conn {
    /// HTTP over TCP.
    Plain(Stalling<TcpStream>),
    /// HTTPS.
    Tls(Box<TlsStream<Stalling<TcpStream>>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Conn::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Conn::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Conn::Tls(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(io) => io.is_write_vectored(),
            Conn::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(io) => Pin::new(io).poll_flush(cx),
            Conn::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Conn::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An I/O object whose writes fail with `TimedOut` once they have been pending for `stall`
/// in a row (a peer that stopped reading); any progress starts the clock again.
pub(crate) struct Stalling<T> {
    io: T,
    stall: Duration,
    /// Running while a write waits.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<T> Stalling<T> {
    /// `io`, its writes cut after `stall` without progress.
    pub(crate) fn new(io: T, stall: Duration) -> Self {
        Self {
            io,
            stall,
            timer: None,
        }
    }

    /// What a write's `poll` came to, with the stall clock applied.
    fn watch<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<R>>,
    ) -> Poll<std::io::Result<R>> {
        if polled.is_ready() {
            self.timer = None;
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
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stalling<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, polled)
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
        let mut guarded = Stalling::new(near, STALL);
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
        let started = tokio::time::Instant::now();
        let err = guarded.write_all(&[7u8; 4 * 1024]).await.err();
        assert_eq!(err.map(|e| e.kind()), Some(std::io::ErrorKind::TimedOut));
        assert!(started.elapsed() >= STALL && started.elapsed() < STALL * 2);
        let mut rest = [0u8; 16];
        assert!(far.read(&mut rest).await? > 0);
        Ok(())
    }
}
