//! Proof of admin rights for one operation: a short-lived claim signed by an admin key.
//!
//! Admin operations (ingest and publish at a director, adding a user and enrolling a station
//! at the auth server) are sent over a connection whose transport identity may be anything:
//! the tool uses a fresh one, since a peer cannot dial a director under the director's own
//! peer id, and the station's own key is its first admin. The request carries an
//! [`AdminClaim`] signed with the admin's key, naming the operation, a hash of its subject, the
//! director it is meant for and when it was made; the receiver accepts it only for that
//! operation and subject, addressed to itself, within [`MAX_AGE_MS`] ([`signer`]), and then
//! only from an admin ([`check`], or the auth server's own rules). One claim, one check, for
//! both: a claim made for one director, operation or subject is worth nothing anywhere else.
//! The auth server also binds it to the connection it comes on ([`AdminClaim::via`],
//! [`acting_admin`]), so that it is worth nothing on another.
//!
//! Tools of earlier releases proved admin rights to the auth server with a delegation to
//! their connection's peer instead; [`acting_admin`] still accepts those, and nothing makes
//! them any more.

use libp2p::PeerId;
use libp2p::identity::Keypair;
use serde::{Deserialize, Serialize};

use crate::signed::Signed;

/// Domain separator.
pub const DOMAIN: &str = "vodmesh/admin/1";
/// How old (or how far in the future) a claim may be.
pub const MAX_AGE_MS: u64 = 120_000;
/// Largest claim accepted, in bytes.
pub const MAX_CLAIM: usize = 4096;

/// What an admin signs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminClaim {
    /// The operation (`ingest`, `publish`, `add_user`, `enroll_token`, ...).
    pub op: String,
    /// BLAKE3 of the operation's subject (e.g. the program id).
    pub subject: [u8; 32],
    /// The director the claim is for (at the auth server: the auth station's director).
    pub director: PeerId,
    /// When it was made.
    pub issued_ms: u64,
    /// The peer of the only connection it may come on, if it is bound to one (absent from
    /// the claims of earlier releases, and from those a director checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<PeerId>,
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
    /// For another director, operation, subject or connection.
    #[error("admin proof is for another operation")]
    Mismatch,
    /// Too old or from the future.
    #[error("admin proof expired (check the clock)")]
    Stale,
}

/// Signs a claim for `op` on `subject` at `director`.
pub fn prove(key: &Keypair, op: &str, subject: &[u8], director: PeerId, now_ms: u64) -> Signed {
    AdminClaim::new(op, subject, director, now_ms).sign(key)
}

impl AdminClaim {
    /// A claim for `op` on `subject` at `director`, made at `now_ms`, bound to no connection.
    pub fn new(op: &str, subject: &[u8], director: PeerId, now_ms: u64) -> Self {
        Self {
            op: op.to_string(),
            subject: *blake3::hash(subject).as_bytes(),
            director,
            issued_ms: now_ms,
            via: None,
        }
    }

    /// The same claim, valid only on a connection from `peer`.
    pub fn via(self, peer: PeerId) -> Self {
        Self {
            via: Some(peer),
            ..self
        }
    }

    /// Signs it with the admin's `key`.
    pub fn sign(&self, key: &Keypair) -> Signed {
        Signed::sign(DOMAIN, self, key)
    }
}

/// Checks that `proof` is a fresh claim for `op` on `subject` at `director`, bound to no
/// connection; returns its signer, the admin the request acts for (whether that key is an
/// admin is the caller's to decide).
pub fn signer(
    proof: &Signed,
    op: &str,
    subject: &[u8],
    director: PeerId,
    now_ms: u64,
) -> Result<PeerId, AdminError> {
    let (signer, claim) = open(proof)?;
    claim.is_for(op, subject, director, None, now_ms)?;
    Ok(signer)
}

/// Checks a claim as [`signer`] does, and that its signer is one of `admins`; returns the
/// admin's peer id.
pub fn check(
    proof: &Signed,
    op: &str,
    subject: &[u8],
    director: PeerId,
    admins: &[PeerId],
    now_ms: u64,
) -> Result<PeerId, AdminError> {
    let (signer, claim) = open(proof)?;
    // The signer first: a stranger learns nothing about what a valid claim would say.
    if !admins.contains(&signer) {
        return Err(AdminError::NotAdmin);
    }
    claim.is_for(op, subject, director, None, now_ms)?;
    Ok(signer)
}

fn open(proof: &Signed) -> Result<(PeerId, AdminClaim), AdminError> {
    proof
        .verify(DOMAIN, MAX_CLAIM)
        .map_err(|_| AdminError::Malformed)
}

impl AdminClaim {
    /// Whether the claim is for `op` on `subject` at `director`, arriving from `remote` (a
    /// claim bound to a connection is accepted only where the connection is known), and fresh
    /// at `now_ms`.
    fn is_for(
        &self,
        op: &str,
        subject: &[u8],
        director: PeerId,
        remote: Option<&PeerId>,
        now_ms: u64,
    ) -> Result<(), AdminError> {
        if self.op != op
            || self.director != director
            || self.subject != *blake3::hash(subject).as_bytes()
            || self.via.is_some_and(|via| Some(&via) != remote)
        {
            return Err(AdminError::Mismatch);
        }
        fresh(self.issued_ms, now_ms)
    }
}

/// The admin a request arriving from `remote` acts for: the signer of a claim for `op` on
/// `subject` at `director`, bound to `remote`'s connection; or, from a tool of an earlier
/// release, of a delegation to `remote` made within [`MAX_AGE_MS`].
pub fn acting_admin(
    proof: &Signed,
    (op, subject): (&str, &[u8]),
    director: PeerId,
    remote: &PeerId,
    now_ms: u64,
) -> Result<PeerId, AdminError> {
    let Ok((signer, old)) = proof.verify::<Delegation>(DELEGATION_DOMAIN, MAX_CLAIM) else {
        let (signer, claim) = open(proof)?;
        if claim.via.is_none() {
            return Err(AdminError::Mismatch);
        }
        claim.is_for(op, subject, director, Some(remote), now_ms)?;
        return Ok(signer);
    };
    if old.to != *remote {
        return Err(AdminError::Mismatch);
    }
    fresh(old.signed_ms, now_ms)?;
    Ok(signer)
}

fn fresh(issued_ms: u64, now_ms: u64) -> Result<(), AdminError> {
    if issued_ms.abs_diff(now_ms) > MAX_AGE_MS {
        return Err(AdminError::Stale);
    }
    Ok(())
}

/// Signature domain of the delegations of earlier releases.
const DELEGATION_DOMAIN: &str = "vodmesh/auth-delegation/1";

/// What a tool of an earlier release signed for the auth server: "the peer `to` speaks for
/// me, as of `signed_ms`". Only decoded, never made.
#[derive(Serialize, Deserialize)]
struct Delegation {
    to: PeerId,
    signed_ms: u64,
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
        // `signer` names whoever signed a valid claim; the admin list is the caller's.
        assert_eq!(
            signer(&q, "ingest", b"x", director, 1_000_000),
            Ok(other.public().to_peer_id())
        );
    }

    #[test]
    fn a_forged_or_foreign_envelope_is_malformed() {
        let admin = Keypair::generate_ed25519();
        let director = PeerId::random();
        let mut forged = prove(&admin, "publish", b"p", director, 5);
        forged.payload = serde_bytes::ByteBuf::from(crate::codec::encode(&AdminClaim {
            op: "publish".into(),
            subject: *blake3::hash(b"other").as_bytes(),
            director,
            issued_ms: 5,
            via: None,
        }));
        assert_eq!(
            signer(&forged, "publish", b"other", director, 5),
            Err(AdminError::Malformed)
        );
        // A station record (another domain) is no claim.
        let record = Signed::sign("vodmesh/station/1", &1u32, &admin);
        assert_eq!(
            signer(&record, "publish", b"p", director, 5),
            Err(AdminError::Malformed)
        );
    }

    #[test]
    fn the_delegations_of_earlier_tools_still_act_for_their_signer_on_their_connection() {
        let admin = Keypair::generate_ed25519();
        let (tool, other, director) = (PeerId::random(), PeerId::random(), PeerId::random());
        let old = Signed::sign(
            DELEGATION_DOMAIN,
            &Delegation {
                to: tool,
                signed_ms: 1_000_000,
            },
            &admin,
        );
        let op = ("add_user", b"alice".as_slice());
        assert_eq!(
            acting_admin(&old, op, director, &tool, 1_030_000),
            Ok(admin.public().to_peer_id())
        );
        assert_eq!(
            acting_admin(&old, op, director, &other, 1_000_000),
            Err(AdminError::Mismatch)
        );
        assert_eq!(
            acting_admin(&old, op, director, &tool, 1_200_001),
            Err(AdminError::Stale)
        );
    }

    #[test]
    fn a_claim_bound_to_a_connection_is_worth_nothing_on_another_or_elsewhere() {
        let admin = Keypair::generate_ed25519();
        let (tool, other, director) = (PeerId::random(), PeerId::random(), PeerId::random());
        let op = ("add_user", b"alice".as_slice());
        let bound = AdminClaim::new(op.0, op.1, director, 1_000_000)
            .via(tool)
            .sign(&admin);
        assert_eq!(
            acting_admin(&bound, op, director, &tool, 1_000_000),
            Ok(admin.public().to_peer_id())
        );
        // Replayed from another peer, for another user, at another director, too late.
        assert_eq!(
            acting_admin(&bound, op, director, &other, 1_000_000),
            Err(AdminError::Mismatch)
        );
        assert_eq!(
            acting_admin(&bound, ("add_user", b"bob"), director, &tool, 1_000_000),
            Err(AdminError::Mismatch)
        );
        assert_eq!(
            acting_admin(&bound, op, PeerId::random(), &tool, 1_000_000),
            Err(AdminError::Mismatch)
        );
        assert_eq!(
            acting_admin(&bound, op, director, &tool, 1_200_001),
            Err(AdminError::Stale)
        );
        // Where connections are not checked, a bound claim is refused; where they are, an
        // unbound one is.
        assert_eq!(
            signer(&bound, op.0, op.1, director, 1_000_000),
            Err(AdminError::Mismatch)
        );
        let unbound = prove(&admin, op.0, op.1, director, 1_000_000);
        assert_eq!(
            acting_admin(&unbound, op, director, &tool, 1_000_000),
            Err(AdminError::Mismatch)
        );
    }

    #[test]
    fn an_unbound_claim_encodes_as_before() {
        let claim = AdminClaim::new("ingest", b"x", PeerId::random(), 7);
        let bytes = crate::codec::encode(&claim);
        assert!(!bytes.windows(3).any(|w| w == b"via"));
        let back: AdminClaim =
            crate::codec::decode(&bytes, MAX_CLAIM).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, claim);
    }
}
