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
//! - [`Request::AddUser`], [`Request::DisableUser`], [`Request::RemoveUser`],
//!   [`Request::EnrollToken`]: admin operations; the caller is an admin
//!   peer or presents an admin token of its own. An operator tool connects with a throwaway
//!   identity and carries an admin claim for the request ([`crate::admin`], made by
//!   [`Request::prove_admin`]): libp2p cannot dial a peer with that peer's own identity, and
//!   the auth station's identity is its first admin.
//! - [`Request::Enroll`]: a station's director presents its enrollment token and lists its
//!   engines; [`Request::EngineToken`]: an enrolled engine asks for its token;
//!   [`Request::StationEngineToken`]: the director asks for an engine process's.
//!
//! A refusal is [`Response::Error`] with the one line a user sees (`too many attempts, retry in
//! 2s`, `wrong user name or password`, ...).
//!
//! Variants are only ever appended, never reordered or removed.

use libp2p::identity::Keypair;
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

use crate::ProgramId;
use crate::admin::AdminClaim;
use crate::codec::Limits;
use crate::signed::Signed;
use crate::station::Roles;
use crate::token::{AddrPrefix, Rights};

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
        /// The admin acting through this connection, if it is not the connection's peer: an
        /// admin claim for this request ([`Request::prove_admin`]). Its wire name is that of
        /// the delegations it replaced, which the server still accepts.
        #[serde(rename = "delegation")]
        proof: Option<Signed>,
    },
    /// An enrollment token for the station whose director is `station` (admin only).
    EnrollToken {
        /// The new station's director peer id.
        station: PeerId,
        /// The roles its certificate will grant (none in requests of earlier releases).
        #[serde(default)]
        roles: Roles,
        /// An admin token of the caller, unless the caller is an admin peer.
        admin_token: Option<serde_bytes::ByteBuf>,
        /// The admin acting through this connection, if it is not the connection's peer: an
        /// admin claim for this request ([`Request::prove_admin`]). Its wire name is that of
        /// the delegations it replaced, which the server still accepts.
        #[serde(rename = "delegation")]
        proof: Option<Signed>,
    },
    /// A station's director presents its enrollment token and lists its engines; answered
    /// with its station certificate ([`crate::member`]).
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
    /// Disables (or enables again) a subscriber (admin only): a disabled one cannot log in,
    /// and her console tokens are not refreshed.
    DisableUser {
        /// The subscriber.
        name: String,
        /// Disable (`true`) or enable again (`false`).
        disabled: bool,
        /// An admin token of the caller, unless the caller is an admin peer.
        admin_token: Option<serde_bytes::ByteBuf>,
        /// The admin acting through this connection, if it is not the connection's peer.
        proof: Option<Signed>,
    },
    /// Removes a subscriber (admin only): she cannot log in, her tokens are not refreshed.
    RemoveUser {
        /// The subscriber.
        name: String,
        /// An admin token of the caller, unless the caller is an admin peer.
        admin_token: Option<serde_bytes::ByteBuf>,
        /// The admin acting through this connection, if it is not the connection's peer.
        proof: Option<Signed>,
    },
    /// A fresh station certificate in exchange for the calling director's current one, still
    /// valid and not revoked (a station renews before expiry, and when it restarts: an
    /// enrollment token enrolls once).
    Renew {
        /// The current certificate.
        certificate: serde_bytes::ByteBuf,
        /// The station's engines, replacing the enrolled ones (a restarted station lists
        /// them again); `None` leaves them (absent in requests of earlier releases).
        #[serde(default)]
        engines: Option<Vec<PeerId>>,
    },
    /// Ends the membership of the station whose director is `station` before its certificate
    /// expires (admin only): its certificate is not renewed, and the auth station's record
    /// lists it as revoked, which every director honours.
    Revoke {
        /// The station's director.
        station: PeerId,
        /// An admin token of the caller, unless the caller is an admin peer.
        admin_token: Option<serde_bytes::ByteBuf>,
        /// The admin acting through this connection ([`Request::prove_admin`]).
        proof: Option<Signed>,
    },
    /// A URL token ([`crate::token::Audience::Url`]) for a standard player, in exchange for a
    /// console token of this issuer that is still valid and presented by its own subject:
    /// bound to `program` (or every program the subscriber may watch), expiring within the
    /// server's limit, and to client addresses in `addr` when given.
    UrlToken {
        /// The console token.
        token: serde_bytes::ByteBuf,
        /// The program; `None`: the subscriber's rights as they are.
        program: Option<ProgramId>,
        /// Client addresses the token may be used from; `None`: any.
        addr: Option<AddrPrefix>,
        /// Lifetime asked for, seconds (the server may shorten it); `None`: its default.
        ttl_s: Option<u64>,
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
            Request::DisableUser { .. } => "disable_user",
            Request::RemoveUser { .. } => "remove_user",
            Request::Renew { .. } => "renew",
            Request::Revoke { .. } => "revoke",
            Request::UrlToken { .. } => "url_token",
        }
    }

    /// The subject an admin claim for this request covers: the user added, the station
    /// enrolled; `None` for a request that is no admin operation.
    pub fn admin_subject(&self) -> Option<Vec<u8>> {
        match self {
            Request::AddUser { name, .. }
            | Request::DisableUser { name, .. }
            | Request::RemoveUser { name, .. } => Some(name.as_bytes().to_vec()),
            // The roles are part of what the admin signs for, so a relay cannot add any.
            Request::EnrollToken { station, roles, .. } => {
                let mut subject = station.to_bytes();
                if *roles != Roles::default() {
                    subject.extend_from_slice(roles.words().as_bytes());
                }
                Some(subject)
            }
            Request::Revoke { station, .. } => Some(station.to_bytes()),
            _ => None,
        }
    }

    /// Makes this admin request act for `admin`: signs a claim for its operation and subject,
    /// addressed to the auth station's director `director` and bound to the connection of
    /// `via` (the identity the request is sent with). Does nothing to a request that is no
    /// admin operation.
    pub fn prove_admin(&mut self, admin: &Keypair, director: PeerId, via: PeerId, now_ms: u64) {
        let Some(subject) = self.admin_subject() else {
            return;
        };
        let claim = AdminClaim::new(self.op(), &subject, director, now_ms)
            .via(via)
            .sign(admin);
        if let Request::AddUser { proof, .. }
        | Request::EnrollToken { proof, .. }
        | Request::DisableUser { proof, .. }
        | Request::RemoveUser { proof, .. }
        | Request::Revoke { proof, .. } = self
        {
            *proof = Some(claim);
        }
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
        Keypair::generate_ed25519().public().to_peer_id()
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
                proof: None,
            },
            Request::EnrollToken {
                station: peer(),
                roles: Roles {
                    home: true,
                    ..Roles::default()
                },
                admin_token: None,
                proof: Some(crate::admin::prove(
                    &Keypair::generate_ed25519(),
                    "enroll_token",
                    b"station",
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
            Request::Renew {
                certificate: bytes.clone(),
                engines: None,
            },
            Request::Renew {
                certificate: bytes.clone(),
                engines: Some(vec![peer()]),
            },
            Request::Revoke {
                station: peer(),
                admin_token: None,
                proof: None,
            },
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
    fn an_admin_request_carries_a_claim_for_its_own_operation_and_subject() {
        let admin = Keypair::generate_ed25519();
        let director = peer();
        let station = peer();
        let mut enroll = Request::EnrollToken {
            station,
            roles: Roles::default(),
            admin_token: None,
            proof: None,
        };
        let tool = peer();
        enroll.prove_admin(&admin, director, tool, 1_000);
        let Request::EnrollToken {
            proof: Some(proof), ..
        } = &enroll
        else {
            panic!("an admin request gets its proof");
        };
        let act = |subject: &[u8], director, remote| {
            crate::admin::acting_admin(proof, ("enroll_token", subject), director, remote, 1_000)
        };
        let station = station.to_bytes();
        assert_eq!(
            act(&station, director, &tool),
            Ok(admin.public().to_peer_id())
        );
        // Its field keeps the wire name of the delegations it replaced.
        let bytes = encode(&enroll);
        assert!(bytes.windows(10).any(|w| w == b"delegation"));
        // Not for another station, at another director, or from another peer.
        assert!(act(&peer().to_bytes(), director, &tool).is_err());
        assert!(act(&station, peer(), &tool).is_err());
        assert!(act(&station, director, &peer()).is_err());
        // A request that is no admin operation stays as it is.
        let mut login = Request::EngineToken;
        login.prove_admin(&admin, director, tool, 1_000);
        assert_eq!(login, Request::EngineToken);
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
