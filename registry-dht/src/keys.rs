//! The registry's record keys: `station/<peer>`, `program/<id>`, `catalog/<id>` (DESIGN.md §5),
//! and which of them a signed record is stored under.

use libp2p::PeerId;
use libp2p::kad::RecordKey;
use vodmesh_proto::ProgramId;
use vodmesh_proto::catalog::CatalogRecord;
use vodmesh_proto::signed::Signed;
use vodmesh_proto::station::StationRecord;
use vodmesh_proto::time::now_ms;

const STATION: &[u8] = b"station/";
const PROGRAM: &[u8] = b"program/";
const CATALOG: &[u8] = b"catalog/";

/// What a registry key names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// The signed station record a director publishes about itself.
    Station(PeerId),
    /// Provider records: the directors of stations that hold segments of a program.
    Program(ProgramId),
    /// The signed catalog record the content manager publishes about a program.
    Catalog(ProgramId),
}

impl RecordKind {
    /// The Kademlia key for this record.
    pub fn key(&self) -> RecordKey {
        let mut k = Vec::with_capacity(48);
        match self {
            Self::Station(peer) => {
                k.extend_from_slice(STATION);
                k.extend_from_slice(&peer.to_bytes());
            }
            Self::Program(id) => {
                k.extend_from_slice(PROGRAM);
                k.extend_from_slice(id.as_bytes());
            }
            Self::Catalog(id) => {
                k.extend_from_slice(CATALOG);
                k.extend_from_slice(id.as_bytes());
            }
        }
        RecordKey::new(&k)
    }

    /// Which record `key` names, or `None` for a key vodmesh does not use.
    pub fn parse(key: &RecordKey) -> Option<Self> {
        let bytes = key.as_ref();
        if let Some(rest) = bytes.strip_prefix(STATION) {
            return PeerId::from_bytes(rest).ok().map(Self::Station);
        }
        if let Some(rest) = bytes.strip_prefix(PROGRAM) {
            return program_id(rest).map(Self::Program);
        }
        if let Some(rest) = bytes.strip_prefix(CATALOG) {
            return program_id(rest).map(Self::Catalog);
        }
        None
    }
}

fn program_id(bytes: &[u8]) -> Option<ProgramId> {
    <[u8; 32]>::try_from(bytes).ok().map(ProgramId)
}

/// What a signed record is stored as, if it is a station or catalog record that verifies.
pub(crate) fn kind_of(signed: &Signed) -> Option<RecordKind> {
    if let Ok(rec) = StationRecord::verify(signed, now_ms()) {
        return Some(RecordKind::Station(rec.director));
    }
    CatalogRecord::verify(signed)
        .ok()
        .map(|rec| RecordKind::Catalog(rec.program))
}

/// When a signed station record expires, as the store counts time (`None`: not one).
pub(crate) fn expiry_of(signed: &Signed) -> Option<std::time::Instant> {
    let rec = StationRecord::verify(signed, now_ms()).ok()?;
    let left = rec.expires_ms.saturating_sub(now_ms());
    Some(std::time::Instant::now() + std::time::Duration::from_millis(left))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_junk_is_none() {
        let peer = PeerId::random();
        let id = ProgramId([7; 32]);
        for kind in [
            RecordKind::Station(peer),
            RecordKind::Program(id),
            RecordKind::Catalog(id),
        ] {
            assert_eq!(RecordKind::parse(&kind.key()), Some(kind));
        }
        for junk in [
            &b""[..],
            b"station/",
            b"station/xyz",
            b"program/short",
            b"other/1",
        ] {
            assert_eq!(RecordKind::parse(&RecordKey::new(&junk)), None);
        }
    }
}
