//! The gateway's state, shared by every HTTP request: one connection to the swarm, the
//! programs open, and a cache of verified segments with the fetches under way, so that a
//! player's request and the prefetch of the same segment share one fetch.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use libp2p::Multiaddr;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use vodmesh_client::DirectorClient;
use vodmesh_proto::director::ProgramInfo;
use vodmesh_proto::{ProgramId, SegmentIndex};

use crate::play::{self, Credentials, Session, SessionError};

/// Segments kept in memory (served or prefetched), at most.
pub const CACHE_SEGMENTS: usize = 16;
/// Bytes of segments kept in memory, at most.
pub const CACHE_BYTES: usize = 128 * 1024 * 1024;
/// Segments fetched ahead of the one a player asked for.
pub const PREFETCH: u32 = 2;
/// Segment fetches under way at once, at most: each holds a whole segment in memory until it
/// is verified, so players asking for many distinct segments are answered 503 past it.
pub const MAX_FETCHES: usize = 8;
/// How long a director may take to accept the gateway's connection.
const DIAL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a title stands for the program it was resolved to.
const TITLE_FOR: std::time::Duration = std::time::Duration::from_secs(30);
/// Other directors of the swarm kept to go on through, at most.
const MAX_OTHERS: usize = 32;

/// What a request could not get.
#[derive(Clone, Debug)]
pub(super) enum Failure {
    /// No such program or segment: 404.
    NotFound(String),
    /// The swarm cannot serve it now: 503.
    Unavailable(String),
    /// [`MAX_FETCHES`] fetches are under way: 503, to be asked again in a second.
    Busy,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Failure::NotFound(m) => (StatusCode::NOT_FOUND, m),
            Failure::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
            Failure::Busy => {
                let line = format!("the gateway is fetching {MAX_FETCHES} segments: ask again\n");
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [
                        (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                        (header::RETRY_AFTER, "1"),
                    ],
                    line,
                )
                    .into_response();
            }
        };
        // One line, whatever the swarm said.
        let line = message.replace(['\r', '\n'], " ");
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{line}\n"),
        )
            .into_response()
    }
}

/// The swarm cannot serve now, for the reason `e`.
pub(super) fn unavailable(e: impl std::fmt::Display) -> Failure {
    Failure::Unavailable(e.to_string())
}

/// A segment of a program, as cached.
type Key = (ProgramId, SegmentIndex);
/// A fetch that several requests (a player's and the prefetcher's) may wait for.
type Fetching = Shared<BoxFuture<'static, Result<Bytes, Failure>>>;

/// A least-recently-used cache of verified segments, bounded in count and bytes.
#[derive(Default)]
struct Cache {
    entries: VecDeque<(Key, Bytes)>,
    bytes: usize,
}

impl Cache {
    fn get(&mut self, key: &Key) -> Option<Bytes> {
        let at = self.entries.iter().position(|(k, _)| k == key)?;
        let entry = self.entries.remove(at)?;
        let bytes = entry.1.clone();
        self.entries.push_back(entry);
        Some(bytes)
    }

    fn contains(&self, key: &Key) -> bool {
        self.entries.iter().any(|(k, _)| k == key)
    }

    fn insert(&mut self, key: Key, bytes: Bytes) {
        if self.contains(&key) || bytes.len() > CACHE_BYTES {
            return;
        }
        self.bytes += bytes.len();
        self.entries.push_back((key, bytes));
        while self.entries.len() > CACHE_SEGMENTS || self.bytes > CACHE_BYTES {
            match self.entries.pop_front() {
                Some((_, old)) => self.bytes -= old.len(),
                None => break,
            }
        }
    }
}

#[derive(Default)]
struct Sessions {
    open: HashMap<ProgramId, Arc<Session>>,
    /// Titles resolved to ids, and when: a title stands for [`TITLE_FOR`], then it is looked
    /// up again (a program published since under the same title makes it ambiguous).
    titles: HashMap<String, (ProgramId, std::time::Instant)>,
}

impl Sessions {
    /// The program `name` was resolved to less than [`TITLE_FOR`] before `now`.
    fn title(&self, name: &str, now: std::time::Instant) -> Option<ProgramId> {
        let (id, at) = self.titles.get(name)?;
        (now.saturating_duration_since(*at) < TITLE_FOR).then_some(*id)
    }
}

/// The gateway's state, shared by every request.
pub(super) struct Gateway {
    node: Multiaddr,
    /// The swarm's other directors, learned through the director connected to: the gateway
    /// goes on through them when `node` is gone (a crash, a restart on another port).
    others: Arc<Mutex<Vec<Multiaddr>>>,
    credentials: Credentials,
    /// The connection to `node`, opened on first use and dropped when it fails, so that the
    /// next request dials again.
    client: tokio::sync::Mutex<Option<Arc<DirectorClient>>>,
    /// Open programs by id, and titles already resolved to ids.
    sessions: tokio::sync::Mutex<Sessions>,
    cache: Mutex<Cache>,
    fetching: Mutex<HashMap<Key, Fetching>>,
    /// Segment fetches and prefetches, each in a task of its own (a player that hangs up
    /// does not waste its fetch); stopped with the gateway.
    tasks: Mutex<JoinSet<()>>,
}

impl Gateway {
    /// A gateway to the swarm reached through `node`, fetching as `credentials`.
    pub(super) fn new(node: Multiaddr, credentials: Credentials) -> Self {
        Self {
            node,
            others: Arc::default(),
            credentials,
            client: tokio::sync::Mutex::default(),
            sessions: tokio::sync::Mutex::default(),
            cache: Mutex::default(),
            fetching: Mutex::default(),
            tasks: Mutex::default(),
        }
    }

    /// The connection to the swarm: to `node`, else to the first of the other directors
    /// learned that answers; opened on first use and after a failure ([`Gateway::reset`]).
    async fn client(&self) -> Result<Arc<DirectorClient>, Failure> {
        let mut client = self.client.lock().await;
        if let Some(c) = client.as_ref() {
            return Ok(c.clone());
        }
        let others = self.others.lock().map(|o| o.clone()).unwrap_or_default();
        let mut failed = String::new();
        for addr in std::iter::once(&self.node).chain(&others) {
            let key = self.credentials.key.clone();
            match tokio::time::timeout(DIAL_WAIT, DirectorClient::connect(addr, key)).await {
                Ok(Ok(c)) => {
                    let c = Arc::new(c);
                    *client = Some(c.clone());
                    self.learn(c.clone());
                    return Ok(c);
                }
                Ok(Err(e)) if failed.is_empty() => failed = e.to_string(),
                Err(_) if failed.is_empty() => {
                    failed = format!("{addr} did not answer within {DIAL_WAIT:?}");
                }
                _ => {}
            }
        }
        let tried = match others.len() {
            0 => String::new(),
            n => format!(" (nor {n} other director(s) of the swarm)"),
        };
        Err(unavailable(format!(
            "the swarm cannot be reached: {failed}{tried}"
        )))
    }

    /// Learns the swarm's other directors through `client`, in the background.
    fn learn(&self, client: Arc<DirectorClient>) {
        let others = self.others.clone();
        let me = client.peer();
        self.spawn(async move {
            let Ok(vodmesh_proto::director::Response::Swarm(records)) =
                client.call(vodmesh_proto::director::Request::Swarm).await
            else {
                return;
            };
            let mut learned = crate::remember::listed_directors(&records, Some(me));
            learned.truncate(MAX_OTHERS);
            if !learned.is_empty()
                && let Ok(mut others) = others.lock()
            {
                tracing::debug!(
                    directors = learned.len(),
                    "gateway: learned the swarm's other directors"
                );
                *others = learned;
            }
        });
    }

    /// Forgets the connection and the open programs after the swarm failed a request, so
    /// the next request starts afresh (a restarted station, another route).
    async fn reset(&self) {
        *self.client.lock().await = None;
        let mut sessions = self.sessions.lock().await;
        sessions.open.clear();
    }

    /// Forgets program `program` after a fetch of it failed, so that its next request opens
    /// it afresh; the other programs play on (a dead connection shows when the next one is
    /// opened, which resets the rest).
    async fn forget(&self, program: ProgramId) {
        self.sessions.lock().await.open.remove(&program);
    }

    /// The swarm's published programs. A connection that fails is dropped and the list asked
    /// once more on a fresh one (`node` restarted, or another director of the swarm).
    pub(super) async fn published(&self) -> Result<Vec<ProgramInfo>, Failure> {
        let mut again = true;
        loop {
            let client = self.client().await?;
            match play::published(&client).await {
                Ok(list) => return Ok(list),
                Err(e) => {
                    self.reset().await;
                    if !std::mem::take(&mut again) {
                        return Err(unavailable(format!(
                            "cannot list the swarm's programs through {}: {e}",
                            client.peer()
                        )));
                    }
                }
            }
        }
    }

    /// The open program named `name` (an id or an exact title), opened on first use.
    pub(super) async fn session(&self, name: &str) -> Result<Arc<Session>, Failure> {
        {
            let sessions = self.sessions.lock().await;
            let id = name
                .parse::<ProgramId>()
                .ok()
                .or_else(|| sessions.title(name, std::time::Instant::now()));
            if let Some(s) = id.and_then(|id| sessions.open.get(&id)) {
                return Ok(s.clone());
            }
        }
        let list = self.published().await?;
        let found: Vec<&ProgramInfo> = list
            .iter()
            .filter(|p| p.program.to_string() == name || p.title == name)
            .collect();
        let id = match found.as_slice() {
            [one] => one.program,
            [] => {
                return Err(Failure::NotFound(format!(
                    "no published program \"{name}\""
                )));
            }
            _ => {
                return Err(Failure::NotFound(format!(
                    "several programs are titled \"{name}\"; use the program id"
                )));
            }
        };
        // Opened once more on a fresh connection when the first fails, as the list is.
        let mut again = true;
        let session = loop {
            let client = self.client().await?;
            match Session::with_client(client, &self.credentials, id).await {
                Ok(s) => break Arc::new(s),
                // The connection or the directors failed: afresh once. A refusal (not
                // published, a token refused) would be the same on any connection.
                Err(e @ (SessionError::Client(_) | SessionError::Ask(_))) => {
                    self.reset().await;
                    if !std::mem::take(&mut again) {
                        return Err(unavailable(e));
                    }
                }
                Err(e) => return Err(unavailable(e)),
            }
        };
        let mut sessions = self.sessions.lock().await;
        if name.parse::<ProgramId>().is_err() {
            let now = std::time::Instant::now();
            sessions.titles.insert(name.to_string(), (id, now));
        }
        Ok(sessions.open.entry(id).or_insert(session).clone())
    }

    /// Stops every fetch and prefetch under way.
    pub(super) fn stop(&self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.abort_all();
        }
    }

    /// Runs `task` in the gateway's set, reaping the tasks that ended.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        if let Ok(mut tasks) = self.tasks.lock() {
            while tasks.try_join_next().is_some() {}
            tasks.spawn(task);
        }
    }

    /// Segment `index` of `session`'s program: from the cache, from a fetch already under
    /// way, or fetched now (in a task of its own, so a player that hangs up does not waste
    /// it).
    pub(super) async fn segment(
        self: &Arc<Self>,
        session: &Arc<Session>,
        index: SegmentIndex,
    ) -> Result<Bytes, Failure> {
        let key = (session.manifest().program, index);
        if let Some(bytes) = self.cache.lock().ok().and_then(|mut c| c.get(&key)) {
            return Ok(bytes);
        }
        let fetch = {
            let Ok(mut fetching) = self.fetching.lock() else {
                return Err(unavailable("the gateway's fetch table is poisoned"));
            };
            if let Some(bytes) = self.cache.lock().ok().and_then(|mut c| c.get(&key)) {
                return Ok(bytes);
            }
            match fetching.get(&key) {
                Some(fetch) => fetch.clone(),
                None if fetching.len() >= MAX_FETCHES => return Err(Failure::Busy),
                None => {
                    let fetch = self.start_fetch(session, key);
                    fetching.insert(key, fetch.clone());
                    fetch
                }
            }
        };
        let result = fetch.await;
        if result.is_err() {
            self.forget(key.0).await;
        }
        result
    }

    /// Starts fetching segment `key` of `session`'s program into the cache.
    fn start_fetch(self: &Arc<Self>, session: &Arc<Session>, key: Key) -> Fetching {
        let (tx, rx) = oneshot::channel();
        let gateway = self.clone();
        let session = session.clone();
        self.spawn(async move {
            let index = key.1;
            let result = match session.segment(index).await {
                Ok(segment) => Ok(Bytes::from(segment.bytes)),
                Err(e) => Err(unavailable(format!(
                    "the swarm cannot serve segment {index} of \"{}\" now: {e}",
                    session.manifest().content.title
                ))),
            };
            if let (Ok(bytes), Ok(mut cache)) = (&result, gateway.cache.lock()) {
                cache.insert(key, bytes.clone());
            }
            // After the cache insert: a later request finds one or the other.
            if let Ok(mut fetching) = gateway.fetching.lock() {
                fetching.remove(&key);
            }
            let _ = tx.send(result);
        });
        async move {
            rx.await
                .unwrap_or_else(|_| Err(unavailable("the gateway is stopping")))
        }
        .boxed()
        .shared()
    }

    /// Starts fetching the segments a player will ask for after `index`.
    pub(super) fn prefetch(self: &Arc<Self>, session: &Arc<Session>, index: SegmentIndex) {
        let count = session.manifest().content.segments.len() as u32;
        for next in (index.0 + 1..count).take(PREFETCH as usize) {
            let gateway = self.clone();
            let session = session.clone();
            self.spawn(async move {
                // A failure here is reported when the player asks for the segment itself.
                let _ = gateway.segment(&session, SegmentIndex(next)).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_title_stands_for_its_program_a_while_then_is_looked_up_again() {
        let mut sessions = Sessions::default();
        let (id, t0) = (ProgramId([3; 32]), std::time::Instant::now());
        sessions.titles.insert("news".into(), (id, t0));
        assert_eq!(sessions.title("news", t0), Some(id));
        let nearly = TITLE_FOR - std::time::Duration::from_millis(1);
        assert_eq!(sessions.title("news", t0 + nearly), Some(id));
        // Past it, resolved again: a second program titled "news" may have come.
        assert_eq!(sessions.title("news", t0 + TITLE_FOR), None);
        assert_eq!(sessions.title("weather", t0), None);
    }

    #[test]
    fn the_cache_keeps_the_most_recent_within_bounds() {
        let mut cache = Cache::default();
        let p = ProgramId([7; 32]);
        let key = |i: usize| (p, SegmentIndex(i as u32));
        for i in 0..CACHE_SEGMENTS + 4 {
            cache.insert(key(i), Bytes::from(vec![0u8; 10]));
            if i == 2 {
                // Used again: it stays while later ones push older ones out.
                assert!(cache.get(&key(0)).is_some());
            }
        }
        assert_eq!(cache.entries.len(), CACHE_SEGMENTS);
        assert_eq!(cache.bytes, CACHE_SEGMENTS * 10);
        assert!(cache.get(&key(1)).is_none());
        assert!(cache.get(&key(CACHE_SEGMENTS + 3)).is_some());
    }
}
