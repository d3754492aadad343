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

/// Whether `record` is a station record issued before `stored`, the live copy held under its
/// key, at `now_ms`. Copies of one station's record travel apart (two republishes a moment
/// apart go out as two queries, and other servers replicate what they hold), so they may
/// arrive out of order; an older one must not replace a newer: the station's engines,
/// addresses and load as they were. Without this a station's record taken in before its
/// engine process attached could replace the one listing it, and a holder checking that
/// station refused the engine's copies.
///
/// A stored copy issued more than [`ISSUED_AHEAD_MS`] past this server's clock orders
/// nothing: its director's clock ran ahead, and once that clock is set right its new records
/// would otherwise be dropped until the old one expired (a whole time to live).
pub fn older(record: &Record, stored: Option<&Record>, now_ms: u64) -> bool {
    let issued = |value: &[u8]| station_from_value(value, now_ms).map(|(r, _)| r.issued_ms);
    match stored.map(|s| (issued(&s.value), issued(&record.value))) {
        Some((Ok(stored), Ok(incoming))) => {
            incoming < stored && stored <= now_ms.saturating_add(ISSUED_AHEAD_MS)
        }
        _ => false,
    }
}

/// Whether `record`, a catalog record, would replace `stored`, the live one held under its
/// key, signed by another content manager. A program's record may be replaced only by the
/// content manager that signed the one held: any certified content manager can sign a record
/// of any program id, and one newer than the owner's would take the program over (its
/// state, publish time, manifest and home) wherever it is read. A stored copy that no longer
/// verifies orders nothing.
pub fn other_owner(record: &Record, stored: Option<&Record>) -> bool {
    let owner = |value: &[u8]| {
        let signed: Signed = codec::decode(value, MAX_VALUE).ok()?;
        CatalogRecord::verify(&signed)
            .ok()
            .map(|r| r.content_manager)
    };
    match stored.map(|s| (owner(&s.value), owner(&record.value))) {
        Some((Some(stored), Some(incoming))) => stored != incoming,
        _ => false,
    }
}

/// How far past this server's clock a stored station record's issue time may lie and still
/// order the copies that arrive after it ([`older`]): clocks a minute apart are ordinary, an
/// issue time further ahead is a clock that was wrong.
pub const ISSUED_AHEAD_MS: u64 = 60_000;

/// The station record of the director whose key is `key`, with nothing in it but its issue
/// and expiry times (ms since the epoch): for tests.
#[cfg(test)]
pub(crate) fn bare_station(
    key: &libp2p::identity::Keypair,
    (issued_ms, expires_ms): (u64, u64),
) -> StationRecord {
    StationRecord {
        director: key.public().to_peer_id(),
        addrs: vec![],
        engines: vec![],
        region: None,
        coords: None,
        bandwidth_mbps: 1,
        roles: Default::default(),
        issuer: None,
        issued_ms,
        expires_ms,
        counters: Default::default(),
        certificate: None,
        revoked: vec![],
        http: None,
        https: false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use libp2p::identity::Keypair;
    use libp2p::kad::RecordKey;
    use proptest::prelude::*;
    use vodmesh_proto::ProgramId;

    use super::*;

    /// A published catalog record of `program`, signed by `key`, its content manager.
    pub(crate) fn catalog_record(key: &Keypair, program: ProgramId, issued_ms: u64) -> Signed {
        use vodmesh_proto::catalog::{CatalogRecord, ProgramState};
        let me = key.public().to_peer_id();
        let record = CatalogRecord {
            program,
            title: "p".into(),
            manifest_hash: vodmesh_proto::SegmentHash([0; 32]),
            state: ProgramState::Published,
            publish_at_ms: 0,
            replicas: 0,
            content_manager: me,
            home: me,
            issued_ms,
        };
        record.sign(key)
    }

    fn keys() -> Vec<RecordKey> {
        let id = ProgramId([3; 32]);
        vec![
            RecordKind::Station(Keypair::generate_ed25519().public().to_peer_id()).key(),
            RecordKind::Catalog(id).key(),
            RecordKind::Program(id).key(),
            RecordKey::new(&b"junk"),
        ]
    }

    proptest! {
        #[test]
        fn random_values_are_refused_without_panic(value in proptest::collection::vec(any::<u8>(), 0..4096)) {
            for key in keys() {
                let record = Record::new(key, value.clone());
                prop_assert!(check_record(&record, 0).is_err());
            }
            prop_assert!(station_from_value(&value, 0).is_err());
        }
    }

    /// A copy of a station record issued before the stored one is older, unless the stored
    /// one was issued past this server's clock by more than `ISSUED_AHEAD_MS` (its director's
    /// clock ran ahead and was set right since). Controls: a newer copy is never older, and a
    /// stored copy a little ahead (within the allowance) still orders.
    #[test]
    fn a_record_issued_far_ahead_of_the_clock_orders_no_later_copy() {
        let key = Keypair::generate_ed25519();
        let peer = key.public().to_peer_id();
        let now = 1_000_000_000;
        let at = |issued_ms: u64| {
            let rec = bare_station(&key, (issued_ms, now + 3_600_000));
            Record::new(
                RecordKind::Station(peer).key(),
                codec::encode(&rec.sign(&key)),
            )
        };
        let (stored_near, stored_far) = (at(now + 10_000), at(now + ISSUED_AHEAD_MS + 1));
        assert!(older(&at(now), Some(&stored_near), now));
        assert!(!older(&at(now + 20_000), Some(&stored_near), now));
        assert!(!older(&at(now), Some(&stored_far), now));
        assert!(!older(&at(now), None, now));
    }

    /// A catalog record held under a program's key is replaced only by one its own content
    /// manager signed; the control: the owner's next record replaces it.
    #[test]
    fn a_program_s_record_is_replaced_only_by_its_own_content_manager() {
        let program = ProgramId([7; 32]);
        let record = |key: &Keypair, issued_ms: u64| {
            let signed = catalog_record(key, program, issued_ms);
            Record::new(RecordKind::Catalog(program).key(), codec::encode(&signed))
        };
        let (owner, other) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let stored = record(&owner, 1);
        assert!(other_owner(&record(&other, u64::MAX), Some(&stored)));
        assert!(!other_owner(&record(&owner, 2), Some(&stored)));
        assert!(!other_owner(&record(&other, 2), None));
        let junk = Record::new(RecordKind::Catalog(program).key(), vec![1, 2, 3]);
        assert!(!other_owner(&record(&other, 2), Some(&junk)));
    }

    #[test]
    fn truncated_and_oversized_station_records_are_refused() {
        let key = Keypair::generate_ed25519();
        let peer = key.public().to_peer_id();
        let rec = bare_station(&key, (1, u64::MAX));
        let value = codec::encode(&rec.sign(&key));
        let good = Record::new(RecordKind::Station(peer).key(), value.clone());
        assert!(check_record(&good, 2).is_ok());
        for cut in 0..value.len() {
            let r = Record::new(RecordKind::Station(peer).key(), value[..cut].to_vec());
            assert!(check_record(&r, 2).is_err(), "truncated at {cut} accepted");
        }
        let big = Record::new(RecordKind::Station(peer).key(), vec![0; MAX_VALUE + 1]);
        assert!(matches!(check_record(&big, 2), Err(Invalid::TooLarge(_))));
        // Stored under another station's key: refused.
        let other = Keypair::generate_ed25519().public().to_peer_id();
        let moved = Record::new(RecordKind::Station(other).key(), value);
        assert!(check_record(&moved, 2).is_err());
    }
}
