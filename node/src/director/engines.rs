//! The station's engines as the director sees them: an [`EngineTable`] keyed by [`EngineId`],
//! each engine's state as its reports left it (ready, load, storage, limits, down) beside the
//! channel that commands it. Reports are counted into the director's activity here, once
//! ([`EngineReport::count`]); what else a report calls for goes back to the loop as [`Heard`].

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::mpsc;
use tokio::time::Instant;
use vodmesh_proto::director::{Activity, SegmentLocation};
use vodmesh_proto::station::{EngineInfo, used_on};
use vodmesh_proto::{ProgramId, SegmentHash, SegmentId};

use super::error::Error;
pub(super) use crate::control::EngineId;
use crate::control::{EngineCommand, EngineEvent, EngineReport, FetchFailed, Fetched, Source};

/// How long an engine whose copy failed at every source is no copy target: a station whose
/// engines cannot copy (no valid engine token) sends its consoles to the holders instead of
/// making them wait for copies that never come.
pub(super) const COPY_FAILED_FOR: Duration = Duration::from_secs(30);

/// One engine of the station as a decision sees it.
pub(super) type EngineView<'a> = (EngineId, &'a EngineInfo);

/// What the loop does after a report, besides what the table did.
#[derive(Debug)]
pub(super) enum Heard {
    /// Nothing more.
    Nothing,
    /// An engine came, went or changed its limits: the station record changed.
    Changed,
    /// `engine` stored a segment (an ingest, a copy).
    Stored {
        /// The engine.
        engine: EngineId,
        /// Its peer id.
        peer: PeerId,
        /// The segment.
        segment: SegmentId,
    },
    /// A segment is gone from engine `peer` (corrupt, evicted, removed).
    Dropped {
        /// The engine's peer id.
        peer: PeerId,
        /// The segment.
        segment: SegmentId,
    },
    /// Something about a stream, for playback.
    Stream(Streamed),
}

/// A stream report of one engine (claims 17, 21).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Streamed {
    /// `engine` started streaming `segment` to `console`.
    TookOver {
        /// The engine.
        engine: EngineId,
        /// The segment.
        segment: SegmentId,
        /// The console.
        console: PeerId,
    },
    /// That stream ended after `bytes`.
    Stopped {
        /// The engine.
        engine: EngineId,
        /// The segment.
        segment: SegmentId,
        /// The console.
        console: PeerId,
        /// Bytes sent.
        bytes: u64,
    },
    /// `console` sought past what `engine`'s filling copy holds, and was sent back to ask for
    /// an engine with the whole segment.
    SwapAsked {
        /// The filling engine.
        engine: EngineId,
        /// The segment.
        segment: SegmentId,
        /// The console.
        console: PeerId,
    },
}

/// One engine: what it last reported, and how to command it.
struct Engine {
    /// `None` for an engine process that has not attached yet.
    info: Option<EngineInfo>,
    commands: mpsc::Sender<EngineCommand>,
}

/// The station's engines, by [`EngineId`].
pub(super) struct EngineTable {
    engines: Vec<Engine>,
    /// The station's `--max-streams` and `--capacity`: an engine's until it reports its own.
    limits: (u32, u64),
    /// Engines whose last copy failed at every source, and when.
    copy_failed: HashMap<EngineId, Instant>,
    /// The station is draining: no engine is offered to a decision.
    draining: bool,
}

impl EngineTable {
    /// The station's engines: `known` as they were at start, in order, and one command
    /// channel per engine slot (`commands` may be longer: slots for engine processes).
    pub(super) fn new(
        known: Vec<EngineInfo>,
        commands: Vec<mpsc::Sender<EngineCommand>>,
        limits: (u32, u64),
    ) -> Self {
        let mut known = known.into_iter();
        let engines = commands
            .into_iter()
            .map(|commands| Engine {
                info: known.next(),
                commands,
            })
            .collect();
        Self {
            engines,
            limits,
            copy_failed: HashMap::new(),
            draining: false,
        }
    }

    /// Engine `id`, once it has reported.
    pub(super) fn get(&self, id: EngineId) -> Option<&EngineInfo> {
        self.engines.get(id.0)?.info.as_ref()
    }

    /// The engine with peer id `peer`.
    pub(super) fn by_peer(&self, peer: &PeerId) -> Option<EngineView<'_>> {
        self.views().into_iter().find(|(_, e)| e.peer_id == *peer)
    }

    /// Drains the station (`true`) or takes it back into service. While it drains, every
    /// decision sees no engine here ([`EngineTable::views`]): a console is sent to another
    /// station that holds its segment, and no copy, replica or ingest is taken in; streams
    /// already running go on, and the engines' reports are still heard.
    pub(super) fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// Every engine that has reported, for the decisions; none while the station drains.
    pub(super) fn views(&self) -> Vec<EngineView<'_>> {
        if self.draining {
            return Vec::new();
        }
        (self.engines.iter().enumerate())
            .filter_map(|(i, e)| Some((EngineId(i), e.info.as_ref()?)))
            .collect()
    }

    /// Every engine that has reported, in order (the station record's list).
    pub(super) fn infos(&self) -> impl Iterator<Item = &EngineInfo> {
        self.engines.iter().filter_map(|e| e.info.as_ref())
    }

    /// Every slot, reported or not, as the metrics mirror them.
    pub(super) fn snapshot(&self) -> Vec<Option<EngineInfo>> {
        self.engines.iter().map(|e| e.info.clone()).collect()
    }

    /// Whether the engines are as `snapshot` shows them (the metrics need no new copy).
    pub(super) fn is(&self, snapshot: &[Option<EngineInfo>]) -> bool {
        self.engines.len() == snapshot.len()
            && (self.engines.iter().zip(snapshot)).all(|(e, s)| e.info.as_ref() == s.as_ref())
    }

    /// Every engine slot.
    pub(super) fn ids(&self) -> impl Iterator<Item = EngineId> + use<> {
        (0..self.engines.len()).map(EngineId)
    }

    /// The engines that are up.
    pub(super) fn up(&self) -> Vec<EngineView<'_>> {
        self.views().into_iter().filter(|(_, e)| e.up).collect()
    }

    /// Streams served now, over every engine.
    pub(super) fn streams(&self) -> u64 {
        self.infos().map(|e| u64::from(e.streams)).sum()
    }

    /// Where a console reaches engine `id` of the station of `director`.
    pub(super) fn location(
        &self,
        id: EngineId,
        director: PeerId,
        (filling, swap): (bool, bool),
    ) -> Result<SegmentLocation, Error> {
        let engine = self.get(id).ok_or(Error::EngineGone)?;
        Ok(SegmentLocation {
            filling,
            swap,
            http: engine.http,
            https: engine.https,
            bulk: engine.bulk,
            ..SegmentLocation::new(engine.peer_id, engine.addrs.clone(), director)
        })
    }

    /// Sends `command` to engine `id` without waiting: a full queue is a refusal.
    pub(super) fn send(&self, id: EngineId, command: EngineCommand) -> Result<(), Error> {
        let engine = self.engines.get(id.0).ok_or(Error::EngineGone)?;
        engine.commands.try_send(command).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Error::EngineQueueFull,
            mpsc::error::TrySendError::Closed(_) => Error::EngineGone,
        })
    }

    /// Tells every engine that `program` may be streamed from `at_ms` on (`0`: published;
    /// `u64::MAX`: not until told), so that none streams it earlier ([`EngineCommand::PublishAt`]).
    pub(super) fn publish_at(&self, program: ProgramId, at_ms: u64) {
        for id in self.ids() {
            if let Err(e) = self.send(id, EngineCommand::PublishAt { program, at_ms }) {
                tracing::warn!(%program, engine = id.0, error = %e, "engine not told the publish time");
            }
        }
    }

    /// The command channel of engine `id`, for work that runs off the loop.
    pub(super) fn commands(&self, id: EngineId) -> Option<mpsc::Sender<EngineCommand>> {
        Some(self.engines.get(id.0)?.commands.clone())
    }

    /// Tells engine `id` to copy `segment` from `sources` (cheapest first); returns the
    /// copy's outcome, to await off the loop.
    pub(super) fn fetch(
        &self,
        id: EngineId,
        segment: SegmentId,
        expect: Option<(SegmentHash, u64)>,
        sources: Vec<Source>,
        held_elsewhere: bool,
    ) -> Result<impl Future<Output = Fetched> + Send + use<>, Error> {
        let (done, mut outcome) = mpsc::channel(1);
        let fetch = EngineCommand::Fetch {
            segment,
            expect,
            sources,
            held_elsewhere,
            done,
        };
        self.send(id, fetch)?;
        Ok(async move {
            let (_, result) = outcome.recv().await.ok_or(FetchFailed::EngineStopped)?;
            result
        })
    }

    /// A copy into engine `id` failed at every source at `now`.
    pub(super) fn copy_failed(&mut self, id: EngineId, now: Instant) {
        self.copy_failed
            .retain(|_, at| now.saturating_duration_since(*at) < COPY_FAILED_FOR);
        self.copy_failed.insert(id, now);
    }

    /// Engines whose copy failed within [`COPY_FAILED_FOR`] before `now`: no copy targets.
    pub(super) fn failed_lately(&self, now: Instant) -> Vec<PeerId> {
        (self.copy_failed.iter())
            .filter(|(_, at)| now.saturating_duration_since(**at) < COPY_FAILED_FOR)
            .filter_map(|(id, _)| Some(self.get(*id)?.peer_id))
            .collect()
    }

    /// Takes in a report: the engine's state changes, the report is counted into
    /// `activity`, and what else it calls for is returned.
    pub(super) fn apply(&mut self, report: EngineReport, activity: &mut Activity) -> Heard {
        report.count(activity);
        let (max_streams, capacity) = self.limits;
        let EngineReport { engine: id, event } = report;
        match event {
            EngineEvent::Ready {
                peer_id,
                addrs,
                http,
                https,
                bulk,
            } => {
                let Some(engine) = self.engines.get_mut(id.0) else {
                    tracing::warn!(%id, %peer_id, "a report from an engine slot this station does not have");
                    return Heard::Nothing;
                };
                // The same engine coming back keeps its store's figures until its next usage
                // report (which follows its ready report) says otherwise.
                // And its HTTP address, unless the report names one.
                let (disks, old_http) = match &engine.info {
                    Some(old) if old.peer_id == peer_id => {
                        (old.disks.clone(), (old.http, old.https))
                    }
                    _ => (Vec::new(), (None, false)),
                };
                let (http, https) = match http {
                    Some(http) => (Some(http), https),
                    None => old_http,
                };
                engine.info = Some(EngineInfo {
                    peer_id,
                    addrs,
                    streams: 0,
                    max_streams,
                    used: used_on(&disks),
                    capacity,
                    up: true,
                    disks,
                    http,
                    https,
                    bulk,
                });
                Heard::Changed
            }
            EngineEvent::Usage { mut disks } => {
                if let Some(engine) = self.info_mut(id) {
                    // An engine process reports these over the backplane; they go into the
                    // signed station record, which has a size limit.
                    disks.truncate(crate::blade::MAX_DISKS);
                    engine.used = used_on(&disks);
                    engine.disks = disks;
                }
                Heard::Nothing
            }
            EngineEvent::Limits {
                max_streams,
                capacity,
            } => {
                if let Some(engine) = self.info_mut(id) {
                    engine.max_streams = max_streams;
                    engine.capacity = capacity;
                }
                Heard::Changed
            }
            EngineEvent::Down => {
                if let Some(engine) = self.info_mut(id) {
                    engine.up = false;
                }
                Heard::Changed
            }
            EngineEvent::Streams { active } => {
                if let Some(engine) = self.info_mut(id) {
                    engine.streams = active;
                }
                Heard::Nothing
            }
            EngineEvent::Stored { segment, .. } => match self.get(id) {
                Some(engine) => Heard::Stored {
                    engine: id,
                    peer: engine.peer_id,
                    segment,
                },
                None => Heard::Nothing,
            },
            EngineEvent::Dropped { segment } => match self.get(id) {
                Some(engine) => Heard::Dropped {
                    peer: engine.peer_id,
                    segment,
                },
                None => Heard::Nothing,
            },
            EngineEvent::TookOver { segment, console } => Heard::Stream(Streamed::TookOver {
                engine: id,
                segment,
                console,
            }),
            EngineEvent::Stopped {
                segment,
                console,
                bytes,
                ..
            } => Heard::Stream(Streamed::Stopped {
                engine: id,
                segment,
                console,
                bytes,
            }),
            EngineEvent::SwapAsked {
                segment, console, ..
            } => Heard::Stream(Streamed::SwapAsked {
                engine: id,
                segment,
                console,
            }),
            EngineEvent::Refused { .. } => Heard::Nothing,
        }
    }

    fn info_mut(&mut self, id: EngineId) -> Option<&mut EngineInfo> {
        self.engines.get_mut(id.0)?.info.as_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(engines: usize) -> (EngineTable, Vec<mpsc::Receiver<EngineCommand>>) {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..engines).map(|_| mpsc::channel(1)).unzip();
        (EngineTable::new(Vec::new(), senders, (4, 0)), receivers)
    }

    fn ready(index: usize, peer_id: PeerId) -> EngineReport {
        let addrs = Vec::new();
        EngineReport::new(
            EngineId(index),
            EngineEvent::Ready {
                peer_id,
                addrs,
                http: None,
                https: false,
                bulk: None,
            },
        )
    }

    fn of_first(event: EngineEvent) -> EngineReport {
        EngineReport::new(EngineId(0), event)
    }

    #[test]
    fn reports_set_the_engines_state_and_are_counted_once() {
        let (mut engines, _rx) = table(2);
        let mut activity = Activity::default();
        let peer = PeerId::random();
        assert!(engines.get(EngineId(0)).is_none());
        assert!(matches!(
            engines.apply(ready(0, peer), &mut activity),
            Heard::Changed
        ));
        let streams = of_first(EngineEvent::Streams { active: 3 });
        engines.apply(streams, &mut activity);
        assert_eq!(engines.get(EngineId(0)).map(|e| e.streams), Some(3));
        assert_eq!(engines.streams(), 3);
        let segment = SegmentId::new(ProgramId([1; 32]), 2);
        let console = PeerId::random();
        let stopped = of_first(EngineEvent::Stopped {
            segment,
            console,
            bytes: 10,
            complete: true,
        });
        assert!(matches!(
            engines.apply(stopped, &mut activity),
            Heard::Stream(Streamed::Stopped { bytes: 10, .. })
        ));
        engines.apply(of_first(EngineEvent::Refused { copy: true }), &mut activity);
        assert_eq!((activity.stops_complete, activity.refused_copies), (1, 1));
        // A stored segment names the engine; one from a slot that never reported, nothing.
        let stored =
            |index| EngineReport::new(EngineId(index), EngineEvent::Stored { segment, size: 1 });
        assert!(matches!(
            engines.apply(stored(0), &mut activity),
            Heard::Stored { peer: p, .. } if p == peer
        ));
        assert!(matches!(
            engines.apply(stored(1), &mut activity),
            Heard::Nothing
        ));
        engines.apply(of_first(EngineEvent::Down), &mut activity);
        assert!(engines.up().is_empty());
        assert_eq!(engines.views().len(), 1);
        // A slot the station does not have changes nothing.
        engines.apply(ready(7, PeerId::random()), &mut activity);
        assert_eq!(engines.views().len(), 1);
    }

    #[test]
    fn a_draining_station_offers_no_engine_but_keeps_counting_streams() {
        let (mut engines, _rx) = table(1);
        let mut activity = Activity::default();
        let peer = PeerId::random();
        engines.apply(ready(0, peer), &mut activity);
        engines.apply(of_first(EngineEvent::Streams { active: 2 }), &mut activity);
        engines.set_draining(true);
        assert!(engines.views().is_empty());
        assert!(engines.up().is_empty());
        assert!(engines.by_peer(&peer).is_none());
        assert_eq!(engines.streams(), 2, "running streams still count");
        engines.set_draining(false);
        assert_eq!(engines.up().len(), 1);
    }

    #[test]
    fn an_engine_whose_copy_failed_is_no_target_for_a_while() {
        let (mut engines, _rx) = table(2);
        let mut activity = Activity::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        engines.apply(ready(0, a), &mut activity);
        engines.apply(ready(1, b), &mut activity);
        let t0 = Instant::now();
        engines.copy_failed(EngineId(0), t0);
        assert_eq!(engines.failed_lately(t0 + Duration::from_secs(29)), vec![a]);
        assert!(engines.failed_lately(t0 + COPY_FAILED_FOR).is_empty());
        // A failure later on forgets the expired ones and counts from its own time.
        engines.copy_failed(EngineId(1), t0 + Duration::from_secs(40));
        assert_eq!(engines.failed_lately(t0 + Duration::from_secs(41)), vec![b]);
    }

    #[tokio::test]
    async fn commands_go_to_their_engine_and_a_full_queue_is_a_refusal() -> anyhow::Result<()> {
        let (engines, mut rx) = table(2);
        let segment = SegmentId::new(ProgramId([1; 32]), 0);
        engines.send(EngineId(1), EngineCommand::Preload { segment })?;
        assert!(matches!(
            rx[1].try_recv(),
            Ok(EngineCommand::Preload { .. })
        ));
        assert!(rx[0].try_recv().is_err());
        engines.send(EngineId(1), EngineCommand::Stop)?;
        assert!(matches!(
            engines.send(EngineId(1), EngineCommand::Stop),
            Err(Error::EngineQueueFull)
        ));
        assert!(matches!(
            engines.send(EngineId(5), EngineCommand::Stop),
            Err(Error::EngineGone)
        ));
        // A fetch's outcome comes back through the future it returns.
        let outcome = engines.fetch(EngineId(0), segment, None, Vec::new(), false)?;
        let Ok(EngineCommand::Fetch { done, .. }) = rx[0].try_recv() else {
            anyhow::bail!("no fetch sent");
        };
        done.send((segment, Err(FetchFailed::NoSource))).await?;
        assert_eq!(outcome.await, Err(FetchFailed::NoSource));
        // An engine that drops the command without an answer stopped.
        let outcome = engines.fetch(EngineId(0), segment, None, Vec::new(), false)?;
        drop(rx[0].try_recv());
        assert_eq!(outcome.await, Err(FetchFailed::EngineStopped));
        Ok(())
    }
}
