//! Publishing (claim 11) and what the registry hears of this station's programs: program
//! state, the publish schedule, `Playable`, the catalog's views (`Programs`, `Held`,
//! `Manifest`: see [`super::catalog`]; the requests are answered in [`requests`]), the
//! manifests kept of held programs, and the `program/<id>` provider records.
//!
//! A program enters the catalog inactive unless its publish time has already come. The
//! content manager arms the publish time of every inactive program in one timer queue
//! ([`super::schedule::Schedule`]), at start (so a restart loses nothing: the state lives in the redb catalog)
//! and at commit. When it fires, or on `vodmesh publish`, the content manager re-signs the
//! catalog record as published, stores it, puts it in the registry and sends it
//! (`Published`) to every station holding the program. Other directors learn the state from
//! that message or from the registry's catalog record, accepting only records signed by the
//! program's content manager, which is also its home.

use std::collections::{HashMap, HashSet};
use std::ops::Not;
use std::time::Duration;

use libp2p::PeerId;
use vodmesh_proto::catalog::{CatalogRecord, ProgramState};
use vodmesh_proto::director::{ProgramInfo, Request, Response};
use vodmesh_proto::signed::Signed;
use vodmesh_proto::time::now_ms;
use vodmesh_proto::{ProgramId, SegmentId};
use vodmesh_registry::RegistryHandle;

use super::catalog::{
    self, FetchedManifest, Learned, Viewer, fetch_manifest, learned_of, program_info,
};
use super::choose::Locating;
use super::context::{Client, Ctx, Reply};
use super::engines::EngineId;
use super::error::{Error, respond};
use super::fetches::Fetches;
use super::listing::Listing;
use super::outbound::Asker;
use super::reconcile::{self, LOCATE_FETCH_WITHIN, RECONCILE_EVERY, Step};
use super::schedule::Schedule;
use super::tasks::Tasks;
use crate::content::{Catalog, CatalogEntry};
use crate::control::EngineCommand;
use crate::events::Kind;
use crate::expiring::Waiting;

mod requests;

/// A reconciling fetch of a held program: its record from the registry, retried for up to
/// [`RECONCILE_EVERY`], and, when `manifest`, its manifest (from its content manager or a
/// holder).
async fn reconciled(
    (registry, asker, me): (RegistryHandle, Asker, PeerId),
    (program, owner): (ProgramId, Option<PeerId>),
    manifest: bool,
) -> Done {
    let known = owner.map(|owner| (owner, 0));
    let record = reconcile::fetch_within(&registry, program, RECONCILE_EVERY, known).await;
    let manifest = match (&record, manifest) {
        (Some(learned), true) => match fetch_manifest(&registry, &asker, me, &learned.record).await
        {
            Ok(fetched) => Some(fetched),
            Err(e) => {
                tracing::debug!(%program, error = %e, "reconcile: no manifest; provided later");
                None
            }
        },
        _ => None,
    };
    Done::Reconciled {
        program,
        record,
        manifest: manifest.map(Box::new),
    }
}

/// What a publish task hands back to the loop.
#[derive(Debug)]
pub(super) enum Done {
    /// A `Playable` that needed the registry: the record found there, if any.
    Fetched {
        /// The program.
        program: ProgramId,
        /// Its newest valid record in the registry.
        record: Option<Learned>,
    },
    /// A `Manifest` of a program this station neither catalogs nor keeps: fetched from its
    /// content manager or a holder (issue 25), not kept (nothing of it is held here).
    Manifest {
        /// The program, and who asked.
        key: (ProgramId, Viewer),
        /// The program's record and signed manifest, or why there are none.
        fetched: Result<Box<(Learned, Signed)>, Error>,
    },
    /// `Locate`s of a segment held here, of a program whose record this director had not
    /// learned or had as not published: the record found in the registry, if any; the loop
    /// locates again for every console waiting.
    Located {
        /// The program.
        program: ProgramId,
        /// The program's newest valid record in the registry.
        record: Option<Learned>,
    },
    /// A reconciling fetch ended ([`reconcile`]).
    Reconciled {
        /// The program held here.
        program: ProgramId,
        /// Its newest valid record in the registry.
        record: Option<Learned>,
        /// Its manifest, when it was fetched.
        manifest: Option<Box<FetchedManifest>>,
    },
    /// A `Programs` listing ended ([`Listing`]).
    Listed(Result<Vec<ProgramInfo>, Error>),
    /// Nothing more to do.
    Nothing,
}

/// What the loop does after a publish task's result.
#[derive(Debug)]
// A `Response` with a `SegmentLocation` (and its HTTP address) is over clippy's 200 bytes;
// it is moved once per request, never kept in bulk.
#[allow(clippy::large_enum_variant)]
pub(super) enum After {
    /// Sends this answer.
    Reply(Reply),
    /// Sends these answers.
    Replies(Vec<Reply>),
    /// Locates again for these consoles, the program's record now learned if the registry
    /// had one.
    Locate(Vec<(Locating, Client)>),
}

/// What publishing brings the loop.
#[derive(Debug)]
pub(super) enum Next {
    /// A publish task ended.
    Done(Box<Done>),
    /// The publish time of a program has come.
    Due(ProgramId),
}

/// The state of publishing and of this station's announcements.
#[derive(Debug, Default)]
pub(super) struct Publishing {
    /// Catalog records learned from the content manager or the registry.
    learned: HashMap<ProgramId, Learned>,
    /// Programs this station already provides in the registry.
    provided: HashSet<ProgramId>,
    /// Held programs whose reconciling fetch is running.
    reconciling: HashSet<ProgramId>,
    /// When a `Locate` last had a record that says "not published" fetched again.
    refreshed: HashMap<ProgramId, std::time::Instant>,
    /// `Locate`s waiting for a fetch of their program's record ([`Done::Located`]).
    locating: Waiting<ProgramId, (Locating, Client)>,
    /// Publish times of inactive programs (content manager).
    schedule: Schedule,
    /// `Programs` answered from one listing ([`Listing`]).
    listing: Listing,
    /// Stations whose last `Held` got no answer ([`catalog::Silent`]).
    silent: catalog::Silent,
    /// `Playable` and `Manifest` that need the registry ([`Fetches`]).
    fetches: Fetches,
    tasks: Tasks<Done>,
}

impl Publishing {
    /// Arms the publish time of every inactive program in `catalog` (at start).
    pub(super) fn new(catalog: Option<&Catalog>) -> Self {
        let mut publishing = Self::default();
        let Some(catalog) = catalog else {
            return publishing;
        };
        match catalog.all() {
            Ok(entries) => {
                for record in entries.iter().filter_map(CatalogEntry::record) {
                    publishing.arm(&record);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the catalog to arm publish timers"),
        }
        publishing
    }

    /// Arms `record`'s publish time if it is inactive with one.
    fn arm(&mut self, record: &CatalogRecord) {
        if record.state == ProgramState::Inactive && record.publish_at_ms > 0 {
            tracing::info!(program = %record.program, at_ms = record.publish_at_ms, "publish scheduled");
            self.schedule
                .arm(record.program, record.publish_at_ms, now_ms());
        }
    }

    /// The next result of a publish task, or the next program whose publish time has come.
    pub(super) async fn next(&mut self) -> Next {
        tokio::select! {
            done = self.tasks.next() => Next::Done(Box::new(done)),
            program = self.schedule.due() => Next::Due(program),
        }
    }

    /// Stops the publish tasks.
    pub(super) async fn shutdown(&mut self) {
        self.tasks.shutdown().await;
    }

    /// The newest catalog record of `program` this director knows: its own (content
    /// manager), one it learned, or the one kept with a held program's manifest.
    fn known_record(&self, ctx: &Ctx<'_>, program: &ProgramId) -> Option<Learned> {
        let entry = |c: &Catalog| c.get(program).ok().flatten();
        let own = (ctx.catalog).and_then(entry).and_then(|e| learned_of(&e));
        let kept = || entry(ctx.kept).and_then(|e| learned_of(&e));
        own.or_else(|| self.learned.get(program).cloned())
            .or_else(kept)
    }

    /// The known record of `program`, for a miss to start from.
    pub(super) fn record(&self, ctx: &Ctx<'_>, program: &ProgramId) -> Option<Learned> {
        self.known_record(ctx, program)
    }

    /// Keeps `manifest` (verified) with the program's known record: this station holds, or
    /// is about to hold, segments of it, and answers `Manifest` for it from now on.
    pub(super) fn keep(&mut self, ctx: &Ctx<'_>, program: ProgramId, manifest: Signed) {
        let own = (ctx.catalog).is_some_and(|c| c.get(&program).ok().flatten().is_some());
        let Some(learned) = self.learned.get(&program).filter(|_| !own) else {
            return;
        };
        let entry = CatalogEntry {
            manifest,
            record: learned.signed.clone(),
        };
        match ctx.kept.put(&program, &entry) {
            Ok(()) => self.listing.changed(),
            Err(e) => tracing::warn!(%program, error = %e, "cannot keep the manifest"),
        }
    }

    /// Whether `program` may be streamed now, from what this director knows (the catalog,
    /// or what it learned); `Playable` refreshes from the registry.
    pub(super) fn playable(&self, ctx: &Ctx<'_>, program: &ProgramId) -> Result<(), Error> {
        match self.known_record(ctx, program) {
            Some(l) if l.record.playable(now_ms()) => Ok(()),
            Some(_) => Err(Error::NotPublished),
            None => Err(Error::UnknownProgram),
        }
    }

    /// An engine (re)attached: it is told again the publish time of every program this
    /// station holds whose record is known, since it keeps its embargoes across a restart
    /// (`engine::embargo`) and may have missed a publish while it was down. Sent from a task,
    /// at the pace the engine takes them.
    pub(super) fn retell(&mut self, ctx: &Ctx<'_>, engine: EngineId) {
        let (Some(commands), Ok(held)) = (ctx.engines.commands(engine), ctx.locations.programs())
        else {
            return;
        };
        let times: Vec<(ProgramId, u64)> = (held.into_iter())
            .filter_map(|p| Some((p, self.known_record(ctx, &p)?.record.playable_from())))
            .collect();
        self.tasks.spawn(async move {
            for (program, at_ms) in times {
                if commands
                    .send(EngineCommand::PublishAt { program, at_ms })
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Done::Nothing
        });
    }

    /// Whether a `Locate` refused as not published should have the program's record fetched
    /// again first: this station may have missed the publish (it was cut off when the content
    /// manager sent it), and would refuse until its next reconcile round. Once every
    /// [`REFRESH_EVERY`] a program, and never for a program of its own catalog.
    pub(super) fn refresh_due(&mut self, ctx: &Ctx<'_>, program: ProgramId) -> bool {
        let own = (ctx.catalog).is_some_and(|c| c.get(&program).ok().flatten().is_some());
        let now = std::time::Instant::now();
        if own || !refresh_due(self.refreshed.get(&program).copied(), now) {
            return false;
        }
        if self.refreshed.len() >= MAX_REFRESHED {
            self.refreshed
                .retain(|_, at| refresh_due(Some(*at), now).not());
        }
        self.refreshed.insert(program, now);
        true
    }

    /// The content manager of `program` as this director knows it: the signer of its known
    /// record, the only one whose records may replace it ([`Learned::replaces`]).
    pub(super) fn owner(&self, ctx: &Ctx<'_>, program: &ProgramId) -> Option<PeerId> {
        (self.known_record(ctx, program)).map(|l| l.record.content_manager)
    }

    /// Keeps a verified record if it is newer than what this director knows (and with the
    /// manifest kept of the program, if any). A record another content manager than the
    /// known record's signed is refused ([`Error::NotOwner`]): it would take the program over.
    pub(super) fn learn(&mut self, ctx: &Ctx<'_>, learned: Learned) -> Result<(), Error> {
        let program = learned.record.program;
        if let Some(known) = self.known_record(ctx, &program)
            && known.record.content_manager != learned.record.content_manager
        {
            let (owner, signer) = (known.record.content_manager, learned.record.content_manager);
            tracing::info!(%program, %owner, %signer, "refused a catalog record of another content manager's program");
            return Err(Error::NotOwner(program));
        }
        let newer = (self.learned.get(&program)).is_none_or(|old| learned.newer_than(old));
        if !newer {
            return Ok(());
        }
        ctx.observer.program(ctx.me.peer_id, program, Kind::Learned);
        ctx.engines
            .publish_at(program, learned.record.playable_from());
        match ctx.kept.get(&program) {
            Ok(Some(mut entry)) if learned_of(&entry).is_none_or(|k| learned.newer_than(&k)) => {
                entry.record = learned.signed.clone();
                if let Err(e) = ctx.kept.put(&program, &entry) {
                    tracing::warn!(%program, error = %e, "cannot keep the newer record");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(%program, error = %e, "cannot read the kept manifests"),
        }
        self.learned.insert(program, learned);
        self.listing.changed();
        Ok(())
    }

    /// A `Locate` found the segment held here but the program's record unknown (a restart
    /// forgets what was learned), or known as not published (the publish may have been
    /// missed): fetches a newer one from the registry; [`Done::Located`] follows.
    /// One fetch a program: the `Locate`s that come while it runs wait for it too, 64 at
    /// most ([`Waiting`]); past that the answer is busy at once.
    pub(super) fn fetch_for_locate(
        &mut self,
        ctx: &Ctx<'_>,
        ask: Locating,
        channel: Client,
    ) -> Option<Reply> {
        let program = ask.segment.program;
        match self.locating.push(program, (ask, channel)) {
            Ok(true) => {}
            Ok(false) => return None,
            // A console asking again and again while the fetch runs: busy, not parked.
            Err((_, channel)) => {
                return Some((channel, Response::Error(Error::TooManyMisses.into())));
            }
        }
        let registry = ctx.registry.clone();
        let known = (self.known_record(ctx, &program))
            .map(|l| (l.record.content_manager, l.record.issued_ms));
        self.tasks.spawn(async move {
            let within = LOCATE_FETCH_WITHIN;
            let record = reconcile::fetch_within(&registry, program, within, known).await;
            Done::Located { program, record }
        });
        None
    }

    /// Whether `Locate`s of `program` wait for a fetch of its record.
    pub(super) fn fetching_for_locate(&self, program: &ProgramId) -> bool {
        self.locating.contains(program)
    }

    /// A reconciling round (issue 17): learns the record of every program the location
    /// table lists, and provides those held complete ([`reconcile`]).
    pub(super) fn reconcile(&mut self, ctx: &mut Ctx<'_>) {
        let held = match ctx.locations.programs() {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the location table to reconcile");
                return;
            }
        };
        let own: HashSet<ProgramId> = (held.iter())
            .filter(|p| (ctx.catalog).is_some_and(|c| c.get(p).ok().flatten().is_some()))
            .copied()
            .collect();
        let kept: HashSet<ProgramId> = (held.iter())
            .filter(|p| ctx.kept.get(p).ok().flatten().is_some())
            .copied()
            .collect();
        let provided_and_kept: HashSet<ProgramId> =
            self.provided.intersection(&kept).copied().collect();
        for step in reconcile::plan(&held, &own, &self.reconciling, &provided_and_kept) {
            match step {
                Step::Own(program) => {
                    let entry = (ctx.catalog).and_then(|c| c.get(&program).ok().flatten());
                    // The registry keeps the record as long as someone puts it again.
                    if let Some(entry) = &entry {
                        ctx.dht.put_catalog(entry.record.clone());
                    }
                    let manifest = entry.and_then(|e| e.manifest());
                    let segments = manifest.map(|m| m.content.segments.len() as u32);
                    self.provide_if_complete(ctx, program, segments);
                }
                Step::Fetch { program, manifest } => {
                    self.reconciling.insert(program);
                    let with = (ctx.registry.clone(), ctx.asker.clone(), ctx.me.peer_id);
                    let owner = self.owner(ctx, &program);
                    self.tasks
                        .spawn(reconciled(with, (program, owner), manifest));
                }
            }
        }
    }

    /// Provides `program`, of `segments` segments, if this station holds a complete copy.
    fn provide_if_complete(
        &mut self,
        ctx: &mut Ctx<'_>,
        program: ProgramId,
        segments: Option<u32>,
    ) {
        match reconcile::held(ctx.locations, program) {
            Ok(held) => {
                let provided = self.provided.contains(&program);
                if reconcile::should_provide(&held, segments, provided) {
                    self.provide(ctx, program);
                }
            }
            Err(e) => tracing::warn!(%program, error = %e, "cannot read the location table"),
        }
    }

    /// Provides `program` in the registry, once.
    fn provide(&mut self, ctx: &mut Ctx<'_>, program: ProgramId) {
        if self.provided.insert(program) {
            ctx.dht.provide(program);
            ctx.observer
                .program(ctx.me.peer_id, program, Kind::Provided);
        }
    }

    /// Takes a publish task's result; returns what the loop does next, if anything.
    pub(super) fn on_done(&mut self, ctx: &mut Ctx<'_>, done: Done) -> Option<After> {
        let reply = match done {
            Done::Fetched { program, record } => {
                if let Some(record) = record {
                    let _ = self.learn(ctx, record);
                }
                let answer = answer(self.playable(ctx, &program));
                return Some(After::Replies(
                    self.fetches.playable_done(&program, &answer),
                ));
            }
            Done::Reconciled {
                program,
                record,
                manifest,
            } => {
                self.reconciling.remove(&program);
                if let Some(learned) = record {
                    // Holders put the record again: it outlives its content manager.
                    let signed = learned.signed.clone();
                    if self.learn(ctx, learned).is_ok() {
                        ctx.dht.put_catalog(signed);
                    }
                }
                if let Some(fetched) = &manifest {
                    self.keep(ctx, program, fetched.signed.clone());
                }
                let kept = ctx.kept.get(&program).ok().flatten();
                let segments = (manifest.map(|f| f.manifest))
                    .or_else(|| kept.and_then(|e| e.manifest()))
                    .map(|m| m.content.segments.len() as u32);
                self.provide_if_complete(ctx, program, segments);
                None
            }
            Done::Manifest { key, fetched } => {
                let answer = fetched.and_then(|pair| {
                    let (learned, signed) = *pair;
                    let published = learned.record.playable(now_ms());
                    self.learn(ctx, learned)?;
                    Ok((signed, published))
                });
                return Some(After::Replies(self.fetches.manifest_done(key, answer)));
            }
            Done::Located { program, record } => {
                if let Some(record) = record {
                    let _ = self.learn(ctx, record);
                }
                let waiting = self.locating.take(&program);
                return Some(After::Locate(waiting));
            }
            Done::Listed(listed) => {
                let now = (tokio::time::Instant::now(), now_ms());
                let next = self.listing.listed(now, listed);
                if next.list {
                    self.list(ctx);
                }
                return Some(After::Replies(next.replies));
            }
            Done::Nothing => None,
        };
        reply.map(After::Reply)
    }

    /// `Published` from a content manager.
    pub(super) fn on_published(&mut self, ctx: &Ctx<'_>, signed: &Signed) -> Result<(), Error> {
        let learned = Learned::verify(signed.clone()).ok_or(Error::BadRecord)?;
        self.learn(ctx, learned)
    }

    /// Publishes `program` now (content manager): re-signs its record as published, stores
    /// it, puts it in the registry and tells the stations that hold the program.
    pub(super) fn publish(
        &mut self,
        ctx: &mut Ctx<'_>,
        program: ProgramId,
    ) -> Result<ProgramInfo, Error> {
        let catalog = ctx.catalog.ok_or(Error::NotContentManager)?;
        let entry = catalog.get(&program)?.ok_or(Error::UnknownProgram)?;
        let mut record = entry.record().ok_or(Error::CorruptCatalog)?;
        let me = ctx.me.peer_id;
        let now = now_ms();
        self.schedule.cancel(&program);
        if record.playable(now) {
            return program_info(me, &entry).ok_or(Error::CorruptCatalog);
        }
        record.state = ProgramState::Published;
        if record.publish_at_ms == 0 || record.publish_at_ms > now {
            record.publish_at_ms = now;
        }
        record.issued_ms = now;
        let signed = record.sign(&ctx.me.key);
        let entry = CatalogEntry {
            manifest: entry.manifest,
            record: signed.clone(),
        };
        catalog.put(&program, &entry)?;
        self.listing.changed();
        ctx.engines.publish_at(program, record.playable_from());
        ctx.dht.put_catalog(signed.clone());
        ctx.observer.program(me, program, Kind::Published);
        tracing::info!(%program, "program published");
        let (registry, asker) = (ctx.registry.clone(), ctx.asker.clone());
        self.tasks.spawn(async move {
            let holders = registry.holders(program).await.unwrap_or_default();
            for holder in holders.into_iter().filter(|h| *h != me) {
                let request = Request::Published {
                    record: signed.clone(),
                };
                if let Err(e) = asker.ask(holder, Vec::new(), request).await {
                    tracing::warn!(%program, %holder, error = %e, "publish not delivered");
                }
            }
            Done::Nothing
        });
        program_info(me, &entry).ok_or(Error::CorruptCatalog)
    }

    /// A program's catalog record was just committed: it goes into the registry, this
    /// station provides the program, and its publish time is armed.
    pub(super) fn announce(&mut self, ctx: &mut Ctx<'_>, record: &CatalogRecord, signed: Signed) {
        ctx.engines
            .publish_at(record.program, record.playable_from());
        ctx.dht.put_catalog(signed);
        ctx.dht.provide(record.program);
        self.provided.insert(record.program);
        self.listing.changed();
        self.arm(record);
    }

    /// A segment entered the location table (copy-done): on the station's first segment of
    /// a program it does not already announce, it provides the program (the registry learns
    /// the new location).
    pub(super) fn tabled(&mut self, ctx: &mut Ctx<'_>, segment: SegmentId) {
        ctx.observer.segment(ctx.me.peer_id, segment, Kind::Tabled);
        self.provide(ctx, segment.program);
    }
}

/// How often a program's record may be fetched again for a `Locate` refused as not published.
const REFRESH_EVERY: Duration = Duration::from_secs(2);
/// Programs whose last such fetch is remembered, at most.
const MAX_REFRESHED: usize = 1024;

/// Whether a record last fetched again at `last` may be fetched again at `now`.
fn refresh_due(last: Option<std::time::Instant>, now: std::time::Instant) -> bool {
    last.is_none_or(|at| now.saturating_duration_since(at) >= REFRESH_EVERY)
}

/// `Ok` or the refusal, as a response.
fn answer(result: Result<(), Error>) -> Response {
    respond(result, |()| Response::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_not_published_record_is_fetched_again_at_most_every_two_seconds() {
        let start = std::time::Instant::now();
        assert!(refresh_due(None, start));
        assert!(!refresh_due(
            Some(start),
            start + Duration::from_millis(1999)
        ));
        assert!(refresh_due(Some(start), start + REFRESH_EVERY));
    }
}
