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

/// The most renditions a program may have.
pub const MAX_RENDITIONS: usize = 16;

/// One rendition of a program encoded at several bitrates (an adaptive-bitrate ladder): its
/// segments are `first..first + count` of the program's, aligned with every other
/// rendition's (as many, of the same durations, each starting at a keyframe), so that a player
/// may take segment `i` of any rendition after segment `i - 1` of any other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rendition {
    /// Its name, e.g. `720p`: 1 to 32 of `A-Z a-z 0-9 . _ -`.
    pub name: String,
    /// Peak bits per second over its segments (HLS `BANDWIDTH`).
    pub bandwidth: u64,
    /// Picture width in pixels (0: no video).
    pub width: u32,
    /// Picture height in pixels (0: no video).
    pub height: u32,
    /// Its codecs as RFC 6381 names (HLS `CODECS`), e.g. `avc1.64001f,mp4a.40.2`; may be empty.
    pub codecs: String,
    /// Its first segment in the program.
    pub first: SegmentIndex,
    /// How many segments it has (its init segment included, for fMP4).
    pub count: u32,
}

impl Rendition {
    /// The program's index of this rendition's segment `i` (`i` counted from its first).
    pub fn segment(&self, i: u32) -> Option<SegmentIndex> {
        (i < self.count).then(|| SegmentIndex(self.first.0 + i))
    }
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
    /// For a program encoded at several bitrates, its renditions, which divide `segments`
    /// among them in order; empty for a program of one rendition (which then encodes, and
    /// hashes to its id, as before renditions existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub renditions: Vec<Rendition>,
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

/// Whether `title` may name a new program: 1 to 1024 bytes, not blank, no control character
/// (an ESC in a title would drive every terminal that lists it), and not a program id (a
/// console given it would play that id). The reason, when not.
pub fn title_refusal(title: &str) -> Option<&'static str> {
    if title.trim().is_empty() || title.len() > 1024 {
        return Some("a title is 1 to 1024 bytes, not blank");
    }
    if title.chars().any(char::is_control) {
        return Some("a title holds no control character (newline, tab, escape, ...)");
    }
    if title.parse::<ProgramId>().is_ok() {
        return Some("a title cannot be a program id: a console given it would play that id");
    }
    None
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
        self.check_renditions()
    }

    /// Checks the renditions, when there are any: at most [`MAX_RENDITIONS`], well named,
    /// dividing the segments among them in order, each as long as the first and with the same
    /// durations position by position.
    fn check_renditions(&self) -> Result<(), ManifestError> {
        let bad = |m: &str| Err(ManifestError::Malformed(m.to_string()));
        let Some(first) = self.renditions.first() else {
            return Ok(());
        };
        if self.renditions.len() > MAX_RENDITIONS {
            return bad("a program has at most 16 renditions");
        }
        let mut next = 0u64;
        for (n, r) in self.renditions.iter().enumerate() {
            let name_ok = (1..=32).contains(&r.name.len())
                && (r.name.bytes()).all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !name_ok {
                return bad("rendition names are 1 to 32 of A-Z a-z 0-9 . _ -");
            }
            if self.renditions[..n].iter().any(|o| o.name == r.name) {
                return bad("rendition names must differ");
            }
            if r.codecs.len() > 128 || !(r.codecs.bytes()).all(|b| b.is_ascii_graphic()) {
                return bad("rendition codecs must be up to 128 printable characters");
            }
            if u64::from(r.first.0) != next || r.count == 0 || r.count != first.count {
                return bad("renditions must divide the segments in order, as many each");
            }
            next += u64::from(r.count);
        }
        if next != self.segments.len() as u64 {
            return bad("renditions must divide the segments in order, as many each");
        }
        for i in 0..first.count {
            let duration = |r: &Rendition| {
                (r.segment(i).and_then(|at| self.segment(at))).map(|e| e.duration_ms)
            };
            let d = duration(first);
            if self.renditions.iter().any(|r| duration(r) != d) {
                return bad("renditions' segments must last the same, position by position");
            }
        }
        let one: u64 = (0..first.count)
            .filter_map(|i| first.segment(i).and_then(|at| self.segment(at)))
            .map(|e| u64::from(e.duration_ms))
            .sum();
        if self.duration_ms != one {
            return bad("a program's duration is that of one of its renditions");
        }
        Ok(())
    }

    /// The rendition named `name`.
    pub fn rendition(&self, name: &str) -> Option<&Rendition> {
        self.renditions.iter().find(|r| r.name == name)
    }

    /// Rendition `r` as a program of its own: its segments indexed from 0 (segment `i` of it
    /// is the program's `r.first + i`), no renditions. `None` for a rendition not of this
    /// program.
    pub fn rendition_content(&self, r: &Rendition) -> Option<ManifestContent> {
        let start = r.first.0 as usize;
        let end = start.checked_add(r.count as usize)?;
        let segments = (self.segments.get(start..end)?.iter())
            .zip(0u32..)
            .map(|(e, i)| SegmentEntry {
                index: SegmentIndex(i),
                ..*e
            })
            .collect::<Vec<_>>();
        Some(ManifestContent {
            title: self.title.clone(),
            content_type: self.content_type.clone(),
            duration_ms: segments.iter().map(|e| u64::from(e.duration_ms)).sum(),
            segments,
            renditions: Vec::new(),
        })
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
            renditions: Vec::new(),
        }
    }

    /// Three renditions of two 4 s segments each.
    fn ladder() -> ManifestContent {
        let mut c = content();
        c.segments = (0..6)
            .map(|i| SegmentEntry {
                index: SegmentIndex(i),
                duration_ms: 4000,
                size: 10 + u64::from(i),
                hash: SegmentHash::of(&[i as u8]),
            })
            .collect();
        c.renditions = ["720p", "480p", "240p"]
            .iter()
            .zip(0u32..)
            .map(|(name, n)| Rendition {
                name: (*name).into(),
                bandwidth: 1000 * u64::from(3 - n),
                width: 0,
                height: 0,
                codecs: "avc1.64001f,mp4a.40.2".into(),
                first: SegmentIndex(2 * n),
                count: 2,
            })
            .collect();
        c
    }

    #[test]
    fn a_program_without_renditions_encodes_as_before_they_existed() {
        // The CBOR of the content before `renditions` was added: the same map of four keys.
        #[derive(Serialize)]
        struct Before<'a> {
            title: &'a str,
            content_type: &'a str,
            duration_ms: u64,
            segments: &'a [SegmentEntry],
        }
        let c = content();
        let before = Before {
            title: &c.title,
            content_type: &c.content_type,
            duration_ms: c.duration_ms,
            segments: &c.segments,
        };
        assert_eq!(codec::encode(&c), codec::encode(&before));
        assert_ne!(c.program_id(), ladder().program_id());
    }

    #[test]
    fn a_ladder_divides_its_segments_and_each_rendition_plays_alone() {
        let c = ladder();
        c.check().unwrap();
        let low = c.rendition("240p").unwrap();
        assert_eq!(low.segment(1), Some(SegmentIndex(5)));
        assert_eq!(low.segment(2), None);
        let alone = c.rendition_content(low).unwrap();
        alone.check().unwrap();
        assert_eq!(alone.segments.len(), 2);
        assert_eq!(alone.segments[1].index, SegmentIndex(1));
        assert_eq!(alone.segments[1].hash, c.segments[5].hash);
        assert_eq!(alone.duration_ms, 8000);
        let decoded: ManifestContent = codec::decode(&codec::encode(&c), MAX_MANIFEST).unwrap();
        assert_eq!(decoded, c);
    }

    #[test]
    fn malformed_ladders_are_refused() {
        type Breaks = fn(&mut ManifestContent);
        let broken: Vec<(&str, Breaks)> = vec![
            ("a gap", |c| c.renditions[1].first = SegmentIndex(3)),
            ("unequal counts", |c| {
                c.renditions[2].count = 1;
            }),
            ("segments left over", |c| {
                c.renditions.pop();
            }),
            ("a duplicate name", |c| c.renditions[1].name = "720p".into()),
            ("a bad name", |c| c.renditions[0].name = "7 20p".into()),
            ("an empty name", |c| c.renditions[0].name.clear()),
            ("unaligned durations", |c| {
                c.segments[3].duration_ms = 3000;
            }),
            ("the sum of all renditions as duration", |c| {
                c.duration_ms = 24_000
            }),
            ("control characters in codecs", |c| {
                c.renditions[0].codecs = "avc1\n".into();
            }),
        ];
        for (what, breaks) in broken {
            let mut c = ladder();
            breaks(&mut c);
            assert!(c.check().is_err(), "{what} was accepted");
        }
        let mut c = ladder();
        c.renditions = (0..17)
            .map(|n| Rendition {
                name: format!("r{n}"),
                ..c.renditions[0].clone()
            })
            .collect();
        assert!(c.check().is_err(), "17 renditions were accepted");
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
