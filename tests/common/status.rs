//! `vodmesh status --json` and `vodmesh programs --json`, read the way the tests need them:
//! the stations a director lists, one station's engines, activity and storage, the programs
//! of a content manager.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result};
use libp2p::Multiaddr;
use serde_json::Value;

use crate::cli::{command_in, run, vodmesh};

/// `vodmesh status --node ADDR --json`, run from host `netns` when given.
pub fn json_in(netns: Option<&str>, addr: &Multiaddr) -> Result<Value> {
    let out =
        run(command_in(netns, "vodmesh").args(["status", "--node", &addr.to_string(), "--json"]))?;
    Ok(serde_json::from_str(&out)?)
}

/// The director peer ids `vodmesh status --node ADDR --json` lists.
pub fn directors(addr: &Multiaddr) -> Result<BTreeSet<String>> {
    directors_in(None, addr)
}

/// As [`directors`], asked from host `netns`.
pub fn directors_in(netns: Option<&str>, addr: &Multiaddr) -> Result<BTreeSet<String>> {
    let json = json_in(netns, addr)?;
    let stations = json["stations"].as_array().context("no stations array")?;
    Ok(stations
        .iter()
        .filter_map(|s| s["director"]["peer_id"].as_str().map(String::from))
        .collect())
}

/// When each station `vodmesh status --node ADDR --json` lists (run from host `netns`)
/// signed the record listed: director peer id -> `issued_ms`.
pub fn issued_in(netns: Option<&str>, addr: &Multiaddr) -> Result<BTreeMap<String, u64>> {
    let json = json_in(netns, addr)?;
    let stations = json["stations"].as_array().context("no stations array")?;
    Ok(stations
        .iter()
        .filter_map(|s| {
            let peer = s["director"]["peer_id"].as_str()?;
            Some((peer.to_string(), s["issued_ms"].as_u64()?))
        })
        .collect())
}

/// The station whose director is `addr`, as `vodmesh status --json` lists it (fresh from
/// that director: its engines, its activity, the programs it holds).
pub fn station(addr: &Multiaddr) -> Result<Value> {
    station_in(None, addr)
}

/// As [`station`], asked from host `netns`.
pub fn station_in(netns: Option<&str>, addr: &Multiaddr) -> Result<Value> {
    let director = vodmesh_proto::net::peer_of(addr)
        .context("address without /p2p/")?
        .to_string();
    let json = json_in(netns, addr)?;
    let stations = json["stations"].as_array().context("no stations array")?;
    stations
        .iter()
        .find(|s| s["director"]["peer_id"].as_str() == Some(director.as_str()))
        .cloned()
        .with_context(|| format!("station {director} not in vodmesh status"))
}

/// A counter of the `activity` of the station whose director is `addr` (`replications`,
/// `misses`, `copies_declined`, ...).
pub fn activity(addr: &Multiaddr, counter: &str) -> Result<u64> {
    let station = station(addr)?;
    station["activity"][counter]
        .as_u64()
        .with_context(|| format!("no activity.{counter} in {station}"))
}

/// The engines of the station whose director is `addr`.
pub fn engines(addr: &Multiaddr) -> Result<Vec<Value>> {
    Ok(station(addr)?["engines"]
        .as_array()
        .context("no engines array")?
        .clone())
}

/// The engines of the station whose director is `addr`: (peer id, up), sorted.
pub fn engines_up(addr: &Multiaddr) -> Result<Vec<(String, bool)>> {
    engines_up_in(None, addr)
}

/// As [`engines_up`], asked from host `netns`.
pub fn engines_up_in(netns: Option<&str>, addr: &Multiaddr) -> Result<Vec<(String, bool)>> {
    up_of(&station_in(netns, addr)?)
}

/// The engines of the station whose director is `director` as the director at `addr` finds
/// its record in the registry: (peer id, up), sorted; `None` while it lists no such station.
pub fn engines_seen_by(addr: &Multiaddr, director: &str) -> Result<Option<Vec<(String, bool)>>> {
    let json = json_in(None, addr)?;
    let stations = json["stations"].as_array().context("no stations array")?;
    (stations.iter())
        .find(|s| s["director"]["peer_id"].as_str() == Some(director))
        .map(up_of)
        .transpose()
}

/// (peer id, up) of each engine of `station` (an entry of `vodmesh status --json`), sorted.
fn up_of(station: &Value) -> Result<Vec<(String, bool)>> {
    let engines = station["engines"].as_array().context("no engines array")?;
    let mut up: Vec<(String, bool)> = engines
        .iter()
        .map(|e| {
            let peer = e["peer_id"].as_str().unwrap_or_default().to_string();
            (peer, e["up"].as_bool().unwrap_or(false))
        })
        .collect();
    up.sort();
    Ok(up)
}

/// Each engine's used bytes in the station whose director is `addr`.
pub fn used_bytes(addr: &Multiaddr) -> Result<Vec<u64>> {
    engines(addr)?
        .iter()
        .map(|e| e["used"].as_u64().context("engine without used bytes"))
        .collect()
}

/// `vodmesh programs --node ADDR --json`, as the station's admin with its `key` (programs
/// not published yet too), or as anyone (published programs only).
fn listed(addr: &Multiaddr, key: Option<&Path>) -> Result<Value> {
    let addr = addr.to_string();
    let mut args = vec!["programs", "--node", &addr, "--json"];
    let key = key.map(|k| k.to_string_lossy().into_owned());
    if let Some(key) = &key {
        args.extend(["--key", key]);
    }
    Ok(serde_json::from_str(&vodmesh(&args)?)?)
}

/// The stations `vodmesh programs --node ADDR --key KEY --json` lists as holding `program`
/// (the content manager and the providers of `program/<id>` in the registry).
pub fn program_stations(addr: &Multiaddr, key: &Path, program: &str) -> Result<BTreeSet<String>> {
    let json = listed(addr, Some(key))?;
    let list = json["programs"].as_array().context("no programs array")?;
    let entry = (list.iter())
        .find(|p| p["id"].as_str() == Some(program))
        .with_context(|| format!("program {program} not listed"))?;
    let stations = entry["stations"].as_array().context("no stations array")?;
    Ok(stations
        .iter()
        .filter_map(|s| s.as_str().map(String::from))
        .collect())
}

/// The program ids `vodmesh programs --node ADDR --json` lists, sorted: with an admin `key`
/// of the station, those not published yet too.
pub fn programs(addr: &Multiaddr, key: Option<&Path>) -> Result<Vec<String>> {
    let json = listed(addr, key)?;
    let list = json["programs"].as_array().context("no programs array")?;
    let mut ids: Vec<String> = list
        .iter()
        .filter_map(|p| p["id"].as_str().map(String::from))
        .collect();
    ids.sort();
    Ok(ids)
}
