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

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;
use tokio::time::Instant;
use vodmesh_proto::director::{MAX_ENGINES_NAMED, Response, SegmentLocation};
use vodmesh_proto::manifest::Manifest;
use vodmesh_proto::signed::Signed;
use vodmesh_proto::station::human_bytes;
use vodmesh_proto::time::now_ms;
use vodmesh_proto::{ProgramId, SegmentId, StationId};

mod replica;

pub(super) use self::replica::Replica;

use super::approvals::{ALLOW_FOR, Wait, Waiting, recently_checked};
use super::catalog::Learned;
use super::choose::{self, Locating, Replication};
use super::context::{Client, Ctx, Reply};
use super::distribute::{Distribution, Placed};
use super::engines::EngineId;
use super::error::Error;
use super::publish::Publishing;
use super::tasks::Tasks;
use crate::content::catalog::OpenReplica;
use crate::control::{EngineCommand, Fetched, Source};
use crate::events::Kind;
use crate::store::locations::LocationState;

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
pub(super) fn no_room(need: u64, room: u64) -> Error {
    Error::NoRoomForReplica {
        need: human_bytes(need),
        room: human_bytes(room),
    }
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
