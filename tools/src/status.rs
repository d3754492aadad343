//! `vodmesh status`: every live station of the swarm, found through the registry, with what
//! each director counts of its playback (streams, misses, replications, swaps, refusals).

use anyhow::{Result, bail};
use libp2p::Multiaddr;
use serde_json::{Value, json};
use vodmesh_client::DirectorClient;
use vodmesh_node::status::{engine_json, membership_json, totals_json};
use vodmesh_proto::director::{Activity, Request, Response};
use vodmesh_proto::station::{EngineTotals, RecordError, StationRecord, human_bytes as human};
use vodmesh_proto::time::now_ms;

/// One station: its signed record and, when its director answered, its activity.
#[derive(Clone, Debug)]
pub struct StationStatus {
    /// The station record.
    pub record: StationRecord,
    /// What its director counted.
    pub activity: Option<Activity>,
}

/// Every station of the swarm, each with its director's activity and its current record
/// (asked of each director at once, since the registry's copy can be a republish interval
/// old; one that does not answer in two seconds is listed as the registry has it).
pub async fn fetch(node: &Multiaddr) -> Result<Vec<StationStatus>> {
    let records = stations(node).await?;
    let asks = records.into_iter().map(|record| async move {
        let fresh = match vodmesh_proto::net::dial_first(&record.addrs) {
            Some(addr) => tokio::time::timeout(std::time::Duration::from_secs(2), async {
                let client = DirectorClient::connect(addr, None).await.ok()?;
                let activity = match client.request(Request::Activity).await.ok()? {
                    Response::Activity(a) => Some(a),
                    _ => None,
                };
                let current = match client.request(Request::Station).await.ok()? {
                    Response::Station(signed) => StationRecord::verify(&signed, now_ms())
                        .ok()
                        .filter(|r| r.director == record.director),
                    _ => None,
                };
                Some((activity, current))
            })
            .await
            .ok()
            .flatten(),
            None => None,
        };
        let (activity, current) = fresh.unwrap_or_default();
        StationStatus {
            record: current.unwrap_or(record),
            activity,
        }
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
                "engines": s.engines.iter().map(engine_json).collect::<Vec<_>>(),
                "programs": st.activity.map(|a| a.programs),
                "region": s.region,
                "coords": s.coords.map(|(lat, lon)| json!([lat, lon])),
                "bandwidth_mbps": s.bandwidth_mbps,
                "roles": {
                    "home": s.roles.home,
                    "content_manager": s.roles.content_manager,
                    "auth": s.roles.auth,
                },
                "membership": membership_json(s),
                "issued_ms": s.issued_ms,
                "expires_ms": s.expires_ms,
                // false: its director did not answer; the rest is its registry record.
                "answered": st.activity.is_some(),
                "activity": st.activity.map(|a| json!({
                    "draining": a.draining,
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
                    "copies_declined": a.copies_declined,
                    "replicas_unplaced": a.replicas_unplaced,
                })),
            })
        })
        .collect();
    let t = Totals::of(stations);
    let mut totals = totals_json(t.stations, t.engines);
    totals["programs"] = json!(t.programs);
    json!({
        "stations": list,
        "totals": totals,
    })
}

/// Sums over the whole swarm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Stations listed.
    pub stations: usize,
    /// Their engines' figures.
    pub engines: EngineTotals,
    /// Programs held, summed over stations (a program on two stations counts twice).
    pub programs: u64,
}

impl Totals {
    /// The totals of `stations`.
    pub fn of(stations: &[StationStatus]) -> Self {
        Self {
            stations: stations.len(),
            engines: EngineTotals::of(stations.iter().map(|st| &st.record)),
            programs: stations
                .iter()
                .map(|st| st.activity.map_or(0, |a| a.programs))
                .fold(0, u64::saturating_add),
        }
    }
}

/// The swarm's storage: used of capacity when every engine is bounded; with engines bounded
/// only by their disks, what all hold and, apart, what the bounded ones hold of their
/// capacity (not all engines' bytes against the bounded ones' capacity).
fn total_storage(t: &EngineTotals) -> String {
    if t.unbounded == 0 || t.capacity == 0 {
        return storage(t.used, t.capacity);
    }
    let bounded = t.engines.saturating_sub(t.unbounded);
    format!(
        "{} stored ({} of {} on the {bounded} bounded engine(s))",
        human(t.used),
        human(t.bounded_used),
        human(t.capacity)
    )
}

/// Used of capacity (or just used, when unbounded).
fn storage(used: u64, capacity: u64) -> String {
    if capacity == 0 {
        format!("{} stored", human(used))
    } else {
        format!("{} of {} stored", human(used), human(capacity))
    }
}

fn addrs(list: &[Multiaddr]) -> Vec<String> {
    list.iter().map(ToString::to_string).collect()
}

/// The text or (`json`) the pretty JSON form, ending in a newline.
pub fn render(stations: &[StationStatus], json: bool) -> Result<String> {
    if json {
        Ok(serde_json::to_string_pretty(&to_json(stations))? + "\n")
    } else {
        Ok(to_text(stations))
    }
}

/// `vodmesh status --watch`: clears the terminal and prints the swarm every two seconds until
/// Ctrl-C; a failed round says why on the screen and the next one tries again. With `json`,
/// for programs rather than people: one JSON object per line every two seconds, nothing
/// else on stdout (a failed round says why on stderr).
pub async fn watch(node: &Multiaddr, json: bool) -> Result<()> {
    use std::io::Write;
    let mut every = tokio::time::interval(std::time::Duration::from_secs(2));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = every.tick() => {}
        }
        let fetched = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            fetched = fetch(node) => fetched,
        };
        let mut out = std::io::stdout().lock();
        if json {
            match fetched {
                Ok(stations) => writeln!(out, "{}", serde_json::to_string(&to_json(&stations))?)?,
                Err(e) => eprintln!("error: {e:#} (retrying)"),
            }
            out.flush()?;
            continue;
        }
        let body = match fetched {
            Ok(stations) => to_text(&stations),
            Err(e) => format!("error: {e:#} (retrying)\n"),
        };
        let now = time::OffsetDateTime::now_utc();
        let when = now
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        // Home the cursor and clear the screen, then draw the whole frame at once.
        write!(
            out,
            "\x1b[H\x1b[2J{when}  vodmesh status --node {node} (Ctrl-C ends)\n{body}"
        )?;
        out.flush()?;
    }
}

/// A station's membership as `vodmesh status` prints it: `member: roles=home, certified by
/// ed25519:..., for 59 min`, or `not a member (no station certificate)`.
fn membership_line(s: &StationRecord, now: u64) -> String {
    match vodmesh_proto::member::peek(s) {
        Some(m) => format!(
            "member: roles={}, certified by {}, for {} min",
            m.roles.words(),
            m.issuer,
            m.expires_ms.saturating_sub(now) / 60_000
        ),
        None => "not a member (no station certificate)".into(),
    }
}

/// The text form, one block per station.
pub fn to_text(stations: &[StationStatus]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let t = Totals::of(stations);
    let _ = writeln!(
        out,
        "{} station(s), {}/{} engines up, {}/{} streams, {}, {} program(s) held (counted on each station)",
        t.stations,
        t.engines.up,
        t.engines.engines,
        t.engines.streams,
        t.engines.max_streams,
        total_storage(&t.engines),
        t.programs
    );
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
                .map(|r| format!("  region={}", vodmesh_client::cli::printable(r)))
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
        let _ = writeln!(out, "  {}", membership_line(s, now_ms()));
        if st.activity.is_none() {
            let age = now_ms().saturating_sub(s.issued_ms) / 1000;
            let _ = writeln!(
                out,
                "  NOT ANSWERING: its director did not answer in 2 s; shown as its registry record of {age} s ago"
            );
        }
        if let Some(a) = &st.activity {
            if a.draining {
                let _ = writeln!(
                    out,
                    "  DRAINING: starts no new stream and takes in no replica (vodmesh station drain --resume ends it)"
                );
            }
            let _ = writeln!(out, "  programs held {}", a.programs);
            let _ = writeln!(
                out,
                "  streams {} active, {} served; misses {}, replications {}, swaps {}, source failovers {}; refused {} streams, {} copies; {} copies declined for want of room",
                a.active,
                a.stops_complete.saturating_add(a.stops_early),
                a.misses,
                a.replications,
                a.swaps,
                a.source_failovers,
                a.refused_streams,
                a.refused_copies,
                a.copies_declined
            );
            if a.replicas_unplaced > 0 {
                let _ = writeln!(
                    out,
                    "  REPLICAS UNPLACED {}: asked for by ingest --replicas, no other station with room took them",
                    a.replicas_unplaced
                );
            }
        }
        for e in &s.engines {
            let _ = writeln!(
                out,
                "  engine {} {} streams {}/{}, {}",
                e.peer_id,
                if e.up { "up" } else { "DOWN" },
                e.streams,
                e.max_streams,
                storage(e.used, e.capacity)
            );
            for d in &e.disks {
                let path = vodmesh_client::cli::printable(&d.path);
                let _ = writeln!(out, "    disk {path} {}", storage(d.used, d.capacity));
            }
            for a in &e.addrs {
                let _ = writeln!(out, "    {a}");
            }
        }
    }
    out
}
