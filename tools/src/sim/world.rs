//! The simulated swarm's identities, programs and records, all derived from the seed, so that
//! a run is repeated exactly by its seed.

use anyhow::{Context, Result};
use libp2p::identity::Keypair;
use libp2p::{PeerId, kad};
use vodmesh_proto::catalog::{CatalogRecord, ProgramState};
use vodmesh_proto::signed::Signed;
use vodmesh_proto::time::now_ms;
use vodmesh_proto::{ProgramId, SegmentHash};
use vodmesh_registry::registry as reg;

pub(super) fn station_key(seed: u64, index: usize) -> Result<Keypair> {
    let mut h = blake3::Hasher::new();
    h.update(b"vodmesh sim station");
    h.update(&seed.to_le_bytes());
    h.update(&(index as u64).to_le_bytes());
    let mut bytes = *h.finalize().as_bytes();
    Keypair::ed25519_from_bytes(&mut bytes).context("deriving a station key")
}

pub(super) fn program_id(seed: u64, index: usize) -> ProgramId {
    let mut h = blake3::Hasher::new();
    h.update(b"vodmesh sim program");
    h.update(&seed.to_le_bytes());
    h.update(&(index as u64).to_le_bytes());
    ProgramId(*h.finalize().as_bytes())
}

/// The catalog record the content manager (station 0) signs for `program`.
pub(super) fn catalog_record(
    key: &Keypair,
    cm: PeerId,
    program: ProgramId,
    holders: usize,
) -> Signed {
    CatalogRecord {
        program,
        title: format!("sim {program}"),
        manifest_hash: SegmentHash::from(blake3::hash(program.as_bytes())),
        state: ProgramState::Published,
        publish_at_ms: now_ms(),
        replicas: holders as u32,
        content_manager: cm,
        home: cm,
        issued_ms: now_ms(),
    }
    .sign(key)
}

/// The Kademlia record a signed record is stored as, published by `publisher`.
pub(super) fn stored(signed: &Signed, publisher: PeerId) -> Result<kad::Record> {
    let mut record = reg::record_of(signed).map_err(|e| anyhow::anyhow!("{e}"))?;
    record.publisher = Some(publisher);
    Ok(record)
}

/// Program `index` of those a re-providing station caches (ids apart from the catalog's).
pub(super) fn cached_program(seed: u64, station: PeerId, index: usize) -> ProgramId {
    let mut h = blake3::Hasher::new();
    h.update(b"vodmesh sim cached program");
    h.update(&seed.to_le_bytes());
    h.update(&station.to_bytes());
    h.update(&(index as u64).to_le_bytes());
    ProgramId(*h.finalize().as_bytes())
}
