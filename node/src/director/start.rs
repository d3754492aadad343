//! Starting a director: its stores (registry, location table, catalogs), its swarm and
//! listeners, the bootstrap dials, and the [`Director`] whose loop then runs in a task.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, Result};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::{identify, ping};
use tokio::sync::watch;
use vodmesh_proto::codec::CborCodec;
use vodmesh_proto::director;
use vodmesh_proto::net::{IDENTIFY_PROTOCOL, build_swarm, peer_of, without_peer};
use vodmesh_registry::registry as reg;
use vodmesh_registry::{PersistentStore, Registry, RegistryHandle, StoreLimits};

use super::context::{Me, Shared};
use super::engines::EngineTable;
use super::ingest::Ingests;
use super::miss::Misses;
use super::outbound::Outbound;
use super::play::Play;
use super::publish::Publishing;
use super::replicate::Replicating;
use super::tasks::Tasks;
use super::{Director, DirectorBehaviour, DirectorHandle, Engines, Handles};
use crate::config::StationConfig;
use crate::content::Catalog;
use crate::listen::{advertised, announced, listen_all};
use crate::store::locations::LocationTable;

/// Starts the director: listens, joins the registry through `config.bootstrap`, and runs until
/// `shutdown` turns true.
pub async fn start(
    key: Keypair,
    config: StationConfig,
    engines: Engines,
    handles: Handles,
    shutdown: watch::Receiver<bool>,
) -> Result<DirectorHandle> {
    let peer_id = key.public().to_peer_id();
    let store_path = config.data.join("registry.redb");
    let store = PersistentStore::open(peer_id, &store_path, &StoreLimits::default())
        .context("opening the registry store")?;
    let registry_config = config.registry.clone();
    let liveness = registry_config
        .republish_interval()
        .clamp(Duration::from_secs(1), Duration::from_secs(15));
    // The loop refreshes the routing table itself (`reg::refresh`), silently while alone.
    let issuer = (handles.auth.as_ref()).map(|s| s.issuer_key().to_string());
    let members = super::admit::members(&config, issuer.as_deref());
    let kad_config = reg::RegistryConfig {
        periodic_bootstrap: None,
        members_only: members.is_closed(),
        ..registry_config.clone()
    };
    let mut swarm = build_swarm(key.clone(), |k| DirectorBehaviour {
        kad: reg::behaviour(peer_id, store, &kad_config, true),
        identify: identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.into(), k.public())
                .with_agent_version(format!("vodmesh-director/{}", env!("CARGO_PKG_VERSION"))),
        ),
        // Liveness: a connection whose peer stops answering (a partition, a dead link) is
        // closed within two ping intervals, so the registry stops waiting on it and a healed
        // link is dialed afresh instead of waiting out TCP's retransmission backoff.
        ping: ping::Behaviour::new(
            ping::Config::new()
                .with_interval(liveness)
                .with_timeout(liveness),
        ),
        control: request_response::Behaviour::with_codec(
            CborCodec::new(director::LIMITS),
            [(director::PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(Duration::from_secs(60)),
        ),
        auth: crate::auth::service::behaviour(handles.auth.clone()),
        blade: vodmesh_proto::net::streams::Behaviour::new(),
    })?;
    let blade = swarm.behaviour().blade.new_control();
    let announce = (config.announce.iter())
        .map(|a| announced(a, peer_id))
        .collect::<Result<Vec<_>, _>>()?;
    let addrs = advertised(&announce, &listen_all(&mut swarm, &config.listen).await?);
    for addr in &addrs {
        swarm.add_external_address(without_peer(addr));
    }
    let mut bootstrap_peers = HashSet::new();
    for addr in &config.bootstrap {
        let peer = peer_of(addr)
            .with_context(|| format!("bootstrap address {addr} does not end in /p2p/<peer id>"))?;
        if peer == peer_id {
            continue;
        }
        swarm
            .behaviour_mut()
            .kad
            .add_address(&peer, without_peer(addr));
        swarm
            .dial(addr.clone())
            .with_context(|| format!("dialing bootstrap {addr}"))?;
        bootstrap_peers.insert(peer);
    }
    tracing::info!(peer = %peer_id, addrs = ?addrs, bootstrap = bootstrap_peers.len(), "director listening");

    let locations = LocationTable::open(&config.data.join("locations.redb"))
        .context("opening the segment location table")?;
    let catalog = match config.content_manager {
        true => {
            Some(Catalog::open(&config.data.join("catalog.redb")).context("opening the catalog")?)
        }
        false => None,
    };
    let kept =
        Catalog::open(&config.data.join("kept.redb")).context("opening the kept manifests")?;
    let mut admins = vec![peer_id];
    admins.extend(config.admins.iter().copied());
    let (registry_handle, registry_commands) = RegistryHandle::channel(256);
    let (outbound, asker) = Outbound::new(256);
    let engine_limits = (config.max_streams, config.capacity);
    let republish_every = config.registry.republish_interval();
    let me = Me {
        key,
        peer_id,
        config,
        addrs: addrs.clone(),
        admins,
        issuer,
        certificate: handles.certificate,
        auth: handles.auth.clone(),
    };
    let publish = Publishing::new(catalog.as_ref());
    let mut director = Director {
        swarm,
        shared: Shared {
            me,
            engines: EngineTable::new(engines.known, engines.commands, engine_limits),
            locations,
            catalog,
            kept,
            activity: Default::default(),
            observer: handles.observer,
            registry: Registry::with_members(members),
            registry_handle: registry_handle.clone(),
            asker,
            walks: vodmesh_registry::RecentWalk::new(registry_handle.clone(), peer_id),
        },
        reports: engines.reports,
        registry_commands,
        outbound,
        metrics: handles.metrics,
        bootstrap_peers,
        play: Play::default(),
        miss: Misses::default(),
        replicate: Replicating::default(),
        publish,
        ingest: Ingests::default(),
        tasks: Tasks::default(),
        admitting: Tasks::default(),
        draining: handles.draining,
    };
    let ctx = director.shared.ctx(&mut director.swarm.behaviour_mut().kad);
    director.ingest.drop_interrupted(&ctx);
    director.republish();
    // The metrics show the engines from the start, not from the loop's first event.
    (director.metrics).sync_director(
        &director.shared.activity,
        &director.shared.engines.snapshot(),
    );
    let task = tokio::spawn(director.run(shutdown, republish_every));
    Ok(DirectorHandle {
        peer_id,
        addrs,
        registry: registry_handle,
        task,
        blade,
    })
}
