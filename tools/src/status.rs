//! `vodmesh status`: every live station of the swarm, found through the registry, with what
//! each director counts of its playback (streams, misses, replications, swaps, refusals).

use anyhow::{Result, bail};
use libp2p::Multiaddr;
use serde_json::{Value, json};
use vodmesh_console::client::DirectorClient;
use vodmesh_proto::director::{Activity, Request, Response};
use vodmesh_proto::station::{RecordError, StationRecord};
use vodmesh_proto::time::now_ms;

/// One station: its signed record and, when its director answered, its activity.
#[derive(Clone, Debug)]
pub struct StationStatus {
    /// The station record.
    pub record: StationRecord,
    /// What its director counted.
    pub activity: Option<Activity>,
}

/// Every station of the swarm, each with its director's activity (asked of each director at
/// once; one that does not answer in two seconds is listed without it).
pub async fn fetch(node: &Multiaddr) -> Result<Vec<StationStatus>> {
    let records = stations(node).await?;
    let asks = records.into_iter().map(|record| async move {
        let activity = match record.addrs.first() {
            Some(addr) => tokio::time::timeout(std::time::Duration::from_secs(2), async {
                let client = DirectorClient::connect(addr, None).await.ok()?;
                match client.request(Request::Activity).await.ok()? {
                    Response::Activity(a) => Some(a),
                    _ => None,
                }
            })
            .await
            .ok()
            .flatten(),
            None => None,
        };
        StationStatus { record, activity }
    });
    Ok(futures::future::join_all(asks).await)
}

/// Asks the director at `node` to walk the swarm; returns every station record that verifies.
pub async fn stations(node: &Multiaddr) -> Result<Vec<StationRecord>> {
    let client = DirectorClient::connect(node, None).await?;
    match client.request(Request::Swarm).await? {
        Response::Swarm(records) => {
            let now = now_ms();
            let mut stations = Vec::new();
            for signed in &records {
                match StationRecord::verify(signed, now) {
                    Ok(rec) => stations.push(rec),
                    // A stopped station's last record can expire on the way here.
                    Err(RecordError::Expired) => {}
                    Err(e) => tracing::warn!(error = %e, "ignoring an invalid station record"),
                }
            }
            Ok(stations)
        }
        Response::Error(e) => bail!("{}", e.message),
        other => bail!("unexpected answer from the director: {other:?}"),
    }
}

/// The JSON form: `{"stations": [...]}`.
pub fn to_json(stations: &[StationStatus]) -> Value {
    let list: Vec<Value> = stations
        .iter()
        .map(|st| {
            let s = &st.record;
            json!({
                "director": { "peer_id": s.director.to_string(), "addrs": addrs(&s.addrs) },
                "engines": s.engines.iter().map(|e| json!({
                    "peer_id": e.peer_id.to_string(),
                    "addrs": addrs(&e.addrs),
                    "up": e.up,
                    "streams": e.streams,
                    "max_streams": e.max_streams,
                    "used": e.used,
                    "capacity": e.capacity,
                })).collect::<Vec<_>>(),
                "region": s.region,
                "coords": s.coords.map(|(lat, lon)| json!([lat, lon])),
                "bandwidth_mbps": s.bandwidth_mbps,
                "roles": {
                    "home": s.roles.home,
                    "content_manager": s.roles.content_manager,
                    "auth": s.roles.auth,
                },
                "issued_ms": s.issued_ms,
                "expires_ms": s.expires_ms,
                "activity": st.activity.map(|a| json!({
                    "active_streams": a.active,
                    "takeovers": a.takeovers,
                    "stops_complete": a.stops_complete,
                    "stops_early": a.stops_early,
                    "preloads": a.preloads,
                    "misses": a.misses,
                    "replications": a.replications,
                    "swaps": a.swaps,
                    "source_failovers": a.source_failovers,
                    "refused_streams": a.refused_streams,
                    "refused_copies": a.refused_copies,
                })),
            })
        })
        .collect();
    json!({ "stations": list })
}

fn addrs(list: &[Multiaddr]) -> Vec<String> {
    list.iter().map(ToString::to_string).collect()
}

/// The text form, one block per station.
pub fn to_text(stations: &[StationStatus]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "{} station(s)", stations.len());
    for st in stations {
        let s = &st.record;
        let mut roles = Vec::new();
        if s.roles.home {
            roles.push("home");
        }
        if s.roles.content_manager {
            roles.push("content-manager");
        }
        if s.roles.auth {
            roles.push("auth");
        }
        let _ = writeln!(
            out,
            "station {}{}{}",
            s.director,
            s.region
                .as_ref()
                .map(|r| format!("  region={r}"))
                .unwrap_or_default(),
            if roles.is_empty() {
                String::new()
            } else {
                format!("  roles={}", roles.join(","))
            },
        );
        for a in &s.addrs {
            let _ = writeln!(out, "  director {a}");
        }
        if let Some(a) = &st.activity {
            let _ = writeln!(
                out,
                "  streams {} active, {} served; misses {}, replications {}, swaps {}, source failovers {}; refused {} streams, {} copies",
                a.active,
                a.stops_complete + a.stops_early,
                a.misses,
                a.replications,
                a.swaps,
                a.source_failovers,
                a.refused_streams,
                a.refused_copies
            );
        }
        for e in &s.engines {
            let _ = writeln!(
                out,
                "  engine {} {} streams {}/{}",
                e.peer_id,
                if e.up { "up" } else { "down" },
                e.streams,
                e.max_streams
            );
            for a in &e.addrs {
                let _ = writeln!(out, "    {a}");
            }
        }
    }
    out
}
