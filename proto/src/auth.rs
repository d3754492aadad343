//! `/vodmesh/auth/1`: what consoles, operators, stations and engines ask the auth server.
//!
//! One CBOR [`Request`] and one CBOR [`Response`] per stream (libp2p request-response with
//! [`crate::codec::CborCodec`] and [`LIMITS`]), answered by the director of the station that
//! runs the auth role (`vodmesh-node --auth`; its station record has `roles.auth` and
//! `issuer`). Every token the server signs is bound to the peer at the other end of the
//! connection the request came on, never to a peer id named in the request: a console logs in
//! with its own identity, an engine asks for its own engine token. The one exception is
//! [`Request::StationEngineToken`]: an enrolled station's director asks for the token of one
//! of the engines it enrolled, which it vouches for anyway (its station record lists them).
//!
//! - [`Request::Login`] / [`Request::AdminLogin`]: a subscriber's password for a console or an
//!   admin token.
//! - [`Request::AddUser`], [`Request::EnrollToken`]: admin operations; the caller is an admin
//!   peer or presents an admin token of its own. An operator tool connects with a throwaway
//!   identity and carries a [`Delegation`] signed by the admin's key: libp2p cannot dial a
//!   peer with that peer's own identity, and the auth station's identity is its first admin.
//! - [`Request::Enroll`]: a station's director presents its enrollment token and lists its
//!   engines; [`Request::EngineToken`]: an enrolled engine asks for its token;
//!   [`Request::StationEngineToken`]: the director asks for an engine process's.
//!
//! A refusal is [`Response::Error`] with the one line a user sees (`too many attempts, retry in
//! 2s`, `wrong user name or password`, ...).
//!
//! Variants are only ever appended, never reordered or removed.

use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

use crate::codec::Limits;
use crate::signed::{Signed, SignedError};
use crate::token::Rights;

/// The protocol name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/vodmesh/auth/1");

/// Size caps. The largest request is an enrollment listing 1024 engines (~40 KiB) or a user
/// with a long program list; the largest response is one token (at most
/// [`crate::token::MAX_TOKEN`]).
pub const LIMITS: Limits = Limits {
    request: 64 * 1024,
    response: 16 * 1024,
};

/// What a peer asks the auth server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// A subscriber logs in: a console token bound to the calling peer.
    Login {
        /// Subscriber name.
        user: String,
        /// Password.
        password: String,
    },
    /// An admin subscriber logs in: an admin token bound to the calling peer.
    AdminLogin {
        /// Subscriber name.
        user: String,
        /// Password.
        password: String,
    },
    /// Adds a subscriber (admin only).
    AddUser {
        /// The new subscriber's name.
        name: String,
        /// Its password.
        password: String,
        /// Whether it may log in as an admin.
        admin: bool,
        /// Programs it may watch.
        rights: Rights,
        /// An admin token of the caller, unless the caller is an admin peer.
        admin_token: Option<serde_bytes::ByteBuf>,
        /// The admin acting through this connection, if it is not the connection's peer.
        delegation: Option<Signed>,
    },
    /// An enrollment token for the station whose director is `station` (admin only).
    EnrollToken {
        /// The new station's director peer id.
        station: PeerId,
        /// An admin token of the caller, unless the caller is an admin peer.
        admin_token: Option<serde_bytes::ByteBuf>,
        /// The admin acting through this connection, if it is not the connection's peer.
        delegation: Option<Signed>,
    },
    /// A station's director presents its enrollment token and lists its engines.
    Enroll {
        /// The enrollment token (subject: the calling director).
        token: serde_bytes::ByteBuf,
        /// The station's engines, which may then ask for engine tokens.
        engines: Vec<PeerId>,
    },
    /// An engine token for the calling engine.
    EngineToken,
    /// A fresh console token for the same peer and rights, in exchange for a console token of
    /// this issuer that is still valid (so playback never stops to ask for a password).
    Refresh {
        /// The current console token.
        token: serde_bytes::ByteBuf,
    },
    /// An engine token for `engine`, asked by the director of the station that enrolled it:
    /// an engine in a process of its own holds no connection to the auth server, so its
    /// director asks and forwards the token to it over the backplane.
    StationEngineToken {
        /// The engine, the token's subject.
        engine: PeerId,
    },
}

impl Request {
    /// The operation's name, for logs and metrics (never the password).
    pub fn op(&self) -> &'static str {
        match self {
            Request::Login { .. } => "login",
            Request::AdminLogin { .. } => "admin_login",
            Request::Refresh { .. } => "refresh",
            Request::AddUser { .. } => "add_user",
            Request::EnrollToken { .. } => "enroll_token",
            Request::Enroll { .. } => "enroll",
            Request::EngineToken => "engine_token",
            Request::StationEngineToken { .. } => "station_engine_token",
        }
    }
}

/// Signature domain of delegations.
pub const DELEGATION_DOMAIN: &str = "vodmesh/auth-delegation/1";
/// Largest delegation accepted, in bytes.
pub const MAX_DELEGATION: usize = 1024;
/// How far a delegation's signing time may be from the server's clock.
pub const DELEGATION_WINDOW_MS: u64 = 60_000;

/// What an admin's key signs to act through a connection of another (throwaway) identity:
/// "the peer `to` speaks for me, at `signed_ms`". Carried as a [`Signed`] envelope, whose
/// signer is the admin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegation {
    /// The peer on the connection that carries the request.
    pub to: PeerId,
    /// When it was signed (ms since the epoch).
    pub signed_ms: u64,
}

/// Why a delegation was refused.
#[derive(Debug, thiserror::Error)]
pub enum DelegationError {
    /// Encoding or signature.
    #[error("invalid admin delegation: {0}")]
    Signed(#[from] SignedError),
    /// Made for another connection's peer.
    #[error("admin delegation made for another peer")]
    WrongPeer,
    /// Signed too long ago or in the future.
    #[error("admin delegation expired (or the clocks differ by more than a minute)")]
    Stale,
}

impl Delegation {
    /// `admin` delegates to `to`, now.
    pub fn sign(admin: &libp2p::identity::Keypair, to: PeerId, now_ms: u64) -> Signed {
        Signed::sign(
            DELEGATION_DOMAIN,
            &Delegation {
                to,
                signed_ms: now_ms,
            },
            admin,
        )
    }

    /// Checks `signed` as carried by a request from `remote` at `now_ms`; returns the admin
    /// (the signer) it speaks for.
    pub fn verify(
        signed: &Signed,
        remote: &PeerId,
        now_ms: u64,
    ) -> Result<PeerId, DelegationError> {
        let (signer, d): (PeerId, Delegation) = signed.verify(DELEGATION_DOMAIN, MAX_DELEGATION)?;
        if d.to != *remote {
            return Err(DelegationError::WrongPeer);
        }
        if now_ms.abs_diff(d.signed_ms) > DELEGATION_WINDOW_MS {
            return Err(DelegationError::Stale);
        }
        Ok(signer)
    }
}

/// The auth server's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A signed token (console, admin, enrollment or engine, as asked).
    Token(serde_bytes::ByteBuf),
    /// Done (user added, station enrolled).
    Done,
    /// Refused or failed: the one line a user sees.
    Error(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};
    use crate::token::Rights;
    use proptest::prelude::*;

    fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    #[test]
    fn every_message_round_trips() {
        let bytes = serde_bytes::ByteBuf::from(vec![1u8, 2, 3]);
        for req in [
            Request::Login {
                user: "alice".into(),
                password: "pw".into(),
            },
            Request::AdminLogin {
                user: "root".into(),
                password: "pw".into(),
            },
            Request::AddUser {
                name: "bob".into(),
                password: "secret".into(),
                admin: false,
                rights: Rights::All,
                admin_token: Some(bytes.clone()),
                delegation: None,
            },
            Request::EnrollToken {
                station: peer(),
                admin_token: None,
                delegation: Some(Delegation::sign(
                    &libp2p::identity::Keypair::generate_ed25519(),
                    peer(),
                    5,
                )),
            },
            Request::Enroll {
                token: bytes.clone(),
                engines: vec![peer(), peer()],
            },
            Request::EngineToken,
            Request::StationEngineToken { engine: peer() },
        ] {
            let b = encode(&req);
            assert_eq!(decode::<Request>(&b, LIMITS.request).unwrap(), req);
        }
        for resp in [
            Response::Token(bytes),
            Response::Done,
            Response::Error("wrong user name or password".into()),
        ] {
            let b = encode(&resp);
            assert_eq!(decode::<Response>(&b, LIMITS.response).unwrap(), resp);
        }
    }

    #[test]
    fn delegations_are_bound_to_their_peer_and_time() {
        let admin = libp2p::identity::Keypair::generate_ed25519();
        let (tool, other) = (peer(), peer());
        let d = Delegation::sign(&admin, tool, 1_000_000);
        assert_eq!(
            Delegation::verify(&d, &tool, 1_030_000).unwrap(),
            admin.public().to_peer_id()
        );
        assert!(matches!(
            Delegation::verify(&d, &other, 1_000_000),
            Err(DelegationError::WrongPeer)
        ));
        assert!(matches!(
            Delegation::verify(&d, &tool, 1_100_001),
            Err(DelegationError::Stale)
        ));
        let mut forged = d.clone();
        forged.payload = serde_bytes::ByteBuf::from(encode(&Delegation {
            to: tool,
            signed_ms: 5_000_000,
        }));
        assert!(Delegation::verify(&forged, &tool, 5_000_000).is_err());
    }

    #[test]
    fn the_largest_enrollment_fits_the_request_limit() {
        let req = Request::Enroll {
            token: serde_bytes::ByteBuf::from(vec![0u8; crate::token::MAX_TOKEN]),
            engines: (0..1024).map(|_| peer()).collect(),
        };
        assert!(encode(&req).len() <= LIMITS.request);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = decode::<Request>(&bytes, LIMITS.request);
            let _ = decode::<Response>(&bytes, LIMITS.response);
        }

        #[test]
        fn truncated_requests_are_errors(cut in 0usize..64) {
            let full = encode(&Request::Login { user: "alice".into(), password: "correct horse".into() });
            let cut = cut.min(full.len() - 1);
            prop_assert!(decode::<Request>(&full[..cut], LIMITS.request).is_err());
        }
    }
}
