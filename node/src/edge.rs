//! The HTTP edge's plumbing shared by the director ([`crate::director`]'s playlists and
//! redirects) and the engines (their segments): the `token=` parameter, the offline check of
//! a URL token for the segment or playlist a path names, and one-line answers.
//!
//! URLs: `/v/<program id>/index.m3u8?token=...` (the director) and
//! `/v/<program id>/<n>.<ext>?token=...` (the director's redirect, then the engine). The token
//! is a URL token ([`vodmesh_proto::token::Audience::Url`]) in base58; every refusal is a 403
//! with its one line, an unknown path a 404.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::serve::Listener;
use libp2p::PeerId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use vodmesh_proto::ProgramId;
use vodmesh_proto::hls::{segment_of, variant_of};
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::{TrustedIssuers, from_url_param};
use vodmesh_proto::{SegmentId, SegmentIndex};

/// The playlist's file name.
pub(crate) const PLAYLIST: &str = "index.m3u8";

/// A plain-text answer: `status` and one line.
pub(crate) fn line(status: StatusCode, text: impl std::fmt::Display) -> Response {
    let mut response = (status, format!("{text}\n")).into_response();
    let plain = HeaderValue::from_static("text/plain; charset=utf-8");
    response.headers_mut().insert(header::CONTENT_TYPE, plain);
    response
}

/// The `token=` parameter of a URI's query, if there is one.
pub(crate) fn token_param(uri: &Uri) -> Option<&str> {
    (uri.query()?.split('&')).find_map(|pair| pair.strip_prefix("token="))
}

/// Why a request is not served, and what the client sees.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    /// Not a segment URL.
    #[error("no such segment")]
    NotFound,
    /// No `token=` parameter.
    #[error("no token: ask for a URL with vodmesh-console url")]
    NoToken,
    /// This station trusts no issuer.
    #[error("this station trusts no token issuer and serves nothing")]
    NoIssuer,
    /// The token does not pass.
    #[error(transparent)]
    Token(#[from] vodmesh_proto::token::TokenError),
    /// The program's publish time has not come.
    #[error("{}", crate::director::error::NOT_PUBLISHED)]
    NotPublished,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let status = match self {
            Refused::NotFound => StatusCode::NOT_FOUND,
            _ => StatusCode::FORBIDDEN,
        };
        line(status, self)
    }
}

/// What a path names: a program's playlist, or one of its segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Named {
    /// `index.m3u8`, or a rendition's `<name>.m3u8`.
    Playlist(ProgramId),
    /// `<n>.<ext>`.
    Segment(SegmentId),
}

impl Named {
    /// The program.
    pub(crate) fn program(&self) -> ProgramId {
        match self {
            Self::Playlist(p) => *p,
            Self::Segment(s) => s.program,
        }
    }
}

/// What `/v/<program>/<file>` names, if anything.
pub(crate) fn named(program: &str, file: &str) -> Option<Named> {
    let program: ProgramId = program.parse().ok()?;
    if file == PLAYLIST || variant_of(file).is_some() {
        return Some(Named::Playlist(program));
    }
    let index: SegmentIndex = segment_of(file)?;
    Some(Named::Segment(SegmentId::new(program, index)))
}

/// What a request names, and the subscriber its URL token was issued to, if the token passes
/// for `client`: checked offline, in the order the token module documents, then the address.
pub(crate) fn admit(
    trusted: &TrustedIssuers,
    (program, file): (&str, &str),
    uri: &Uri,
    client: SocketAddr,
) -> Result<(Named, PeerId), Refused> {
    let named = named(program, file).ok_or(Refused::NotFound)?;
    if trusted.is_empty() {
        return Err(Refused::NoIssuer);
    }
    let token = from_url_param(token_param(uri).ok_or(Refused::NoToken)?)?;
    let claims = trusted.verify_url(&token, now_ms(), &named.program(), client.ip())?;
    Ok((named, claims.subject))
}

/// How long a write to a player may make no progress before its connection is dropped: a
/// player that stopped reading gives its stream back (its place under `--max-streams`), as a
/// console that stops reading a libp2p stream does.
pub(crate) const STALL: Duration = Duration::from_secs(30);

/// A TCP listener whose connections fail a write that makes no progress for `stall`
/// ([`Stalling`]). Served with `tap_io` so that `ConnectInfo<SocketAddr>` works on it.
pub(crate) struct Guarded {
    inner: TcpListener,
    stall: Duration,
}

impl Guarded {
    /// `inner`, its writes cut after `stall` without progress.
    pub(crate) fn new(inner: TcpListener, stall: Duration) -> Self {
        Self { inner, stall }
    }
}

impl Listener for Guarded {
    type Io = Stalling<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = Listener::accept(&mut self.inner).await;
        (Stalling::new(io, self.stall), addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
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

    #[test]
    fn paths_name_playlists_and_segments() {
        let id = ProgramId([7; 32]);
        let p = id.to_string();
        assert_eq!(named(&p, "index.m3u8"), Some(Named::Playlist(id)));
        assert_eq!(named(&p, "720p.m3u8"), Some(Named::Playlist(id)));
        assert_eq!(
            named(&p, "4.ts"),
            Some(Named::Segment(SegmentId::new(id, 4u32)))
        );
        assert_eq!(named(&p, "4.txt"), None);
        assert_eq!(named("not-a-program", "4.ts"), None);
        assert_eq!(named(&p, "../index.m3u8"), None);
    }

    #[test]
    fn the_token_is_found_among_other_parameters() {
        let uri: Uri = "/v/p/1.ts?a=1&token=abc&b=2".parse().unwrap_or_default();
        assert_eq!(token_param(&uri), Some("abc"));
        let uri: Uri = "/v/p/1.ts?tokens=abc".parse().unwrap_or_default();
        assert_eq!(token_param(&uri), None);
        let uri: Uri = "/v/p/1.ts".parse().unwrap_or_default();
        assert_eq!(token_param(&uri), None);
    }
}
