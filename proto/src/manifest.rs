//! A program's manifest: its segments in order, each with size, media duration and BLAKE3 hash.
//!
//! The content part ([`ManifestContent`]) defines the program: its id is the BLAKE3 hash of
//! the content's CBOR encoding, so two ingests of the same bytes with the same title are the
//! same program. The content manager signs the whole [`Manifest`]; every engine and console
//! verifies segment bytes against the hashes in it before using them.

use libp2p::PeerId;
use libp2p::identity::Keypair;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::ids::{ProgramId, SegmentHash, SegmentId, SegmentIndex};
use crate::signed::{Signed, SignedError};

/// Domain separator for manifest signatures.
pub const DOMAIN: &str = "vodmesh/manifest/1";
/// The largest manifest accepted (about 50 000 segments).
pub const MAX_MANIFEST: usize = 4 * 1024 * 1024;
/// The most segments a program may have.
pub const MAX_SEGMENTS: usize = 50_000;
/// The largest segment accepted anywhere.
pub const MAX_SEGMENT_SIZE: u64 = 256 * 1024 * 1024;

/// The content type of fMP4 (CMAF) HLS programs.
pub const FMP4: &str = "video/mp4";

/// One segment of a program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentEntry {
    /// Position in the program, from 0.
    pub index: SegmentIndex,
    /// Media duration in milliseconds.
    pub duration_ms: u32,
    /// Bytes.
    pub size: u64,
    /// BLAKE3 of the bytes.
    pub hash: SegmentHash,
}

/// What defines a program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestContent {
    /// The title.
    pub title: String,
    /// MIME type of the media (`video/mp2t`, `application/octet-stream`, ...).
    pub content_type: String,
    /// Total media duration in milliseconds.
    pub duration_ms: u64,
    /// The segments, in order, indexes 0..n.
    pub segments: Vec<SegmentEntry>,
}

/// Why a manifest is not acceptable.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The envelope did not verify.
    #[error(transparent)]
    Signed(#[from] SignedError),
    /// The manifest names another signer.
    #[error("manifest signed by {signer}, not by its content manager {claimed}")]
    WrongSigner {
        /// Named in the manifest.
        claimed: Box<PeerId>,
        /// The actual signer.
        signer: Box<PeerId>,
    },
    /// The program id is not the hash of the content.
    #[error("manifest program id does not match its content")]
    WrongId,
    /// The content is not well formed.
    #[error("malformed manifest: {0}")]
    Malformed(String),
}

impl ManifestContent {
    /// The program id: BLAKE3 of the content's CBOR encoding.
    pub fn program_id(&self) -> ProgramId {
        ProgramId(*blake3::hash(&codec::encode(self)).as_bytes())
    }

    /// Total bytes of all segments.
    pub fn total_size(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }

    /// The segment with `index`.
    pub fn segment(&self, index: impl Into<SegmentIndex>) -> Option<&SegmentEntry> {
        let index = index.into();
        (self.segments.get(index.0 as usize)).filter(|s| s.index == index)
    }

    /// Checks the structure: a title, 1..=MAX_SEGMENTS segments indexed 0..n, sizes in range.
    pub fn check(&self) -> Result<(), ManifestError> {
        let bad = |m: &str| Err(ManifestError::Malformed(m.to_string()));
        if self.title.trim().is_empty() || self.title.len() > 1024 {
            return bad("title must be 1 to 1024 bytes");
        }
        if self.segments.is_empty() || self.segments.len() > MAX_SEGMENTS {
            return bad("a program has 1 to 50000 segments");
        }
        for (i, s) in self.segments.iter().enumerate() {
            if s.index.0 as usize != i {
                return bad("segments must be indexed 0, 1, 2, ... in order");
            }
            if s.size == 0 || s.size > MAX_SEGMENT_SIZE {
                return bad("segment sizes must be 1 byte to 256 MiB");
            }
        }
        Ok(())
    }

    /// Whether this is fMP4 HLS: segment 0 is the initialization segment (`#EXT-X-MAP`,
    /// duration 0), which a player needs before any media segment.
    pub fn has_init_segment(&self) -> bool {
        self.content_type == FMP4 && self.segments.first().is_some_and(|s| s.duration_ms == 0)
    }

    /// The index of the segment playing at media time `ms`.
    pub fn segment_at(&self, ms: u64) -> SegmentIndex {
        let mut t = 0u64;
        for s in &self.segments {
            t += u64::from(s.duration_ms);
            if ms < t {
                return s.index;
            }
        }
        self.segments.last().map(|s| s.index).unwrap_or_default()
    }
}

/// A program's signed manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The program id (hash of `content`).
    pub program: ProgramId,
    /// The program's content.
    pub content: ManifestContent,
    /// The content manager that signed it.
    pub content_manager: PeerId,
    /// When it was signed.
    pub issued_ms: u64,
}

impl Manifest {
    /// A manifest for `content`, to be signed by `content_manager`.
    pub fn new(content: ManifestContent, content_manager: PeerId, issued_ms: u64) -> Self {
        Self {
            program: content.program_id(),
            content,
            content_manager,
            issued_ms,
        }
    }

    /// Signs with the content manager's key.
    pub fn sign(&self, key: &Keypair) -> Signed {
        Signed::sign(DOMAIN, self, key)
    }

    /// Verifies signature, signer, id and structure.
    pub fn verify(signed: &Signed) -> Result<Self, ManifestError> {
        let (signer, m): (PeerId, Manifest) = signed.verify(DOMAIN, MAX_MANIFEST)?;
        if signer != m.content_manager {
            return Err(ManifestError::WrongSigner {
                claimed: Box::new(m.content_manager),
                signer: Box::new(signer),
            });
        }
        if m.content.program_id() != m.program {
            return Err(ManifestError::WrongId);
        }
        m.content.check()?;
        Ok(m)
    }

    /// The id of segment `index` of this program.
    pub fn segment_id(&self, index: impl Into<SegmentIndex>) -> SegmentId {
        SegmentId::new(self.program, index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content() -> ManifestContent {
        ManifestContent {
            title: "t".into(),
            content_type: "application/octet-stream".into(),
            duration_ms: 8000,
            segments: (0..2)
                .map(|i| SegmentEntry {
                    index: SegmentIndex(i),
                    duration_ms: 4000,
                    size: 10,
                    hash: SegmentHash::of(&[i as u8]),
                })
                .collect(),
        }
    }

    #[test]
    fn sign_verify_and_tamper() {
        let key = Keypair::generate_ed25519();
        let m = Manifest::new(content(), key.public().to_peer_id(), 1);
        let s = m.sign(&key);
        assert_eq!(Manifest::verify(&s).unwrap(), m);
        let mut other = m.clone();
        other.content.title = "u".into();
        assert!(matches!(
            Manifest::verify(&other.sign(&key)),
            Err(ManifestError::WrongId)
        ));
        let stranger = Keypair::generate_ed25519();
        assert!(Manifest::verify(&m.sign(&stranger)).is_err());
        assert_eq!(m.content.segment_at(0), SegmentIndex(0));
        assert_eq!(m.content.segment_at(4000), SegmentIndex(1));
        assert_eq!(m.content.segment_at(99_999), SegmentIndex(1));
    }

    #[test]
    fn malformed_content_is_refused() {
        let mut c = content();
        c.segments[1].index = SegmentIndex(5);
        assert!(c.check().is_err());
        let mut c = content();
        c.segments.clear();
        assert!(c.check().is_err());
        let mut c = content();
        c.title = " ".into();
        assert!(c.check().is_err());
    }
}
