//! The swarm's catalog as any director knows it (issue 25: no single point of failure).
//!
//! A program's signed manifest and signed catalog record travel with its bytes: a station
//! that holds segments of a program keeps both (in `kept.redb`, verified against the content
//! manager's key) and answers `Manifest` for it; a station that holds nothing fetches the
//! manifest from the content manager or, when that is down, from any holder (the catalog
//! record's manifest hash says which answer is the right one). `Programs` is the swarm's view:
//! this station's own programs and kept ones, and each other station's (`Held`), merged, so
//! listing needs no content manager either.
//!
//! Programs not published yet (inactive, or before their publish time) are seen only by those
//! who work on them ([`Viewer`]): an admin (`AllPrograms`, with an admin proof), and member
//! stations, which replicate and list them between each other (`Manifest`, `Held`). A member
//! is a station the registry admits, or, for a peer not known yet (an open swarm admits
//! everyone, so there it is always so), a station whose record the registry holds: a console
//! has none. Anyone else gets `Programs` without them and `program not published` for their
//! `Manifest`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::stream::{self, FuturesUnordered, StreamExt};
use libp2p::{Multiaddr, PeerId};
use vodmesh_proto::catalog::{CatalogRecord, ProgramState};
use vodmesh_proto::director::{ProgramInfo, Request, Response};
use vodmesh_proto::manifest::Manifest;
use vodmesh_proto::signed::Signed;
use vodmesh_proto::{ProgramId, SegmentHash};
use vodmesh_registry::RegistryHandle;

use super::context::Ctx;
use super::error::Error;
use super::outbound::{AskError, Asker};
use crate::content::CatalogEntry;

/// How long one other station may take to give its programs or a manifest: one that does
/// not answer in time (down, cut off) is left out, not waited for.
const ASK_WITHIN: Duration = Duration::from_secs(5);
/// How long a station that gave no answer to the last `Held` asked of it may take to answer
/// the next: a hung station (its connections open, nothing answered on them) costs each
/// listing after the first this, not [`ASK_WITHIN`]. One that answers again, even after the
/// listing stopped waiting for it, is given [`ASK_WITHIN`] again ([`Silent`]).
const AGAIN_WITHIN: Duration = Duration::from_secs(1);
/// How long the listed programs' holders are looked up in the registry, all of them: the
/// stations' own lists name those that answered, and the look-ups add those found by then
/// (this director's own copies of the records at once). A whole look-up would wait out a hung
/// director's registry answers (4 s, `PEER_ANSWER_TIMEOUT`) in every listing.
const HOLDERS_LISTED_WITHIN: Duration = Duration::from_secs(1);
/// Stations asked at once for their programs.
const LISTING_CONCURRENCY: usize = 16;
/// Stations remembered as silent, at most (a swarm walk's bound: each listing forgets those
/// its walk no longer finds); past it, a silent station is given the whole [`ASK_WITHIN`].
const MAX_SILENT: usize = 4096;
/// Holders asked for a manifest, at most, when the content manager does not answer.
const MANIFEST_HOLDERS: usize = 8;
/// How long the content manager may take to give a manifest, its look-up in the registry
/// included: one that accepts the request and never answers must not hold a miss.
const MANAGER_WITHIN: Duration = Duration::from_secs(3);
/// How long the holders, asked after a silent content manager, may take in all (finding them
/// in the registry may wait out a registry query's time-out, 10 s).
const HOLDERS_WITHIN: Duration = Duration::from_secs(15);

/// Who asks for a program list or a manifest, for what they may see of programs not
/// published yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Viewer {
    /// An admin (with its proof) or a member of a closed swarm: sees every program.
    Trusted,
    /// The peer `0`, on the connection: sees published programs; a program not published
    /// only if the registry holds a station record of it ([`may_see`]).
    Other(PeerId),
}

impl Viewer {
    /// The peer `peer`, a member of a closed swarm when `member`.
    pub(super) fn of(peer: PeerId, member: bool) -> Self {
        if member {
            Self::Trusted
        } else {
            Self::Other(peer)
        }
    }

    /// `list` as this viewer sees it at `now_ms`: without the programs not playable yet
    /// unless it is trusted (a program list is asked by consoles and tools, never by a
    /// station, which asks `Held`: no station record is looked up for it).
    pub(super) fn visible(self, list: Vec<ProgramInfo>, now_ms: u64) -> Vec<ProgramInfo> {
        match self {
            Self::Trusted => list,
            Self::Other(_) => list.into_iter().filter(|p| p.playable(now_ms)).collect(),
        }
    }
}

/// Whether `viewer` may have the manifest of the program `record` is of at `now_ms`: when it
/// is playable, to anyone; else to a trusted viewer or a station whose record the registry
/// holds (a member not known yet: the registry admits it on the way), and to nobody else.
pub(super) async fn may_see(
    registry: &RegistryHandle,
    viewer: Viewer,
    record: &CatalogRecord,
    now_ms: u64,
) -> Result<(), Error> {
    let peer = match viewer {
        Viewer::Trusted => return Ok(()),
        Viewer::Other(_) if record.playable(now_ms) => return Ok(()),
        Viewer::Other(peer) => peer,
    };
    match registry.get_station(peer).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) | Err(_) => Err(Error::NotPublished),
    }
}

/// A catalog record, verified, with the envelope it came in: the envelope is what a station
/// keeps and passes on (readers verify the content manager's signature themselves).
#[derive(Clone, Debug)]
pub(super) struct Learned {
    /// The record.
    pub(super) record: CatalogRecord,
    /// As the content manager signed it.
    pub(super) signed: Signed,
}

impl Learned {
    /// Verifies `signed` as a director that is not its content manager must: signed by the
    /// content manager it names, and that content manager is the program's home.
    pub(super) fn verify(signed: Signed) -> Option<Self> {
        let record = CatalogRecord::verify(&signed).ok()?;
        (record.home == record.content_manager).then_some(Self { record, signed })
    }

    /// Whether this record is newer than `other`'s.
    pub(super) fn newer_than(&self, other: &Self) -> bool {
        self.record.issued_ms > other.record.issued_ms
    }

    /// Whether this record may replace `known`, the one a director holds of the same
    /// program: only a newer one signed by the same content manager. Any certified content
    /// manager can sign a record of any program id; one signed by another than the program's
    /// own would hand the program (its state, publish time, manifest, home) to that one.
    pub(super) fn replaces(&self, known: &Self) -> bool {
        self.record.content_manager == known.record.content_manager && self.newer_than(known)
    }
}

/// A catalog entry's record with its envelope.
pub(super) fn learned_of(entry: &CatalogEntry) -> Option<Learned> {
    Learned::verify(entry.record.clone())
}

/// The newest valid catalog record of `program` in the registry; of those signed by `owner`,
/// the program's content manager, when it is known ([`Learned::replaces`]): a newer record
/// another content manager signed must not hide the owner's.
pub(super) async fn fetch_record(
    registry: &RegistryHandle,
    program: ProgramId,
    owner: Option<PeerId>,
) -> Option<Learned> {
    let records = registry.get_catalog(program).await.ok()?;
    (records.into_iter())
        .filter_map(Learned::verify)
        .filter(|l| l.record.program == program)
        .filter(|l| owner.is_none_or(|o| l.record.content_manager == o))
        .max_by_key(|l| l.record.issued_ms)
}

/// A manifest, verified, with its envelope.
#[derive(Clone, Debug)]
pub(super) struct FetchedManifest {
    /// The manifest.
    pub(super) manifest: Manifest,
    /// As the content manager signed it.
    pub(super) signed: Signed,
}

/// Verifies a manifest some director sent for `record`: the content manager's signature, the
/// hash the catalog record names, the program.
pub(super) fn check_manifest(
    signed: Signed,
    record: &CatalogRecord,
) -> Result<FetchedManifest, Error> {
    let manifest = Manifest::verify(&signed).map_err(Error::UnverifiedManifest)?;
    if SegmentHash::of(&vodmesh_proto::codec::encode(&manifest)) != record.manifest_hash {
        return Err(Error::BadManifest(
            "the manifest does not match its catalog record",
        ));
    }
    if manifest.program != record.program {
        return Err(Error::BadManifest("the manifest is of another program"));
    }
    Ok(FetchedManifest { manifest, signed })
}

/// The program's signed manifest, verified against `record`: from its content manager, or,
/// when that does not answer within [`MANAGER_WITHIN`], from the first holder that gives one
/// within [`HOLDERS_WITHIN`] (issue 25); [`Error::ManifestSilent`] when nobody answered in
/// time.
pub(super) async fn fetch_manifest(
    registry: &RegistryHandle,
    asker: &Asker,
    me: PeerId,
    record: &CatalogRecord,
) -> Result<FetchedManifest, Error> {
    let manager = ask_manifest(registry, asker, record.content_manager, record);
    let first_error = match tokio::time::timeout(MANAGER_WITHIN, manager).await {
        Ok(Ok(fetched)) => return Ok(fetched),
        Ok(Err(e)) => e,
        Err(_) => Error::ManifestSilent,
    };
    tracing::debug!(program = %record.program, error = %first_error, "content manager gave no manifest; asking holders");
    let from_holders = async {
        let other = |h: &PeerId| *h != me && *h != record.content_manager;
        let holders = registry.holders_enough(record.program, |h| h.iter().any(other));
        let holders = holders.await.unwrap_or_default();
        let others = (holders.into_iter()).filter(other).take(MANIFEST_HOLDERS);
        for holder in others {
            match ask_manifest(registry, asker, holder, record).await {
                Ok(fetched) => return Some(fetched),
                Err(e) => tracing::debug!(%holder, error = %e, "holder gave no manifest"),
            }
        }
        None
    };
    match tokio::time::timeout(HOLDERS_WITHIN, from_holders).await {
        Ok(Some(fetched)) => Ok(fetched),
        Ok(None) => Err(first_error),
        Err(_) => Err(Error::ManifestSilent),
    }
}

/// A `Manifest` answered from a task: the program's newest record (`known`, and whether
/// `viewer` saw it playable; fetched from the registry when there is none or it did not),
/// checked for `viewer` ([`may_see`]); then the signed manifest, `local` or fetched.
pub(super) async fn manifest_for(
    (registry, asker, me): (&RegistryHandle, &Asker, PeerId),
    (program, viewer): (ProgramId, Viewer),
    known: Option<(Learned, bool)>,
    local: Option<Signed>,
) -> Result<Box<(Learned, Signed)>, Error> {
    let began = tokio::time::Instant::now();
    let ms = || began.elapsed().as_millis() as u64;
    let learned = match known {
        Some((known, true)) => known,
        known => {
            let owner = known.as_ref().map(|(k, _)| k.record.content_manager);
            let fetched = fetch_record(registry, program, owner).await;
            tracing::debug!(%program, ms = ms(), found = fetched.is_some(), "manifest: the program's record fetched");
            match (known.map(|(k, _)| k), fetched) {
                (Some(k), Some(f)) if f.replaces(&k) => f,
                (Some(k), _) => k,
                (None, f) => f.ok_or(Error::UnknownProgram)?,
            }
        }
    };
    may_see(
        registry,
        viewer,
        &learned.record,
        vodmesh_proto::time::now_ms(),
    )
    .await?;
    let signed = match local {
        Some(signed) => signed,
        None => {
            let fetched = fetch_manifest(registry, asker, me, &learned.record).await;
            tracing::debug!(%program, ms = ms(), ok = fetched.is_ok(), "manifest: fetched");
            fetched?.signed
        }
    };
    Ok(Box::new((learned, signed)))
}

/// Asks the director `peer` (found in the registry) for `record`'s manifest.
async fn ask_manifest(
    registry: &RegistryHandle,
    asker: &Asker,
    peer: PeerId,
    record: &CatalogRecord,
) -> Result<FetchedManifest, Error> {
    let began = tokio::time::Instant::now();
    let ms = || began.elapsed().as_millis() as u64;
    let (station, _) = (registry.get_station(peer).await?).ok_or(Error::ContentManagerGone)?;
    tracing::debug!(%peer, ms = ms(), "manifest: the station to ask found");
    let request = Request::Manifest {
        program: record.program,
    };
    let answer = (asker.ask_within(ASK_WITHIN, station.director, station.addrs, request)).await;
    tracing::debug!(%peer, ms = ms(), ok = answer.is_ok(), "manifest: asked");
    let answer = answer?;
    let Response::Manifest(signed) = answer else {
        return Err(AskError::unexpected(&answer).into());
    };
    check_manifest(signed, record)
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

/// `Held`, this station's own view (no walk): its own programs (content manager), and those
/// it keeps the manifest of and still holds segments of (a manifest outlives the segments
/// evicted). Each entry is verified the first time it is seen ([`Infos`]).
pub(super) fn held(ctx: &Ctx<'_>) -> Result<Vec<ProgramInfo>, Error> {
    let holding: HashSet<ProgramId> = ctx.locations.programs()?.into_iter().collect();
    let own = match ctx.catalog {
        Some(own) => own.all()?,
        None => Vec::new(),
    };
    let kept = ctx.kept.all()?;
    let mut infos = ctx.infos.round(ctx.me.peer_id);
    let mut out: Vec<ProgramInfo> = own.iter().filter_map(|e| infos.of(e)).collect();
    out.extend(
        (kept.iter())
            .filter_map(|e| infos.of(e))
            .filter(|info| holding.contains(&info.program)),
    );
    Ok(merge([out]))
}

/// What [`held`] made of each catalog entry it has seen, by the entry's two signatures (its
/// manifest's and its record's): an entry is verified and decoded once, not at each `Held`.
/// Verifying a 15-minute program's manifest (225 segments) took 140 µs in a release build, so
/// a station of 1000 programs spent 141-144 ms of its director's loop on each `Held` (every
/// listing anywhere in the swarm asks one of every station); from the memo, 4-6 ms, most of
/// it reading the entries.
/// A signature stands for the one payload it signs: an entry whose bytes changed under the
/// same signatures is answered as it was when it was verified, never unverified.
#[derive(Debug, Default)]
pub(super) struct Infos(Mutex<InfoMemo>);

#[derive(Debug, Default)]
struct InfoMemo {
    /// Each entry seen: the round it was last seen in, and its program (`None`: it does not
    /// verify).
    known: HashMap<Signatures, (u64, Option<ProgramInfo>)>,
    round: u64,
}

/// A catalog entry's manifest signature and record signature.
type Signatures = (Vec<u8>, Vec<u8>);

/// One [`held`]'s use of the memo: entries not seen in it are forgotten when it ends.
pub(super) struct Round<'a> {
    memo: std::sync::MutexGuard<'a, InfoMemo>,
    director: PeerId,
}

impl Infos {
    /// A round of [`held`] at station `director`.
    pub(super) fn round(&self, director: PeerId) -> Round<'_> {
        // Nothing panics while holding it; a poisoned lock still holds a whole memo.
        let mut memo = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        memo.round += 1;
        Round { memo, director }
    }
}

impl Round<'_> {
    /// `entry` as [`program_info`] makes it, verified the first time it is seen.
    fn of(&mut self, entry: &CatalogEntry) -> Option<ProgramInfo> {
        let key = (
            entry.manifest.signature.to_vec(),
            entry.record.signature.to_vec(),
        );
        let round = self.memo.round;
        if let Some((seen, info)) = self.memo.known.get_mut(&key) {
            *seen = round;
            return info.clone();
        }
        let info = program_info(self.director, entry);
        self.memo.known.insert(key, (round, info.clone()));
        info
    }
}

impl Drop for Round<'_> {
    fn drop(&mut self) {
        let round = self.memo.round;
        self.memo.known.retain(|_, (seen, _)| *seen == round);
    }
}

/// Several stations' lists as one: one entry a program, holders united; a program any list
/// calls published is published (a record only ever goes from inactive to published).
pub(super) fn merge(lists: impl IntoIterator<Item = Vec<ProgramInfo>>) -> Vec<ProgramInfo> {
    let mut by_id: BTreeMap<ProgramId, ProgramInfo> = BTreeMap::new();
    for info in lists.into_iter().flatten() {
        match by_id.get_mut(&info.program) {
            None => {
                by_id.insert(info.program, info);
            }
            Some(known) => {
                let holders: BTreeSet<PeerId> = (known.stations.iter())
                    .chain(&info.stations)
                    .copied()
                    .collect();
                if info.state == ProgramState::Published && known.state != ProgramState::Published {
                    *known = info;
                }
                known.stations = holders.into_iter().collect();
            }
        }
    }
    by_id.into_values().collect()
}

/// `Programs`: `local` (this station's [`held`] list) and every other live station's, found
/// by a swarm walk; the registry's holders added to each program.
pub(super) async fn swarm_programs(
    (walks, registry): (&vodmesh_registry::RecentWalk, RegistryHandle),
    (asker, silent): (Asker, &Silent),
    me: PeerId,
    local: Vec<ProgramInfo>,
) -> Result<Vec<ProgramInfo>, Error> {
    let stations = walks.stations().await?;
    let others: Vec<_> = (stations.iter())
        .filter(|(s, _)| s.director != me)
        .map(|(s, _)| (s.director, s.addrs.clone()))
        .collect();
    // The programs' holders are looked up as the lists name them (this station's at once),
    // 16 at a time, until HOLDERS_LISTED_WITHIN from now: a station that hangs holds up every
    // registry query that meets it, and one after the other they outlived the client's
    // patience with a few programs. A program keeps the holders the lists named, and gains
    // those its look-up found by then (none where it did not start by then: the listing's
    // time grows neither with the programs nor past the lists' own).
    let until = tokio::time::Instant::now() + HOLDERS_LISTED_WITHIN;
    let look_up = |program: ProgramId| {
        let registry = registry.clone();
        async move {
            let patience = until.saturating_duration_since(tokio::time::Instant::now());
            if patience.is_zero() {
                return (program, None);
            }
            (
                program,
                registry.holders_within(patience, program).await.ok(),
            )
        }
    };
    let mut to_look_up: VecDeque<ProgramId> = local.iter().map(|info| info.program).collect();
    let mut seen: HashSet<ProgramId> = to_look_up.iter().copied().collect();
    let (mut theirs, mut found) = (Vec::new(), HashMap::new());
    let mut lists = std::pin::pin!(held_lists(&asker, silent, others).fuse());
    let mut lookups = FuturesUnordered::new();
    loop {
        while lookups.len() < LISTING_CONCURRENCY
            && let Some(program) = to_look_up.pop_front()
        {
            lookups.push(look_up(program));
        }
        tokio::select! {
            Some(list) = lists.next() => {
                let new = list.iter().map(|info| info.program).filter(|p| seen.insert(*p));
                to_look_up.extend(new);
                theirs.push(list);
            }
            Some((program, holders)) = lookups.next() => {
                found.extend(holders.map(|holders| (program, holders)));
            }
            else => break,
        }
    }
    let mut all = merge(std::iter::once(local).chain(theirs));
    for info in &mut all {
        if let Some(holders) = found.remove(&info.program) {
            let united: BTreeSet<PeerId> = (info.stations.iter().copied()).chain(holders).collect();
            info.stations = united.into_iter().collect();
        }
    }
    Ok(all)
}

/// Each of `stations`' own list (`Held`), asked of all at once, as they come: an answer that
/// does not come within the station's patience ([`Silent::patience`]) leaves its list out.
/// Each ask runs to its own end even so (at most [`ASK_WITHIN`]), so that a late answer tells
/// [`Silent`] the station answers again.
fn held_lists<'a>(
    asker: &'a Asker,
    silent: &'a Silent,
    stations: Vec<(PeerId, Vec<Multiaddr>)>,
) -> impl stream::Stream<Item = Vec<ProgramInfo>> + 'a {
    silent.retain(stations.iter().map(|(peer, _)| *peer).collect());
    let asks = stations.into_iter().map(|(peer, addrs)| {
        let (asker, silent) = (asker.clone(), silent.clone());
        async move {
            let patience = silent.patience(peer);
            let ask = tokio::spawn(async move {
                let answer = (asker.ask_within(ASK_WITHIN, peer, addrs, Request::Held)).await;
                silent.heard(peer, &answer);
                answer
            });
            match tokio::time::timeout(patience, ask).await {
                Ok(Ok(Ok(Response::Programs(list)))) => list,
                _ => Vec::new(),
            }
        }
    });
    stream::iter(asks).buffer_unordered(LISTING_CONCURRENCY)
}

/// The stations whose last `Held` got no answer (a time-out, a failed request): the next
/// listing waits for them [`AGAIN_WITHIN`] only. Shared by the listings' asks, which may end
/// after their listing.
#[derive(Clone, Debug, Default)]
pub(super) struct Silent(Arc<Mutex<HashSet<PeerId>>>);

impl Silent {
    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<PeerId>> {
        // Nothing panics while holding it; a poisoned lock still holds a whole set.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets the stations not in `listed` (the walk found them no more).
    fn retain(&self, listed: HashSet<PeerId>) {
        self.set().retain(|peer| listed.contains(peer));
    }

    /// How long a listing waits for `peer`'s list.
    fn patience(&self, peer: PeerId) -> Duration {
        match self.set().contains(&peer) {
            true => AGAIN_WITHIN,
            false => ASK_WITHIN,
        }
    }

    /// `peer`'s `Held` ended with `answer`: an answer of any kind (a refusal too) clears it;
    /// none marks it silent.
    fn heard(&self, peer: PeerId, answer: &Result<Response, AskError>) {
        let mut set = self.set();
        match answer {
            Err(AskError::TimedOut | AskError::Failed(_)) => {
                if set.len() < MAX_SILENT {
                    set.insert(peer);
                }
            }
            _ => {
                set.remove(&peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::super::outbound::Outbound;
    use super::*;
    use crate::content::catalog::signed_entry;

    fn info(n: u8, state: ProgramState, station: PeerId) -> ProgramInfo {
        ProgramInfo {
            program: ProgramId([n; 32]),
            title: format!("p{n}"),
            state,
            publish_at_ms: None,
            size: 1,
            duration_ms: 1,
            segments: 1,
            stations: vec![station],
        }
    }

    #[test]
    fn lists_merge_into_one_entry_a_program_with_every_holder_and_published_wins() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let merged = merge([
            vec![
                info(1, ProgramState::Inactive, a),
                info(2, ProgramState::Published, a),
            ],
            vec![
                info(1, ProgramState::Published, b),
                info(2, ProgramState::Inactive, b),
            ],
            vec![info(3, ProgramState::Inactive, b)],
        ]);
        assert_eq!(merged.len(), 3);
        for p in &merged[..2] {
            assert_eq!(p.state, ProgramState::Published, "{p:?}");
            let both: BTreeSet<PeerId> = [a, b].into();
            assert_eq!(p.stations.iter().copied().collect::<BTreeSet<_>>(), both);
        }
        assert_eq!(merged[2].state, ProgramState::Inactive);
        assert_eq!(merged[2].stations, vec![b]);
    }

    /// Other directors on an [`Asker`]: `fast` answers its list at once; `hung` answers
    /// after the delay `hung_answers` holds, or never (`None`: its asks stay open, as with a
    /// stopped station).
    fn directors(
        (fast, hung): (PeerId, PeerId),
        hung_answers: Arc<Mutex<Option<Duration>>>,
    ) -> Asker {
        let (mut outbound, asker) = Outbound::new(16);
        tokio::spawn(async move {
            let mut open = Vec::new();
            while let Some(ask) = outbound.next().await {
                let n = if ask.peer == fast { 1 } else { 2 };
                let list = Ok(Response::Programs(vec![info(
                    n,
                    ProgramState::Published,
                    ask.peer,
                )]));
                let delay = *hung_answers.lock().unwrap();
                match (ask.peer == hung, delay) {
                    (false, _) => drop(ask.reply.send(list)),
                    (true, None) => open.push(ask.reply),
                    (true, Some(delay)) => drop(tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = ask.reply.send(list);
                    })),
                }
            }
        });
        asker
    }

    /// `held_lists` of `stations`: the programs listed, and how long (paused time) it took.
    async fn listed(
        asker: &Asker,
        silent: &Silent,
        stations: &[PeerId],
    ) -> (BTreeSet<u8>, Duration) {
        let started = Instant::now();
        let stations = stations.iter().map(|p| (*p, Vec::new())).collect();
        let lists: Vec<_> = held_lists(asker, silent, stations).collect().await;
        let programs = lists
            .into_iter()
            .flatten()
            .map(|p| p.program.0[0])
            .collect();
        (programs, started.elapsed())
    }

    /// Waits (paused time) until the asks still running told `silent` that `peer`'s patience
    /// is `patience`.
    async fn until_patience(silent: &Silent, peer: PeerId, patience: Duration) {
        for _ in 0..10_000 {
            if silent.patience(peer) == patience {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("{peer}'s patience never became {patience:?}");
    }

    /// A hung station costs the first listing the whole patience, and each one after it
    /// AGAIN_WITHIN only; an answer, even one that came after its listing stopped waiting,
    /// gives it the whole patience again, and so does a walk that no longer finds it. The
    /// station that answers is listed every time.
    #[tokio::test(start_paused = true)]
    async fn a_station_silent_last_time_is_waited_for_briefly_until_it_answers_again() {
        let (fast, hung) = (PeerId::random(), PeerId::random());
        let hung_answers = Arc::new(Mutex::new(None));
        let asker = directors((fast, hung), hung_answers.clone());
        let silent = Silent::default();
        let both = [fast, hung];

        let (programs, took) = listed(&asker, &silent, &both).await;
        assert_eq!((programs, took), ([1].into(), ASK_WITHIN));
        until_patience(&silent, hung, AGAIN_WITHIN).await;
        assert_eq!(silent.patience(fast), ASK_WITHIN);

        let (programs, took) = listed(&asker, &silent, &both).await;
        assert_eq!((programs, took), ([1].into(), AGAIN_WITHIN));

        // It answers again, slower than AGAIN_WITHIN: this listing goes without it, and its
        // late answer gives the next one the whole patience, which then waits for it.
        let late = AGAIN_WITHIN * 3;
        *hung_answers.lock().unwrap() = Some(late);
        let (programs, took) = listed(&asker, &silent, &both).await;
        assert_eq!((programs, took), ([1].into(), AGAIN_WITHIN));
        until_patience(&silent, hung, ASK_WITHIN).await;
        let (programs, took) = listed(&asker, &silent, &both).await;
        assert_eq!((programs, took), ([1, 2].into(), late));

        // Silent again, then no longer found by the walk: forgotten.
        *hung_answers.lock().unwrap() = None;
        listed(&asker, &silent, &both).await;
        until_patience(&silent, hung, AGAIN_WITHIN).await;
        let (programs, _) = listed(&asker, &silent, &[fast]).await;
        assert_eq!(programs, [1].into());
        assert_eq!(silent.patience(hung), ASK_WITHIN);
    }

    /// `Held` verifies an entry the first time it sees it and answers from the memo after
    /// that: an entry whose payload was swapped under its signatures (which then verifies no
    /// more, the control) is answered as it was verified. An entry a round did not see is
    /// forgotten: seen again, it is verified afresh.
    #[test]
    fn an_entry_is_verified_once_and_forgotten_once_gone() {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let (a, b) = (signed_entry(&key, "a"), signed_entry(&key, "b"));
        let director = PeerId::random();
        let infos = Infos::default();
        {
            let mut round = infos.round(director);
            assert_eq!(round.of(&a).map(|i| i.title), Some("a".into()));
            assert_eq!(round.of(&b).map(|i| i.title), Some("b".into()));
        }
        let swapped = |e: &CatalogEntry| {
            let mut e = e.clone();
            e.manifest.payload = signed_entry(&key, "c").manifest.payload;
            e
        };
        let (swapped_a, swapped_b) = (swapped(&a), swapped(&b));
        assert_eq!(program_info(director, &swapped_a), None);
        {
            // b is not in this round.
            let mut round = infos.round(director);
            assert_eq!(round.of(&swapped_a), program_info(director, &a));
        }
        let mut round = infos.round(director);
        assert_eq!(round.of(&swapped_b), None);
        assert_eq!(round.of(&swapped_a), program_info(director, &a));
    }
}
