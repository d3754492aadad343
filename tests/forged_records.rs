//! The registry refuses what it must: a station record signed by a key other than the station
//! it names, and an oversized record, are dropped by the director that receives them; a
//! genuine record sent the same way is stored.

use std::time::Duration;

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::kad::{self, Quorum, Record};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};
use vodmesh_proto::codec;
use vodmesh_proto::net::{build_swarm, peer_of};
use vodmesh_proto::station::{Roles, StationRecord};
use vodmesh_proto::time::in_ms;
use vodmesh_registry::registry::{self as reg, RegistryConfig};
use vodmesh_registry::{PersistentStore, RecordKind, StoreLimits};
use vodmesh_tests::swarm::{init_logging, station};

fn record(director: PeerId) -> StationRecord {
    StationRecord {
        director,
        addrs: vec![],
        engines: vec![],
        region: None,
        coords: None,
        bandwidth_mbps: 1,
        roles: Roles::default(),
        issuer: None,
        issued_ms: vodmesh_proto::time::now_ms(),
        expires_ms: in_ms(Duration::from_secs(60)),
        counters: Default::default(),
        certificate: None,
    }
}

/// A bare Kademlia client that puts whatever it is told to, straight to `director`.
async fn attacker(director: &Multiaddr) -> anyhow::Result<Swarm<kad::Behaviour<PersistentStore>>> {
    let key = Keypair::generate_ed25519();
    let local = key.public().to_peer_id();
    let store = PersistentStore::in_memory(local, &StoreLimits::default());
    let mut swarm = build_swarm(key, |_| {
        reg::behaviour(local, store, &RegistryConfig::default(), false)
    })?;
    let peer = peer_of(director).ok_or_else(|| anyhow::anyhow!("no peer id"))?;
    swarm.behaviour_mut().add_address(&peer, director.clone());
    Ok(swarm)
}

/// Sends `record` to `to` only, bypassing the sender's own store (and its size limit).
async fn put(
    swarm: &mut Swarm<kad::Behaviour<PersistentStore>>,
    to: PeerId,
    record: Record,
) -> anyhow::Result<()> {
    let id = swarm
        .behaviour_mut()
        .put_record_to(record, std::iter::once(to), Quorum::One);
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed { id: got, .. }) =
                swarm.select_next_some().await
                && got == id
            {
                return;
            }
        }
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_oversized_station_records_are_refused() -> anyhow::Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let station = station(dir.path()).start().await?;
    let mut swarm = attacker(station.addr()).await?;
    let director = station.peer_id();

    // A record for `victim`, signed by someone else.
    let victim = Keypair::generate_ed25519();
    let forger = Keypair::generate_ed25519();
    let victim_id = victim.public().to_peer_id();
    let forged = record(victim_id).sign(&forger);
    let key = RecordKind::Station(victim_id).key();
    put(
        &mut swarm,
        director,
        Record::new(key, codec::encode(&forged)),
    )
    .await?;

    // An oversized record under a genuine station's key.
    let big_key = Keypair::generate_ed25519();
    let big_id = big_key.public().to_peer_id();
    let mut big = record(big_id);
    big.region = Some("x".repeat(100 * 1024));
    let oversized = big.sign(&big_key);
    put(
        &mut swarm,
        director,
        Record::new(RecordKind::Station(big_id).key(), codec::encode(&oversized)),
    )
    .await?;

    // The control case: a genuine record, sent the same way, is stored.
    let honest = Keypair::generate_ed25519();
    let honest_id = honest.public().to_peer_id();
    let genuine = record(honest_id).sign(&honest);
    put(
        &mut swarm,
        director,
        Record::new(
            RecordKind::Station(honest_id).key(),
            codec::encode(&genuine),
        ),
    )
    .await?;

    let registry = station.registry();
    assert!(
        registry.get_station(honest_id).await?.is_some(),
        "genuine record not stored"
    );
    assert!(
        registry.get_station(victim_id).await?.is_none(),
        "forged record stored"
    );
    assert!(
        registry.get_station(big_id).await?.is_none(),
        "oversized record stored"
    );
    station.shutdown().await;
    Ok(())
}
