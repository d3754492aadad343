//! How every vodmesh peer meets the network: its libp2p swarm (TCP with TLS or noise, + yamux,
//! and QUIC, on tokio), the protocol names it speaks, and what it makes of an address.
//!
//! The cipher: TCP offers libp2p-tls first and noise second, so two vodmesh peers agree on
//! TLS 1.3 and a noise-only peer still connects; QUIC is TLS 1.3 by definition. Both use the
//! vendored libp2p-tls (README, "Vendored libp2p-tls"), which offers AES-GCM before ChaCha20
//! (AES-NI makes AES-GCM about twice as fast; noise is ChaCha20-Poly1305 only) and counts
//! the suite each handshake negotiated ([`negotiated_ciphers`]).
//!
//! One place, so that the director, the engines, the console and the tools agree on
//! transports, time-outs and addresses.
//!
//! The protocols, each versioned, each with its messages in one module:
//!
//! | name | module | who talks to whom |
//! |---|---|---|
//! | [`IDENTIFY_PROTOCOL`] (`/vodmesh/1`) | libp2p identify | every peer: listen addresses |
//! | `/vodmesh/director/1` | [`crate::director`] | consoles, tools, directors -> a director |
//! | `/vodmesh/auth/1` | [`crate::auth`] | consoles, tools, stations -> the auth station |
//! | `/vodmesh/stream/1` | [`crate::stream`] | a console <- an engine (segment bytes) |
//! | `/vodmesh/copy/1` | [`crate::copy`] | an engine <- an engine (segment copies) |
//! | `/vodmesh/ingest/1` | [`crate::ingest`] | `vodmesh ingest` -> a home station's engines |
//! | `/vodmesh/kad/1` | the registry (`vodmesh-registry`) | directors (Kademlia) |
//! | `/vodmesh/blade/1` | the backplane (`vodmesh-node`) | an engine process <-> its director |
//!
//! The four stream protocols (stream, copy, ingest, blade) go through [`streams`], vodmesh's
//! own stream behaviour: inbound streams queued per protocol, never dropped below the bound.
//! `/vodmesh/stream/1` also runs on [`bulk`]: a TLS connection of its own to the engine,
//! with libp2p's certificates and no yamux, which consoles use where the engine offers one.

pub mod bulk;
pub mod streams;

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{Multiaddr, PeerId, Swarm, SwarmBuilder, noise, tcp, tls, yamux};

/// The protocol of libp2p identify between vodmesh peers: how a peer learns where the others
/// listen. Peers that differ in it do not exchange addresses.
pub const IDENTIFY_PROTOCOL: &str = "/vodmesh/1";

/// Connections stay open this long without a stream: long enough that a console's next
/// segment request reuses the connection, short enough not to hoard sockets.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a new connection may take, dial to multiplexed (libp2p's default is 10 s). A
/// peer that hangs (stopped: the kernel still accepts its TCP connections, nothing answers
/// the handshake) held every dial of it, and every registry query and listing waiting on
/// one, that long; a handshake takes a few round trips.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Streams one yamux connection carries at once, both ways (yamux's default is 512; past it,
/// an outbound open fails the whole connection). A peer may hold a queue of
/// [`streams::Config::inbound_queue`] streams per protocol for each of its connections, so
/// the bound is raised to 1024.
///
/// Not higher: yamux grants every stream 256 KiB of window and lets a fast stream's window
/// double (auto-tuning, up to the connection's 1 GiB) only out of what the connection has
/// beyond `max streams x 256 KiB`. At 4096 streams that is nothing: no window ever grew, and
/// a stream moved at most 256 KiB per round trip (about 40 Mbit/s at 50 ms). At 1024,
/// 768 MiB are left for the windows of fast streams (yamux's debug log shows them doubling).
pub const MAX_STREAMS_PER_CONNECTION: usize = 1024;

// Above yamux's default (512), for queued streams; and at least half of yamux's default 1 GiB
// connection window left beyond the 256 KiB every stream is granted, for windows to grow.
const _: () = assert!(MAX_STREAMS_PER_CONNECTION > 512);
const _: () = assert!(MAX_STREAMS_PER_CONNECTION * 256 * 1024 <= (1 << 30) / 2);

/// The largest yamux data frame a stream's write is split into (yamux's default is 16 KiB):
/// a stream's whole initial window, and the unit engines read and write segment bytes in.
/// Each frame costs a hand-over from the stream to the connection's task, a frame header and
/// a copy into the TLS writer, so at 16 KiB the stream moved half what one TLS connection
/// does and a paced engine spent its CPU on frames. `vodmesh bench`, alternating runs on the
/// idle 2-core VM: the raw TCP+TLS stream 445 and 483 MB/s at 16 KiB, 483-1019 MB/s (median
/// 711) at 256 KiB; the engine at 500 paced streams 86 % of a core (3.88 CPU-s per GB) at
/// 16 KiB, 61 % (2.72) at 256 KiB.
///
/// The cost is head-of-line: a control frame waits behind at most one such frame of another
/// stream (2 ms at 1 Gbit/s). Receivers take frames up to 1 MiB (yamux 0.14's
/// `MAX_FRAME_BODY_LEN`), so peers with the default setting read these; the setter comes
/// from the vendored libp2p-yamux (README, "Vendored libp2p-yamux").
pub const YAMUX_SPLIT_SEND_SIZE: usize = 256 * 1024;

const _: () = assert!(YAMUX_SPLIT_SEND_SIZE <= 1024 * 1024);

/// Why a swarm could not be built.
#[derive(Debug, thiserror::Error)]
#[error("building the libp2p swarm: {0}")]
pub struct BuildError(String);

/// Builds a swarm on TCP (TLS, else noise; + yamux) and QUIC for `key`, names in addresses
/// resolved by DNS ([`resolver_config`]), with the behaviour `make` returns.
pub fn build_swarm<B, F>(key: Keypair, make: F) -> Result<Swarm<B>, BuildError>
where
    B: NetworkBehaviour,
    F: FnOnce(&Keypair) -> B,
{
    let resolver = resolver_config();
    let swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            // Offered in this order (multistream-select): TLS with AES-GCM where the other
            // side speaks it, noise (ChaCha20-Poly1305) with a peer that only speaks noise.
            (tls::Config::new, noise::Config::new),
            yamux_config,
        )
        .map_err(|e| BuildError(e.to_string()))?
        .with_quic()
        .with_dns_config(resolver.0, resolver.1)
        .with_behaviour(|k| make(k))
        .map_err(|e| BuildError(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_TIMEOUT))
        .with_connection_timeout(CONNECTION_TIMEOUT)
        .build();
    Ok(swarm)
}

/// How the names of `/dns`, `/dns4` and `/dns6` addresses are resolved: as the system says
/// (`/etc/resolv.conf`, then the hosts file), or, where that cannot be read, by the hosts file
/// alone (`localhost` and the names it lists) rather than not at all.
fn resolver_config() -> (libp2p::dns::ResolverConfig, libp2p::dns::ResolverOpts) {
    hickory_resolver::system_conf::read_system_conf().unwrap_or_else(|e| {
        tracing::debug!(error = %e, "no system resolver configuration: names resolve by the hosts file alone");
        let hosts_only = libp2p::dns::ResolverConfig::from_parts(None, Vec::new(), Vec::new());
        (hosts_only, libp2p::dns::ResolverOpts::default())
    })
}

/// The TLS 1.3 cipher suites this process's handshakes negotiated (TCP+TLS and QUIC, both
/// sides of a connection counting), as `(suite name, handshakes)` in the order offered. A
/// TCP connection that chose noise counts nowhere here. The counts only grow: a caller takes
/// the difference across what it measures.
pub fn negotiated_ciphers() -> Vec<(String, u64)> {
    tls::negotiated_suites()
        .into_iter()
        .map(|(suite, n)| (format!("{suite:?}"), n))
        .collect()
}

/// yamux with [`MAX_STREAMS_PER_CONNECTION`] and [`YAMUX_SPLIT_SEND_SIZE`].
fn yamux_config() -> yamux::Config {
    let mut config = yamux::Config::default();
    config.set_max_num_streams(MAX_STREAMS_PER_CONNECTION);
    config.set_split_send_size(YAMUX_SPLIT_SEND_SIZE);
    config
}

/// The `/p2p/<peer>` suffix of a multiaddr, if it has one.
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}

/// `addr` with `/p2p/<peer>` appended (unless it already ends with it).
pub fn with_peer(addr: &Multiaddr, peer: PeerId) -> Multiaddr {
    if peer_of(addr) == Some(peer) {
        addr.clone()
    } else {
        addr.clone().with(Protocol::P2p(peer))
    }
}

/// `addr` without its `/p2p/<peer id>` suffix.
pub fn without_peer(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

/// Whether an address announced by a peer is worth dialing (not 0.0.0.0 or a port 0).
pub fn dialable(addr: &Multiaddr) -> bool {
    addr.iter().all(|p| match p {
        Protocol::Ip4(ip) => !ip.is_unspecified(),
        Protocol::Ip6(ip) => !ip.is_unspecified(),
        Protocol::Tcp(port) | Protocol::Udp(port) => port != 0,
        _ => true,
    })
}

/// Whether `addr` is a TCP address.
pub fn is_tcp(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::Tcp(_)))
}

/// The addresses of a peer to dial: its TCP ones when it has any, else all of them.
///
/// Dialing TCP and QUIC at once races two connections, and a stream opened on the loser
/// fails when it closes; TCP also connects faster on a cold start (1.3 ms
/// against 49 ms for a process's first QUIC dial, DESIGN section 12).
pub fn prefer_tcp(addrs: &[Multiaddr]) -> Vec<Multiaddr> {
    let tcp: Vec<Multiaddr> = addrs.iter().filter(|a| is_tcp(a)).cloned().collect();
    if tcp.is_empty() { addrs.to_vec() } else { tcp }
}

/// The one address to dial a peer by, of those it announced: its first TCP address, else its
/// first. A station that went down refuses a TCP dial at once, where a QUIC one waits for the
/// handshake time-out ([`CONNECTION_TIMEOUT`]).
pub fn dial_first(addrs: &[Multiaddr]) -> Option<&Multiaddr> {
    addrs.iter().find(|a| is_tcp(a)).or(addrs.first())
}

/// `addrs` reordered TCP first, each group in its order: a dead QUIC address stalls for its
/// handshake time-out, a dead TCP one fails at once.
pub fn tcp_first(mut addrs: Vec<Multiaddr>) -> Vec<Multiaddr> {
    addrs.sort_by_key(|a| !is_tcp(a));
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Multiaddr {
        s.parse().unwrap_or_else(|_| Multiaddr::empty())
    }

    #[test]
    fn peer_suffixes_are_added_once_and_removed() {
        let peer = PeerId::random();
        let bare = a("/ip4/127.0.0.1/tcp/1");
        let named = with_peer(&bare, peer);
        assert_eq!(peer_of(&named), Some(peer));
        assert_eq!(with_peer(&named, peer), named, "not appended twice");
        assert_eq!(without_peer(&named), bare);
        assert_eq!(peer_of(&bare), None);
    }

    #[test]
    fn unspecified_hosts_and_ports_are_not_dialable() {
        assert!(dialable(&a("/ip4/192.0.2.1/tcp/4001")));
        assert!(dialable(&a("/dns4/example.org/udp/4001/quic-v1")));
        for bad in [
            "/ip4/0.0.0.0/tcp/4001",
            "/ip6/::/tcp/1",
            "/ip4/192.0.2.1/tcp/0",
        ] {
            assert!(!dialable(&a(bad)), "{bad}");
        }
    }

    #[test]
    fn tcp_is_dialed_alone_when_there_is_any_and_tried_first() {
        let quic = a("/ip4/127.0.0.1/udp/1/quic-v1");
        let tcp = a("/ip4/127.0.0.1/tcp/1");
        assert!(is_tcp(&tcp) && !is_tcp(&quic));
        assert_eq!(prefer_tcp(&[quic.clone(), tcp.clone()]), vec![tcp.clone()]);
        assert_eq!(prefer_tcp(std::slice::from_ref(&quic)), vec![quic.clone()]);
        assert_eq!(
            tcp_first(vec![quic.clone(), tcp.clone()]),
            vec![tcp.clone(), quic.clone()]
        );
        assert_eq!(dial_first(&[quic.clone(), tcp.clone()]), Some(&tcp));
        // Control: with no TCP address, the first of them.
        assert_eq!(dial_first(std::slice::from_ref(&quic)), Some(&quic));
        assert_eq!(dial_first(&[]), None);
    }
}
