//! The content manager's catalog, in redb: every program it ingested, with its signed
//! manifest and its signed catalog record (state and publish time); and the journal of
//! ingests begun and not yet committed, so that a station stopped mid-ingest drops their
//! segments when it starts again. A station's `kept.redb` is one too: the manifests it keeps
//! for what it holds, and the journal of replicas it was asked for and has not finished, so
//! that a replica cut short (a copy that failed every round, a station stopped mid-copy) is
//! finished later.
//!
//! Every commit here is durable; the file is a [`RedbFile`], opened again after a failed one
//! (a full disk), so that the next ingest or replica works once there is room.

use std::path::Path;

use libp2p::{Multiaddr, PeerId};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use vodmesh_proto::ProgramId;
use vodmesh_proto::catalog::CatalogRecord;
use vodmesh_proto::codec;
use vodmesh_proto::manifest::{MAX_MANIFEST, Manifest};
use vodmesh_proto::signed::Signed;
use vodmesh_registry::RedbFile;

const PROGRAMS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("programs");
/// Ingests begun and not committed: program -> its segment count.
const INGESTS: TableDefinition<&[u8; 32], u32> = TableDefinition::new("open_ingests");
/// Replicas asked for and not finished: program -> [`OpenReplica`] (CBOR).
const REPLICAS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("open_replicas");
/// The largest journaled replica (a few addresses of its source).
const MAX_OPEN_REPLICA: usize = 16 * 1024;

/// A replica this station was asked for and has not finished: whom to copy from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenReplica {
    /// The content manager that asked for it (its manifest must be signed by it).
    pub content_manager: PeerId,
    /// The director of the station to copy from.
    pub source: PeerId,
    /// Its addresses.
    pub source_addrs: Vec<Multiaddr>,
    /// When it was asked for (ms since the epoch).
    pub begun_ms: u64,
}

/// One program in the catalog.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// The signed manifest.
    pub manifest: Signed,
    /// The signed catalog record (what the registry holds).
    pub record: Signed,
}

impl CatalogEntry {
    /// The manifest, verified.
    pub fn manifest(&self) -> Option<Manifest> {
        Manifest::verify(&self.manifest).ok()
    }

    /// The catalog record, verified.
    pub fn record(&self) -> Option<CatalogRecord> {
        CatalogRecord::verify(&self.record).ok()
    }
}

/// A catalog operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("catalog: {0}")]
pub struct Error(String);

fn err(e: impl std::fmt::Display) -> Error {
    Error(e.to_string())
}

/// A row of a table keyed by program: its key and its value as stored.
type Row = ([u8; 32], Vec<u8>);

/// Every row of `table` (decoded by the caller, outside the read).
fn rows(
    tx: &redb::ReadTransaction,
    table: TableDefinition<&[u8; 32], &[u8]>,
) -> Result<Vec<Row>, redb::Error> {
    let table = tx.open_table(table)?;
    let mut out = Vec::new();
    for row in table.iter()? {
        let (k, v) = row?;
        out.push((*k.value(), v.value().to_vec()));
    }
    Ok(out)
}

/// The catalog file.
#[derive(Debug)]
pub struct Catalog {
    db: RedbFile,
}

impl Catalog {
    /// Opens (or creates) the catalog at `path`.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let db = RedbFile::open(path).map_err(err)?;
        let tx = db.begin_write().map_err(err)?;
        tx.open_table(PROGRAMS).map_err(err)?;
        tx.open_table(INGESTS).map_err(err)?;
        tx.open_table(REPLICAS).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Self { db })
    }

    /// Stores (or replaces) a program's entry, durably; its ingest leaves the journal in the
    /// same commit.
    pub fn put(&self, program: &ProgramId, entry: &CatalogEntry) -> Result<(), Error> {
        let bytes = codec::encode(entry);
        let tx = self.db.begin_write().map_err(err)?;
        tx.open_table(PROGRAMS)
            .map_err(err)?
            .insert(program.as_bytes(), bytes.as_slice())
            .map_err(err)?;
        tx.open_table(INGESTS)
            .map_err(err)?
            .remove(program.as_bytes())
            .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// Journals an ingest of `program` (`segments` segments) as begun, durably: before any of
    /// its bytes reach an engine.
    pub fn ingest_begun(&self, program: &ProgramId, segments: u32) -> Result<(), Error> {
        let tx = self.db.begin_write().map_err(err)?;
        tx.open_table(INGESTS)
            .map_err(err)?
            .insert(program.as_bytes(), segments)
            .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// Takes an ingest of `program` out of the journal (its segments were dropped).
    pub fn ingest_dropped(&self, program: &ProgramId) -> Result<(), Error> {
        let tx = self.db.begin_write().map_err(err)?;
        tx.open_table(INGESTS)
            .map_err(err)?
            .remove(program.as_bytes())
            .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// The ingests journaled as begun and never committed nor dropped: `(program, segments)`.
    pub fn open_ingests(&self) -> Result<Vec<(ProgramId, u32)>, Error> {
        self.db
            .read(|tx| {
                let table = tx.open_table(INGESTS)?;
                let mut out = Vec::new();
                for row in table.iter()? {
                    let (k, v) = row?;
                    out.push((ProgramId(*k.value()), v.value()));
                }
                Ok(out)
            })
            .map_err(err)
    }

    /// Journals a replica of `program` as asked for, durably (replacing an earlier one).
    pub fn replica_begun(&self, program: &ProgramId, replica: &OpenReplica) -> Result<(), Error> {
        let bytes = codec::encode(replica);
        let tx = self.db.begin_write().map_err(err)?;
        tx.open_table(REPLICAS)
            .map_err(err)?
            .insert(program.as_bytes(), bytes.as_slice())
            .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// Takes a replica of `program` out of the journal (finished, or given up for good).
    pub fn replica_ended(&self, program: &ProgramId) -> Result<(), Error> {
        let tx = self.db.begin_write().map_err(err)?;
        tx.open_table(REPLICAS)
            .map_err(err)?
            .remove(program.as_bytes())
            .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// The replicas journaled as asked for and not finished. A row that does not decode is
    /// skipped (and logged): it names no source to copy from.
    pub fn open_replicas(&self) -> Result<Vec<(ProgramId, OpenReplica)>, Error> {
        let rows = self.db.read(|tx| rows(tx, REPLICAS)).map_err(err)?;
        let mut out = Vec::new();
        for (program, v) in rows {
            let program = ProgramId(program);
            match codec::decode(&v, MAX_OPEN_REPLICA) {
                Ok(replica) => out.push((program, replica)),
                Err(e) => {
                    tracing::warn!(%program, error = %e, "a journaled replica is unreadable; skipped")
                }
            }
        }
        Ok(out)
    }

    /// A program's entry.
    pub fn get(&self, program: &ProgramId) -> Result<Option<CatalogEntry>, Error> {
        let row = self
            .db
            .read(|tx| {
                let table = tx.open_table(PROGRAMS)?;
                Ok(table.get(program.as_bytes())?.map(|v| v.value().to_vec()))
            })
            .map_err(err)?;
        let Some(v) = row else {
            return Ok(None);
        };
        codec::decode(&v, MAX_MANIFEST * 2).map(Some).map_err(err)
    }

    /// Every entry.
    pub fn all(&self) -> Result<Vec<CatalogEntry>, Error> {
        let rows = self.db.read(|tx| rows(tx, PROGRAMS)).map_err(err)?;
        let mut out = Vec::new();
        for (_, v) in rows {
            match codec::decode(&v, MAX_MANIFEST * 2) {
                Ok(e) => out.push(e),
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable catalog entry"),
            }
        }
        Ok(out)
    }
}

/// A valid entry of one segment, titled `title`, published, signed by `key` (for tests).
#[cfg(test)]
pub(crate) fn signed_entry(key: &libp2p::identity::Keypair, title: &str) -> CatalogEntry {
    use vodmesh_proto::catalog::ProgramState;
    use vodmesh_proto::manifest::{ManifestContent, SegmentEntry};
    let content = ManifestContent {
        title: title.into(),
        content_type: "video/mp2t".into(),
        duration_ms: 4000,
        segments: vec![SegmentEntry {
            index: 0.into(),
            duration_ms: 4000,
            size: 1000,
            hash: vodmesh_proto::SegmentHash::of(title.as_bytes()),
        }],
        renditions: Vec::new(),
    };
    let me = key.public().to_peer_id();
    let manifest = Manifest::new(content, me, 1);
    let record = CatalogRecord {
        program: manifest.program,
        title: title.into(),
        manifest_hash: vodmesh_proto::SegmentHash::of(&codec::encode(&manifest)),
        state: ProgramState::Published,
        publish_at_ms: 0,
        replicas: 0,
        content_manager: me,
        home: me,
        issued_ms: 1,
    };
    CatalogEntry {
        manifest: manifest.sign(key),
        record: record.sign(key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;

    #[test]
    fn the_journal_lists_ingests_until_committed_or_dropped_across_reopens() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(err)?;
        let path = dir.path().join("catalog.redb");
        let (a, b) = (ProgramId([1; 32]), ProgramId([2; 32]));
        {
            let catalog = Catalog::open(&path)?;
            catalog.ingest_begun(&a, 3)?;
            catalog.ingest_begun(&b, 5)?;
        }
        let catalog = Catalog::open(&path)?;
        assert_eq!(catalog.open_ingests()?, vec![(a, 3), (b, 5)]);
        // The commit of a takes it out of the journal; b is dropped.
        catalog.put(&a, &signed_entry(&Keypair::generate_ed25519(), "a"))?;
        catalog.ingest_dropped(&b)?;
        assert!(catalog.open_ingests()?.is_empty());
        assert!(catalog.get(&a)?.is_some());
        Ok(())
    }

    #[test]
    fn the_journal_lists_replicas_until_ended_across_reopens() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(err)?;
        let path = dir.path().join("kept.redb");
        let (a, b) = (ProgramId([1; 32]), ProgramId([2; 32]));
        let replica = OpenReplica {
            content_manager: PeerId::random(),
            source: PeerId::random(),
            source_addrs: vec!["/ip4/127.0.0.1/tcp/4001".parse().map_err(err)?],
            begun_ms: 1,
        };
        {
            let kept = Catalog::open(&path)?;
            kept.replica_begun(&a, &replica)?;
            kept.replica_begun(&b, &replica)?;
        }
        let kept = Catalog::open(&path)?;
        assert_eq!(
            kept.open_replicas()?,
            vec![(a, replica.clone()), (b, replica.clone())]
        );
        kept.replica_ended(&a)?;
        assert_eq!(kept.open_replicas()?, vec![(b, replica)]);
        Ok(())
    }
}
