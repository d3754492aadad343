//! Publishing (claim 11): program state, the publish scheduler, and `playable`.
//!
//! A program enters the catalog inactive unless its publish time has already come. The
//! content manager arms a timer for every inactive program with a publish time, at start (so a
//! restart loses nothing: the state lives in the redb catalog) and at commit. When it fires, or
//! on `vodmesh publish`, the content manager re-signs the catalog record as published, stores
//! it, puts it in the registry and sends it (`Published`) to every station holding the program.
//! Other directors learn the state from that message or from the registry's catalog record,
//! accepting only records signed by the program's content manager, which is also its home.

use libp2p::Swarm;
use libp2p::request_response::ResponseChannel;
use tokio::sync::oneshot;
use vodmesh_proto::ProgramId;
use vodmesh_proto::catalog::{CatalogRecord, ProgramState};
use vodmesh_proto::director::{ErrorCode, ErrorReply, ProgramInfo, Request, Response};
use vodmesh_proto::signed::Signed;
use vodmesh_proto::time::now_ms;
use vodmesh_registry::RegistryHandle;
use vodmesh_registry::registry::Command;

use super::distribution::{Internal, ask};
use super::{Director, DirectorBehaviour};
use crate::content::CatalogEntry;
use crate::events::{self, Kind};

/// The refusal every director gives for a program that is not playable yet.
pub const NOT_PUBLISHED: &str = "program not published";

/// Verifies a catalog record as a director that is not its content manager must: signed by
/// the content manager it names, and that content manager is the program's home.
pub(crate) fn verify_record(signed: &Signed) -> Option<CatalogRecord> {
    let record = CatalogRecord::verify(signed).ok()?;
    (record.home == record.content_manager).then_some(record)
}

/// The newest valid catalog record of `program` in the registry.
pub(crate) async fn fetch_record(
    registry: &RegistryHandle,
    program: ProgramId,
) -> Option<CatalogRecord> {
    let records = registry.get_catalog(program).await.ok()?;
    records
        .iter()
        .filter_map(verify_record)
        .filter(|r| r.program == program)
        .max_by_key(|r| r.issued_ms)
}

impl Director {
    /// Whether `program` may be streamed now: `Ok`, or the error to send the console
    /// (`program not published`, or unknown program). Uses the catalog (content manager) or
    /// what this director learned; [`Request::Playable`] refreshes from the registry.
    pub(crate) fn playable(&self, program: &ProgramId) -> Result<(), ErrorReply> {
        match self.known_record(program) {
            Some(r) if r.playable(now_ms()) => Ok(()),
            Some(_) => Err(ErrorReply::new(ErrorCode::NotPublished, NOT_PUBLISHED)),
            None => Err(ErrorReply::new(ErrorCode::NotFound, "unknown program")),
        }
    }

    fn known_record(&self, program: &ProgramId) -> Option<CatalogRecord> {
        let own = self
            .catalog
            .as_ref()
            .and_then(|c| c.get(program).ok().flatten())
            .and_then(|e| e.record());
        own.or_else(|| self.dist.learned.get(program).cloned())
    }

    /// `Playable`: answered from what is known when it is playable; otherwise the registry's
    /// record is fetched first (a director may not have heard the publish message).
    pub(super) fn playable_request(
        &mut self,
        program: ProgramId,
        channel: ResponseChannel<Response>,
    ) {
        let own = self
            .catalog
            .as_ref()
            .and_then(|c| c.get(&program).ok().flatten())
            .is_some();
        let answer = |r: Result<(), ErrorReply>| r.map_or_else(Response::Error, |()| Response::Ok);
        let known = self.playable(&program);
        if own || known.is_ok() {
            let _ = self.replies.try_send((channel, answer(known)));
            return;
        }
        let registry = self.registry_handle.clone();
        let internal = self.dist.internal.clone();
        let replies = self.replies.clone();
        tokio::spawn(async move {
            let response = match fetch_record(&registry, program).await {
                Some(record) => {
                    let ok = record.playable(now_ms());
                    let _ = internal.send(Internal::Learned(record)).await;
                    if ok {
                        Response::Ok
                    } else {
                        answer(Err(ErrorReply::new(ErrorCode::NotPublished, NOT_PUBLISHED)))
                    }
                }
                None => answer(known),
            };
            let _ = replies.send((channel, response)).await;
        });
    }

    /// Keeps a verified record if it is newer than what this director knows.
    pub(super) fn learn(&mut self, record: CatalogRecord) {
        let newer = self
            .dist
            .learned
            .get(&record.program)
            .is_none_or(|old| old.issued_ms < record.issued_ms);
        if newer {
            events::emit(self.peer_id(), record.program, None, Kind::Learned);
            self.dist.learned.insert(record.program, record);
        }
    }

    /// `Published` from a content manager.
    pub(super) fn on_published(&mut self, signed: &Signed) -> Response {
        match verify_record(signed) {
            Some(record) => {
                self.learn(record);
                Response::Ok
            }
            None => Response::Error(ErrorReply::new(
                ErrorCode::BadRequest,
                "catalog record does not verify",
            )),
        }
    }

    /// Publishes `program` now (content manager): re-signs its record as published, stores
    /// it, puts it in the registry and tells the stations that hold the program.
    pub(super) fn publish(
        &mut self,
        swarm: &mut Swarm<DirectorBehaviour>,
        program: ProgramId,
    ) -> Result<ProgramInfo, ErrorReply> {
        let Some(catalog) = &self.catalog else {
            return Err(ErrorReply::new(
                ErrorCode::BadRequest,
                "this station is not a content manager (start it with --content-manager)",
            ));
        };
        let internal =
            |e: &dyn std::fmt::Display| ErrorReply::new(ErrorCode::Internal, e.to_string());
        let entry = catalog
            .get(&program)
            .map_err(|e| internal(&e))?
            .ok_or_else(|| ErrorReply::new(ErrorCode::NotFound, "unknown program"))?;
        let mut record = entry
            .record()
            .ok_or_else(|| internal(&"catalog record does not verify"))?;
        let now = now_ms();
        if record.playable(now) {
            return self
                .program_info(&entry)
                .ok_or_else(|| internal(&"catalog entry does not verify"));
        }
        record.state = ProgramState::Published;
        if record.publish_at_ms == 0 || record.publish_at_ms > now {
            record.publish_at_ms = now;
        }
        record.issued_ms = now;
        let signed = record.sign(&self.key);
        let entry = CatalogEntry {
            manifest: entry.manifest,
            record: signed.clone(),
        };
        catalog.put(&program, &entry).map_err(|e| internal(&e))?;
        let (reply, _) = oneshot::channel();
        self.registry.execute(
            &mut swarm.behaviour_mut().kad,
            Command::PutCatalog {
                record: signed.clone(),
                reply,
            },
        );
        let me = self.peer_id();
        events::emit(me, program, None, Kind::Published);
        tracing::info!(%program, "program published");
        let registry = self.registry_handle.clone();
        let internal_tx = self.dist.internal.clone();
        tokio::spawn(async move {
            let holders = registry.holders(program).await.unwrap_or_default();
            for holder in holders.into_iter().filter(|h| *h != me) {
                let request = Request::Published {
                    record: signed.clone(),
                };
                if let Err(e) = ask(&internal_tx, holder, Vec::new(), request).await {
                    tracing::warn!(%program, %holder, error = %e, "publish not delivered");
                }
            }
        });
        self.program_info(&entry)
            .ok_or_else(|| internal(&"catalog entry does not verify"))
    }

    /// Arms the publish timer of every inactive program with a publish time (at start).
    pub(super) fn arm_schedule(&self) {
        let Some(catalog) = &self.catalog else {
            return;
        };
        match catalog.all() {
            Ok(entries) => {
                for record in entries.iter().filter_map(CatalogEntry::record) {
                    if record.state == ProgramState::Inactive && record.publish_at_ms > 0 {
                        self.arm(record.program, record.publish_at_ms);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the catalog to arm publish timers"),
        }
    }

    /// Publishes `program` at `at_ms` (at once if that has passed).
    pub(super) fn arm(&self, program: ProgramId, at_ms: u64) {
        let internal = self.dist.internal.clone();
        let wait = std::time::Duration::from_millis(at_ms.saturating_sub(now_ms()));
        tracing::info!(%program, at_ms, "publish scheduled");
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let _ = internal.send(Internal::PublishDue(program)).await;
        });
    }
}
