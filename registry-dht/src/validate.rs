//! Validation of every record a peer asks this director to store.
//!
//! The registry runs Kademlia with `StoreInserts::FilterBoth`: nothing a remote peer sends is
//! stored until [`check_record`] or [`check_provider`] accepts it. A station record must be
//! signed by the station it describes, a catalog record by the content manager it names, and
//! every value must fit its size limit.

use libp2p::PeerId;
use libp2p::kad::{ProviderRecord, Record};
use vodmesh_proto::catalog::CatalogRecord;
use vodmesh_proto::codec;
use vodmesh_proto::signed::Signed;
use vodmesh_proto::station::{self, StationRecord};

use crate::keys::RecordKind;

/// The largest value the registry stores under any key.
pub const MAX_VALUE: usize = 64 * 1024;

/// Why a record was refused.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    /// The key is not one of the registry's record kinds.
    #[error("unknown record key")]
    UnknownKey,
    /// The value is larger than [`MAX_VALUE`].
    #[error("record of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// Provider records are only accepted under `program/<id>` keys and vice versa.
    #[error("wrong record kind for this key")]
    WrongKind,
    /// The value did not decode or its signature did not verify.
    #[error("bad record: {0}")]
    Bad(String),
    /// The station record's lifetime is over (a late copy, not an attack).
    #[error("station record expired")]
    Expired,
    /// The record names a different station or program than its key.
    #[error("record does not match its key")]
    KeyMismatch,
}

/// Checks a value record (station or catalog) before it is stored.
pub fn check_record(record: &Record, now_ms: u64) -> Result<RecordKind, Invalid> {
    if record.value.len() > MAX_VALUE {
        return Err(Invalid::TooLarge(record.value.len()));
    }
    let kind = RecordKind::parse(&record.key).ok_or(Invalid::UnknownKey)?;
    let signed: Signed =
        codec::decode(&record.value, MAX_VALUE).map_err(|e| Invalid::Bad(e.to_string()))?;
    match kind {
        RecordKind::Station(peer) => {
            let rec =
                StationRecord::verify(&signed, now_ms).map_err(|e| Invalid::Bad(e.to_string()))?;
            if rec.director != peer {
                return Err(Invalid::KeyMismatch);
            }
        }
        RecordKind::Catalog(id) => {
            let rec = CatalogRecord::verify(&signed).map_err(|e| Invalid::Bad(e.to_string()))?;
            if rec.program != id {
                return Err(Invalid::KeyMismatch);
            }
        }
        RecordKind::Program(_) => return Err(Invalid::WrongKind),
    }
    Ok(kind)
}

/// Checks a provider record before it is stored: only `program/<id>` keys take providers.
/// (Kademlia itself refuses a provider record whose provider is not the sending peer.)
pub fn check_provider(record: &ProviderRecord, source: Option<&PeerId>) -> Result<(), Invalid> {
    match RecordKind::parse(&record.key) {
        Some(RecordKind::Program(_)) => {}
        Some(_) => return Err(Invalid::WrongKind),
        None => return Err(Invalid::UnknownKey),
    }
    if source.is_some_and(|s| *s != record.provider) {
        return Err(Invalid::KeyMismatch);
    }
    Ok(())
}

fn station_error(e: station::RecordError) -> Invalid {
    match e {
        station::RecordError::Expired => Invalid::Expired,
        other => Invalid::Bad(other.to_string()),
    }
}

/// Decodes and verifies a station record value fetched from the registry.
pub fn station_from_value(value: &[u8], now_ms: u64) -> Result<(StationRecord, Signed), Invalid> {
    let signed: Signed =
        codec::decode(value, station::MAX_RECORD).map_err(|e| Invalid::Bad(e.to_string()))?;
    let rec = StationRecord::verify(&signed, now_ms).map_err(station_error)?;
    Ok((rec, signed))
}
