//! Starting to listen: every address a peer is told to listen on, and what it got.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, Swarm};
use vodmesh_proto::net::with_peer;

/// How long a listener may take to report its address.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Listens on every address in `addrs` and returns the resulting addresses (ports resolved,
/// `/p2p/<peer id>` appended) in the order of `addrs`. Other swarm events that arrive
/// meanwhile are dropped; the peer has no connections yet.
pub(crate) async fn listen_all<B: NetworkBehaviour>(
    swarm: &mut Swarm<B>,
    addrs: &[Multiaddr],
) -> Result<Vec<Multiaddr>> {
    if addrs.is_empty() {
        bail!("no listen address given");
    }
    let mut ids = Vec::new();
    for addr in addrs {
        let id = swarm
            .listen_on(addr.clone())
            .with_context(|| format!("cannot listen on {addr}"))?;
        ids.push(id);
    }
    let mut got: Vec<Vec<Multiaddr>> = vec![Vec::new(); ids.len()];
    let peer = *swarm.local_peer_id();
    let deadline = tokio::time::Instant::now() + LISTEN_TIMEOUT;
    while got.iter().any(Vec::is_empty) {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .context("timed out waiting for listen addresses")?;
        match event {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                if let Some(i) = ids.iter().position(|id| *id == listener_id) {
                    got[i].push(with_peer(&address, peer));
                }
            }
            SwarmEvent::ListenerError { error, .. } => bail!("listening failed: {error}"),
            SwarmEvent::ListenerClosed {
                addresses, reason, ..
            } => bail!("listener on {addresses:?} closed: {reason:?}"),
            _ => {}
        }
    }
    Ok(got.into_iter().flatten().collect())
}

/// `addr` with its TCP or UDP port set to 0, so that another peer on the same host gets a
/// port of its own.
pub(crate) fn any_port(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .map(|p| match p {
            Protocol::Tcp(_) => Protocol::Tcp(0),
            Protocol::Udp(_) => Protocol::Udp(0),
            other => other,
        })
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

/// `addr` without its `/p2p/<peer id>` suffix.
pub(crate) fn without_peer(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

/// Whether an address announced by a peer is worth dialing (not 0.0.0.0 or a port 0).
pub(crate) fn dialable(addr: &Multiaddr) -> bool {
    addr.iter().all(|p| match p {
        Protocol::Ip4(ip) => !ip.is_unspecified(),
        Protocol::Ip6(ip) => !ip.is_unspecified(),
        Protocol::Tcp(port) | Protocol::Udp(port) => port != 0,
        _ => true,
    })
}

/// Whether `addr` is a TCP address.
pub(crate) fn is_tcp(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::Tcp(_)))
}
