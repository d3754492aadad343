//! The director: a station's front door and its seat in the media location registry.
//!
//! A director is a Kademlia server of the registry, answers `/vodmesh/director/1`, and
//! republishes its signed station record (its addresses, its engines and their load) every
//! third of the record TTL, so that a station that stops disappears from the swarm once its
//! last record expires.
//!
//! This module is the event loop: it owns the swarm, takes the engines' reports, and hands
//! each request to its family, which owns its state and its tasks:
//!
//! - [`play`]: a console's `Locate`, swaps and exchanges (claims 16-22);
//! - [`miss`]: segments this station does not hold, copied from the cheapest holder (14, 15);
//! - [`replicate`]: replicas between stations (12) and overload replications (19, 20);
//!   [`distribute`]: the content manager placing a program's replicas (12);
//! - [`publish`]: publish times, catalog records learned, `Playable`, the catalog's views
//!   ([`catalog`]: `Programs`, `Held`, `Manifest` from any station that holds a program,
//!   issue 25), and reconciling what the station holds with what it knows ([`reconcile`],
//!   issue 17);
//! - [`ingest`]: the content manager's ingests.
//! - [`http`]: the HTTP edge of `--http` for standard players: HLS playlists, and redirects
//!   to the engine a `Locate` names, asked through this loop as a console's would be.
//!
//! Beside them: [`dispatch`], each request handed to its family; [`listing`], one
//! `Programs` listing shared by its askers; [`admit`], who may ask what
//! (closed membership); [`approvals`], which stations may copy from this one; [`start`], the
//! stores, swarm and listeners a director starts with;
//! [`choose`], the decisions as pure functions; [`engines`], the engine table;
//! [`outbound`], asking other directors; [`context`], what the loop lends the families;
//! [`tasks`], the families' work off the loop; [`error`], failures and what clients see.

mod admit;
mod approvals;
mod catalog;
mod choose;
mod context;
mod dispatch;
mod distribute;
mod engines;
pub(crate) mod error;
mod fetches;
mod http;
mod ingest;
mod listing;
mod miss;
mod outbound;
mod peers;
mod play;
mod publish;
mod reconcile;
mod replicate;
mod schedule;
mod start;
mod tasks;

pub use error::NOT_PUBLISHED;
pub use start::{DirectorHandle, Engines, Handles, StartError, start};

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use libp2p::request_response::{self, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, kad, ping};
use tokio::sync::{mpsc, watch};
use vodmesh_proto::SegmentId;
use vodmesh_proto::codec::CborCodec;
use vodmesh_proto::director::{self, Request, Response};
use vodmesh_proto::net::{dialable, is_tcp, without_peer};
use vodmesh_proto::signed::Signed;
use vodmesh_proto::station::EngineInfo;
use vodmesh_proto::time::now_ms;
use vodmesh_registry::PersistentStore;
use vodmesh_registry::registry::{self as reg, Command};

use self::catalog::Viewer;
use self::choose::Locating;
use self::context::{Client, Reply, Shared};
use self::engines::Heard;
use self::error::{Error, respond};
use self::ingest::{Ingested, Ingests};
use self::miss::Misses;
use self::outbound::{Ask, Outbound};
use self::play::{Located, Play};
use self::publish::Publishing;
use self::replicate::Replicating;
use self::tasks::Tasks;
use crate::control::{EngineEvent, EngineReport};
use crate::metrics::Metrics;

/// Whether a miss may start for `ask`: a gather across the swarm and a copy into an engine,
/// started only for a console that could stream the program (its token, of one of
/// `issuers`, opens it), or for a player the HTTP edge checked (`Client::Local`). A station
/// that trusts no issuer checks no token (and its engines serve no stream).
fn may_miss(
    issuers: &vodmesh_proto::token::TrustedIssuers,
    ask: &Locating,
    channel: &Client,
) -> bool {
    let opens = |token: &serde_bytes::ByteBuf| {
        let program = Some(&ask.segment.program);
        let console = vodmesh_proto::token::Audience::Console;
        (issuers.verify(token, now_ms(), console, program, &ask.console)).is_ok()
    };
    issuers.is_empty()
        || matches!(channel, Client::Local(_))
        || ask.token.as_ref().is_some_and(opens)
}

/// How often an unreachable bootstrap station is logged at WARN (the rest at DEBUG).
const BOOTSTRAP_WARN_EVERY: Duration = Duration::from_secs(30);

/// The director's libp2p protocols.
#[derive(NetworkBehaviour)]
pub(crate) struct DirectorBehaviour {
    /// Refuses connections past [`crate::conn_limits`]. First: a connection it refuses must
    /// reach no other behaviour (request-response counts a connection as soon as it is asked
    /// to handle it, and one refused after that is never closed for it).
    limits: libp2p::connection_limits::Behaviour,
    kad: kad::Behaviour<PersistentStore>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    control: request_response::Behaviour<CborCodec<Request, Response>>,
    auth: Toggle<crate::auth::service::Behaviour>,
    /// `/vodmesh/blade/1`: engines in processes of their own ([`crate::blade`]).
    blade: vodmesh_proto::net::streams::Behaviour,
}

/// The director's event loop and everything it owns.
struct Director {
    swarm: Swarm<DirectorBehaviour>,
    shared: Shared,
    reports: mpsc::Receiver<EngineReport>,
    registry_commands: mpsc::Receiver<Command>,
    outbound: Outbound,
    metrics: Metrics,
    /// The issuers whose console tokens start a miss (`--trust` and this station's own auth
    /// server's): none, and no token is asked for.
    console_issuers: vodmesh_proto::token::TrustedIssuers,
    /// Bootstrap stations not connected yet.
    bootstrap_peers: HashSet<PeerId>,
    /// When a failed dial of a bootstrap station was last logged at WARN: every query of the
    /// registry dials it again, and the rest go to DEBUG for [`BOOTSTRAP_WARN_EVERY`].
    bootstrap_warned: Option<tokio::time::Instant>,
    /// The directors remembered from before the last restart and since ([`peers`]): dialled
    /// with the bootstrap stations when the director has no connection.
    remembered: Vec<Multiaddr>,
    /// Remembered directors not connected yet since the start.
    remembered_peers: HashSet<PeerId>,
    play: Play,
    miss: Misses,
    replicate: Replicating,
    publish: Publishing,
    ingest: Ingests,
    /// Answers of the loop's own requests that take a moment (a swarm walk).
    tasks: Tasks<Reply>,
    /// Requests of peers not known as members yet, back once their record was looked up.
    admitting: admit::LookUps,
    /// This station's record as `Station` requests are answered, signed a few times a second
    /// at most.
    station_answer: dispatch::StationAnswer,
    /// Room for `Stations` answered at once.
    stations_answering: std::sync::Arc<tokio::sync::Semaphore>,
    /// Whether the station drains; set by the station or by an admin's `Drain`.
    draining: watch::Sender<bool>,
    /// Requests of the HTTP edge, on a player's behalf.
    local: mpsc::Receiver<http::Local>,
    /// The HTTP edge (`--http`), started with the loop and stopped with it.
    http: Option<http::Server>,
}

impl Director {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>, republish_every: Duration) {
        let mut republish = tokio::time::interval(republish_every);
        republish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flush = tokio::time::interval(Duration::from_secs(5));
        let every = (self.shared.me.config.registry.periodic_bootstrap)
            .unwrap_or(Duration::from_secs(86_400));
        let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        // The first tick is at once: a restarted station learns again what it holds.
        let registry = &self.shared.me.config.registry;
        let mut reconcile = tokio::time::interval(reconcile::interval(registry));
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // What the metrics last saw: most events (kad traffic, pings) change neither.
        let mut synced: Option<(director::Activity, Vec<Option<EngineInfo>>)> = None;
        let mut draining = self.draining.subscribe();
        let mut certificate = self.shared.me.certificate.clone();
        let http = self.http.take().map(|server| tokio::spawn(server.run()));
        loop {
            // Biased, engine reports first: an engine reports a stored segment before it
            // acknowledges it to the client, so by the time the client's commit arrives over
            // the network the report is already queued and must be taken before the request.
            tokio::select! {
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
                Ok(()) = draining.changed() => {
                    let drain = *draining.borrow_and_update();
                    self.shared.engines.set_draining(drain);
                    tracing::info!(drain, "draining: new streams go to other stations");
                }
                Ok(()) = certificate.changed() => {
                    certificate.borrow_and_update();
                    self.republish();
                }
                Some(report) = self.reports.recv() => self.on_report(report),
                Some(local) = self.local.recv() => self.on_local(local),
                Some(cmd) = self.registry_commands.recv() => {
                    self.shared.registry.execute(&mut self.swarm.behaviour_mut().kad, cmd);
                }
                Some(ask) = self.outbound.next() => self.send_ask(ask),
                reply = self.tasks.next() => self.reply(reply),
                (peer, parked) = self.admitting.next() => {
                    for (request, channel) in parked {
                        self.on_request(peer, request, channel, true);
                    }
                }
                done = self.miss.next() => {
                    let mut ctx = self.shared.ctx(&mut self.swarm.behaviour_mut().kad);
                    let family = (&mut self.publish, &self.play);
                    if let Some(reply) = self.miss.on_done(&mut ctx, family, done) {
                        self.reply(reply);
                    }
                }
                done = self.replicate.next() => {
                    let mut ctx = self.shared.ctx(&mut self.swarm.behaviour_mut().kad);
                    for reply in self.replicate.on_done(&mut ctx, &mut self.publish, done) {
                        self.reply(reply);
                    }
                }
                next = self.publish.next() => self.on_publish(next),
                _ = republish.tick() => self.republish(),
                _ = refresh.tick() => reg::refresh(&mut self.swarm.behaviour_mut().kad),
                _ = reconcile.tick() => {
                    let mut ctx = self.shared.ctx(&mut self.swarm.behaviour_mut().kad);
                    self.publish.reconcile(&mut ctx);
                    self.replicate.resume(&ctx);
                }
                _ = flush.tick() => {
                    self.swarm.behaviour_mut().kad.store_mut().flush();
                    let ctx = self.shared.ctx(&mut self.swarm.behaviour_mut().kad);
                    self.ingest.expire(&ctx);
                }
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
            }
            (self.metrics).set_dht_started(self.shared.registry.stats().queries_started);
            let (activity, engines) = (&self.shared.activity, &self.shared.engines);
            if synced
                .as_ref()
                .is_none_or(|(a, e)| a != activity || !engines.is(e))
            {
                self.metrics.sync_director(activity, &engines.snapshot());
                synced = Some((*activity, engines.snapshot()));
            }
        }
        // Work in flight ends with the director: nothing it would still do is waited for.
        if let Some(http) = http {
            http.abort();
            let _ = http.await;
        }
        self.tasks.shutdown().await;
        self.admitting.shutdown().await;
        self.miss.shutdown().await;
        self.replicate.shutdown().await;
        self.publish.shutdown().await;
        self.swarm.behaviour_mut().kad.store_mut().flush();
        tracing::info!(peer = %self.shared.me.peer_id, "director stopped");
    }

    fn reply(&mut self, (client, response): Reply) {
        let sent = match client {
            Client::Peer(channel) => (self.swarm.behaviour_mut().control)
                .send_response(channel, response)
                .is_ok(),
            Client::Local(reply) => reply.send(response).is_ok(),
        };
        if !sent {
            tracing::debug!("client went away before its answer");
        }
    }

    /// A request of the HTTP edge for a player whose URL token it checked: the program's
    /// manifest, or a segment's `Locate`, answered as a console's would be (the token's
    /// subject stands for the console). Nothing else is asked this way.
    fn on_local(&mut self, local: http::Local) {
        let http::Local {
            subscriber,
            request,
            reply,
        } = local;
        let client = Client::Local(reply);
        match request {
            request @ (Request::Manifest { .. } | Request::Locate { .. }) => {
                self.dispatch(subscriber, request, client, Viewer::of(subscriber, false));
            }
            other => {
                let refused = Error::Unsupported(format!("{other:?}"));
                self.reply((client, Response::Error(refused.into())));
            }
        }
    }

    /// Sends a request of work off the loop to another director.
    fn send_ask(&mut self, ask: Ask) {
        let Ask {
            peer,
            addrs,
            request,
            reply,
        } = ask;
        for addr in addrs {
            self.swarm.add_peer_address(peer, addr);
        }
        let id = (self.swarm.behaviour_mut().control).send_request(&peer, request);
        self.outbound.sent(id, reply);
    }

    fn signed_record(&self) -> Signed {
        let me = &self.shared.me;
        (me.record(&self.shared.engines, self.metrics.counters())).sign(&me.key)
    }

    /// Signs a fresh station record and stores it in the registry. A director that has lost
    /// every connection (a partition, its link down) dials its bootstrap stations again and
    /// refreshes its routing table, so that once the link heals the swarms merge within a
    /// republish interval instead of waiting for the periodic bootstrap.
    fn republish(&mut self) {
        let bootstrap = &self.shared.me.config.bootstrap;
        let alone = self.swarm.connected_peers().next().is_none();
        if alone && !(bootstrap.is_empty() && self.remembered.is_empty()) {
            for addr in bootstrap.iter().chain(&self.remembered) {
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    tracing::debug!(%addr, error = %e, "redialing bootstrap failed");
                }
            }
            if let Err(e) = self.swarm.behaviour_mut().kad.bootstrap() {
                tracing::debug!(error = %e, "registry bootstrap failed");
            }
        }
        let kad = &mut self.swarm.behaviour_mut().kad;
        peers::remember(kad, &self.shared.me.config.data, &mut self.remembered);
        let signed = self.signed_record();
        let kad = &mut self.swarm.behaviour_mut().kad;
        // Joined or not (`/readyz`): connections come and go between republishes too, but a
        // join is a bootstrap connection, which republishes at once.
        (self.metrics).set_registry_peers(crate::metrics::connected_peers(kad));
        let mut ctx = self.shared.ctx(kad);
        ctx.dht.put_station(signed);
    }

    fn on_report(&mut self, report: EngineReport) {
        let ready = matches!(report.event, EngineEvent::Ready { .. }).then_some(report.engine);
        let mut ctx = self.shared.ctx(&mut self.swarm.behaviour_mut().kad);
        match ctx.engines.apply(report, ctx.activity) {
            Heard::Nothing => {}
            Heard::Changed => self.republish(),
            Heard::Stored {
                engine,
                peer,
                segment,
            } => {
                let engine = (engine, peer);
                (self.ingest).stored(&mut ctx, &mut self.publish, engine, segment);
            }
            Heard::Dropped { peer, segment } => {
                let _ = ctx.locations.remove(segment, &peer);
            }
            Heard::Stream(streamed) => {
                if let engines::Streamed::Stopped { bytes, .. } = streamed {
                    self.metrics.streamed(bytes);
                }
                self.play.on_stream(streamed);
            }
        }
        if let Some(engine) = ready {
            // A restarted engine process forgot which stations may copy from it, keeps
            // embargoes it may have missed the end of, and a replica left unfinished (at
            // start no engine was up) can go on.
            let ctx = self.shared.ctx(&mut self.swarm.behaviour_mut().kad);
            for allow in self.replicate.standing(now_ms()) {
                let _ = ctx.engines.send(engine, allow);
            }
            self.publish.retell(&ctx, engine);
            self.replicate.resume(&ctx);
        }
    }

    fn on_publish(&mut self, next: publish::Next) {
        let mut ctx = self.shared.ctx(&mut self.swarm.behaviour_mut().kad);
        let reply = match next {
            publish::Next::Done(done) => match self.publish.on_done(&mut ctx, *done) {
                Some(publish::After::Reply(reply)) => Some(reply),
                Some(publish::After::Replies(replies)) => {
                    for reply in replies {
                        self.reply(reply);
                    }
                    None
                }
                Some(publish::After::Locate(waiting)) => {
                    for (ask, channel) in waiting {
                        if let Some(reply) = self.locate(ask, channel, false) {
                            self.reply(reply);
                        }
                    }
                    None
                }
                None => None,
            },
            publish::Next::Due(program) => {
                if let Err(e) = self.publish.publish(&mut ctx, program) {
                    tracing::warn!(%program, error = %e, "scheduled publish failed");
                }
                None
            }
        };
        if let Some(reply) = reply {
            self.reply(reply);
        }
    }

    /// A console's `Locate`. When the station holds the segment but has not learned the
    /// program's record (it restarted), or its record says "not published" (it may have
    /// missed the publish), the record is fetched from the registry first (`fetch`) and the
    /// `Locate` run again; then a program the registry has no record of is unknown.
    fn locate(&mut self, ask: Locating, channel: Client, fetch: bool) -> Option<Reply> {
        let mut ctx = self.shared.ctx(&mut self.swarm.behaviour_mut().kad);
        match (self.play).locate(&mut ctx, &self.publish, &mut self.replicate, &ask) {
            // A record that says "not published" may be stale: fetched again first (and
            // the `Locate`s that come while that runs wait for it too).
            Located::Now(Err(Error::NotPublished))
                if fetch
                    && (self.publish.fetching_for_locate(&ask.segment.program)
                        || self.publish.refresh_due(&ctx, ask.segment.program)) =>
            {
                self.publish.fetch_for_locate(&ctx, ask, channel)
            }
            Located::Now(mut located) => {
                if let Ok(location) = &mut located {
                    location.ahead = (self.play).locate_ahead(&mut ctx, &self.publish, &ask);
                    for _ in 0..=location.ahead.len() {
                        self.metrics.hit();
                    }
                }
                Some((channel, respond(located, Response::Location)))
            }
            Located::Miss { .. } if !may_miss(&self.console_issuers, &ask, &channel) => {
                Some((channel, Response::Error(Error::MissNeedsToken.into())))
            }
            Located::Miss { held } => self.miss.start(&ctx, &self.publish, (ask, held), channel),
            Located::Unlearned if fetch => self.publish.fetch_for_locate(&ctx, ask, channel),
            Located::Unlearned => Some((channel, Response::Error(Error::UnknownProgram.into()))),
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<DirectorBehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(DirectorBehaviourEvent::Kad(event)) => {
                if let kad::Event::OutboundQueryProgressed {
                    result,
                    stats,
                    step,
                    ..
                } = &event
                    && step.last
                {
                    self.metrics
                        .dht_query(crate::metrics::query_kind(result), stats.duration());
                }
                if let kad::Event::RoutingUpdated {
                    peer,
                    is_new_peer: true,
                    ..
                } = &event
                {
                    tracing::debug!(%peer, "registry: new director in the routing table");
                    let kad = &mut self.swarm.behaviour_mut().kad;
                    (self.metrics).set_registry_peers(crate::metrics::connected_peers(kad));
                }
                (self.shared.registry).on_event(&mut self.swarm.behaviour_mut().kad, event);
            }
            SwarmEvent::Behaviour(DirectorBehaviourEvent::Identify(
                identify::Event::Received { peer_id, info, .. },
            )) if info.protocols.contains(&reg::PROTOCOL) => {
                // Registry traffic goes over TCP: a dial to a stopped director's TCP port
                // fails at once, while a QUIC dial waits out its handshake timeout, and
                // every query that meets the dead peer stalls with it (measured: swarm
                // walks of 10 s instead of milliseconds after one station stopped).
                // In a closed swarm only members enter the routing table (`Registry::learn`).
                let addrs = (info.listen_addrs.iter())
                    .filter(|a| dialable(a) && is_tcp(a))
                    .map(without_peer)
                    .collect();
                let kad = &mut self.swarm.behaviour_mut().kad;
                self.shared.registry.learn(kad, peer_id, addrs);
            }
            SwarmEvent::Behaviour(DirectorBehaviourEvent::Control(event)) => {
                self.on_control(event);
            }
            SwarmEvent::Behaviour(DirectorBehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) => self.miss.round_trip(peer, Some(rtt)),
            // Consoles and tools do not speak ping (`Unsupported`); any other failure (a
            // timeout, a negotiation that never completes) means the peer is gone.
            SwarmEvent::Behaviour(DirectorBehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(error),
            })) if !matches!(error, ping::Failure::Unsupported) => {
                tracing::debug!(%peer, %error, "peer stopped answering pings; closing the connection");
                self.miss.round_trip(peer, None);
                self.swarm.close_connection(connection);
            }
            SwarmEvent::Behaviour(DirectorBehaviourEvent::Auth(event)) => {
                crate::auth::service::on_event(event);
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. }
                if self.bootstrap_peers.remove(&peer_id)
                    | self.remembered_peers.remove(&peer_id) =>
            {
                tracing::info!(peer = %peer_id, "connected to bootstrap; joining the registry");
                if let Err(e) = self.swarm.behaviour_mut().kad.bootstrap() {
                    tracing::warn!(error = %e, "registry bootstrap failed");
                }
                self.republish();
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } if self.bootstrap_peers.contains(&peer) => {
                let error = vodmesh_client::rpc::dial_reason(&error);
                let now = tokio::time::Instant::now();
                match self.bootstrap_warned {
                    Some(at) if now.duration_since(at) < BOOTSTRAP_WARN_EVERY => {
                        tracing::debug!(%peer, %error, "cannot reach bootstrap station");
                    }
                    _ => {
                        self.bootstrap_warned = Some(now);
                        tracing::warn!(%peer, %error, "cannot reach bootstrap station");
                    }
                }
            }
            // Round trips are kept only for connected peers (consoles ping too).
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => self.miss.round_trip(peer_id, None),
            _ => {}
        }
    }

    /// `/vodmesh/director/1`: requests to this director, and answers to its own.
    fn on_control(&mut self, event: request_response::Event<Request, Response>) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.on_request(peer, request, channel, false),
            Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => self.outbound.answered(request_id, response),
            Event::OutboundFailure {
                request_id, error, ..
            } => self.outbound.failed(request_id, error),
            Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "director: inbound request failed");
            }
            Event::ResponseSent { .. } => {}
        }
    }
}
