//! `vodmesh-console serve`: an HLS gateway, so that standard players (VLC, mpv, ffplay,
//! Safari, a browser with hls.js) play programs of the swarm.
//!
//! The gateway is a console: it opens a [`Session`] per program and fetches each segment with
//! redirect, handoff and verification exactly as `play` does; only verified bytes are ever
//! sent. Routes:
//!
//! - `GET /`: the published programs, as HTML with links (`?json`: as JSON).
//! - `GET /<program>/index.m3u8`: a VOD playlist built from the signed manifest, with the
//!   manifest's segment durations. A program ingested from fMP4 HLS (segment 0 is the
//!   initialization segment, of duration 0) gets an `#EXT-X-MAP` to it.
//! - `GET /<program>/<n>.ts` (or `.m4s`): segment `n`, with byte ranges. After a segment is
//!   served the next ones are fetched into a small cache, so a player's next request is
//!   answered from memory.
//! - `GET /<program>/`: a page that plays the program with an HTML5 `<video>` and hls.js,
//!   served from this binary (no CDN).
//!
//! `<program>` is a program id or an exact title. An unknown program or segment is a 404; a
//! swarm that cannot serve (no director reachable, no engine holding the segment, a refused
//! token) is a 503 with its one-line reason.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use libp2p::Multiaddr;
use vodmesh_proto::ProgramId;
use vodmesh_proto::director::ProgramInfo;

use crate::client::DirectorClient;
use crate::play::{self, Credentials, Session};

/// The default HTTP address: loopback only.
pub const DEFAULT_HTTP: &str = "127.0.0.1:8080";
/// Segments kept in memory (served or prefetched), at most.
pub const CACHE_SEGMENTS: usize = 16;
/// Bytes of segments kept in memory, at most.
pub const CACHE_BYTES: usize = 128 * 1024 * 1024;
/// Segments fetched ahead of the one a player asked for.
pub const PREFETCH: u32 = 2;

/// hls.js (the npm package's dist file), served at [`HLS_JS_PATH`].
const HLS_JS: &[u8] = include_bytes!("../assets/hls.min.js");
/// Where the page loads hls.js from; a dot keeps it apart from program titles.
const HLS_JS_PATH: &str = "/.vodmesh/hls.min.js";

/// What a request could not get.
#[derive(Clone, Debug)]
enum Failure {
    /// No such program or segment: 404.
    NotFound(String),
    /// The swarm cannot serve it now: 503.
    Unavailable(String),
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Failure::NotFound(m) => (StatusCode::NOT_FOUND, m),
            Failure::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
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

fn unavailable(e: impl std::fmt::Display) -> Failure {
    Failure::Unavailable(e.to_string())
}

/// A segment of a program, as cached.
type Key = (ProgramId, u32);
/// A fetch that several requests (a player's and the prefetcher's) may wait for.
type Fetching = Shared<BoxFuture<'static, Result<Bytes, Failure>>>;

/// A least-recently-used cache of verified segments, bounded in count and bytes.
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

/// The gateway's state, shared by every request.
struct Gateway {
    node: Multiaddr,
    credentials: Credentials,
    /// The connection to `node`, opened on first use and dropped when it fails, so that the
    /// next request dials again.
    client: tokio::sync::Mutex<Option<Arc<DirectorClient>>>,
    /// Open programs by id, and titles already resolved to ids.
    sessions: tokio::sync::Mutex<Sessions>,
    cache: Mutex<Cache>,
    fetching: Mutex<HashMap<Key, Fetching>>,
}

#[derive(Default)]
struct Sessions {
    open: HashMap<ProgramId, Arc<Session>>,
    titles: HashMap<String, ProgramId>,
}

impl Gateway {
    async fn client(&self) -> Result<Arc<DirectorClient>, Failure> {
        let mut client = self.client.lock().await;
        if let Some(c) = client.as_ref() {
            return Ok(c.clone());
        }
        let c = Arc::new(
            DirectorClient::connect(&self.node, self.credentials.key.clone())
                .await
                .map_err(|e| unavailable(format!("the swarm cannot be reached: {e}")))?,
        );
        *client = Some(c.clone());
        Ok(c)
    }

    /// Forgets the connection and the open programs after the swarm failed a request, so
    /// the next request starts afresh (a restarted station, another route).
    async fn reset(&self) {
        *self.client.lock().await = None;
        let mut sessions = self.sessions.lock().await;
        sessions.open.clear();
    }

    async fn published(&self) -> Result<Vec<ProgramInfo>, Failure> {
        let client = self.client().await?;
        match play::published(&client).await {
            Ok(list) => Ok(list),
            Err(e) => {
                self.reset().await;
                Err(unavailable(format!(
                    "cannot list the swarm's programs through {}: {e:#}",
                    self.node
                )))
            }
        }
    }

    /// The open program named `name` (an id or an exact title), opened on first use.
    async fn session(&self, name: &str) -> Result<Arc<Session>, Failure> {
        {
            let sessions = self.sessions.lock().await;
            let id = name
                .parse::<ProgramId>()
                .ok()
                .or_else(|| sessions.titles.get(name).copied());
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
        let client = self.client().await?;
        let session = match Session::with_client(client, &self.credentials, id).await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                self.reset().await;
                return Err(unavailable(format!("{e:#}")));
            }
        };
        let mut sessions = self.sessions.lock().await;
        if name.parse::<ProgramId>().is_err() {
            sessions.titles.insert(name.to_string(), id);
        }
        Ok(sessions.open.entry(id).or_insert(session).clone())
    }

    /// Segment `index` of `session`'s program: from the cache, from a fetch already under
    /// way, or fetched now (in a task of its own, so a player that hangs up does not waste
    /// it).
    async fn segment(
        self: &Arc<Self>,
        session: &Arc<Session>,
        index: u32,
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
            fetching
                .entry(key)
                .or_insert_with(|| {
                    let gateway = self.clone();
                    let session = session.clone();
                    let task = tokio::spawn(async move {
                        let result = match session.segment(index).await {
                            Ok((_, bytes)) => Ok(Bytes::from(bytes)),
                            Err(e) => Err(unavailable(format!(
                                "the swarm cannot serve segment {index} of \"{}\" now: {e:#}",
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
                        result
                    });
                    async move {
                        task.await
                            .unwrap_or_else(|e| Err(unavailable(format!("fetch task: {e}"))))
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        let result = fetch.await;
        if result.is_err() {
            self.reset().await;
        }
        result
    }

    /// Starts fetching the segments a player will ask for after `index`.
    fn prefetch(self: &Arc<Self>, session: &Arc<Session>, index: u32) {
        let count = session.manifest().content.segments.len() as u32;
        for next in (index + 1..count).take(PREFETCH as usize) {
            let gateway = self.clone();
            let session = session.clone();
            tokio::spawn(async move {
                // A failure here is reported when the player asks for the segment itself.
                let _ = gateway.segment(&session, next).await;
            });
        }
    }
}

/// Whether the manifest is fMP4 HLS: its segment 0 is the initialization segment.
fn is_fmp4(session: &Session) -> bool {
    session.manifest().content.has_init_segment()
}

/// The file name of segment `index` in the playlist.
fn segment_name(fmp4: bool, index: u32) -> String {
    if fmp4 {
        format!("{index}.m4s")
    } else {
        format!("{index}.ts")
    }
}

/// The VOD playlist of a program, from its manifest.
fn playlist(session: &Session) -> String {
    let content = &session.manifest().content;
    let fmp4 = is_fmp4(session);
    let media = content.segments.iter().skip(usize::from(fmp4));
    // Each #EXTINF rounded to an integer must not exceed the target duration.
    let longest = media.clone().map(|s| s.duration_ms).max().unwrap_or(0);
    let target = u64::from(longest).div_ceil(1000).max(1);
    let mut m3u8 = String::from("#EXTM3U\n");
    let _ = writeln!(m3u8, "#EXT-X-VERSION:{}", if fmp4 { 7 } else { 3 });
    let _ = writeln!(m3u8, "#EXT-X-TARGETDURATION:{target}");
    m3u8.push_str("#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:VOD\n");
    if fmp4 {
        let _ = writeln!(m3u8, "#EXT-X-MAP:URI=\"{}\"", segment_name(true, 0));
    }
    for s in media {
        let _ = writeln!(
            m3u8,
            "#EXTINF:{}.{:03},\n{}",
            s.duration_ms / 1000,
            s.duration_ms % 1000,
            segment_name(fmp4, s.index)
        );
    }
    m3u8.push_str("#EXT-X-ENDLIST\n");
    m3u8
}

/// Escapes text for HTML.
fn html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

async fn index(State(gateway): State<Arc<Gateway>>, uri: Uri) -> Result<Response, Failure> {
    let list = gateway.published().await?;
    let json = uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "json" || p.starts_with("json=")));
    if json {
        let body = serde_json::to_vec_pretty(&list).map_err(unavailable)?;
        return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
    }
    let mut page = String::from(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>vodmesh</title></head>\n\
         <body><h1>vodmesh programs</h1>\n<ul>\n",
    );
    for p in &list {
        let id = p.program.to_string();
        let _ = writeln!(
            page,
            "<li><a href=\"/{id}/\">{}</a> ({:.1} s, {:.1} MiB) \
             &middot; <a href=\"/{id}/index.m3u8\">index.m3u8</a></li>",
            html(&p.title),
            p.duration_ms as f64 / 1000.0,
            p.size as f64 / (1024.0 * 1024.0),
        );
    }
    if list.is_empty() {
        page.push_str("<li>no published programs</li>\n");
    }
    page.push_str("</ul></body></html>\n");
    Ok(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response())
}

async fn player_page(
    State(gateway): State<Arc<Gateway>>,
    Path(program): Path<String>,
) -> Result<Response, Failure> {
    let session = gateway.session(&program).await?;
    let title = html(&session.manifest().content.title);
    let page = format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:1em}}video{{width:100%;max-width:960px;background:#000}}</style>
</head><body>
<h1>{title}</h1>
<video id="video" controls muted playsinline></video>
<p id="status"></p>
<script src="{HLS_JS_PATH}"></script>
<script>
const video = document.getElementById('video');
const status = document.getElementById('status');
const src = 'index.m3u8';
if (window.Hls && Hls.isSupported()) {{
  const hls = new Hls();
  hls.on(Hls.Events.ERROR, (_, d) => {{ if (d.fatal) status.textContent = 'error: ' + d.type + ' ' + d.details; }});
  hls.loadSource(src);
  hls.attachMedia(video);
}} else if (video.canPlayType('application/vnd.apple.mpegurl')) {{
  video.src = src;
}} else {{
  status.textContent = 'this browser plays neither HLS nor Media Source Extensions';
}}
</script>
</body></html>
"#
    );
    Ok(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response())
}

async fn playlist_route(
    State(gateway): State<Arc<Gateway>>,
    Path(program): Path<String>,
) -> Result<Response, Failure> {
    let session = gateway.session(&program).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/vnd.apple.mpegurl")],
        playlist(&session),
    )
        .into_response())
}

/// A single byte range of a body of `len` bytes, as `start..end`; `Err(())` when it cannot
/// be satisfied. `None` when there is no usable single range (then the whole body is sent).
fn byte_range(value: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None; // Several ranges: a full answer is allowed (RFC 9110 §14.2).
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        let suffix: u64 = last.parse().ok()?;
        if suffix == 0 || len == 0 {
            return Some(Err(()));
        }
        (len.saturating_sub(suffix), len)
    } else {
        let start: u64 = first.parse().ok()?;
        let end = if last.is_empty() {
            len
        } else {
            let last: u64 = last.parse().ok()?;
            if last < start {
                return None; // Syntactically invalid: ignored.
            }
            last.saturating_add(1).min(len)
        };
        if start >= len {
            return Some(Err(()));
        }
        (start, end)
    };
    Some(Ok(range))
}

async fn segment_route(
    State(gateway): State<Arc<Gateway>>,
    Path((program, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let not_found = || Failure::NotFound(format!("no segment \"{file}\""));
    let index: u32 = file
        .strip_suffix(".ts")
        .or_else(|| file.strip_suffix(".m4s"))
        .or_else(|| file.strip_suffix(".mp4"))
        .and_then(|n| n.parse().ok())
        .ok_or_else(not_found)?;
    let session = gateway.session(&program).await?;
    let content = &session.manifest().content;
    if content.segment(index).is_none() {
        return Err(Failure::NotFound(format!(
            "program \"{}\" has no segment {index} (it has {})",
            content.title,
            content.segments.len()
        )));
    }
    let content_type = if is_fmp4(&session) {
        "video/mp4"
    } else if content.content_type == "video/mp2t" {
        "video/mp2t"
    } else {
        "application/octet-stream"
    };
    let bytes = gateway.segment(&session, index).await?;
    gateway.prefetch(&session, index);
    let len = bytes.len() as u64;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| byte_range(v, len));
    let mut response = match range {
        None => Response::new(Body::from(bytes)),
        Some(Ok((start, end))) => {
            let mut r = Response::new(Body::from(bytes.slice(start as usize..end as usize)));
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            let value = format!("bytes {start}-{}/{len}", end - 1);
            if let Ok(v) = HeaderValue::from_str(&value) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            r
        }
        Some(Err(())) => {
            let mut r = Response::new(Body::from(format!(
                "range not satisfiable: segment {index} has {len} bytes\n"
            )));
            *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(r);
        }
    };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    Ok(response)
}

async fn hls_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript"),
            (header::CACHE_CONTROL, "max-age=86400"),
        ],
        HLS_JS,
    )
        .into_response()
}

async fn without_slash(Path(program): Path<String>) -> Response {
    // `/<program>` -> `/<program>/`, so the page's relative `index.m3u8` resolves. A name
    // with a slash or backslash is no program, and `//host/` or `/\host/` would send the
    // browser to another site.
    let location = format!("/{}/", program.replace('"', "%22"));
    if program.contains(['/', '\\']) {
        return Failure::NotFound(format!("no published program \"{program}\"")).into_response();
    }
    match HeaderValue::from_str(&location) {
        Ok(v) => (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, v)]).into_response(),
        Err(_) => Failure::NotFound(format!("no published program \"{program}\"")).into_response(),
    }
}

/// The gateway's routes over the swarm reached through `node`.
pub fn router(node: Multiaddr, credentials: Credentials) -> Router {
    let gateway = Arc::new(Gateway {
        node,
        credentials,
        client: Default::default(),
        sessions: Default::default(),
        cache: Mutex::new(Cache {
            entries: VecDeque::new(),
            bytes: 0,
        }),
        fetching: Default::default(),
    });
    Router::new()
        .route("/", get(index))
        .route(HLS_JS_PATH, get(hls_js))
        .route("/{program}", get(without_slash))
        .route("/{program}/", get(player_page))
        .route("/{program}/index.m3u8", get(playlist_route))
        .route("/{program}/{file}", get(segment_route))
        .with_state(gateway)
}

/// A gateway served by a task of its own (for `vodmesh demo` and other embedders).
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Stops accepting, finishes the requests under way and returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Starts a gateway on `http` over the swarm reached through `node`.
pub async fn spawn(node: Multiaddr, credentials: Credentials, http: SocketAddr) -> Result<Server> {
    let listener = tokio::net::TcpListener::bind(http)
        .await
        .with_context(|| format!("cannot listen on {http}"))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = router(node, credentials);
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    Ok(Server { addr, stop, task })
}

/// Serves the gateway on `http` until Ctrl-C. Says where, and whether only this machine can
/// reach it.
pub async fn run(node: Multiaddr, credentials: Credentials, http: SocketAddr) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(http)
        .await
        .with_context(|| format!("cannot listen on {http}"))?;
    let local = listener.local_addr()?;
    let reach = if local.ip().is_loopback() {
        "loopback only: players on this machine; give --http 0.0.0.0:PORT to serve others"
    } else {
        "reachable from other machines"
    };
    println!("serving http://{local}/ ({reach})");
    println!("play with: ffplay http://{local}/<program>/index.m3u8, or open http://{local}/");
    let app = router(node, credentials);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("the HTTP server failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ranges() {
        assert_eq!(byte_range("bytes=0-99", 1000), Some(Ok((0, 100))));
        assert_eq!(byte_range("bytes=900-", 1000), Some(Ok((900, 1000))));
        assert_eq!(byte_range("bytes=-10", 1000), Some(Ok((990, 1000))));
        assert_eq!(byte_range("bytes=-5000", 1000), Some(Ok((0, 1000))));
        assert_eq!(byte_range("bytes=990-5000", 1000), Some(Ok((990, 1000))));
        assert_eq!(byte_range("bytes=1000-", 1000), Some(Err(())));
        assert_eq!(byte_range("bytes=-0", 1000), Some(Err(())));
        assert_eq!(byte_range("bytes=5-1", 1000), None);
        assert_eq!(byte_range("bytes=0-1,5-6", 1000), None);
        assert_eq!(byte_range("items=0-1", 1000), None);
        assert_eq!(byte_range("bytes=x-1", 1000), None);
    }

    #[test]
    fn the_cache_keeps_the_most_recent_within_bounds() {
        let mut cache = Cache {
            entries: VecDeque::new(),
            bytes: 0,
        };
        let p = ProgramId([7; 32]);
        for i in 0..(CACHE_SEGMENTS as u32 + 4) {
            cache.insert((p, i), Bytes::from(vec![0u8; 10]));
            if i == 2 {
                // Used again: it stays while later ones push older ones out.
                assert!(cache.get(&(p, 0)).is_some());
            }
        }
        assert_eq!(cache.entries.len(), CACHE_SEGMENTS);
        assert_eq!(cache.bytes, CACHE_SEGMENTS * 10);
        assert!(cache.get(&(p, 1)).is_none());
        assert!(cache.get(&(p, CACHE_SEGMENTS as u32 + 3)).is_some());
    }

    #[tokio::test]
    async fn a_program_name_never_redirects_off_site() {
        let ok = without_slash(Path("sintel".into())).await;
        assert_eq!(ok.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(ok.headers()[header::LOCATION], "/sintel/");
        for name in ["\\evil.example", "/evil.example", "a/b"] {
            let refused = without_slash(Path(name.into())).await;
            assert_eq!(refused.status(), StatusCode::NOT_FOUND, "{name}");
            assert!(refused.headers().get(header::LOCATION).is_none(), "{name}");
        }
    }
}
