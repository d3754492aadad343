//! An engine's HTTP edge (`vodmesh-node --http`): segments for standard players.
//!
//! `GET /v/<program>/<n>.<ext>?token=<URL token>` serves segment `n` straight from the
//! engine's store: a single `Range` (206 with `Content-Range`, 416 when unsatisfiable),
//! `Cache-Control`, over HTTP/1.1 or HTTP/2, HTTPS with `--tls-cert`, and with CORS headers
//! so that a page of any origin may play it ([`crate::edge`]). The body is read from the store chunk by chunk as the client
//! takes it, never held whole; a segment still filling (a miss being copied in) is followed as
//! it lands, as `/vodmesh/stream/1` follows it ([`crate::store::Reader`]).
//!
//! A player reaches this port through its director's redirect ([`crate::director`]'s HTTP
//! edge), but anyone may call it: each request is admitted as a stream is, with a URL token
//! checked offline ([`TrustedIssuers::verify_url`]: trusted issuer, signature, expiry, kind,
//! program, client address), the program's publish time, and a place under `--max-streams`
//! shared with the libp2p streams. The director hears of every start and end, so its view of
//! this engine's load counts HTTP clients too (the console is the token's subject).
//!
//! A refusal is a 403 with the one-line reason; a full engine a 503 with `Retry-After`. A
//! player that stops reading loses its connection and gives its place back, a client that
//! keeps the engine waiting (sends nothing, half a request) loses it too, and connections
//! past a cap are closed at once ([`crate::edge::Limits::EDGE`]).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use libp2p::PeerId;
use tokio_util::sync::CancellationToken;
use vodmesh_proto::SegmentId;
use vodmesh_proto::hls::byte_range;
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::TrustedIssuers;

use super::Reporter;
use super::embargo::Embargoes;
use super::stream::{ActiveStream, Load};
use crate::control::EngineEvent;
use crate::edge::{Guarded, Limits, Named, Refused, admit, cors, line, preflight};
use crate::peer_slots::PeerSlots;
use crate::store::{Reader, SegmentStore};

/// Bytes per read from the store, and per body chunk.
const CHUNK: usize = 256 * 1024;
/// How long a request for a segment not here yet waits for a copy to begin (the director
/// redirects a player to the engine it just told to copy the segment in).
const ARRIVAL_WAIT: Duration = Duration::from_secs(5);
/// HTTP streams one subscriber (a token's subject) is served at once, at most: a player
/// fetches a segment or two at a time; past this it is told to retry.
pub(crate) const MAX_PER_SUBSCRIBER: usize = 16;
/// What players and caches may do with a segment: its bytes never change (the manifest
/// fixes its hash), but the URL carries a subscriber's token, so only her own cache keeps it.
const CACHE_CONTROL: &str = "private, max-age=86400, immutable";

/// What every HTTP request of one engine is served with.
#[derive(Clone)]
pub(crate) struct Edge {
    pub(crate) store: SegmentStore,
    pub(crate) reporter: Reporter,
    /// `--max-streams`, shared with `/vodmesh/stream/1`.
    pub(crate) load: Load,
    /// Issuers whose URL tokens this engine accepts; empty = serve nothing.
    pub(crate) trusted: TrustedIssuers,
    /// Programs not to stream yet.
    pub(crate) embargoes: Embargoes,
    /// Streams each subscriber is served ([`MAX_PER_SUBSCRIBER`]).
    pub(crate) per_subscriber: PeerSlots,
    /// Cancelled when the engine stops: bodies under way end with it.
    pub(crate) stop: CancellationToken,
    /// TLS (`--tls-cert`): the edge speaks HTTPS.
    pub(crate) tls: Option<crate::tls::Tls>,
    /// Readers preloads opened (the director's redirect is a `Locate`, and preloads), shared
    /// with `/vodmesh/stream/1`.
    pub(crate) preopened: super::stream::Preopened,
}

/// Serves the engine's HTTP edge on `listener` until `stop` is cancelled.
pub(crate) async fn serve(listener: tokio::net::TcpListener, edge: Edge) {
    let stop = edge.stop.clone();
    let listener = Guarded::new(listener, Limits::EDGE, edge.tls.as_ref()).tap_io(|_| ());
    let app = Router::new()
        .route("/v/{program}/{file}", get(segment).options(preflight))
        .layer(axum::middleware::from_fn(cors))
        .with_state(edge);
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::warn!(error = %e, "the engine's HTTP edge failed");
    }
}

/// `GET /v/<program>/<n>.<ext>?token=`.
async fn segment(
    State(edge): State<Edge>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Path((program, file)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let engine = edge.reporter.engine();
    let (segment, subscriber) = match admit(&edge.trusted, (&program, &file), &uri, client) {
        Ok((Named::Segment(segment), subscriber)) => (segment, subscriber),
        // Playlists are the director's.
        Ok((Named::Playlist(_), _)) => return Refused::NotFound.into_response(),
        Err(why) => {
            if !matches!(why, Refused::NotFound) {
                tracing::info!(%engine, %client, refused = %why, "HTTP segment refused");
                edge.reporter.try_send(EngineEvent::Refused { copy: false });
            }
            return why.into_response();
        }
    };
    if !edge.embargoes.allows(&segment.program, now_ms()) {
        return Refused::NotPublished.into_response();
    }
    let Some(mine) = edge.per_subscriber.take(subscriber) else {
        return busy("too many segments at once for this subscriber");
    };
    let Some(active) = edge.load.try_start() else {
        return busy("this engine serves --max-streams already");
    };
    // Sent here with the copy just ordered: wait briefly for its first bytes.
    let waited = tokio::time::Instant::now();
    while edge.store.info(&segment).is_none() && waited.elapsed() < ARRIVAL_WAIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (Ok(reader), Some(info)) = (
        edge.preopened.open_read(&edge.store, segment).await,
        edge.store.info(&segment),
    ) else {
        tracing::debug!(%engine, %segment, "HTTP: segment absent");
        return line(StatusCode::NOT_FOUND, "segment not held by this engine");
    };
    let size = reader.len();
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| byte_range(v, size));
    let (status, start, end) = match range {
        None => (StatusCode::OK, 0, size),
        Some(Ok((start, end))) => (StatusCode::PARTIAL_CONTENT, start, end),
        Some(Err(())) => {
            let mut r = line(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable");
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    tracing::debug!(%engine, %segment, %client, start, end, "HTTP: serving");
    edge.reporter.try_send(EngineEvent::TookOver {
        segment,
        console: subscriber,
    });
    let sending = Sending {
        reader,
        end,
        sent: 0,
        failed: false,
        stop: edge.stop.clone(),
        report: Some(Ended {
            reporter: edge.reporter.clone(),
            segment,
            subscriber,
            _active: active,
            _mine: mine,
        }),
    };
    let mut response = Response::new(Body::from_stream(sending.into_stream(start)));
    *response.status_mut() = status;
    let h = response.headers_mut();
    let content_type = match file.rsplit_once('.') {
        Some((_, "ts")) => "video/mp2t",
        Some((_, "m4s" | "mp4")) => "video/mp4",
        _ => "application/octet-stream",
    };
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", info.hash)) {
        h.insert(header::ETAG, v);
    }
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) =
            HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end.saturating_sub(1)))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    response
}

/// A 503 that tells the player to come back in a second.
fn busy(why: &str) -> Response {
    let mut r = line(StatusCode::SERVICE_UNAVAILABLE, why);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// A body being sent: the reader and how far it goes.
struct Sending {
    reader: Reader,
    /// Where the body ends (exclusive).
    end: u64,
    sent: u64,
    /// Whether a read failed (the body ended short).
    failed: bool,
    stop: CancellationToken,
    /// Tells the director the stream ended, once, whenever the body is dropped.
    report: Option<Ended>,
}

/// The end of an HTTP stream, reported when dropped (the client may go away at any time),
/// with its place under `--max-streams` and the subscriber's given back.
struct Ended {
    reporter: Reporter,
    segment: SegmentId,
    subscriber: PeerId,
    _active: ActiveStream,
    _mine: crate::peer_slots::PeerSlot,
}

impl Sending {
    /// The body from `start`, chunk by chunk as the client takes it.
    fn into_stream(
        mut self,
        start: u64,
    ) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
        self.reader.seek(start);
        futures::stream::unfold(self, |mut s| async move {
            let left = s.end.saturating_sub(s.reader.position());
            if left == 0 {
                return None;
            }
            let max = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
            let next = tokio::select! {
                _ = s.stop.cancelled() => Err(std::io::Error::other("the engine stopped")),
                next = s.reader.read_next(max) => next.map_err(std::io::Error::other),
            };
            match next {
                Ok(Some(bytes)) => {
                    s.sent += bytes.len() as u64;
                    Some((Ok(bytes::Bytes::from(bytes)), s))
                }
                Ok(None) => None,
                Err(e) => {
                    // A corrupt chunk is never sent: the client sees the body end short.
                    tracing::warn!(engine = %s.reporter_engine(), error = %e, "HTTP body aborted");
                    s.failed = true;
                    s.end = 0;
                    Some((Err(e), s))
                }
            }
        })
    }

    fn reporter_engine(&self) -> String {
        (self.report.as_ref()).map_or_else(String::new, |r| r.reporter.engine().to_string())
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        if let Some(ended) = self.report.take() {
            let complete = !self.failed && self.reader.position() == self.reader.len();
            ended.reporter.try_send(EngineEvent::Stopped {
                segment: ended.segment,
                console: ended.subscriber,
                bytes: self.sent,
                complete,
            });
        }
    }
}
