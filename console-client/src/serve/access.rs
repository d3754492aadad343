//! Who may use the gateway. Its requests are made with the user's console token, so whoever
//! reaches it watches as that user:
//!
//! - **Bound beyond loopback** (`--http 0.0.0.0:PORT`, a LAN address), every path starts with
//!   an access key, `/<key>/...`: generated at start unless `--access-key` gives one, printed
//!   once in the URLs the gateway shows. Pages and playlists link relatively, so a player
//!   that opened the key's URL stays under it. Without the key: 403.
//! - **On loopback without a key**, the `Host` header must name the machine itself
//!   (`localhost`, an IP address): a web page on another site whose name an attacker pointed at
//!   127.0.0.1 (DNS rebinding) sends its own name, and is refused with 403.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::RngCore;

/// Bytes of randomness in a generated access key (hex in the URL).
const KEY_BYTES: usize = 16;

/// The gateway's access rule, set when it binds.
#[derive(Clone, Debug)]
pub struct Access {
    /// The access key, when paths must start with it.
    key: Option<String>,
}

/// Why a request is refused (403, with this line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The path does not start with the access key.
    NoKey,
    /// A loopback gateway asked under another host's name.
    ForeignHost,
}

impl Refusal {
    fn line(self) -> &'static str {
        match self {
            Refusal::NoKey => {
                "this gateway needs its access key: use the URL `vodmesh-console serve` printed\n"
            }
            Refusal::ForeignHost => {
                "this gateway answers only requests for this machine (Host: localhost or an IP \
                 address); give --access-key to serve it under other names\n"
            }
        }
    }
}

impl Access {
    /// The rule for a gateway bound to `bound`: `key` if given, a fresh one if `bound` is not
    /// loopback, else none (the `Host` check guards it).
    pub fn new(bound: SocketAddr, key: Option<String>) -> Self {
        let key = key.or_else(|| (!bound.ip().is_loopback()).then(generate));
        Self { key }
    }

    /// What the gateway's URLs start with after `http://ADDR:PORT`: `/<key>` or nothing.
    pub fn prefix(&self) -> String {
        self.key
            .as_ref()
            .map(|k| format!("/{k}"))
            .unwrap_or_default()
    }

    /// Decides on a request for `path` under `host` (its `Host` header): the path the routes
    /// see (the key taken off; empty for the key alone), or why not.
    pub(super) fn admit(&self, host: Option<&str>, path: &str) -> Result<String, Refusal> {
        let Some(key) = &self.key else {
            return match host {
                Some(host) if !names_this_machine(host) => Err(Refusal::ForeignHost),
                _ => Ok(path.to_string()),
            };
        };
        let trimmed = path.strip_prefix('/').ok_or(Refusal::NoKey)?;
        let (given, rest) = trimmed.split_at(trimmed.find('/').unwrap_or(trimmed.len()));
        // Compared as hashes, so that the time taken tells nothing of how much of a guess
        // was right (blake3's `Hash` compares in constant time).
        if blake3::hash(given.as_bytes()) != blake3::hash(key.as_bytes()) {
            return Err(Refusal::NoKey);
        }
        // `/<key>` alone is answered with a redirect to `/<key>/`, under which relative links
        // resolve.
        Ok(rest.to_string())
    }
}

/// A fresh access key: 16 random bytes in hex.
fn generate() -> String {
    let mut bytes = [0u8; KEY_BYTES];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a `Host` header names this machine: `localhost` or an IP address, with or without
/// a port.
fn names_this_machine(host: &str) -> bool {
    if host.parse::<IpAddr>().is_ok() {
        return true;
    }
    let name = match host.strip_prefix('[') {
        // `[::1]:8080`
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok()
}

/// The middleware that applies `access` before routing: refuses, or routes the request under
/// its path without the key.
pub(super) async fn guard(
    State(access): State<Arc<Access>>,
    mut req: Request,
    next: Next,
) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    match access.admit(host, req.uri().path()) {
        Ok(path) if path.is_empty() => {
            let to = format!("{}/", req.uri().path());
            (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, to)]).into_response()
        }
        Ok(path) => {
            let path_and_query = match req.uri().query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            match path_and_query.parse::<Uri>() {
                Ok(uri) => *req.uri_mut() = uri,
                Err(_) => return StatusCode::BAD_REQUEST.into_response(),
            }
            next.run(req).await
        }
        Err(refusal) => (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            refusal.line(),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(addr: &str, key: Option<&str>) -> Access {
        Access::new(addr.parse().unwrap(), key.map(str::to_string))
    }

    #[test]
    fn beyond_loopback_every_path_starts_with_the_key() {
        let access = at("0.0.0.0:8080", None);
        let prefix = access.prefix();
        assert_eq!(prefix.len(), 1 + 2 * KEY_BYTES);
        let host = Some("192.0.2.7:8080");
        assert_eq!(access.admit(host, &format!("{prefix}/")), Ok("/".into()));
        assert_eq!(access.admit(host, &prefix), Ok("".into()));
        assert_eq!(
            access.admit(host, &format!("{prefix}/abc/index.m3u8")),
            Ok("/abc/index.m3u8".into())
        );
        // Any host name is fine under the key.
        assert!(access.admit(Some("tv.lan"), &format!("{prefix}/")).is_ok());
        for refused in ["/", "/abc/index.m3u8", "/x", &format!("{prefix}x/"), ""] {
            assert_eq!(
                access.admit(host, refused),
                Err(Refusal::NoKey),
                "{refused}"
            );
        }
        // Two gateways, two keys.
        assert_ne!(at("0.0.0.0:8080", None).prefix(), prefix);
    }

    #[test]
    fn on_loopback_only_this_machine_s_names_pass() {
        let access = at("127.0.0.1:8080", None);
        assert_eq!(access.prefix(), "");
        for host in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
            "::1",
        ] {
            assert_eq!(access.admit(Some(host), "/a/"), Ok("/a/".into()), "{host}");
        }
        assert_eq!(access.admit(None, "/"), Ok("/".into()));
        for host in [
            "evil.example:8080",
            "evil.example",
            "127.0.0.1.evil.example",
        ] {
            assert_eq!(
                access.admit(Some(host), "/"),
                Err(Refusal::ForeignHost),
                "{host}"
            );
        }
        // A key given on loopback: the key guards, not the name.
        let keyed = at("127.0.0.1:8080", Some("k3y"));
        assert_eq!(keyed.admit(Some("box.lan"), "/k3y/a/"), Ok("/a/".into()));
        assert_eq!(keyed.admit(Some("127.0.0.1"), "/a/"), Err(Refusal::NoKey));
    }
}
