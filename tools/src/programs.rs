//! `vodmesh programs`: the swarm's catalog, from any station's director.

use std::path::Path;

use anyhow::{Result, bail};
use libp2p::Multiaddr;
use serde_json::{Value, json};
use vodmesh_client::DirectorClient;
use vodmesh_proto::admin;
use vodmesh_proto::director::{self, ProgramInfo, Request, Response};
use vodmesh_proto::time::now_ms;

/// The swarm's catalog as the director at `node` lists it: its published programs, and,
/// with the admin key at `key` (an admin of that station), those not published yet too.
pub async fn fetch(node: &Multiaddr, key: Option<&Path>) -> Result<Vec<ProgramInfo>> {
    let client = DirectorClient::connect(node, None).await?;
    let request = match key {
        None => Request::Programs,
        Some(key) => {
            let key = vodmesh_client::identity::load(key)?;
            let (op, subject) = (director::PROGRAMS_OP, director::PROGRAMS_SUBJECT);
            Request::AllPrograms {
                admin: admin::prove(&key, op, subject, client.peer(), now_ms()),
            }
        }
    };
    match client.request(request).await? {
        Response::Programs(list) => Ok(list),
        Response::Error(e) => bail!("{}", e.message),
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// `{"from": <director>, "programs": [...]}`: `from` is where the list came from; the
/// programs in the form `vodmesh-console ls --json` prints too.
pub fn to_json(programs: &[ProgramInfo], from: &Multiaddr) -> Value {
    let mut json = vodmesh_console::play::programs_json(programs);
    json["from"] = json!(from.to_string());
    json
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
            p.state,
            p.size as f64 / (1024.0 * 1024.0),
            p.duration_ms as f64 / 1000.0,
            p.segments,
            p.stations.len(),
            vodmesh_client::cli::printable(&p.title)
        );
    }
    out
}
