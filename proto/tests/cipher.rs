//! Which cipher two real swarms on loopback agree on: vodmesh peers negotiate AES-GCM over
//! TCP (libp2p-tls, offered before noise) and over QUIC (the vendored libp2p-tls offers
//! AES-GCM first), and a peer that only speaks noise still connects to a vodmesh peer.
//!
//! The suites are counted per process (`net::negotiated_ciphers`); other tests of this binary
//! may run at the same time and add AES-GCM handshakes of their own, but none of them a
//! ChaCha20 one, so "AES-128-GCM grew by both sides, ChaCha20 did not grow" holds either way.

use std::time::Duration;

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, SwarmBuilder, noise, ping, tcp, yamux};
use vodmesh_proto::net::{build_swarm, negotiated_ciphers, with_peer};

const AES_128: &str = "TLS13_AES_128_GCM_SHA256";
const CHACHA: &str = "TLS13_CHACHA20_POLY1305_SHA256";

fn count(suite: &str) -> u64 {
    negotiated_ciphers()
        .into_iter()
        .find(|(name, _)| name == suite)
        .map_or(0, |(_, n)| n)
}

fn ping_behaviour() -> ping::Behaviour {
    ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_millis(50)))
}

fn vodmesh_peer() -> Result<Swarm<ping::Behaviour>, Box<dyn std::error::Error>> {
    Ok(build_swarm(Keypair::generate_ed25519(), |_| {
        ping_behaviour()
    })?)
}

/// A peer as rust-libp2p builds one by default before this change: TCP with noise only.
fn noise_only_peer() -> Result<Swarm<ping::Behaviour>, Box<dyn std::error::Error>> {
    Ok(SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|_| ping_behaviour())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build())
}

/// `listener` listens on `on`; `dialer` dials it; both are driven until each has had a ping
/// answered by the other (a connection that carries streams both ways). Fails after 20 s.
async fn connect_and_ping(
    listener: &mut Swarm<ping::Behaviour>,
    dialer: &mut Swarm<ping::Behaviour>,
    on: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    listener.listen_on(on.parse()?)?;
    let addr: Multiaddr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = listener.select_next_some().await {
            break address;
        }
    };
    let listener_peer: PeerId = *listener.local_peer_id();
    dialer.dial(with_peer(&addr, listener_peer))?;
    let (mut heard_by_listener, mut heard_by_dialer) = (false, false);
    tokio::time::timeout(Duration::from_secs(20), async {
        while !(heard_by_listener && heard_by_dialer) {
            tokio::select! {
                e = listener.select_next_some() => match e {
                    SwarmEvent::Behaviour(ping::Event { result: Ok(_), .. }) => {
                        heard_by_listener = true;
                    }
                    SwarmEvent::IncomingConnectionError { error, .. } => {
                        return Err(format!("listener: {error}"));
                    }
                    _ => {}
                },
                e = dialer.select_next_some() => match e {
                    SwarmEvent::Behaviour(ping::Event { result: Ok(_), .. }) => {
                        heard_by_dialer = true;
                    }
                    SwarmEvent::OutgoingConnectionError { error, .. } => {
                        return Err(format!("dialer: {error}"));
                    }
                    _ => {}
                },
            }
        }
        Ok(())
    })
    .await
    .map_err(|_| "no ping answered both ways in 20 s")??;
    Ok(())
}

async fn two_vodmesh_peers_agree_on_aes_gcm(on: &str) -> Result<(), Box<dyn std::error::Error>> {
    let (aes_before, chacha_before) = (count(AES_128), count(CHACHA));
    let (mut a, mut b) = (vodmesh_peer()?, vodmesh_peer()?);
    connect_and_ping(&mut a, &mut b, on).await?;
    let (aes, chacha) = (count(AES_128) - aes_before, count(CHACHA) - chacha_before);
    assert!(
        aes >= 2,
        "both sides negotiated AES-128-GCM over {on}: {:?}",
        negotiated_ciphers()
    );
    assert_eq!(chacha, 0, "no ChaCha20 handshake over {on}");
    Ok(())
}

#[tokio::test]
async fn vodmesh_peers_negotiate_aes_gcm_over_tcp() -> Result<(), Box<dyn std::error::Error>> {
    two_vodmesh_peers_agree_on_aes_gcm("/ip4/127.0.0.1/tcp/0").await
}

#[tokio::test]
async fn vodmesh_peers_negotiate_aes_gcm_over_quic() -> Result<(), Box<dyn std::error::Error>> {
    two_vodmesh_peers_agree_on_aes_gcm("/ip4/127.0.0.1/udp/0/quic-v1").await
}

/// The control case: noise stays offered, so a noise-only peer connects either way round.
#[tokio::test]
async fn a_noise_only_peer_still_connects_to_a_vodmesh_peer()
-> Result<(), Box<dyn std::error::Error>> {
    let tcp = "/ip4/127.0.0.1/tcp/0";
    let (mut vodmesh, mut old) = (vodmesh_peer()?, noise_only_peer()?);
    connect_and_ping(&mut vodmesh, &mut old, tcp).await?;
    let (mut vodmesh, mut old) = (vodmesh_peer()?, noise_only_peer()?);
    connect_and_ping(&mut old, &mut vodmesh, tcp).await?;
    Ok(())
}
