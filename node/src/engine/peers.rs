//! What one peer may hold of an engine at once. Copy and stream slots are few, and any peer
//! can open streams: a peer that opens streams and sends nothing, or asks for more copies than
//! it reads, must not take every slot. So a request is read within [`REQUEST_WITHIN`] (before
//! any slot is taken), and each peer holds at most a few slots
//! ([`PeerSlots`](crate::peer_slots::PeerSlots)).

use std::time::Duration;

use futures::AsyncRead;
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
