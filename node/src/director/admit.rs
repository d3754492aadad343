//! Who may ask what of a director: in a closed swarm, only members may make the requests
//! stations make of each other, and only a certified content manager may tell a station to
//! copy a program or that it was published ([`vodmesh_proto::member`]).
//!
//! What a console or an operator's tool needs stays open to anyone: `Station`, `Swarm`
//! (which lists members only), `Locate`, `Playable`, `Programs`, `Manifest`, `Activity`
//! (programs not published yet are left out for them: [`super::catalog::Viewer`]); and
//! admin operations (`Ingest*`, `Publish`, `Drain`, `AllPrograms`) carry an admin proof of
//! their own.
//!
//! [`admission`] decides, as a pure function of what the registry knows of the peer; a peer it
//! does not know yet is looked up once (its station record from the registry) before it is
//! refused.

use std::time::Duration;

use libp2p::PeerId;
use libp2p::request_response::ResponseChannel;
use tokio::time::Instant;
use vodmesh_proto::director::{Request, Response};
use vodmesh_proto::station::Roles;
use vodmesh_proto::token::TrustedIssuers;
use vodmesh_registry::Members;
use vodmesh_registry::registry::RegistryHandle;

use super::tasks::Tasks;
use crate::config::StationConfig;
use crate::expiring::{Expiring, Waiting};

/// What a request needs of the peer that makes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Needs {
    /// Nothing: a console's or a tool's request, or one with an admin proof.
    Anyone,
    /// A member of the swarm (its director or one of its engines).
    Member,
    /// A member granted the content manager role.
    ContentManager,
}

/// What `request` needs of its sender.
pub(super) fn needs(request: &Request) -> Needs {
    match request {
        Request::Station
        | Request::Swarm
        | Request::Stations { .. }
        | Request::Locate { .. }
        | Request::Playable { .. }
        | Request::Programs
        | Request::Manifest { .. }
        | Request::Activity
        | Request::IngestBegin { .. }
        | Request::IngestCommit { .. }
        | Request::IngestAbort { .. }
        | Request::Publish { .. }
        | Request::Drain { .. }
        | Request::AllPrograms { .. } => Needs::Anyone,
        Request::LocateCopy { .. } | Request::Held => Needs::Member,
        Request::Published { .. } | Request::Replicate { .. } => Needs::ContentManager,
    }
}

/// What the director does with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Admission {
    /// Serve it.
    Serve,
    /// Look the sender's station record up first, then decide again.
    LookUp,
    /// Refuse it: not a member.
    NotMember,
    /// Refuse it: a member without the content manager role.
    NotCertified,
}

/// Decides a request that `needs` this, from a peer the registry `admits` or not, whose
/// certified roles are `roles` (`None` for an engine or a stranger); `looked_up` once the
/// peer's record was looked up for this very request.
pub(super) fn admission(
    needs: Needs,
    admits: bool,
    roles: Option<Roles>,
    looked_up: bool,
) -> Admission {
    match (needs, admits, roles) {
        (Needs::Anyone, _, _) => Admission::Serve,
        (Needs::Member, true, _) => Admission::Serve,
        (Needs::ContentManager, true, Some(r)) if r.content_manager => Admission::Serve,
        (Needs::ContentManager, true, _) => Admission::NotCertified,
        (_, false, _) if !looked_up => Admission::LookUp,
        (_, false, _) => Admission::NotMember,
    }
}

/// A request parked until its sender's record was looked up.
pub(super) type Parked = (Request, ResponseChannel<Response>);

/// How long a peer looked up and not admitted has its requests decided without another
/// look-up. The registry admits a member as soon as it takes in its record by any way (a
/// republish, identify), so a member is not held up by this.
const LOOKED_UP_FOR: Duration = Duration::from_secs(5);
/// Peers looked up at once, at most: each is a registry query, and peer ids cost nothing.
const MAX_LOOKING_UP: usize = 256;
/// Requests of one peer parked on its look-up, at most.
const MAX_PARKED: usize = 128;

/// The look-ups of peers the registry does not admit yet ([`Admission::LookUp`]): one a peer
/// at a time, its requests parked on it, and none again for [`LOOKED_UP_FOR`] once it ended.
/// Before, each request started a look-up of its own: a stranger's few bytes made the
/// director query the swarm, as often as it liked.
pub(super) struct LookUps {
    tasks: Tasks<PeerId>,
    parked: Waiting<PeerId, Parked>,
    lately: Expiring<PeerId, ()>,
}

impl Default for LookUps {
    fn default() -> Self {
        Self {
            tasks: Tasks::default(),
            parked: Waiting::new(MAX_PARKED),
            lately: Expiring::new(LOOKED_UP_FOR, 4096),
        }
    }
}

impl LookUps {
    /// Parks a request of `peer` until its record was looked up, starting the look-up unless
    /// one runs. `Some` hands the request back to be decided now: the peer was looked up
    /// lately, or too many look-ups or requests wait.
    pub(super) fn park(
        &mut self,
        peer: PeerId,
        parked: Parked,
        registry: &RegistryHandle,
    ) -> Option<Parked> {
        if self.lately.contains(&peer, Instant::now())
            || (!self.parked.contains(&peer) && self.parked.keys() >= MAX_LOOKING_UP)
        {
            return Some(parked);
        }
        let first = match self.parked.push(peer, parked) {
            Ok(first) => first,
            Err(parked) => return Some(parked),
        };
        if first {
            let registry = registry.clone();
            self.tasks.spawn(async move {
                // The registry admits the peer as it takes in the record it finds.
                let _ = registry.get_station(peer).await;
                peer
            });
        }
        None
    }

    /// The next peer whose look-up ended, with the requests parked on it (a `select!` arm).
    pub(super) async fn next(&mut self) -> (PeerId, Vec<Parked>) {
        let peer = self.tasks.next().await;
        self.lately.insert(peer, (), Instant::now());
        (peer, self.parked.take(&peer))
    }

    /// Aborts the look-ups (the director stops).
    pub(super) async fn shutdown(&mut self) {
        self.tasks.shutdown().await;
    }
}

/// Whether this station takes part in a closed swarm: it has trust roots to certify members
/// by, being the auth station or enrolled with it. A station with neither certifies nobody,
/// itself included, and stays open (a station alone, a test bench).
pub(super) fn closed(config: &StationConfig) -> bool {
    config.auth || config.enroll.is_some()
}

/// The membership a director starts with: closed, trusting `--trust` and its own auth
/// server's issuer, or open.
pub(super) fn members(config: &StationConfig, issuer: Option<&str>) -> Members {
    match closed(config) {
        true => Members::closed(trusted(config, issuer)),
        false => Members::open(),
    }
}

/// The issuers a director trusts: `--trust`, and its own auth server's `issuer`. They
/// certify members (in a closed swarm) and sign the console tokens a miss is started for.
pub(super) fn trusted(config: &StationConfig, issuer: Option<&str>) -> TrustedIssuers {
    let own = issuer.and_then(|i| i.parse().ok());
    config.trust.iter().copied().chain(own).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vodmesh_proto::ProgramId;

    const CM: Roles = Roles {
        home: false,
        content_manager: true,
        auth: false,
    };

    #[test]
    fn console_requests_are_open_station_requests_need_a_member() {
        let program = ProgramId([1; 32]);
        for (request, wanted) in [
            (Request::Programs, Needs::Anyone),
            (Request::Manifest { program }, Needs::Anyone),
            (Request::Playable { program }, Needs::Anyone),
            (Request::Station, Needs::Anyone),
            (
                Request::Stations {
                    directors: vec![PeerId::random()],
                },
                Needs::Anyone,
            ),
            (Request::Held, Needs::Member),
            (
                Request::LocateCopy {
                    program,
                    index: 0.into(),
                    engines: vec![],
                },
                Needs::Member,
            ),
            (
                Request::Replicate {
                    program,
                    source: PeerId::random(),
                    source_addrs: vec![],
                    size: 0,
                },
                Needs::ContentManager,
            ),
        ] {
            assert_eq!(needs(&request), wanted, "{request:?}");
        }
    }

    #[test]
    fn strangers_are_looked_up_once_then_refused_and_roles_come_from_the_certificate() {
        use Admission::*;
        assert_eq!(admission(Needs::Anyone, false, None, false), Serve);
        assert_eq!(admission(Needs::Member, false, None, false), LookUp);
        assert_eq!(admission(Needs::Member, false, None, true), NotMember);
        assert_eq!(
            admission(Needs::Member, true, None, false),
            Serve,
            "an engine"
        );
        assert_eq!(
            admission(Needs::ContentManager, true, Some(CM), false),
            Serve
        );
        let home = Roles {
            home: true,
            ..Roles::default()
        };
        assert_eq!(
            admission(Needs::ContentManager, true, Some(home), false),
            NotCertified
        );
        assert_eq!(
            admission(Needs::ContentManager, true, None, true),
            NotCertified
        );
        assert_eq!(admission(Needs::ContentManager, false, None, false), LookUp);
        assert_eq!(
            admission(Needs::ContentManager, false, None, true),
            NotMember
        );
    }
}
