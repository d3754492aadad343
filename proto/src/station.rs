//! The station record: what a director publishes about its station in the registry under
//! `station/<director peer id>`, signed by the director's key and re-signed every republish.

use std::net::SocketAddr;

use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::signed::{Signed, SignedError};

/// Signature domain of station records.
pub const DOMAIN: &str = "vodmesh/station/1";
/// Largest station record accepted, in bytes (a station with hundreds of engines fits).
pub const MAX_RECORD: usize = 64 * 1024;

/// One engine of a station, as the swarm sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineInfo {
    /// The engine's own peer id.
    pub peer_id: PeerId,
    /// Where other hosts reach it, the best first: announced addresses (`--announce`, NAT),
    /// then where it listens, loopback last.
    pub addrs: Vec<Multiaddr>,
    /// Streams it is serving now.
    pub streams: u32,
    /// Most streams it will serve at once.
    pub max_streams: u32,
    /// Bytes stored.
    pub used: u64,
    /// Bytes it may store (0: unbounded).
    pub capacity: u64,
    /// Whether it answers its director.
    pub up: bool,
    /// Storage per disk (absent in records of older stations).
    #[serde(default)]
    pub disks: Vec<DiskUsage>,
    /// Where it serves segments over HTTP to standard players (`vodmesh-node --http`; absent
    /// when it does not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<SocketAddr>,
    /// Whether it serves `http` over TLS (`--tls-cert`): its URLs are `https://`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub https: bool,
    /// Where it takes bulk connections from consoles (`net::bulk`), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bulk: Option<SocketAddr>,
}

impl EngineInfo {
    /// Bytes reserved by writes in progress, over its disks.
    pub fn reserved(&self) -> u64 {
        self.disks
            .iter()
            .fold(0, |sum, d| sum.saturating_add(d.reserved))
    }

    /// Bytes eviction may free, over its disks.
    pub fn evictable(&self) -> u64 {
        self.disks
            .iter()
            .fold(0, |sum, d| sum.saturating_add(d.evictable))
    }

    /// Bytes it may still take without evicting anything: its capacity less what is used and
    /// reserved. `None` when only its disks bound it (capacity 0).
    pub fn free(&self) -> Option<u64> {
        (self.capacity > 0).then(|| {
            self.capacity
                .saturating_sub(self.used.saturating_add(self.reserved()))
        })
    }

    /// Bytes it could take for copies (which are evictable caches): what is free plus what
    /// eviction may free. `None` when only its disks bound it.
    pub fn room_for_copies(&self) -> Option<u64> {
        self.free().map(|f| f.saturating_add(self.evictable()))
    }
}

/// Bytes stored over `disks` (an engine's `used`).
pub fn used_on(disks: &[DiskUsage]) -> u64 {
    disks.iter().fold(0, |sum, d| sum.saturating_add(d.used))
}

/// `n` bytes for people, in decimal units: `1.5 GB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Engine figures summed over stations, as `vodmesh status` and the status page total them
/// (serialized as the `totals` of their JSON).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EngineTotals {
    /// Engines, up or not.
    pub engines: u64,
    /// Engines up.
    #[serde(rename = "engines_up")]
    pub up: u64,
    /// Streams being served.
    pub streams: u64,
    /// Streams the engines serve at most.
    pub max_streams: u64,
    /// Bytes stored.
    pub used: u64,
    /// Bytes the bounded engines may store (unbounded ones count 0).
    pub capacity: u64,
    /// Bytes stored by the bounded engines: what `capacity` is the limit of.
    #[serde(default)]
    pub bounded_used: u64,
    /// Engines bounded only by their disks (`--capacity 0`), left out of `capacity`.
    #[serde(default)]
    pub unbounded: u64,
}

impl EngineTotals {
    /// The sums over every engine of `stations`.
    pub fn of<'a>(stations: impl IntoIterator<Item = &'a StationRecord>) -> Self {
        let mut t = Self::default();
        for e in stations.into_iter().flat_map(|s| &s.engines) {
            t.engines += 1;
            t.up += u64::from(e.up);
            t.streams += u64::from(e.streams);
            t.max_streams += u64::from(e.max_streams);
            t.used = t.used.saturating_add(e.used);
            t.capacity = t.capacity.saturating_add(e.capacity);
            if e.capacity == 0 {
                t.unbounded += 1;
            } else {
                t.bounded_used = t.bounded_used.saturating_add(e.used);
            }
        }
        t
    }
}

/// One disk (segment directory) of an engine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskUsage {
    /// The segment directory (its last characters, when long).
    pub path: String,
    /// Bytes of segments stored on it.
    pub used: u64,
    /// Bytes it may hold (0: bounded only by the disk).
    pub capacity: u64,
    /// Bytes reserved by writes in progress (absent in records of older stations).
    #[serde(default)]
    pub reserved: u64,
    /// Bytes of stored segments that eviction may free: held by another station too, and not
    /// pinned (absent in records of older stations).
    #[serde(default)]
    pub evictable: u64,
}

/// Roles a station plays besides storing and streaming.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roles {
    /// Holds every ingested program and never evicts it.
    pub home: bool,
    /// Runs the content manager (catalog, publish schedule).
    pub content_manager: bool,
    /// Runs the authentication server.
    pub auth: bool,
}

/// A station's running totals since it started, carried in its record for trends (the
/// status page's sparklines): differences between two records are what happened between
/// them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Bytes streamed to consoles.
    pub bytes_out: u64,
    /// Segments copied in from other engines.
    pub copies: u64,
    /// Segments asked of the station that it did not hold.
    pub misses: u64,
}

/// What a director says about its station.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StationRecord {
    /// The director's peer id: the station's name.
    pub director: PeerId,
    /// Where other hosts reach the director, the best first (what "the station's address"
    /// means to consoles and tools): announced addresses (`--announce`, NAT), then where it
    /// listens, loopback last.
    pub addrs: Vec<Multiaddr>,
    /// The station's engines.
    pub engines: Vec<EngineInfo>,
    /// Region name, if configured.
    pub region: Option<String>,
    /// Latitude and longitude, if configured.
    pub coords: Option<(f64, f64)>,
    /// Advertised link bandwidth in Mbit/s.
    pub bandwidth_mbps: u32,
    /// Roles this station plays.
    pub roles: Roles,
    /// The issuer key this station's auth server signs tokens with (`ed25519:<base58>`, as `--trust`
    /// takes it), when it is one.
    pub issuer: Option<String>,
    /// When this record was signed (ms since the epoch).
    pub issued_ms: u64,
    /// When it stops being valid (ms since the epoch).
    pub expires_ms: u64,
    /// Its running totals as it signed the record (absent from records of earlier releases).
    #[serde(default)]
    pub counters: Counters,
    /// Its station certificate ([`crate::member`]): what makes it a member of the swarm, and
    /// the roles it was granted. Absent until the station has one.
    #[serde(default)]
    pub certificate: Option<serde_bytes::ByteBuf>,
    /// On an auth station's record: the stations whose membership its issuer revoked
    /// (`vodmesh station revoke`), at most [`MAX_REVOKED`], which every director honours.
    #[serde(default)]
    pub revoked: Vec<PeerId>,
    /// Where its director answers standard players over HTTP (`vodmesh-node --http`: HLS
    /// playlists, and redirects to its engines), when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<SocketAddr>,
    /// Whether its director serves `http` over TLS (`--tls-cert`): its URLs are `https://`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub https: bool,
}

/// Most revocations an auth station's record lists (about 40 bytes each).
pub const MAX_REVOKED: usize = 1024;

/// Why a station record was refused.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Signature or encoding.
    #[error(transparent)]
    Signed(#[from] SignedError),
    /// Signed by a key other than the director it names.
    #[error("station record for {claimed} signed by {signer}")]
    WrongSigner {
        /// The director the record names.
        claimed: PeerId,
        /// Who signed it.
        signer: PeerId,
    },
    /// Past its expiry.
    #[error("station record expired")]
    Expired,
}

impl StationRecord {
    /// Signs this record with the director's key.
    pub fn sign(&self, key: &Keypair) -> Signed {
        Signed::sign(DOMAIN, self, key)
    }

    /// Checks a signed record: signature, that the signer is the director it names, and that
    /// it has not expired at `now_ms`.
    // Two peer ids make the error 160 bytes; records are verified a few times a minute, so the
    // copy costs nothing worth boxing for.
    #[allow(clippy::result_large_err)]
    pub fn verify(signed: &Signed, now_ms: u64) -> Result<Self, RecordError> {
        let (signer, rec): (PeerId, StationRecord) = signed.verify(DOMAIN, MAX_RECORD)?;
        if signer != rec.director {
            return Err(RecordError::WrongSigner {
                claimed: rec.director,
                signer,
            });
        }
        if rec.expires_ms <= now_ms {
            return Err(RecordError::Expired);
        }
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(director: PeerId, expires_ms: u64) -> StationRecord {
        StationRecord {
            director,
            addrs: vec!["/ip4/127.0.0.1/tcp/4001".parse().unwrap()],
            engines: vec![EngineInfo {
                peer_id: PeerId::random(),
                addrs: vec!["/ip4/127.0.0.1/udp/4002/quic-v1".parse().unwrap()],
                streams: 1,
                max_streams: 64,
                used: 10,
                capacity: 0,
                up: true,
                disks: vec![DiskUsage {
                    path: "/srv/disk0".into(),
                    used: 10,
                    capacity: 0,
                    reserved: 4,
                    evictable: 2,
                }],
                http: None,
                https: false,
                bulk: None,
            }],
            region: Some("eu".into()),
            coords: Some((52.5, 13.4)),
            bandwidth_mbps: 1000,
            roles: Roles::default(),
            issuer: None,
            issued_ms: 1,
            expires_ms,
            counters: Default::default(),
            certificate: None,
            revoked: vec![],
            http: None,
            https: false,
        }
    }

    #[test]
    fn free_room_is_capacity_less_used_and_reserved_plus_evictable_for_copies() {
        let mut e = record(PeerId::random(), 1).engines.remove(0);
        assert_eq!((e.free(), e.room_for_copies()), (None, None));
        e.capacity = 100;
        assert_eq!((e.free(), e.room_for_copies()), (Some(86), Some(88)));
        e.capacity = 12;
        assert_eq!((e.free(), e.room_for_copies()), (Some(0), Some(2)));
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(33_554_432), "33.6 MB");
    }

    #[test]
    fn round_trip_and_wrong_signer() {
        let key = Keypair::generate_ed25519();
        let rec = record(key.public().to_peer_id(), 1000);
        let s = rec.sign(&key);
        assert_eq!(StationRecord::verify(&s, 10).unwrap(), rec);
        assert!(matches!(
            StationRecord::verify(&s, 1000),
            Err(RecordError::Expired)
        ));
        let other = Keypair::generate_ed25519();
        let forged = rec.sign(&other);
        assert!(matches!(
            StationRecord::verify(&forged, 10),
            Err(RecordError::WrongSigner { .. })
        ));
    }
}
