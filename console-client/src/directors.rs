//! The directors a console asks: the one it was pointed at first, then the rest of the swarm,
//! learned through the first. A station that goes down mid-play is passed over and the
//! console carries on with the others. Until the first director has listed the swarm (or when
//! it never does: cut off before it answered), the directors the console remembers
//! (`swarm.json`, `VODMESH_NODE`) stand in for the list.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use tokio::sync::{Mutex, OnceCell};
use vodmesh_client::{ClientError, DirectorClient};
use vodmesh_proto::director::{ErrorCode, Request, Response};
use vodmesh_proto::net::{dial_first, peer_of};
use vodmesh_proto::signed::Signed;
use vodmesh_proto::station::StationRecord;
use vodmesh_proto::time::now_ms;

/// How long a first director that failed is passed over before it is asked again.
const FIRST_DOWN_FOR: Duration = Duration::from_secs(10);

/// Why no director answered.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// The request to a director failed on the way. Not a `source`: a user's line says what
    /// failed and what to do ([`client_line`]), not what the transport said.
    #[error("{}", client_line(.0))]
    Client(ClientError),
    /// The first director failed lately and nobody else answered.
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
    clients: Mutex<HashMap<PeerId, Arc<DirectorClient>>>,
    /// When the first director last failed to answer.
    first_down: std::sync::Mutex<Option<Instant>>,
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
            clients: Mutex::default(),
            first_down: std::sync::Mutex::default(),
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

    /// A kept connection to `station`'s director, opened on first use.
    async fn client(&self, station: &Known) -> Option<Arc<DirectorClient>> {
        let mut clients = self.clients.lock().await;
        if let Some(c) = clients.get(&station.director) {
            return Some(c.clone());
        }
        let client = DirectorClient::connect(&station.addr, self.key.clone()).await;
        let client = Arc::new(client.ok()?);
        clients.insert(station.director, client.clone());
        Some(client)
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

    /// Whether the first director failed within [`FIRST_DOWN_FOR`].
    fn first_is_down(&self) -> bool {
        self.first_down
            .lock()
            .ok()
            .and_then(|d| *d)
            .is_some_and(|at| at.elapsed() < FIRST_DOWN_FOR)
    }

    /// Passes the first director over for a while, as if it had failed: a fetch waiting on its
    /// answer was hedged (it is slow: cut off, frozen, or stuck on a look-up of its own).
    pub(crate) fn pass_over_first(&self) {
        if let Ok(mut down) = self.first_down.lock() {
            *down = Some(Instant::now());
        }
    }

    /// Asks the first director, noting when it fails.
    async fn ask_first(&self, request: Request) -> Result<Response, AskError> {
        let answer = self.first.request(request).await;
        if let Ok(mut down) = self.first_down.lock() {
            *down = answer.is_err().then(Instant::now);
        }
        if let Err(e) = &answer {
            tracing::warn!(director = %self.first.peer(), error = %e, "director did not answer; asking the rest of the swarm");
        }
        Ok(answer?)
    }

    /// Sends `request` to the first director, then to the content managers and other
    /// stations of the swarm, until one answers with something other than `NotFound` or
    /// `Busy` (a busy answer is the answer only when no other station has better).
    ///
    /// A first director that cannot be reached (its station went down) is passed over for
    /// a while: the console carries on with the rest of the swarm, which it learned at the
    /// start, and asks the first again when nobody else answers.
    pub(crate) async fn ask(&self, request: Request) -> Result<Response, AskError> {
        let skipped = self.first_is_down();
        let first = if skipped {
            Err(AskError::Down(self.first.peer()))
        } else {
            self.ask_first(request.clone()).await
        };
        if let Ok(answer) = &first
            && !matches!(answer, Response::Error(e) if e.code == ErrorCode::NotFound)
        {
            return first;
        }
        let mut stations = self.others().await;
        stations.sort_by_key(|s| !s.knows_all);
        // The director that answered last goes first: the next segment is likely there too.
        {
            let known = self.clients.lock().await;
            stations.sort_by_key(|s| !known.contains_key(&s.director));
        }
        // A busy answer (that station's misses at their cap, its holders busy) is kept for
        // when no other station has better.
        let mut busy = None;
        for station in &stations {
            let Some(client) = self.client(station).await else {
                continue;
            };
            match client.request(request.clone()).await {
                Ok(Response::Error(e)) if e.code == ErrorCode::NotFound => continue,
                Ok(Response::Error(e)) if e.code == ErrorCode::Busy => {
                    busy.get_or_insert(Response::Error(e));
                }
                Ok(answer) => return Ok(answer),
                Err(_) => continue,
            }
        }
        let first = match skipped {
            // Nobody else could serve: the first may be back.
            true => self.ask_first(request).await,
            false => first,
        };
        match (first, busy) {
            (Ok(Response::Error(e)), Some(busy)) if e.code == ErrorCode::NotFound => Ok(busy),
            (Err(_), Some(busy)) => Ok(busy),
            (first, _) => first,
        }
    }
}
