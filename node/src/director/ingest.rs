//! The content manager's ingests: `IngestBegin` (room checked, segments placed on engines),
//! `IngestCommit` (every segment stored: the manifest is signed and the program enters the
//! catalog), `IngestAbort`; the end of ingests that never commit (expired, or found
//! interrupted at start); and the segments engines report stored, an ingest's or a copy's.
//! An ingest of a program the catalog holds is a repair: only the segments the station lost
//! are pushed, and nothing is removed if it is given up.

use std::collections::HashSet;
use std::time::Duration;

use libp2p::PeerId;
use vodmesh_proto::catalog::{CatalogRecord, ProgramState};
use vodmesh_proto::director::{EngineTarget, ProgramInfo, Request, Response};
use vodmesh_proto::manifest::{Manifest, ManifestContent, SegmentEntry};
use vodmesh_proto::signed::Signed;
use vodmesh_proto::time::now_ms;
use vodmesh_proto::{ProgramId, SegmentId, SegmentIndex};

use super::catalog::program_info;
use super::context::Ctx;
use super::engines::EngineId;
use super::error::Error;
use super::publish::Publishing;
use crate::content::{CatalogEntry, Session, Sessions, plan};
use crate::control::{EngineCommand, Expected};
use crate::store::locations::{Location, LocationState};

/// How long after an ingest's last progress (its begin, or a segment stored) another client
/// may take it over. A client killed and run again resumes the ingest (the segments stored
/// are kept); one run beside a client that still pushes is refused, where it took the
/// session over and each of the two then failed the other.
pub(super) const TAKE_OVER_AFTER: Duration = Duration::from_secs(10);

/// What an ingest request comes to.
#[derive(Debug)]
// A `Response` with a `SegmentLocation` (and its HTTP address) is over clippy's 200 bytes;
// it is moved once per request, never kept in bulk.
#[allow(clippy::large_enum_variant)]
pub(super) enum Ingested {
    /// The answer.
    Answer(Response),
    /// A program entered the catalog: the registry and the replicas are the loop's to start.
    Committed(Box<Committed>),
}

/// A program that just entered the catalog.
#[derive(Debug)]
pub(super) struct Committed {
    /// The program, as `vodmesh programs` shows it.
    pub(super) info: ProgramInfo,
    /// Its catalog record.
    pub(super) record: CatalogRecord,
    /// The same, signed.
    pub(super) signed: Signed,
}

/// Ingests in progress, and those dropped lately.
#[derive(Debug, Default)]
pub(super) struct Ingests {
    sessions: Sessions,
}

impl Ingests {
    /// `IngestBegin`, `IngestCommit` and `IngestAbort` from `peer`.
    pub(super) fn on_request(
        &mut self,
        ctx: &mut Ctx<'_>,
        peer: PeerId,
        request: Request,
    ) -> Result<Ingested, Error> {
        match request {
            Request::IngestBegin {
                content,
                publish_at_ms,
                replicas,
                admin,
            } => {
                let plan = self.begin(ctx, (peer, &admin), content, (publish_at_ms, replicas))?;
                Ok(Ingested::Answer(plan))
            }
            Request::IngestCommit { program, admin } => self.commit(ctx, program, &admin),
            Request::IngestAbort { program, admin } => {
                ctx.me.check_admin(&admin, "ingest-abort", &program)?;
                // Another client's ingest (it took over, or this one was refused at its
                // begin) is not this client's to drop.
                match self.sessions.get(&program) {
                    Some(session) if session.client != peer => {
                        let client = session.client;
                        tracing::info!(%program, %peer, %client, "ingest abort of another client's ingest ignored");
                    }
                    _ => self.drop_ingest(ctx, program, "its client gave up"),
                }
                Ok(Ingested::Answer(Response::Ok))
            }
            other => Err(Error::Unsupported(format!("{other:?}"))),
        }
    }

    /// Ends the ingest of `program` without a commit: its segments are removed from every
    /// engine and from the location table, and it leaves the journal.
    fn drop_ingest(&mut self, ctx: &Ctx<'_>, program: ProgramId, why: &str) {
        if self.sessions.get(&program).is_some_and(|s| s.repair) {
            if let Some(session) = self.sessions.end(&program) {
                give_up_repair(ctx, program, &session, why);
            }
            return;
        }
        let Some(session) = self.sessions.drop_session(&program, now_ms()) else {
            return;
        };
        let segments = session.content.segments.len() as u32;
        tracing::warn!(%program, stored = session.stored.len(), segments, why, "ingest dropped: its segments are removed");
        remove_ingested(ctx, program, segments);
    }

    /// Drops the ingests that made no progress for `--ingest-timeout` (their clients died).
    pub(super) fn expire(&mut self, ctx: &Ctx<'_>) {
        let idle = ctx.me.config.ingest_timeout;
        for program in self.sessions.expired(now_ms(), idle) {
            self.drop_ingest(ctx, program, "no segment stored within --ingest-timeout");
        }
    }

    /// At start: the ingests the journal shows begun and never committed (the station was
    /// stopped mid-ingest) leave nothing behind.
    pub(super) fn drop_interrupted(&mut self, ctx: &Ctx<'_>) {
        let Some(catalog) = ctx.catalog else {
            return;
        };
        let open = match catalog.open_ingests() {
            Ok(open) => open,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the journal of ingests in progress");
                return;
            }
        };
        let now = now_ms();
        for (program, segments) in open {
            // A committed program is never taken apart, whatever the journal says.
            if catalog.get(&program).is_ok_and(|e| e.is_some()) {
                if let Err(e) = catalog.ingest_dropped(&program) {
                    tracing::warn!(%program, error = %e, "journal entry of a committed program not removed");
                }
                continue;
            }
            tracing::warn!(%program, segments, "an ingest was interrupted by the last stop: its segments are removed");
            self.sessions.drop_session(&program, now);
            remove_ingested(ctx, program, segments);
        }
    }

    /// Engine `engine` (`peer`) stored `segment`: it enters the location table, counts for
    /// its ingest, or, a copy, is announced ([`Publishing::tabled`]). A segment stored after
    /// its ingest was dropped (its push was in flight) is removed again instead.
    pub(super) fn stored(
        &mut self,
        ctx: &mut Ctx<'_>,
        publish: &mut Publishing,
        (engine, peer): (EngineId, PeerId),
        segment: SegmentId,
    ) {
        let now = now_ms();
        if self.sessions.was_dropped(&segment.program, now) {
            let remove = EngineCommand::Remove {
                segments: vec![segment],
            };
            let _ = ctx.engines.send(engine, remove);
            return;
        }
        let location = Location {
            engine: peer,
            state: LocationState::Complete,
            load: 0,
        };
        if let Err(e) = ctx.locations.insert(segment, &location) {
            tracing::warn!(%segment, error = %e, "location table write failed");
        }
        self.sessions.stored(&segment.program, segment.index, now);
        match self.sessions.get(&segment.program) {
            None => publish.tabled(ctx, segment),
            // A repaired segment is the home's, as the rest of its program: kept.
            Some(session) if session.repair => {
                let pin = EngineCommand::Pin {
                    segments: vec![segment],
                };
                let _ = ctx.engines.send(engine, pin);
                publish.tabled(ctx, segment);
            }
            Some(_) => {}
        }
    }

    fn begin(
        &mut self,
        ctx: &Ctx<'_>,
        (from, proof): (PeerId, &Signed),
        content: ManifestContent,
        (publish_at_ms, replicas): (Option<u64>, u32),
    ) -> Result<Response, Error> {
        let catalog = ctx.catalog.ok_or(Error::NotContentManager)?;
        content.check()?;
        let program = content.program_id();
        ctx.me.check_admin(proof, "ingest", &program)?;
        // A program of the catalog is ingested again only to repair it: the segments held
        // here stay as they are, the others are pushed.
        let held = match catalog.get(&program)? {
            Some(_) => {
                let held = segments_held_here(ctx, program)?;
                if content.segments.iter().all(|s| held.contains(&s.index)) {
                    return Err(Error::AlreadyInCatalog(program));
                }
                Some(held)
            }
            None => {
                check_title(catalog, &content.title, &program)?;
                None
            }
        };
        let up = ctx.engines.up();
        if up.is_empty() {
            return Err(Error::NoEngineUp);
        }
        let now = now_ms();
        if let Some(session) = self.sessions.get(&program) {
            let ago = Duration::from_millis(now.saturating_sub(session.progress_ms));
            if session.client != from && ago < TAKE_OVER_AFTER {
                return Err(Error::IngestInProgress {
                    program,
                    client: session.client,
                    ago_s: ago.as_secs(),
                });
            }
        }
        // A repair begun again is planned afresh: what is held here may have changed.
        if held.is_some() {
            self.sessions.end(&program);
        }
        let wanted = |s: &SegmentEntry| held.as_ref().is_none_or(|h| !h.contains(&s.index));
        // The same program begun again (its client was restarted) resumes the session: the
        // same engines take the same segments, and those already stored are accepted as
        // they are.
        let placement: Vec<Option<usize>> = match self.sessions.get(&program) {
            Some(session) => session.placement.clone(),
            None => {
                // Room: what each engine has free, less what ingests in progress were
                // promised (their bytes are not all stored yet).
                let rooms: Vec<Option<u64>> = (up.iter())
                    .map(|(id, e)| {
                        e.free()
                            .map(|f| f.saturating_sub(self.sessions.pledged(id.0)))
                    })
                    .collect();
                let sizes: Vec<u64> = (content.segments.iter())
                    .filter(|s| wanted(s))
                    .map(|s| s.size)
                    .collect();
                let placed = plan::place(&rooms, &sizes).map_err(|short| {
                    tracing::warn!(%program, need = short.need, free = short.free, "ingest refused: not enough room");
                    Error::NoRoom(short)
                })?;
                let mut placed = placed.into_iter().map(|slot| up[slot].0.0);
                (content.segments.iter())
                    .map(|s| if wanted(s) { placed.next() } else { None })
                    .collect()
            }
        };
        // Journaled before any engine hears of it: a stop from here on leaves segments that
        // the next start drops. A repair is not: a program of the catalog is never taken
        // apart, and what a repair stored belongs to it.
        if held.is_none() {
            catalog.ingest_begun(&program, content.segments.len() as u32)?;
        }
        let mut targets: Vec<EngineTarget> = (up.iter())
            .map(|(_, e)| EngineTarget {
                peer_id: e.peer_id,
                addrs: e.addrs.clone(),
                segments: Vec::new(),
            })
            .collect();
        let mut expects: Vec<Vec<(SegmentId, Expected)>> = vec![Vec::new(); up.len()];
        for (seg, engine) in content.segments.iter().zip(&placement) {
            let Some(engine) = engine else {
                continue;
            };
            let slot =
                (up.iter().position(|(id, _)| id.0 == *engine)).ok_or(Error::IngestEngineDown)?;
            targets[slot].segments.push(seg.index);
            let expected = Expected {
                from,
                hash: seg.hash,
                size: seg.size,
            };
            expects[slot].push((SegmentId::new(program, seg.index), expected));
        }
        // Before any byte arrives: none leaves before the program is published. A repaired
        // program's engines know its publish time already.
        if held.is_none() {
            ctx.engines
                .publish_at(program, publish_at_ms.unwrap_or(u64::MAX));
        }
        for ((id, _), segments) in up.iter().zip(expects) {
            ctx.engines.send(*id, EngineCommand::Expect { segments })?;
        }
        let repair = held.is_some();
        let stored = match held {
            Some(held) => held,
            None => (self.sessions.end(&program))
                .map(|s| s.stored)
                .unwrap_or_default(),
        };
        if repair {
            let missing = content.segments.len().saturating_sub(stored.len());
            tracing::info!(%program, missing, "ingest of a program of the catalog: a repair of the segments it lost");
        }
        let session = Session {
            content,
            publish_at_ms,
            replicas,
            stored,
            placement,
            progress_ms: now,
            client: from,
            repair,
        };
        self.sessions.begin(program, session);
        targets.retain(|t| !t.segments.is_empty());
        Ok(Response::IngestPlan {
            program,
            engines: targets,
        })
    }

    fn commit(
        &mut self,
        ctx: &Ctx<'_>,
        program: ProgramId,
        proof: &Signed,
    ) -> Result<Ingested, Error> {
        ctx.me.check_admin(proof, "ingest-commit", &program)?;
        let session = self.sessions.get(&program).ok_or(Error::NoIngest)?;
        let missing = (session.content.segments.len()).saturating_sub(session.stored.len());
        if missing > 0 {
            return Err(Error::Incomplete(missing));
        }
        let catalog = ctx.catalog.ok_or(Error::NotContentManager)?;
        let session = self.sessions.end(&program).ok_or(Error::NoIngest)?;
        if session.repair {
            let entry = catalog.get(&program)?.ok_or(Error::NoIngest)?;
            pin_everywhere(ctx, program, session.content.segments.len());
            let info = program_info(ctx.me.peer_id, &entry).ok_or(Error::CorruptCatalog)?;
            let repaired = session.placement.iter().flatten().count();
            tracing::info!(%program, title = %info.title, repaired, "program repaired");
            return Ok(Ingested::Answer(Response::Program(info)));
        }
        let (me, now) = (ctx.me.peer_id, now_ms());
        let manifest = Manifest::new(session.content, me, now);
        let record = CatalogRecord {
            program,
            title: manifest.content.title.clone(),
            manifest_hash: vodmesh_proto::SegmentHash::of(&vodmesh_proto::codec::encode(&manifest)),
            // Inactive until its publish time; the schedule publishes it then (claim 11).
            state: if session.publish_at_ms.is_some_and(|t| t <= now) {
                ProgramState::Published
            } else {
                ProgramState::Inactive
            },
            publish_at_ms: session.publish_at_ms.unwrap_or(0),
            replicas: session.replicas,
            content_manager: me,
            home: me,
            issued_ms: now,
        };
        let entry = CatalogEntry {
            manifest: manifest.sign(&ctx.me.key),
            record: record.sign(&ctx.me.key),
        };
        catalog.put(&program, &entry)?;
        pin_everywhere(ctx, program, manifest.content.segments.len());
        let info = program_info(me, &entry).ok_or(Error::CorruptCatalog)?;
        tracing::info!(%program, title = %info.title, segments = info.segments, "program ingested");
        Ok(Ingested::Committed(Box::new(Committed {
            info,
            record,
            signed: entry.record,
        })))
    }
}

/// Whether `title` may name `program`, new to `catalog`: not a program id (a console given
/// it would play that id) and no other program's of the catalog (a console playing by title
/// would be told to give an id instead). Control characters are refused by `vodmesh ingest`
/// ([`vodmesh_proto::manifest::title_refusal`]), not here: a title of an older release, or
/// of another client, may hold them, and every listing escapes them.
fn check_title(
    catalog: &crate::content::Catalog,
    title: &str,
    program: &ProgramId,
) -> Result<(), Error> {
    if title.parse::<ProgramId>().is_ok() {
        return Err(Error::BadTitle {
            title: title.to_string(),
            why: "a title cannot be a program id: a console given it would play that id",
        });
    }
    let taken = (catalog.all()?.iter())
        .filter_map(CatalogEntry::record)
        .find(|r| r.title == title && r.program != *program);
    match taken {
        Some(record) => Err(Error::TitleTaken {
            title: title.to_string(),
            program: record.program,
        }),
        None => Ok(()),
    }
}

/// The segments of `program` an engine of this station holds whole (one whose engine is down
/// counts: it is not lost).
fn segments_held_here(ctx: &Ctx<'_>, program: ProgramId) -> Result<HashSet<SegmentIndex>, Error> {
    let locations = ctx.locations.for_program(program)?;
    Ok((locations.into_iter())
        .filter(|(_, l)| l.state == LocationState::Complete)
        .map(|(index, _)| index)
        .collect())
}

/// The home station keeps its programs: every segment of `program` (`segments` of them) is
/// pinned on every engine (those an engine does not hold are skipped).
fn pin_everywhere(ctx: &Ctx<'_>, program: ProgramId, segments: usize) {
    let segments: Vec<SegmentId> = (0..segments as u32)
        .map(|i| SegmentId::new(program, i))
        .collect();
    for id in ctx.engines.ids() {
        let pin = EngineCommand::Pin {
            segments: segments.clone(),
        };
        let _ = ctx.engines.send(id, pin);
    }
}

/// Ends a repair without its commit: the engines it placed segments on stop expecting those
/// not stored yet; what it stored stays (pinned as it landed), and so does the rest.
fn give_up_repair(ctx: &Ctx<'_>, program: ProgramId, session: &Session, why: &str) {
    let left: Vec<(SegmentId, usize)> = (session.content.segments.iter())
        .zip(&session.placement)
        .filter(|(s, _)| !session.stored.contains(&s.index))
        .filter_map(|(s, engine)| Some((SegmentId::new(program, s.index), (*engine)?)))
        .collect();
    tracing::warn!(%program, left = left.len(), why, "repair given up: the segments it stored stay");
    for id in ctx.engines.ids() {
        let segments: Vec<SegmentId> = (left.iter())
            .filter(|(_, engine)| *engine == id.0)
            .map(|(segment, _)| *segment)
            .collect();
        if !segments.is_empty() {
            let _ = ctx.engines.send(id, EngineCommand::Remove { segments });
        }
    }
}

/// Tells every engine to remove segments `0..segments` of `program`, takes them out of the
/// location table and, once every engine was told, out of the journal (else the next start
/// removes them).
fn remove_ingested(ctx: &Ctx<'_>, program: ProgramId, segments: u32) {
    let list: Vec<SegmentId> = (0..segments).map(|i| SegmentId::new(program, i)).collect();
    let mut told = true;
    for id in ctx.engines.ids() {
        if let Some(engine) = ctx.engines.get(id) {
            for segment in &list {
                let _ = ctx.locations.remove(*segment, &engine.peer_id);
            }
        }
        let remove = EngineCommand::Remove {
            segments: list.clone(),
        };
        if ctx.engines.send(id, remove).is_err() {
            tracing::warn!(%program, engine = %id, "engine command queue full: segments of a dropped ingest stay until the next start");
            told = false;
        }
    }
    if told && let Some(Err(e)) = ctx.catalog.map(|c| c.ingest_dropped(&program)) {
        tracing::warn!(%program, error = %e, "dropped ingest not taken out of the journal");
    }
}
