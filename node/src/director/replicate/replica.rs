//! One replica of a program copied onto this station (claim 12), the seeking director's side:
//! the source's manifest fetched and verified ([`Replica::prepare`]), then every segment
//! located at the source station and copied by one of this station's engines, round after
//! round until none failed ([`Replica::copy`]).

use std::collections::VecDeque;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;
use vodmesh_proto::director::{Request, Response};
use vodmesh_proto::manifest::{Manifest, SegmentEntry};
use vodmesh_proto::signed::Signed;
use vodmesh_proto::{ProgramId, SegmentId};
use vodmesh_registry::RegistryHandle;

use super::{Done, no_room};
use crate::control::{EngineCommand, FetchFailed, Fetched, Source};
use crate::director::catalog::fetch_record;
use crate::director::error::Error;
use crate::director::outbound::{AskError, Asker};
use crate::events::{Kind, Observer};

/// Segment copies a seeking director keeps in flight per replica.
const FETCH_WINDOW: usize = 4;

/// Rounds a replica's copy gets: what failed in one is copied again in the next.
const REPLICA_ATTEMPTS: usize = 5;

/// The pause before round `round` (1, 2, ...) of a replica's copy: 1 s, doubling, at most 16 s.
fn retry_pause(round: usize) -> Duration {
    Duration::from_secs(1 << round.saturating_sub(1).min(4))
}

/// One replica of a program on this station, copied from the station of director `source`.
#[derive(Debug)]
pub(in crate::director) struct Replica {
    pub(super) me: PeerId,
    pub(super) content_manager: PeerId,
    pub(super) program: ProgramId,
    pub(super) source: PeerId,
    pub(super) source_addrs: Vec<Multiaddr>,
    pub(super) asker: Asker,
    pub(super) registry: RegistryHandle,
    pub(super) observer: Observer,
    /// This station's engines that were up, and their command channels.
    pub(super) engines: Vec<(PeerId, mpsc::Sender<EngineCommand>)>,
    /// What the engines could take, free or evictable (`None`: unbounded).
    pub(super) room: Option<u64>,
    pub(super) held_elsewhere: bool,
}

impl Replica {
    /// The first step: the manifest, fetched and verified; the room for it; the program's
    /// state while we are at it.
    pub(super) async fn prepare(self) -> Done {
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
    pub(super) async fn copy(self, mut todo: Vec<SegmentEntry>) -> Done {
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
