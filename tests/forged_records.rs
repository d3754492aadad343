//! The registry refuses what it must: a station record signed by a key other than the station
//! it names, and an oversized record, are dropped by the director that receives them; a
//! genuine record sent the same way is stored.

use libp2p::identity::Keypair;
use libp2p::kad::Record;
use vodmesh_proto::codec;
use vodmesh_proto::station::Roles;
use vodmesh_registry::RecordKind;
use vodmesh_tests::rogue::{Rogue, station_record};
use vodmesh_tests::swarm::{init_logging, station};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_oversized_station_records_are_refused() -> anyhow::Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let station = station(dir.path()).start().await?;
    let mut rogue = Rogue::new(station.addr())?;

    // A record for `victim`, signed by someone else.
    let victim = Keypair::generate_ed25519();
    let forger = Keypair::generate_ed25519();
    let victim_id = victim.public().to_peer_id();
    let forged = station_record(victim_id, Roles::default(), None).sign(&forger);
    let key = RecordKind::Station(victim_id).key();
    rogue.put(Record::new(key, codec::encode(&forged))).await?;

    // An oversized record under a genuine station's key.
    let big_key = Keypair::generate_ed25519();
    let big_id = big_key.public().to_peer_id();
    let mut big = station_record(big_id, Roles::default(), None);
    big.region = Some("x".repeat(100 * 1024));
    let oversized = big.sign(&big_key);
    (rogue.put(Record::new(
        RecordKind::Station(big_id).key(),
        codec::encode(&oversized),
    )))
    .await?;

    // The control case: a genuine record, sent the same way, is stored.
    let honest = Keypair::generate_ed25519();
    let honest_id = honest.public().to_peer_id();
    let genuine = station_record(honest_id, Roles::default(), None).sign(&honest);
    (rogue.put_signed(RecordKind::Station(honest_id), &genuine)).await?;

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
