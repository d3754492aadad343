//! Peers that speak the registry's protocol without being stations: a bare Kademlia client
//! that sends a director whatever records it is told to ([`Rogue`]), and the records and
//! certificates such a peer (or a real member) would send ([`station_record`], [`certify`]).

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, anyhow};
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::kad::{self, Quorum, Record};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};
use vodmesh_proto::codec;
use vodmesh_proto::net::{build_swarm, peer_of};
use vodmesh_proto::signed::Signed;
use vodmesh_proto::station::{Roles, StationRecord};
use vodmesh_proto::time::{in_ms, now_ms};
use vodmesh_proto::token::{Audience, Claims, Issuer, Rights, TokenId};
use vodmesh_proto::{ProgramId, catalog};
use vodmesh_registry::registry::{self as reg, RegistryConfig};
use vodmesh_registry::{PersistentStore, RecordKind, StoreLimits};

/// The issuer key of the auth station whose data directory is `data`.
pub fn issuer_of(data: &Path) -> Result<Issuer> {
    Ok(vodmesh_node::auth::key::load_or_create(data)?)
}

/// A station certificate for `station` granting `roles`, signed by `issuer`, valid an hour.
pub fn certify(issuer: &Issuer, station: PeerId, roles: Roles) -> Result<Vec<u8>> {
    Ok(issuer.sign(&Claims {
        issuer: issuer.public(),
        subject: station,
        audience: Audience::Member,
        rights: Rights::All,
        not_before_ms: now_ms(),
        expires_ms: in_ms(Duration::from_secs(3600)),
        id: TokenId::random(),
        user: None,
        roles: Some(roles),
        addr: None,
    })?)
}

/// A station record of `director`, at no address, with no engines, claiming `roles` and
/// carrying `certificate`, valid a minute.
pub fn station_record(
    director: PeerId,
    roles: Roles,
    certificate: Option<Vec<u8>>,
) -> StationRecord {
    StationRecord {
        director,
        addrs: vec![],
        engines: vec![],
        region: None,
        coords: None,
        bandwidth_mbps: 1,
        roles,
        issuer: None,
        issued_ms: now_ms(),
        expires_ms: in_ms(Duration::from_secs(60)),
        counters: Default::default(),
        certificate: certificate.map(Into::into),
        revoked: vec![],
        http: None,
        https: false,
    }
}

/// A catalog record of `program`, published, signed by `key` as its content manager.
pub fn catalog_record(key: &Keypair, program: ProgramId, title: &str) -> Signed {
    let me = key.public().to_peer_id();
    catalog::CatalogRecord {
        program,
        title: title.into(),
        manifest_hash: vodmesh_proto::SegmentHash([0; 32]),
        state: catalog::ProgramState::Published,
        publish_at_ms: 0,
        replicas: 0,
        content_manager: me,
        home: me,
        issued_ms: u64::MAX,
    }
    .sign(key)
}

/// A bare Kademlia client (client mode, its own identity) connected to one director only.
pub struct Rogue {
    /// Its identity.
    pub key: Keypair,
    swarm: Swarm<kad::Behaviour<PersistentStore>>,
    director: PeerId,
}

impl Rogue {
    /// A new identity that talks to the director at `director` (ending in `/p2p/<peer id>`).
    pub fn new(director: &Multiaddr) -> Result<Self> {
        Self::with_key(Keypair::generate_ed25519(), director)
    }

    /// Identity `key`, talking to the director at `director`.
    pub fn with_key(key: Keypair, director: &Multiaddr) -> Result<Self> {
        let local = key.public().to_peer_id();
        let store = PersistentStore::in_memory(local, &StoreLimits::default());
        let mut swarm = build_swarm(key.clone(), |_| {
            reg::behaviour(local, store, &RegistryConfig::default(), false)
        })?;
        let peer = peer_of(director).ok_or_else(|| anyhow!("{director} has no /p2p/ peer id"))?;
        swarm.behaviour_mut().add_address(&peer, director.clone());
        Ok(Self {
            key,
            swarm,
            director: peer,
        })
    }

    /// Its peer id.
    pub fn peer(&self) -> PeerId {
        self.key.public().to_peer_id()
    }

    /// Waits until query `id` reports, driving the swarm.
    async fn finish(&mut self, id: kad::QueryId) -> Result<()> {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if let SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed {
                    id: got, ..
                }) = self.swarm.select_next_some().await
                    && got == id
                {
                    return;
                }
            }
        })
        .await?;
        Ok(())
    }

    /// Sends `record` to the director only, bypassing its own store (and its size limit).
    pub async fn put(&mut self, record: Record) -> Result<()> {
        let to = std::iter::once(self.director);
        let id = (self.swarm.behaviour_mut()).put_record_to(record, to, Quorum::One);
        self.finish(id).await
    }

    /// Sends a signed station or catalog record under the key it belongs to.
    pub async fn put_signed(&mut self, kind: RecordKind, signed: &Signed) -> Result<()> {
        self.put(Record::new(kind.key(), codec::encode(signed)))
            .await
    }

    /// Announces itself to the director as a holder of `program`.
    pub async fn provide(&mut self, program: ProgramId) -> Result<()> {
        let key = RecordKind::Program(program).key();
        let id = (self.swarm.behaviour_mut()).start_providing(key)?;
        self.finish(id).await
    }
}
