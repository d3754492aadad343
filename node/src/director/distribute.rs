//! Placing a program's replicas (claim 12), on the content manager.
//!
//! After an ingest commit with `--replicas N`, the content manager walks the swarm (no central
//! list) and orders the stations that may take a copy ([`choose::replica_targets`]: room for
//! the whole program as their records say, most room first, one per region first). It sends
//! them `Replicate` one at a time until N took one. A station may still refuse at once: its
//! engines have less room than the program by now (its record is up to a republish old), or
//! it is draining, or it does not answer; the next one is asked then. When the stations run
//! out first, the shortfall is one warning line on the content manager, counted in its
//! activity (`vodmesh_replicas_unplaced_total`, `vodmesh status`) and told as
//! [`Kind::ReplicasPlaced`].

use libp2p::{Multiaddr, PeerId};
use vodmesh_proto::ProgramId;
use vodmesh_proto::director::{ErrorCode, Request, Response};
use vodmesh_proto::station::human_bytes;
use vodmesh_registry::{RegistryHandle, WalkLimits};

use super::choose;
use super::context::Ctx;
use super::outbound::{AskError, Asker};
use crate::events::{Kind, Observer};

/// One program's distribution, to run off the loop ([`Distribution::run`]).
#[derive(Debug)]
pub(super) struct Distribution {
    me: PeerId,
    addrs: Vec<Multiaddr>,
    registry: RegistryHandle,
    asker: Asker,
    observer: Observer,
    program: ProgramId,
    /// The program's total bytes.
    size: u64,
    /// `--replicas`.
    wanted: u32,
}

/// How a program's distribution ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Placed {
    /// The program.
    program: ProgramId,
    /// Its total bytes.
    size: u64,
    /// `--replicas`.
    wanted: u32,
    /// Stations that took a replica.
    placed: u32,
    /// Stations passed over: their records say their engines have too little room.
    too_small: u32,
    /// Stations asked that refused for want of room.
    declined: u32,
    /// Stations asked that refused otherwise, or did not answer.
    failed: u32,
    /// Why the swarm could not be walked, when it could not.
    walk_failed: Option<String>,
}

impl Placed {
    /// Nothing placed yet of `wanted` replicas of `program` (`size` bytes).
    fn new(program: ProgramId, size: u64, wanted: u32) -> Self {
        Self {
            program,
            size,
            wanted,
            placed: 0,
            too_small: 0,
            declined: 0,
            failed: 0,
            walk_failed: None,
        }
    }

    /// Replicas wanted and not placed.
    pub(super) fn shortfall(&self) -> u32 {
        self.wanted.saturating_sub(self.placed)
    }

    /// Why fewer than wanted were placed, for an operator.
    fn why(&self) -> String {
        if let Some(e) = &self.walk_failed {
            return format!("the swarm walk failed ({e})");
        }
        let mut why = Vec::new();
        if self.too_small > 0 {
            why.push(format!(
                "{} station(s) too small for its {} by their records",
                self.too_small,
                human_bytes(self.size)
            ));
        }
        if self.declined > 0 {
            why.push(format!("{} declined for want of room", self.declined));
        }
        if self.failed > 0 {
            why.push(format!("{} refused or did not answer", self.failed));
        }
        why.push("no other station to ask".into());
        why.join(", ")
    }

    /// Counts and tells the shortfall, if any (the loop's side, once the task ended).
    pub(super) fn report(self, ctx: &mut Ctx<'_>) {
        let shortfall = self.shortfall();
        if shortfall > 0 {
            tracing::warn!(
                program = %self.program,
                "{} replicas wanted, {} placed: {}",
                self.wanted,
                self.placed,
                self.why()
            );
            ctx.activity.replicas_unplaced += u64::from(shortfall);
        }
        let placed = Kind::ReplicasPlaced {
            wanted: self.wanted,
            placed: self.placed,
        };
        (ctx.observer).program(ctx.me.peer_id, self.program, placed);
    }
}

impl Distribution {
    /// `wanted` replicas of `program`, `size` bytes, from this station.
    pub(super) fn new(ctx: &Ctx<'_>, program: ProgramId, wanted: u32, size: u64) -> Self {
        Self {
            me: ctx.me.peer_id,
            addrs: ctx.me.addrs.clone(),
            registry: ctx.registry.clone(),
            asker: ctx.asker.clone(),
            observer: ctx.observer.clone(),
            program,
            size,
            wanted,
        }
    }

    /// Walks the swarm and asks the stations in turn until `wanted` took a replica.
    pub(super) async fn run(self) -> Placed {
        let (me, program) = (self.me, self.program);
        let mut placed = Placed::new(program, self.size, self.wanted);
        let stations = match vodmesh_registry::walk(&self.registry, me, WalkLimits::default()).await
        {
            Ok(s) => s.into_iter().map(|(r, _)| r).collect::<Vec<_>>(),
            Err(e) => {
                placed.walk_failed = Some(e.to_string());
                return placed;
            }
        };
        let candidates = choose::replica_targets(&stations, &[me], self.size);
        let all = choose::replica_targets(&stations, &[me], 0).len();
        placed.too_small = all.saturating_sub(candidates.len()) as u32;
        for target in candidates {
            if placed.placed >= self.wanted {
                break;
            }
            let sent = Kind::ReplicateSent {
                target: target.director,
            };
            self.observer.program(me, program, sent);
            let request = Request::Replicate {
                program,
                source: me,
                source_addrs: self.addrs.clone(),
                size: self.size,
            };
            match self.asker.ask(target.director, target.addrs, request).await {
                Ok(Response::Ok) => placed.placed += 1,
                Err(AskError::Refused(e)) if e.code == ErrorCode::Full => {
                    tracing::info!(%program, target = %target.director, error = %e, "replica declined; asking the next station");
                    placed.declined += 1;
                }
                answer => {
                    let error = answer.map_or_else(|e| e.to_string(), |a| format!("{a:?}"));
                    tracing::info!(%program, target = %target.director, %error, "replicate refused; asking the next station");
                    placed.failed += 1;
                }
            }
        }
        placed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shortfall_says_what_each_station_did() {
        let program = ProgramId([1; 32]);
        let placed = Placed {
            placed: 1,
            too_small: 1,
            declined: 2,
            failed: 1,
            ..Placed::new(program, 8_400_000, 2)
        };
        assert_eq!(placed.shortfall(), 1);
        assert_eq!(
            placed.why(),
            "1 station(s) too small for its 8.4 MB by their records, 2 declined for want of room, 1 refused or did not answer, no other station to ask"
        );
        let alone = Placed::new(program, 1, 1);
        assert_eq!(alone.why(), "no other station to ask");
        let walk = Placed {
            walk_failed: Some("timed out".into()),
            ..alone
        };
        assert_eq!(walk.why(), "the swarm walk failed (timed out)");
        // More placed than wanted cannot be, but is no shortfall either.
        assert_eq!(Placed { placed: 3, ..walk }.shortfall(), 0);
    }
}
