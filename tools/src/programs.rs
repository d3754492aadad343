//! `vodmesh programs`: the swarm's catalog, from any station's director.

use anyhow::{Result, bail};
use libp2p::Multiaddr;
use serde_json::{Value, json};
use vodmesh_client::DirectorClient;
use vodmesh_proto::catalog::ProgramState;
use vodmesh_proto::director::{ProgramInfo, Request, Response};

/// The swarm's catalog as the director at `node` lists it.
pub async fn fetch(node: &Multiaddr) -> Result<Vec<ProgramInfo>> {
    let client = DirectorClient::connect(node, None).await?;
    match client.request(Request::Programs).await? {
        Response::Programs(list) => Ok(list),
        Response::Error(e) => bail!("{}", e.message),
        other => bail!("unexpected answer: {other:?}"),
    }
}

fn state(p: &ProgramInfo) -> &'static str {
    match p.state {
        ProgramState::Inactive => "inactive",
        ProgramState::Published => "published",
    }
}

/// `{"from": <director>, "programs": [...]}`: `from` is where the list came from.
pub fn to_json(programs: &[ProgramInfo], from: &Multiaddr) -> Value {
    json!({
        "from": from.to_string(),
        "programs": programs.iter().map(|p| json!({
            "id": p.program.to_string(),
            "title": p.title,
            "state": state(p),
            "publish_at_ms": p.publish_at_ms,
            "size": p.size,
            "duration_ms": p.duration_ms,
            "segments": p.segments,
            "stations": p.stations.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })).collect::<Vec<_>>()
    })
}

/// One line per program.
pub fn to_text(programs: &[ProgramInfo]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for p in programs {
        let _ = writeln!(
            out,
            "{}  {:<9}  {:>8.1} MiB  {:>7.1} s  {:>4} segments  {} station(s)  {}",
            p.program,
            state(p),
            p.size as f64 / (1024.0 * 1024.0),
            p.duration_ms as f64 / 1000.0,
            p.segments,
            p.stations.len(),
            p.title
        );
    }
    out
}
