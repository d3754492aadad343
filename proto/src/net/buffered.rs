//! TLS over TCP with fewer records and fewer system calls: [`Buffered`] wraps a security
//! upgrade (libp2p-tls) and changes nothing on the wire but how the bytes are cut.
//!
//! Without it, each yamux frame (a 12-byte header, then up to 16 KiB of body) reaches rustls
//! as two writes, and rustls seals each write into records of its own and hands them to the
//! socket at once: two records and two `sendto` calls per 16 KiB, the first of them 34 bytes
//! on the wire. On the receiving side rustls reads the socket at most 4 KiB at a time
//! (`DeframerVecBuffer`'s read size), so a 16 KiB record takes four `recvfrom` calls.
//!
//! - Above TLS, a write buffer ([`WRITE_BUFFER`]) gathers yamux's frames until yamux flushes
//!   (it does whenever it has no frame left to send) or the buffer is full: one write to
//!   rustls of about 64 KiB makes full 16 KiB records and goes to the socket in one call.
//! - Below TLS, a read buffer ([`READ_BUFFER`]) takes what the socket has in one call;
//!   rustls's small reads are then copies out of it.
//!
//! Both ends still speak `/tls/1.0.0` byte for byte: a peer without this change reads the
//! same TLS records (only more of them full).

use futures::future::{MapOk, TryFutureExt};
use futures::io::{BufReader, BufWriter};
use futures::{AsyncRead, AsyncWrite};
use libp2p::PeerId;
use libp2p::core::UpgradeInfo;
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade};

/// Bytes gathered above TLS before they go to rustls, unless flushed sooner.
pub const WRITE_BUFFER: usize = 64 * 1024;
/// Bytes read from the socket in one call, below TLS.
pub const READ_BUFFER: usize = 64 * 1024;

/// A security upgrade whose connection reads the socket through a [`READ_BUFFER`] and writes
/// through a [`WRITE_BUFFER`]; the protocol names and the handshake are the inner upgrade's.
#[derive(Clone, Debug)]
pub struct Buffered<U>(pub U);

type Wrap<S> = fn((PeerId, S)) -> (PeerId, BufWriter<S>);

/// The authenticated stream behind its write buffer (reads pass through a `BufWriter`).
fn wrap<S: AsyncWrite>((peer, stream): (PeerId, S)) -> (PeerId, BufWriter<S>) {
    (peer, BufWriter::with_capacity(WRITE_BUFFER, stream))
}

impl<U: UpgradeInfo> UpgradeInfo for Buffered<U> {
    type Info = U::Info;
    type InfoIter = U::InfoIter;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.protocol_info()
    }
}

impl<C, U, S> InboundConnectionUpgrade<C> for Buffered<U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: InboundConnectionUpgrade<BufReader<C>, Output = (PeerId, S)>,
    S: AsyncWrite,
{
    type Output = (PeerId, BufWriter<S>);
    type Error = U::Error;
    type Future = MapOk<U::Future, Wrap<S>>;

    fn upgrade_inbound(self, socket: C, info: Self::Info) -> Self::Future {
        let socket = BufReader::with_capacity(READ_BUFFER, socket);
        self.0.upgrade_inbound(socket, info).map_ok(wrap as Wrap<S>)
    }
}

impl<C, U, S> OutboundConnectionUpgrade<C> for Buffered<U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: OutboundConnectionUpgrade<BufReader<C>, Output = (PeerId, S)>,
    S: AsyncWrite,
{
    type Output = (PeerId, BufWriter<S>);
    type Error = U::Error;
    type Future = MapOk<U::Future, Wrap<S>>;

    fn upgrade_outbound(self, socket: C, info: Self::Info) -> Self::Future {
        let socket = BufReader::with_capacity(READ_BUFFER, socket);
        self.0
            .upgrade_outbound(socket, info)
            .map_ok(wrap as Wrap<S>)
    }
}
