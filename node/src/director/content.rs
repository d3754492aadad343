//! The director's content-manager requests: ingest begin and commit, the catalog.

use libp2p::Swarm;
use libp2p::request_response::ResponseChannel;
use tokio::sync::oneshot;
use vodmesh_proto::ProgramId;
use vodmesh_proto::SegmentId;
use vodmesh_proto::admin;
use vodmesh_proto::catalog::{CatalogRecord, ProgramState};
use vodmesh_proto::director::{EngineTarget, ErrorCode, ErrorReply, ProgramInfo, Response};
use vodmesh_proto::manifest::{Manifest, ManifestContent};
use vodmesh_proto::signed::Signed;
use vodmesh_proto::time::now_ms;
use vodmesh_registry::registry::Command;

use super::{Director, DirectorBehaviour};
use crate::content::{CatalogEntry, Session};
use crate::control::{EngineCommand, Expected};

fn refuse(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(code, message)
}

impl Director {
    pub(super) fn check_admin(
        &self,
        proof: &Signed,
        op: &str,
        program: &ProgramId,
    ) -> Result<libp2p::PeerId, ErrorReply> {
        admin::check(
            proof,
            op,
            program.as_bytes(),
            self.peer_id(),
            &self.admins,
            now_ms(),
        )
        .map_err(|e| refuse(ErrorCode::Unauthorized, e.to_string()))
    }

    pub(super) fn ingest_begin(
        &mut self,
        from: libp2p::PeerId,
        content: ManifestContent,
        publish_at_ms: Option<u64>,
        replicas: u32,
        proof: &Signed,
    ) -> Result<Response, ErrorReply> {
        let Some(catalog) = &self.catalog else {
            return Err(refuse(
                ErrorCode::BadRequest,
                "this station is not a content manager (start it with --content-manager)",
            ));
        };
        content
            .check()
            .map_err(|e| refuse(ErrorCode::BadRequest, e.to_string()))?;
        let program = content.program_id();
        self.check_admin(proof, "ingest", &program)?;
        if catalog
            .get(&program)
            .map_err(|e| refuse(ErrorCode::Internal, e.to_string()))?
            .is_some()
        {
            return Err(refuse(
                ErrorCode::BadRequest,
                format!("program {program} is already in the catalog"),
            ));
        }
        let up: Vec<usize> = self
            .engines
            .iter()
            .enumerate()
            .filter(|(_, e)| e.as_ref().is_some_and(|e| e.up))
            .map(|(i, _)| i)
            .collect();
        if up.is_empty() {
            return Err(refuse(
                ErrorCode::Unavailable,
                "no engine of this station is up",
            ));
        }
        // Round-robin: consecutive segments on different engines, so playback hands off
        // from engine to engine and ingest writes to all of them at once.
        let mut targets: Vec<EngineTarget> = Vec::new();
        let mut expects: Vec<Vec<(SegmentId, Expected)>> = vec![Vec::new(); up.len()];
        for engine in &up {
            if let Some(Some(info)) = self.engines.get(*engine) {
                targets.push(EngineTarget {
                    peer_id: info.peer_id,
                    addrs: info.addrs.clone(),
                    segments: Vec::new(),
                });
            }
        }
        for (n, seg) in content.segments.iter().enumerate() {
            let slot = n % targets.len();
            targets[slot].segments.push(seg.index);
            expects[slot].push((
                SegmentId::new(program, seg.index),
                Expected {
                    from,
                    hash: seg.hash,
                    size: seg.size,
                },
            ));
        }
        for (slot, engine) in up.iter().enumerate() {
            let segments = std::mem::take(&mut expects[slot]);
            let Some(tx) = self.engine_commands.get(*engine) else {
                continue;
            };
            if tx.try_send(EngineCommand::Expect { segments }).is_err() {
                return Err(refuse(ErrorCode::Busy, "engine command queue full; retry"));
            }
        }
        self.sessions.begin(
            program,
            Session {
                content,
                publish_at_ms,
                replicas,
                stored: Default::default(),
            },
        );
        Ok(Response::IngestPlan {
            program,
            engines: targets,
        })
    }

    pub(super) fn ingest_commit(
        &mut self,
        program: ProgramId,
        proof: &Signed,
    ) -> Result<(ProgramInfo, Signed), ErrorReply> {
        self.check_admin(proof, "ingest-commit", &program)?;
        let Some(session) = self.sessions.get(&program) else {
            return Err(refuse(
                ErrorCode::NotFound,
                "no ingest of this program in progress",
            ));
        };
        let missing = session.content.segments.len() - session.stored.len();
        if missing > 0 {
            return Err(refuse(
                ErrorCode::BadRequest,
                format!("{missing} segment(s) not stored yet; ingest incomplete"),
            ));
        }
        let Some(session) = self.sessions.end(&program) else {
            return Err(refuse(
                ErrorCode::NotFound,
                "no ingest of this program in progress",
            ));
        };
        let now = now_ms();
        let manifest = Manifest::new(session.content, self.peer_id(), now);
        let record = CatalogRecord {
            program,
            title: manifest.content.title.clone(),
            manifest_hash: vodmesh_proto::SegmentHash::of(&vodmesh_proto::codec::encode(&manifest)),
            // Inactive until its publish time; the scheduler publishes it then (claim 11).
            state: if session.publish_at_ms.is_some_and(|t| t <= now) {
                ProgramState::Published
            } else {
                ProgramState::Inactive
            },
            publish_at_ms: session.publish_at_ms.unwrap_or(0),
            replicas: session.replicas,
            content_manager: self.peer_id(),
            home: self.peer_id(),
            issued_ms: now,
        };
        let entry = CatalogEntry {
            manifest: manifest.sign(&self.key),
            record: record.sign(&self.key),
        };
        let Some(catalog) = &self.catalog else {
            return Err(refuse(
                ErrorCode::BadRequest,
                "this station is not a content manager",
            ));
        };
        catalog
            .put(&program, &entry)
            .map_err(|e| refuse(ErrorCode::Internal, e.to_string()))?;
        // The home station keeps its programs: pin every segment on every engine.
        let segments: Vec<SegmentId> = (0..manifest.content.segments.len() as u32)
            .map(|i| SegmentId::new(program, i))
            .collect();
        for tx in &self.engine_commands {
            let _ = tx.try_send(EngineCommand::Pin {
                segments: segments.clone(),
            });
        }
        let info = self
            .program_info(&entry)
            .ok_or_else(|| refuse(ErrorCode::Internal, "catalog entry does not verify"))?;
        tracing::info!(%program, title = %info.title, segments = info.segments, "program ingested");
        Ok((info, entry.record))
    }

    /// Puts the catalog record in the registry and announces this station as a holder.
    pub(super) fn announce(
        &mut self,
        swarm: &mut Swarm<DirectorBehaviour>,
        program: ProgramId,
        record: Signed,
    ) {
        let record_copy = record.clone();
        let kad = &mut swarm.behaviour_mut().kad;
        let (reply, _) = oneshot::channel();
        self.registry
            .execute(kad, Command::PutCatalog { record, reply });
        let (reply, _) = oneshot::channel();
        self.registry
            .execute(kad, Command::Provide { program, reply });
        self.dist.provided.insert(program);
        if let Ok(rec) = CatalogRecord::verify(&record_copy) {
            if rec.state == ProgramState::Inactive && rec.publish_at_ms > 0 {
                self.arm(program, rec.publish_at_ms);
            }
            self.distribute(program, rec.replicas);
        }
    }

    /// `Programs`: the catalog, each program with the stations the registry lists as holding
    /// it (answered from a task: the registry look-ups take a moment).
    pub(super) fn programs(&self, channel: ResponseChannel<Response>) {
        let infos = match &self.catalog {
            Some(catalog) => match catalog.all() {
                Ok(entries) => entries
                    .iter()
                    .filter_map(|e| self.program_info(e))
                    .collect::<Vec<_>>(),
                Err(e) => {
                    let _ = self.replies.try_send((
                        channel,
                        Response::Error(refuse(ErrorCode::Internal, e.to_string())),
                    ));
                    return;
                }
            },
            None => Vec::new(),
        };
        let registry = self.registry_handle.clone();
        let replies = self.replies.clone();
        tokio::spawn(async move {
            let mut out = Vec::with_capacity(infos.len());
            for mut info in infos {
                if let Ok(holders) = registry.holders(info.program).await {
                    let mut all: std::collections::BTreeSet<libp2p::PeerId> =
                        info.stations.iter().copied().collect();
                    all.extend(holders);
                    info.stations = all.into_iter().collect();
                }
                out.push(info);
            }
            let _ = replies.send((channel, Response::Programs(out))).await;
        });
    }

    pub(super) fn program_info(&self, entry: &CatalogEntry) -> Option<ProgramInfo> {
        let manifest = entry.manifest()?;
        let record = entry.record()?;
        Some(ProgramInfo {
            program: manifest.program,
            title: manifest.content.title.clone(),
            state: record.state,
            publish_at_ms: (record.publish_at_ms > 0).then_some(record.publish_at_ms),
            size: manifest.content.total_size(),
            duration_ms: manifest.content.duration_ms,
            segments: manifest.content.segments.len() as u32,
            stations: vec![self.peer_id()],
        })
    }
}
