//! Client side of `/vodmesh/auth/1`, shared by `vodmesh-console login`, `vodmesh user add`,
//! `vodmesh enroll` and enrolling stations.
//!
//! - [`find_auth_server`]: asks any director for the station that runs the auth role (its own
//!   record first, else the swarm's).
//! - [`AuthClient`]: a connection to the auth server with one identity; every token it
//!   obtains is bound to that identity.
//! - [`Home`]: `$VODMESH_HOME`, where a console keeps its identity and tokens.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use vodmesh_proto::auth::{self as proto, Request, Response};
use vodmesh_proto::director;
use vodmesh_proto::net::{peer_of, with_peer};
use vodmesh_proto::station::StationRecord;
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::{IssuerKey, TokenError, TrustedIssuers};

use crate::client::{ClientError, DirectorClient};
use crate::rpc::RpcClient;

/// How long one auth request may take (a login waits for an argon2 hash on a busy server).
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest password file read, in bytes.
pub const MAX_PASSWORD_FILE: u64 = 4096;
/// Longest token file read, in bytes.
pub const MAX_TOKEN_FILE: u64 = vodmesh_proto::token::MAX_TOKEN as u64;

/// Why an auth operation failed. The `Display` text is the one line a user sees.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The network failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The auth server refused; its one line.
    #[error("{0}")]
    Refused(String),
    /// No station of the swarm runs the auth role.
    #[error("no auth server found in the swarm (no station runs --auth)")]
    NoAuthServer,
    /// A director answered something that makes no sense.
    #[error("unexpected answer from {0}")]
    Unexpected(&'static str),
    /// The server's token does not verify against its own issuer key.
    #[error("the auth server returned an invalid token: {0}")]
    BadToken(#[from] TokenError),
    /// A local file could not be read or written.
    #[error("{what} {path}: {cause}")]
    File {
        /// What the file is.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The I/O error or why the contents are refused.
        cause: String,
    },
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
    pub fn from_record(record: &StationRecord) -> Option<Self> {
        if !record.roles.auth {
            return None;
        }
        let issuer: IssuerKey = record.issuer.as_deref()?.parse().ok()?;
        let mut addrs: Vec<Multiaddr> = record
            .addrs
            .iter()
            .map(|a| with_peer(a, record.director))
            .collect();
        // TCP first: a dead QUIC address stalls for its handshake timeout.
        addrs.sort_by_key(|a| {
            !a.iter()
                .any(|p| matches!(p, libp2p::multiaddr::Protocol::Tcp(_)))
        });
        Some(Self {
            director: record.director,
            addrs,
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
    match client.request(director::Request::Station).await? {
        director::Response::Station(signed) => {
            if let Some(server) = StationRecord::verify(&signed, now)
                .ok()
                .as_ref()
                .and_then(AuthServer::from_record)
            {
                return Ok(server);
            }
        }
        director::Response::Error(e) => return Err(AuthError::Refused(e.message)),
        _ => return Err(AuthError::Unexpected("the director")),
    }
    match client.request(director::Request::Swarm).await? {
        director::Response::Swarm(records) => records
            .iter()
            .filter_map(|s| StationRecord::verify(s, now).ok())
            .find_map(|r| AuthServer::from_record(&r))
            .ok_or(AuthError::NoAuthServer),
        director::Response::Error(e) => Err(AuthError::Refused(e.message)),
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
        let rpc =
            RpcClient::connect(addrs, key, proto::PROTOCOL, proto::LIMITS, AUTH_TIMEOUT).await?;
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

/// Whether `addr` names a peer (ends in `/p2p/<peer id>`).
pub fn names_peer(addr: &Multiaddr) -> bool {
    peer_of(addr).is_some()
}

/// Reads a small secret file (a password, a token): at most `limit` bytes.
pub fn read_small(path: &Path, what: &'static str, limit: u64) -> Result<Vec<u8>, AuthError> {
    let err = |cause: String| AuthError::File {
        what,
        path: path.to_path_buf(),
        cause,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.len() > limit {
        return Err(err(format!("larger than {limit} bytes")));
    }
    std::fs::read(path).map_err(|e| err(e.to_string()))
}

/// Reads a password file: UTF-8, one line (a trailing newline is not part of the password).
pub fn read_password(path: &Path) -> Result<String, AuthError> {
    let bytes = read_small(path, "password file", MAX_PASSWORD_FILE)?;
    let text = String::from_utf8(bytes).map_err(|_| AuthError::File {
        what: "password file",
        path: path.to_path_buf(),
        cause: "not UTF-8".into(),
    })?;
    let line = text.strip_suffix('\n').unwrap_or(&text);
    Ok(line.strip_suffix('\r').unwrap_or(line).to_string())
}

/// Writes `bytes` to `path` readable by its owner only (0600), replacing it atomically.
pub fn write_private(path: &Path, bytes: &[u8], what: &'static str) -> Result<(), AuthError> {
    let err = |cause: std::io::Error| AuthError::File {
        what,
        path: path.to_path_buf(),
        cause: cause.to_string(),
    };
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// `$VODMESH_HOME`: a console's identity (`identity.key`) and tokens (`tokens/`).
#[derive(Clone, Debug)]
pub struct Home {
    /// The directory.
    pub dir: PathBuf,
}

impl Home {
    /// `$VODMESH_HOME`, else the platform data directory (`$XDG_DATA_HOME/vodmesh`,
    /// `~/.local/share/vodmesh`, `~/Library/Application Support/vodmesh` on macOS).
    pub fn from_env() -> Result<Self, AuthError> {
        if let Some(dir) = std::env::var_os("VODMESH_HOME").filter(|d| !d.is_empty()) {
            return Ok(Self { dir: dir.into() });
        }
        if cfg!(not(target_os = "macos"))
            && let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty())
        {
            return Ok(Self {
                dir: PathBuf::from(xdg).join("vodmesh"),
            });
        }
        let home = std::env::var_os("HOME")
            .filter(|d| !d.is_empty())
            .ok_or_else(|| AuthError::File {
                what: "home directory",
                path: PathBuf::from("$HOME"),
                cause: "not set; set VODMESH_HOME".into(),
            })?;
        let base = if cfg!(target_os = "macos") {
            PathBuf::from(home).join("Library/Application Support")
        } else {
            PathBuf::from(home).join(".local/share")
        };
        Ok(Self {
            dir: base.join("vodmesh"),
        })
    }

    /// The console's identity file.
    pub fn identity_path(&self) -> PathBuf {
        self.dir.join("identity.key")
    }

    /// The file of the token of `kind` (`console`, `admin`).
    pub fn token_path(&self, kind: &str) -> PathBuf {
        self.dir.join("tokens").join(format!("{kind}.token"))
    }

    /// The console's identity, created on first use.
    pub fn identity(&self) -> Result<Keypair, AuthError> {
        let path = self.identity_path();
        match std::fs::metadata(&path) {
            Ok(_) => {
                let bytes = read_small(&path, "identity", 4096)?;
                Keypair::from_protobuf_encoding(&bytes).map_err(|_| AuthError::File {
                    what: "identity",
                    path,
                    cause: "not a libp2p key file".into(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Keypair::generate_ed25519();
                let bytes = key.to_protobuf_encoding().map_err(|e| AuthError::File {
                    what: "identity",
                    path: path.clone(),
                    cause: e.to_string(),
                })?;
                write_private(&path, &bytes, "identity")?;
                Ok(key)
            }
            Err(e) => Err(AuthError::File {
                what: "identity",
                path,
                cause: e.to_string(),
            }),
        }
    }
}

/// Keeps a console token fresh while the console plays: at half of the token's remaining
/// lifetime it asks the auth server (found through `node`) for a new one in exchange for the
/// current one, replaces the shared token (the next segment uses it) and rewrites `path`.
/// Playback never waits for it; a failed refresh is retried a minute later.
pub fn spawn_refresher(
    node: Multiaddr,
    key: Keypair,
    token: crate::play::SharedToken,
    path: Option<PathBuf>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let current = token.read().ok().and_then(|t| t.clone());
            let Some(current) = current else { return };
            let Ok(claims) = vodmesh_proto::token::Claims::peek(&current) else {
                return;
            };
            let now = now_ms();
            let wait = claims.expires_ms.saturating_sub(now) / 2;
            tokio::time::sleep(Duration::from_millis(wait.max(1000))).await;
            match refresh(&node, &key, &current).await {
                Ok(fresh) => {
                    if let Some(p) = &path {
                        let _ = write_private(p, &fresh, "token");
                    }
                    if let Ok(mut t) = token.write() {
                        *t = Some(fresh);
                    }
                    tracing::debug!("console token refreshed");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "console token refresh failed; retrying in 60 s");
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
            }
        }
    })
}

/// One refresh: a new console token for `current`.
pub async fn refresh(
    node: &Multiaddr,
    key: &Keypair,
    current: &[u8],
) -> Result<Vec<u8>, AuthError> {
    let server = find_auth_server(node, key.clone()).await?;
    let client = AuthClient::connect(&server, key.clone()).await?;
    client
        .token(Request::Refresh {
            token: serde_bytes::ByteBuf::from(current.to_vec()),
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_files_lose_one_trailing_newline_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret pass\n").unwrap();
        assert_eq!(read_password(&p).unwrap(), "s3cret pass");
        std::fs::write(&p, "two\n\n").unwrap();
        assert_eq!(read_password(&p).unwrap(), "two\n");
        std::fs::write(&p, vec![b'x'; 5000]).unwrap();
        assert!(read_password(&p).is_err());
    }

    #[test]
    fn private_files_are_owner_only_and_identity_persists() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home {
            dir: dir.path().join("home"),
        };
        let a = home.identity().unwrap();
        let b = home.identity().unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(home.identity_path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        write_private(&home.token_path("console"), b"t", "token").unwrap();
        write_private(&home.token_path("console"), b"u", "token").unwrap();
        assert_eq!(std::fs::read(home.token_path("console")).unwrap(), b"u");
    }
}
