//! Typed identifiers.
//!
//! Every id is a newtype with `Display`, `FromStr`, serde, and `short()` for log fields, so a
//! program id is never confused with a segment hash or a peer id with a station id.

use std::fmt;
use std::str::FromStr;

use libp2p::PeerId;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An id string that did not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid {kind}: {reason}")]
pub struct ParseIdError {
    kind: &'static str,
    reason: String,
}

macro_rules! hash32 {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The first 8 hex digits, for log fields and progress lines.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }

            /// The raw 32 bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).map_err(|e| ParseIdError {
                    kind: $kind,
                    reason: e.to_string(),
                })?;
                Ok(Self(out))
            }
        }

        // Bytes on the wire (CBOR); the hex string every output shows in JSON and other
        // human-readable formats, as a `PeerId` is base58 there.
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.collect_str(self)
                } else {
                    s.serialize_bytes(&self.0)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let text = String::deserialize(d)?;
                    return text.parse().map_err(serde::de::Error::custom);
                }
                let bytes: serde_bytes::ByteBuf = serde_bytes::ByteBuf::deserialize(d)?;
                let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    serde::de::Error::invalid_length(bytes.len(), &"32 bytes")
                })?;
                Ok(Self(arr))
            }
        }
    };
}

hash32!(
    /// A program: the BLAKE3 hash of its manifest's content part.
    ProgramId,
    "program id"
);
hash32!(
    /// The BLAKE3 hash of a segment's bytes.
    SegmentHash,
    "segment hash"
);

impl SegmentHash {
    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }
}

impl From<blake3::Hash> for SegmentHash {
    fn from(h: blake3::Hash) -> Self {
        Self(*h.as_bytes())
    }
}

/// The position of a segment in its program, from 0.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct SegmentIndex(pub u32);

impl From<u32> for SegmentIndex {
    fn from(index: u32) -> Self {
        Self(index)
    }
}

impl SegmentIndex {
    /// The segment after this one.
    pub fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

impl fmt::Display for SegmentIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for SegmentIndex {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse()
            .map(Self)
            .map_err(|e: std::num::ParseIntError| ParseIdError {
                kind: "segment index",
                reason: e.to_string(),
            })
    }
}

/// One segment of one program: the unit of storage, location, copy and handoff.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SegmentId {
    /// The program.
    pub program: ProgramId,
    /// The segment's position in it.
    pub index: SegmentIndex,
}

impl SegmentId {
    /// Segment `index` of `program`.
    pub fn new(program: ProgramId, index: impl Into<SegmentIndex>) -> Self {
        Self {
            program,
            index: index.into(),
        }
    }

    /// `<program short>/<index>`, for log fields.
    pub fn short(&self) -> String {
        format!("{}/{}", self.program.short(), self.index)
    }
}

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.program, self.index)
    }
}

impl fmt::Debug for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SegmentId({})", self.short())
    }
}

impl FromStr for SegmentId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (p, i) = s.split_once('/').ok_or(ParseIdError {
            kind: "segment id",
            reason: "expected <program>/<index>".into(),
        })?;
        Ok(Self {
            program: p.parse()?,
            index: i.parse()?,
        })
    }
}

/// A media station, named by its director's peer id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StationId(pub PeerId);

impl StationId {
    /// The last 8 characters of the peer id, for log fields.
    pub fn short(&self) -> String {
        short_peer(&self.0)
    }
}

impl fmt::Display for StationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for StationId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Self).map_err(|e| ParseIdError {
            kind: "station id",
            reason: format!("{e}"),
        })
    }
}

/// The last 8 characters of a peer id: distinct enough in logs, short enough to read.
pub fn short_peer(p: &PeerId) -> String {
    let s = p.to_base58();
    s[s.len().saturating_sub(8)..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_strings_and_cbor() {
        let p = ProgramId(*blake3::hash(b"x").as_bytes());
        assert_eq!(p.to_string().parse::<ProgramId>().unwrap(), p);
        let s = SegmentId::new(p, 7);
        assert_eq!(s.to_string().parse::<SegmentId>().unwrap(), s);
        let bytes = crate::codec::encode(&s);
        assert_eq!(crate::codec::decode::<SegmentId>(&bytes, 1024).unwrap(), s);
        let st = StationId(PeerId::random());
        assert_eq!(st.to_string().parse::<StationId>().unwrap(), st);
        let bytes = crate::codec::encode(&st);
        assert_eq!(crate::codec::decode::<StationId>(&bytes, 1024).unwrap(), st);
    }

    #[test]
    fn bad_id_strings_are_errors() {
        assert!("zz".parse::<ProgramId>().is_err());
    }

    #[test]
    fn program_ids_are_hex_in_json_and_bytes_in_cbor() {
        let p = ProgramId(*blake3::hash(b"x").as_bytes());
        // JSON shows the hex id, and reads it back; CBOR keeps the 32 bytes.
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, format!("\"{p}\""));
        assert_eq!(serde_json::from_str::<ProgramId>(&json).unwrap(), p);
        assert!(serde_json::from_str::<ProgramId>("\"zz\"").is_err());
        let cbor = crate::codec::encode(&p);
        assert_eq!(cbor.len(), 34, "a 32-byte string: {cbor:?}");
        assert_eq!(crate::codec::decode::<ProgramId>(&cbor, 64).unwrap(), p);
        assert!("abc/1".parse::<SegmentId>().is_err());
        assert!("nope".parse::<StationId>().is_err());
        assert!("-1".parse::<SegmentIndex>().is_err());
    }

    #[test]
    fn a_hash_of_the_wrong_length_does_not_decode() {
        let bytes = crate::codec::encode(&serde_bytes::ByteBuf::from(vec![1u8; 31]));
        assert!(crate::codec::decode::<SegmentHash>(&bytes, 1024).is_err());
    }
}
