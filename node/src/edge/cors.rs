//! Cross-origin access (CORS) to the HTTP edge: a web page on any origin (a site's player
//! page, hls.js) may read the director's playlists and redirects and the engines' segments
//! and refusals. The edge holds no cookie and no session, and every URL carries its own
//! token, so `Access-Control-Allow-Origin: *` opens nothing a URL does not already open.
//!
//! Every answer gets the headers ([`cors`]); an `OPTIONS` preflight is answered with the
//! methods and the one request header a player sends beyond the simple ones, `Range`
//! ([`preflight`]).

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Response headers a page's script may read beyond the simple ones (a player sizes and
/// resumes segments with them).
const EXPOSE: &str = "Content-Length, Content-Range, Accept-Ranges, ETag";
/// How long a browser may keep a preflight's answer, seconds.
const MAX_AGE: &str = "86400";

/// Middleware: adds `Access-Control-Allow-Origin: *` and the exposed headers to every answer.
pub(crate) async fn cors(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE),
    );
    response
}

/// `OPTIONS`: a preflight's answer, `GET` with a `Range` header allowed from any origin.
pub(crate) async fn preflight() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Range"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(MAX_AGE),
    );
    response
}
