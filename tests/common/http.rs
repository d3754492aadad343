//! HTTP on loopback, both ways: a tiny file server for ingest sources ([`HttpServer`], HLS
//! playlists from [`hls_playlist`]), and a client for the stations' `/metrics`, status pages
//! and the HLS gateway ([`get`], [`Scrape`]).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};

/// A tiny HTTP/1.1 file server on 127.0.0.1 for ingest tests: `GET /name` answers the bytes
/// registered under `name`; a name with several versions answers the next version on each
/// request (the last one from then on), to play a source that changes during ingest. A name
/// put with [`HttpServer::put_gated`] answers its odd requests at once and its even ones only
/// once its gate opens (an ingest reads every segment twice, to hash it and to push it: it
/// then stalls on the push), and one put with [`HttpServer::put_slow`] answers every request
/// after a delay.
pub struct HttpServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    files: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Served>>>,
    task: tokio::task::JoinHandle<()>,
}

/// What the server answers for one name.
#[derive(Clone, Default)]
struct Served {
    versions: Vec<Vec<u8>>,
    gate: Option<tokio::sync::watch::Receiver<bool>>,
    delay: Duration,
    requests: usize,
}

/// Opens the gate of a name put with [`HttpServer::put_gated`].
pub struct Gate(tokio::sync::watch::Sender<bool>);

impl Gate {
    /// Lets the held and later requests through.
    pub fn open(&self) {
        let _ = self.0.send(true);
    }
}

impl HttpServer {
    /// Starts the server.
    pub async fn start() -> Result<Self> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let files: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Served>>> =
            Default::default();
        let served = files.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let files = served.clone();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 65536 {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&req);
                    let path = text
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or("/")
                        .trim_start_matches('/')
                        .to_string();
                    let found = files.lock().ok().and_then(|mut m| {
                        let served = m.get_mut(&path)?;
                        served.requests += 1;
                        let gate = served.gate.clone().filter(|_| served.requests % 2 == 0);
                        let versions = &mut served.versions;
                        let body = if versions.len() > 1 {
                            Some(versions.remove(0))
                        } else {
                            versions.first().cloned()
                        };
                        Some((body, gate, served.delay))
                    });
                    let (body, gate, delay) = found.unwrap_or_default();
                    if let Some(mut gate) = gate {
                        // Held until the test opens the gate (or the server is dropped).
                        if gate.wait_for(|open| *open).await.is_err() {
                            return;
                        }
                    }
                    tokio::time::sleep(delay).await;
                    let head = match &body {
                        Some(b) => format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            b.len()
                        ),
                        None => {
                            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                                .to_string()
                        }
                    };
                    let _ = sock.write_all(head.as_bytes()).await;
                    if let Some(b) = body {
                        let _ = sock.write_all(&b).await;
                    }
                    let _ = sock.shutdown().await;
                });
            }
        });
        Ok(Self { base, files, task })
    }

    /// Serves `bytes` at `/name`.
    pub fn put(&self, name: &str, bytes: Vec<u8>) {
        self.put_versions(name, vec![bytes]);
    }

    /// Serves `versions[0]` at the first request of `/name`, `versions[1]` at the second, ...
    pub fn put_versions(&self, name: &str, versions: Vec<Vec<u8>>) {
        self.serve(
            name,
            Served {
                versions,
                ..Served::default()
            },
        );
    }

    /// Serves `bytes` at `/name`: the first, third, ... request at once, the second, fourth,
    /// ... once the returned gate is opened.
    pub fn put_gated(&self, name: &str, bytes: Vec<u8>) -> Gate {
        let (open, gate) = tokio::sync::watch::channel(false);
        self.serve(
            name,
            Served {
                versions: vec![bytes],
                gate: Some(gate),
                ..Served::default()
            },
        );
        Gate(open)
    }

    /// Serves `bytes` at `/name`, each request after `delay`.
    pub fn put_slow(&self, name: &str, bytes: Vec<u8>, delay: Duration) {
        self.serve(
            name,
            Served {
                versions: vec![bytes],
                delay,
                ..Served::default()
            },
        );
    }

    fn serve(&self, name: &str, served: Served) {
        if let Ok(mut m) = self.files.lock() {
            m.insert(name.to_string(), served);
        }
    }

    /// The URL of `/name`.
    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HLS VOD media playlist over `segments` (`(uri, seconds)`), with an `#EXT-X-MAP` when
/// `init` is given.
pub fn hls_playlist(segments: &[(&str, f32)], init: Option<&str>) -> String {
    use std::fmt::Write;
    let mut s = String::from("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:4\n");
    s.push_str("#EXT-X-PLAYLIST-TYPE:VOD\n");
    if let Some(init) = init {
        let _ = writeln!(s, "#EXT-X-MAP:URI=\"{init}\"");
    }
    for (uri, secs) in segments {
        let _ = writeln!(s, "#EXTINF:{secs:.3},\n{uri}");
    }
    s.push_str("#EXT-X-ENDLIST\n");
    s
}

/// What a GET answered.
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The `Content-Range` header, if any.
    pub content_range: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// GETs `url` with a real HTTP client, with a `Range` header when given; any status is an
/// answer (not an error), bodies up to 512 MiB.
pub fn get(url: &str, range: Option<&str>) -> Result<Reply> {
    let range: Vec<(&str, &str)> = range.map(|r| ("Range", r)).into_iter().collect();
    get_with(url, &range)
}

/// As [`get`], with these request headers (`Host`, `Range`, ...).
pub fn get_with(url: &str, headers: &[(&str, &str)]) -> Result<Reply> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let mut request = agent.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request.call().with_context(|| format!("GET {url}"))?;
    let status = response.status().as_u16();
    let content_range = response
        .headers()
        .get("content-range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response
        .body_mut()
        .with_config()
        .limit(512 * 1024 * 1024)
        .read_to_vec()?;
    Ok(Reply {
        status,
        content_range,
        body,
    })
}

/// As [`get`] (no range), from an async test: off the runtime's workers.
pub async fn get_async(url: String) -> Result<Reply> {
    tokio::task::spawn_blocking(move || get(&url, None)).await?
}

/// A scrape of a `/metrics` page: each `name{labels}` series and its value.
pub struct Scrape(pub BTreeMap<String, f64>);

impl Scrape {
    /// Scrapes `url` (off the runtime's workers); a status other than 200 is an error.
    pub async fn of(url: &str) -> Result<Self> {
        let reply = get_async(url.to_string()).await?;
        anyhow::ensure!(reply.status == 200, "scrape answered {}", reply.status);
        Ok(Self::parse(&reply.text()))
    }

    /// Scrapes `url` from a blocking test.
    pub fn blocking(url: &str) -> Result<Self> {
        let reply = get(url, None)?;
        anyhow::ensure!(reply.status == 200, "scrape answered {}", reply.status);
        Ok(Self::parse(&reply.text()))
    }

    /// Scrapes `url` from host `netns` (a network namespace the test process is not in),
    /// with `curl` run there.
    pub fn in_netns(netns: &str, url: &str) -> Result<Self> {
        let mut curl = std::process::Command::new("ip");
        curl.args([
            "netns",
            "exec",
            netns,
            "curl",
            "-sf",
            "--max-time",
            "10",
            url,
        ]);
        Ok(Self::parse(&crate::cli::run(&mut curl)?))
    }

    /// The `name{labels} value` lines of Prometheus text.
    pub fn parse(text: &str) -> Self {
        Self(
            text.lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .filter_map(|l| {
                    let (k, v) = l.rsplit_once(' ')?;
                    Some((k.to_string(), v.parse().ok()?))
                })
                .collect(),
        )
    }

    /// The value of series `series` (a name with its labels, as exported).
    pub fn get(&self, series: &str) -> Option<f64> {
        self.0.get(series).copied()
    }

    /// The sum of every series of `name` whose labels contain `label` (e.g. `kind="copy"`;
    /// empty: all of them).
    pub fn sum(&self, name: &str, label: &str) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| {
                (k.as_str() == name || k.starts_with(&format!("{name}{{"))) && k.contains(label)
            })
            .map(|(_, v)| v)
            .sum()
    }
}

/// The value of series `series` (with its labels) in a scrape of `url`; an error when it is
/// not exported.
pub fn metric(url: &str, series: &str) -> Result<f64> {
    let scrape = Scrape::blocking(url)?;
    scrape
        .get(series)
        .with_context(|| format!("no {series} in\n{:#?}", scrape.0))
}

/// What one GET answered, redirects not followed: the reply and its `Location`, if any.
pub struct Once {
    /// The reply.
    pub reply: Reply,
    /// The `Location` header (of a 3xx).
    pub location: Option<String>,
}

/// GETs `url` once with these request headers, not following a redirect: a 302 is an
/// answer, with its `Location`. Bodies up to 512 MiB.
pub fn get_once(url: &str, headers: &[(&str, &str)]) -> Result<Once> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let mut request = agent.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request.call().with_context(|| format!("GET {url}"))?;
    let header = |name: &str| {
        (response.headers().get(name))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (content_range, location) = (header("content-range"), header("location"));
    let status = response.status().as_u16();
    let body = (response.body_mut().with_config())
        .limit(512 * 1024 * 1024)
        .read_to_vec()?;
    Ok(Once {
        reply: Reply {
            status,
            content_range,
            body,
        },
        location,
    })
}
