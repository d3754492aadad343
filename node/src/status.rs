//! The status page of `--metrics` (`/`) and its data (`/status.json`): every live station of
//! the swarm, as the director's registry walk finds it, with its engines' load, health and
//! storage, and sparklines of each station's last ten minutes ([`crate::history`]: streams,
//! bytes out, misses, copies). The page is one self-contained HTML document (no external
//! assets) whose inline script polls `/status.json` every two seconds.

use libp2p::PeerId;
use serde_json::{Value, json};
use vodmesh_proto::station::{EngineInfo, EngineTotals, StationRecord};

/// `/status.json`: `{"local": <director peer id>, "stations": [...], "totals": {...}}`.
pub fn to_json(local: PeerId, stations: &[StationRecord]) -> Value {
    let totals = EngineTotals::of(stations);
    // A stable order from one refresh to the next: this station first, then by peer id.
    let mut sorted: Vec<&StationRecord> = stations.iter().collect();
    sorted.sort_by_key(|s| (s.director != local, s.director.to_string()));
    let list: Vec<Value> = sorted
        .into_iter()
        .map(|s| {
            let engines: Vec<Value> = s.engines.iter().map(engine_json).collect();
            json!({
                "director": {
                    "peer_id": s.director.to_string(),
                    "addrs": s.addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                },
                "local": s.director == local,
                "region": s.region,
                "roles": {
                    "home": s.roles.home,
                    "content_manager": s.roles.content_manager,
                    "auth": s.roles.auth,
                },
                "membership": membership_json(s),
                "bandwidth_mbps": s.bandwidth_mbps,
                "issued_ms": s.issued_ms,
                "engines": engines,
            })
        })
        .collect();
    json!({
        "local": local.to_string(),
        "stations": list,
        "totals": totals_json(stations.len(), totals),
    })
}

/// A station's membership in `/status.json` and in `vodmesh status --json`, as its certificate
/// says: `{"member": true, "issuer", "roles": [...], "expires_ms"}`, or `{"member": false}`
/// for a station without one (outside any closed swarm).
pub fn membership_json(s: &StationRecord) -> Value {
    match vodmesh_proto::member::peek(s) {
        Some(m) => json!({
            "member": true,
            "issuer": m.issuer.to_string(),
            "roles": m.roles.words(),
            "expires_ms": m.expires_ms,
        }),
        None => json!({ "member": false }),
    }
}

/// One engine in `/status.json` and in `vodmesh status --json`.
pub fn engine_json(e: &EngineInfo) -> Value {
    json!({
        "peer_id": e.peer_id.to_string(),
        "addrs": e.addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "up": e.up,
        "streams": e.streams,
        "max_streams": e.max_streams,
        "used": e.used,
        "reserved": e.reserved(),
        "evictable": e.evictable(),
        "capacity": e.capacity,
        "disks": e.disks.iter().map(|d| json!({
            "path": d.path, "used": d.used, "reserved": d.reserved,
            "evictable": d.evictable, "capacity": d.capacity,
        })).collect::<Vec<_>>(),
    })
}

/// The `totals` of `/status.json` and of `vodmesh status --json`.
pub fn totals_json(stations: usize, engines: EngineTotals) -> Value {
    let mut totals = json!(engines);
    totals["stations"] = json!(stations);
    totals
}

/// The status page: self-contained, refreshed from `/status.json` every two seconds.
pub const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>vodmesh swarm status</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; }
.station { border: 1px solid #bbb; border-radius: 6px; padding: .6em 1em; margin: .8em 0; }
.station.local { border-color: #36c; }
.peer { font-family: monospace; word-break: break-all; }
table { border-collapse: collapse; margin-top: .4em; }
td, th { padding: .15em .7em; text-align: left; border-bottom: 1px solid #eee; }
.down { color: #b00; font-weight: bold; }
.up { color: #070; }
.bar { display: inline-block; width: 8em; height: .7em; background: #eee; vertical-align: middle; }
.bar > span { display: block; height: 100%; background: #36c; }
#state { color: #777; }
.sparks { margin-top: .4em; color: #555; }
.spark-cell { display: inline-block; margin-right: 1.2em; white-space: nowrap; }
.spark-cell svg { vertical-align: middle; background: #f6f8fc; }
</style>
</head>
<body>
<h1>vodmesh swarm</h1>
<div id="totals"></div>
<div id="state">loading&hellip;</div>
<div id="stations"></div>
<script>
"use strict";
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function bytes(n) {
  const u = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < u.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}
function bar(v, max) {
  const b = el("span", "bar");
  const f = el("span");
  f.style.width = (max > 0 ? Math.min(100, 100 * v / max) : 0) + "%";
  b.appendChild(f);
  return b;
}
// The last ten minutes of a station, drawn by this station's server as inline SVG from
// numbers only (no script, no external asset in it).
const SERIES = [["streams", "streams"], ["bytes_out", "bytes out"], ["misses", "misses"], ["copies", "copies"]];
function sparks(history) {
  const row = el("div", "sparks");
  row.appendChild(el("span", "spark-cell", "last 10 min, every " + history.every_s + " s:"));
  for (const [key, label] of SERIES) {
    const h = history[key];
    const cell = el("span", "spark-cell");
    cell.dataset.series = key;
    cell.appendChild(el("span", null, label + " "));
    const pic = el("span");
    pic.innerHTML = h.svg;
    cell.appendChild(pic);
    const last = h.values.length ? h.values[h.values.length - 1] : 0;
    cell.appendChild(el("span", null, " " + (key === "bytes_out" ? bytes(last) : last)));
    row.appendChild(cell);
  }
  return row;
}
function render(s) {
  const t = s.totals;
  document.getElementById("totals").textContent =
    t.stations + " stations, " + t.engines_up + "/" + t.engines + " engines up, " +
    t.streams + "/" + t.max_streams + " streams, " + bytes(t.used) + " stored";
  const list = document.getElementById("stations");
  list.replaceChildren();
  for (const st of s.stations) {
    const box = el("div", "station" + (st.local ? " local" : ""));
    box.dataset.peer = st.director.peer_id;
    const roles = Object.keys(st.roles).filter(r => st.roles[r]);
    const head = el("div");
    head.appendChild(el("b", null, "station "));
    head.appendChild(el("span", "peer director", st.director.peer_id));
    if (st.region) head.appendChild(el("span", null, "  region " + st.region));
    if (roles.length) head.appendChild(el("span", null, "  [" + roles.join(", ") + "]"));
    const m = st.membership;
    head.appendChild(el("span", null, m.member
      ? "  member (" + m.roles + ") until " + new Date(m.expires_ms).toISOString()
      : "  not a member"));
    if (st.local) head.appendChild(el("span", null, "  (this station)"));
    box.appendChild(head);
    if (st.history) box.appendChild(sparks(st.history));
    const table = el("table");
    const hr = el("tr");
    for (const h of ["engine", "health", "load", "streams", "storage"]) hr.appendChild(el("th", null, h));
    table.appendChild(hr);
    for (const e of st.engines) {
      const tr = el("tr", "engine");
      tr.dataset.peer = e.peer_id;
      tr.appendChild(el("td", "peer", e.peer_id));
      tr.appendChild(el("td", e.up ? "up" : "down", e.up ? "up" : "down"));
      const load = el("td");
      load.appendChild(bar(e.streams, e.max_streams));
      tr.appendChild(load);
      tr.appendChild(el("td", null, e.streams + "/" + e.max_streams));
      const disks = e.disks.map(d => bytes(d.used) + (d.capacity ? " of " + bytes(d.capacity) : ""));
      tr.appendChild(el("td", null, disks.length ? disks.join(", ") : bytes(e.used)));
      table.appendChild(tr);
    }
    box.appendChild(table);
    list.appendChild(box);
  }
}
async function refresh() {
  const state = document.getElementById("state");
  try {
    const r = await fetch("/status.json", { cache: "no-store" });
    if (!r.ok) throw new Error(r.status + " " + (await r.text()));
    render(await r.json());
    state.textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    state.textContent = "cannot reach the director: " + e.message;
  }
}
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
"#;
