//! What a registry server counts: inbound records accepted and refused, and the Kademlia
//! requests other peers sent it, by kind (what serving the registry costs a director); and
//! what one holders lookup cost ([`HoldersTrace`]).

use std::collections::HashSet;
use std::time::Duration;

use libp2p::PeerId;
use libp2p::kad::InboundRequest;

/// Counters for the metrics endpoint and the tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct RegistryStats {
    /// Inbound records stored after validation.
    pub accepted: u64,
    /// Inbound records refused by validation.
    pub refused: u64,
    /// Kademlia requests other peers sent this one, by kind.
    pub inbound: Inbound,
    /// Kademlia queries this one started: its lookups, puts, provides, bootstraps, and the
    /// look-ups of peers it admits to its routing table.
    pub queries_started: u64,
}

/// Kademlia requests received, by kind: what serving the registry costs a director.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Inbound {
    /// `FIND_NODE`: a step of somebody's lookup (closest peers, bootstrap, the first phase
    /// of a provide or a put).
    pub find_node: u64,
    /// `GET_PROVIDERS`: a step of a holders lookup.
    pub get_providers: u64,
    /// `ADD_PROVIDER`: a provider record announced (or re-provided) to this director.
    pub add_provider: u64,
    /// `GET_VALUE`: a step of a station or catalog record lookup.
    pub get_record: u64,
    /// `PUT_VALUE`: a station or catalog record stored here.
    pub put_record: u64,
}

impl Inbound {
    /// Every request, whatever its kind.
    pub fn total(&self) -> u64 {
        self.find_node + self.get_providers + self.add_provider + self.get_record + self.put_record
    }

    pub(crate) fn count(&mut self, request: &InboundRequest) {
        let slot = match request {
            InboundRequest::FindNode { .. } => &mut self.find_node,
            InboundRequest::GetProvider { .. } => &mut self.get_providers,
            InboundRequest::AddProvider { .. } => &mut self.add_provider,
            InboundRequest::GetRecord { .. } => &mut self.get_record,
            InboundRequest::PutRecord { .. } => &mut self.put_record,
        };
        *slot += 1;
    }
}

/// A holders lookup with its cost, from Kademlia's own query statistics.
#[derive(Clone, Debug, Default)]
pub struct HoldersTrace {
    /// The holders found.
    pub holders: HashSet<PeerId>,
    /// The local store named a holder before any request was sent.
    pub local: bool,
    /// Requests this director had sent when the first remote answer naming a holder arrived
    /// (`kad::QueryStats::num_requests` at that step), or `None` if no remote peer named one.
    pub requests_to_holder: Option<u32>,
    /// Time from the first request to that answer.
    pub time_to_holder: Option<Duration>,
    /// Requests sent by the whole query.
    pub requests: u32,
    /// Requests that were answered.
    pub successes: u32,
    /// Requests that failed (peer gone, time-out).
    pub failures: u32,
    /// From the first request to the end of the query.
    pub duration: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use libp2p::PeerId;

    use super::*;

    #[test]
    fn inbound_requests_are_counted_by_kind() {
        let mut inbound = Inbound::default();
        inbound.count(&InboundRequest::FindNode {
            num_closer_peers: 20,
        });
        inbound.count(&InboundRequest::AddProvider { record: None });
        inbound.count(&InboundRequest::AddProvider { record: None });
        inbound.count(&InboundRequest::PutRecord {
            source: PeerId::random(),
            connection: libp2p::swarm::ConnectionId::new_unchecked(0),
            record: None,
        });
        assert_eq!(inbound.find_node, 1);
        assert_eq!(inbound.add_provider, 2);
        assert_eq!(inbound.put_record, 1);
        assert_eq!(inbound.get_providers + inbound.get_record, 0);
        assert_eq!(inbound.total(), 4);
    }
}
