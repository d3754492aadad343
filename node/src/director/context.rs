//! What the request families share, lent by the loop for one call ([`Ctx`]): this station
//! ([`Me`]), its engines, its segment location table and catalog, its activity counters, its
//! observer, the registry, and the way to ask other directors.

use libp2p::identity::Keypair;
use libp2p::request_response::ResponseChannel;
use libp2p::{Multiaddr, PeerId, kad};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use vodmesh_proto::director::{Activity, Response};
use vodmesh_proto::signed::Signed;
use vodmesh_proto::station::{Counters, MAX_REVOKED, Roles, StationRecord};
use vodmesh_proto::time::{in_ms, now_ms};
use vodmesh_proto::{ProgramId, SegmentId, admin};
use vodmesh_registry::registry::Command;
use vodmesh_registry::{PersistentStore, Registry, RegistryHandle};

use super::catalog::Infos;
use super::choose::Link;
use super::engines::{EngineId, EngineTable};
use super::error::Error;
use super::outbound::Asker;
use crate::config::StationConfig;
use crate::content::Catalog;
use crate::control::{Copied, FetchFailed, Fetched};
use crate::events::Observer;
use crate::store::locations::{Location, LocationState, LocationTable};

/// Who waits for an answer: a peer over `/vodmesh/director/1`, or this station's own HTTP edge
/// asking on a player's behalf ([`super::http`]).
#[derive(Debug)]
pub(super) enum Client {
    /// A peer's request.
    Peer(ResponseChannel<Response>),
    /// The HTTP edge's.
    Local(oneshot::Sender<Response>),
}

/// An answer and the client waiting for it.
pub(super) type Reply = (Client, Response);

/// This station as its director knows it: identity, configuration, addresses.
pub(super) struct Me {
    /// The director's key: it signs the station record, manifests and catalog records.
    pub(super) key: Keypair,
    /// The director's peer id.
    pub(super) peer_id: PeerId,
    /// How the station was started.
    pub(super) config: StationConfig,
    /// Where other peers reach the director.
    pub(super) addrs: Vec<Multiaddr>,
    /// Peers whose admin proofs this station accepts: its own identity and `--admin`.
    pub(super) admins: Vec<PeerId>,
    /// The issuer key of this station's auth server (`--auth`), for the station record.
    pub(super) issuer: Option<String>,
    /// Its station certificate, once it has one, for the station record.
    pub(super) certificate: watch::Receiver<Option<Vec<u8>>>,
    /// The auth server, when this is the auth station: its revocations go into the record.
    pub(super) auth: Option<std::sync::Arc<crate::auth::Server>>,
}

impl Me {
    /// Whether this station's engines can copy at all: they hold engine tokens only when the
    /// station is the auth station or enrolled with it.
    pub(super) fn can_copy(&self) -> bool {
        self.config.auth || self.config.enroll.is_some()
    }

    /// Where this station is and what its link gives, for the cost of copies.
    pub(super) fn link(&self) -> Link {
        Link {
            coords: self.config.coords,
            region: self.config.region.clone(),
            bandwidth_mbps: self.config.bandwidth_mbps,
        }
    }

    /// This station's record as it is now, with its running totals `counters`.
    pub(super) fn record(&self, engines: &EngineTable, counters: Counters) -> StationRecord {
        let config = &self.config;
        StationRecord {
            director: self.peer_id,
            addrs: self.addrs.clone(),
            engines: engines.infos().cloned().collect(),
            region: config.region.clone(),
            coords: config.coords,
            bandwidth_mbps: config.bandwidth_mbps,
            roles: Roles {
                home: config.home,
                content_manager: config.content_manager,
                auth: config.auth,
            },
            issuer: self.issuer.clone(),
            issued_ms: now_ms(),
            expires_ms: in_ms(config.registry.record_ttl),
            counters,
            certificate: (self.certificate.borrow().clone()).map(serde_bytes::ByteBuf::from),
            revoked: self.revoked(),
            http: config.http,
            https: config.http.is_some() && config.http_tls.is_some(),
        }
    }

    /// The stations this auth station's issuer revoked, the latest [`MAX_REVOKED`].
    fn revoked(&self) -> Vec<PeerId> {
        let Some(auth) = &self.auth else {
            return Vec::new();
        };
        match auth.db().revocations() {
            Ok(mut list) => {
                list.truncate(MAX_REVOKED);
                list
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the revocations");
                Vec::new()
            }
        }
    }

    /// Checks an admin proof for operation `op` on `program`; returns the admin.
    pub(super) fn check_admin(
        &self,
        proof: &Signed,
        op: &str,
        program: &ProgramId,
    ) -> Result<PeerId, Error> {
        self.check_admin_of(proof, op, program.as_bytes())
    }

    /// Checks an admin proof for operation `op` on `subject`; returns the admin.
    pub(super) fn check_admin_of(
        &self,
        proof: &Signed,
        op: &str,
        subject: &[u8],
    ) -> Result<PeerId, Error> {
        let admin = admin::check(proof, op, subject, self.peer_id, &self.admins, now_ms())?;
        Ok(admin)
    }
}

/// Registry writes started on the loop (the Kademlia behaviour is the swarm's).
pub(super) struct Dht<'a> {
    /// Tracks the queries.
    pub(super) registry: &'a mut Registry,
    /// The swarm's Kademlia behaviour.
    pub(super) kad: &'a mut kad::Behaviour<PersistentStore>,
}

impl Dht<'_> {
    /// Runs `command` with nobody waiting for its answer.
    fn run(
        &mut self,
        command: impl FnOnce(oneshot::Sender<Result<(), vodmesh_registry::RegistryError>>) -> Command,
    ) {
        let (reply, _) = oneshot::channel();
        self.registry.execute(self.kad, command(reply));
    }

    /// Announces this station as a holder of `program` (`program/<id>`).
    pub(super) fn provide(&mut self, program: ProgramId) {
        self.run(|reply| Command::Provide { program, reply });
    }

    /// Puts a signed catalog record (`catalog/<id>`).
    pub(super) fn put_catalog(&mut self, record: Signed) {
        self.run(|reply| Command::PutCatalog { record, reply });
    }

    /// Puts this station's signed record (`station/<peer>`).
    pub(super) fn put_station(&mut self, record: Signed) {
        self.run(|reply| Command::PutStation { record, reply });
    }
}

/// The director's state that is no request family's own: what [`Ctx`] lends out.
pub(super) struct Shared {
    /// This station.
    pub(super) me: Me,
    /// Its engines.
    pub(super) engines: EngineTable,
    /// Which engine holds which segment.
    pub(super) locations: LocationTable,
    /// The content manager's catalog (with `--content-manager`).
    pub(super) catalog: Option<Catalog>,
    /// The manifests and records of programs this station holds segments of (issue 25).
    pub(super) kept: Catalog,
    /// What the director counts (`Request::Activity`, mirrored into the metrics).
    pub(super) activity: Activity,
    /// Where the station's events go.
    pub(super) observer: Observer,
    /// Tracks the registry's queries on the loop.
    pub(super) registry: Registry,
    /// The registry, for work off the loop.
    pub(super) registry_handle: RegistryHandle,
    /// Other directors, for work off the loop.
    pub(super) asker: Asker,
    /// Swarm walks, shared by the asks of two seconds.
    pub(super) walks: vodmesh_registry::RecentWalk,
    /// The catalog entries `Held` has verified.
    pub(super) infos: Infos,
}

impl Shared {
    /// Lends the shared state, with the swarm's Kademlia behaviour for registry writes.
    pub(super) fn ctx<'a>(&'a mut self, kad: &'a mut kad::Behaviour<PersistentStore>) -> Ctx<'a> {
        Ctx {
            me: &self.me,
            engines: &mut self.engines,
            locations: &self.locations,
            catalog: self.catalog.as_ref(),
            kept: &self.kept,
            activity: &mut self.activity,
            observer: &self.observer,
            registry: &self.registry_handle,
            asker: &self.asker,
            walks: &self.walks,
            infos: &self.infos,
            dht: Dht {
                registry: &mut self.registry,
                kad,
            },
        }
    }
}

/// What the loop lends a request family for one call.
pub(super) struct Ctx<'a> {
    /// This station.
    pub(super) me: &'a Me,
    /// Its engines.
    pub(super) engines: &'a mut EngineTable,
    /// Which engine holds which segment.
    pub(super) locations: &'a LocationTable,
    /// The content manager's catalog (with `--content-manager`).
    pub(super) catalog: Option<&'a Catalog>,
    /// The manifests and records of programs this station holds segments of.
    pub(super) kept: &'a Catalog,
    /// What the director counts.
    pub(super) activity: &'a mut Activity,
    /// Where the station's events go.
    pub(super) observer: &'a Observer,
    /// The registry, for work off the loop.
    pub(super) registry: &'a RegistryHandle,
    /// Other directors, for work off the loop.
    pub(super) asker: &'a Asker,
    /// Swarm walks, shared by the asks of two seconds.
    pub(super) walks: &'a vodmesh_registry::RecentWalk,
    /// The catalog entries `Held` has verified.
    pub(super) infos: &'a Infos,
    /// The registry, for writes on the loop.
    pub(super) dht: Dht<'a>,
}

impl Ctx<'_> {
    /// The engines holding `segment`, and their copies' state.
    pub(super) fn holders(&self, segment: SegmentId) -> Result<Vec<Location>, Error> {
        Ok(self.locations.list(segment)?)
    }

    /// Enters a copy of `segment` into `engine` in the location table as filling.
    pub(super) fn filling(&self, segment: SegmentId, engine: PeerId) {
        let filling = Location {
            engine,
            state: LocationState::Filling,
            load: 0,
        };
        if let Err(e) = self.locations.insert(segment, &filling) {
            tracing::warn!(%segment, error = %e, "location table write failed");
        }
    }

    /// A copy of `segment` into `engine` (`peer`) ended: a failed one leaves no filling
    /// location behind, and the engine is no copy target for a while. Returns the copy when
    /// it succeeded.
    pub(super) fn copy_ended(
        &mut self,
        segment: SegmentId,
        (engine, peer): (EngineId, PeerId),
        outcome: Fetched,
    ) -> Option<Copied> {
        match outcome {
            Ok(copied) => Some(copied),
            // Its filling location stays until the engine is heard of again (a stopped
            // engine is down: no console is sent there).
            Err(FetchFailed::EngineStopped) => None,
            Err(e) => {
                tracing::warn!(%segment, engine = %peer, error = %e, "copy failed at every source");
                if let Err(e) = self.locations.remove(segment, &peer) {
                    tracing::warn!(%segment, error = %e, "location table write failed");
                }
                self.engines.copy_failed(engine, Instant::now());
                None
            }
        }
    }
}
