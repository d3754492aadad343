//! A Kademlia record store that survives a restart.
//!
//! Records and provider records live in a [`MemoryStore`] (what Kademlia queries) and are
//! written through to a redb file, so a restarted director comes back with the registry
//! records it held instead of an empty table. Expiry is kept as wall-clock milliseconds on disk
//! and turned back into an `Instant` on load; anything expired by then is not loaded.
//!
//! Writes are committed without fsync ([`redb::Durability::None`]) and made durable by
//! [`PersistentStore::flush`], which the registry calls on a timer and at shutdown: registry
//! records are republished by their owners every few seconds, so losing the last interval in
//! a power cut costs nothing that the swarm does not restore by itself. The file is a
//! [`RedbFile`]: after a failed write (a full disk) it is opened again at the next one, and
//! what it lost since the last flush is lost as in a power cut.

use std::borrow::Cow;
use std::path::Path;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::kad::store::{
    Error as StoreError, MemoryStore, MemoryStoreConfig, RecordStore, Result,
};
use libp2p::kad::{ProviderRecord, Record, RecordKey};
use redb::{Durability, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use vodmesh_proto::codec;
use vodmesh_proto::time::now_ms;

use crate::redb_file::RedbFile;
use crate::validate::MAX_VALUE;

const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
const PROVIDERS: TableDefinition<(&[u8], &[u8]), &[u8]> = TableDefinition::new("providers");

/// Limits of the in-memory part of the store.
#[derive(Clone, Debug)]
pub struct StoreLimits {
    /// Records held at most.
    pub max_records: usize,
    /// Provider records kept per key.
    pub max_providers_per_key: usize,
    /// Keys this node provides at most.
    pub max_provided_keys: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            max_records: 65_536,
            max_providers_per_key: 64,
            max_provided_keys: 65_536,
        }
    }
}

/// Why the persistent part of the store failed.
#[derive(Debug, thiserror::Error)]
#[error("registry store {path}: {message}")]
pub struct OpenError {
    path: String,
    message: String,
}

#[derive(Serialize, Deserialize)]
struct StoredRecord {
    value: ByteBuf,
    publisher: Option<ByteBuf>,
    expires_ms: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct StoredProvider {
    addresses: Vec<libp2p::Multiaddr>,
    expires_ms: Option<u64>,
}

/// The registry's record store: memory for queries, redb for restarts.
pub struct PersistentStore {
    memory: MemoryStore,
    db: Option<RedbFile>,
    dirty: bool,
}

fn to_ms(expires: Option<Instant>) -> Option<u64> {
    expires.map(|at| {
        let left = at.saturating_duration_since(Instant::now());
        now_ms().saturating_add(left.as_millis() as u64)
    })
}

fn from_ms(expires_ms: Option<u64>, now: u64) -> Option<Option<Instant>> {
    match expires_ms {
        None => Some(None),
        Some(ms) if ms <= now => None,
        Some(ms) => Some(Some(Instant::now() + Duration::from_millis(ms - now))),
    }
}

impl PersistentStore {
    /// A store that keeps nothing across restarts (consoles and tests).
    pub fn in_memory(local: PeerId, limits: &StoreLimits) -> Self {
        Self {
            memory: MemoryStore::with_config(local, memory_config(limits)),
            db: None,
            dirty: false,
        }
    }

    /// Opens (or creates) the store file at `path` and loads every unexpired record.
    pub fn open(
        local: PeerId,
        path: &Path,
        limits: &StoreLimits,
    ) -> std::result::Result<Self, OpenError> {
        let err = |e: &dyn std::fmt::Display| OpenError {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let db = RedbFile::open(path).map_err(|e| err(&e))?;
        let now = now_ms();
        {
            let tx = db.begin_write().map_err(|e| err(&e))?;
            tx.open_table(RECORDS).map_err(|e| err(&e))?;
            tx.open_table(PROVIDERS).map_err(|e| err(&e))?;
            tx.commit().map_err(|e| err(&e))?;
        }
        let (memory, loaded) = db
            .read(|tx| load(tx, local, limits, now))
            .map_err(|e| err(&e))?;
        tracing::debug!(records = loaded.0, providers = loaded.1, path = %path.display(), "registry store loaded");
        Ok(Self {
            memory,
            db: Some(db),
            dirty: false,
        })
    }

    /// Makes every write so far durable (one fsync), if there were any.
    pub fn flush(&mut self) {
        if !self.dirty {
            return;
        }
        if let Some(db) = &self.db {
            let result = db.begin_write().and_then(|mut tx| {
                let _ = tx.set_durability(Durability::Immediate);
                tx.commit().map_err(redb::Error::from)
            });
            match result {
                Ok(()) => self.dirty = false,
                Err(e) => tracing::warn!(error = %e, "registry store flush failed"),
            }
        }
    }

    fn write(
        &mut self,
        f: impl FnOnce(&redb::WriteTransaction) -> std::result::Result<(), redb::Error>,
    ) {
        let Some(db) = &self.db else { return };
        let result = db.begin_write().and_then(|mut tx| {
            let _ = tx.set_durability(Durability::None);
            f(&tx)?;
            tx.commit().map_err(redb::Error::from)
        });
        match result {
            Ok(()) => self.dirty = true,
            Err(e) => {
                tracing::warn!(error = %e, "registry store write failed; kept in memory only")
            }
        }
    }
}

impl Drop for PersistentStore {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Every unexpired record and provider of the file, in a fresh memory store: `(store,
/// (records, providers))` loaded. Rows that do not decode are skipped.
fn load(
    tx: &redb::ReadTransaction,
    local: PeerId,
    limits: &StoreLimits,
    now: u64,
) -> std::result::Result<(MemoryStore, (usize, usize)), redb::Error> {
    let mut memory = MemoryStore::with_config(local, memory_config(limits));
    let records = tx.open_table(RECORDS)?;
    let mut loaded = (0usize, 0usize);
    for entry in records.iter()? {
        let (k, v) = entry?;
        let Ok(stored) = codec::decode::<StoredRecord>(v.value(), MAX_VALUE * 2) else {
            continue;
        };
        let Some(expires) = from_ms(stored.expires_ms, now) else {
            continue;
        };
        let publisher = stored.publisher.and_then(|p| PeerId::from_bytes(&p).ok());
        let record = Record {
            key: RecordKey::new(&k.value()),
            value: stored.value.into_vec(),
            publisher,
            expires,
        };
        if memory.put(record).is_ok() {
            loaded.0 += 1;
        }
    }
    let providers = tx.open_table(PROVIDERS)?;
    for entry in providers.iter()? {
        let (k, v) = entry?;
        let (key, peer) = k.value();
        let Ok(provider) = PeerId::from_bytes(peer) else {
            continue;
        };
        let Ok(stored) = codec::decode::<StoredProvider>(v.value(), MAX_VALUE) else {
            continue;
        };
        let Some(expires) = from_ms(stored.expires_ms, now) else {
            continue;
        };
        let record = ProviderRecord {
            key: RecordKey::new(&key),
            provider,
            expires,
            addresses: stored.addresses,
        };
        if memory.add_provider(record).is_ok() {
            loaded.1 += 1;
        }
    }
    Ok((memory, loaded))
}

fn memory_config(limits: &StoreLimits) -> MemoryStoreConfig {
    MemoryStoreConfig {
        max_records: limits.max_records,
        max_value_bytes: MAX_VALUE,
        max_providers_per_key: limits.max_providers_per_key,
        max_provided_keys: limits.max_provided_keys,
    }
}

impl RecordStore for PersistentStore {
    type RecordsIter<'a> = <MemoryStore as RecordStore>::RecordsIter<'a>;
    type ProvidedIter<'a> = <MemoryStore as RecordStore>::ProvidedIter<'a>;

    fn get(&self, k: &RecordKey) -> Option<Cow<'_, Record>> {
        self.memory.get(k)
    }

    fn put(&mut self, r: Record) -> Result<()> {
        if r.value.len() > MAX_VALUE {
            return Err(StoreError::ValueTooLarge);
        }
        let stored = StoredRecord {
            value: ByteBuf::from(r.value.clone()),
            publisher: r.publisher.map(|p| ByteBuf::from(p.to_bytes())),
            expires_ms: to_ms(r.expires),
        };
        let key = r.key.to_vec();
        self.memory.put(r)?;
        let bytes = codec::encode(&stored);
        self.write(|tx| {
            tx.open_table(RECORDS)?
                .insert(key.as_slice(), bytes.as_slice())?;
            Ok(())
        });
        Ok(())
    }

    fn remove(&mut self, k: &RecordKey) {
        self.memory.remove(k);
        let key = k.to_vec();
        self.write(|tx| {
            tx.open_table(RECORDS)?.remove(key.as_slice())?;
            Ok(())
        });
    }

    fn records(&self) -> Self::RecordsIter<'_> {
        self.memory.records()
    }

    fn add_provider(&mut self, record: ProviderRecord) -> Result<()> {
        let key = record.key.to_vec();
        let peer = record.provider.to_bytes();
        let stored = StoredProvider {
            addresses: record.addresses.clone(),
            expires_ms: to_ms(record.expires),
        };
        self.memory.add_provider(record)?;
        let bytes = codec::encode(&stored);
        self.write(|tx| {
            tx.open_table(PROVIDERS)?
                .insert((key.as_slice(), peer.as_slice()), bytes.as_slice())?;
            Ok(())
        });
        Ok(())
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        self.memory.providers(key)
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.memory.provided()
    }

    fn remove_provider(&mut self, k: &RecordKey, p: &PeerId) {
        self.memory.remove_provider(k, p);
        let key = k.to_vec();
        let peer = p.to_bytes();
        self.write(|tx| {
            tx.open_table(PROVIDERS)?
                .remove((key.as_slice(), peer.as_slice()))?;
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_providers_survive_reopen_and_expired_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.redb");
        let local = PeerId::random();
        let limits = StoreLimits::default();
        let live = RecordKey::new(&b"station/live");
        let dead = RecordKey::new(&b"station/dead");
        let program = RecordKey::new(&b"program/x");
        let holder = PeerId::random();
        {
            let mut store = PersistentStore::open(local, &path, &limits).unwrap();
            let mut r = Record::new(live.clone(), b"value".to_vec());
            r.expires = Some(Instant::now() + Duration::from_secs(600));
            store.put(r).unwrap();
            let mut d = Record::new(dead.clone(), b"old".to_vec());
            d.expires = Some(Instant::now() + Duration::from_millis(1));
            store.put(d).unwrap();
            store
                .add_provider(ProviderRecord {
                    key: program.clone(),
                    provider: holder,
                    expires: Some(Instant::now() + Duration::from_secs(600)),
                    addresses: vec!["/ip4/127.0.0.1/tcp/1".parse().unwrap()],
                })
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
        let store = PersistentStore::open(local, &path, &limits).unwrap();
        assert_eq!(store.get(&live).unwrap().value, b"value");
        assert!(store.get(&dead).is_none());
        let providers = store.providers(&program);
        assert_eq!(providers.len(), 1);
        assert_eq!(providers[0].provider, holder);
    }

    #[test]
    fn removals_are_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.redb");
        let local = PeerId::random();
        let limits = StoreLimits::default();
        let key = RecordKey::new(&b"catalog/x");
        {
            let mut store = PersistentStore::open(local, &path, &limits).unwrap();
            store.put(Record::new(key.clone(), b"v".to_vec())).unwrap();
            store.remove(&key);
        }
        let store = PersistentStore::open(local, &path, &limits).unwrap();
        assert!(store.get(&key).is_none());
    }
}
