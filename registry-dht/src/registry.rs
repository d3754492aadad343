//! The registry as the director's event loop drives it.
//!
//! A director owns one `kad::Behaviour<PersistentStore>` inside its swarm. Everything else in
//! the node talks to it through a [`RegistryHandle`] (cheap to clone, async). The handle sends
//! a [`Command`] over a bounded channel; the director's loop passes it to
//! [`Registry::execute`], which starts the Kademlia query, and passes every Kademlia event to
//! [`Registry::on_event`], which validates inbound records, collects query results and answers
//! the waiting caller.

use std::collections::{HashMap, HashSet};

use libp2p::kad::store::RecordStore;
use libp2p::kad::{
    self, AddProviderOk, Event, GetClosestPeersOk, GetProvidersOk, GetRecordOk, InboundRequest,
    PutRecordOk, QueryId, QueryResult, QueryStats, Quorum, Record,
};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{oneshot, watch};
use vodmesh_proto::codec;
use vodmesh_proto::net::{dialable, is_tcp, without_peer};
use vodmesh_proto::signed::Signed;
use vodmesh_proto::station::StationRecord;
use vodmesh_proto::time::now_ms;

pub use crate::config::{PROTOCOL, PROVIDER_TTL_FACTOR, RegistryConfig, behaviour, refresh};
pub use crate::handle::{Command, Found, FoundRecords, RegistryError, RegistryHandle};
use crate::keys::{RecordKind, expiry_of, kind_of};
use crate::members::Members;
pub use crate::stats::{HoldersTrace, Inbound, RegistryStats};
use crate::store::PersistentStore;
use crate::validate::{self, check_provider, check_record};

enum Pending {
    Put(oneshot::Sender<Result<(), RegistryError>>),
    Station {
        best: Option<Box<(StationRecord, Signed)>>,
        reply: oneshot::Sender<Option<(StationRecord, Signed)>>,
    },
    Holders(watch::Sender<Found>),
    Catalog(watch::Sender<FoundRecords>),
    Closest(oneshot::Sender<Vec<PeerId>>),
    Traced {
        trace: HoldersTrace,
        reply: oneshot::Sender<HoldersTrace>,
    },
    /// A peer met on the network whose station record is looked up before it may enter the
    /// routing table (a closed registry).
    Admit {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    },
}

/// Most admission look-ups in flight: a flood of strangers cannot start more.
const MAX_ADMITTING: usize = 256;

/// Query bookkeeping: which caller waits for which Kademlia query; and who is admitted.
pub struct Registry {
    pending: HashMap<QueryId, Pending>,
    stats: RegistryStats,
    members: Members,
    /// Peers whose admission look-up runs.
    admitting: HashSet<PeerId>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// An empty registry that admits everyone ([`Members::open`]).
    pub fn new() -> Self {
        Self::with_members(Members::open())
    }

    /// An empty registry that admits as `members` says.
    pub fn with_members(members: Members) -> Self {
        Self {
            pending: HashMap::new(),
            stats: RegistryStats::default(),
            members,
            admitting: HashSet::new(),
        }
    }

    /// Who is admitted, as far as this registry has seen.
    pub fn members(&self) -> &Members {
        &self.members
    }

    /// A registry server `peer` announced `addrs`: they enter the routing table if it is
    /// admitted; in a closed registry a stranger's station record is looked up first, and
    /// it enters once the record shows a member.
    pub fn learn(
        &mut self,
        kad: &mut kad::Behaviour<PersistentStore>,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    ) {
        if self.members.admits(&peer, now_ms()) {
            for addr in addrs {
                kad.add_address(&peer, addr);
            }
        } else if self.admitting.len() < MAX_ADMITTING && self.admitting.insert(peer) {
            let id = kad.get_record(RecordKind::Station(peer).key());
            self.started(id, Pending::Admit { peer, addrs });
        }
    }

    /// Checks a station record for membership; a member's director enters the routing table
    /// at the (TCP, dialable) addresses its record gives.
    fn admit(&mut self, kad: &mut kad::Behaviour<PersistentStore>, rec: &StationRecord) -> bool {
        match self.members.admit(rec, now_ms()) {
            Ok(Some(_)) => {
                for addr in rec.addrs.iter().filter(|a| dialable(a) && is_tcp(a)) {
                    kad.add_address(&rec.director, without_peer(addr));
                }
                true
            }
            Ok(None) => true,
            Err(e) => {
                tracing::debug!(station = %rec.director, error = %e, "not a member");
                false
            }
        }
    }

    /// Whether a value record that passed [`check_record`] comes from a member: a station
    /// record of a member, or a catalog record of a certified content manager.
    fn admitted(
        &mut self,
        kad: &mut kad::Behaviour<PersistentStore>,
        record: &Record,
        kind: RecordKind,
    ) -> bool {
        let now = now_ms();
        match kind {
            RecordKind::Station(_) => match validate::station_from_value(&record.value, now) {
                Ok((rec, _)) => self.admit(kad, &rec),
                Err(_) => false,
            },
            RecordKind::Catalog(_) => codec::decode::<Signed>(&record.value, validate::MAX_VALUE)
                .ok()
                .and_then(|s| vodmesh_proto::catalog::CatalogRecord::verify(&s).ok())
                .is_some_and(|c| self.members.is_content_manager(&c.content_manager, now)),
            RecordKind::Program(_) => false,
        }
    }

    /// Inbound record counters, and the queries started.
    pub fn stats(&self) -> RegistryStats {
        self.stats
    }

    /// Keeps `pending` until query `id` ends, and counts it started.
    fn started(&mut self, id: QueryId, pending: Pending) {
        self.stats.queries_started += 1;
        self.pending.insert(id, pending);
    }

    /// Starts the Kademlia work for one command.
    pub fn execute(&mut self, kad: &mut kad::Behaviour<PersistentStore>, cmd: Command) {
        match cmd {
            Command::PutStation { record, reply } | Command::PutCatalog { record, reply } => {
                self.put(kad, record, reply);
            }
            Command::GetStation { director, reply } => {
                let id = kad.get_record(RecordKind::Station(director).key());
                self.started(id, Pending::Station { best: None, reply });
            }
            Command::Provide { program, reply } => {
                match kad.start_providing(RecordKind::Program(program).key()) {
                    Ok(id) => {
                        self.started(id, Pending::Put(reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(RegistryError::Store(e.to_string())));
                    }
                }
            }
            Command::StopProviding { program } => {
                kad.stop_providing(&RecordKind::Program(program).key());
            }
            Command::Holders { program, found } => {
                let id = kad.get_providers(RecordKind::Program(program).key());
                self.started(id, Pending::Holders(found));
            }
            Command::GetCatalog { program, found } => {
                let id = kad.get_record(RecordKind::Catalog(program).key());
                self.started(id, Pending::Catalog(found));
            }
            Command::Closest { key, reply } => {
                let id = kad.get_closest_peers(key);
                self.started(id, Pending::Closest(reply));
            }
            Command::RoutingTable { reply } => {
                let peers = kad
                    .kbuckets()
                    .flat_map(|b| b.iter().map(|e| *e.node.key.preimage()).collect::<Vec<_>>())
                    .collect();
                let _ = reply.send(peers);
            }
            Command::Bootstrap => match kad.bootstrap() {
                Ok(_) => self.stats.queries_started += 1,
                Err(e) => tracing::debug!(error = %e, "registry bootstrap skipped"),
            },
            Command::TraceHolders { program, reply } => {
                let id = kad.get_providers(RecordKind::Program(program).key());
                self.started(
                    id,
                    Pending::Traced {
                        trace: HoldersTrace::default(),
                        reply,
                    },
                );
            }
        }
    }

    fn put(
        &mut self,
        kad: &mut kad::Behaviour<PersistentStore>,
        signed: Signed,
        reply: oneshot::Sender<Result<(), RegistryError>>,
    ) {
        let record = match record_of(&signed) {
            Ok(record) => record,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        // This director's own record: it knows its own membership (and roles) from it, as
        // it knows anyone else's, also after a restart.
        if let Ok(rec) = StationRecord::verify(&signed, now_ms()) {
            self.admit(kad, &rec);
        }
        match kad.put_record(record, Quorum::One) {
            Ok(id) => {
                self.started(id, Pending::Put(reply));
            }
            Err(e) => {
                let _ = reply.send(Err(RegistryError::Store(e.to_string())));
            }
        }
    }

    /// Handles one Kademlia event: validates inbound records, advances queries.
    pub fn on_event(&mut self, kad: &mut kad::Behaviour<PersistentStore>, event: Event) {
        if let Event::InboundRequest { request } = &event {
            self.stats.inbound.count(request);
        }
        match event {
            Event::InboundRequest {
                request:
                    InboundRequest::PutRecord {
                        source,
                        record: Some(record),
                        ..
                    },
            } => match check_record(&record, now_ms()) {
                Ok(kind) if !self.admitted(kad, &record, kind) => {
                    self.stats.refused += 1;
                    tracing::info!(%source, "refused a registry record: not from a member");
                }
                Ok(RecordKind::Catalog(program))
                    if validate::other_owner(
                        &record,
                        kad.store_mut().get(&record.key).as_deref(),
                    ) =>
                {
                    self.stats.refused += 1;
                    tracing::info!(%source, %program, "refused a catalog record: the program is another content manager's");
                }
                Ok(RecordKind::Station(_))
                    if validate::older(
                        &record,
                        kad.store_mut().get(&record.key).as_deref(),
                        now_ms(),
                    ) =>
                {
                    tracing::debug!(%source, "kept the newer copy of a station record");
                }
                Ok(_) => match kad.store_mut().put(record) {
                    Ok(()) => self.stats.accepted += 1,
                    Err(e) => tracing::debug!(%source, error = %e, "registry store full"),
                },
                Err(validate::Invalid::Expired) => {
                    tracing::debug!(%source, "dropped a late copy of an expired station record");
                }
                Err(e) => {
                    self.stats.refused += 1;
                    tracing::info!(%source, error = %e, "refused a registry record");
                }
            },
            Event::InboundRequest {
                request:
                    InboundRequest::AddProvider {
                        record: Some(record),
                    },
            } => match check_provider(&record, None) {
                Ok(()) if !self.members.admits(&record.provider, now_ms()) => {
                    self.stats.refused += 1;
                    tracing::info!(provider = %record.provider, "refused a provider record: not a member");
                }
                Ok(()) => match kad.store_mut().add_provider(record) {
                    Ok(()) => self.stats.accepted += 1,
                    Err(e) => tracing::debug!(error = %e, "registry provider store full"),
                },
                Err(e) => {
                    self.stats.refused += 1;
                    tracing::info!(error = %e, "refused a provider record");
                }
            },
            Event::OutboundQueryProgressed {
                id,
                result,
                step,
                stats,
            } => {
                if self.progress(kad, id, result, step.last, &stats)
                    && let Some(mut query) = kad.query_mut(&id)
                {
                    query.finish();
                }
            }
            _ => {}
        }
    }

    /// Takes one step of a query's results; returns true when the caller has its answer and
    /// the rest of the query can be cut short.
    fn progress(
        &mut self,
        kad: &mut kad::Behaviour<PersistentStore>,
        id: QueryId,
        result: QueryResult,
        last: bool,
        stats: &QueryStats,
    ) -> bool {
        let Some(pending) = self.pending.remove(&id) else {
            return false;
        };
        let pending = match (pending, result) {
            (Pending::Put(reply), QueryResult::PutRecord(r)) => {
                // Stored locally already; a replication shortfall (a lone director) is not
                // an error for the caller.
                if let Err(e) = &r {
                    tracing::debug!(error = %e, "registry record replicated to fewer peers than asked");
                }
                let _: Option<PutRecordOk> = r.ok();
                let _ = reply.send(Ok(()));
                return false;
            }
            (Pending::Put(reply), QueryResult::StartProviding(r)) => {
                if let Err(e) = &r {
                    tracing::debug!(error = %e, "provider record announced to fewer peers than asked");
                }
                let _: Option<AddProviderOk> = r.ok();
                let _ = reply.send(Ok(()));
                return false;
            }
            (Pending::Station { mut best, reply }, QueryResult::GetRecord(r)) => {
                if let Ok(GetRecordOk::FoundRecord(found)) = r
                    && let Ok((rec, signed)) =
                        validate::station_from_value(&found.record.value, now_ms())
                    && best.as_ref().is_none_or(|b| rec.issued_ms > b.0.issued_ms)
                    && self.admit(kad, &rec)
                {
                    best = Some(Box::new((rec, signed)));
                }
                // The first valid record answers: a station republishes every third of its
                // TTL, so any unexpired copy is fresh enough, and waiting for the rest of the
                // query means waiting out its timeout whenever a peer on the way is
                // unreachable (a partition).
                if last || best.is_some() {
                    let _ = reply.send(best.map(|b| *b));
                    return !last;
                }
                Pending::Station { best, reply }
            }
            (Pending::Catalog(found), QueryResult::GetRecord(r)) => {
                let valid = if let Ok(GetRecordOk::FoundRecord(rec)) = r
                    && let Ok(kind) = check_record(&rec.record, now_ms())
                    && self.admitted(kad, &rec.record, kind)
                    && let Ok(signed) =
                        codec::decode::<Signed>(&rec.record.value, validate::MAX_VALUE)
                {
                    Some(signed)
                } else {
                    None
                };
                found.send_modify(|f| {
                    if let Some(signed) = valid
                        && !f.records.contains(&signed)
                    {
                        f.records.push(signed);
                    }
                    f.done = last;
                });
                // Nobody waits any more (the caller settled for what was found): the rest is
                // cut short.
                if last || found.is_closed() {
                    return !last;
                }
                Pending::Catalog(found)
            }
            (Pending::Holders(found), QueryResult::GetProviders(r)) => {
                found.send_modify(|f| {
                    if let Ok(GetProvidersOk::FoundProviders { providers, .. }) = r {
                        f.holders.extend(providers);
                    }
                    f.done = last;
                });
                // Nobody waits any more (a caller's patience ran out): the rest is cut short.
                if last || found.is_closed() {
                    return !last;
                }
                Pending::Holders(found)
            }
            (Pending::Traced { mut trace, reply }, QueryResult::GetProviders(r)) => {
                if let Ok(GetProvidersOk::FoundProviders { providers, .. }) = r
                    && !providers.is_empty()
                {
                    if stats.num_requests() == 0 {
                        trace.local = true;
                    } else if trace.requests_to_holder.is_none() {
                        trace.requests_to_holder = Some(stats.num_requests());
                        trace.time_to_holder = stats.duration();
                    }
                    trace.holders.extend(providers);
                }
                if last {
                    trace.requests = stats.num_requests();
                    trace.successes = stats.num_successes();
                    trace.failures = stats.num_failures();
                    trace.duration = stats.duration();
                    let _ = reply.send(trace);
                    return false;
                }
                Pending::Traced { trace, reply }
            }
            (Pending::Admit { peer, addrs }, QueryResult::GetRecord(r)) => {
                let member = match r {
                    Ok(GetRecordOk::FoundRecord(found)) => {
                        validate::station_from_value(&found.record.value, now_ms())
                            .is_ok_and(|(rec, _)| rec.director == peer && self.admit(kad, &rec))
                    }
                    _ => false,
                };
                if member || last {
                    self.admitting.remove(&peer);
                    if member {
                        for addr in addrs {
                            kad.add_address(&peer, addr);
                        }
                    }
                    return member && !last;
                }
                Pending::Admit { peer, addrs }
            }
            (Pending::Closest(reply), QueryResult::GetClosestPeers(r)) => {
                let peers = match r {
                    Ok(GetClosestPeersOk { peers, .. }) => peers,
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                let _ = reply.send(peers.into_iter().map(|p| p.peer_id).collect());
                return false;
            }
            (pending, other) => {
                tracing::debug!(?other, "unexpected registry query result");
                if last {
                    return false;
                }
                pending
            }
        };
        if !last {
            self.pending.insert(id, pending);
        }
        false
    }
}

/// The Kademlia record a signed station or catalog record is stored as: its key, its encoded
/// value, and (for a station record) its expiry; refused when it would not pass validation.
pub fn record_of(signed: &Signed) -> Result<Record, RegistryError> {
    let key = kind_of(signed)
        .ok_or_else(|| RegistryError::Refused("not a station or catalog record".into()))?
        .key();
    let mut record = Record::new(key, codec::encode(signed));
    check_record(&record, now_ms()).map_err(|e| RegistryError::Refused(e.to_string()))?;
    record.expires = expiry_of(signed);
    Ok(record)
}

/// Whether `store` holds a live record for `kind` (used by tests and status pages).
pub fn holds(store: &PersistentStore, kind: RecordKind) -> bool {
    store
        .get(&kind.key())
        .is_some_and(|r| !r.is_expired(std::time::Instant::now()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn provider_records_live_thirty_station_ttls_unless_told_otherwise() {
        let mut config = RegistryConfig::default();
        assert_eq!(config.republish_interval(), Duration::from_secs(20));
        assert_eq!(config.provider_ttl(), Duration::from_secs(1800));
        assert_eq!(
            config.provider_republish_interval(),
            Duration::from_secs(600)
        );
        // A short station TTL (the tests' 6 s) shortens provider records with it.
        config.record_ttl = Duration::from_secs(6);
        assert_eq!(config.provider_ttl(), Duration::from_secs(180));
        config.provider_ttl = Some(Duration::from_secs(90));
        assert_eq!(config.provider_ttl(), Duration::from_secs(90));
        assert_eq!(
            config.provider_republish_interval(),
            Duration::from_secs(30)
        );
        assert_eq!(config.republish_interval(), Duration::from_secs(2));
    }

    /// A station's record as issued at `issued_ms` (by `key`, its director's), as the
    /// Kademlia record a peer puts.
    fn station_record(key: &libp2p::identity::Keypair, issued_ms: u64) -> Record {
        let rec = validate::bare_station(key, (issued_ms, now_ms() + 60_000));
        Record::new(
            RecordKind::Station(rec.director).key(),
            codec::encode(&rec.sign(key)),
        )
    }

    /// The issue time of the station record `store` holds under `key`.
    fn stored_issued(kad: &mut kad::Behaviour<PersistentStore>, key: &kad::RecordKey) -> u64 {
        let stored = kad.store_mut().get(key).map(|r| r.value.clone());
        let value = stored.unwrap_or_default();
        validate::station_from_value(&value, now_ms()).map_or(0, |(r, _)| r.issued_ms)
    }

    #[test]
    fn an_older_copy_of_a_station_record_does_not_replace_a_newer_one() {
        let local = PeerId::random();
        let store = PersistentStore::in_memory(local, &crate::StoreLimits::default());
        let mut kad = behaviour(local, store, &RegistryConfig::default(), true);
        let mut registry = Registry::new();
        let key = libp2p::identity::Keypair::generate_ed25519();
        let source = key.public().to_peer_id();
        let mut put = |kad: &mut kad::Behaviour<PersistentStore>, record: Record| {
            let request = InboundRequest::PutRecord {
                source,
                connection: libp2p::swarm::ConnectionId::new_unchecked(0),
                record: Some(record),
            };
            registry.on_event(kad, Event::InboundRequest { request });
        };
        let (older, newer) = (station_record(&key, 1_000), station_record(&key, 2_000));
        let at = newer.key.clone();
        // The newer copy came first: the older one, late, is dropped.
        put(&mut kad, newer.clone());
        put(&mut kad, older.clone());
        assert_eq!(stored_issued(&mut kad, &at), 2_000);
        // In order, the newer replaces the older (the control).
        kad.store_mut().remove(&at);
        put(&mut kad, older);
        assert_eq!(stored_issued(&mut kad, &at), 1_000);
        put(&mut kad, newer);
        assert_eq!(stored_issued(&mut kad, &at), 2_000);
    }

    #[test]
    fn a_lone_director_does_not_refresh_and_one_with_a_peer_does() {
        let local = PeerId::random();
        let store = PersistentStore::in_memory(local, &crate::StoreLimits::default());
        let config = RegistryConfig {
            periodic_bootstrap: None,
            ..RegistryConfig::default()
        };
        let mut kad = behaviour(local, store, &config, true);
        refresh(&mut kad);
        assert_eq!(
            kad.iter_queries().count(),
            0,
            "nobody to ask: no query, no warning"
        );
        let addr = "/ip4/127.0.0.1/tcp/4001".parse().expect("a valid address");
        kad.add_address(&PeerId::random(), addr);
        refresh(&mut kad);
        assert_eq!(
            kad.iter_queries().count(),
            1,
            "a bootstrap of the routing table"
        );
    }
}
