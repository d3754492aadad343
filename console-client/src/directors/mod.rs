//! The directors a console asks: the one it was pointed at first, then the rest of the swarm,
//! learned through the first. A station that goes down mid-play is passed over and the
//! console carries on with the others. Until the first director has listed the swarm (or when
//! it never does: cut off before it answered), the directors the console remembers
//! (`swarm.json`, `VODMESH_NODE`) stand in for the list. A director that fails, leaves a
//! `Locate` or a `Manifest` unanswered for a few seconds, or keeps a fetch waiting until it
//! is hedged, is asked after the others for a while ([`passed`]); the next one is asked
//! beside it meanwhile, so one silent director does not hold a request up for long.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::OnceCell;
use vodmesh_client::{ClientError, DirectorClient};
use vodmesh_proto::director::{ErrorCode, Request, Response};
use vodmesh_proto::net::{dial_first, peer_of};
use vodmesh_proto::signed::Signed;
use vodmesh_proto::station::StationRecord;
use vodmesh_proto::time::now_ms;

mod passed;
use passed::{ANSWER_WITHIN, Candidate, Passed};

/// Why no director answered.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// The request to a director failed on the way. Not a `source`: a user's line says what
    /// failed and what to do ([`client_line`]), not what the transport said.
    #[error("{}", client_line(.0))]
    Client(ClientError),
    /// The director could not be asked: its ask was given up before it answered.
    #[error("director {0} is down")]
    Down(PeerId),
    /// A director that is not among the swarm's stations.
    #[error("director {0} is not in the swarm")]
    NotInSwarm(PeerId),
    /// A director of the swarm that cannot be reached.
    #[error("cannot reach director {0}")]
    Unreachable(PeerId),
}

impl From<ClientError> for AskError {
    fn from(e: ClientError) -> Self {
        Self::Client(e)
    }
}

/// The one line a user sees for a failed connection or request: what failed and what to do,
/// not what the transport said (that stays in the error's `Debug`, for the debug log).
pub(crate) fn client_line(e: &ClientError) -> String {
    match e {
        ClientError::Unreachable { addr, .. } => format!(
            "cannot reach the director at {addr}: check that its station runs and the address \
             (--node)"
        ),
        ClientError::Request(_) => {
            "the director closed the connection or did not answer in time".to_string()
        }
        ClientError::Stream { peer, .. } | ClientError::NotConnected { peer, .. } => {
            format!("cannot connect to {peer}")
        }
        ClientError::Busy(peer) => format!("{peer} is busy"),
        ClientError::NoPeerId(_)
        | ClientError::NoAddress
        | ClientError::Closed
        | ClientError::Setup(_) => e.to_string(),
    }
}

/// A director the console may ask besides the first: a station of the swarm as the first
/// director listed it, or one the console remembers.
#[derive(Clone, Debug)]
struct Known {
    director: PeerId,
    addr: Multiaddr,
    /// A content manager or home station: it knows every program, so it is asked first.
    knows_all: bool,
}

impl Known {
    fn of_record(record: &StationRecord) -> Option<Self> {
        Some(Self {
            director: record.director,
            addr: dial_first(&record.addrs)?.clone(),
            knows_all: record.roles.content_manager || record.roles.home,
        })
    }

    fn of_addr(addr: &Multiaddr) -> Option<Self> {
        Some(Self {
            director: peer_of(addr)?,
            addr: addr.clone(),
            knows_all: false,
        })
    }
}

/// The directors a console may ask: the one it was pointed at first, then the rest of the
/// swarm (found lazily through the first one, or through a remembered one when the first does
/// not answer).
pub(crate) struct Directors {
    pub(crate) first: Arc<DirectorClient>,
    /// The swarm's directors the console remembers, other than the first: asked while the
    /// first's list of the swarm is not in.
    remembered: Vec<Known>,
    others: OnceCell<Vec<Known>>,
    /// Connections to the other directors, opened once and kept for every later segment.
    clients: std::sync::Mutex<HashMap<PeerId, Arc<DirectorClient>>>,
    /// The directors passed over lately, and the one that answered last.
    passed: std::sync::Mutex<Passed>,
    /// The console's identity, for the connections to the other directors: a director
    /// starts a miss only for the peer its console token names.
    key: Option<libp2p::identity::Keypair>,
}

impl Directors {
    /// The directors reached through `first`, with the `remembered` addresses of the swarm's
    /// directors (`swarm.json`, `VODMESH_NODE`) to fall back on while the first has not
    /// listed the swarm; the others are asked as `key` (the console's identity, or a fresh
    /// one).
    pub(crate) fn new(
        first: Arc<DirectorClient>,
        remembered: &[Multiaddr],
        key: Option<libp2p::identity::Keypair>,
    ) -> Self {
        let first_peer = first.peer();
        let mut seen = std::collections::HashSet::from([first_peer]);
        let remembered = (remembered.iter())
            .filter_map(Known::of_addr)
            .filter(|k| seen.insert(k.director))
            .collect();
        Self {
            first,
            remembered,
            others: OnceCell::new(),
            clients: std::sync::Mutex::default(),
            passed: std::sync::Mutex::default(),
            key,
        }
    }

    /// Learns the rest of the swarm now (a session does it in the background at its start,
    /// while the first director answers).
    pub(crate) async fn learn(&self) {
        self.learned().await;
    }

    /// The other live stations of the swarm, learned once: as the first director lists them,
    /// or, when it does not answer, as a remembered director does. A walk that failed
    /// everywhere is not kept: the next call asks again.
    async fn learned(&self) -> &[Known] {
        let learned = self
            .others
            .get_or_try_init(|| async {
                if !self.first_is_down()
                    && let Some(list) = self.swarm_of(&self.first).await
                {
                    return Ok(list);
                }
                for known in &self.remembered {
                    let Some(client) = self.client(known).await else {
                        continue;
                    };
                    if let Some(list) = self.swarm_of(&client).await {
                        return Ok(list);
                    }
                }
                Err(())
            })
            .await;
        learned.map(Vec::as_slice).unwrap_or(&[])
    }

    /// The live stations of the swarm other than the first, as `client` lists them.
    async fn swarm_of(&self, client: &DirectorClient) -> Option<Vec<Known>> {
        match client.request(Request::Swarm).await {
            Ok(Response::Swarm(list)) => Some(self.others_in(&list)),
            _ => None,
        }
    }

    /// The stations other than the first that a `Swarm` answer lists (each record verified).
    fn others_in(&self, list: &[Signed]) -> Vec<Known> {
        (list.iter())
            .filter_map(|s| StationRecord::verify(s, now_ms()).ok())
            .filter(|r| r.director != self.first.peer())
            .filter_map(|r| Known::of_record(&r))
            .collect()
    }

    /// Takes a `Swarm` answer the session asked for anyway (to check a pinned issuer) as the
    /// swarm learned, so that it is not asked for again.
    pub(crate) fn seed(&self, list: &[Signed]) {
        let _ = self.others.set(self.others_in(list));
    }

    /// The director address of each other station of the swarm, once learned.
    pub(crate) fn listed(&self) -> Option<Vec<Multiaddr>> {
        let learned = self.others.get()?;
        Some(learned.iter().map(|k| k.addr.clone()).collect())
    }

    /// The directors to ask besides the first, without waiting: the swarm as learned, else
    /// the remembered ones while it is being learned, else (nothing remembered) the swarm once
    /// learned.
    async fn others(&self) -> Vec<Known> {
        match self.others.get() {
            Some(learned) => learned.clone(),
            None if !self.remembered.is_empty() => self.remembered.clone(),
            None => self.learned().await.to_vec(),
        }
    }

    /// The connections to other directors (a map of kept clients: a panicked holder left
    /// it whole).
    fn clients(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, Arc<DirectorClient>>> {
        (self.clients.lock()).unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn passed(&self) -> std::sync::MutexGuard<'_, Passed> {
        (self.passed.lock()).unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A kept connection to `station`'s director, opened on first use. No lock is held while
    /// it connects: a director cut off holds up no ask of another.
    async fn client(&self, station: &Known) -> Option<Arc<DirectorClient>> {
        if let Some(c) = self.clients().get(&station.director) {
            return Some(c.clone());
        }
        let client = DirectorClient::connect(&station.addr, self.key.clone()).await;
        let client = Arc::new(client.ok()?);
        // Two asks may have connected at once: the first kept wins.
        let mut clients = self.clients();
        Some(clients.entry(station.director).or_insert(client).clone())
    }

    /// Sends `request` to the director `peer` (the first one, or another station's).
    pub(crate) async fn ask_director(
        &self,
        peer: PeerId,
        request: Request,
    ) -> Result<Response, AskError> {
        if peer == self.first.peer() {
            return Ok(self.first.request(request).await?);
        }
        let found = |list: &[Known]| list.iter().find(|s| s.director == peer).cloned();
        let station = match found(&self.others().await) {
            Some(station) => station,
            None => found(self.learned().await).ok_or(AskError::NotInSwarm(peer))?,
        };
        let client = self
            .client(&station)
            .await
            .ok_or(AskError::Unreachable(peer))?;
        Ok(client.request(request).await?)
    }

    /// Whether the first director is passed over now.
    fn first_is_down(&self) -> bool {
        self.passed().is_passed(&self.first.peer(), Instant::now())
    }

    /// Passes `director` over for a while, as if it had failed: a fetch waiting on it, or on
    /// an engine of its station, was hedged (it is slow: cut off, frozen, or stuck on a
    /// look-up of its own).
    pub(crate) fn pass_over(&self, director: PeerId) {
        self.passed().pass_over(director, Instant::now());
    }

    /// The directors to ask, in order ([`Passed::order`]), each with its station (none: the
    /// first).
    async fn order(&self) -> Vec<(PeerId, Option<Known>)> {
        let others = self.others().await;
        let candidates: Vec<Candidate> = {
            let clients = self.clients();
            (others.iter())
                .map(|s| Candidate {
                    director: s.director,
                    connected: clients.contains_key(&s.director),
                    knows_all: s.knows_all,
                })
                .collect()
        };
        let first = self.first.peer();
        let order = self.passed().order(first, &candidates, Instant::now());
        (order.into_iter())
            .map(|d| (d, others.iter().find(|s| s.director == d).cloned()))
            .collect()
    }

    /// A fetch waiting on a director's answer was hedged after `silent` without a byte: the
    /// directors with an ask on its way for that long are passed over ([`Passed::pass_over_slow`]).
    pub(crate) fn pass_over_slow(&self, silent: std::time::Duration) {
        let slow = self.passed().pass_over_slow(silent, Instant::now());
        if !slow.is_empty() {
            tracing::debug!(
                ?slow,
                "directors slow to answer a hedged fetch: asked after the others"
            );
        }
    }

    /// Sends `request` to one director: the first (no station), or `station`'s. The ask is
    /// counted on its way until it ends or is dropped.
    async fn ask_one(
        &self,
        director: PeerId,
        station: Option<Known>,
        request: Request,
    ) -> (PeerId, Result<Response, AskError>) {
        struct OnItsWay<'a>(&'a Directors, u64);
        impl Drop for OnItsWay<'_> {
            fn drop(&mut self) {
                self.0.passed().end(self.1);
            }
        }
        let _on_its_way = OnItsWay(self, self.passed().begin(director, Instant::now()));
        let answer = match station {
            None => self.first.request(request).await.map_err(AskError::from),
            Some(station) => match self.client(&station).await {
                Some(client) => client.request(request).await.map_err(AskError::from),
                None => Err(AskError::Unreachable(director)),
            },
        };
        (director, answer)
    }

    /// Sends `request` to the first director, then to the other stations of the swarm
    /// ([`Passed::order`]), until one answers with something other than `NotFound` or
    /// `Busy` (a busy answer is the answer only when no other station has better; otherwise
    /// the first director's answer is).
    ///
    /// A director that fails is passed over for a while: later requests ask it after the
    /// others. One that leaves a `Locate` or a `Manifest` unanswered for [`ANSWER_WITHIN`]
    /// is too, and the next one is asked beside it (its answer still counts if it comes
    /// first): a station that froze or was cut off costs a play's start or a segment that
    /// long at most, not the time its connection takes to be given up (a fetch's hedge
    /// passes it over sooner: [`Directors::pass_over_slow`]). Other requests may keep a
    /// director long at work (a walk of the swarm waits out a station that hangs), so they
    /// wait for its answer.
    pub(crate) async fn ask(&self, request: Request) -> Result<Response, AskError> {
        let first = self.first.peer();
        let patience = matches!(request, Request::Locate { .. } | Request::Manifest { .. })
            .then_some(ANSWER_WITHIN);
        let mut order = self.order().await.into_iter();
        let mut asking = FuturesUnordered::new();
        // The director asked last, and when the next one is asked beside it (never: once it
        // answers).
        let mut waiting: Option<(PeerId, Option<Instant>)> = None;
        let mut busy = None;
        let mut first_said = None;
        loop {
            let now = Instant::now();
            if waiting.is_none_or(|(_, at)| at.is_some_and(|at| now >= at)) {
                if let Some((slow, _)) = waiting.take() {
                    tracing::debug!(director = %slow, "director slow to answer; asking the next beside it");
                    self.pass_over(slow);
                }
                match order.next() {
                    Some((director, station)) => {
                        waiting = Some((director, patience.map(|p| now + p)));
                        asking.push(self.ask_one(director, station, request.clone()));
                    }
                    None if asking.is_empty() => break,
                    None => {}
                }
            }
            let next_beside = async {
                match waiting {
                    Some((_, Some(at))) => tokio::time::sleep_until(at.into()).await,
                    _ => std::future::pending().await,
                }
            };
            let (director, answer) = tokio::select! {
                Some(answered) = asking.next() => answered,
                () = next_beside => continue,
            };
            if waiting.is_some_and(|(d, _)| d == director) {
                // It answered: the next one is asked at once, if at all.
                waiting = None;
            }
            let said = match answer {
                Ok(answer) => {
                    self.passed().answered(director);
                    match &answer {
                        Response::Error(e) if e.code == ErrorCode::NotFound => Ok(answer),
                        Response::Error(e) if e.code == ErrorCode::Busy => {
                            busy.get_or_insert(answer);
                            continue;
                        }
                        _ => return Ok(answer),
                    }
                }
                Err(e) => {
                    if director == first {
                        tracing::warn!(%director, error = %e, "director did not answer; asking the rest of the swarm");
                    }
                    self.pass_over(director);
                    Err(e)
                }
            };
            if director == first {
                first_said = Some(said);
            }
        }
        match (busy, first_said) {
            (Some(busy), _) => Ok(busy),
            (None, Some(said)) => said,
            // Every director is asked, the first among them.
            (None, None) => Err(AskError::Down(first)),
        }
    }
}
