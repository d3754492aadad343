//! Distribution between stations (claim 12) and the director-to-director requests it needs.
//!
//! After an ingest with `--replicas N`, the content manager walks the swarm (no central list),
//! picks N other stations by free capacity and region, and sends each `Replicate`. The target
//! (seeking) director fetches the signed manifest from the source director and verifies it,
//! then for each segment asks the source director where it is (`Locate`), is told the engine,
//! and directs one of its own engines to fetch it (`EngineCommand::Fetch`). The receiving
//! engine copies it over `/vodmesh/copy/1`, verifies it and reports it stored; the director
//! enters it in its location table and, on the station's first segment of the program,
//! provides `program/<id>` in the registry.
//!
//! Source directors answer `Locate` only after checking, in the registry, that the asking
//! station is live, and then let that station's engines copy from their own engines.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::{Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};
use vodmesh_proto::catalog::CatalogRecord;
use vodmesh_proto::director::{ErrorCode, ErrorReply, Request, Response};
use vodmesh_proto::manifest::Manifest;
use vodmesh_proto::station::{EngineInfo, StationRecord, human_bytes};
use vodmesh_proto::time::now_ms;
use vodmesh_proto::{ProgramId, SegmentId};
use vodmesh_registry::registry::Command;
use vodmesh_registry::{RegistryHandle, WalkLimits};

use super::{Director, DirectorBehaviour};
use crate::control::{EngineCommand, Source};
use crate::events::{self, Kind};
use crate::store::locations::LocationState;

/// Segment copies a seeking director keeps in flight per replication.
const FETCH_WINDOW: usize = 4;
/// How long a checked station's engines may copy from this station's engines.
const ALLOW_FOR: Duration = Duration::from_secs(600);

/// Work the director's event loop does for its background tasks.
pub(super) enum Internal {
    /// Send `request` to director `peer` and hand back the answer.
    Ask {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: Request,
        reply: oneshot::Sender<Result<Response, String>>,
    },
    /// A program's publish time has come.
    PublishDue(ProgramId),
    /// A catalog record learned and verified in the background.
    Learned(CatalogRecord),
    /// Station `director` was found live: its engines may copy until `until_ms`.
    Allowed { director: PeerId, until_ms: u64 },
    /// A miss's holders were looked up: pick the source and order the copy.
    Miss(Box<super::miss::Gathered>),
    /// A copy from `station` finished.
    Copied {
        station: PeerId,
        copied: crate::control::Copied,
    },
    /// A replica of `program` was declined for want of room.
    Declined { program: ProgramId, why: String },
}

/// The director's distribution and publish state.
pub(super) struct State {
    pub(super) internal: mpsc::Sender<Internal>,
    outbound: HashMap<OutboundRequestId, oneshot::Sender<Result<Response, String>>>,
    /// Catalog records learned from the content manager or the registry.
    pub(super) learned: HashMap<ProgramId, CatalogRecord>,
    /// Programs this station already provides in the registry.
    pub(super) provided: HashSet<ProgramId>,
    /// Stations whose engines may copy from ours, until when.
    allowed: HashMap<PeerId, u64>,
}

impl State {
    pub(super) fn new(internal: mpsc::Sender<Internal>) -> Self {
        Self {
            internal,
            outbound: HashMap::new(),
            learned: HashMap::new(),
            provided: HashSet::new(),
            allowed: HashMap::new(),
        }
    }
}

/// Asks director `peer` through the director's event loop.
pub(super) async fn ask(
    internal: &mpsc::Sender<Internal>,
    peer: PeerId,
    addrs: Vec<Multiaddr>,
    request: Request,
) -> Result<Response, String> {
    let (reply, rx) = oneshot::channel();
    internal
        .send(Internal::Ask {
            peer,
            addrs,
            request,
            reply,
        })
        .await
        .map_err(|_| "director stopped".to_string())?;
    match rx.await {
        Ok(Ok(Response::Error(e))) => Err(e.message),
        Ok(r) => r,
        Err(_) => Err("director stopped".to_string()),
    }
}

fn reply_error(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error(ErrorReply::new(code, message))
}

/// Picks up to `n` targets among live stations: never `exclude`, stations with engines up,
/// most free capacity first, and new regions before regions already chosen.
pub(crate) fn pick_targets(
    stations: &[StationRecord],
    exclude: &[PeerId],
    n: usize,
) -> Vec<StationRecord> {
    let mut candidates: Vec<(u64, &StationRecord)> = stations
        .iter()
        .filter(|s| !exclude.contains(&s.director) && !s.roles.home)
        .filter(|s| s.engines.iter().any(|e| e.up))
        .map(|s| {
            let free = s
                .engines
                .iter()
                .filter(|e| e.up)
                .map(|e| e.room_for_copies().unwrap_or(u64::MAX / 1024))
                .fold(0u64, u64::saturating_add);
            (free, s)
        })
        .collect();
    candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.director.cmp(&b.1.director)));
    let mut chosen: Vec<StationRecord> = Vec::new();
    let mut regions: HashSet<Option<String>> = HashSet::new();
    // First pass: one per region; second pass: fill up.
    for pass in 0..2 {
        for (_, s) in &candidates {
            if chosen.len() >= n {
                return chosen;
            }
            if chosen.iter().any(|c| c.director == s.director) {
                continue;
            }
            if pass == 0 && !regions.insert(s.region.clone()) {
                continue;
            }
            chosen.push((*s).clone());
        }
    }
    chosen
}

impl Director {
    /// Requests other than the streaming core's: publish, replicate, locate, playable.
    pub(super) fn on_content_request(
        &mut self,
        swarm: &mut Swarm<DirectorBehaviour>,
        peer: PeerId,
        request: Request,
        channel: ResponseChannel<Response>,
    ) {
        let response = match request {
            Request::Publish { program, admin } => {
                match self.check_admin(&admin, "publish", &program) {
                    Ok(_) => self
                        .publish(swarm, program)
                        .map(Response::Program)
                        .unwrap_or_else(Response::Error),
                    Err(e) => Response::Error(e),
                }
            }
            Request::Published { record } => self.on_published(&record),
            Request::Replicate {
                program,
                source,
                source_addrs,
            } => self.on_replicate(peer, program, source, source_addrs),
            Request::LocateCopy { program, index } => {
                if let Some((channel, response)) = self.locate_copy(peer, program, index, channel) {
                    let _ = swarm
                        .behaviour_mut()
                        .control
                        .send_response(channel, response);
                }
                return;
            }
            Request::Playable { program } => {
                self.playable_request(program, channel);
                return;
            }
            other => reply_error(
                ErrorCode::BadRequest,
                format!("unsupported request {other:?}"),
            ),
        };
        let _ = swarm
            .behaviour_mut()
            .control
            .send_response(channel, response);
    }

    /// Answers of other directors to this director's requests.
    pub(super) fn on_outbound(&mut self, event: request_response::Event<Request, Response>) {
        match event {
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(reply) = self.dist.outbound.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(reply) = self.dist.outbound.remove(&request_id) {
                    let _ = reply.send(Err(error.to_string()));
                }
            }
            _ => {}
        }
    }

    /// Work sent by background tasks.
    pub(super) fn on_internal(&mut self, swarm: &mut Swarm<DirectorBehaviour>, msg: Internal) {
        match msg {
            Internal::Ask {
                peer,
                addrs,
                request,
                reply,
            } => {
                for addr in addrs {
                    swarm.add_peer_address(peer, addr);
                }
                let id = swarm.behaviour_mut().control.send_request(&peer, request);
                self.dist.outbound.insert(id, reply);
            }
            Internal::PublishDue(program) => {
                if let Err(e) = self.publish(swarm, program) {
                    tracing::warn!(%program, error = %e, "scheduled publish failed");
                }
            }
            Internal::Learned(record) => self.learn(record),
            Internal::Allowed { director, until_ms } => {
                self.dist.allowed.insert(director, until_ms);
            }
            Internal::Miss(gathered) => self.fill_miss(*gathered),
            Internal::Copied { station, copied } => self.on_copied(station, copied),
            Internal::Declined { program, why } => {
                tracing::warn!(%program, %why, "replica declined");
                self.activity.copies_declined += 1;
            }
        }
    }

    /// Copy-done from one of this station's engines: the location table was updated; on the
    /// station's first segment of a program it does not already announce, provide it.
    pub(super) fn on_stored(&mut self, swarm: &mut Swarm<DirectorBehaviour>, segment: SegmentId) {
        let me = self.peer_id();
        let program = segment.program;
        let ingesting = self.sessions.get(&program).is_some();
        if ingesting {
            return;
        }
        events::emit(me, program, Some(segment.index.0), Kind::Tabled);
        if self.dist.provided.insert(program) {
            let (reply, _) = oneshot::channel();
            self.registry.execute(
                &mut swarm.behaviour_mut().kad,
                Command::Provide { program, reply },
            );
            events::emit(me, program, None, Kind::Provided);
        }
    }

    /// After an ingest commit: send `Replicate` to `replicas` stations picked from the swarm.
    pub(super) fn distribute(&self, program: ProgramId, replicas: u32) {
        if replicas == 0 {
            return;
        }
        let me = self.peer_id();
        let addrs = self.addrs.clone();
        let registry = self.registry_handle.clone();
        let internal = self.dist.internal.clone();
        tokio::spawn(async move {
            let stations = match vodmesh_registry::walk(&registry, me, WalkLimits::default()).await
            {
                Ok(s) => s.into_iter().map(|(r, _)| r).collect::<Vec<_>>(),
                Err(e) => {
                    tracing::warn!(%program, error = %e, "distribution: swarm walk failed");
                    return;
                }
            };
            let targets = pick_targets(&stations, &[me], replicas as usize);
            if targets.len() < replicas as usize {
                tracing::warn!(%program, wanted = replicas, found = targets.len(), "distribution: not enough stations");
            }
            for target in targets {
                events::emit(
                    me,
                    program,
                    None,
                    Kind::ReplicateSent {
                        target: target.director,
                    },
                );
                let request = Request::Replicate {
                    program,
                    source: me,
                    source_addrs: addrs.clone(),
                };
                if let Err(e) = ask(&internal, target.director, target.addrs, request).await {
                    tracing::warn!(%program, target = %target.director, error = %e, "replicate refused");
                }
            }
        });
    }

    fn on_replicate(
        &mut self,
        from: PeerId,
        program: ProgramId,
        source: PeerId,
        source_addrs: Vec<Multiaddr>,
    ) -> Response {
        let me = self.peer_id();
        events::emit(me, program, None, Kind::ReplicateReceived { source });
        let up: Vec<(&EngineInfo, &mpsc::Sender<EngineCommand>)> = self
            .engines
            .iter()
            .zip(&self.engine_commands)
            .filter_map(|(e, tx)| e.as_ref().filter(|e| e.up).map(|e| (e, tx)))
            .collect();
        if up.is_empty() {
            return reply_error(ErrorCode::Unavailable, "no engine of this station is up");
        }
        // What the engines could take: free room and what eviction may free (`None`: one of
        // them is bounded only by its disks).
        let room = up.iter().try_fold(0u64, |sum, (e, _)| {
            e.room_for_copies().map(|r| sum.saturating_add(r))
        });
        let engines = up
            .iter()
            .map(|(e, tx)| (e.peer_id, (*tx).clone()))
            .collect();
        let job = Seek {
            me,
            content_manager: from,
            program,
            source,
            source_addrs,
            internal: self.dist.internal.clone(),
            registry: self.registry_handle.clone(),
            engines,
            room,
            held_elsewhere: !self.config.home,
        };
        tokio::spawn(async move {
            if let Err(e) = job.run().await {
                tracing::warn!(%program, %source, error = %e, "replication failed");
            }
        });
        Response::Ok
    }

    /// `LocateCopy`: the engine holding a segment. Answered at once when the asking station was
    /// checked recently; otherwise after a registry look-up of its station record (then its
    /// engines may copy from ours). Returns the answer to send now, if any.
    fn locate_copy(
        &mut self,
        peer: PeerId,
        program: ProgramId,
        index: u32,
        channel: ResponseChannel<Response>,
    ) -> Option<(ResponseChannel<Response>, Response)> {
        let segment = SegmentId::new(program, index);
        let located = self.locations.list(segment).ok().and_then(|list| {
            list.into_iter()
                .filter(|l| l.state == LocationState::Complete)
                .find_map(|l| {
                    self.engines
                        .iter()
                        .flatten()
                        .find(|e| e.peer_id == l.engine && e.up)
                        .map(|e| (e.peer_id, e.addrs.clone(), e.streams, e.max_streams))
                })
        });
        let Some((engine, addrs, streams, max_streams)) = located else {
            return Some((
                channel,
                reply_error(
                    ErrorCode::NotFound,
                    format!("segment {segment} is not here"),
                ),
            ));
        };
        let response = Response::Located {
            index,
            engine,
            addrs,
            streams,
            max_streams,
        };
        let now = now_ms();
        if self
            .dist
            .allowed
            .get(&peer)
            .is_some_and(|until| *until > now + 60_000)
        {
            return Some((channel, response));
        }
        let registry = self.registry_handle.clone();
        let internal = self.dist.internal.clone();
        let replies = self.replies.clone();
        let commands = self.engine_commands.clone();
        tokio::spawn(async move {
            let answer = match registry.get_station(peer).await {
                Ok(Some((record, _))) => {
                    let until_ms = now_ms() + ALLOW_FOR.as_millis() as u64;
                    let peers: Vec<PeerId> = record.engines.iter().map(|e| e.peer_id).collect();
                    for tx in &commands {
                        let _ = tx
                            .send(EngineCommand::AllowCopy {
                                peers: peers.clone(),
                                until_ms,
                            })
                            .await;
                    }
                    let _ = internal
                        .send(Internal::Allowed {
                            director: peer,
                            until_ms,
                        })
                        .await;
                    response
                }
                _ => reply_error(ErrorCode::Unauthorized, "not a live station of this swarm"),
            };
            let _ = replies.send((channel, answer)).await;
        });
        None
    }
}

/// One replication, run by the seeking director in a task of its own.
struct Seek {
    me: PeerId,
    content_manager: PeerId,
    program: ProgramId,
    source: PeerId,
    source_addrs: Vec<Multiaddr>,
    internal: mpsc::Sender<Internal>,
    registry: RegistryHandle,
    engines: Vec<(PeerId, mpsc::Sender<EngineCommand>)>,
    /// What the engines could take, free or evictable (`None`: unbounded).
    room: Option<u64>,
    held_elsewhere: bool,
}

impl Seek {
    async fn run(self) -> Result<(), String> {
        let program = self.program;
        let manifest = match ask(
            &self.internal,
            self.source,
            self.source_addrs.clone(),
            Request::Manifest { program },
        )
        .await?
        {
            Response::Manifest(signed) => {
                Manifest::verify(&signed).map_err(|e| format!("bad manifest: {e}"))?
            }
            other => return Err(format!("unexpected answer to Manifest: {other:?}")),
        };
        if manifest.program != program || manifest.content_manager != self.content_manager {
            return Err("manifest is not the requested program of this content manager".into());
        }
        events::emit(self.me, program, None, Kind::ManifestVerified);
        let need = manifest.content.total_size();
        if let Some(room) = self.room.filter(|room| *room < need) {
            let why = format!(
                "no room: the program needs {}, this station's engines have {} free or evictable",
                human_bytes(need),
                human_bytes(room)
            );
            let _ = self
                .internal
                .send(Internal::Declined {
                    program,
                    why: why.clone(),
                })
                .await;
            return Err(why);
        }
        // Learn the program's state while we are at it.
        if let Some(record) = super::publish::fetch_record(&self.registry, program).await {
            let _ = self.internal.send(Internal::Learned(record)).await;
        }
        let (done_tx, mut done_rx) = mpsc::channel(FETCH_WINDOW * 2);
        let mut in_flight = 0usize;
        let mut failed = Vec::new();
        for (n, entry) in manifest.content.segments.iter().enumerate() {
            while in_flight >= FETCH_WINDOW {
                if let Some((seg, result)) = done_rx.recv().await {
                    in_flight -= 1;
                    if let Err(e) = result {
                        failed.push((seg, e));
                    }
                }
            }
            events::emit(self.me, program, Some(entry.index), Kind::LocateAsked);
            let request = Request::LocateCopy {
                program,
                index: entry.index,
            };
            let (engine, addrs) = match ask(
                &self.internal,
                self.source,
                self.source_addrs.clone(),
                request,
            )
            .await?
            {
                Response::Located { engine, addrs, .. } => (engine, addrs),
                other => return Err(format!("unexpected answer to Locate: {other:?}")),
            };
            events::emit(
                self.me,
                program,
                Some(entry.index),
                Kind::Located { engine },
            );
            let (mine, tx) = &self.engines[n % self.engines.len()];
            events::emit(
                self.me,
                program,
                Some(entry.index),
                Kind::FetchDirected { engine: *mine },
            );
            tx.send(EngineCommand::Fetch {
                segment: SegmentId::new(program, entry.index),
                expect: Some((entry.hash, entry.size)),
                sources: vec![Source { engine, addrs }],
                held_elsewhere: self.held_elsewhere,
                done: done_tx.clone(),
            })
            .await
            .map_err(|_| "engine stopped".to_string())?;
            in_flight += 1;
        }
        while in_flight > 0 {
            let Some((seg, result)) = done_rx.recv().await else {
                break;
            };
            in_flight -= 1;
            if let Err(e) = result {
                failed.push((seg, e));
            }
        }
        if let Some((seg, e)) = failed.first() {
            return Err(format!(
                "{} segment(s) failed, first {seg}: {e}",
                failed.len()
            ));
        }
        events::emit(self.me, program, None, Kind::ReplicaComplete);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vodmesh_proto::station::{EngineInfo, Roles};

    fn station(region: &str, free: u64, home: bool) -> StationRecord {
        StationRecord {
            director: PeerId::random(),
            addrs: vec![],
            engines: vec![EngineInfo {
                peer_id: PeerId::random(),
                addrs: vec![],
                streams: 0,
                max_streams: 1,
                used: 0,
                capacity: free,
                up: true,
                disks: Vec::new(),
            }],
            region: Some(region.into()),
            coords: None,
            bandwidth_mbps: 0,
            roles: Roles {
                home,
                content_manager: false,
                auth: false,
            },
            issuer: None,
            issued_ms: 0,
            expires_ms: 0,
        }
    }

    #[test]
    fn targets_prefer_free_capacity_and_new_regions_and_skip_the_home() {
        let home = station("eu", 1000, true);
        let a = station("eu", 500, false);
        let b = station("eu", 400, false);
        let c = station("us", 100, false);
        let all = vec![home.clone(), a.clone(), b.clone(), c.clone()];
        let picked: Vec<PeerId> = pick_targets(&all, &[home.director], 2)
            .iter()
            .map(|s| s.director)
            .collect();
        assert_eq!(picked, vec![a.director, c.director]);
        let picked: Vec<PeerId> = pick_targets(&all, &[], 3)
            .iter()
            .map(|s| s.director)
            .collect();
        assert_eq!(picked, vec![a.director, c.director, b.director]);
    }
}
