//! A station's metrics (the network management system's view of one peer), served as
//! Prometheus / OpenMetrics text at `http://ADDR:PORT/metrics` with `--metrics ADDR:PORT`.
//!
//! One [`Metrics`] is shared by a station's director and engines: the director mirrors what
//! it already counts ([`vodmesh_proto::director::Activity`], its engines' load and storage)
//! into it after every event it handles, and counts what only it sees (hits, bytes streamed,
//! registry queries); the engines count the bytes they receive (copies, ingest). Everything
//! is an atomic, so a scrape never waits for the director's event loop.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use vodmesh_proto::director::Activity;
use vodmesh_proto::station::EngineInfo;

/// A label set of one string: `kind`, `reason`, `outcome` or `via`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: String,
}

/// An engine, by peer id.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EngineLabel {
    engine: String,
}

/// One disk of one engine.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DiskLabel {
    engine: String,
    disk: String,
}

/// The counters and gauges of one station; a cheap handle (clones share them).
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    streams_active: Gauge,
    streams_started: Counter,
    streams_stopped: Family<Kind, Counter>,
    preloads: Counter,
    bulk_connections: Counter,
    bytes_out: Counter,
    bytes_in: Family<Kind, Counter>,
    copies: Counter,
    hits: Counter,
    locates: Counter,
    misses: Counter,
    replications: Counter,
    swaps: Counter,
    source_failovers: Counter,
    copies_declined: Counter,
    replicas_unplaced: Counter,
    refusals: Family<Kind, Counter>,
    dht_queries: Family<Kind, Counter>,
    dht_started: Counter,
    dht_latency: Histogram,
    engine_streams: Family<EngineLabel, Gauge>,
    engine_max_streams: Family<EngineLabel, Gauge>,
    engine_up: Family<EngineLabel, Gauge>,
    store_used: Family<DiskLabel, Gauge>,
    store_capacity: Family<DiskLabel, Gauge>,
    registry_peers: Gauge,
    /// The director's engines as of its last event, for the status page's own station
    /// (the registry's copy is up to a republish interval old).
    engines: std::sync::Mutex<Vec<EngineInfo>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics, every counter at zero, registered under the `vodmesh_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("vodmesh");
        let inner = Inner {
            streams_active: Gauge::default(),
            streams_started: Counter::default(),
            streams_stopped: Family::default(),
            preloads: Counter::default(),
            bulk_connections: Counter::default(),
            bytes_out: Counter::default(),
            bytes_in: Family::default(),
            copies: Counter::default(),
            hits: Counter::default(),
            locates: Counter::default(),
            misses: Counter::default(),
            replications: Counter::default(),
            swaps: Counter::default(),
            source_failovers: Counter::default(),
            copies_declined: Counter::default(),
            replicas_unplaced: Counter::default(),
            refusals: Family::default(),
            dht_queries: Family::default(),
            dht_started: Counter::default(),
            // 1 ms .. ~16 s.
            dht_latency: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            engine_streams: Family::default(),
            engine_max_streams: Family::default(),
            engine_up: Family::default(),
            store_used: Family::default(),
            store_capacity: Family::default(),
            registry_peers: Gauge::default(),
            engines: Default::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "streams_active",
            "Streams being served now, over all engines",
            inner.streams_active.clone(),
        );
        r.register(
            "streams_started",
            "Streams an engine took over (started serving)",
            inner.streams_started.clone(),
        );
        r.register(
            "streams_stopped",
            "Streams that ended, by outcome (complete: the segment's end; early: the console went away)",
            inner.streams_stopped.clone(),
        );
        r.register(
            "preloads",
            "Engines told to read a segment ahead of a console",
            inner.preloads.clone(),
        );
        r.register(
            "bulk_connections",
            "Bulk connections (TLS, no yamux) consoles opened to engines, handshake done",
            inner.bulk_connections.clone(),
        );
        r.register(
            "stream_bytes_out",
            "Bytes streamed to consoles",
            inner.bytes_out.clone(),
        );
        r.register(
            "bytes_in",
            "Segment bytes received and stored, by way (copy, ingest)",
            inner.bytes_in.clone(),
        );
        r.register(
            "copies",
            "Segments copied in from another engine",
            inner.copies.clone(),
        );
        r.register(
            "hits",
            "Segment locations answered from this station's own engines (those named ahead too)",
            inner.hits.clone(),
        );
        r.register(
            "locates",
            "Locate requests from consoles (one may name several segments: Locate { ahead })",
            inner.locates.clone(),
        );
        r.register(
            "misses",
            "Segments asked of this station that it did not hold (filled from another station)",
            inner.misses.clone(),
        );
        r.register(
            "replications",
            "Segments copied to another engine because every holder was at its stream limit",
            inner.replications.clone(),
        );
        r.register(
            "swaps",
            "Consoles that sought past a filling copy, handed to an engine with the whole segment",
            inner.swaps.clone(),
        );
        r.register(
            "source_failovers",
            "Copies that lost their source and resumed from the next one",
            inner.source_failovers.clone(),
        );
        r.register(
            "copies_declined",
            "Copies (misses, replicas) declined for want of room; the console went to a holder",
            inner.copies_declined.clone(),
        );
        r.register(
            "replicas_unplaced",
            "Replicas asked for (ingest --replicas) that no other station with room took (content manager)",
            inner.replicas_unplaced.clone(),
        );
        r.register(
            "token_refusals",
            "Requests refused for want of a valid token, by kind (stream: console token, copy: engine token)",
            inner.refusals.clone(),
        );
        r.register(
            "dht_queries",
            "Registry (Kademlia) queries finished, by kind",
            inner.dht_queries.clone(),
        );
        r.register(
            "dht_queries_started",
            "Registry (Kademlia) queries started; less the finished ones (dht_queries), those in flight",
            inner.dht_started.clone(),
        );
        r.register(
            "dht_query_seconds",
            "Registry (Kademlia) query latency",
            inner.dht_latency.clone(),
        );
        r.register(
            "engine_streams",
            "Streams an engine serves now",
            inner.engine_streams.clone(),
        );
        r.register(
            "engine_max_streams",
            "Streams an engine serves at most",
            inner.engine_max_streams.clone(),
        );
        r.register(
            "engine_up",
            "Whether an engine answers its director (1) or not (0)",
            inner.engine_up.clone(),
        );
        r.register(
            "store_used_bytes",
            "Segment bytes stored, per engine and disk",
            inner.store_used.clone(),
        );
        r.register(
            "store_capacity_bytes",
            "Segment bytes an engine's disk may hold (0: bounded only by the disk)",
            inner.store_capacity.clone(),
        );
        r.register(
            "registry_peers",
            "Directors in the registry's routing table that this station is connected to",
            inner.registry_peers.clone(),
        );
        // Every label a family will have is there from the start, at 0: a scrape shows the
        // whole set of series, and rate() of a first copy or query starts from a sample.
        for way in ["copy", "ingest"] {
            drop(inner.bytes_in.get_or_create(&kind(way)));
        }
        for query in QUERY_KINDS {
            drop(inner.dht_queries.get_or_create(&kind(query)));
        }
        let inner = Inner { registry, ..inner };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Everything, as OpenMetrics text (what `/metrics` serves).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry);
        out
    }

    /// Mirrors the director's counters and its engines' state.
    pub(crate) fn sync_director(&self, activity: &Activity, engines: &[Option<EngineInfo>]) {
        let m = &*self.inner;
        let set = |c: &Counter, v: u64| c.inner().store(v, std::sync::atomic::Ordering::Relaxed);
        set(&m.streams_started, activity.takeovers);
        set(&m.preloads, activity.preloads);
        set(&m.misses, activity.misses);
        set(&m.replications, activity.replications);
        set(&m.swaps, activity.swaps);
        set(&m.source_failovers, activity.source_failovers);
        set(&m.copies_declined, activity.copies_declined);
        set(&m.replicas_unplaced, activity.replicas_unplaced);
        for (family, label, value) in [
            (&m.streams_stopped, "complete", activity.stops_complete),
            (&m.streams_stopped, "early", activity.stops_early),
            (&m.refusals, "stream", activity.refused_streams),
            (&m.refusals, "copy", activity.refused_copies),
        ] {
            set(&family.get_or_create(&kind(label)), value);
        }
        let mut active = 0i64;
        for e in engines.iter().flatten() {
            let engine = EngineLabel {
                engine: e.peer_id.to_string(),
            };
            active += i64::from(e.streams);
            m.engine_streams
                .get_or_create(&engine)
                .set(i64::from(e.streams));
            m.engine_max_streams
                .get_or_create(&engine)
                .set(i64::from(e.max_streams));
            m.engine_up.get_or_create(&engine).set(i64::from(e.up));
            for d in &e.disks {
                let disk = DiskLabel {
                    engine: engine.engine.clone(),
                    disk: d.path.clone(),
                };
                m.store_used.get_or_create(&disk).set(gauge(d.used));
                m.store_capacity.get_or_create(&disk).set(gauge(d.capacity));
            }
        }
        m.streams_active.set(active);
        if let Ok(mut snapshot) = m.engines.lock() {
            snapshot.clear();
            snapshot.extend(engines.iter().flatten().cloned());
        }
    }

    /// The station's running totals, as its record carries them.
    pub fn counters(&self) -> vodmesh_proto::station::Counters {
        let m = &*self.inner;
        vodmesh_proto::station::Counters {
            bytes_out: m.bytes_out.get(),
            copies: m.copies.get(),
            misses: m.misses.get(),
        }
    }

    /// Bulk connections the station's engines took (their TLS handshakes done).
    pub fn bulk_connections(&self) -> u64 {
        self.inner.bulk_connections.get()
    }

    /// The director's engines as of its last event (empty before it has any).
    pub fn engines(&self) -> Vec<EngineInfo> {
        self.inner
            .engines
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    /// The connected directors of the registry's routing table, as the director counted
    /// them last.
    pub(crate) fn set_registry_peers(&self, peers: usize) {
        self.inner.registry_peers.set(gauge(peers as u64));
    }

    /// A segment location answered from this station's own engines.
    pub(crate) fn hit(&self) {
        self.inner.hits.inc();
    }

    /// A console asked where a segment is (`Locate`).
    pub(crate) fn locate(&self) {
        self.inner.locates.inc();
    }

    /// A console's bulk connection to an engine completed its handshake.
    pub(crate) fn bulk_connection(&self) {
        self.inner.bulk_connections.inc();
    }

    /// A stream ended after sending `bytes`.
    pub(crate) fn streamed(&self, bytes: u64) {
        self.inner.bytes_out.inc_by(bytes);
    }

    /// `bytes` of a segment received and stored, by `via` (`copy` or `ingest`).
    pub(crate) fn received(&self, via: &str, bytes: u64) {
        self.inner.bytes_in.get_or_create(&kind(via)).inc_by(bytes);
    }

    /// A segment copied in from another engine.
    pub(crate) fn copied(&self) {
        self.inner.copies.inc();
    }

    /// The registry queries started so far (the registry counts them).
    pub(crate) fn set_dht_started(&self, started: u64) {
        (self.inner.dht_started.inner()).store(started, std::sync::atomic::Ordering::Relaxed);
    }

    /// A registry query of `kind` finished after `took`.
    pub(crate) fn dht_query(&self, kind_name: &str, took: Option<Duration>) {
        self.inner.dht_queries.get_or_create(&kind(kind_name)).inc();
        if let Some(took) = took {
            self.inner.dht_latency.observe(took.as_secs_f64());
        }
    }
}

/// The directors of `kad`'s routing table it is connected to now (`vodmesh_registry_peers`).
pub(crate) fn connected_peers<S: libp2p::kad::store::RecordStore + Send + 'static>(
    kad: &mut libp2p::kad::Behaviour<S>,
) -> usize {
    (kad.kbuckets())
        .map(|b| {
            (b.iter())
                .filter(|e| e.status == libp2p::kad::NodeStatus::Connected)
                .count()
        })
        .sum()
}

/// Every `kind` of [`query_kind`].
const QUERY_KINDS: [&str; 6] = [
    "bootstrap",
    "get_closest_peers",
    "get_providers",
    "provide",
    "get_record",
    "put_record",
];

/// The `kind` label of a finished registry query (one of [`QUERY_KINDS`]).
pub(crate) fn query_kind(result: &libp2p::kad::QueryResult) -> &'static str {
    use libp2p::kad::QueryResult as Q;
    match result {
        Q::Bootstrap(_) => "bootstrap",
        Q::GetClosestPeers(_) => "get_closest_peers",
        Q::GetProviders(_) => "get_providers",
        Q::StartProviding(_) | Q::RepublishProvider(_) => "provide",
        Q::GetRecord(_) => "get_record",
        Q::PutRecord(_) | Q::RepublishRecord(_) => "put_record",
    }
}

/// What the HTTP server of `--metrics` needs: the metrics, and the director's registry for
/// the status page's view of the swarm.
#[derive(Clone)]
pub(crate) struct Http {
    /// The station's metrics.
    pub(crate) metrics: Metrics,
    /// The director's registry, walked for the sparklines.
    pub(crate) registry: vodmesh_registry::RegistryHandle,
    /// Its walks for `/status.json`, shared by the requests of two seconds (the page polls
    /// every two; any number of browsers may have it open).
    pub(crate) walks: vodmesh_registry::RecentWalk,
    /// The director's peer id.
    pub(crate) local: libp2p::PeerId,
    /// A director's server (metrics and the status page), not an engine process's (metrics).
    pub(crate) director: bool,
    /// What `/readyz` decides from, besides the metrics.
    pub(crate) ready: Ready,
    /// The last ten minutes of every station, for the status page's sparklines (filled by
    /// [`sample`] on a director's server).
    pub(crate) history: Arc<std::sync::Mutex<crate::history::History>>,
}

/// What `/readyz` reads besides the metrics ([`crate::health`]).
#[derive(Clone, Debug)]
pub(crate) struct Ready {
    /// The station was given `--bootstrap`.
    pub(crate) bootstrap: bool,
    /// Engines it was started with.
    pub(crate) engines: usize,
    /// Its engines' tokens, when they need them (an enrolled station, the auth station).
    pub(crate) tokens: Option<crate::auth::engines::EngineTokens>,
    /// Whether it is draining.
    pub(crate) draining: tokio::sync::watch::Receiver<bool>,
}

impl Ready {
    /// The facts of readiness now.
    fn facts(&self, metrics: &Metrics) -> crate::health::Facts {
        let engines = metrics.engines();
        let tokens_needed = self.tokens.as_ref().map_or(0, |_| self.engines);
        let tokens_held = (self.tokens.as_ref()).map_or(0, |t| {
            (0..self.engines).filter(|i| t.get(*i).is_some()).count()
        });
        crate::health::Facts {
            draining: *self.draining.borrow(),
            bootstrap: self.bootstrap,
            registry_peers: u64::try_from(metrics.inner.registry_peers.get()).unwrap_or(0),
            engines: self.engines,
            engines_up: engines.iter().filter(|e| e.up).count(),
            tokens_needed,
            tokens_held,
        }
    }
}

/// Serves `/metrics`, `/healthz`, `/readyz`, `/status.json` and `/` on `listener` until
/// `shutdown` turns true.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    http: Http,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready));
    let app = if http.director {
        app.route("/status.json", get(status_json))
            .route("/", get(status_page))
    } else {
        app
    };
    let app = app.with_state(http);
    let stop = async move {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
    };
    // The edge's cuts and a cap of its own: idle or half-sent connections are closed, and a
    // flood of them takes no more descriptors from the station.
    let listener = crate::edge::Guarded::new(listener, crate::edge::Limits::METRICS, None);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::warn!(error = %e, "the metrics server failed");
    }
}

/// Samples the swarm into `http.history` every [`crate::history::EVERY`] until `shutdown`:
/// this station from its metrics, the others from their station records.
pub(crate) async fn sample(http: Http, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut every = tokio::time::interval(crate::history::EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        // No more stations than the history keeps: a walk of a large swarm every 10 s on
        // every station would cost the registry more than the pictures are worth.
        let limits = vodmesh_registry::WalkLimits {
            max_stations: crate::history::MAX_STATIONS,
            ..Default::default()
        };
        let walk = vodmesh_registry::walk(&http.registry, http.local, limits);
        let stations = match tokio::time::timeout(crate::history::EVERY, walk).await {
            Ok(Ok(stations)) => stations,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "sparklines: the swarm walk failed");
                continue;
            }
            Err(_) => continue,
        };
        let now = vodmesh_proto::time::now_ms();
        let Ok(mut history) = http.history.lock() else {
            return;
        };
        for (record, _) in &stations {
            let (streams, counters) = if record.director == http.local {
                let engines = http.metrics.engines();
                let streams = engines.iter().map(|e| u64::from(e.streams)).sum();
                (streams, http.metrics.counters())
            } else {
                let streams = record.engines.iter().map(|e| u64::from(e.streams)).sum();
                (streams, record.counters)
            };
            history.record(now, record.director, streams, counters);
        }
        history.forget_gone(now);
    }
}

async fn metrics_text(
    axum::extract::State(http): axum::extract::State<Http>,
) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        http.metrics.encode(),
    )
}

/// `/readyz`: 200 `ready`, or 503 and the first reason not to be ([`crate::health`]).
async fn ready(
    axum::extract::State(http): axum::extract::State<Http>,
) -> (axum::http::StatusCode, String) {
    match crate::health::readiness(&http.ready.facts(&http.metrics)) {
        Ok(()) => (axum::http::StatusCode::OK, "ready\n".to_string()),
        Err(why) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("{why}\n"),
        ),
    }
}

async fn status_json(
    axum::extract::State(http): axum::extract::State<Http>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let walk = http.walks.stations();
    let body = match tokio::time::timeout(Duration::from_secs(10), walk).await {
        Ok(Ok(stations)) => {
            let mut stations: Vec<_> = stations.iter().map(|(r, _)| r.clone()).collect();
            // This station's engines as they are now, not as last republished.
            let now = http.metrics.engines();
            if let Some(own) = stations.iter_mut().find(|s| s.director == http.local)
                && !now.is_empty()
            {
                own.engines = now;
            }
            let mut json = crate::status::to_json(http.local, &stations);
            if let (Ok(history), Some(list)) =
                (http.history.lock(), json["stations"].as_array_mut())
            {
                for station in list {
                    let peer = station["director"]["peer_id"].as_str();
                    let peer = peer.and_then(|p| p.parse::<libp2p::PeerId>().ok());
                    station["history"] =
                        peer.map_or(serde_json::Value::Null, |p| history.to_json(&p));
                }
            }
            json.to_string()
        }
        Ok(Err(e)) => {
            return (axum::http::StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response();
        }
        Err(_) => {
            return (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "the swarm walk timed out",
            )
                .into_response();
        }
    };
    (
        [
            (axum::http::header::CONTENT_TYPE, "application/json"),
            (axum::http::header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn status_page() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        crate::status::PAGE,
    )
}

fn kind(s: &str) -> Kind {
    Kind { kind: s.to_owned() }
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_every_family() {
        let m = Metrics::new();
        m.hit();
        m.locate();
        m.streamed(1000);
        m.bulk_connection();
        m.received("copy", 5);
        m.dht_query("get_record", Some(Duration::from_millis(3)));
        let activity = Activity {
            takeovers: 2,
            stops_complete: 1,
            refused_streams: 4,
            copies_declined: 3,
            replicas_unplaced: 2,
            ..Default::default()
        };
        m.sync_director(&activity, &[]);
        let text = m.encode();
        for line in [
            "vodmesh_hits_total 1",
            "vodmesh_locates_total 1",
            "vodmesh_stream_bytes_out_total 1000",
            "vodmesh_bulk_connections_total 1",
            "vodmesh_bytes_in_total{kind=\"copy\"} 5",
            "vodmesh_streams_started_total 2",
            "vodmesh_streams_stopped_total{kind=\"complete\"} 1",
            "vodmesh_token_refusals_total{kind=\"stream\"} 4",
            "vodmesh_copies_declined_total 3",
            "vodmesh_replicas_unplaced_total 2",
            "vodmesh_dht_queries_total{kind=\"get_record\"} 1",
            "vodmesh_dht_query_seconds_count 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
