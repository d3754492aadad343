//! `vodmesh publish`: makes a program playable now (admin only).

use std::path::Path;

use anyhow::{Result, bail};
use libp2p::Multiaddr;
use vodmesh_client::DirectorClient;
use vodmesh_proto::director::{ProgramInfo, Request, Response};
use vodmesh_proto::time::now_ms;
use vodmesh_proto::{ProgramId, admin};

/// Publishes `program` at the content manager `node`, signing with the admin key at `key`.
pub async fn run(node: &Multiaddr, key: &Path, program: ProgramId) -> Result<ProgramInfo> {
    let key = vodmesh_client::identity::load(key)?;
    let client = DirectorClient::connect(node, None).await?;
    let proof = admin::prove(&key, "publish", program.as_bytes(), client.peer(), now_ms());
    match client
        .request(Request::Publish {
            program,
            admin: proof,
        })
        .await?
    {
        Response::Program(info) => Ok(info),
        Response::Error(e) => bail!("{}", e.message),
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// Asks the director at `node` whether `program` may be streamed now; `Err` carries the
/// director's one-line refusal (e.g. `program not published`).
pub async fn playable(node: &Multiaddr, program: ProgramId) -> Result<()> {
    let client = DirectorClient::connect(node, None).await?;
    match client.request(Request::Playable { program }).await? {
        Response::Ok => Ok(()),
        Response::Error(e) => bail!("{}", e.message),
        other => bail!("unexpected answer: {other:?}"),
    }
}
