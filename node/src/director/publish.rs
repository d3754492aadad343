//! Publishing (claim 11) and what the registry hears of this station's programs: program
//! state, the publish schedule, `Playable`, the catalog's views (`Programs`, `Manifest`), and
//! the `program/<id>` provider records.
//!
//! A program enters the catalog inactive unless its publish time has already come. The
//! content manager arms the publish time of every inactive program in one timer queue
//! ([`Schedule`]), at start (so a restart loses nothing: the state lives in the redb catalog)
//! and at commit. When it fires, or on `vodmesh publish`, the content manager re-signs the
//! catalog record as published, stores it, puts it in the registry and sends it
//! (`Published`) to every station holding the program. Other directors learn the state from
//! that message or from the registry's catalog record, accepting only records signed by the
//! program's content manager, which is also its home.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;

use libp2p::PeerId;
use libp2p::request_response::ResponseChannel;
use tokio_util::time::{DelayQueue, delay_queue};
use vodmesh_proto::catalog::{CatalogRecord, ProgramState};
use vodmesh_proto::director::{ProgramInfo, Request, Response};
use vodmesh_proto::signed::Signed;
use vodmesh_proto::time::now_ms;
use vodmesh_proto::{ProgramId, SegmentId};
use vodmesh_registry::RegistryHandle;

use super::context::{Ctx, Reply};
use super::error::{Error, respond};
use super::tasks::Tasks;
use crate::content::{Catalog, CatalogEntry};
use crate::events::Kind;

/// Verifies a catalog record as a director that is not its content manager must: signed by
/// the content manager it names, and that content manager is the program's home.
pub(super) fn verify_record(signed: &Signed) -> Option<CatalogRecord> {
    let record = CatalogRecord::verify(signed).ok()?;
    (record.home == record.content_manager).then_some(record)
}

/// The newest valid catalog record of `program` in the registry.
pub(super) async fn fetch_record(
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

/// A catalog entry as `vodmesh programs` shows it, held by this station (`director`).
pub(super) fn program_info(director: PeerId, entry: &CatalogEntry) -> Option<ProgramInfo> {
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
        stations: vec![director],
    })
}

/// Publish times, in one timer queue: a program is in it once, at its latest time.
#[derive(Debug, Default)]
pub(super) struct Schedule {
    queue: DelayQueue<ProgramId>,
    keys: HashMap<ProgramId, delay_queue::Key>,
}

impl Schedule {
    /// Publishes `program` at `at_ms` (at once if that has passed by `now_ms`).
    pub(super) fn arm(&mut self, program: ProgramId, at_ms: u64, now_ms: u64) {
        let wait = Duration::from_millis(at_ms.saturating_sub(now_ms));
        match self.keys.get(&program) {
            Some(key) => self.queue.reset(key, wait),
            None => {
                let key = self.queue.insert(program, wait);
                self.keys.insert(program, key);
            }
        }
    }

    /// Forgets the publish time of `program` (it was published by hand).
    pub(super) fn cancel(&mut self, program: &ProgramId) {
        if let Some(key) = self.keys.remove(program) {
            self.queue.remove(&key);
        }
    }

    /// The next program whose time has come; waits forever while none is armed.
    pub(super) async fn due(&mut self) -> ProgramId {
        let expired = poll_fn(|cx| match self.queue.poll_expired(cx) {
            Poll::Ready(None) => Poll::Pending,
            other => other,
        })
        .await;
        let program = expired.map(|e| e.into_inner());
        match program {
            Some(program) => {
                self.keys.remove(&program);
                program
            }
            None => std::future::pending().await,
        }
    }
}

/// What a publish task hands back to the loop.
#[derive(Debug)]
pub(super) enum Done {
    /// A `Playable` that needed the registry: the record found there, if any.
    Fetched {
        /// The client waiting.
        channel: ResponseChannel<Response>,
        /// The program.
        program: ProgramId,
        /// Its newest valid record in the registry.
        record: Option<CatalogRecord>,
    },
    /// An answer ready to send.
    Reply(Reply),
    /// Nothing more to do.
    Nothing,
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
    learned: HashMap<ProgramId, CatalogRecord>,
    /// Programs this station already provides in the registry.
    provided: HashSet<ProgramId>,
    /// Publish times of inactive programs (content manager).
    schedule: Schedule,
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
    /// manager) or one it learned.
    fn known_record(&self, ctx: &Ctx<'_>, program: &ProgramId) -> Option<CatalogRecord> {
        let own = (ctx.catalog)
            .and_then(|c| c.get(program).ok().flatten())
            .and_then(|e| e.record());
        own.or_else(|| self.learned.get(program).cloned())
    }

    /// The known record of `program`, for a miss to start from.
    pub(super) fn record(&self, ctx: &Ctx<'_>, program: &ProgramId) -> Option<CatalogRecord> {
        self.known_record(ctx, program)
    }

    /// Whether `program` may be streamed now, from what this director knows (the catalog,
    /// or what it learned); `Playable` refreshes from the registry.
    pub(super) fn playable(&self, ctx: &Ctx<'_>, program: &ProgramId) -> Result<(), Error> {
        match self.known_record(ctx, program) {
            Some(r) if r.playable(now_ms()) => Ok(()),
            Some(_) => Err(Error::NotPublished),
            None => Err(Error::UnknownProgram),
        }
    }

    /// Keeps a verified record if it is newer than what this director knows.
    pub(super) fn learn(&mut self, ctx: &Ctx<'_>, record: CatalogRecord) {
        let newer =
            (self.learned.get(&record.program)).is_none_or(|old| old.issued_ms < record.issued_ms);
        if newer {
            ctx.observer
                .program(ctx.me.peer_id, record.program, Kind::Learned);
            self.learned.insert(record.program, record);
        }
    }

    /// `Playable`: answered from what is known when that says playable; otherwise after the
    /// registry's record was fetched (this director may not have heard the publish message).
    pub(super) fn playable_request(
        &mut self,
        ctx: &Ctx<'_>,
        program: ProgramId,
        channel: ResponseChannel<Response>,
    ) -> Option<Reply> {
        let own = (ctx.catalog).is_some_and(|c| c.get(&program).ok().flatten().is_some());
        let known = self.playable(ctx, &program);
        if own || known.is_ok() {
            return Some((channel, answer(known)));
        }
        let registry = ctx.registry.clone();
        self.tasks.spawn(async move {
            let record = fetch_record(&registry, program).await;
            Done::Fetched {
                channel,
                program,
                record,
            }
        });
        None
    }

    /// Takes a publish task's result; returns the answer to send, if any.
    pub(super) fn on_done(&mut self, ctx: &Ctx<'_>, done: Done) -> Option<Reply> {
        match done {
            Done::Fetched {
                channel,
                program,
                record,
            } => {
                if let Some(record) = record {
                    self.learn(ctx, record);
                }
                Some((channel, answer(self.playable(ctx, &program))))
            }
            Done::Reply(reply) => Some(reply),
            Done::Nothing => None,
        }
    }

    /// `Published` from a content manager.
    pub(super) fn on_published(&mut self, ctx: &Ctx<'_>, signed: &Signed) -> Result<(), Error> {
        let record = verify_record(signed).ok_or(Error::BadRecord)?;
        self.learn(ctx, record);
        Ok(())
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
        ctx.dht.put_catalog(signed);
        ctx.dht.provide(record.program);
        self.provided.insert(record.program);
        self.arm(record);
    }

    /// A segment entered the location table (copy-done): on the station's first segment of
    /// a program it does not already announce, it provides the program (the registry learns
    /// the new location).
    pub(super) fn tabled(&mut self, ctx: &mut Ctx<'_>, segment: SegmentId) {
        let (me, program) = (ctx.me.peer_id, segment.program);
        ctx.observer.segment(me, segment, Kind::Tabled);
        if self.provided.insert(program) {
            ctx.dht.provide(program);
            ctx.observer.program(me, program, Kind::Provided);
        }
    }

    /// `Manifest`: the signed manifest of a program of this catalog.
    pub(super) fn manifest(&self, ctx: &Ctx<'_>, program: &ProgramId) -> Result<Signed, Error> {
        let entry = match ctx.catalog {
            Some(catalog) => catalog.get(program)?,
            None => None,
        };
        Ok(entry.ok_or(Error::UnknownProgram)?.manifest)
    }

    /// `Programs`: the catalog, each program with the stations the registry lists as holding
    /// it (answered from a task: the registry look-ups take a moment).
    pub(super) fn programs(
        &mut self,
        ctx: &Ctx<'_>,
        channel: ResponseChannel<Response>,
    ) -> Option<Reply> {
        let infos: Vec<ProgramInfo> = match ctx.catalog.map(Catalog::all) {
            Some(Ok(entries)) => (entries.iter())
                .filter_map(|e| program_info(ctx.me.peer_id, e))
                .collect(),
            Some(Err(e)) => return Some((channel, answer(Err(e.into())))),
            None => Vec::new(),
        };
        let registry = ctx.registry.clone();
        self.tasks.spawn(async move {
            let mut out = Vec::with_capacity(infos.len());
            for mut info in infos {
                if let Ok(holders) = registry.holders(info.program).await {
                    let mut all: BTreeSet<PeerId> = info.stations.iter().copied().collect();
                    all.extend(holders);
                    info.stations = all.into_iter().collect();
                }
                out.push(info);
            }
            Done::Reply((channel, Response::Programs(out)))
        });
        None
    }
}

/// `Ok` or the refusal, as a response.
fn answer(result: Result<(), Error>) -> Response {
    respond(result, |()| Response::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn publish_times_fire_in_order_once_each_and_can_be_moved_or_cancelled() {
        let program = |n: u8| ProgramId([n; 32]);
        let mut schedule = Schedule::default();
        let now = 1_000_000;
        let start = tokio::time::Instant::now();
        schedule.arm(program(1), now + 3_600_000, now);
        schedule.arm(program(2), now + 600_000, now);
        // Moved earlier: armed once, at its new time.
        schedule.arm(program(1), now + 300_000, now);
        schedule.arm(program(3), now + 900_000, now);
        schedule.cancel(&program(3));
        // A time that has passed fires at once.
        schedule.arm(program(4), now - 5_000, now);
        assert_eq!(schedule.due().await, program(4));
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(schedule.due().await, program(1));
        assert_eq!(start.elapsed(), Duration::from_secs(300));
        assert_eq!(schedule.due().await, program(2));
        assert_eq!(start.elapsed(), Duration::from_secs(600));
        // Nothing else is armed: the cancelled program never fires.
        let idle = tokio::time::timeout(Duration::from_secs(7200), schedule.due()).await;
        assert!(idle.is_err());
        // Armed again after it fired: it fires again.
        schedule.arm(program(2), now, now);
        assert_eq!(schedule.due().await, program(2));
    }
}
