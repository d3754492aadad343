//! The director's HTTP edge (`vodmesh-node --http`): where a standard player starts.
//!
//! - `GET /v/<program>/index.m3u8?token=`: the program's HLS media playlist, made from its
//!   manifest ([`vodmesh_proto::hls`], the segment durations of the manifest), each segment URI
//!   pointing back at this director with the player's token copied in; for a program with
//!   renditions (an ABR ladder) the master playlist, its variants at
//!   `GET /v/<program>/<rendition>.m3u8?token=`.
//! - `GET /v/<program>/<n>.<ext>?token=`: a 302 to the engine that serves segment `n` to this
//!   player, at its own HTTP port. The engine is the one a console's `Locate` would be sent to:
//!   the request goes through the director's loop as a `Locate` ([`Local`]), with the token's
//!   subject standing for the console, so load, health, overload replication and misses (a
//!   copy from the cheapest station, streamed by our engine while it fills) are decided where
//!   they always are. A dead engine is down in the engine table, and the next redirect goes
//!   elsewhere.
//!
//! Every answer carries CORS headers (a page of any origin may play), over HTTP/1.1 or
//! HTTP/2, HTTPS with `--tls-cert` ([`crate::edge`]).
//!
//! The token is checked here first (offline, as the engine checks it again): a refused one
//! never reaches the loop. Requests to the loop are bounded (a full queue is a 503), and
//! each waits at most [`LOOP_WAIT`].

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use libp2p::PeerId;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use vodmesh_proto::director::{ErrorCode, ErrorReply, Request, Response as Answer};
use vodmesh_proto::hls::{playlist_linking, variant, variant_of};
use vodmesh_proto::manifest::Manifest;
use vodmesh_proto::token::TrustedIssuers;
use vodmesh_proto::{ProgramId, SegmentId};

use crate::edge::{Guarded, Limits, Named, admit, cors, line, preflight, token_param};
use crate::tls::Tls;

/// Requests of the HTTP edge queued for the loop, at most; past this a player is told to retry.
pub(super) const QUEUE: usize = 256;
/// How long a request waits for the loop's answer (a miss's look-ups take up to 40 s).
const LOOP_WAIT: Duration = Duration::from_secs(45);
/// Engines named without an HTTP address that a redirect skips before it gives up (engines
/// in processes of their own serve no HTTP yet).
const TRIES: usize = 3;

/// A request of the HTTP edge for the loop, on behalf of `subscriber`.
#[derive(Debug)]
pub(super) struct Local {
    /// The URL token's subject: the console the subscriber's token was issued to.
    pub(super) subscriber: PeerId,
    /// `Manifest` or `Locate`.
    pub(super) request: Request,
    /// Where the answer goes.
    pub(super) reply: oneshot::Sender<Answer>,
}

/// The HTTP edge, ready to run beside the loop.
pub(super) struct Server {
    listener: TcpListener,
    edge: Edge,
    /// `--tls-cert`: the edge speaks HTTPS.
    tls: Option<Tls>,
    shutdown: watch::Receiver<bool>,
}

/// What every request is served with.
#[derive(Clone)]
struct Edge {
    /// The loop's queue of [`Local`] requests.
    loop_: mpsc::Sender<Local>,
    /// Issuers whose URL tokens this station accepts.
    trusted: TrustedIssuers,
}

impl Server {
    /// The edge on `listener`, asking the loop on `loop_`, accepting URL tokens of
    /// `trusted`, speaking TLS with `tls`, until `shutdown`.
    pub(super) fn new(
        listener: TcpListener,
        (loop_, trusted, tls): (mpsc::Sender<Local>, TrustedIssuers, Option<Tls>),
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            listener,
            edge: Edge { loop_, trusted },
            tls,
            shutdown,
        }
    }

    /// Serves until the station stops.
    pub(super) async fn run(self) {
        let Self {
            listener,
            edge,
            tls,
            mut shutdown,
        } = self;
        let app = Router::new()
            .route("/v/{program}/{file}", get(get_file).options(preflight))
            .layer(axum::middleware::from_fn(cors))
            .with_state(edge)
            .into_make_service_with_connect_info::<SocketAddr>();
        let stop = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        let listener = Guarded::new(listener, Limits::EDGE, tls.as_ref()).tap_io(|_| ());
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::warn!(error = %e, "the director's HTTP edge failed");
        }
    }
}

/// `GET /v/<program>/<file>?token=`: the playlist, or a redirect to a segment's engine.
async fn get_file(
    State(edge): State<Edge>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Path((program, file)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let (named, subscriber) = match admit(&edge.trusted, (&program, &file), &uri, client) {
        Ok(admitted) => admitted,
        Err(why) => {
            tracing::info!(%client, refused = %why, "HTTP request refused");
            return why.into_response();
        }
    };
    // Admitted: the parameter is there.
    let token = token_param(&uri).unwrap_or_default();
    match named {
        Named::Playlist(program) => {
            let rendition = variant_of(&file);
            playlist(&edge, subscriber, (program, rendition), token).await
        }
        Named::Segment(segment) => {
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
            redirect(&edge, subscriber, segment, (&file, token), host).await
        }
    }
}

/// Asks the loop `request` for `subscriber`.
async fn ask(edge: &Edge, subscriber: PeerId, request: Request) -> Result<Answer, Response> {
    let (reply, answer) = oneshot::channel();
    let local = Local {
        subscriber,
        request,
        reply,
    };
    if edge.loop_.try_send(local).is_err() {
        return Err(retry("the director is busy; retry"));
    }
    match tokio::time::timeout(LOOP_WAIT, answer).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(_)) => Err(line(
            StatusCode::SERVICE_UNAVAILABLE,
            "the director stopped",
        )),
        Err(_) => Err(line(
            StatusCode::GATEWAY_TIMEOUT,
            "the swarm did not answer in time",
        )),
    }
}

/// The program's playlist (`index.m3u8`: the master playlist of a program with renditions),
/// or one rendition's (`<name>.m3u8`), its URIs relative to this one with `token` copied in.
async fn playlist(
    edge: &Edge,
    subscriber: PeerId,
    (program, rendition): (ProgramId, Option<&str>),
    token: &str,
) -> Response {
    let signed = match ask(edge, subscriber, Request::Manifest { program }).await {
        Ok(Answer::Manifest(signed)) => signed,
        Ok(Answer::Error(e)) => return refusal(&e),
        Ok(_) => return line(StatusCode::BAD_GATEWAY, "unexpected answer"),
        Err(response) => return response,
    };
    let manifest = match Manifest::verify(&signed) {
        Ok(m) => m,
        Err(e) => return line(StatusCode::BAD_GATEWAY, format!("bad manifest: {e}")),
    };
    let link = |name: &str| format!("{name}?token={token}");
    let m3u8 = match rendition {
        None => playlist_linking(&manifest.content, &link),
        Some(name) => match variant(&manifest.content, name, &link) {
            Some(m3u8) => m3u8,
            None => return line(StatusCode::NOT_FOUND, format!("no rendition \"{name}\"")),
        },
    };
    let mut response = m3u8.into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.apple.mpegurl"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=60"),
    );
    response
}

/// A 302 to the engine the loop names for `segment`, at `file` with `token`; `host`: the
/// `Host` the player reached this director at, for an engine listening on every interface.
async fn redirect(
    edge: &Edge,
    subscriber: PeerId,
    segment: SegmentId,
    (file, token): (&str, &str),
    host: Option<&str>,
) -> Response {
    let mut avoid = Vec::new();
    for _ in 0..TRIES {
        let locate = Request::Locate {
            program: segment.program,
            index: segment.index,
            complete: false,
            avoid: avoid.clone(),
            busy: Vec::new(),
            ahead: 0,
            // The edge checked the player's URL token: the loop takes it as a console's.
            token: None,
        };
        let location = match ask(edge, subscriber, locate).await {
            Ok(Answer::Location(location)) => location,
            Ok(Answer::Error(e)) => return refusal(&e),
            Ok(_) => return line(StatusCode::BAD_GATEWAY, "unexpected answer"),
            Err(response) => return response,
        };
        let Some(http) = location.http else {
            // Named an engine that serves no HTTP: ask again without it.
            avoid.push(location.engine);
            continue;
        };
        let Some(authority) = authority(http, host) else {
            return line(StatusCode::BAD_REQUEST, "unusable Host header");
        };
        // An engine with TLS is sent to as https://, whatever this request came over.
        let scheme = if location.https { "https" } else { "http" };
        let to = format!(
            "{scheme}://{authority}/v/{}/{file}?token={token}",
            segment.program
        );
        tracing::debug!(%segment, engine = %location.engine, filling = location.filling, %to, "HTTP: redirect");
        return match HeaderValue::from_str(&to) {
            Ok(to) => {
                let mut r = line(StatusCode::FOUND, "found");
                r.headers_mut().insert(header::LOCATION, to);
                r.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                r
            }
            Err(_) => line(StatusCode::INTERNAL_SERVER_ERROR, "unusable redirect"),
        };
    }
    retry("no engine that serves HTTP holds this segment now; retry")
}

/// Where a player reaches an engine serving HTTP at `http`: its own address, or, when it
/// listens on every interface, the host the player reached the director at (`Host`), on the
/// engine's port.
fn authority(http: SocketAddr, host: Option<&str>) -> Option<String> {
    if !http.ip().is_unspecified() {
        return Some(http.to_string());
    }
    let host = host?;
    let name = match host.strip_prefix('[') {
        Some(v6) => format!("[{}]", v6.split(']').next()?),
        None => host.split(':').next()?.to_string(),
    };
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
    if name.is_empty() || name.len() > 255 || !name.chars().all(plain) {
        return None;
    }
    // An address must parse as one; a name is taken as it is.
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    if name.starts_with('[') && bare.parse::<IpAddr>().is_err() {
        return None;
    }
    Some(format!("{name}:{}", http.port()))
}

/// A 503 that tells the player to come back in a second.
fn retry(why: &str) -> Response {
    let mut r = line(StatusCode::SERVICE_UNAVAILABLE, why);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// The director's refusal as HTTP: its one line, with the status its code calls for.
fn refusal(e: &ErrorReply) -> Response {
    match e.code {
        ErrorCode::NotFound => line(StatusCode::NOT_FOUND, &e.message),
        ErrorCode::NotPublished | ErrorCode::Unauthorized => {
            line(StatusCode::FORBIDDEN, &e.message)
        }
        ErrorCode::Busy | ErrorCode::Unavailable | ErrorCode::Full => retry(&e.message),
        ErrorCode::BadRequest => line(StatusCode::BAD_REQUEST, &e.message),
        ErrorCode::Internal => line(StatusCode::INTERNAL_SERVER_ERROR, &e.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_on_every_interface_are_reached_at_the_players_host() {
        let bound: SocketAddr = "127.0.0.1:4100".parse().unwrap_or(([0; 4], 0).into());
        assert_eq!(
            authority(bound, Some("evil")),
            Some("127.0.0.1:4100".into())
        );
        let any: SocketAddr = "0.0.0.0:4100".parse().unwrap_or(([0; 4], 0).into());
        assert_eq!(
            authority(any, Some("tv.example:8080")),
            Some("tv.example:4100".into())
        );
        assert_eq!(
            authority(any, Some("[2001:db8::1]:8080")),
            Some("[2001:db8::1]:4100".into())
        );
        assert_eq!(authority(any, None), None);
        for bad in ["", "a/b", "x y", "[nope]:1", "a@b"] {
            assert_eq!(authority(any, Some(bad)), None, "{bad}");
        }
    }
}
