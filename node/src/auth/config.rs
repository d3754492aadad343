//! How the auth server behaves: hash cost, backoffs, token and certificate lifetimes, admins.

use std::time::Duration;

use libp2p::PeerId;
use vodmesh_proto::token::IssuerKey;

use super::{Backoff, HashParams};

/// How the auth server behaves.
#[derive(Clone, Debug)]
pub struct Config {
    /// argon2id cost of new password hashes.
    pub hash: HashParams,
    /// Login backoff per subscriber.
    pub user_backoff: Backoff,
    /// Login backoff per peer.
    pub peer_backoff: Backoff,
    /// Lifetime of console tokens.
    pub console_ttl: Duration,
    /// Longest lifetime of URL tokens (`vodmesh-console url`), and their default.
    pub url_ttl: Duration,
    /// Lifetime of engine tokens (engines refresh them).
    pub engine_ttl: Duration,
    /// Lifetime of admin tokens.
    pub admin_ttl: Duration,
    /// Lifetime of enrollment tokens.
    pub enroll_ttl: Duration,
    /// Lifetime of station certificates (stations renew them at half their lifetime).
    pub member_ttl: Duration,
    /// Peers that are admins without a token: the station's own identity and `--admin` peers.
    pub admins: Vec<PeerId>,
    /// Other issuers whose admin tokens this server accepts (`--trust`); its own is implied.
    pub trust: Vec<IssuerKey>,
    /// This station's director: operators address the admin claims of their requests to it
    /// (`vodmesh user add`, `vodmesh enroll`). Unset, such a claim is refused, and an admin
    /// request must come from an admin peer or carry an admin token.
    pub station: Option<PeerId>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            hash: HashParams::MODERATE,
            user_backoff: Backoff::SUBSCRIBER,
            peer_backoff: Backoff::PEER,
            console_ttl: Duration::from_secs(12 * 3600),
            url_ttl: Duration::from_secs(6 * 3600),
            engine_ttl: Duration::from_secs(3600),
            admin_ttl: Duration::from_secs(3600),
            enroll_ttl: Duration::from_secs(24 * 3600),
            member_ttl: Duration::from_secs(3600),
            admins: Vec::new(),
            trust: Vec::new(),
            station: None,
        }
    }
}
