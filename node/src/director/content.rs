//! The director's content-manager requests: ingest begin, commit and abort, the catalog; and
//! the end of ingests that never commit (expired, or found interrupted at start).

use libp2p::Swarm;
use libp2p::request_response::ResponseChannel;
use tokio::sync::oneshot;
use vodmesh_proto::ProgramId;
use vodmesh_proto::SegmentId;
use vodmesh_proto::admin;
use vodmesh_proto::catalog::{CatalogRecord, ProgramState};
use vodmesh_proto::director::Request;
use vodmesh_proto::director::{EngineTarget, ErrorCode, ErrorReply, ProgramInfo, Response};
use vodmesh_proto::manifest::{Manifest, ManifestContent};
use vodmesh_proto::signed::Signed;
use vodmesh_proto::time::now_ms;
use vodmesh_registry::registry::Command;

use super::{Director, DirectorBehaviour};
use crate::content::{CatalogEntry, Session, plan};
use crate::control::{EngineCommand, Expected};

fn refuse(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(code, message)
}

impl Director {
    /// `IngestBegin`, `IngestCommit` and `IngestAbort`.
    pub(super) fn on_ingest_request(
        &mut self,
        swarm: &mut Swarm<DirectorBehaviour>,
        peer: libp2p::PeerId,
        request: Request,
        channel: ResponseChannel<Response>,
    ) {
        let response = match request {
            Request::IngestBegin {
                content,
                publish_at_ms,
                replicas,
                admin,
            } => self
                .ingest_begin(peer, content, publish_at_ms, replicas, &admin)
                .unwrap_or_else(Response::Error),
            Request::IngestCommit { program, admin } => match self.ingest_commit(program, &admin) {
                Ok((info, catalog_record)) => {
                    self.announce(swarm, program, catalog_record);
                    Response::Program(info)
                }
                Err(e) => Response::Error(e),
            },
            Request::IngestAbort { program, admin } => {
                match self.check_admin(&admin, "ingest-abort", &program) {
                    Ok(_) => {
                        self.drop_ingest(program, "its client gave up");
                        Response::Ok
                    }
                    Err(e) => Response::Error(e),
                }
            }
            other => Response::Error(refuse(
                ErrorCode::BadRequest,
                format!("unsupported request {other:?}"),
            )),
        };
        let _ = swarm
            .behaviour_mut()
            .control
            .send_response(channel, response);
    }

    /// Ends the ingest of `program` without a commit: its segments are removed from every
    /// engine and from the location table, and it leaves the journal.
    pub(super) fn drop_ingest(&mut self, program: ProgramId, why: &str) {
        let Some(session) = self.sessions.drop_session(&program, now_ms()) else {
            return;
        };
        let segments = session.content.segments.len() as u32;
        tracing::warn!(%program, stored = session.stored.len(), segments, why, "ingest dropped: its segments are removed");
        self.remove_ingested(program, segments);
    }

    /// Drops the ingests that made no progress for `--ingest-timeout` (their clients died).
    pub(super) fn expire_ingests(&mut self) {
        for program in self.sessions.expired(now_ms(), self.config.ingest_timeout) {
            self.drop_ingest(program, "no segment stored within --ingest-timeout");
        }
    }

    /// At start: the ingests the journal shows begun and never committed (the station was
    /// stopped mid-ingest) leave nothing behind.
    pub(super) fn drop_interrupted_ingests(&mut self) {
        let open = match self.catalog.as_ref().map(|c| c.open_ingests()) {
            Some(Ok(open)) => open,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the journal of ingests in progress");
                return;
            }
            None => return,
        };
        let now = now_ms();
        for (program, segments) in open {
            // A committed program is never taken apart, whatever the journal says.
            let committed = self
                .catalog
                .as_ref()
                .is_some_and(|c| c.get(&program).is_ok_and(|e| e.is_some()));
            if committed {
                if let Some(Err(e)) = self.catalog.as_ref().map(|c| c.ingest_dropped(&program)) {
                    tracing::warn!(%program, error = %e, "journal entry of a committed program not removed");
                }
                continue;
            }
            tracing::warn!(%program, segments, "an ingest was interrupted by the last stop: its segments are removed");
            self.sessions.drop_session(&program, now);
            self.remove_ingested(program, segments);
        }
    }

    /// A segment stored after its ingest was dropped (its push was in flight): removed again,
    /// and kept out of the location table. Returns whether it was such a segment.
    pub(super) fn stored_after_drop(&mut self, engine: usize, segment: SegmentId) -> bool {
        if !self.sessions.was_dropped(&segment.program, now_ms()) {
            return false;
        }
        if let Some(tx) = self.engine_commands.get(engine) {
            let _ = tx.try_send(EngineCommand::Remove {
                segments: vec![segment],
            });
        }
        true
    }

    /// Tells every engine to remove segments `0..segments` of `program`, takes them out of the
    /// location table and, once every engine was told, out of the journal (else the next
    /// start removes them).
    fn remove_ingested(&mut self, program: ProgramId, segments: u32) {
        let list: Vec<SegmentId> = (0..segments).map(|i| SegmentId::new(program, i)).collect();
        let mut told = true;
        for (i, tx) in self.engine_commands.iter().enumerate() {
            if let Some(Some(engine)) = self.engines.get(i) {
                for segment in &list {
                    let _ = self.locations.remove(*segment, &engine.peer_id);
                }
            }
            let remove = EngineCommand::Remove {
                segments: list.clone(),
            };
            if tx.try_send(remove).is_err() {
                tracing::warn!(%program, engine = i, "engine command queue full: segments of a dropped ingest stay until the next start");
                told = false;
            }
        }
        if told && let Some(Err(e)) = self.catalog.as_ref().map(|c| c.ingest_dropped(&program)) {
            tracing::warn!(%program, error = %e, "dropped ingest not taken out of the journal");
        }
    }

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
        let now = now_ms();
        // The same program begun again (its client was restarted) resumes the session: the
        // same engines take the same segments, and those already stored are accepted as
        // they are.
        let placement = match self.sessions.get(&program) {
            Some(session) => session.placement.clone(),
            None => {
                // Room: what each engine has free, less what ingests in progress were
                // promised (their bytes are not all stored yet).
                let rooms: Vec<Option<u64>> = up
                    .iter()
                    .map(|&i| {
                        let free = self.engines[i].as_ref().and_then(|e| e.free());
                        free.map(|f| f.saturating_sub(self.sessions.pledged(i)))
                    })
                    .collect();
                let sizes: Vec<u64> = content.segments.iter().map(|s| s.size).collect();
                let placed = plan::place(&rooms, &sizes).map_err(|short| {
                    tracing::warn!(%program, need = short.need, free = short.free, "ingest refused: not enough room");
                    refuse(ErrorCode::Full, short.message())
                })?;
                placed.into_iter().map(|slot| up[slot]).collect()
            }
        };
        // Journaled before any engine hears of it: a stop from here on leaves segments that
        // the next start drops.
        catalog
            .ingest_begun(&program, content.segments.len() as u32)
            .map_err(|e| refuse(ErrorCode::Internal, e.to_string()))?;
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
        for (seg, engine) in content.segments.iter().zip(&placement) {
            let Some(slot) = up.iter().position(|e| e == engine) else {
                return Err(refuse(
                    ErrorCode::Unavailable,
                    "an engine of this ingest is down; retry once it is back",
                ));
            };
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
        let stored = self
            .sessions
            .end(&program)
            .map(|s| s.stored)
            .unwrap_or_default();
        self.sessions.begin(
            program,
            Session {
                content,
                publish_at_ms,
                replicas,
                stored,
                placement,
                progress_ms: now,
            },
        );
        targets.retain(|t| !t.segments.is_empty());
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
        let missing = session
            .content
            .segments
            .len()
            .saturating_sub(session.stored.len());
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
