//! `/vodmesh/auth/1` on the auth station's director: requests in, [`Server`] calls on the
//! blocking pool, answers out.
//!
//! [`Behaviour`] wraps the request-response behaviour and owns the whole exchange, so the
//! director only carries it as one (toggled) field: an inbound request becomes a job on
//! `spawn_blocking` (argon2 takes tens of milliseconds and must never run on the swarm loop),
//! and the behaviour's own `poll` sends each answer when its job finishes. At most [`MAX_JOBS`]
//! run at once; beyond that a request is refused at once with `auth server busy`.
//!
//! Every token is bound to the peer at the other end of the authenticated connection the
//! request arrived on: that is the only peer id the server ever signs for.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::request_response::{self, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use serde_bytes::ByteBuf;
use tracing::{debug, error, info, warn};
use vodmesh_proto::admin;
use vodmesh_proto::auth::{self as proto, Request, Response};
use vodmesh_proto::codec::CborCodec;
use vodmesh_proto::ids::short_peer;
use vodmesh_proto::time::now_ms;

use super::{Caller, Error, Server, User};

/// Most requests being worked on at once (each may hold a core for an argon2 hash).
pub const MAX_JOBS: usize = 32;
/// How long a request may take, end to end.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

type Inner = request_response::Behaviour<CborCodec<Request, Response>>;

/// What the auth service reports to the director's event loop (for logs).
#[derive(Debug)]
pub enum Event {
    /// A request was answered.
    Answered {
        /// The caller.
        peer: PeerId,
        /// Which operation ([`Request::op`]).
        op: &'static str,
        /// The refusal, if it was refused.
        refused: Option<String>,
    },
    /// A request could not be read or answered (size limit, time-out, connection lost).
    Failed {
        /// The caller.
        peer: PeerId,
        /// What went wrong.
        error: String,
    },
}

struct Done {
    channel: ResponseChannel<Response>,
    peer: PeerId,
    op: &'static str,
    response: Response,
}

/// The auth protocol, served from `server`.
pub struct Behaviour {
    inner: Inner,
    server: Arc<Server>,
    jobs: FuturesUnordered<BoxFuture<'static, Done>>,
}

/// The director's auth field: serving when this station runs the auth role, absent otherwise.
pub fn behaviour(server: Option<Arc<Server>>) -> Toggle<Behaviour> {
    Toggle::from(server.map(Behaviour::new))
}

/// Logs what the auth service reports; the director's event loop hands every [`Event`] here.
pub fn on_event(event: Event) {
    match event {
        Event::Answered {
            peer,
            op,
            refused: None,
        } => debug!(peer = %short_peer(&peer), op, "auth request served"),
        Event::Answered {
            peer,
            op,
            refused: Some(why),
        } => info!(peer = %short_peer(&peer), op, cause = %why, "auth request refused"),
        Event::Failed { peer, error } => {
            debug!(peer = %short_peer(&peer), %error, "auth request failed");
        }
    }
}

impl Behaviour {
    /// Serves `/vodmesh/auth/1` from `server`.
    pub fn new(server: Arc<Server>) -> Self {
        Self {
            inner: request_response::Behaviour::with_codec(
                CborCodec::new(proto::LIMITS),
                [(proto::PROTOCOL, ProtocolSupport::Inbound)],
                request_response::Config::default().with_request_timeout(REQUEST_TIMEOUT),
            ),
            server,
            jobs: FuturesUnordered::new(),
        }
    }

    fn start_job(&mut self, peer: PeerId, request: Request, channel: ResponseChannel<Response>) {
        let op = request.op();
        if self.jobs.len() >= MAX_JOBS {
            warn!(peer = %short_peer(&peer), op, "auth server busy: request refused");
            let busy = Response::Error("auth server busy, retry in a moment".into());
            let _ = self.inner.send_response(channel, busy);
            return;
        }
        let server = self.server.clone();
        let job = tokio::task::spawn_blocking(move || handle(&server, peer, request, now_ms()));
        self.jobs.push(Box::pin(async move {
            let response = job.await.unwrap_or_else(|e| {
                error!(op, cause = %e, "auth job failed");
                Response::Error("internal error of the auth server".into())
            });
            Done {
                channel,
                peer,
                op,
                response,
            }
        }));
    }
}

/// Answers one request from `peer` (the authenticated remote end). Blocking: argon2, redb.
pub fn handle(server: &Server, peer: PeerId, request: Request, now_ms: u64) -> Response {
    let token = |t: Vec<u8>| Response::Token(ByteBuf::from(t));
    // An admin operation acts for the signer of its claim, if it carries one.
    let acting = match acting_peer(server, peer, &request, now_ms) {
        Ok(acting) => acting,
        Err(refused) => return refused,
    };
    let result = match request {
        Request::Login { user, password } => {
            server.login(&user, &password, peer, now_ms).map(token)
        }
        Request::Refresh { token: t } => server.refresh(&t, peer, now_ms).map(token),
        Request::UrlToken {
            token: t,
            program,
            addr,
            ttl_s,
        } => {
            let ttl = ttl_s.map(Duration::from_secs);
            (server.url_token(&t, peer, (program, addr), ttl, now_ms)).map(token)
        }
        Request::AdminLogin { user, password } => server
            .admin_login(&user, &password, peer, now_ms)
            .map(token),
        Request::AddUser {
            name,
            password,
            admin,
            rights,
            admin_token,
            proof: _,
        } => server
            .add_user(
                Caller::new(acting, admin_token.as_ref()),
                &name,
                &password,
                User { admin, rights },
                now_ms,
            )
            .map(|()| Response::Done),
        Request::EnrollToken {
            station,
            roles,
            admin_token,
            proof: _,
        } => server
            .issue_enroll_token(
                Caller::new(acting, admin_token.as_ref()),
                station,
                roles,
                now_ms,
            )
            .map(token),
        Request::Enroll { token: t, engines } => {
            server.enroll_station(&t, peer, &engines, now_ms).map(token)
        }
        Request::Renew {
            certificate,
            engines,
        } => server
            .renew(&certificate, peer, engines.as_deref(), now_ms)
            .map(token),
        Request::Revoke {
            station,
            admin_token,
            proof: _,
        } => server
            .revoke(Caller::new(acting, admin_token.as_ref()), station, now_ms)
            .map(|()| Response::Done),
        Request::EngineToken => server.issue_engine_token(peer, now_ms).map(token),
        Request::StationEngineToken { engine } => server
            .issue_station_engine_token(peer, engine, now_ms)
            .map(token),
        Request::DisableUser {
            name,
            disabled,
            admin_token,
            proof: _,
        } => server
            .disable_user(
                Caller::new(acting, admin_token.as_ref()),
                &name,
                disabled,
                now_ms,
            )
            .map(|()| Response::Done),
        Request::RemoveUser {
            name,
            admin_token,
            proof: _,
        } => server
            .remove_user(Caller::new(acting, admin_token.as_ref()), &name, now_ms)
            .map(|()| Response::Done),
    };
    result.unwrap_or_else(|e| Response::Error(refusal(&e)))
}

/// The peer `request` acts for: the signer of its admin claim, addressed to this station's
/// director and made for this very request; else `peer`, the connection's own.
fn acting_peer(
    server: &Server,
    peer: PeerId,
    request: &Request,
    now_ms: u64,
) -> Result<PeerId, Response> {
    let (Request::AddUser {
        proof: Some(proof), ..
    }
    | Request::EnrollToken {
        proof: Some(proof), ..
    }
    | Request::DisableUser {
        proof: Some(proof), ..
    }
    | Request::RemoveUser {
        proof: Some(proof), ..
    }
    | Request::Revoke {
        proof: Some(proof), ..
    }) = request
    else {
        return Ok(peer);
    };
    let subject = request.admin_subject().unwrap_or_default();
    let checked = match server.station() {
        Some(station) => {
            admin::acting_admin(proof, (request.op(), &subject), station, &peer, now_ms)
        }
        None => Err(admin::AdminError::Mismatch),
    };
    checked.map_err(|e| {
        warn!(peer = %short_peer(&peer), cause = %e, "admin claim refused");
        Response::Error(e.to_string())
    })
}

/// The line a caller sees for `e`: the error itself, except for internal failures, whose
/// details (paths, database errors) stay in this station's log.
fn refusal(e: &Error) -> String {
    match e {
        Error::Db(_) | Error::Key(_) | Error::Hash(_) => {
            error!(cause = %e, "auth server failure");
            "internal error of the auth server".into()
        }
        other => other.to_string(),
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = THandler<Inner>;
    type ToSwarm = Event;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_inbound_connection(
            connection_id,
            peer,
            local_addr,
            remote_addr,
        )
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        )
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.inner.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner
            .on_connection_handler_event(peer_id, connection_id, event);
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        loop {
            // Finished jobs first: their answers are what callers wait for. Polling the jobs
            // on every pass (also right after a new one is pushed) registers this task's
            // waker with each of them.
            if let Poll::Ready(Some(done)) = self.jobs.poll_next_unpin(cx) {
                let refused = match &done.response {
                    Response::Error(why) => Some(why.clone()),
                    _ => None,
                };
                if self
                    .inner
                    .send_response(done.channel, done.response)
                    .is_err()
                {
                    debug!(peer = %short_peer(&done.peer), "auth caller went away before its answer");
                }
                return Poll::Ready(ToSwarm::GenerateEvent(Event::Answered {
                    peer: done.peer,
                    op: done.op,
                    refused,
                }));
            }
            let event = match self.inner.poll(cx) {
                Poll::Ready(ToSwarm::GenerateEvent(event)) => event,
                Poll::Ready(other) => {
                    return Poll::Ready(
                        other.map_out(|_| unreachable!("GenerateEvent is matched above")),
                    );
                }
                Poll::Pending => return Poll::Pending,
            };
            match event {
                request_response::Event::Message {
                    peer,
                    message:
                        request_response::Message::Request {
                            request, channel, ..
                        },
                    ..
                } => self.start_job(peer, request, channel),
                request_response::Event::InboundFailure { peer, error, .. } => {
                    return Poll::Ready(ToSwarm::GenerateEvent(Event::Failed {
                        peer,
                        error: error.to_string(),
                    }));
                }
                // Responses and outbound failures: this side never sends requests.
                request_response::Event::Message { .. }
                | request_response::Event::OutboundFailure { .. }
                | request_response::Event::ResponseSent { .. } => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use libp2p::identity::Keypair;
    use vodmesh_proto::signed::Signed;
    use vodmesh_proto::token::{Audience, Rights, TrustedIssuers};

    use super::*;
    use crate::auth::{Config, HashParams};

    /// The director of the auth station the tests' claims are addressed to.
    fn station() -> PeerId {
        static STATION: std::sync::OnceLock<PeerId> = std::sync::OnceLock::new();
        *STATION.get_or_init(PeerId::random)
    }

    fn server(dir: &std::path::Path, admin: PeerId) -> Server {
        let config = Config {
            hash: HashParams::INSECURE_FOR_TESTS,
            admins: vec![admin],
            station: Some(station()),
            ..Config::default()
        };
        Server::open(dir, config).unwrap()
    }

    fn add_user(name: &str, proof: Option<Signed>) -> Request {
        Request::AddUser {
            name: name.into(),
            password: "long enough".into(),
            admin: false,
            rights: Rights::All,
            admin_token: None,
            proof,
        }
    }

    /// `name` added by `admin`'s claim, sent on a connection from `wire`.
    fn claimed(name: &str, admin: &Keypair, wire: PeerId, now: u64) -> Request {
        let mut request = add_user(name, None);
        request.prove_admin(admin, station(), wire, now);
        request
    }

    #[test]
    fn admin_requests_act_for_the_signer_of_a_claim_for_the_request_on_its_connection() {
        let dir = tempfile::tempdir().unwrap();
        let admin = Keypair::generate_ed25519();
        let s = server(dir.path(), admin.public().to_peer_id());
        let now = now_ms();
        let wire = PeerId::random();

        // The admin's claim for this request on this connection: accepted.
        assert_eq!(
            handle(&s, wire, claimed("a", &admin, wire, now), now),
            Response::Done
        );
        // The same claim replayed from another peer: refused.
        let other = PeerId::random();
        let replayed = claimed("b", &admin, wire, now);
        assert_eq!(
            handle(&s, other, replayed.clone(), now),
            Response::Error("admin proof is for another operation".into())
        );
        // Or for another user: refused.
        let Request::AddUser { proof, .. } = replayed else {
            panic!("an AddUser stays one");
        };
        assert_eq!(
            handle(&s, wire, add_user("c", proof), now),
            Response::Error("admin proof is for another operation".into())
        );
        // A stranger's claim: the stranger is no admin.
        let stranger = Keypair::generate_ed25519();
        assert!(matches!(
            handle(&s, wire, claimed("d", &stranger, wire, now), now),
            Response::Error(e) if e.starts_with("not an admin")
        ));
        // No claim: the connection's peer itself must be an admin.
        assert!(matches!(
            handle(&s, wire, add_user("e", None), now),
            Response::Error(e) if e.starts_with("not an admin")
        ));
        // An old claim: refused.
        assert!(matches!(
            handle(&s, wire, claimed("f", &admin, wire, now - 200_000), now),
            Response::Error(e) if e.starts_with("admin proof expired")
        ));
        // A claim for another auth station: refused.
        let mut elsewhere = add_user("g", None);
        elsewhere.prove_admin(&admin, PeerId::random(), wire, now);
        assert_eq!(
            handle(&s, wire, elsewhere, now),
            Response::Error("admin proof is for another operation".into())
        );
    }

    #[test]
    fn tokens_are_bound_to_the_calling_peer() {
        let dir = tempfile::tempdir().unwrap();
        let admin = PeerId::random();
        let s = server(dir.path(), admin);
        let now = now_ms();
        assert_eq!(
            handle(&s, admin, add_user("alice", None), now),
            Response::Done
        );
        let console = PeerId::random();
        let login = Request::Login {
            user: "alice".into(),
            password: "long enough".into(),
        };
        let Response::Token(token) = handle(&s, console, login, now) else {
            panic!("login refused");
        };
        let trusted: TrustedIssuers = [s.issuer_key()].into_iter().collect();
        let claims = trusted
            .verify(&token, now, Audience::Console, None, &console)
            .unwrap();
        assert_eq!(claims.subject, console);

        // Refresh: the token's own subject gets a fresh one; anyone else is refused.
        let refresh = || Request::Refresh {
            token: token.clone(),
        };
        let Response::Token(fresh) = handle(&s, console, refresh(), now + 1000) else {
            panic!("refresh refused");
        };
        let again = trusted
            .verify(&fresh, now + 1000, Audience::Console, None, &console)
            .unwrap();
        assert!(again.expires_ms > claims.expires_ms);
        assert!(matches!(
            handle(&s, PeerId::random(), refresh(), now),
            Response::Error(e) if e.contains("another peer")
        ));
        assert!(matches!(
            handle(&s, console, refresh(), claims.expires_ms + 3_600_000),
            Response::Error(e) if e.contains("expired")
        ));

        // Engine tokens only for enrolled engines, each for itself.
        let engine = PeerId::random();
        assert!(matches!(
            handle(&s, engine, Request::EngineToken, now),
            Response::Error(e) if e.contains("is not enrolled")
        ));
        let station = PeerId::random();
        let Response::Token(enroll) = handle(
            &s,
            admin,
            Request::EnrollToken {
                station,
                roles: Default::default(),
                admin_token: None,
                proof: None,
            },
            now,
        ) else {
            panic!("enroll token refused");
        };
        let enroll_req = Request::Enroll {
            token: enroll,
            engines: vec![engine],
        };
        // Presented by a peer other than the station it names: refused.
        assert_eq!(
            handle(&s, PeerId::random(), enroll_req.clone(), now),
            Response::Error("token belongs to another peer".into())
        );
        assert!(matches!(
            handle(&s, station, enroll_req, now),
            Response::Token(_)
        ));
        let Response::Token(t) = handle(&s, engine, Request::EngineToken, now) else {
            panic!("engine token refused");
        };
        assert!(
            trusted
                .verify(&t, now, Audience::Engine, None, &engine)
                .is_ok()
        );

        // The station's director asks for its engine's token: bound to the engine, not to
        // the director that carries it.
        let for_engine = Request::StationEngineToken { engine };
        let Response::Token(t) = handle(&s, station, for_engine.clone(), now) else {
            panic!("station engine token refused");
        };
        assert!(
            trusted
                .verify(&t, now, Audience::Engine, None, &engine)
                .is_ok()
        );
        assert!(
            trusted
                .verify(&t, now, Audience::Engine, None, &station)
                .is_err()
        );
        // Any other station, or an engine nobody enrolled: refused.
        assert!(matches!(
            handle(&s, PeerId::random(), for_engine, now),
            Response::Error(e) if e.contains("is not enrolled")
        ));
        let stranger = Request::StationEngineToken {
            engine: PeerId::random(),
        };
        assert!(matches!(
            handle(&s, station, stranger, now),
            Response::Error(e) if e.contains("is not enrolled")
        ));
    }
}
