//! The authentication server role (`vodmesh-node --auth`): its state, without networking.
//!
//! - [`Server`]: logins (console and admin tokens), user administration, station enrollment and
//!   engine tokens. Methods take `&self` and `now_ms` and are synchronous; password checks are
//!   argon2id (tens of milliseconds), so the network layer calls them from
//!   `spawn_blocking`. Several may run at once: the only shared mutable state, the
//!   [`RateLimiter`], sits behind a mutex that is never held across a hash.
//! - [`key`]: the issuer key file; [`db`]: the subscriber database (redb); [`password`]: argon2id
//!   hashing; [`limit`]: login backoff per subscriber and per peer, token exchanges per peer
//!   (in memory).
//! - [`service`]: `/vodmesh/auth/1` on the auth station's director (requests run on the
//!   blocking pool); [`engines`]: a station's enrollment and its engines' tokens.
//! - [`Metrics`]: counters for the metrics endpoint (failed logins, throttled logins, ...);
//!   [`Config`]: hash cost, backoffs, lifetimes of tokens and station certificates, admins.
//! - Station certificates ([`vodmesh_proto::member`]): [`Server::enroll_station`] signs one
//!   with the roles of the enrollment token, [`Server::renew`] renews it, [`Server::revoke`]
//!   ends it; the auth station certifies itself ([`Server::certify`]). These, enrollment and
//!   engine tokens are in `stations`.
//!
//! Tokens themselves are [`vodmesh_proto::token`]: this server signs them; every director and
//! engine verifies them offline.

pub mod caller;
pub mod config;
pub mod db;
pub mod engines;
pub mod key;
pub mod limit;
pub mod metrics;
pub mod password;
pub mod service;
mod stations;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use libp2p::PeerId;
use tracing::{info, instrument, warn};
use vodmesh_proto::ProgramId;
use vodmesh_proto::ids::short_peer;
use vodmesh_proto::token::{
    AddrPrefix, Audience, Claims, IssueError, Issuer, IssuerKey, Rights, TokenError, TokenId,
    TrustedIssuers,
};

pub use caller::{Caller, User};
pub use config::Config;
pub use db::{DbError, EngineTaken, Enrolled, Enrollment, SubscriberDb, UserRecord};
pub use key::KeyError;
pub use limit::{Backoff, RateLimiter};
pub use metrics::Metrics;
pub use password::{HashError, HashParams};

/// File name of the subscriber database in the data dir.
pub const DB_FILE: &str = "auth.redb";
/// Longest user name, in bytes.
pub const MAX_USER_NAME: usize = 64;
/// Most engines one station may enroll.
pub const MAX_ENGINES: usize = 1024;
/// Password checks of logins from consoles that are no known device of the subscriber, at
/// once at most: fresh identities share this budget (and each its own backoff), so however
/// many guess, a subscriber's own consoles, checked outside it, always find a core.
pub const MAX_STRANGER_CHECKS: usize = 4;

/// Why an auth operation was refused or failed. The `Display` text is the one line a user sees
/// (after `error: `).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Too many failed logins for this subscriber or from this peer; nothing was checked.
    #[error("too many attempts, retry in {retry_in_s}s")]
    TooManyAttempts {
        /// Seconds until the next attempt is considered (rounded up).
        retry_in_s: u64,
    },
    /// This peer asked for more token exchanges (`Refresh`, `UrlToken`) than
    /// [`limit::Rate::EXCHANGES`] allows; nothing was checked.
    #[error("too many token requests from this console, retry in {retry_in_s}s")]
    TooManyRequests {
        /// Seconds until the next request is taken (rounded up).
        retry_in_s: u64,
    },
    /// Unknown user or wrong password (deliberately not saying which).
    #[error("wrong user name or password")]
    BadCredentials,
    /// The caller is neither an admin peer nor holds a valid admin token.
    #[error("not an admin: this needs an admin token or an admin peer id")]
    NotAdmin,
    /// Engine tokens go only to engines of enrolled stations.
    #[error("engine {0} is not enrolled: enroll its station with `vodmesh enroll`")]
    NotEnrolled(PeerId),
    /// An enrollment token enrolls once: a station that restarts renews the certificate it
    /// got (kept in its data directory) instead.
    #[error(
        "this enrollment token was already used: a station enrolls once and then renews its certificate; for a new enrollment ask an admin for a new token (`vodmesh enroll`)"
    )]
    EnrollmentUsed,
    /// An engine listed at enrollment or renewal is another station's (not revoked): an
    /// engine belongs to one station, and the other's would lose its engine tokens.
    #[error(transparent)]
    EngineTaken(Box<EngineTaken>),
    /// The station's membership was revoked (`vodmesh station revoke`).
    #[error("station {0} was revoked: an admin must enroll it again")]
    Revoked(PeerId),
    /// `vodmesh station revoke` of the auth station itself.
    #[error(
        "station {0} runs this auth server: revoking it would take every member's certificates and the swarm's content manager with it; stop the station instead"
    )]
    RevokeOwn(PeerId),
    /// `vodmesh station revoke` of a peer that never enrolled here.
    #[error(
        "no station {0} is enrolled with this auth server: nothing to revoke (give a station's director peer id)"
    )]
    NotAStation(PeerId),
    /// A user of that name exists.
    #[error("user {0} already exists")]
    UserExists(String),
    /// The user name is empty, too long or has control characters.
    #[error("invalid user name: {0}")]
    BadUserName(&'static str),
    /// The new password is too short or too long.
    #[error("unacceptable password: {0}")]
    BadPassword(&'static str),
    /// [`MAX_STRANGER_CHECKS`] logins from unknown consoles are being checked.
    #[error("too many logins at once; retry in a moment")]
    Busy,
    /// The subscriber is disabled (said only to whoever knows her password).
    #[error("subscriber {0} is disabled: ask an admin (`vodmesh user enable`)")]
    Disabled(String),
    /// A console token is refreshed only while its subscriber exists and is enabled.
    #[error("log in again: this console token's subscriber is disabled, removed or unknown")]
    LogInAgain,
    /// No subscriber of that name.
    #[error("no user {0}")]
    NoSuchUser(String),
    /// A station listed more engines than [`MAX_ENGINES`].
    #[error("too many engines: {0} (at most {MAX_ENGINES})")]
    TooManyEngines(usize),
    /// A presented token was refused.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A token could not be signed.
    #[error(transparent)]
    Issue(#[from] IssueError),
    /// The subscriber database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The subscriber database did not open.
    #[error("opening {}: {source}", path.display())]
    Open {
        /// Its file.
        path: std::path::PathBuf,
        /// Why.
        source: DbError,
    },
    /// The issuer key could not be loaded or created.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// argon2 failed (bad parameters, a corrupt stored hash).
    #[error(transparent)]
    Hash(#[from] HashError),
}

/// The auth server's state: issuer key, subscriber database, login backoff, metrics.
#[derive(Debug)]
pub struct Server {
    issuer: Issuer,
    /// Own key plus `--trust`: accepted for admin tokens.
    trusted: TrustedIssuers,
    /// Own key only: enrollment tokens are this server's alone.
    own: TrustedIssuers,
    db: SubscriberDb,
    limiter: Mutex<RateLimiter>,
    metrics: Arc<Metrics>,
    config: Config,
    /// A hash to check unknown users' passwords against, so an unknown name costs as much
    /// time as a known one and timing does not tell which names exist.
    decoy: String,
    /// Password checks of logins from unknown consoles under way ([`MAX_STRANGER_CHECKS`]).
    strangers: std::sync::atomic::AtomicUsize,
}

/// One of the [`MAX_STRANGER_CHECKS`], given back when dropped.
struct StrangerCheck<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for StrangerCheck<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn check_user_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::BadUserName("empty"));
    }
    if name.len() > MAX_USER_NAME {
        return Err(Error::BadUserName("longer than 64 bytes"));
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Error::BadUserName("contains spaces or control characters"));
    }
    Ok(())
}

impl Server {
    /// Opens the auth state under `data_dir`: the issuer key (`issuer.key`, created on first
    /// start) and the subscriber database (`auth.redb`).
    pub fn open(data_dir: &Path, config: Config) -> Result<Self, Error> {
        let issuer = key::load_or_create(data_dir)?;
        let path = data_dir.join(DB_FILE);
        let db = SubscriberDb::open(&path).map_err(|source| Error::Open { path, source })?;
        let own: TrustedIssuers = [issuer.public()].into_iter().collect();
        let trusted = config
            .trust
            .iter()
            .copied()
            .chain([issuer.public()])
            .collect();
        let decoy = password::hash("decoy password, never a user's", config.hash)?;
        info!(issuer = %issuer.public(), users = db.user_count()?, "auth server ready");
        Ok(Self {
            issuer,
            trusted,
            own,
            db,
            limiter: Mutex::new(RateLimiter::new(config.user_backoff, config.peer_backoff)),
            metrics: Arc::new(Metrics::default()),
            config,
            decoy,
            strangers: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The public key peers must trust (`node.json`'s `"issuer"`, `--trust`).
    pub fn issuer_key(&self) -> IssuerKey {
        self.issuer.public()
    }

    /// The counters, shared with the metrics endpoint.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The director admin claims must be addressed to ([`Config::station`]).
    pub fn station(&self) -> Option<PeerId> {
        self.config.station
    }

    /// The subscriber database.
    pub fn db(&self) -> &SubscriberDb {
        &self.db
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, RateLimiter> {
        // The limiter's state is consistent after any panic (plain counters): keep using it.
        self.limiter.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one of `peer`'s token exchanges ([`RateLimiter::exchange`]), before any check.
    fn exchange(&self, peer: PeerId, now_ms: u64) -> Result<(), Error> {
        let taken = self.limiter().exchange(peer, now_ms);
        taken.map_err(|wait_ms| Error::TooManyRequests {
            retry_in_s: wait_ms.div_ceil(1000).max(1),
        })
    }

    fn issue(
        &self,
        subject: PeerId,
        audience: Audience,
        rights: Rights,
        ttl: Duration,
        now_ms: u64,
    ) -> Result<Vec<u8>, Error> {
        self.issue_to(None, subject, audience, rights, ttl, now_ms)
    }

    /// As [`Server::issue`], naming the subscriber `user` in the token (console tokens, so
    /// that a refresh follows what became of her).
    fn issue_to(
        &self,
        user: Option<&str>,
        subject: PeerId,
        audience: Audience,
        rights: Rights,
        ttl: Duration,
        now_ms: u64,
    ) -> Result<Vec<u8>, Error> {
        let claims = self.claims(subject, audience, rights, ttl, now_ms);
        self.sign(Claims {
            user: user.map(str::to_string),
            ..claims
        })
    }

    /// Claims of a fresh token of this issuer, valid from `now_ms` for `ttl`.
    fn claims(
        &self,
        subject: PeerId,
        audience: Audience,
        rights: Rights,
        ttl: Duration,
        now_ms: u64,
    ) -> Claims {
        Claims {
            issuer: self.issuer.public(),
            subject,
            audience,
            rights,
            not_before_ms: now_ms,
            expires_ms: now_ms.saturating_add(ms(ttl)),
            id: TokenId::random(),
            user: None,
            roles: None,
            addr: None,
        }
    }

    /// Signs `claims` and counts the token.
    fn sign(&self, claims: Claims) -> Result<Vec<u8>, Error> {
        let token = self.issuer.sign(&claims)?;
        Metrics::inc(&self.metrics.tokens_issued);
        Ok(token)
    }

    /// Checks `user`'s password for a login from `peer`, under the backoff. Returns the record
    /// of a subscriber whose password is right. A console she logged in from before (a known
    /// device) is held only to its own backoff, not to the lock others' failed guesses put on
    /// her name, and is checked outside the budget unknown consoles share.
    fn authenticate(
        &self,
        user: &str,
        password: &str,
        peer: PeerId,
        now_ms: u64,
    ) -> Result<UserRecord, Error> {
        // A name that cannot exist is charged to the peer only, so junk names cannot fill the
        // subscriber table.
        let user_key = check_user_name(user).is_ok().then_some(user);
        let record = user_key.map(|u| self.db.user(u)).transpose()?.flatten();
        let known = record.as_ref().is_some_and(|r| r.devices.contains(&peer));
        // Bound first so the limiter's lock is released before anything else runs.
        let begun = (self.limiter()).begin(user_key.filter(|_| !known), peer, now_ms);
        let attempt = match begun {
            Ok(a) => a,
            Err(wait_ms) => {
                Metrics::inc(&self.metrics.logins_throttled);
                return Err(Error::TooManyAttempts {
                    retry_in_s: wait_ms.div_ceil(1000).max(1),
                });
            }
        };
        let _check = match known {
            true => None,
            false => match self.stranger_check() {
                Some(check) => Some(check),
                None => {
                    self.limiter().aborted(attempt);
                    Metrics::inc(&self.metrics.logins_throttled);
                    return Err(Error::Busy);
                }
            },
        };
        let ok = if password.len() > password::MAX_PASSWORD {
            false
        } else {
            let phc = record.as_ref().map_or(self.decoy.as_str(), |r| &r.password);
            match password::verify(password, phc) {
                Ok(ok) => ok && record.is_some(),
                Err(e) => {
                    self.limiter().aborted(attempt);
                    return Err(e.into());
                }
            }
        };
        match record {
            Some(record) if ok => {
                self.limiter().succeeded(attempt);
                if record.disabled {
                    return Err(Error::Disabled(user.to_string()));
                }
                if !known {
                    self.db.update_user(user, |r| {
                        r.devices.retain(|d| *d != peer);
                        r.devices.push(peer);
                        let over = r.devices.len().saturating_sub(db::MAX_DEVICES);
                        r.devices.drain(..over);
                    })?;
                }
                Metrics::inc(&self.metrics.logins_ok);
                Ok(record)
            }
            _ => {
                self.limiter().failed(attempt);
                Metrics::inc(&self.metrics.logins_failed);
                warn!("login failed");
                Err(Error::BadCredentials)
            }
        }
    }

    /// One of the [`MAX_STRANGER_CHECKS`], if one is free.
    fn stranger_check(&self) -> Option<StrangerCheck<'_>> {
        let taken = self
            .strangers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_STRANGER_CHECKS).then_some(n + 1)
            });
        taken.ok().map(|_| StrangerCheck(&self.strangers))
    }

    /// A subscriber logs in from `peer` (its console's peer id): returns a console token with
    /// the subscriber's rights, bound to `peer`.
    #[instrument(skip_all, fields(user = %user, peer = %short_peer(&peer)))]
    pub fn login(
        &self,
        user: &str,
        password: &str,
        peer: PeerId,
        now_ms: u64,
    ) -> Result<Vec<u8>, Error> {
        let record = self.authenticate(user, password, peer, now_ms)?;
        self.console_token(user, peer, record.rights, now_ms)
    }

    /// Exchanges a still-valid console token of this issuer, presented by its own subject, for
    /// a fresh one (a console refreshes before expiry, mid-playback), with the rights its
    /// subscriber has now; refused once she is disabled or removed, and past
    /// [`limit::Rate::EXCHANGES`] for `peer` (with [`Server::url_token`]).
    pub fn refresh(&self, token: &[u8], peer: PeerId, now_ms: u64) -> Result<Vec<u8>, Error> {
        self.exchange(peer, now_ms)?;
        let own: TrustedIssuers = [self.issuer_key()].into_iter().collect();
        let claims = own.verify(token, now_ms, Audience::Console, None, &peer)?;
        let user = claims.user.ok_or(Error::LogInAgain)?;
        let record = (self.db.user(&user)?)
            .filter(|r| !r.disabled)
            .ok_or(Error::LogInAgain)?;
        self.console_token(&user, peer, record.rights, now_ms)
    }

    /// Exchanges a still-valid console token of this issuer, presented by its own subject
    /// `peer`, for a URL token of the same subscriber (a standard player's `?token=`): for
    /// `program` if she may watch it (else every program she may), for `ttl` at most
    /// [`Config::url_ttl`], from client addresses in `addr` if given. Refused once she is
    /// disabled or removed, as a refresh is.
    pub fn url_token(
        &self,
        token: &[u8],
        peer: PeerId,
        (program, addr): (Option<ProgramId>, Option<AddrPrefix>),
        ttl: Option<Duration>,
        now_ms: u64,
    ) -> Result<Vec<u8>, Error> {
        self.exchange(peer, now_ms)?;
        let own: TrustedIssuers = [self.issuer_key()].into_iter().collect();
        let claims = own.verify(token, now_ms, Audience::Console, program.as_ref(), &peer)?;
        let user = claims.user.ok_or(Error::LogInAgain)?;
        let record = (self.db.user(&user)?)
            .filter(|r| !r.disabled)
            .ok_or(Error::LogInAgain)?;
        let rights = match program {
            Some(p) if record.rights.allows(&p) => Rights::Programs(vec![p]),
            Some(_) => return Err(TokenError::NotEntitled.into()),
            None => record.rights,
        };
        let ttl = ttl.map_or(self.config.url_ttl, |t| t.min(self.config.url_ttl));
        let claims = self.claims(peer, Audience::Url, rights, ttl, now_ms);
        info!(%user, program = ?program, addr = ?addr, "URL token issued");
        self.sign(Claims {
            user: Some(user),
            addr,
            ..claims
        })
    }

    /// A console token for subscriber `user` on console `peer`, with `rights`.
    fn console_token(
        &self,
        user: &str,
        peer: PeerId,
        rights: Rights,
        now_ms: u64,
    ) -> Result<Vec<u8>, Error> {
        let ttl = self.config.console_ttl;
        self.issue_to(Some(user), peer, Audience::Console, rights, ttl, now_ms)
    }

    /// An admin subscriber logs in from `peer`: returns an admin token bound to `peer`.
    /// A right password of a non-admin user gets [`Error::NotAdmin`].
    #[instrument(skip_all, fields(user = %user, peer = %short_peer(&peer)))]
    pub fn admin_login(
        &self,
        user: &str,
        password: &str,
        peer: PeerId,
        now_ms: u64,
    ) -> Result<Vec<u8>, Error> {
        let record = self.authenticate(user, password, peer, now_ms)?;
        if !record.admin {
            Metrics::inc(&self.metrics.admin_refused);
            return Err(Error::NotAdmin);
        }
        self.issue(
            peer,
            Audience::Admin,
            Rights::All,
            self.config.admin_ttl,
            now_ms,
        )
    }

    /// Whether `caller` may administer: an admin peer id, or a valid admin token of its own.
    fn require_admin(&self, caller: Caller<'_>, now_ms: u64) -> Result<(), Error> {
        if self.config.admins.contains(&caller.peer) {
            return Ok(());
        }
        let refused = match caller.token {
            None => Error::NotAdmin,
            Some(token) => {
                match self
                    .trusted
                    .verify(token, now_ms, Audience::Admin, None, &caller.peer)
                {
                    Ok(_) => return Ok(()),
                    Err(e) => e.into(),
                }
            }
        };
        Metrics::inc(&self.metrics.admin_refused);
        warn!(peer = %short_peer(&caller.peer), cause = %refused, "admin operation refused");
        Err(refused)
    }

    /// Adds a subscriber; only an admin may.
    #[instrument(skip_all, fields(user = %name, by = %short_peer(&caller.peer)))]
    pub fn add_user(
        &self,
        caller: Caller<'_>,
        name: &str,
        password: &str,
        user: User,
        now_ms: u64,
    ) -> Result<(), Error> {
        self.require_admin(caller, now_ms)?;
        check_user_name(name)?;
        if password.chars().count() < password::MIN_PASSWORD {
            return Err(Error::BadPassword("shorter than 8 characters"));
        }
        if password.len() > password::MAX_PASSWORD {
            return Err(Error::BadPassword("longer than 1024 bytes"));
        }
        let record = UserRecord {
            password: password::hash(password, self.config.hash)?,
            admin: user.admin,
            rights: user.rights,
            created_ms: now_ms,
            devices: Vec::new(),
            disabled: false,
        };
        if !self.db.insert_new_user(name, &record)? {
            return Err(Error::UserExists(name.to_string()));
        }
        info!(admin = record.admin, "user added");
        Ok(())
    }

    /// Disables (`disabled`) or enables again the subscriber `name`; only an admin may. Her
    /// logins are refused, and her console tokens are not refreshed, so a console playing
    /// stops at its token's expiry at the latest.
    #[instrument(skip_all, fields(user = %name, by = %short_peer(&caller.peer)))]
    pub fn disable_user(
        &self,
        caller: Caller<'_>,
        name: &str,
        disabled: bool,
        now_ms: u64,
    ) -> Result<(), Error> {
        self.require_admin(caller, now_ms)?;
        if !self.db.update_user(name, |r| r.disabled = disabled)? {
            return Err(Error::NoSuchUser(name.to_string()));
        }
        info!(disabled, "user changed");
        Ok(())
    }

    /// Removes the subscriber `name`; only an admin may. As [`Server::disable_user`], and the
    /// name is free again.
    #[instrument(skip_all, fields(user = %name, by = %short_peer(&caller.peer)))]
    pub fn remove_user(&self, caller: Caller<'_>, name: &str, now_ms: u64) -> Result<(), Error> {
        self.require_admin(caller, now_ms)?;
        if !self.db.remove_user(name)? {
            return Err(Error::NoSuchUser(name.to_string()));
        }
        info!("user removed");
        Ok(())
    }
}

#[cfg(test)]
mod exchange_tests;
#[cfg(test)]
mod tests;
