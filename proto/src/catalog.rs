//! The catalog record: what the content manager tells the swarm about one program.
//!
//! Stored in the registry under `catalog/<program id>`, signed by the content manager that
//! ingested the program. A program stays inactive (listed to admins, never streamed) until its
//! state is `Published` and its publish time has passed.

use libp2p::PeerId;
use libp2p::identity::Keypair;
use serde::{Deserialize, Serialize};

use crate::ids::{ProgramId, SegmentHash};
use crate::signed::{Signed, SignedError};

/// Domain separator for catalog signatures.
pub const DOMAIN: &str = "vodmesh/catalog/1";
/// The largest catalog record accepted.
pub const MAX_RECORD: usize = 16 * 1024;

/// Whether a program may be streamed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProgramState {
    /// Ingested and distributed, but not streamed to subscribers.
    Inactive,
    /// Streamed to entitled subscribers from `publish_at_ms` on.
    Published,
}

impl std::fmt::Display for ProgramState {
    /// `inactive` or `published`, as every listing shows it (padding honoured).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Self::Inactive => "inactive",
            Self::Published => "published",
        })
    }
}

/// A program's entry in the swarm's catalog.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CatalogRecord {
    /// The program.
    pub program: ProgramId,
    /// Its title, as `vodmesh programs` lists it.
    pub title: String,
    /// BLAKE3 of the signed manifest.
    pub manifest_hash: SegmentHash,
    /// Inactive or published.
    pub state: ProgramState,
    /// When a published program becomes playable (ms since the epoch).
    pub publish_at_ms: u64,
    /// How many stations should hold a copy.
    pub replicas: u32,
    /// The content manager that signed this record.
    pub content_manager: PeerId,
    /// The home station's director.
    pub home: PeerId,
    /// When this version of the record was signed.
    pub issued_ms: u64,
}

/// Why a catalog record was refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The envelope did not verify.
    #[error(transparent)]
    Signed(#[from] SignedError),
    /// The record names a content manager other than its signer.
    #[error("catalog record for {claimed} signed by {signer}")]
    WrongSigner {
        /// The content manager named in the record.
        claimed: PeerId,
        /// The key that signed it.
        signer: PeerId,
    },
}

impl CatalogRecord {
    /// Signs the record with the content manager's key.
    pub fn sign(&self, key: &Keypair) -> Signed {
        Signed::sign(DOMAIN, self, key)
    }

    /// Verifies signature, size and signer.
    // Two peer ids make the error large; catalog records are verified rarely, so the copy
    // costs nothing worth boxing for.
    #[allow(clippy::result_large_err)]
    pub fn verify(signed: &Signed) -> Result<Self, CatalogError> {
        let (signer, rec): (PeerId, CatalogRecord) = signed.verify(DOMAIN, MAX_RECORD)?;
        if signer != rec.content_manager {
            return Err(CatalogError::WrongSigner {
                claimed: rec.content_manager,
                signer,
            });
        }
        Ok(rec)
    }

    /// Whether subscribers may play the program at `now_ms`.
    pub fn playable(&self, now_ms: u64) -> bool {
        now_ms >= self.playable_from()
    }

    /// From when subscribers may play the program (ms since the epoch): its publish time once
    /// published, never (`u64::MAX`) while inactive.
    pub fn playable_from(&self) -> u64 {
        match self.state {
            ProgramState::Published => self.publish_at_ms,
            ProgramState::Inactive => u64::MAX,
        }
    }
}
