//! An engine: one peer of a station that stores, copies and streams segments (the seed's
//! blade). Each engine has its own identity and its own listen addresses, so consoles and
//! other engines reach it directly; its director learns about it over the control channel.

use anyhow::Result;
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, identify, ping};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use vodmesh_proto::net::build_swarm;

use crate::control::EngineReport;
use crate::listen::{any_port, listen_all};

/// The engine's libp2p protocols.
#[derive(NetworkBehaviour)]
pub(crate) struct EngineBehaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

/// A started engine.
#[derive(Debug)]
pub struct EngineHandle {
    /// Index in the station.
    pub index: usize,
    /// Its peer id.
    pub peer_id: PeerId,
    /// Where it listens.
    pub addrs: Vec<Multiaddr>,
    /// Its event loop.
    pub task: JoinHandle<()>,
}

/// Starts engine `index` with identity `key`, listening on the hosts of `director_listen`
/// (ports of its own).
pub async fn start(
    index: usize,
    key: Keypair,
    director_listen: &[Multiaddr],
    reports: mpsc::Sender<EngineReport>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<EngineHandle> {
    let peer_id = key.public().to_peer_id();
    let mut swarm = build_swarm(key, |k| EngineBehaviour {
        identify: identify::Behaviour::new(
            identify::Config::new("/vodmesh/1".into(), k.public())
                .with_agent_version(format!("vodmesh-engine/{}", env!("CARGO_PKG_VERSION"))),
        ),
        ping: ping::Behaviour::default(),
    })?;
    let listen: Vec<Multiaddr> = director_listen.iter().map(any_port).collect();
    let addrs = listen_all(&mut swarm, &listen).await?;
    tracing::info!(index, peer = %peer_id, addrs = ?addrs, "engine listening");
    let _ = reports
        .send(EngineReport::Ready {
            index,
            peer_id,
            addrs: addrs.clone(),
        })
        .await;
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
                event = swarm.select_next_some() => {
                    if let SwarmEvent::IncomingConnectionError { error, .. } = &event {
                        tracing::debug!(index, %error, "engine: incoming connection failed");
                    }
                }
            }
        }
        let _ = reports.send(EngineReport::Down { index }).await;
        tracing::info!(index, "engine stopped");
    });
    Ok(EngineHandle {
        index,
        peer_id,
        addrs,
        task,
    })
}
