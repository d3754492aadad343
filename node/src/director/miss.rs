//! Cache misses (claims 14, 15): a console asks this director for a segment none of its
//! engines holds. The director finds the holding stations in the registry, asks each holder's
//! director for the engine and its load (`LocateCopy`, which also lets our engines copy from
//! it), ranks the sources by cost ([`choose::rank`], whose module docs give the formula),
//! directs one of its own engines to fetch from the cheapest (the rest are fallbacks, in
//! order), and redirects the console to that engine at once: the engine streams the segment
//! to the console while it is still arriving. Copy-done comes back as the engine's `Stored`
//! report, which enters the location table and, for the station's first segment of the
//! program, provides it in the registry (the MLR learns the new location).
//!
//! The console goes to the cheapest holder's engine itself, with no copy, when this station
//! cannot copy (no engine tokens), when its engines are all busy or their last copy failed at
//! every source (for 30 s: a station whose tokens no holder trusts does not keep making its
//! consoles wait for copies that never come), and when the station holds the segment but
//! every holder is busy (claims 19, 20 across stations). Finding no other station is then a
//! wait (`Busy`), not an end.
//!
//! The look-ups run off the loop ([`gather`]); the choice is made on the loop
//! ([`Misses::on_done`]) with what the station knows by then. Every decision is logged at
//! debug level with the candidates and their costs, and counted (`Activity::misses`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::PeerId;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use vodmesh_proto::director::{Request, Response, SegmentLocation};
use vodmesh_proto::manifest::Manifest;
use vodmesh_proto::signed::Signed;
use vodmesh_proto::time::now_ms;
use vodmesh_proto::{ProgramId, SegmentId, StationId};
use vodmesh_registry::RegistryHandle;

use super::catalog::{Learned, fetch_manifest, fetch_record};
use super::choose::{self, Holder, Locating, Measured, MissPlan};
use super::context::{Client, Ctx, Reply};
use super::engines::EngineId;
use super::error::{Error, respond};
use super::outbound::Asker;
use super::play::Play;
use super::publish::Publishing;
use super::tasks::Tasks;
use crate::control::{Copied, Fetched, Source};
use crate::events::Kind;
use crate::expiring::Expiring;
use crate::peer_slots::PeerSlots;
use vodmesh_proto::director::ErrorCode;

/// How long a miss waits for a holding station's director to name its engine.
const LOCATE_COPY_WAIT: Duration = Duration::from_secs(3);
/// How long a miss waits for the other holders once one has named an engine: a reachable
/// director answers within a round trip, and one cut off from this station must not hold
/// the miss for the whole [`LOCATE_COPY_WAIT`] when another can serve (the chaos run: each
/// miss at a station waited 2-3 s for a holder whose link was cut).
const OTHERS_WITHIN: Duration = Duration::from_millis(500);
/// How long the look-ups of one miss may take in all: a peer that accepts requests and
/// never answers (a content manager, a holder, a registry peer) holds a gather no longer.
/// A registry query that meets such a peer ends only at its query time-out (10 s), and a
/// miss may need three in a row (the record, the holders for a manifest, the holders).
const GATHER_WITHIN: Duration = Duration::from_secs(40);
/// How long a program whose manifest nobody gave in time is answered at once
/// ([`Error::ManifestSilent`]), without a gather: asks of it cannot hold the gathers.
const SILENT_FOR: Duration = Duration::from_secs(10);
/// Programs remembered as silent, at most.
const MAX_SILENT: usize = 1024;
/// How long a manifest fetched for a miss is kept (a station that keeps copies of a program
/// also has it in `kept.redb`).
const MANIFESTS_FOR: Duration = Duration::from_secs(3600);
/// Manifests kept for misses, at most.
const MAX_MANIFESTS: usize = 1024;
/// Weight of a new throughput measurement in the running mean.
const EWMA: f64 = 0.5;
/// Copies smaller than this say little about a link's throughput.
const MIN_MEASURED: u64 = 256 * 1024;
/// Misses being gathered at once, at most: each costs registry lookups and a question to
/// every holder's director, and any console can ask; past this a miss is answered Busy.
const MAX_GATHERING: usize = 32;
/// How long a station whose bytes failed verification stays penalised after its last such
/// copy ([`choose::penalise`]), and how many such stations are remembered.
const PENALISED_FOR: Duration = Duration::from_secs(300);
const MAX_PENALISED: usize = 1024;
/// Misses one peer may have gathered at once: a console plays one segment at a time and asks
/// ahead for a few; one that floods `Locate` must not take every gather from the others.
const MAX_GATHERING_PER_PEER: usize = 4;

/// What the look-ups of a miss found, for the loop to decide with.
#[derive(Debug)]
pub(super) struct Gathered {
    /// The console's question.
    ask: Locating,
    /// This station holds the segment, on engines busy for the console.
    held: bool,
    channel: Client,
    record: Learned,
    manifest: Arc<Manifest>,
    /// The manifest as fetched for this miss, to keep once a copy comes here.
    fetched: Option<Signed>,
    holders: Vec<Holder>,
}

/// What a miss task hands back to the loop.
#[derive(Debug)]
pub(super) enum Done {
    /// The holders were found: choose and answer.
    Gathered(Box<Gathered>),
    /// An answer ready to send (the look-ups failed).
    Reply(Reply),
    /// Nobody gave the program's manifest in time: answered, and remembered a while.
    Silent(ProgramId, Reply),
    /// A miss's copy ended.
    Copied {
        /// The segment.
        segment: SegmentId,
        /// The engine copying it in, and its peer id.
        engine: (EngineId, PeerId),
        /// Each source engine's station.
        stations: HashMap<PeerId, StationId>,
        /// The engine's outcome.
        outcome: Fetched,
    },
}

/// What the director remembers for misses.
#[derive(Debug)]
pub(super) struct Misses {
    /// Bounds the misses being gathered ([`MAX_GATHERING`]).
    gathering: Arc<Semaphore>,
    /// And those of each asking peer ([`MAX_GATHERING_PER_PEER`]).
    gathering_by: PeerSlots,
    /// Verified manifests of programs this station copied segments of, lately
    /// ([`MANIFESTS_FOR`], at most [`MAX_MANIFESTS`]: a console's misses name any program).
    manifests: Expiring<ProgramId, Arc<Manifest>>,
    /// Measured copy throughput from each station, bit/s (running mean).
    throughput: HashMap<StationId, f64>,
    /// Round-trip time to each director this one is connected to.
    rtt: HashMap<StationId, Duration>,
    /// Stations whose bytes failed verification lately, and how many times.
    penalised: Expiring<StationId, u32>,
    /// The sources of the copies still filling here, cheapest first: where a console that
    /// seeks past the fill is sent (claim 21).
    filling: HashMap<SegmentId, Vec<Holder>>,
    /// Programs whose manifest nobody gave in time, lately ([`SILENT_FOR`]).
    silent: Expiring<ProgramId, ()>,
    tasks: Tasks<Done>,
}

impl Default for Misses {
    fn default() -> Self {
        Self {
            gathering: Arc::new(Semaphore::new(MAX_GATHERING)),
            gathering_by: PeerSlots::new(MAX_GATHERING_PER_PEER),
            manifests: Expiring::new(MANIFESTS_FOR, MAX_MANIFESTS),
            throughput: HashMap::new(),
            rtt: HashMap::new(),
            penalised: Expiring::new(PENALISED_FOR, MAX_PENALISED),
            filling: HashMap::new(),
            silent: Expiring::new(SILENT_FOR, MAX_SILENT),
            tasks: Tasks::default(),
        }
    }
}

impl Misses {
    /// The next result of a miss task.
    pub(super) async fn next(&mut self) -> Done {
        self.tasks.next().await
    }

    /// Stops the miss tasks.
    pub(super) async fn shutdown(&mut self) {
        self.tasks.shutdown().await;
    }

    /// The round trip to director `peer` measured by ping (`None`: it stopped answering).
    pub(super) fn round_trip(&mut self, peer: PeerId, rtt: Option<Duration>) {
        match rtt {
            Some(rtt) => self.rtt.insert(StationId(peer), rtt),
            None => self.rtt.remove(&StationId(peer)),
        };
    }

    /// The cheapest source of a copy of `segment` filling here, at its own station.
    pub(super) fn source_of(&self, segment: &SegmentId) -> Option<SegmentLocation> {
        Some(self.filling.get(segment)?.first()?.location())
    }

    /// Starts filling a miss: looks up holders off the loop; [`Misses::on_done`] finishes.
    /// `held`: the station holds the segment, but every holder is busy for this console
    /// (then finding no other station is a wait, `Busy`). Returns the answer when there is
    /// one at once.
    pub(super) fn start(
        &mut self,
        ctx: &Ctx<'_>,
        publish: &Publishing,
        (ask, held): (Locating, bool),
        channel: Client,
    ) -> Option<Reply> {
        let program = ask.segment.program;
        if self.silent.contains(&program, Instant::now()) {
            return Some((channel, Response::Error(Error::ManifestSilent.into())));
        }
        // The peer's own share first: a flood from one peer is answered Busy at once, and
        // leaves the others' gathers free.
        let Some(mine) = self.gathering_by.take(ask.console) else {
            return Some((channel, Response::Error(Error::TooManyMisses.into())));
        };
        let Ok(permit) = self.gathering.clone().try_acquire_owned() else {
            return Some((channel, Response::Error(Error::TooManyMisses.into())));
        };
        // A content manager has the program's record and manifest itself: asking itself
        // over the network fails ("Failed to dial the requested peer").
        let own = (ctx.catalog).and_then(|c| c.get(&program).ok().flatten());
        let kept = || ctx.kept.get(&program).ok().flatten();
        let manifest = (self.manifests.get(&program, Instant::now()).cloned())
            .or_else(|| own.or_else(kept).and_then(|e| e.manifest()).map(Arc::new))
            .or_else(|| publish.recent_manifest(&program).map(Arc::new));
        let lookup = Lookup {
            me: ctx.me.peer_id,
            engines: ctx.engines.infos().map(|e| e.peer_id).collect(),
            registry: ctx.registry.clone(),
            asker: ctx.asker.clone(),
            segment: ask.segment,
        };
        let known = publish.record(ctx, &program);
        self.tasks.spawn(async move {
            let _permits = (permit, mine);
            let gathered = tokio::time::timeout(GATHER_WITHIN, lookup.gather(known, manifest));
            match gathered.await.unwrap_or(Err(Error::GatherTimedOut)) {
                Ok(found) => Done::Gathered(Box::new(Gathered {
                    ask,
                    held,
                    channel,
                    record: found.record,
                    manifest: found.manifest,
                    fetched: found.fetched,
                    holders: found.holders,
                })),
                // Held here, only busy: a wait for the console, not an end.
                Err(e) if held && e.code() == ErrorCode::NotFound => {
                    Done::Reply((channel, Response::Error(Error::OnlyHeldBusy.into())))
                }
                Err(e @ Error::ManifestSilent) => {
                    Done::Silent(program, (channel, Response::Error(e.into())))
                }
                Err(e) => Done::Reply((channel, Response::Error(e.into()))),
            }
        });
        None
    }

    /// Takes a miss task's result; returns the answer to send, if any.
    pub(super) fn on_done(
        &mut self,
        ctx: &mut Ctx<'_>,
        (publish, play): (&mut Publishing, &Play),
        done: Done,
    ) -> Option<Reply> {
        match done {
            Done::Gathered(gathered) => {
                let g = *gathered;
                let _ = publish.learn(ctx, g.record);
                let (ask, manifest) = (&g.ask, &g.manifest);
                let program = ask.segment.program;
                (self.manifests).insert(program, manifest.clone(), Instant::now());
                let answer = self.fill(ctx, (publish, play), (ask, g.held), manifest, g.holders);
                // A copy comes here: the station answers `Manifest` for the program now.
                if let (Some(signed), Ok(at)) = (g.fetched, &answer)
                    && at.director == ctx.me.peer_id
                {
                    publish.keep(ctx, program, signed);
                }
                Some((g.channel, respond(answer, Response::Location)))
            }
            Done::Reply(reply) => Some(reply),
            Done::Silent(program, reply) => {
                tracing::info!(%program, "miss: no manifest in time; answering its misses at once for a while");
                self.silent.insert(program, (), Instant::now());
                Some(reply)
            }
            Done::Copied {
                segment,
                engine,
                stations,
                outcome,
            } => {
                self.filling.remove(&segment);
                let copied = ctx.copy_ended(segment, engine, outcome)?;
                for liar in (copied.corrupt.iter()).filter_map(|e| stations.get(e)) {
                    self.penalise(ctx, segment, *liar);
                }
                if let Some(station) = stations.get(&copied.source) {
                    ctx.activity.source_failovers += u64::from(copied.failovers);
                    self.measured(*station, &copied);
                }
                None
            }
        }
    }

    /// Answers a miss on the loop: the station's own engine if one can serve by now; else,
    /// when the station holds the segment but every holder is busy, the cheapest other
    /// station's engine; else a copy from the cheapest station into one of our engines (whose
    /// copy is filling), or the cheapest holder itself when no engine here can copy.
    fn fill(
        &mut self,
        ctx: &mut Ctx<'_>,
        (publish, play): (&Publishing, &Play),
        (ask, held): (&Locating, bool),
        manifest: &Manifest,
        holders: Vec<Holder>,
    ) -> Result<SegmentLocation, Error> {
        // Engines the console could not reach are no sources for it either.
        let holders: Vec<Holder> = (holders.into_iter())
            .filter(|h| !ask.avoid.contains(&h.engine))
            .collect();
        // Another console's miss of the same segment may have been filled meanwhile.
        match play.locate_here(ctx, publish, ask) {
            Ok(location) => Ok(location),
            Err(e) if e.code() == ErrorCode::NotFound && !held => {
                self.copy(ctx, ask, manifest, holders)
            }
            Err(e) if matches!(e.code(), ErrorCode::NotFound | ErrorCode::Busy) => {
                let size = manifest
                    .content
                    .segment(ask.segment.index.0)
                    .map_or(0, |e| e.size);
                let ranked = self.rank(ctx, ask.segment, size, holders);
                let (_, holder) = ranked.first().ok_or(Error::HoldersBusy)?;
                Ok(holder.location())
            }
            Err(e) => Err(e),
        }
    }

    /// The holders, cheapest source first ([`choose::rank`]), logged.
    fn rank(
        &self,
        ctx: &Ctx<'_>,
        segment: SegmentId,
        size: u64,
        holders: Vec<Holder>,
    ) -> Vec<(f64, Holder)> {
        let measured = Measured {
            throughput: &self.throughput,
            rtt: &self.rtt,
        };
        let ranked = choose::rank(&ctx.me.link(), holders, size, measured);
        let now = Instant::now();
        let failures = |s: StationId| self.penalised.get(&s, now).copied().unwrap_or(0);
        let ranked = choose::penalise(ranked, failures);
        let table: Vec<String> = (ranked.iter())
            .map(|(cost, h)| format!("{}={cost:.4}s", h.station.director))
            .collect();
        tracing::debug!(%segment, candidates = ?table, "miss: source costs");
        ranked
    }

    /// Has an engine of this station copy the segment from the cheapest holder (the others
    /// in order behind it) and sends the console there; or sends the console to the holder
    /// ([`choose::miss`]).
    fn copy(
        &mut self,
        ctx: &mut Ctx<'_>,
        ask: &Locating,
        manifest: &Manifest,
        holders: Vec<Holder>,
    ) -> Result<SegmentLocation, Error> {
        let segment = ask.segment;
        let entry =
            (manifest.content.segment(segment.index.0)).ok_or(Error::NoSuchSegment(segment))?;
        let ranked = self.rank(ctx, segment, entry.size, holders);
        let (cost, cheapest) = ranked.first().ok_or(Error::NoSource(segment))?;
        let held_here = ctx.holders(segment).unwrap_or_default();
        let mut exclude = ask.avoid.clone();
        exclude.extend(ctx.engines.failed_lately(Instant::now()));
        let views = ctx.engines.views();
        let plan = choose::miss(ctx.me.can_copy(), &views, &held_here, &exclude, entry.size);
        let into = match plan {
            MissPlan::Copy { into } => into,
            MissPlan::Redirect => {
                tracing::debug!(%segment, source = %cheapest.station.director, "miss: redirecting to the holder");
                return Ok(cheapest.location());
            }
            MissPlan::Declined => {
                tracing::info!(%segment, need = entry.size, "miss: no room for the copy here, nothing evictable enough; sending the console to the holder");
                ctx.activity.copies_declined += 1;
                return Ok(cheapest.location());
            }
        };
        let location = (ctx.engines).location(into, ctx.me.peer_id, (true, false))?;
        let sources = (ranked.iter())
            .map(|(_, h)| Source {
                engine: h.engine,
                addrs: h.addrs.clone(),
                bulk: h.location().bulk,
            })
            .collect();
        // The holders keep the program; this copy is a cache.
        let expect = Some((entry.hash, entry.size));
        let outcome = (ctx.engines).fetch(into, segment, expect, sources, true)?;
        let engine = location.engine;
        tracing::info!(%segment, source = %cheapest.station.director, cost = format!("{cost:.4}s"), to = %engine, "miss: copying from the cheapest station");
        ctx.activity.misses += 1;
        let me = ctx.me.peer_id;
        let chosen = Kind::SourceChosen {
            station: cheapest.station.director,
            engine: cheapest.engine,
        };
        ctx.observer.segment(me, segment, chosen);
        (ctx.observer).segment(me, segment, Kind::FetchDirected { engine });
        ctx.filling(segment, engine);
        let stations = (ranked.iter())
            .map(|(_, h)| (h.engine, h.station_id()))
            .collect();
        self.filling
            .insert(segment, ranked.into_iter().map(|(_, h)| h).collect());
        self.tasks.spawn(async move {
            Done::Copied {
                segment,
                engine: (into, engine),
                stations,
                outcome: outcome.await,
            }
        });
        Ok(location)
    }

    /// A copy of `segment` dropped the bytes of `station`, which failed verification: it
    /// costs more, and goes after the others, for [`PENALISED_FOR`] from now.
    fn penalise(&mut self, ctx: &Ctx<'_>, segment: SegmentId, station: StationId) {
        let now = Instant::now();
        let failures = self.penalised.remove(&station, now).unwrap_or(0) + 1;
        self.penalised.insert(station, failures, now);
        tracing::warn!(%segment, %station, failures, "miss: a source's bytes failed verification; penalised");
        let penalised = Kind::SourcePenalised {
            station: station.0,
            failures,
        };
        ctx.observer.segment(ctx.me.peer_id, segment, penalised);
    }

    /// A copy from `station` finished: its measured throughput corrects the next cost.
    fn measured(&mut self, station: StationId, copied: &Copied) {
        if copied.bytes < MIN_MEASURED || copied.elapsed.is_zero() {
            return;
        }
        let bps = copied.bytes as f64 * 8.0 / copied.elapsed.as_secs_f64();
        let mean = (self.throughput.entry(station))
            .and_modify(|m| *m = EWMA * bps + (1.0 - EWMA) * *m)
            .or_insert(bps);
        tracing::debug!(%station, measured_mbps = bps / 1e6, mean_mbps = *mean / 1e6, "copy throughput");
    }
}

/// What the look-ups of a miss found.
struct Found {
    record: Learned,
    manifest: Arc<Manifest>,
    fetched: Option<Signed>,
    holders: Vec<Holder>,
}

/// The look-ups of one miss, off the loop.
struct Lookup {
    me: PeerId,
    /// This station's engines, named to the holders (`LocateCopy`): the one taking the copy
    /// is among them.
    engines: Vec<PeerId>,
    registry: RegistryHandle,
    asker: Asker,
    segment: SegmentId,
}

impl Lookup {
    /// The catalog record (`known`, or the registry's), the manifest (`manifest`, or the
    /// content manager's or a holder's), the holders and their engines.
    async fn gather(
        &self,
        known: Option<Learned>,
        manifest: Option<Arc<Manifest>>,
    ) -> Result<Found, Error> {
        let SegmentId { program, index } = self.segment;
        // The holders are looked up meanwhile: each registry query may wait out a peer that
        // never answers.
        let described = async {
            let record = match known {
                Some(r) => r,
                None => (fetch_record(&self.registry, program, None).await)
                    .ok_or(Error::UnknownProgram)?,
            };
            if !record.record.playable(now_ms()) {
                return Err(Error::NotPublished);
            }
            let (manifest, fetched) = match manifest {
                Some(m) => (m, None),
                None => {
                    let f = fetch_manifest(&self.registry, &self.asker, self.me, &record.record)
                        .await?;
                    (Arc::new(f.manifest), Some(f.signed))
                }
            };
            Ok((record, manifest, fetched))
        };
        let began = Instant::now();
        let ms = || began.elapsed().as_millis() as u64;
        let described = async {
            let described = described.await;
            tracing::debug!(segment = %self.segment, ms = ms(), ok = described.is_ok(), "miss: the program described");
            described
        };
        // Once the holders other than this station are known, a director that never
        // answers (hung, cut off) is not waited out.
        let other = |h: &HashSet<PeerId>| h.iter().any(|h| *h != self.me);
        let holders = async {
            let holders = self.registry.holders_enough(program, other).await;
            tracing::debug!(segment = %self.segment, ms = ms(), "miss: the holders looked up");
            holders
        };
        let (described, holders) = tokio::join!(described, holders);
        let (record, manifest, fetched) = described?;
        if manifest.content.segment(index.0).is_none() {
            return Err(Error::NoSuchSegment(self.segment));
        }
        let holders = holders?;
        let asks = (holders.into_iter())
            .filter(|h| *h != self.me)
            .map(|holder| self.holder(holder));
        let holders = answers_settled(asks, OTHERS_WITHIN).await;
        if holders.is_empty() {
            return Err(Error::NoSource(self.segment));
        }
        Ok(Found {
            record,
            manifest,
            fetched,
            holders,
        })
    }

    /// The engine station `holder` names for the segment, or `None` when it names none in
    /// time (a holder cut off from us must not hold up the miss: it is left out).
    async fn holder(&self, holder: PeerId) -> Option<Holder> {
        let (station, _) = self.registry.get_station(holder).await.ok()??;
        let SegmentId { program, index } = self.segment;
        let request = Request::LocateCopy {
            program,
            index,
            engines: self.engines.clone(),
        };
        let addrs = station.addrs.clone();
        let asked = (self.asker)
            .ask_within(LOCATE_COPY_WAIT, holder, addrs, request)
            .await;
        match asked {
            Ok(Response::Located {
                engine,
                addrs,
                streams,
                max_streams,
                ..
            }) => Some(Holder {
                station,
                engine,
                addrs,
                streams,
                max_streams,
            }),
            Ok(other) => {
                tracing::debug!(%holder, ?other, "miss: holder answered LocateCopy oddly");
                None
            }
            Err(e) => {
                tracing::debug!(%holder, error = %e, "miss: holder cannot serve the segment");
                None
            }
        }
    }
}

/// The answers `asks` give until all have answered, or until `others_within` after the
/// first one that is an answer (`Some`), whichever comes first: those that have not
/// answered by then are left out.
async fn answers_settled<T>(
    asks: impl IntoIterator<Item = impl Future<Output = Option<T>>>,
    others_within: Duration,
) -> Vec<T> {
    let mut asks: FuturesUnordered<_> = asks.into_iter().collect();
    let mut answers = Vec::new();
    let mut until = None;
    loop {
        let next = match until {
            Some(until) => match tokio::time::timeout_at(until, asks.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => asks.next().await,
        };
        match next {
            Some(Some(answer)) => {
                answers.push(answer);
                until.get_or_insert(Instant::now() + others_within);
            }
            Some(None) => {}
            None => break,
        }
    }
    answers
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer `after` from now (or none, `None`).
    async fn answer(after: Duration, answer: Option<u32>) -> Option<u32> {
        tokio::time::sleep(after).await;
        answer
    }

    /// Once one holder answered, a silent one is waited for `others_within` more, not for
    /// its whole time; the controls: those answering within it are all taken, and with no
    /// answer yet every ask is waited for.
    #[tokio::test(start_paused = true)]
    async fn a_miss_waits_for_the_other_holders_a_while_after_the_first_answer() {
        let ms = Duration::from_millis;
        let within = ms(500);
        let began = Instant::now();
        let asks = [
            answer(ms(10), Some(1)),
            answer(ms(20), None),
            answer(ms(3000), Some(3)),
        ];
        assert_eq!(answers_settled(asks, within).await, vec![1]);
        assert_eq!(began.elapsed(), ms(510));

        let began = Instant::now();
        let asks = [
            answer(ms(10), Some(1)),
            answer(ms(300), Some(2)),
            answer(ms(400), None),
        ];
        assert_eq!(answers_settled(asks, within).await, vec![1, 2]);
        assert_eq!(began.elapsed(), ms(400));

        let began = Instant::now();
        let asks = [answer(ms(2000), None), answer(ms(2900), Some(3))];
        assert_eq!(answers_settled(asks, within).await, vec![3]);
        assert_eq!(began.elapsed(), ms(2900));
    }
}
