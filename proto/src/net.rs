//! How every vodmesh peer builds its libp2p swarm: TCP (noise + yamux) and QUIC, tokio.
//!
//! One place, so that the director, the engines, the console and the tools agree on
//! transports and time-outs.

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{Swarm, SwarmBuilder, noise, tcp, yamux};

/// Connections stay open this long without a stream: long enough that a console's next
/// segment request reuses the connection, short enough not to hoard sockets.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a swarm could not be built.
#[derive(Debug, thiserror::Error)]
#[error("building the libp2p swarm: {0}")]
pub struct BuildError(String);

/// Builds a swarm on TCP (noise + yamux) and QUIC for `key`, with the behaviour `make`
/// returns.
pub fn build_swarm<B, F>(key: Keypair, make: F) -> Result<Swarm<B>, BuildError>
where
    B: NetworkBehaviour,
    F: FnOnce(&Keypair) -> B,
{
    let swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| BuildError(e.to_string()))?
        .with_quic()
        .with_behaviour(|k| make(k))
        .map_err(|e| BuildError(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_TIMEOUT))
        .build();
    Ok(swarm)
}

/// The `/p2p/<peer>` suffix of a multiaddr, if it has one.
pub fn peer_of(addr: &libp2p::Multiaddr) -> Option<libp2p::PeerId> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}

/// `addr` with `/p2p/<peer>` appended (unless it already ends with it).
pub fn with_peer(addr: &libp2p::Multiaddr, peer: libp2p::PeerId) -> libp2p::Multiaddr {
    if peer_of(addr) == Some(peer) {
        addr.clone()
    } else {
        addr.clone().with(libp2p::multiaddr::Protocol::P2p(peer))
    }
}
