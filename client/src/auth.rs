//! The client side of `/vodmesh/auth/1`, shared by `vodmesh-console login`, `vodmesh user
//! add`, `vodmesh enroll` and enrolling stations.
//!
//! - [`find_auth_server`]: asks any director for the station that runs the auth role (its own
//!   record first, else the swarm's).
//! - [`AuthClient`]: a connection to the auth server with one identity; every token it
//!   obtains is bound to that identity.
//! - [`refresh`]: a fresh console token in exchange for the current one.

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use vodmesh_proto::auth::{self as proto, Request, Response};
use vodmesh_proto::director;
use vodmesh_proto::member;
use vodmesh_proto::net::{tcp_first, with_peer};
use vodmesh_proto::station::StationRecord;
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::{Audience, Claims, IssuerKey, TokenError, TrustedIssuers};

use crate::director::{DirectorClient, DirectorError};
use crate::files::FileError;
use crate::rpc::{ClientError, Protocol, RpcClient};

/// How long one auth request may take (a login waits for an argon2 hash on a busy server).
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an auth operation failed. The `Display` text is the one line a user sees.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The network failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The auth server (or the director asked for it) refused; its one line.
    #[error("{0}")]
    Refused(String),
    /// No station of the swarm runs the auth role.
    #[error(
        "no auth server found in the swarm: no station this director lists runs --auth (is the auth station up, and joined to this one?)"
    )]
    NoAuthServer,
    /// A peer answered something that makes no sense.
    #[error("unexpected answer from {0}")]
    Unexpected(&'static str),
    /// The server's token does not verify against its own issuer key.
    #[error("the auth server returned an invalid token: {0}")]
    BadToken(#[from] TokenError),
    /// A local file could not be read or written.
    #[error(transparent)]
    File(#[from] FileError),
    /// The auth server found signs with another key than the one that issued the token to
    /// refresh (the console's pinned issuer).
    #[error(
        "the auth server signs with {found}, not with {pinned}, the issuer of this console's \
         token: not refreshed"
    )]
    OtherIssuer {
        /// The auth server's key.
        found: IssuerKey,
        /// The issuer of the token.
        pinned: IssuerKey,
    },
}

impl From<DirectorError> for AuthError {
    fn from(e: DirectorError) -> Self {
        match e {
            DirectorError::Client(e) => Self::Client(e),
            DirectorError::Refused(reply) => Self::Refused(reply.message),
            DirectorError::Unexpected(_) => Self::Unexpected("the director"),
        }
    }
}

/// The station running the auth role, as the swarm describes it.
#[derive(Clone, Debug)]
pub struct AuthServer {
    /// Its director's peer id.
    pub director: PeerId,
    /// Its director's addresses, each ending in `/p2p/<director>`, TCP first.
    pub addrs: Vec<Multiaddr>,
    /// The key it signs tokens with.
    pub issuer: IssuerKey,
}

impl AuthServer {
    /// The auth server described by `record`, if the record says it runs the auth role.
    /// Only a certified auth server counts: its record's certificate grants the role, signed
    /// by the issuer key the record names (the auth station certifies itself).
    pub fn from_record(record: &StationRecord) -> Option<Self> {
        let member = member::self_certified(record, now_ms())?;
        if !member.roles.auth {
            return None;
        }
        let issuer: IssuerKey = member.issuer;
        let addrs = record
            .addrs
            .iter()
            .map(|a| with_peer(a, record.director))
            .collect();
        Some(Self {
            director: record.director,
            addrs: tcp_first(addrs),
            issuer,
        })
    }

    /// Trusts only this server's issuer key.
    pub fn trusted(&self) -> TrustedIssuers {
        [self.issuer].into_iter().collect()
    }
}

/// Asks the director at `node` where the auth server is: the director's own station if it
/// runs the auth role, else the first station of the swarm that does. `key` is the identity
/// to connect with.
pub async fn find_auth_server(node: &Multiaddr, key: Keypair) -> Result<AuthServer, AuthError> {
    let client = DirectorClient::connect(node, Some(key)).await?;
    let now = now_ms();
    match client.call(director::Request::Station).await? {
        director::Response::Station(signed) => {
            if let Some(server) = StationRecord::verify(&signed, now)
                .ok()
                .as_ref()
                .and_then(AuthServer::from_record)
            {
                return Ok(server);
            }
        }
        _ => return Err(AuthError::Unexpected("the director")),
    }
    match client.call(director::Request::Swarm).await? {
        director::Response::Swarm(records) => records
            .iter()
            .filter_map(|s| StationRecord::verify(s, now).ok())
            .find_map(|r| AuthServer::from_record(&r))
            .ok_or(AuthError::NoAuthServer),
        _ => Err(AuthError::Unexpected("the director")),
    }
}

/// A connection to the auth server under one identity.
#[derive(Debug)]
pub struct AuthClient {
    rpc: RpcClient<Request, Response>,
}

impl AuthClient {
    /// Connects to `server` as `key`.
    pub async fn connect(server: &AuthServer, key: Keypair) -> Result<Self, AuthError> {
        Self::connect_addrs(&server.addrs, key).await
    }

    /// Connects to the auth server at `addrs` (each ending in `/p2p/<peer id>`) as `key`.
    pub async fn connect_addrs(addrs: &[Multiaddr], key: Keypair) -> Result<Self, AuthError> {
        let protocol = Protocol {
            name: proto::PROTOCOL,
            limits: proto::LIMITS,
            timeout: AUTH_TIMEOUT,
        };
        let rpc = RpcClient::connect(addrs, key, protocol).await?;
        Ok(Self { rpc })
    }

    /// This client's peer id: the subject of every token it obtains.
    pub fn local_peer(&self) -> PeerId {
        self.rpc.local_peer()
    }

    /// Sends `request`; a refusal becomes [`AuthError::Refused`].
    pub async fn call(&self, request: Request) -> Result<Response, AuthError> {
        match self.rpc.request(request).await? {
            Response::Error(line) => Err(AuthError::Refused(line)),
            other => Ok(other),
        }
    }

    /// Sends a request answered by a token, and returns the token.
    pub async fn token(&self, request: Request) -> Result<Vec<u8>, AuthError> {
        match self.call(request).await? {
            Response::Token(t) => Ok(t.into_vec()),
            _ => Err(AuthError::Unexpected("the auth server")),
        }
    }

    /// Sends a request answered by [`Response::Done`].
    pub async fn done(&self, request: Request) -> Result<(), AuthError> {
        match self.call(request).await? {
            Response::Done => Ok(()),
            _ => Err(AuthError::Unexpected("the auth server")),
        }
    }
}

/// A new console token for `current`, from the auth server found through `node`, asked as
/// `key` (the token's subject). Only the issuer that signed `current` (the one the console
/// pinned when it logged in) is asked, and only a token it signed is taken
/// ([`check_refreshed`]): a refresh never hands the console to another swarm.
pub async fn refresh(
    node: &Multiaddr,
    key: &Keypair,
    current: &[u8],
) -> Result<Vec<u8>, AuthError> {
    let issuer = Claims::peek(current)?.issuer;
    let server = find_auth_server(node, key.clone()).await?;
    if server.issuer != issuer {
        return Err(AuthError::OtherIssuer {
            found: server.issuer,
            pinned: issuer,
        });
    }
    let client = AuthClient::connect(&server, key.clone()).await?;
    let fresh = client
        .token(Request::Refresh {
            token: serde_bytes::ByteBuf::from(current.to_vec()),
        })
        .await?;
    check_refreshed(&fresh, issuer, &key.public().to_peer_id(), now_ms())?;
    Ok(fresh)
}

/// Whether `fresh` is a console token for `me` signed by `issuer`, valid at `now_ms`.
pub fn check_refreshed(
    fresh: &[u8],
    issuer: IssuerKey,
    me: &PeerId,
    now_ms: u64,
) -> Result<(), AuthError> {
    let trusted: TrustedIssuers = [issuer].into_iter().collect();
    trusted.verify(fresh, now_ms, Audience::Console, None, me)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vodmesh_proto::station::Roles;

    #[test]
    fn a_refreshed_token_counts_only_from_the_issuer_of_the_one_it_replaces() {
        use vodmesh_proto::token::{Issuer, Rights, TokenId};
        let (ours, theirs) = (Issuer::generate(), Issuer::generate());
        let me = PeerId::random();
        let token = |issuer: &Issuer, audience, subject| {
            issuer
                .sign(&Claims {
                    issuer: issuer.public(),
                    subject,
                    audience,
                    rights: Rights::All,
                    not_before_ms: 0,
                    expires_ms: 10_000,
                    id: TokenId::random(),
                    user: None,
                    roles: None,
                    addr: None,
                })
                .unwrap()
        };
        let fresh = token(&ours, Audience::Console, me);
        assert!(check_refreshed(&fresh, ours.public(), &me, 5_000).is_ok());
        // Signed by another issuer (even one naming ours), for another peer or audience.
        let foreign = token(&theirs, Audience::Console, me);
        assert!(check_refreshed(&foreign, ours.public(), &me, 5_000).is_err());
        let mut claims = Claims::peek(&fresh).unwrap();
        claims.issuer = ours.public();
        let forged = theirs.sign(&claims).unwrap();
        assert!(check_refreshed(&forged, ours.public(), &me, 5_000).is_err());
        let other_peer = token(&ours, Audience::Console, PeerId::random());
        assert!(check_refreshed(&other_peer, ours.public(), &me, 5_000).is_err());
        let engine = token(&ours, Audience::Engine, me);
        assert!(check_refreshed(&engine, ours.public(), &me, 5_000).is_err());
    }

    #[test]
    fn an_auth_station_record_names_its_server_tcp_first() {
        let issuer = vodmesh_proto::token::Issuer::generate();
        let director = PeerId::random();
        let mut record = StationRecord {
            director,
            addrs: vec![
                "/ip4/127.0.0.1/udp/1/quic-v1".parse().unwrap(),
                "/ip4/127.0.0.1/tcp/1".parse().unwrap(),
            ],
            engines: Vec::new(),
            region: None,
            coords: None,
            bandwidth_mbps: 0,
            roles: Roles {
                auth: true,
                ..Roles::default()
            },
            issuer: Some(issuer.public().to_string()),
            issued_ms: 0,
            expires_ms: 0,
            counters: Default::default(),
            certificate: None,
            revoked: vec![],
            http: None,
            https: false,
        };
        assert!(
            AuthServer::from_record(&record).is_none(),
            "no certificate: no auth server"
        );
        let certify = |issuer: &vodmesh_proto::token::Issuer, auth| {
            let claims = Claims {
                issuer: issuer.public(),
                subject: director,
                audience: Audience::Member,
                rights: vodmesh_proto::token::Rights::All,
                not_before_ms: 0,
                expires_ms: u64::MAX,
                id: vodmesh_proto::token::TokenId::random(),
                user: None,
                roles: Some(Roles {
                    auth,
                    ..Roles::default()
                }),
                addr: None,
            };
            Some(issuer.sign(&claims).unwrap().into())
        };
        record.certificate = certify(&issuer, false);
        assert!(
            AuthServer::from_record(&record).is_none(),
            "claimed, not granted"
        );
        record.certificate = certify(&vodmesh_proto::token::Issuer::generate(), true);
        assert!(
            AuthServer::from_record(&record).is_none(),
            "granted by another key than the record's issuer"
        );
        record.certificate = certify(&issuer, true);
        let server = AuthServer::from_record(&record).unwrap();
        assert_eq!(server.director, director);
        assert_eq!(
            server.addrs,
            vec![
                with_peer(&record.addrs[1], director),
                with_peer(&record.addrs[0], director)
            ]
        );
        assert_eq!(server.issuer, issuer.public());
        record.roles.auth = false;
        assert!(
            AuthServer::from_record(&record).is_none(),
            "not an auth station"
        );
    }
}
