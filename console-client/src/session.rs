//! An open program ([`Session`]): its verified manifest and the directors to ask for its
//! segments, with the console's identity and token ([`Credentials`]); and the programs the
//! swarm lists ([`programs`], [`published`], [`resolve`]).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use libp2p::Multiaddr;
use libp2p::identity::Keypair;
use tokio::task::JoinSet;
use tokio_util::task::AbortOnDropHandle;
use vodmesh_client::files::{Home, write_private};
use vodmesh_client::{ClientError, DirectorClient};
use vodmesh_proto::director::{ErrorReply, ProgramInfo, Request, Response};
use vodmesh_proto::manifest::{Manifest, ManifestError};
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::{Claims, IssuerKey};
use vodmesh_proto::{ProgramId, SegmentIndex};

use crate::directors::{AskError, Directors};
use crate::fetch::{FetchError, Fetcher, Segment};
use crate::hedge::Due;

/// Why a program could not be opened. The `Display` text is the one line a user sees.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The director could not be reached (not a `source`: the line says what to do, not
    /// what the transport said).
    #[error("{}", crate::directors::client_line(.0))]
    Client(ClientError),
    /// No director answered.
    #[error(transparent)]
    Ask(#[from] AskError),
    /// A director refused; its one line (`program not published`, ...).
    #[error("{}", .0.message)]
    Refused(ErrorReply),
    /// A director answered something else than the request calls for.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
    /// No program has that title.
    #[error("no program titled \"{0}\"")]
    NoTitle(String),
    /// Several programs have that title.
    #[error("several programs are titled \"{0}\"; give the program id")]
    AmbiguousTitle(String),
    /// The program's manifest does not verify.
    #[error("the program's manifest does not verify: {0}")]
    Manifest(#[from] ManifestError),
    /// The program's manifest is not signed by a content manager of the console's swarm.
    #[error(transparent)]
    Pin(#[from] crate::pin::PinError),
}

impl From<ClientError> for SessionError {
    fn from(e: ClientError) -> Self {
        Self::Client(e)
    }
}

/// A console token that a refresher may replace while segments are being fetched.
pub type SharedToken = Arc<RwLock<Option<Vec<u8>>>>;

/// Who is playing: the console's identity, the console token bound to it, and the swarm's
/// directors it remembers.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// The console's identity (a fresh one if `None`; then no token can match it).
    pub key: Option<Keypair>,
    /// The console token from `vodmesh-console login`, shared with the task that refreshes it
    /// during playback ([`keep_fresh`]).
    pub token: SharedToken,
    /// Directors of the swarm the console remembers (`swarm.json`, `VODMESH_NODE`): asked
    /// while the director it was pointed at has not listed the rest of the swarm, or when it
    /// never does.
    pub swarm: Vec<Multiaddr>,
    /// The issuer the console pinned ([`crate::pin`]): a program's manifest must be signed
    /// by a content manager it certified. `None`: no manifest signer is checked.
    pub pinned: Option<IssuerKey>,
    /// The console's home, whose remembered swarm ([`crate::remember`]) is brought up to date
    /// with the swarm a play learns: stations that moved to new addresses or joined. `None`:
    /// nothing is written (the HLS gateway).
    pub remember_in: Option<Home>,
}

impl Credentials {
    /// The identity `key` with its console `token`.
    pub fn new(key: Keypair, token: Vec<u8>) -> Self {
        Self {
            key: Some(key),
            token: Arc::new(RwLock::new(Some(token))),
            swarm: Vec::new(),
            pinned: None,
            remember_in: None,
        }
    }

    /// With the `swarm`'s directors the console remembers.
    pub fn remembering(self, swarm: Vec<Multiaddr>) -> Self {
        Self { swarm, ..self }
    }
}

/// Finds a program by id or exact title.
pub async fn resolve(
    client: &Arc<DirectorClient>,
    program: &str,
) -> Result<ProgramId, SessionError> {
    if let Ok(id) = program.parse::<ProgramId>() {
        return Ok(id);
    }
    let list = programs(client).await?;
    let matches: Vec<&ProgramInfo> = list.iter().filter(|p| p.title == program).collect();
    match matches.as_slice() {
        [one] => Ok(one.program),
        [] => Err(SessionError::NoTitle(program.to_string())),
        _ => Err(SessionError::AmbiguousTitle(program.to_string())),
    }
}

/// Every program of the swarm, as any director lists it (issue 25: no content manager
/// needed): the first director's answer, or another station's when it does not answer.
pub async fn programs(client: &Arc<DirectorClient>) -> Result<Vec<ProgramInfo>, AskError> {
    let directors = Directors::new(client.clone(), &[], None);
    match directors.ask(Request::Programs).await? {
        Response::Programs(list) => Ok(list),
        _ => Ok(Vec::new()),
    }
}

/// `{"programs": [...]}`: the one JSON form of a program list, for `vodmesh programs --json`,
/// `vodmesh-console ls --json` and the gateway's `/?json`. Ids are hex, as everywhere.
pub fn programs_json(programs: &[ProgramInfo]) -> serde_json::Value {
    let list: Vec<serde_json::Value> = (programs.iter())
        .map(|p| {
            serde_json::json!({
                "id": p.program.to_string(),
                "title": p.title,
                "state": p.state.to_string(),
                "publish_at_ms": p.publish_at_ms,
                "size": p.size,
                "duration_ms": p.duration_ms,
                "segments": p.segments,
                "stations": p.stations.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({ "programs": list })
}

/// Published programs, for `vodmesh-console ls`.
pub async fn published(client: &Arc<DirectorClient>) -> Result<Vec<ProgramInfo>, AskError> {
    let now = now_ms();
    Ok(programs(client)
        .await?
        .into_iter()
        .filter(|p| p.playable(now))
        .collect())
}

/// Brings the swarm the console at `home` remembers up to date with what `directors` learned
/// (nothing without a home, or before the swarm is learned).
fn remember(home: Option<&Home>, directors: &Directors) {
    let (Some(home), Some(listed)) = (home, directors.listed()) else {
        return;
    };
    match crate::remember::refresh(home, &listed) {
        Ok(true) => tracing::debug!("the remembered swarm brought up to date"),
        Ok(false) => {}
        Err(e) => tracing::debug!(error = %e, "the remembered swarm is not brought up to date"),
    }
}

/// Checks that `signer`, who signed a manifest the director `via` handed over, chains to
/// `pinned` ([`crate::pin::manifest_signer`]), against whichever shows it first: the whole
/// swarm's records (`swarm`, asked with the manifest: answered at once from a director's
/// recent walk, else after a walk of every station, which waits out any that hangs), or the
/// records of those two stations alone (`Stations`, a registry look-up of each, asked once the
/// manifest names the signer). It is refused where neither shows the signer certified (the
/// swarm's answer says why). Returns whether it stood on the swarm's answer (and `directors`
/// was seeded with it).
async fn check_signer(
    directors: &Directors,
    swarm: impl Future<Output = Result<Response, AskError>>,
    chain: (libp2p::PeerId, libp2p::PeerId),
    pinned: IssuerKey,
) -> Result<bool, SessionError> {
    let on_swarm = |answer: Result<Response, AskError>| {
        let records = match answer? {
            Response::Swarm(records) => records,
            other => return Err(SessionError::Unexpected(format!("{other:?}"))),
        };
        crate::pin::manifest_signer(&records, chain, pinned, now_ms())?;
        // The swarm is learned with it.
        directors.seed(&records);
        Ok(true)
    };
    let asked = Request::Stations {
        directors: vec![chain.0, chain.1],
    };
    let stations = async {
        match directors.ask(asked).await {
            Ok(Response::Swarm(records)) => {
                crate::pin::manifest_signer(&records, chain, pinned, now_ms()).is_ok()
            }
            _ => false,
        }
    };
    tokio::pin!(swarm, stations);
    tokio::select! {
        // The swarm's answer when it is there already: no round trip more.
        biased;
        answer = &mut swarm => match on_swarm(answer) {
            Ok(seeded) => Ok(seeded),
            // A walk that missed the signer's station (cut off from it while it ran).
            Err(refused) => match stations.await {
                true => Ok(false),
                false => Err(refused),
            },
        },
        shown = &mut stations => match shown {
            true => Ok(false),
            false => on_swarm(swarm.await),
        },
    }
}

/// An open program: its verified manifest and the directors to ask for its segments. Used
/// by `play` and by anything else that fetches segments (the HLS gateway).
pub struct Session {
    fetcher: Fetcher,
    manifest: Arc<Manifest>,
    token: SharedToken,
    /// Learning the rest of the swarm in the background; stopped with the session.
    _learning: JoinSet<()>,
}

impl Session {
    /// Connects to the director at `node`, finds `program` (id or exact title) and verifies
    /// its signed manifest.
    pub async fn open(
        node: &Multiaddr,
        credentials: &Credentials,
        program: &str,
    ) -> Result<Self, SessionError> {
        let client = Arc::new(DirectorClient::connect(node, credentials.key.clone()).await?);
        let program = resolve(&client, program).await?;
        Self::with_client(client, credentials, program).await
    }

    /// As [`Session::open`], over a director connection already open.
    pub async fn with_client(
        client: Arc<DirectorClient>,
        credentials: &Credentials,
        program: ProgramId,
    ) -> Result<Self, SessionError> {
        let via = client.peer();
        let began = std::time::Instant::now();
        let directors = Arc::new(Directors::new(
            client,
            &credentials.swarm,
            credentials.key.clone(),
        ));
        // With a pinned issuer, the swarm's records too, asked at the same time: the first
        // byte waits for one round trip, not two, where a director walked the swarm lately.
        // Aborted when dropped: a walk the check did not need (or a play refused before it)
        // is not waited for.
        let swarm = (credentials.pinned.is_some()).then(|| {
            let directors = directors.clone();
            AbortOnDropHandle::new(tokio::spawn(
                async move { directors.ask(Request::Swarm).await },
            ))
        });
        let manifest = match directors.ask(Request::Manifest { program }).await? {
            Response::Manifest(signed) => Manifest::verify(&signed)?,
            Response::Error(e) => return Err(SessionError::Refused(e)),
            other => return Err(SessionError::Unexpected(format!("{other:?}"))),
        };
        let ms = || began.elapsed().as_millis() as u64;
        tracing::debug!(ms = ms(), "session: the manifest answered");
        // The pin covers the manifest: signed by a content manager of the console's swarm.
        let mut seeded = false;
        if let (Some(pinned), Some(swarm)) = (credentials.pinned, swarm) {
            let swarm = async {
                let asked = swarm.await;
                asked.unwrap_or_else(|_| Err(AskError::Down(via)))
            };
            let chain = (manifest.content_manager, via);
            seeded = check_signer(&directors, swarm, chain, pinned).await?;
            tracing::debug!(ms = ms(), "session: the manifest's signer checked");
            if seeded {
                remember(credentials.remember_in.as_ref(), &directors);
            }
        }
        // Learn the rest of the swarm now, while the first director answers: if its station
        // goes down mid-play, the console carries on with the others.
        let mut learning = JoinSet::new();
        let learn = directors.clone();
        // A play that asked for the whole swarm above brought the remembered one up to date.
        let home = (credentials.remember_in.clone()).filter(|_| !seeded);
        learning.spawn(async move {
            learn.learn().await;
            remember(home.as_ref(), &learn);
        });
        Ok(Self {
            // Without an identity, the director client made a fresh one: no token matches
            // either, so a fresh one here is as good.
            fetcher: Fetcher::new(
                directors,
                (credentials.key.clone()).unwrap_or_else(Keypair::generate_ed25519),
            ),
            manifest: Arc::new(manifest),
            token: credentials.token.clone(),
            _learning: learning,
        })
    }

    /// The program's verified manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Locates segment `index`, streams it whole from the engine the director names and
    /// verifies it against the manifest; lost streams are retried, refusals are final.
    pub async fn segment(&self, index: SegmentIndex) -> Result<Segment, FetchError> {
        self.segment_due(index, 0, Due::none(), None).await
    }

    /// As [`Session::segment`], for a console that will play the segment from byte
    /// `play_from` on (a seek into it): an engine still filling its copy short of that byte
    /// hands the console to one with the whole segment (claim 21). The whole segment is
    /// still fetched, to verify it.
    pub async fn segment_from(
        &self,
        index: SegmentIndex,
        play_from: u64,
    ) -> Result<Segment, FetchError> {
        self.segment_due(index, play_from, Due::none(), None).await
    }

    /// As [`Session::segment_from`], for a segment that plays at `due`: a fetch that brings
    /// nothing as that time nears is hedged at another holder ([`crate::hedge`]); each chunk
    /// group verified goes to `early` at once, if given.
    pub(crate) async fn segment_due(
        &self,
        index: SegmentIndex,
        play_from: u64,
        due: Due,
        early: Option<crate::fetch::Early>,
    ) -> Result<Segment, FetchError> {
        // Read per segment: a refreshed token is used from the next segment on.
        let token = self.token.read().ok().and_then(|t| t.clone());
        self.fetcher
            .fetch(
                &self.manifest,
                (index, play_from),
                token.as_deref(),
                due,
                early,
            )
            .await
    }

    /// Each director asked where a segment is also names the `count` segments after it (at
    /// most [`vodmesh_proto::director::MAX_AHEAD`]), and the first attempt at each of those
    /// goes there without asking: for a play that fetches several segments at once.
    pub(crate) fn locate_ahead(&self, count: u8) {
        self.fetcher.ahead.ask_for(count);
    }

    /// Busy answers this session waited out so far (an engine at `--max-streams`, or a
    /// director with nothing free to send it to).
    pub fn waits(&self) -> u32 {
        self.fetcher.waits()
    }
}

/// Keeps a console token fresh while the console plays: at half of the token's remaining
/// lifetime it asks the auth server (found through `node`) for a new one in exchange for the
/// current one, replaces the shared token (the next segment uses it) and rewrites `path`.
/// Playback never waits for it: with the auth station down, the console plays on the
/// current token while it is valid, and retries the refresh ([`refresh_retry`]). Ends when
/// there is no token to refresh; the caller owns the task it runs in.
pub async fn keep_fresh(node: Multiaddr, key: Keypair, token: SharedToken, path: Option<PathBuf>) {
    loop {
        let current = token.read().ok().and_then(|t| t.clone());
        let Some(current) = current else { return };
        let Ok(claims) = Claims::peek(&current) else {
            return;
        };
        let wait = claims.expires_ms.saturating_sub(now_ms()) / 2;
        tokio::time::sleep(Duration::from_millis(wait.max(1000))).await;
        match vodmesh_client::auth::refresh(&node, &key, &current).await {
            Ok(fresh) => {
                if let Some(p) = &path {
                    let _ = write_private(p, &fresh, "token");
                }
                if let Ok(mut t) = token.write() {
                    *t = Some(fresh);
                }
                tracing::debug!("console token refreshed");
            }
            Err(e) => {
                let retry = refresh_retry(claims.expires_ms.saturating_sub(now_ms()));
                tracing::warn!(error = %e, ?retry, "console token refresh failed; playing on the current token");
                tokio::time::sleep(retry).await;
            }
        }
    }
}

/// When to retry a failed token refresh, with `left_ms` of the token's life left: within a
/// minute, and often enough (a quarter of what is left, at least a second) that a refresh
/// still lands before the token expires once the auth station is back.
pub(crate) fn refresh_retry(left_ms: u64) -> Duration {
    Duration::from_millis((left_ms / 4).clamp(1000, 60_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_refresh_is_retried_well_before_the_token_expires() {
        assert_eq!(refresh_retry(3_600_000), Duration::from_secs(60));
        assert_eq!(refresh_retry(40_000), Duration::from_secs(10));
        assert_eq!(refresh_retry(2_000), Duration::from_secs(1));
        assert_eq!(refresh_retry(0), Duration::from_secs(1));
    }
}
