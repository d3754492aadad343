//! Engine tokens: how a station enrolls its engines and keeps an engine token for each.
//!
//! The auth station enrolls its own engines and signs their tokens in process. Any other
//! station started with `--enroll FILE` finds the auth server through the registry (the
//! station record with `roles.auth` and an `issuer`), presents its enrollment token from its
//! director's identity, then asks for each engine's token *as that engine* (a connection
//! under the engine's own key), since the server binds every token to the peer it talks to.
//!
//! An engine in a process of its own (`--engine-peer`) holds no connection to the auth
//! server and its key is not here: the director asks for its token
//! ([`Request::StationEngineToken`], bound to that engine, granted only for an engine the
//! station enrolled) and forwards it over the backplane ([`crate::blade`]).
//!
//! An enrollment token enrolls once. The certificate it brought is kept in
//! `DATA/membership.cbor` ([`MEMBERSHIP_FILE`], rewritten at each renewal) with the token's id,
//! and a station restarted with the same `--enroll FILE` renews that certificate (listing its
//! engines again) instead of enrolling; a new token file enrolls anew.
//!
//! Tokens are refreshed when half their lifetime is left, kept in memory ([`EngineTokens`])
//! and written to `DATA/engines/<i>/engine.token` (0600; an engine process writes its own).
//! A refused enrollment is final and logged; an unreachable auth server is retried.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use libp2p::identity::Keypair;
use serde_bytes::ByteBuf;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};
use vodmesh_client::auth::{AuthClient, AuthError, AuthServer};
use vodmesh_client::files::{read_small, write_private};
use vodmesh_proto::auth::Request;
use vodmesh_proto::codec;
use vodmesh_proto::ids::short_peer;
use vodmesh_proto::member;
use vodmesh_proto::station::Roles;
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::{Audience, Claims, MAX_TOKEN, TokenId, TrustedIssuers};
use vodmesh_registry::{RegistryHandle, WalkLimits};

use super::Server;

/// File name of an engine's token, in its directory under `DATA/engines/<i>/`.
pub const TOKEN_FILE: &str = "engine.token";
/// Wait between attempts while the auth server cannot be found or reached.
pub const RETRY: Duration = Duration::from_secs(2);
/// File name, in a station's data directory, of its membership: its certificate and the id of
/// the enrollment token that brought it.
pub const MEMBERSHIP_FILE: &str = "membership.cbor";
/// Shortest wait between refreshes.
const MIN_REFRESH: Duration = Duration::from_secs(1);

/// The current engine token of each engine, by index (`None` until obtained).
#[derive(Clone, Debug)]
pub struct EngineTokens {
    rx: watch::Receiver<Vec<Option<Vec<u8>>>>,
    /// The auth server's refusal of the station's enrollment, once it refused.
    refused: watch::Receiver<Option<String>>,
}

impl EngineTokens {
    /// Tokens that never arrive: a station that is neither the auth station nor enrolled.
    pub fn none(engines: usize) -> Self {
        let (_, rx) = watch::channel(vec![None; engines]);
        let (_, refused) = watch::channel(None);
        Self { rx, refused }
    }

    /// Waits until the auth server refuses the station's enrollment (a token already used,
    /// made out to another station, expired), and says why; never returns otherwise. Such a
    /// station is no member and never will be with that token.
    pub async fn refused(&self) -> String {
        let mut refused = self.refused.clone();
        match refused.wait_for(Option::is_some).await {
            Ok(line) => line.clone().unwrap_or_default(),
            Err(_) => std::future::pending().await,
        }
    }

    /// Engine `index`'s token, if it has one.
    pub fn get(&self, index: usize) -> Option<Vec<u8>> {
        self.rx.borrow().get(index).cloned().flatten()
    }

    /// Waits until a token arrives or is refreshed; false once none can arrive any more.
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }

    /// Waits until every engine has a token; false if the tokens can no longer arrive.
    pub async fn wait_all(&mut self) -> bool {
        self.rx
            .wait_for(|t| t.iter().all(Option::is_some))
            .await
            .is_ok()
    }
}

/// One engine, as the token keeper needs it.
#[derive(Clone, Debug)]
pub enum Engine {
    /// An engine of this process: it asks for its token itself, under its own key.
    InProcess {
        /// Its identity: the subject of its token.
        key: Keypair,
        /// Its directory, where `engine.token` goes.
        dir: PathBuf,
    },
    /// An engine process (`--engine-peer`): the director asks for its token.
    Process {
        /// Its peer id: the subject of its token.
        peer: PeerId,
    },
}

impl Engine {
    fn peer(&self) -> PeerId {
        match self {
            Engine::InProcess { key, .. } => key.public().to_peer_id(),
            Engine::Process { peer } => *peer,
        }
    }
}

/// Where engine tokens come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// This station is the auth server.
    Local {
        /// The server.
        server: Arc<Server>,
        /// This station's director.
        station: PeerId,
        /// The roles it runs, which its own certificate grants.
        roles: Roles,
    },
    /// An auth server elsewhere in the swarm, found through the registry.
    Remote {
        /// This station's registry.
        registry: RegistryHandle,
        /// This station's director identity (the enrollment token's subject).
        station: Keypair,
        /// The enrollment token.
        token: Vec<u8>,
        /// Where the membership is kept ([`MEMBERSHIP_FILE`] in the data directory).
        membership: PathBuf,
    },
}

/// What a station keeps of its enrollment, to renew it when it restarts.
#[derive(serde::Serialize, serde::Deserialize)]
struct Membership {
    /// The enrollment token it came from.
    token: TokenId,
    /// The latest certificate.
    certificate: ByteBuf,
}

/// The membership kept at `path`, if it came from the enrollment token `token`.
fn load_membership(path: &Path, token: TokenId) -> Option<Vec<u8>> {
    if !path.exists() {
        return None;
    }
    let read = read_small(path, "station membership", 2 * MAX_TOKEN as u64)
        .map_err(|e| e.to_string())
        .and_then(|b| codec::decode::<Membership>(&b, 2 * MAX_TOKEN).map_err(|e| e.to_string()));
    match read {
        Ok(kept) if kept.token == token => Some(kept.certificate.into_vec()),
        Ok(_) => None,
        Err(e) => {
            warn!(cause = %e, "ignoring an unreadable membership file");
            None
        }
    }
}

/// The station certificate kept from the last run ([`MEMBERSHIP_FILE`]), while it holds:
/// of this enrollment token, made out to this station, not expired. Read without its
/// signature checked (the file is this station's own, 0600); every director it is shown to
/// checks that.
fn kept_certificate(source: &Source) -> Option<Vec<u8>> {
    let Source::Remote {
        station,
        token,
        membership,
        ..
    } = source
    else {
        return None;
    };
    let certificate = load_membership(membership, Claims::peek(token).ok()?.id)?;
    let peer = station.public().to_peer_id();
    still_holds(&certificate, Audience::Member, peer).then_some(certificate)
}

/// The engine token an in-process engine kept from the last run (`engine.token`), while it
/// holds: made out to this engine, not expired (its signature is checked by every engine it
/// is shown to).
fn kept_token(engine: &Engine) -> Option<Vec<u8>> {
    let Engine::InProcess { key, dir } = engine else {
        return None;
    };
    let token = read_small(&dir.join(TOKEN_FILE), "engine token", MAX_TOKEN as u64).ok()?;
    let peer = key.public().to_peer_id();
    still_holds(&token, Audience::Engine, peer).then_some(token)
}

/// Whether a token kept from the last run is of `audience`, made out to `subject`, and not
/// expired.
fn still_holds(token: &[u8], audience: Audience, subject: PeerId) -> bool {
    Claims::peek(token).is_ok_and(|claims| {
        claims.audience == audience && claims.subject == subject && claims.expires_ms > now_ms()
    })
}

/// Keeps `certificate` of the enrollment `token` for the next start, when the source is remote.
fn save_membership(source: &Source, certificate: &[u8]) {
    let Source::Remote {
        token, membership, ..
    } = source
    else {
        return;
    };
    let Ok(claims) = Claims::peek(token) else {
        return;
    };
    let kept = Membership {
        token: claims.id,
        certificate: ByteBuf::from(certificate.to_vec()),
    };
    if let Err(e) = write_private(membership, &codec::encode(&kept), "station membership") {
        warn!(cause = %e, "cannot keep the station certificate: a restart will need a new enrollment token");
    }
}

/// Starts keeping tokens for `engines` from `source`, and the station's certificate in
/// `certificate`, until `shutdown` turns true.
pub fn spawn(
    source: Source,
    engines: Vec<Engine>,
    certificate: watch::Sender<Option<Vec<u8>>>,
    mut shutdown: watch::Receiver<bool>,
) -> (EngineTokens, JoinHandle<()>) {
    // The tokens kept from the last run serve until fresh ones come: a restart while the
    // auth server is away does not stop the engines' copies.
    let (tx, rx) = watch::channel(engines.iter().map(kept_token).collect());
    let (refused_tx, refused) = watch::channel(None);
    let task = tokio::spawn(async move {
        tokio::select! {
            () = keep(source, engines, tx, certificate, refused_tx) => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    });
    (EngineTokens { rx, refused }, task)
}

enum Failure {
    /// Worth retrying (not found, unreachable).
    Retry(String),
    /// The auth server refused: retrying will not help.
    Refused(String),
}

impl From<AuthError> for Failure {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Refused(line) => Failure::Refused(line),
            other => Failure::Retry(other.to_string()),
        }
    }
}

async fn keep(
    source: Source,
    engines: Vec<Engine>,
    tx: watch::Sender<Vec<Option<Vec<u8>>>>,
    certificate: watch::Sender<Option<Vec<u8>>>,
    refused: watch::Sender<Option<String>>,
) {
    // Likewise the certificate kept from the last run: the station is a member from its
    // start, whether the auth server answers now or later.
    if let Some(kept) = kept_certificate(&source) {
        info!(
            "a member on the certificate kept from the last run, until the auth server renews it"
        );
        certificate.send_replace(Some(kept));
    }
    let (server, mut cert) = loop {
        match enroll(&source, &engines).await {
            Ok(enrolled) => break enrolled,
            Err(Failure::Refused(line)) => {
                error!(cause = %line, "enrollment refused: this station's engines get no engine token and will copy nothing");
                // What was kept from the last run goes too (a revoked station's, say).
                certificate.send_replace(None);
                tx.send_modify(|tokens| tokens.fill(None));
                refused.send_replace(Some(line));
                // Kept until the station stops: the refusal stays readable.
                return std::future::pending().await;
            }
            Err(Failure::Retry(why)) => {
                debug!(cause = %why, "enrollment: will retry");
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    info!(
        engines = engines.len(),
        roles = %cert.1.roles.unwrap_or_default().words(),
        "station enrolled with the auth server: a member"
    );
    save_membership(&source, &cert.0);
    certificate.send_replace(Some(cert.0.clone()));
    loop {
        let mut next = RETRY;
        let mut earliest_expiry = cert.1.expires_ms;
        let mut all = true;
        // Renewed at half its lifetime, like the engine tokens.
        let half = cert.1.expires_ms.saturating_sub(cert.1.not_before_ms) / 2;
        if now_ms() >= cert.1.not_before_ms.saturating_add(half) {
            match renew(&source, server.as_ref(), &cert.0).await {
                Ok(renewed) => {
                    cert = renewed;
                    save_membership(&source, &cert.0);
                    earliest_expiry = cert.1.expires_ms;
                    certificate.send_replace(Some(cert.0.clone()));
                    debug!(
                        expires_ms = cert.1.expires_ms,
                        "station certificate renewed"
                    );
                }
                Err(Failure::Refused(line) | Failure::Retry(line)) => {
                    all = false;
                    warn!(cause = %line, "station certificate not renewed; will retry");
                }
            }
        }
        for (index, engine) in engines.iter().enumerate() {
            match fetch(&source, server.as_ref(), engine).await {
                Ok((token, claims)) => {
                    earliest_expiry = earliest_expiry.min(claims.expires_ms);
                    if let Engine::InProcess { dir, .. } = engine
                        && let Err(e) = write_private(&dir.join(TOKEN_FILE), &token, "engine token")
                    {
                        warn!(cause = %e, "cannot write the engine token file");
                    }
                    tx.send_modify(|t| t[index] = Some(token));
                    info!(index, engine = %short_peer(&engine.peer()), expires_ms = claims.expires_ms, "engine token obtained");
                }
                Err(Failure::Refused(line) | Failure::Retry(line)) => {
                    all = false;
                    warn!(index, cause = %line, "engine token not obtained; will retry");
                }
            }
        }
        if all {
            let left = earliest_expiry.saturating_sub(now_ms());
            next = Duration::from_millis(left / 2).max(MIN_REFRESH);
        }
        tokio::time::sleep(next).await;
    }
}

/// A certificate and its claims.
type Certificate = (Vec<u8>, Claims);

/// Enrolls the station: its certificate and, for a remote auth server, where it is.
async fn enroll(
    source: &Source,
    engines: &[Engine],
) -> Result<(Option<AuthServer>, Certificate), Failure> {
    let peers: Vec<PeerId> = engines.iter().map(Engine::peer).collect();
    match source {
        Source::Local {
            server,
            station,
            roles,
        } => {
            let (server, station, roles) = (server.clone(), *station, *roles);
            let trusted = [server.issuer_key()].into_iter().collect();
            let cert =
                blocking(move || server.enroll_own_station(station, &peers, roles, now_ms()))
                    .await?;
            Ok((None, checked(cert, &station, &trusted)?))
        }
        Source::Remote {
            registry,
            station,
            token,
            membership,
        } => {
            let local = station.public().to_peer_id();
            let stations = vodmesh_registry::walk(registry, local, WalkLimits::default())
                .await
                .map_err(|e| Failure::Retry(e.to_string()))?;
            let server = stations
                .iter()
                .find_map(|(r, _)| AuthServer::from_record(r))
                .ok_or_else(|| Failure::Retry("no auth server in the swarm yet".into()))?;
            let id = Claims::peek(token)
                .map_err(|e| Failure::Refused(format!("the enrollment token: {e}")))?
                .id;
            let client = AuthClient::connect(&server, station.clone()).await?;
            let cert = match load_membership(membership, id) {
                // A restart: the token was used; the certificate it brought is renewed.
                Some(kept) => client
                    .token(Request::Renew {
                        certificate: ByteBuf::from(kept),
                        engines: Some(peers),
                    })
                    .await
                    .map_err(|e| match Failure::from(e) {
                        Failure::Refused(line) => Failure::Refused(format!(
                            "renewing the certificate kept in {}: {line} (if it expired or was revoked, enroll this station again with a new token: vodmesh enroll)",
                            membership.display()
                        )),
                        retry => retry,
                    })?,
                None => {
                    client
                        .token(Request::Enroll {
                            token: ByteBuf::from(token.clone()),
                            engines: peers,
                        })
                        .await?
                }
            };
            let cert = checked(cert, &local, &server.trusted())?;
            Ok((Some(server), cert))
        }
    }
}

/// A fresh certificate for the current one `cert`.
async fn renew(
    source: &Source,
    remote: Option<&AuthServer>,
    cert: &[u8],
) -> Result<Certificate, Failure> {
    match (source, remote) {
        (
            Source::Local {
                server, station, ..
            },
            _,
        ) => {
            let (server, station, cert) = (server.clone(), *station, cert.to_vec());
            let trusted = [server.issuer_key()].into_iter().collect();
            let renewed = blocking(move || server.renew(&cert, station, None, now_ms())).await?;
            checked(renewed, &station, &trusted)
        }
        (Source::Remote { station, .. }, Some(server)) => {
            let client = AuthClient::connect(server, station.clone()).await?;
            let certificate = ByteBuf::from(cert.to_vec());
            let renewed = client
                .token(Request::Renew {
                    certificate,
                    engines: None,
                })
                .await?;
            checked(renewed, &station.public().to_peer_id(), &server.trusted())
        }
        (Source::Remote { .. }, None) => Err(Failure::Retry("auth server unknown".into())),
    }
}

/// `cert`, once it verifies as `station`'s certificate from `trusted`.
fn checked(
    cert: Vec<u8>,
    station: &PeerId,
    trusted: &TrustedIssuers,
) -> Result<Certificate, Failure> {
    let (claims, _) = member::verify(&cert, station, trusted, now_ms()).map_err(|e| {
        Failure::Retry(format!(
            "the auth server returned an invalid certificate: {e}"
        ))
    })?;
    Ok((cert, claims))
}

/// One engine token, checked against the issuer before it is kept.
async fn fetch(
    source: &Source,
    remote: Option<&AuthServer>,
    engine: &Engine,
) -> Result<(Vec<u8>, Claims), Failure> {
    let peer = engine.peer();
    let (token, trusted) = match (source, remote) {
        (Source::Local { server, .. }, _) => {
            let server = server.clone();
            let trusted = [server.issuer_key()].into_iter().collect();
            let token = blocking(move || server.issue_engine_token(peer, now_ms())).await?;
            (token, trusted)
        }
        (Source::Remote { station, .. }, Some(server)) => {
            let token = match engine {
                Engine::InProcess { key, .. } => {
                    let client = AuthClient::connect(server, key.clone()).await?;
                    client.token(Request::EngineToken).await?
                }
                Engine::Process { peer } => {
                    let client = AuthClient::connect(server, station.clone()).await?;
                    let engine = *peer;
                    client.token(Request::StationEngineToken { engine }).await?
                }
            };
            (token, server.trusted())
        }
        (Source::Remote { .. }, None) => {
            return Err(Failure::Retry("auth server unknown".into()));
        }
    };
    let claims = trusted
        .verify(&token, now_ms(), Audience::Engine, None, &peer)
        .map_err(|e| Failure::Retry(format!("the auth server returned an invalid token: {e}")))?;
    Ok((token, claims))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, super::Error> + Send + 'static,
) -> Result<T, Failure> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Failure::Refused(e.to_string())),
        Err(e) => Err(Failure::Retry(e.to_string())),
    }
}
