//! A station: one director and its engines, started and stopped together.

use std::path::Path;

use anyhow::{Context, Result};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use vodmesh_proto::station::{EngineInfo, StationRecord};
use vodmesh_registry::{RegistryHandle, WalkLimits};

use crate::config::StationConfig;
use crate::nodefile::{NodeFile, PeerEntry};
use crate::{director, engine, identity};

/// A running station.
#[derive(Debug)]
pub struct Station {
    /// The director.
    pub director: PeerEntry,
    /// The engines, in index order.
    pub engines: Vec<PeerEntry>,
    registry: RegistryHandle,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// The identity file of engine `index` under the data directory.
pub fn engine_identity_path(data: &Path, index: usize) -> std::path::PathBuf {
    data.join("engines")
        .join(index.to_string())
        .join("identity.key")
}

/// Where engine `index` of a station configured by `config` keeps its segments: a directory
/// of its own on every `--disk` (default `DATA/engines/<index>/segments`) and its index at
/// `DATA/engines/<index>/store.redb`.
pub fn engine_storage(config: &StationConfig, index: usize) -> engine::EngineStorage {
    let engine_dir = config.data.join("engines").join(index.to_string());
    let disks = if config.disks.is_empty() {
        vec![engine_dir.join("segments")]
    } else {
        config
            .disks
            .iter()
            .map(|d| d.join(format!("engine-{index}")))
            .collect()
    };
    engine::EngineStorage {
        index: engine_dir.join("store.redb"),
        disks,
        capacity: config.capacity,
        pin_all: config.home,
        scrub: config.scrub,
        max_streams: config.max_streams,
    }
}

impl Station {
    /// Starts a station as `config` says, writes `DATA/node.json`, and returns once the
    /// director and every engine listen.
    pub async fn start(config: StationConfig) -> Result<Self> {
        std::fs::create_dir_all(&config.data)
            .with_context(|| format!("creating data directory {}", config.data.display()))?;
        let director_key = identity::load_or_create(&config.data.join("identity.key"))?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (reports, reports_rx) = mpsc::channel(64);

        let mut engines = Vec::with_capacity(config.engines);
        for index in 0..config.engines {
            let key = identity::load_or_create(&engine_identity_path(&config.data, index))?;
            let storage = engine_storage(&config, index);
            let handle = engine::start(
                index,
                key,
                &config.listen,
                storage,
                reports.clone(),
                shutdown_rx.clone(),
            )
            .await
            .with_context(|| format!("starting engine {index}"))?;
            engines.push(handle);
        }
        // Engines announced themselves as they started; the director starts knowing them.
        let infos: Vec<EngineInfo> = engines
            .iter()
            .map(|e| EngineInfo {
                peer_id: e.peer_id,
                addrs: e.addrs.clone(),
                streams: 0,
                max_streams: config.max_streams,
                used: 0,
                capacity: config.capacity,
                up: true,
            })
            .collect();
        let mut reports_rx = reports_rx;
        while reports_rx.try_recv().is_ok() {}
        let data = config.data.clone();
        let commands = engines.iter().map(|e| e.commands.clone()).collect();
        let dir = director::start(
            director_key,
            config,
            infos,
            commands,
            reports_rx,
            shutdown_rx,
        )
        .await?;

        let node = NodeFile {
            director: PeerEntry {
                peer_id: dir.peer_id,
                addrs: dir.addrs.clone(),
            },
            engines: engines
                .iter()
                .map(|e| PeerEntry {
                    peer_id: e.peer_id,
                    addrs: e.addrs.clone(),
                })
                .collect(),
            issuer: None,
        };
        node.write(&data)?;
        let mut tasks: Vec<JoinHandle<()>> = engines.into_iter().map(|e| e.task).collect();
        tasks.push(dir.task);
        Ok(Self {
            director: node.director,
            engines: node.engines,
            registry: dir.registry,
            shutdown,
            tasks,
        })
    }

    /// The director's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.director.peer_id
    }

    /// The director's first listen address (the one `vodmesh-node` prints).
    pub fn addr(&self) -> &Multiaddr {
        // `listen_all` never returns an empty list.
        &self.director.addrs[0]
    }

    /// The registry handle of this station's director.
    pub fn registry(&self) -> &RegistryHandle {
        &self.registry
    }

    /// Every live station of the swarm, as this station's director finds them.
    pub async fn swarm(&self) -> Result<Vec<StationRecord>> {
        let stations =
            vodmesh_registry::walk(&self.registry, self.peer_id(), WalkLimits::default()).await?;
        Ok(stations.into_iter().map(|(r, _)| r).collect())
    }

    /// Stops the director and every engine and waits for them.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for Station {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}
