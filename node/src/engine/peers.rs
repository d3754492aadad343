//! What one peer may hold of an engine at once. Copy and stream slots are few, and any peer
//! can open streams: a peer that opens streams and sends nothing, or asks for more copies than
//! it reads, must not take every slot. So a request is read within [`REQUEST_WITHIN`] (before
//! any slot is taken), and each peer holds at most a few slots
//! ([`PeerSlots`](crate::peer_slots::PeerSlots)). A copy's bytes are read and written with a
//! bound on silence, not on a chunk's time ([`fill_within`], [`send_within`]): a slow link that
//! keeps moving is not a stalled one, whatever the chunk's size.

use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::Stream;
use serde::de::DeserializeOwned;
use vodmesh_proto::codec::read_frame;

/// How long a peer has, from opening a stream, to send its request.
pub(crate) const REQUEST_WITHIN: Duration = Duration::from_secs(5);

/// Reads the request frame (at most `limit` bytes) of a stream just opened, within
/// [`REQUEST_WITHIN`].
pub(crate) async fn read_request<T: DeserializeOwned>(
    stream: &mut Stream,
    limit: usize,
) -> std::io::Result<T> {
    read_within(stream, limit, REQUEST_WITHIN).await
}

/// Reads a request frame (at most `limit` bytes) within `within`; past it, a `TimedOut`
/// error.
pub(crate) async fn read_within<R: AsyncRead + Unpin, T: DeserializeOwned>(
    io: &mut R,
    limit: usize,
    within: Duration,
) -> std::io::Result<T> {
    match tokio::time::timeout(within, read_frame(io, limit)).await {
        Ok(read) => read,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no request within {within:?}"),
        )),
    }
}

/// Fills `buf` from `io`, each read bringing bytes within `silence`; past it a `TimedOut`
/// error, and the end of the stream an `UnexpectedEof` one.
pub(crate) async fn fill_within<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut [u8],
    silence: Duration,
) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let read = tokio::time::timeout(silence, io.read(&mut buf[filled..])).await;
        match read.map_err(|_| silent(silence))?? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => filled += n,
        }
    }
    Ok(())
}

/// Writes `buf` to `io`, each write taking bytes within `silence`; past it a `TimedOut` error.
pub(crate) async fn send_within<W: AsyncWrite + Unpin>(
    io: &mut W,
    buf: &[u8],
    silence: Duration,
) -> std::io::Result<()> {
    let mut sent = 0;
    while sent < buf.len() {
        let write = tokio::time::timeout(silence, io.write(&buf[sent..])).await;
        match write.map_err(|_| silent(silence))?? {
            0 => return Err(std::io::ErrorKind::WriteZero.into()),
            n => sent += n,
        }
    }
    Ok(())
}

fn silent(silence: Duration) -> std::io::Error {
    let why = format!("nothing moved for {silence:?}");
    std::io::Error::new(std::io::ErrorKind::TimedOut, why)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_util::compat::TokioAsyncReadCompatExt;

    use super::*;

    const MIB: usize = 1024 * 1024;
    const PIECE: usize = 16 * 1024;

    /// A megabyte over a link that moves 16 KiB a second takes a minute, and never stalls:
    /// read and written whole within 2 s of silence. A link that stops is given up 2 s after
    /// its last byte.
    #[tokio::test(start_paused = true)]
    async fn a_slow_link_that_keeps_moving_is_not_a_stalled_one() {
        let data: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8).collect();
        let silence = Duration::from_secs(2);

        // Reading: the other end writes a piece a second.
        let (mut far, near) = tokio::io::duplex(PIECE);
        let sent = data.clone();
        tokio::spawn(async move {
            for piece in sent.chunks(PIECE) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = far.write_all(piece).await;
            }
        });
        let mut buf = vec![0u8; MIB];
        let began = tokio::time::Instant::now();
        let filled = fill_within(&mut near.compat(), &mut buf, silence).await;
        assert!(filled.is_ok(), "{filled:?}");
        assert!(buf == data);
        assert!(began.elapsed() >= Duration::from_secs(60));

        // Writing: the other end reads a piece a second.
        let (mut far, near) = tokio::io::duplex(PIECE);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut piece = vec![0u8; PIECE];
            while got.len() < MIB {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match far.read(&mut piece).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&piece[..n]),
                }
            }
            got
        });
        let sent = send_within(&mut near.compat(), &data, silence).await;
        assert!(sent.is_ok(), "{sent:?}");
        assert!(reader.await.ok() == Some(data.clone()));

        // Control: a link that stops moving.
        let (mut far, near) = tokio::io::duplex(PIECE);
        let _ = far.write_all(&data[..PIECE]).await;
        let began = tokio::time::Instant::now();
        let stopped = fill_within(&mut near.compat(), &mut buf, silence).await;
        assert_eq!(
            stopped.err().map(|e| e.kind()),
            Some(std::io::ErrorKind::TimedOut)
        );
        assert_eq!(began.elapsed(), silence);
        let (_far, near) = tokio::io::duplex(PIECE);
        let stopped = send_within(&mut near.compat(), &data, silence).await;
        assert_eq!(
            stopped.err().map(|e| e.kind()),
            Some(std::io::ErrorKind::TimedOut)
        );
    }
}
