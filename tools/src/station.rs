//! `vodmesh station drain`: an admin drains a station from afar (or takes it back into
//! service), as SIGTERM drains the station it stops.

use std::path::Path;

use anyhow::{Result, bail};
use libp2p::Multiaddr;
use vodmesh_client::DirectorClient;
use vodmesh_proto::admin;
use vodmesh_proto::director::{DRAIN_OP, DRAIN_SUBJECT, Request, Response};
use vodmesh_proto::time::now_ms;

/// Drains the station of the director at `node` (`drain`), or ends its drain, signing with
/// the admin key at `key`; returns the streams its engines still serve.
pub async fn drain(node: &Multiaddr, key: &Path, drain: bool) -> Result<u64> {
    let key = vodmesh_client::identity::load(key)?;
    let client = DirectorClient::connect(node, None).await?;
    let proof = admin::prove(&key, DRAIN_OP, DRAIN_SUBJECT, client.peer(), now_ms());
    let request = Request::Drain {
        drain,
        admin: proof,
    };
    match client.request(request).await? {
        Response::Ok => {}
        Response::Error(e) => bail!("{}", e.message),
        other => bail!("unexpected answer: {other:?}"),
    }
    match client.request(Request::Activity).await? {
        Response::Activity(activity) => Ok(activity.active),
        Response::Error(e) => bail!("{}", e.message),
        other => bail!("unexpected answer: {other:?}"),
    }
}
