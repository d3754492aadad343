//! `vodmesh-console serve`: an HLS gateway, so that standard players (VLC, mpv, ffplay,
//! Safari, a browser with hls.js) play programs of the swarm.
//!
//! The gateway is a console: it opens a [`Session`](crate::play::Session) per program and
//! fetches each segment with redirect, handoff and verification exactly as `play` does; only
//! verified bytes are ever sent. Routes:
//!
//! - `GET /`: the published programs, as HTML with links (`?json`: as JSON, in the form of
//!   `vodmesh programs --json`).
//! - `GET /<program>/index.m3u8`: a VOD playlist built from the signed manifest, with the
//!   manifest's segment durations. A program ingested from fMP4 HLS (segment 0 is the
//!   initialization segment, of duration 0) gets an `#EXT-X-MAP` to it. For a program with
//!   renditions (an ABR ladder) it is the master playlist, its variants at
//!   `GET /<program>/<rendition>.m3u8`.
//! - `GET /<program>/<n>.ts` (or `.m4s`): segment `n`, with byte ranges. After a segment is
//!   served the next ones are fetched into a small cache, so a player's next request is
//!   answered from memory.
//! - `GET /<program>/`: a page that plays the program with an HTML5 `<video>` and hls.js,
//!   served from this binary (no CDN).
//!
//! Bound beyond loopback, every path starts with the gateway's access key (see [`Access`]).
//!
//! `<program>` is a program id or an exact title. An unknown program or segment is a 404; a
//! swarm that cannot serve (no director reachable, no engine holding the segment, a refused
//! token) is a 503 with its one-line reason.
//!
//! This module is the HTTP layer; [`gateway`] holds the state (connection, programs, cache)
//! and `hls` makes the playlist and pages.

mod access;
mod gateway;
mod hls;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use libp2p::Multiaddr;
use tokio::net::TcpListener;

pub use self::access::Access;
pub use self::gateway::{CACHE_BYTES, CACHE_SEGMENTS, MAX_FETCHES, PREFETCH};
use self::gateway::{Failure, Gateway, unavailable};
use self::hls::HLS_JS_PATH;
use crate::play::Credentials;

/// The default HTTP address: loopback only.
pub const DEFAULT_HTTP: &str = "127.0.0.1:8080";

/// hls.js (the npm package's dist file), served at [`HLS_JS_PATH`].
const HLS_JS: &[u8] = include_bytes!("../../assets/hls.min.js");

/// Why the gateway could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The HTTP address could not be bound.
    #[error("cannot listen on {addr}: {cause}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        cause: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("the HTTP server failed: {0}")]
    Http(#[from] std::io::Error),
}

const HTML: &str = "text/html; charset=utf-8";

async fn index(State(gateway): State<Arc<Gateway>>, uri: Uri) -> Result<Response, Failure> {
    let list = gateway.published().await?;
    let json = uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "json" || p.starts_with("json=")));
    if json {
        let json = crate::session::programs_json(&list);
        let body = serde_json::to_vec_pretty(&json).map_err(unavailable)?;
        return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
    }
    let page = hls::index_page(&list);
    Ok(([(header::CONTENT_TYPE, HTML)], page).into_response())
}

async fn player_page(
    State(gateway): State<Arc<Gateway>>,
    Path(program): Path<String>,
) -> Result<Response, Failure> {
    let session = gateway.session(&program).await?;
    let page = hls::player_page(&session.manifest().content.title);
    Ok(([(header::CONTENT_TYPE, HTML)], page).into_response())
}

async fn playlist_route(
    State(gateway): State<Arc<Gateway>>,
    Path(program): Path<String>,
) -> Result<Response, Failure> {
    let session = gateway.session(&program).await?;
    let playlist = hls::playlist(&session.manifest().content);
    let mpegurl = "application/vnd.apple.mpegurl";
    Ok(([(header::CONTENT_TYPE, mpegurl)], playlist).into_response())
}

async fn segment_route(
    State(gateway): State<Arc<Gateway>>,
    Path((program, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    if let Some(name) = hls::variant_of(&file) {
        // A rendition's media playlist, named by the master playlist.
        let session = gateway.session(&program).await?;
        let content = &session.manifest().content;
        let playlist = hls::variant(content, name, &|f| f.to_string()).ok_or_else(|| {
            Failure::NotFound(format!(
                "program \"{}\" has no rendition \"{name}\"",
                content.title
            ))
        })?;
        let mpegurl = "application/vnd.apple.mpegurl";
        return Ok(([(header::CONTENT_TYPE, mpegurl)], playlist).into_response());
    }
    let index = hls::segment_of(&file)
        .ok_or_else(|| Failure::NotFound(format!("no segment \"{file}\"")))?;
    let session = gateway.session(&program).await?;
    let content = &session.manifest().content;
    if content.segment(index.0).is_none() {
        return Err(Failure::NotFound(format!(
            "program \"{}\" has no segment {index} (it has {})",
            content.title,
            content.segments.len()
        )));
    }
    let content_type = hls::segment_type(content);
    let bytes = gateway.segment(&session, index).await?;
    gateway.prefetch(&session, index);
    let len = bytes.len() as u64;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| hls::byte_range(v, len));
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
    // Relative, so that it stays under the access key's path.
    let location = format!("{}/", program.replace('"', "%22"));
    if program.contains(['/', '\\']) {
        return Failure::NotFound(format!("no published program \"{program}\"")).into_response();
    }
    match HeaderValue::from_str(&location) {
        Ok(v) => (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, v)]).into_response(),
        Err(_) => Failure::NotFound(format!("no published program \"{program}\"")).into_response(),
    }
}

/// The gateway's routes over `gateway`.
fn routes(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/", get(index))
        .route(HLS_JS_PATH, get(hls_js))
        .route("/{program}", get(without_slash))
        .route("/{program}/", get(player_page))
        .route("/{program}/index.m3u8", get(playlist_route))
        .route("/{program}/{file}", get(segment_route))
        .with_state(gateway)
}

/// Serves `gateway` on `listener` under `access` until `stop` completes.
async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    access: Access,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Around the whole router, not added with `Router::layer`: the key comes off the path
    // before routing.
    let guard = axum::middleware::from_fn_with_state(Arc::new(access), access::guard);
    let app = tower::Layer::layer(&guard, routes(gateway));
    axum::serve(listener, axum::ServiceExt::into_make_service(app))
        .with_graceful_shutdown(stop)
        .await
}

/// A gateway served by a task of its own (for `vodmesh demo` and other embedders).
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its URLs' start: `http://ADDR:PORT` and the access key's path, if any.
    pub base: String,
    gateway: Arc<Gateway>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Stops accepting, finishes the requests under way, stops the fetches and returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
        self.gateway.stop();
    }
}

async fn bind(http: SocketAddr) -> Result<(TcpListener, SocketAddr), ServeError> {
    let listen = |cause| ServeError::Listen { addr: http, cause };
    let listener = TcpListener::bind(http).await.map_err(listen)?;
    let local = listener.local_addr().map_err(listen)?;
    Ok((listener, local))
}

/// Starts a gateway on `http` over the swarm reached through `node` (with `key` as its access
/// key, see [`Access`]).
pub async fn spawn(
    node: Multiaddr,
    credentials: Credentials,
    http: SocketAddr,
    key: Option<String>,
) -> Result<Server, ServeError> {
    let (listener, addr) = bind(http).await?;
    let access = Access::new(addr, key);
    let base = format!("http://{addr}{}", access.prefix());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway = Arc::new(Gateway::new(node, credentials));
    let task = tokio::spawn(serve(listener, gateway.clone(), access, async {
        let _ = stopped.await;
    }));
    Ok(Server {
        addr,
        base,
        gateway,
        stop,
        task,
    })
}

/// Serves the gateway on `http` until Ctrl-C. Says where, and whether only this machine can
/// reach it; beyond loopback its URLs carry the access key `key` (generated when `None`).
pub async fn run(
    node: Multiaddr,
    credentials: Credentials,
    http: SocketAddr,
    key: Option<String>,
) -> Result<(), ServeError> {
    // SIGTERM too: a gateway run as a service is stopped with it, and exits 0. Caught from
    // here on, before the address is printed, so a caller that stops it at once is heard.
    let stop = vodmesh_client::cli::Stop::install();
    let (listener, local) = bind(http).await?;
    let access = Access::new(local, key);
    let base = format!("http://{local}{}", access.prefix());
    let reach = if local.ip().is_loopback() {
        "loopback only: players on this machine; give --http 0.0.0.0:PORT to serve others"
    } else {
        "reachable from other machines, with the access key in the URL"
    };
    println!("serving {base}/ ({reach})");
    println!("play with: ffplay {base}/<program>/index.m3u8, or open {base}/");
    let gateway = Arc::new(Gateway::new(node, credentials));
    serve(listener, gateway, access, async {
        match stop {
            Ok(mut stop) => {
                stop.wait().await;
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    })
    .await?;
    Ok(())
}

/// For the fuzzers (`fuzz/`, tests/fuzz_smoke.rs): the gateway's reading of what a player
/// sends, on arbitrary text: lines of a `Range` header, a segment's file name, a path and a
/// `Host` header for the access rule of a gateway on loopback and one beyond it. Must not
/// panic; a range it grants lies within the body.
pub fn fuzz_request(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(3, '\n');
    let (range, path, host) = (
        lines.next().unwrap_or_default(),
        lines.next().unwrap_or_default(),
        lines.next().unwrap_or_default(),
    );
    for len in [0, 1, 1000, u64::MAX] {
        if let Some(Ok((start, end))) = hls::byte_range(range, len) {
            assert!(
                start < end && end <= len,
                "{range:?} of {len}: {start}..{end}"
            );
        }
    }
    let _ = hls::segment_of(path);
    let key = Some("0123456789abcdef".to_string());
    for (bound, key) in [("127.0.0.1:8080", None), ("0.0.0.0:8080", key)] {
        if let Ok(bound) = bound.parse() {
            let _ = Access::new(bound, key).admit(Some(host), path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_program_name_never_redirects_off_site() {
        let ok = without_slash(Path("sintel".into())).await;
        assert_eq!(ok.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(ok.headers()[header::LOCATION], "sintel/");
        for name in ["\\evil.example", "/evil.example", "a/b"] {
            let refused = without_slash(Path(name.into())).await;
            assert_eq!(refused.status(), StatusCode::NOT_FOUND, "{name}");
            assert!(refused.headers().get(header::LOCATION).is_none(), "{name}");
        }
    }
}
