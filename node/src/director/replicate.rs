//! Copies made for distribution and for load: replicas between stations (claim 12) and
//! overload replications between this station's engines (claims 19, 20).
//!
//! After an ingest with `--replicas N`, the content manager sends `Replicate` to N other
//! stations with room ([`super::distribute`]); one with less room than the program refuses
//! at once, and another is asked. The target (seeking) director fetches the signed manifest
//! from the source director and verifies it ([`Replica::prepare`]), then for each segment
//! asks the source director where it is (`LocateCopy`), is told the engine, and directs one
//! of its own engines to fetch it ([`Replica::copy`]). The receiving engine copies it over
//! `/vodmesh/copy/1`, verifies it and reports it stored; the director enters it in its
//! location table and, on the station's first segment of the program, provides
//! `program/<id>` in the registry.
//!
//! Source directors answer `LocateCopy` only after checking, in the registry, that the asking
//! station is live, and then let that station's engines copy from their own engines.
//!
//! When every engine holding a segment is at `--max-streams`, an idle engine of the station
//! copies it from one of them ([`choose::overload`]) and takes the console at once, streaming
//! the segment as it arrives; the copy enters the location table as filling, and as complete
//! when the engine reports it stored.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;
use tokio::time::Instant;
use vodmesh_proto::director::{MAX_ENGINES_NAMED, Request, Response, SegmentLocation};
use vodmesh_proto::manifest::{Manifest, SegmentEntry};
use vodmesh_proto::signed::Signed;
use vodmesh_proto::station::human_bytes;
use vodmesh_proto::time::now_ms;
use vodmesh_proto::{ProgramId, SegmentId, StationId};
use vodmesh_registry::RegistryHandle;

use super::approvals::{ALLOW_FOR, Wait, Waiting, recently_checked};
use super::catalog::{Learned, fetch_record};
use super::choose::{self, Locating, Replication};
use super::context::{Client, Ctx, Reply};
use super::distribute::{Distribution, Placed};
use super::engines::EngineId;
use super::error::Error;
use super::outbound::{AskError, Asker};
use super::publish::Publishing;
use super::tasks::Tasks;
use crate::content::catalog::OpenReplica;
use crate::control::{EngineCommand, FetchFailed, Fetched, Source};
use crate::events::{Kind, Observer};
use crate::store::locations::LocationState;

/// Segment copies a seeking director keeps in flight per replica.
const FETCH_WINDOW: usize = 4;

/// Rounds a replica's copy gets: what failed in one is copied again in the next.
const REPLICA_ATTEMPTS: usize = 5;

/// How long a replica stays in the journal unfinished before it is given up.
const REPLICA_GIVEN_UP_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Whether one of this station's engines holds `segment` whole.
fn held_here(ctx: &Ctx<'_>, segment: SegmentId) -> bool {
    (ctx.holders(segment).unwrap_or_default().iter()).any(|l| l.state == LocationState::Complete)
}

/// Takes `program`'s replica out of the journal.
fn end_journal(ctx: &Ctx<'_>, program: ProgramId) {
    if let Err(e) = ctx.kept.replica_ended(&program) {
        tracing::warn!(%program, error = %e, "the replica journal was not updated");
    }
}

/// A replica of `need` bytes refused: the engines could take `room`.
fn no_room(need: u64, room: u64) -> Error {
    Error::NoRoomForReplica {
        need: human_bytes(need),
        room: human_bytes(room),
    }
}

/// The pause before round `round` (1, 2, ...) of a replica's copy: 1 s, doubling, at most 16 s.
fn retry_pause(round: usize) -> Duration {
    Duration::from_secs(1 << round.saturating_sub(1).min(4))
}
/// How long a sibling engine may copy from a busy one for an overload replication.
const SIBLING_COPY_FOR: Duration = Duration::from_secs(120);

/// What a replication task hands back to the loop.
#[derive(Debug)]
pub(super) enum Done {
    /// A station asking `LocateCopy` was looked up: found live, its engines were let copy
    /// from ours (until when, which engines); the requests that waited are answered.
    Checked {
        /// The station.
        station: StationId,
        /// Until when its engines may copy, and which; `None`: it is no live station.
        allowed: Option<(u64, Vec<PeerId>)>,
    },
    /// A replica's manifest was fetched and verified and fits: its segments can be copied.
    Prepared(Box<(Replica, (Manifest, Signed), Option<Learned>)>),
    /// A replica ended (every segment copied, or an error).
    Ended {
        /// The program.
        program: ProgramId,
        /// Its source station.
        source: PeerId,
        /// How it went.
        result: Result<(), Error>,
    },
    /// A program's distribution (content manager) ended: how many replicas were placed.
    Distributed(Placed),
    /// An overload replication's copy ended.
    OverloadCopied {
        /// The segment.
        segment: SegmentId,
        /// The engine copying it in, and its peer id.
        engine: (EngineId, PeerId),
        /// The engine's outcome.
        outcome: Fetched,
    },
}

/// The state of replication: stations allowed to copy from here, and the copies running.
#[derive(Debug, Default)]
pub(super) struct Replicating {
    /// Stations whose engines may copy from ours: until when (ms since the epoch), and
    /// those engines (told again to an engine of ours that restarts, which forgot them).
    allowed: HashMap<StationId, (u64, Vec<PeerId>)>,
    /// Stations being looked up for a `LocateCopy` of theirs, and the requests (with the
    /// answer each gets if the station is live) that wait for it.
    checking: Waiting<Reply>,
    /// Programs whose replica is being copied (one copy of a program at a time).
    running: HashSet<ProgramId>,
    tasks: Tasks<Done>,
}

impl Replicating {
    /// The next result of a replication task.
    pub(super) async fn next(&mut self) -> Done {
        self.tasks.next().await
    }

    /// Stops the replication tasks.
    pub(super) async fn shutdown(&mut self) {
        self.tasks.shutdown().await;
    }

    /// Takes a replication task's result; returns the answers to send.
    pub(super) fn on_done(
        &mut self,
        ctx: &mut Ctx<'_>,
        publish: &mut Publishing,
        done: Done,
    ) -> Vec<Reply> {
        match done {
            Done::Checked { station, allowed } => {
                let waited = self.checking.ended(&station);
                // Approvals past their time go when another comes: the map holds live ones.
                let now = now_ms();
                self.allowed.retain(|_, (until, _)| *until > now);
                let live = allowed.is_some();
                if let Some(allowed) = allowed {
                    self.allowed.insert(station, allowed);
                }
                let refused = || Response::Error(Error::NotLive.into());
                return (waited.into_iter())
                    .map(|(channel, located)| (channel, if live { located } else { refused() }))
                    .collect();
            }
            Done::Prepared(prepared) => {
                let (replica, (manifest, signed), record) = *prepared;
                if let Some(record) = record {
                    let _ = publish.learn(ctx, record);
                }
                publish.keep(ctx, replica.program, signed);
                // A replica resumed (or asked for again) copies only what is not here yet.
                let todo = (manifest.content.segments.iter())
                    .filter(|e| !held_here(ctx, SegmentId::new(replica.program, e.index)))
                    .copied()
                    .collect();
                self.tasks.spawn(replica.copy(todo));
            }
            Done::Ended {
                program,
                source,
                result: Err(e),
            } => {
                self.running.remove(&program);
                if matches!(e, Error::NoRoomForReplica { .. }) {
                    ctx.activity.copies_declined += 1;
                }
                // What no later round can mend leaves the journal; the rest is resumed at
                // the next reconcile round.
                let final_ = matches!(
                    e,
                    Error::NoRoomForReplica { .. }
                        | Error::BadManifest(_)
                        | Error::UnverifiedManifest(_)
                );
                if final_ {
                    end_journal(ctx, program);
                }
                tracing::warn!(%program, %source, error = %e, resumed = !final_, "replication failed");
            }
            Done::Ended {
                program,
                result: Ok(()),
                ..
            } => {
                self.running.remove(&program);
                end_journal(ctx, program);
                // Told once the journal says so: a station stopped after this event does not
                // resume the replica at its next start.
                (ctx.observer).program(ctx.me.peer_id, program, Kind::ReplicaComplete);
            }
            Done::OverloadCopied {
                segment,
                engine,
                outcome,
            } => {
                ctx.copy_ended(segment, engine, outcome);
            }
            Done::Distributed(placed) => placed.report(ctx),
        }
        Vec::new()
    }

    /// After an ingest commit (content manager): places `replicas` copies of `program`
    /// (`size` bytes) on other stations ([`Distribution`]).
    pub(super) fn distribute(
        &mut self,
        ctx: &Ctx<'_>,
        program: ProgramId,
        (replicas, size): (u32, u64),
    ) {
        if replicas == 0 {
            return;
        }
        let distribution = Distribution::new(ctx, program, replicas, size);
        self.tasks
            .spawn(async move { Done::Distributed(distribution.run().await) });
    }

    /// `Replicate` from content manager `from`: copy every segment of `program` (`size`
    /// bytes, 0: not known) from the station of director `source` (answered at once; the
    /// copy runs afterwards). Refused at once, and not journaled, when the engines up have
    /// less room than `size`: the content manager asks another station.
    pub(super) fn replicate(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: PeerId,
        program: ProgramId,
        (source, source_addrs): (PeerId, Vec<Multiaddr>),
        size: u64,
    ) -> Result<(), Error> {
        let me = ctx.me.peer_id;
        (ctx.observer).program(me, program, Kind::ReplicateReceived { source });
        let up = ctx.engines.up();
        let room = choose::room(up.iter().map(|(_, e)| *e));
        // Without an engine up it is journaled, and starts when one comes.
        if let Some(room) = room.filter(|room| *room < size && !up.is_empty())
            && !self.running.contains(&program)
        {
            let refused = no_room(size, room);
            tracing::info!(%program, %source, error = %refused, "replica refused");
            ctx.activity.copies_declined += 1;
            return Err(refused);
        }
        let replica = OpenReplica {
            content_manager: from,
            source,
            source_addrs,
            begun_ms: now_ms(),
        };
        if let Err(e) = ctx.kept.replica_begun(&program, &replica) {
            tracing::warn!(%program, error = %e, "the replica is not journaled: a restart will not finish it");
        }
        match self.start(ctx, program, replica) {
            // Taken: journaled, it starts when an engine comes up (an engine process that
            // attaches late, or restarts). Refusing it would make the content manager place it
            // elsewhere too, and this station copy it all the same once an engine is up.
            Err(Error::NoEngineUp) => {
                tracing::info!(%program, %source, "replica taken; it starts when an engine is up");
                Ok(())
            }
            started => started,
        }
    }

    /// Starts the replicas journaled and not running (a reconcile round: at start and every
    /// few minutes; and when an engine comes up). One older than [`REPLICA_GIVEN_UP_AFTER`]
    /// leaves the journal instead.
    pub(super) fn resume(&mut self, ctx: &Ctx<'_>) {
        let open = match ctx.kept.open_replicas() {
            Ok(open) => open,
            Err(e) => {
                tracing::warn!(error = %e, "the replica journal is unreadable");
                return;
            }
        };
        let now = now_ms();
        for (program, replica) in open {
            if self.running.contains(&program) {
                continue;
            }
            let age = Duration::from_millis(now.saturating_sub(replica.begun_ms));
            if age > REPLICA_GIVEN_UP_AFTER {
                tracing::warn!(%program, source = %replica.source, "replica given up: unfinished for a day");
                end_journal(ctx, program);
                continue;
            }
            tracing::info!(%program, source = %replica.source, "resuming an unfinished replica");
            if let Err(e) = self.start(ctx, program, replica) {
                tracing::debug!(%program, error = %e, "replica not resumed yet");
            }
        }
    }

    /// Starts copying `replica` of `program` (its manifest first), unless it runs already.
    fn start(
        &mut self,
        ctx: &Ctx<'_>,
        program: ProgramId,
        replica: OpenReplica,
    ) -> Result<(), Error> {
        if self.running.contains(&program) {
            return Ok(());
        }
        let me = ctx.me.peer_id;
        let up = ctx.engines.up();
        if up.is_empty() {
            return Err(Error::NoEngineUp);
        }
        let room = choose::room(up.iter().map(|(_, e)| *e));
        let engines = (up.iter())
            .filter_map(|(id, e)| Some((e.peer_id, ctx.engines.commands(*id)?)))
            .collect();
        let replica = Replica {
            me,
            content_manager: replica.content_manager,
            program,
            source: replica.source,
            source_addrs: replica.source_addrs,
            asker: ctx.asker.clone(),
            registry: ctx.registry.clone(),
            observer: ctx.observer.clone(),
            engines,
            room,
            held_elsewhere: !ctx.me.config.home,
        };
        self.running.insert(program);
        self.tasks.spawn(replica.prepare());
        Ok(())
    }

    /// `LocateCopy` from director `peer`: the engine of this station holding a segment.
    /// Answered at once when the asking station was checked recently and its approval covers
    /// the engines it `named`; otherwise after a registry look-up of its station record (then
    /// its engines may copy from ours). Without the second condition an engine that attached
    /// to that station after the check (an engine process started after its director) had
    /// its copies refused until the approval ran out, ten minutes. One look-up of a station
    /// runs at a time: what it asks meanwhile waits for it ([`Waiting`]), so a member cannot
    /// turn its requests into as many registry queries.
    pub(super) fn locate_copy(
        &mut self,
        ctx: &Ctx<'_>,
        peer: PeerId,
        (segment, named): (SegmentId, &[PeerId]),
        channel: Client,
    ) -> Option<Reply> {
        let holders = ctx.holders(segment).unwrap_or_default();
        let located = (holders.iter())
            .filter(|l| l.state == LocationState::Complete)
            .find_map(|l| ctx.engines.by_peer(&l.engine).filter(|(_, e)| e.up));
        let Some((_, engine)) = located else {
            return Some((channel, Response::Error(Error::NotHere(segment).into())));
        };
        let response = Response::Located {
            index: segment.index,
            engine: engine.peer_id,
            addrs: engine.addrs.clone(),
            streams: engine.streams,
            max_streams: engine.max_streams,
            bulk: engine.bulk,
        };
        let station = StationId(peer);
        let named = &named[..named.len().min(MAX_ENGINES_NAMED)];
        if recently_checked(self.allowed.get(&station), named, now_ms()) {
            return Some((channel, response));
        }
        match self
            .checking
            .wait(station, (channel, response), Instant::now())
        {
            Wait::LookUp => {}
            Wait::Waits => return None,
            Wait::Full((channel, _)) => {
                return Some((channel, Response::Error(Error::CheckQueueFull.into())));
            }
        }
        let registry = ctx.registry.clone();
        let commands: Vec<mpsc::Sender<EngineCommand>> = (ctx.engines.ids())
            .filter_map(|id| ctx.engines.commands(id))
            .collect();
        self.tasks.spawn(async move {
            let Ok(Some((record, _))) = registry.get_station(peer).await else {
                return Done::Checked {
                    station,
                    allowed: None,
                };
            };
            let until_ms = now_ms() + ALLOW_FOR.as_millis() as u64;
            let peers: Vec<PeerId> = record.engines.iter().map(|e| e.peer_id).collect();
            tracing::debug!(station = %peer, engines = ?peers, "copies allowed to a live station");
            for tx in &commands {
                let allow = EngineCommand::AllowCopy {
                    peers: peers.clone(),
                    until_ms,
                };
                let _ = tx.send(allow).await;
            }
            Done::Checked {
                station,
                allowed: Some((until_ms, peers)),
            }
        });
        None
    }

    /// The approvals still standing at `now_ms`, as the commands that give them to an engine
    /// that (re)attached: an engine process restarted on its data forgot them, and would
    /// refuse every copy until the station's next check (up to [`ALLOW_FOR`]).
    pub(super) fn standing(&mut self, now_ms: u64) -> Vec<EngineCommand> {
        self.allowed.retain(|_, (until, _)| *until > now_ms);
        (self.allowed.values())
            .map(|(until_ms, peers)| EngineCommand::AllowCopy {
                peers: peers.clone(),
                until_ms: *until_ms,
            })
            .collect()
    }

    /// Every engine holding the segment is at `--max-streams` for this console (claims 19,
    /// 20): an idle engine of this station copies it from a holder and takes the console at
    /// once ([`choose::overload`]). `None` when no engine can.
    pub(super) fn overload(
        &mut self,
        ctx: &mut Ctx<'_>,
        ask: &Locating,
    ) -> Option<SegmentLocation> {
        let segment = ask.segment;
        let holders = ctx.holders(segment).ok()?;
        let failed = ctx.engines.failed_lately(Instant::now());
        let views = ctx.engines.views();
        let Replication { from, to } =
            choose::overload(ctx.me.can_copy(), &views, &holders, &ask.avoid, &failed)?;
        let (source, target) = (ctx.engines.get(from)?, ctx.engines.get(to)?);
        let (source_peer, target_peer) = (source.peer_id, target.peer_id);
        let sources = vec![Source {
            engine: source.peer_id,
            addrs: source.addrs.clone(),
            bulk: source.bulk,
        }];
        let allow = EngineCommand::AllowCopy {
            peers: vec![target_peer],
            until_ms: now_ms() + SIBLING_COPY_FOR.as_millis() as u64,
        };
        ctx.engines.send(from, allow).ok()?;
        // Held elsewhere: on the busy holder. Once the crowd is gone, eviction may take it.
        let outcome = ctx.engines.fetch(to, segment, None, sources, true).ok()?;
        tracing::info!(%segment, from = %source_peer, to = %target_peer, "overload: replicating to an idle engine");
        let location = (ctx.engines)
            .location(to, ctx.me.peer_id, (true, false))
            .ok()?;
        ctx.activity.replications += 1;
        ctx.filling(segment, target_peer);
        self.tasks.spawn(async move {
            Done::OverloadCopied {
                segment,
                engine: (to, target_peer),
                outcome: outcome.await,
            }
        });
        Some(location)
    }
}

/// One replica of a program on this station, copied from the station of director `source`.
#[derive(Debug)]
pub(super) struct Replica {
    me: PeerId,
    content_manager: PeerId,
    program: ProgramId,
    source: PeerId,
    source_addrs: Vec<Multiaddr>,
    asker: Asker,
    registry: RegistryHandle,
    observer: Observer,
    /// This station's engines that were up, and their command channels.
    engines: Vec<(PeerId, mpsc::Sender<EngineCommand>)>,
    /// What the engines could take, free or evictable (`None`: unbounded).
    room: Option<u64>,
    held_elsewhere: bool,
}

impl Replica {
    /// The first step: the manifest, fetched and verified; the room for it; the program's
    /// state while we are at it.
    async fn prepare(self) -> Done {
        let (program, source) = (self.program, self.source);
        match self.manifest().await {
            Ok(manifest) => {
                let record = fetch_record(&self.registry, program, None).await;
                Done::Prepared(Box::new((self, manifest, record)))
            }
            Err(e) => Done::Ended {
                program,
                source,
                result: Err(e),
            },
        }
    }

    async fn manifest(&self) -> Result<(Manifest, Signed), Error> {
        let program = self.program;
        let request = Request::Manifest { program };
        let answer = (self.asker)
            .ask(self.source, self.source_addrs.clone(), request)
            .await?;
        let Response::Manifest(signed) = answer else {
            return Err(AskError::unexpected(&answer).into());
        };
        let manifest = Manifest::verify(&signed).map_err(Error::UnverifiedManifest)?;
        if manifest.program != program || manifest.content_manager != self.content_manager {
            return Err(Error::BadManifest(
                "manifest is not the requested program of this content manager",
            ));
        }
        (self.observer).program(self.me, program, Kind::ManifestVerified);
        let need = manifest.content.total_size();
        if let Some(room) = self.room.filter(|room| *room < need) {
            return Err(no_room(need, room));
        }
        Ok((manifest, signed))
    }

    /// The second step: every segment, [`FETCH_WINDOW`] at a time, each located at the
    /// source station and fetched by one of this station's engines in turn. What failed (a
    /// source engine that went down, a connection that closed mid-copy) is tried again, up
    /// to [`REPLICA_ATTEMPTS`] rounds with a doubling pause ([`retry_pause`]), each round on
    /// other engines of ours: a replica is not left half done for want of one copy.
    async fn copy(self, mut todo: Vec<SegmentEntry>) -> Done {
        let mut round = 0;
        let result = loop {
            match self.copy_round(&todo, round).await {
                Ok(()) => break Ok(()),
                Err((e, left)) if round + 1 < REPLICA_ATTEMPTS && !left.is_empty() => {
                    round += 1;
                    let pause = retry_pause(round);
                    tracing::info!(program = %self.program, left = left.len(), round, ?pause, error = %e, "replica: copying what failed again");
                    tokio::time::sleep(pause).await;
                    todo = left;
                }
                Err((e, _)) => break Err(e),
            }
        };
        Done::Ended {
            program: self.program,
            source: self.source,
            result,
        }
    }

    /// One round over `entries`: every copy asked for is waited for, also after an error;
    /// the error comes back with the entries still to copy (those that failed, and those
    /// not asked for). The source is asked where the next segments are ([`Self::locate`])
    /// while the window's copies run, [`FETCH_WINDOW`] ahead of them: a segment's copy is
    /// directed the moment a copy ends, not one round trip to the source director later.
    async fn copy_round(
        &self,
        entries: &[SegmentEntry],
        round: usize,
    ) -> Result<(), (Error, Vec<SegmentEntry>)> {
        let (done_tx, mut done_rx) = mpsc::channel(FETCH_WINDOW * 2);
        let mut in_flight = 0usize;
        let mut failed: Vec<(SegmentId, FetchFailed)> = Vec::new();
        let mut note = |outcome: Option<(SegmentId, Fetched)>| {
            if let Some((segment, Err(e))) = outcome {
                failed.push((segment, e));
            }
        };
        let mut todo = entries.iter().enumerate();
        // Asked in order, answered in order: copies are directed in the entries' order.
        let mut locating = FuturesOrdered::new();
        let mut located = VecDeque::new();
        let mut stopped = None;
        loop {
            while locating.len() + located.len() < FETCH_WINDOW
                && let Some((n, entry)) = todo.next()
            {
                locating.push_back(async move { (n, entry, self.locate(entry).await) });
            }
            if in_flight < FETCH_WINDOW
                && let Some((n, entry, found)) = located.pop_front()
            {
                let directed = match found {
                    Ok(source) => self.direct(entry, n + round, source, &done_tx).await,
                    Err(e) => Err(e),
                };
                match directed {
                    Ok(()) => in_flight += 1,
                    Err(e) => {
                        stopped = Some((e, n));
                        break;
                    }
                }
                continue;
            }
            if locating.is_empty() && located.is_empty() && todo.len() == 0 {
                break;
            }
            tokio::select! {
                Some(found) = locating.next(), if !locating.is_empty() => located.push_back(found),
                outcome = done_rx.recv(), if in_flight > 0 => {
                    note(outcome);
                    in_flight -= 1;
                }
            }
        }
        drop((locating, done_tx));
        while in_flight > 0 {
            let Some(outcome) = done_rx.recv().await else {
                break;
            };
            note(Some(outcome));
            in_flight -= 1;
        }
        let failed_at: Vec<SegmentEntry> = (entries.iter())
            .filter(|e| failed.iter().any(|(s, _)| s.index == e.index))
            .copied()
            .collect();
        match (stopped, failed.first()) {
            (Some((e, n)), _) => Err((e, [failed_at, entries[n..].to_vec()].concat())),
            (None, Some((first, cause))) => Err((
                Error::CopiesFailed {
                    count: failed.len(),
                    first: *first,
                    cause: cause.clone(),
                },
                failed_at,
            )),
            (None, None) => Ok(()),
        }
    }

    /// Asks the source station where `entry` is: its engine there.
    async fn locate(&self, entry: &SegmentEntry) -> Result<Source, Error> {
        let segment = SegmentId::new(self.program, entry.index);
        self.observer.segment(self.me, segment, Kind::LocateAsked);
        let request = Request::LocateCopy {
            program: self.program,
            index: entry.index,
            engines: self.engines.iter().map(|(peer, _)| *peer).collect(),
        };
        let answer = (self.asker)
            .ask(self.source, self.source_addrs.clone(), request)
            .await?;
        let Response::Located {
            engine,
            addrs,
            bulk,
            ..
        } = answer
        else {
            return Err(AskError::unexpected(&answer).into());
        };
        self.observer
            .segment(self.me, segment, Kind::Located { engine });
        Ok(Source {
            engine,
            addrs,
            bulk,
        })
    }

    /// Tells the `n`th of our engines (round robin) to copy `entry` from `source`; its
    /// outcome comes on `done`.
    async fn direct(
        &self,
        entry: &SegmentEntry,
        n: usize,
        source: Source,
        done: &mpsc::Sender<(SegmentId, Fetched)>,
    ) -> Result<(), Error> {
        let segment = SegmentId::new(self.program, entry.index);
        let Some((mine, tx)) = self.engines.get(n % self.engines.len().max(1)) else {
            return Err(Error::NoEngineUp);
        };
        let directed = Kind::FetchDirected { engine: *mine };
        self.observer.segment(self.me, segment, directed);
        let fetch = EngineCommand::Fetch {
            segment,
            expect: Some((entry.hash, entry.size)),
            sources: vec![source],
            held_elsewhere: self.held_elsewhere,
            done: done.clone(),
        };
        tx.send(fetch).await.map_err(|_| Error::EngineGone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_s_rounds_pause_1_s_doubling_up_to_16_s() {
        let pauses: Vec<u64> = (1..=7).map(|r| retry_pause(r).as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 16, 16]);
        // Every round but the first waits: all of them together stay under a minute.
        let total: u64 = (1..REPLICA_ATTEMPTS)
            .map(|r| retry_pause(r).as_secs())
            .sum();
        assert_eq!(total, 15);
    }
}
