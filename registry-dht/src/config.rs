//! How the registry's Kademlia is built and tuned: its protocol name, the TTLs and intervals
//! of a swarm whose load changes by the second ([`RegistryConfig`]), and the behaviour itself
//! ([`behaviour`]), in server mode for directors, client mode for consoles, and with manual
//! routing table inserts in a closed swarm.

use std::num::NonZeroUsize;
use std::time::Duration;

use libp2p::kad::{self, Mode, StoreInserts};
use libp2p::{PeerId, StreamProtocol};

use crate::store::PersistentStore;

/// The Kademlia protocol name of the vodmesh registry (a private DHT, not the IPFS one).
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/vodmesh/kad/1");

/// How much longer a provider record lives than a station record, unless
/// [`RegistryConfig::provider_ttl`] says otherwise.
///
/// A station re-provides every program it holds every third of the provider TTL: with the
/// station record's 60 s, a station caching 5000 programs would start 250 provider lookups a
/// second. Thirty times the station TTL (30 min, re-provided every 10 min) brings that to 8 a
/// second. The price is that a stopped station stays listed as a provider for up to that long,
/// which costs nothing but a lookup: a director uses a provider only through its station
/// record (`node/src/director/miss.rs`, `gather`: `get_station(holder)` returns `None`
/// for a station whose record expired, and the holder is skipped), and station records still
/// expire after one station TTL. `vodmesh sim --programs-per-station` measures the load.
pub const PROVIDER_TTL_FACTOR: u32 = 30;

/// How long a query waits for one peer's answer before it goes on without it.
pub const PEER_ANSWER_TIMEOUT: Duration = Duration::from_secs(4);

/// How long a catalog or holders look-up that has found what its caller needs waits for the
/// rest ([`crate::RegistryHandle::get_catalog`], [`crate::RegistryHandle::holders_enough`]):
/// this director's own copies are found at once and the reachable peers answer within a few
/// round trips, but a peer on the way that never answers (hung, its link cut) holds the
/// whole look-up for [`PEER_ANSWER_TIMEOUT`]. Without the bound a play's start and every miss
/// at any station waited that out while one station anywhere was cut off (the chaos run).
pub const SETTLE_WITHIN: Duration = Duration::from_secs(1);

/// How the registry's Kademlia is tuned: a swarm whose load changes by the second, not kad's
/// 48 h defaults.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// How long a station record lives without being republished (catalog records live the
    /// provider TTL).
    pub record_ttl: Duration,
    /// How long a provider record (`program/<id>`) lives without being re-provided; `None`:
    /// [`PROVIDER_TTL_FACTOR`] times `record_ttl`. See [`RegistryConfig::provider_ttl`].
    pub provider_ttl: Option<Duration>,
    /// How long one query may take.
    pub query_timeout: Duration,
    /// How many directors store each record.
    pub replication: NonZeroUsize,
    /// How often a director refreshes its routing table with a Kademlia bootstrap (`None`:
    /// only when it joins).
    pub periodic_bootstrap: Option<Duration>,
    /// How often a director sends every record it stores on to the directors now closest to
    /// its key (`None`: never). Owners republish their station and provider records every
    /// third of the TTL anyway, so this only matters for catalog records, which are written
    /// once: it moves them to directors that joined closer to their key. Each record costs a
    /// whole lookup plus k stores, so it runs far less often than republication.
    pub replication_interval: Option<Duration>,
    /// A closed swarm: only peers the director admits ([`Registry::learn`]: members, once
    /// their station record is verified) enter its routing table, never a peer just because
    /// it connected or answered a query (Kademlia's manual bucket inserts).
    pub members_only: bool,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            record_ttl: Duration::from_secs(60),
            provider_ttl: None,
            query_timeout: Duration::from_secs(10),
            replication: NonZeroUsize::new(20).unwrap_or(NonZeroUsize::MIN),
            periodic_bootstrap: Some(Duration::from_secs(30)),
            replication_interval: Some(Duration::from_secs(600)),
            members_only: false,
        }
    }
}

impl RegistryConfig {
    /// How often a director republishes its own records: a third of the TTL, so two
    /// republications can be lost before the record expires.
    pub fn republish_interval(&self) -> Duration {
        self.record_ttl / 3
    }

    /// How long a provider record lives: `provider_ttl`, else [`PROVIDER_TTL_FACTOR`] times
    /// the station record's TTL.
    pub fn provider_ttl(&self) -> Duration {
        self.provider_ttl
            .unwrap_or_else(|| self.record_ttl.saturating_mul(PROVIDER_TTL_FACTOR))
    }

    /// How often a director re-provides every program it holds: a third of the provider TTL,
    /// for the same reason as [`RegistryConfig::republish_interval`].
    pub fn provider_republish_interval(&self) -> Duration {
        self.provider_ttl() / 3
    }
}

/// Builds the Kademlia behaviour of a director (`server == true`) or of a client peer.
pub fn behaviour(
    local: PeerId,
    store: PersistentStore,
    config: &RegistryConfig,
    server: bool,
) -> kad::Behaviour<PersistentStore> {
    let mut cfg = kad::Config::new(PROTOCOL);
    // A query never outlives a republish interval (at least 2 s): a peer that stopped
    // answering (a partition, a dead link) holds up every query that meets it until then.
    let query_timeout = config
        .query_timeout
        .min(config.republish_interval().max(Duration::from_secs(2)));
    cfg.set_query_timeout(query_timeout)
        // One peer's answer: kad waits 10 s by default, and a station that hangs (its
        // connection open, nothing answering) held every query that met it, in a small
        // swarm all of them, that long. Registry messages are small records answered in
        // milliseconds; a peer silent for this long is passed over.
        .set_substreams_timeout(PEER_ANSWER_TIMEOUT)
        .set_replication_factor(config.replication)
        // Station records carry their own, shorter expiry; catalog records live the provider
        // TTL, put again by their content manager and every holder (issue 25).
        .set_record_ttl(Some(config.provider_ttl()))
        .set_provider_record_ttl(Some(config.provider_ttl()))
        // Owners republish their own records with fresh signatures and load figures; kad's
        // own re-publication of values would only resend stale copies.
        .set_publication_interval(None)
        .set_provider_publication_interval(Some(config.provider_republish_interval()))
        .set_replication_interval(config.replication_interval)
        .set_record_filtering(StoreInserts::FilterBoth)
        .set_periodic_bootstrap_interval(config.periodic_bootstrap)
        .set_max_packet_size(256 * 1024);
    if config.members_only {
        cfg.set_kbucket_inserts(kad::BucketInserts::Manual);
    }
    let mut kad = kad::Behaviour::with_config(local, store, cfg);
    kad.set_mode(Some(if server { Mode::Server } else { Mode::Client }));
    kad
}

/// Refreshes the routing table with a Kademlia bootstrap when it has a peer to ask: kad's
/// periodic bootstrap without its warning on a first station that is alone (normal). A loop
/// calling this every [`RegistryConfig::periodic_bootstrap`] builds its behaviour with that
/// field `None`; kad still bootstraps by itself when a peer enters a table of fewer than k.
pub fn refresh(kad: &mut kad::Behaviour<PersistentStore>) {
    if kad.kbuckets().any(|b| b.num_entries() > 0)
        && let Err(e) = kad.bootstrap()
    {
        tracing::debug!(error = %e, "registry refresh skipped");
    }
}
