//! The subscriber database (`<data dir>/auth.redb`): users, enrolled stations and their engines.
//!
//! Tables (values are CBOR, so fields can be added later):
//! - `users`: user name -> [`UserRecord`] (argon2id hash, admin flag, program rights);
//! - `stations`: station (director) peer id bytes -> [`Enrollment`];
//! - `engines`: engine peer id bytes -> its station's peer id bytes, the index
//!   `issue_engine_token` looks up;
//! - `enrollments_used`: enrollment token id -> its expiry (ms): each token enrolls once, and
//!   is forgotten once it expired (an expired token is refused anyway).
//!
//! Every commit is durable; the file is a [`RedbFile`], opened again after a failed one.

use std::path::Path;

use libp2p::PeerId;
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use vodmesh_proto::codec;
use vodmesh_proto::token::{CLOCK_SKEW_MS, Rights, TokenId};
use vodmesh_registry::RedbFile;

const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const STATIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("stations");
const ENGINES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("engines");
/// Revoked stations: director peer id -> when (ms since the epoch).
const REVOKED: TableDefinition<&[u8], u64> = TableDefinition::new("revoked");
/// Enrollment tokens presented: token id -> its expiry (ms since the epoch).
const USED: TableDefinition<&[u8], u64> = TableDefinition::new("enrollments_used");

/// Largest record read back, in bytes (a user with thousands of listed programs fits).
const MAX_RECORD: usize = 4 * 1024 * 1024;

/// A database failure.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// redb failed (I/O, a corrupt file, a failed commit).
    #[error("subscriber database: {0}")]
    Redb(Box<redb::Error>),
    /// A stored value does not decode.
    #[error("subscriber database: corrupt record for {key}: {reason}")]
    Corrupt {
        /// Which record.
        key: String,
        /// Why it does not decode.
        reason: String,
    },
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for DbError {
            fn from(e: $t) -> Self {
                Self::Redb(Box::new(redb::Error::from(e)))
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// What is stored about a subscriber.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// argon2id PHC string.
    pub password: String,
    /// May administer the swarm (receives admin tokens).
    pub admin: bool,
    /// Programs the subscriber may watch.
    pub rights: Rights,
    /// When the user was added (ms since the Unix epoch).
    pub created_ms: u64,
    /// Consoles she logged in from (peer ids, the latest last, at most [`MAX_DEVICES`]): their
    /// logins are not held to the lock others' failed guesses put on her name.
    #[serde(default)]
    pub devices: Vec<PeerId>,
    /// Disabled by an admin: no login, no refresh.
    #[serde(default)]
    pub disabled: bool,
}

/// Known devices kept per subscriber.
pub const MAX_DEVICES: usize = 16;

/// An enrolled station.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    /// The station's engines, which receive engine tokens.
    pub engines: Vec<PeerId>,
    /// When it (last) enrolled (ms since the Unix epoch).
    pub enrolled_ms: u64,
    /// The enrollment token it presented; `None` for the auth station's own engines.
    pub token: Option<TokenId>,
}

/// What came of writing an enrollment.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enrolled {
    /// Written: the station's engines are the ones listed.
    Done,
    /// The enrollment token was used before; nothing written.
    TokenUsed,
    /// An engine listed is another station's; nothing written.
    EngineTaken(EngineTaken),
}

/// An engine listed at enrollment that another station, not revoked, enrolled: an engine
/// belongs to one station, and none takes another's (whose engine tokens would stop).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "engine {engine} belongs to station {station}: an engine is enrolled by one station; list this station's own engines (or revoke that station first: `vodmesh station revoke`)"
)]
pub struct EngineTaken {
    /// The engine listed.
    pub engine: PeerId,
    /// The station it belongs to.
    pub station: PeerId,
}

/// The auth server's redb database.
#[derive(Debug)]
pub struct SubscriberDb {
    db: RedbFile,
}

fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    key: &dyn std::fmt::Display,
) -> Result<T, DbError> {
    codec::decode(bytes, MAX_RECORD).map_err(|e| DbError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

impl SubscriberDb {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let db = RedbFile::open(path)?;
        // Create every table now, so readers never meet a missing one.
        let tx = db.begin_write()?;
        tx.open_table(USERS)?;
        tx.open_table(STATIONS)?;
        tx.open_table(ENGINES)?;
        tx.open_table(REVOKED)?;
        tx.open_table(USED)?;
        tx.commit()?;
        Ok(Self { db })
    }

    /// The user named `name`, if any.
    pub fn user(&self, name: &str) -> Result<Option<UserRecord>, DbError> {
        let row = self.db.read(|tx| {
            let table = tx.open_table(USERS)?;
            Ok(table.get(name)?.map(|v| v.value().to_vec()))
        })?;
        let Some(v) = row else {
            return Ok(None);
        };
        Ok(Some(decode(&v, &format_args!("user {name}"))?))
    }

    /// Adds `name`; `Ok(false)` (and nothing written) if it already exists.
    pub fn insert_new_user(&self, name: &str, record: &UserRecord) -> Result<bool, DbError> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(USERS)?;
            if table.get(name)?.is_some() {
                return Ok(false);
            }
            table.insert(name, codec::encode(record).as_slice())?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// Changes the user `name` with `change`, in one transaction; `Ok(false)` if there is no
    /// such user.
    pub fn update_user(
        &self,
        name: &str,
        change: impl FnOnce(&mut UserRecord),
    ) -> Result<bool, DbError> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(USERS)?;
            let Some(mut record) = (match table.get(name)? {
                Some(v) => Some(decode::<UserRecord>(
                    v.value(),
                    &format_args!("user {name}"),
                )?),
                None => None,
            }) else {
                return Ok(false);
            };
            change(&mut record);
            table.insert(name, codec::encode(&record).as_slice())?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// Removes the user `name`; `Ok(false)` if there was none.
    pub fn remove_user(&self, name: &str) -> Result<bool, DbError> {
        let tx = self.db.begin_write()?;
        let removed = tx.open_table(USERS)?.remove(name)?.is_some();
        tx.commit()?;
        Ok(removed)
    }

    /// Number of users.
    pub fn user_count(&self) -> Result<u64, DbError> {
        Ok(self.db.read(|tx| Ok(tx.open_table(USERS)?.len()?))?)
    }

    /// Records `station` as enrolled with `engines`, replacing what it enrolled before;
    /// unless one of them is another station's ([`Enrolled::EngineTaken`], nothing written).
    pub fn enroll(&self, station: &PeerId, enrollment: &Enrollment) -> Result<Enrolled, DbError> {
        let tx = self.db.begin_write()?;
        let enrolled = write_enrollment(&tx, station, enrollment)?;
        if enrolled == Enrolled::Done {
            tx.commit()?;
        }
        Ok(enrolled)
    }

    /// As [`SubscriberDb::enroll`] with the enrollment token `token` (valid until
    /// `expires_ms`), which is marked used in the same transaction: [`Enrolled::TokenUsed`],
    /// and nothing written, if it was used before; nor is it marked used if the enrollment is
    /// refused. Tokens expired at `now_ms` are forgotten.
    pub fn enroll_once(
        &self,
        station: &PeerId,
        enrollment: &Enrollment,
        token: TokenId,
        expires_ms: u64,
        now_ms: u64,
    ) -> Result<Enrolled, DbError> {
        let tx = self.db.begin_write()?;
        {
            let mut used = tx.open_table(USED)?;
            if used.get(token.0.as_slice())?.is_some() {
                return Ok(Enrolled::TokenUsed);
            }
            // An expired token is refused before it gets here, so its id need not be kept.
            used.retain(|_, expires| expires.saturating_add(CLOCK_SKEW_MS) > now_ms)?;
            used.insert(token.0.as_slice(), expires_ms)?;
        }
        let enrolled = write_enrollment(&tx, station, enrollment)?;
        // Dropped without a commit, the transaction leaves the token unused.
        if enrolled == Enrolled::Done {
            tx.commit()?;
        }
        Ok(enrolled)
    }

    /// Whether the enrollment token `token` was used (and not yet forgotten).
    pub fn enrollment_used(&self, token: TokenId) -> Result<bool, DbError> {
        Ok(self
            .db
            .read(|tx| Ok(tx.open_table(USED)?.get(token.0.as_slice())?.is_some()))?)
    }

    /// The enrollment of `station`, if it is enrolled.
    pub fn station(&self, station: &PeerId) -> Result<Option<Enrollment>, DbError> {
        let row = self.db.read(|tx| {
            let table = tx.open_table(STATIONS)?;
            Ok(table
                .get(station.to_bytes().as_slice())?
                .map(|v| v.value().to_vec()))
        })?;
        let Some(v) = row else {
            return Ok(None);
        };
        Ok(Some(decode(&v, &format_args!("station {station}"))?))
    }

    /// Revokes `station`'s membership at `now_ms` (kept until it is enrolled again).
    pub fn revoke(&self, station: &PeerId, now_ms: u64) -> Result<(), DbError> {
        let tx = self.db.begin_write()?;
        tx.open_table(REVOKED)?
            .insert(station.to_bytes().as_slice(), now_ms)?;
        tx.commit()?;
        Ok(())
    }

    /// Ends `station`'s revocation (it enrolled again with a newer enrollment token).
    pub fn unrevoke(&self, station: &PeerId) -> Result<(), DbError> {
        let tx = self.db.begin_write()?;
        tx.open_table(REVOKED)?
            .remove(station.to_bytes().as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// When `station` was revoked, if it is.
    pub fn revoked(&self, station: &PeerId) -> Result<Option<u64>, DbError> {
        Ok(self.db.read(|tx| {
            let table = tx.open_table(REVOKED)?;
            Ok(table.get(station.to_bytes().as_slice())?.map(|v| v.value()))
        })?)
    }

    /// Every revoked station, the latest revoked first.
    pub fn revocations(&self) -> Result<Vec<PeerId>, DbError> {
        let mut out = self.db.read(|tx| {
            let table = tx.open_table(REVOKED)?;
            let mut out = Vec::new();
            for entry in table.iter()? {
                let (k, at) = entry?;
                if let Ok(peer) = PeerId::from_bytes(k.value()) {
                    out.push((at.value(), peer));
                }
            }
            Ok(out)
        })?;
        out.sort_unstable_by_key(|(at, _)| std::cmp::Reverse(*at));
        Ok(out.into_iter().map(|(_, peer)| peer).collect())
    }

    /// The station that enrolled `engine`, if any.
    pub fn station_of_engine(&self, engine: &PeerId) -> Result<Option<PeerId>, DbError> {
        let row = self.db.read(|tx| {
            let table = tx.open_table(ENGINES)?;
            Ok(table
                .get(engine.to_bytes().as_slice())?
                .map(|v| v.value().to_vec()))
        })?;
        let Some(v) = row else {
            return Ok(None);
        };
        PeerId::from_bytes(&v)
            .map(Some)
            .map_err(|e| DbError::Corrupt {
                key: format!("engine {engine}"),
                reason: e.to_string(),
            })
    }
}

/// Writes `station`'s enrollment in `tx`, replacing what it enrolled before; writes nothing
/// if it lists an engine of another station that is not revoked ([`Enrolled::EngineTaken`]).
fn write_enrollment(
    tx: &WriteTransaction,
    station: &PeerId,
    enrollment: &Enrollment,
) -> Result<Enrolled, DbError> {
    let key = station.to_bytes();
    let mut stations = tx.open_table(STATIONS)?;
    let mut engines = tx.open_table(ENGINES)?;
    let revoked = tx.open_table(REVOKED)?;
    // Checked in the transaction that writes: two stations listing one engine at once cannot
    // both pass.
    for engine in &enrollment.engines {
        let Some(owner) = engines.get(engine.to_bytes().as_slice())? else {
            continue;
        };
        let owner = owner.value();
        if owner != key.as_slice() && revoked.get(owner)?.is_none() {
            let owner = PeerId::from_bytes(owner).map_err(|e| DbError::Corrupt {
                key: format!("engine {engine}"),
                reason: e.to_string(),
            })?;
            return Ok(Enrolled::EngineTaken(EngineTaken {
                engine: *engine,
                station: owner,
            }));
        }
    }
    let previous: Option<Enrollment> = match stations.get(key.as_slice())? {
        Some(v) => Some(decode(v.value(), &format_args!("station {station}"))?),
        None => None,
    };
    // Engines the station no longer lists lose their tokens (unless re-listed below).
    for old in previous.iter().flat_map(|p| &p.engines) {
        let old = old.to_bytes();
        let owned_here = engines
            .get(old.as_slice())?
            .is_some_and(|v| v.value() == key.as_slice());
        if owned_here {
            engines.remove(old.as_slice())?;
        }
    }
    for engine in &enrollment.engines {
        engines.insert(engine.to_bytes().as_slice(), key.as_slice())?;
    }
    stations.insert(key.as_slice(), codec::encode(enrollment).as_slice())?;
    Ok(Enrolled::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_enrollments_persist() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("auth.redb");
        let rec = UserRecord {
            password: "$argon2id$...".into(),
            admin: false,
            rights: Rights::All,
            created_ms: 1,
            devices: Vec::new(),
            disabled: false,
        };
        let station = PeerId::random();
        let (e1, e2, e3) = (PeerId::random(), PeerId::random(), PeerId::random());
        {
            let db = SubscriberDb::open(&path)?;
            assert!(db.user("alice")?.is_none());
            assert!(db.insert_new_user("alice", &rec)?);
            assert!(!db.insert_new_user("alice", &rec)?);
            let enrolled = db.enroll(
                &station,
                &Enrollment {
                    engines: vec![e1, e2],
                    enrolled_ms: 5,
                    token: None,
                },
            )?;
            assert_eq!(enrolled, Enrolled::Done);
        }
        let db = SubscriberDb::open(&path)?;
        assert_eq!(db.user("alice")?, Some(rec));
        assert_eq!(db.user_count()?, 1);
        assert_eq!(db.station_of_engine(&e1)?, Some(station));
        assert_eq!(db.station_of_engine(&e3)?, None);
        // Re-enrolling replaces the engine list.
        let enrolled = db.enroll(
            &station,
            &Enrollment {
                engines: vec![e2, e3],
                enrolled_ms: 6,
                token: None,
            },
        )?;
        assert_eq!(enrolled, Enrolled::Done);
        assert_eq!(db.station_of_engine(&e1)?, None);
        assert_eq!(db.station_of_engine(&e2)?, Some(station));
        assert_eq!(db.station_of_engine(&e3)?, Some(station));
        assert_eq!(db.station(&station)?.map(|s| s.enrolled_ms), Some(6));
        Ok(())
    }
}
