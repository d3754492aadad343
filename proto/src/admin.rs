//! Proof of admin rights for one operation: a short-lived claim signed by an admin key.
//!
//! Admin operations (ingest, publish) are sent over a connection whose transport identity may
//! be anything (the tool uses a fresh one: a peer cannot dial a director under the director's
//! own peer id, and the station's own key is its first admin). The request carries an
//! [`AdminClaim`] signed with the admin's key, naming the operation, a hash of its subject, the
//! director it is meant for and when it was made; the director accepts it only from a key in
//! its admin list, for itself, within [`MAX_AGE_MS`].

use libp2p::PeerId;
use libp2p::identity::Keypair;
use serde::{Deserialize, Serialize};

use crate::signed::Signed;

/// Domain separator.
pub const DOMAIN: &str = "vodmesh/admin/1";
/// How old (or how far in the future) a claim may be.
pub const MAX_AGE_MS: u64 = 120_000;

/// What an admin signs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminClaim {
    /// The operation (`ingest`, `publish`, ...).
    pub op: String,
    /// BLAKE3 of the operation's subject (e.g. the program id).
    pub subject: [u8; 32],
    /// The director the claim is for.
    pub director: PeerId,
    /// When it was made.
    pub issued_ms: u64,
}

/// Why a claim was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdminError {
    /// Not signed by an admin of this station.
    #[error("not an admin of this station")]
    NotAdmin,
    /// Bad signature or encoding.
    #[error("malformed admin proof")]
    Malformed,
    /// For another director, operation or subject.
    #[error("admin proof is for another operation")]
    Mismatch,
    /// Too old or from the future.
    #[error("admin proof expired (check the clock)")]
    Stale,
}

/// Signs a claim for `op` on `subject` at `director`.
pub fn prove(key: &Keypair, op: &str, subject: &[u8], director: PeerId, now_ms: u64) -> Signed {
    let claim = AdminClaim {
        op: op.to_string(),
        subject: *blake3::hash(subject).as_bytes(),
        director,
        issued_ms: now_ms,
    };
    Signed::sign(DOMAIN, &claim, key)
}

/// Checks a claim; returns the admin's peer id.
pub fn check(
    proof: &Signed,
    op: &str,
    subject: &[u8],
    director: PeerId,
    admins: &[PeerId],
    now_ms: u64,
) -> Result<PeerId, AdminError> {
    let (signer, claim): (PeerId, AdminClaim) = proof
        .verify(DOMAIN, 4096)
        .map_err(|_| AdminError::Malformed)?;
    if !admins.contains(&signer) {
        return Err(AdminError::NotAdmin);
    }
    if claim.op != op
        || claim.director != director
        || claim.subject != *blake3::hash(subject).as_bytes()
    {
        return Err(AdminError::Mismatch);
    }
    if claim.issued_ms.abs_diff(now_ms) > MAX_AGE_MS {
        return Err(AdminError::Stale);
    }
    Ok(signer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_proofs() {
        let admin = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let director = PeerId::random();
        let admins = [admin.public().to_peer_id()];
        let p = prove(&admin, "ingest", b"x", director, 1_000_000);
        assert!(check(&p, "ingest", b"x", director, &admins, 1_000_000).is_ok());
        assert_eq!(
            check(&p, "publish", b"x", director, &admins, 1_000_000),
            Err(AdminError::Mismatch)
        );
        assert_eq!(
            check(&p, "ingest", b"y", director, &admins, 1_000_000),
            Err(AdminError::Mismatch)
        );
        assert_eq!(
            check(&p, "ingest", b"x", PeerId::random(), &admins, 1_000_000),
            Err(AdminError::Mismatch)
        );
        assert_eq!(
            check(&p, "ingest", b"x", director, &admins, 9_000_000),
            Err(AdminError::Stale)
        );
        let q = prove(&other, "ingest", b"x", director, 1_000_000);
        assert_eq!(
            check(&q, "ingest", b"x", director, &admins, 1_000_000),
            Err(AdminError::NotAdmin)
        );
    }
}
