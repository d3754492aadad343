//! The registry server: a swarm that speaks Kademlia (server mode) and identify, and the loop
//! that drives [`Registry`] from it.
//!
//! What a registry server does with its swarm is the same wherever it runs: commands from
//! [`RegistryHandle`]s go to [`Registry::execute`], Kademlia events to [`Registry::on_event`]
//! (which validates inbound records and answers callers), and identify tells it the listen
//! addresses of the other registry servers it meets, which go into the routing table
//! ([`learn_addresses`]). `vodmesh sim` and `vodmesh bench`'s registry section run a
//! [`Server`] whole: a swarm of exactly [`Behaviour`] (Kademlia plus identify) on whatever
//! transport they build it with (loopback TCP in the bench, a memory transport in the sim).
//!
//! The director's swarm carries more (its control protocol, auth, ping, the blade link), so it
//! cannot be a [`Server`]: a `Swarm<Behaviour>` has no room for other behaviours, and a
//! generic server over "any behaviour with a kad field" would need a trait for every field
//! it reaches. What the director shares instead is everything below the swarm: it builds its
//! Kademlia with [`crate::registry::behaviour`] and identify with [`identify_config`], keeps a
//! [`Registry`], and hands its kad events to [`Registry::on_event`] and its identify events to
//! [`learn_addresses`] (with its own address filter: dialable TCP only). [`Server::on_event`]
//! is exactly that dispatch for a swarm that has nothing else.
//!
//! The loop is split in two so that its users can watch it without copying it:
//! [`Server::next_event`] runs commands as they come and returns the next swarm event,
//! [`Server::on_event`] handles it. The sim looks at each event in between (when a join's
//! bootstrap finished, dials counted); [`Server::run`] is the plain loop.

use libp2p::identity::{Keypair, PublicKey};
use libp2p::kad;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify};
use tokio::sync::mpsc;
use vodmesh_proto::net::IDENTIFY_PROTOCOL;

use crate::registry::{self, Command, Registry, RegistryConfig, RegistryHandle, RegistryStats};
use crate::store::PersistentStore;

/// Which of a peer's announced addresses go into the routing table.
pub type AddressFilter = fn(&Multiaddr) -> bool;

/// What a registry server's swarm speaks: Kademlia and identify, nothing else.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// The registry's Kademlia, built by [`registry::behaviour`].
    pub kad: kad::Behaviour<PersistentStore>,
    /// Identify, so that servers learn each other's listen addresses.
    pub identify: identify::Behaviour,
}

impl Behaviour {
    /// A registry server's behaviour (Kademlia in server mode) over `store`.
    pub fn new(key: &Keypair, store: PersistentStore, config: &RegistryConfig) -> Self {
        let peer = key.public().to_peer_id();
        Self {
            kad: registry::behaviour(peer, store, config, true),
            identify: identify::Behaviour::new(identify_config(key.public())),
        }
    }
}

/// The identify configuration of a registry server. Listen address changes are not pushed:
/// a server's addresses are fixed once it listens, and a push per change is one more stream
/// on every connection.
pub fn identify_config(key: PublicKey) -> identify::Config {
    identify::Config::new(IDENTIFY_PROTOCOL.into(), key).with_push_listen_addr_updates(false)
}

/// Enters the listen addresses `peer` announced into the routing table, if it is a registry
/// server (it speaks [`registry::PROTOCOL`]) and `accept` takes the address; returns how many
/// were entered.
pub fn learn_addresses(
    kad: &mut kad::Behaviour<PersistentStore>,
    peer: PeerId,
    info: &identify::Info,
    accept: AddressFilter,
) -> usize {
    if !info.protocols.contains(&registry::PROTOCOL) {
        return 0;
    }
    let mut entered = 0;
    for addr in info.listen_addrs.iter().filter(|a| accept(a)) {
        if matches!(
            kad.add_address(&peer, addr.clone()),
            kad::RoutingUpdate::Success
        ) {
            entered += 1;
        }
    }
    entered
}

/// A registry server: its swarm, its [`Registry`], and the commands its handles send.
pub struct Server {
    swarm: Swarm<Behaviour>,
    registry: Registry,
    commands: mpsc::Receiver<Command>,
    accept: AddressFilter,
}

impl Server {
    /// A server around `swarm`, and the handle that talks to it (`capacity` commands queued at
    /// most). Every address a peer announces goes into the routing table; see
    /// [`Server::with_address_filter`].
    pub fn new(swarm: Swarm<Behaviour>, capacity: usize) -> (Self, RegistryHandle) {
        let (handle, commands) = RegistryHandle::channel(capacity);
        let server = Self {
            swarm,
            registry: Registry::new(),
            commands,
            accept: |_| true,
        };
        (server, handle)
    }

    /// Only the announced addresses `accept` takes go into the routing table.
    pub fn with_address_filter(mut self, accept: AddressFilter) -> Self {
        self.accept = accept;
        self
    }

    /// The swarm, to listen, dial or read the routing table and store.
    pub fn swarm_mut(&mut self) -> &mut Swarm<Behaviour> {
        &mut self.swarm
    }

    /// The server's Kademlia.
    pub fn kad_mut(&mut self) -> &mut kad::Behaviour<PersistentStore> {
        &mut self.swarm.behaviour_mut().kad
    }

    /// Inbound record and request counters.
    pub fn stats(&self) -> RegistryStats {
        self.registry.stats()
    }

    /// Runs the commands that arrive until the swarm has an event, and returns it for
    /// [`Server::on_event`]; `None` once every handle is dropped. Cancel-safe: a `select!`
    /// that drops it loses nothing.
    pub async fn next_event(&mut self) -> Option<SwarmEvent<BehaviourEvent>> {
        loop {
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.registry.execute(&mut self.swarm.behaviour_mut().kad, cmd),
                    None => return None,
                },
                event = futures::StreamExt::select_next_some(&mut self.swarm) => {
                    return Some(event);
                }
            }
        }
    }

    /// Handles one swarm event: Kademlia's go to the registry, identify's to the routing table.
    pub fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.registry.on_event(kad, event),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                learn_addresses(kad, peer_id, &info, self.accept);
            }
            _ => {}
        }
    }

    /// Serves until every handle is dropped.
    pub async fn run(mut self) {
        while let Some(event) = self.next_event().await {
            self.on_event(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use libp2p::SwarmBuilder;
    use libp2p::core::transport::{MemoryTransport, Transport};
    use libp2p::core::upgrade;
    use libp2p::multiaddr::Protocol;
    use vodmesh_proto::ProgramId;

    use super::*;
    use crate::config::SETTLE_WITHIN;
    use crate::store::StoreLimits;

    fn server(port: u64) -> (Server, RegistryHandle, PeerId, Multiaddr) {
        let key = Keypair::generate_ed25519();
        let peer = key.public().to_peer_id();
        let store = PersistentStore::in_memory(peer, &StoreLimits::default());
        let config = RegistryConfig::default();
        let swarm = SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_other_transport(|k| {
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                    MemoryTransport::default()
                        .upgrade(upgrade::Version::V1)
                        .authenticate(libp2p::noise::Config::new(k)?)
                        .multiplex(libp2p::yamux::Config::default()),
                )
            })
            .expect("a memory transport builds")
            .with_behaviour(|k| Behaviour::new(k, store, &config))
            .expect("the behaviour builds")
            .build();
        let (mut server, handle) = Server::new(swarm, 16);
        let addr = Multiaddr::empty().with(Protocol::Memory(port));
        server.swarm_mut().listen_on(addr.clone()).expect("listens");
        server.swarm_mut().add_external_address(addr.clone());
        (server, handle, peer, addr)
    }

    /// Two servers, the second knowing only the first's address: the first learns the
    /// second's through identify (nobody told it), finds it as a holder, and counts the
    /// requests it served; both loops end when their handles are dropped.
    #[tokio::test]
    async fn two_servers_find_each_other_and_end_with_their_handles() {
        let port = u64::from(std::process::id()) << 16;
        let (a, a_handle, a_peer, a_addr) = server(port + 1);
        let (mut b, b_handle, b_peer, _) = server(port + 2);
        b.kad_mut().add_address(&a_peer, a_addr);
        let a_task = tokio::spawn(async move {
            let mut a = a;
            while let Some(event) = a.next_event().await {
                a.on_event(event);
            }
            a.stats()
        });
        let b_task = tokio::spawn(b.run());
        b_handle.bootstrap().await.expect("b runs");
        let program = ProgramId([7; 32]);
        b_handle.provide(program).await.expect("b provides");

        // Both may come in either order: b's provider record and its identify answer travel
        // on separate streams.
        let found = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let holder = (a_handle.holders(program).await)
                    .expect("a runs")
                    .contains(&b_peer);
                let routed = (a_handle.routing_table().await)
                    .expect("a runs")
                    .contains(&b_peer);
                if holder && routed {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            found.is_ok(),
            "a never found b as a holder, or identify never put b in a's routing table"
        );
        drop((a_handle, b_handle));
        let stats = a_task.await.expect("a's loop ended");
        b_task.await.expect("b's loop ended");
        assert!(stats.inbound.add_provider >= 1, "{:?}", stats.inbound);
        assert!(stats.inbound.total() > stats.inbound.add_provider);
    }

    /// Runs `server`'s loop until `stop` fires, then hands the server back unpolled: its
    /// connections stay open and nothing on them is answered (a hung station).
    fn run_until(
        mut server: Server,
        stop: tokio::sync::oneshot::Receiver<()>,
    ) -> tokio::task::JoinHandle<Server> {
        tokio::spawn(async move {
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => return server,
                    event = server.next_event() => match event {
                        Some(event) => server.on_event(event),
                        None => return server,
                    },
                }
            }
        })
    }

    /// Servers a and b, b knowing a's address and in a's routing table, a's loop running and
    /// b's until [`Met::hang_b`].
    struct Met {
        a: RegistryHandle,
        a_peer: PeerId,
        a_task: tokio::task::JoinHandle<()>,
        b: RegistryHandle,
        b_peer: PeerId,
        stop_b: tokio::sync::oneshot::Sender<()>,
        b_task: tokio::task::JoinHandle<Server>,
    }

    impl Met {
        /// Stops b's loop and hands b back unpolled: hung. The test ends when `end` resolves.
        async fn hang_b(self) -> (RegistryHandle, PeerId, impl Future<Output = ()>) {
            let _ = self.stop_b.send(());
            let hung = self.b_task.await.expect("b's loop stopped");
            let (a, a_task, b) = (self.a.clone(), self.a_task, self.b);
            let end = async move {
                drop((b, hung));
                a_task.await.expect("a's loop ended");
            };
            (a, self.a_peer, end)
        }
    }

    async fn meet(port: u64) -> Met {
        let (a, a_handle, a_peer, a_addr) = server(port + 1);
        let (mut b, b_handle, b_peer, _) = server(port + 2);
        b.kad_mut().add_address(&a_peer, a_addr);
        let a_task = tokio::spawn(a.run());
        let (stop_b, stopped) = tokio::sync::oneshot::channel();
        let b_task = run_until(b, stopped);
        b_handle.bootstrap().await.expect("b runs");
        let met = tokio::time::timeout(Duration::from_secs(20), async {
            while !(a_handle.routing_table().await.expect("a runs")).contains(&b_peer) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        assert!(met.await.is_ok(), "a never put b in its routing table");
        Met {
            a: a_handle,
            a_peer,
            a_task,
            b: b_handle,
            b_peer,
            stop_b,
            b_task,
        }
    }

    /// A holders look-up that meets a hung server waits out its answer; one with a patience
    /// gives what it found by then: this server's own provider record, found at once. The
    /// control: the whole look-up is still waiting when the patient one answers, and ends
    /// later with the same holder.
    #[tokio::test]
    async fn holders_within_a_patience_are_those_found_by_then() {
        let port = (u64::from(std::process::id()) << 16) + 100;
        let met = meet(port).await;
        let program = ProgramId([9; 32]);
        met.a.provide(program).await.expect("a provides");

        let (a_handle, a_peer, end) = met.hang_b().await;
        let whole = tokio::spawn({
            let a_handle = a_handle.clone();
            async move { a_handle.holders(program).await }
        });
        let patience = Duration::from_secs(1);
        let found = a_handle.holders_within(patience, program).await;
        assert_eq!(found.expect("a runs"), [a_peer].into());
        assert!(!whole.is_finished(), "the whole look-up did not wait for b");
        let whole = whole.await.expect("the look-up's task");
        assert_eq!(whole.expect("a runs"), [a_peer].into());
        drop(a_handle);
        end.await;
    }

    /// A catalog look-up and a holders look-up that meet a hung server, whose callers have
    /// what they need (this server's own record and provider record, found at once), settle
    /// for it after `SETTLE_WITHIN`, not after the hung server's `PEER_ANSWER_TIMEOUT`. The
    /// controls: the whole look-ups are still waiting then, and end later with the same; a
    /// holders caller for which what was found is not enough waits for the end.
    #[tokio::test]
    async fn look_ups_past_a_hung_server_settle_for_what_their_callers_need() {
        let port = (u64::from(std::process::id()) << 16) + 200;
        let met = meet(port).await;
        let b_peer = met.b_peer;
        let program = ProgramId([11; 32]);
        met.a.provide(program).await.expect("a provides");
        let manager = Keypair::generate_ed25519();
        let now = vodmesh_proto::time::now_ms();
        let signed = crate::validate::tests::catalog_record(&manager, program, now);
        met.a.put_catalog(signed.clone()).await.expect("a stores");

        let (a_handle, a_peer, end) = met.hang_b().await;
        let whole_catalog = {
            let mut found = a_handle.look_up_catalog(program).await.expect("a runs");
            tokio::spawn(async move { found.wait_for(|f| f.done).await.map(|f| f.clone()) })
        };
        let whole_holders = tokio::spawn({
            let a_handle = a_handle.clone();
            async move { a_handle.holders(program).await }
        });
        let records = a_handle.get_catalog(program).await.expect("a runs");
        assert_eq!(records, vec![signed.clone()]);
        let holders = a_handle.holders_enough(program, |h| !h.is_empty());
        assert_eq!(holders.await.expect("a runs"), [a_peer].into());
        assert!(
            !whole_catalog.is_finished(),
            "the catalog look-up did not wait for b"
        );
        assert!(
            !whole_holders.is_finished(),
            "the holders look-up did not wait for b"
        );
        // Not enough: waits for the end (b's answer given up, well past the settling time),
        // which finds the same.
        let asked = std::time::Instant::now();
        let wanting = a_handle.holders_enough(program, |h| h.contains(&b_peer));
        assert_eq!(wanting.await.expect("a runs"), [a_peer].into());
        let waited = asked.elapsed();
        assert!(waited >= 3 * SETTLE_WITHIN, "settled after {waited:?}");
        let whole = whole_catalog.await.expect("the look-up's task");
        assert_eq!(whole.expect("a runs").records, vec![signed]);
        let whole = whole_holders.await.expect("the look-up's task");
        assert_eq!(whole.expect("a runs"), [a_peer].into());
        drop(a_handle);
        end.await;
    }
}
