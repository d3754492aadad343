//! Admin operations against the auth server: `vodmesh user add|disable|enable|remove`,
//! `vodmesh enroll` and `vodmesh station revoke`.
//!
//! The operator's key file (`--key`) is the admin the auth server sees: an admin peer of the
//! auth station (its own identity or an `--admin`), or a key with an admin token issued to it
//! (`--admin-token`). The tool connects with a throwaway identity and signs, with `--key`, an
//! admin claim for the request on that connection (libp2p cannot dial a peer with that peer's
//! own identity, and the auth station's identity is its first admin).

use std::path::Path;

use anyhow::{Context, Result, bail};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use serde_bytes::ByteBuf;
use vodmesh_client::DirectorClient;
use vodmesh_client::auth::{AuthClient, find_auth_server};
use vodmesh_client::files::{read_password, read_token, write_private_new};
use vodmesh_proto::auth::Request;
use vodmesh_proto::station::Roles;
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::{Audience, Rights};

/// A role `vodmesh enroll --role` grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Runs the content manager: catalog records, `Published`, `Replicate`.
    ContentManager,
    /// A home station: holds every program and never evicts it.
    Home,
    /// Runs an auth server that consoles may log in with.
    Auth,
}

impl Role {
    /// The roles `roles` grant together.
    pub fn granted(roles: &[Role]) -> Roles {
        Roles {
            home: roles.contains(&Role::Home),
            content_manager: roles.contains(&Role::ContentManager),
            auth: roles.contains(&Role::Auth),
        }
    }
}

fn admin_token(path: Option<&Path>) -> Result<Option<ByteBuf>> {
    let fix = "give the file of the admin token the auth server issued to --key's peer";
    path.map(|p| read_token(p, "admin token", fix).map(ByteBuf::from))
        .transpose()
        .map_err(Into::into)
}

/// Who acts as admin: the operator's identity file and, when its peer is no admin peer of the
/// auth station, an admin token issued to it.
#[derive(Clone, Copy, Debug)]
pub struct AdminKey<'a> {
    /// The identity file (`--key`).
    pub key: &'a Path,
    /// The admin token file (`--admin-token`).
    pub token: Option<&'a Path>,
}

/// Sends an admin request, made by `make` with the admin token, to the auth server found
/// through `node`, with an admin claim signed by `admin.key`; fails unless it is done.
async fn admin_request(
    node: &Multiaddr,
    admin: AdminKey<'_>,
    make: impl FnOnce(Option<ByteBuf>) -> Request,
) -> Result<()> {
    let key = vodmesh_client::identity::load(admin.key)?;
    let admin_token = admin_token(admin.token)?;
    let wire = Keypair::generate_ed25519();
    let server = find_auth_server(node, wire.clone()).await?;
    let client = AuthClient::connect(&server, wire).await?;
    let mut request = make(admin_token);
    request.prove_admin(&key, server.director, client.local_peer(), now_ms());
    client.done(request).await?;
    Ok(())
}

/// `vodmesh user add`: adds subscriber `name` with the password in `password_file`.
pub async fn user_add(
    node: &Multiaddr,
    admin: AdminKey<'_>,
    name: &str,
    password_file: &Path,
    may_administer: bool,
    rights: Rights,
) -> Result<()> {
    let password = read_password(password_file)?;
    admin_request(node, admin, |admin_token| Request::AddUser {
        name: name.to_string(),
        password,
        admin: may_administer,
        rights,
        admin_token,
        proof: None,
    })
    .await
}

/// `vodmesh user disable|enable`: disables subscriber `name` (or enables her again).
pub async fn user_disable(
    node: &Multiaddr,
    admin: AdminKey<'_>,
    name: &str,
    disabled: bool,
) -> Result<()> {
    admin_request(node, admin, |admin_token| Request::DisableUser {
        name: name.to_string(),
        disabled,
        admin_token,
        proof: None,
    })
    .await
}

/// `vodmesh user remove`: removes subscriber `name`.
pub async fn user_remove(node: &Multiaddr, admin: AdminKey<'_>, name: &str) -> Result<()> {
    admin_request(node, admin, |admin_token| Request::RemoveUser {
        name: name.to_string(),
        admin_token,
        proof: None,
    })
    .await
}

/// `vodmesh enroll`: an enrollment token for `station` (default: the director at `node`),
/// written to `out` (0600). Returns the station's peer id.
pub async fn enroll(
    node: &Multiaddr,
    key_file: &Path,
    admin_token_file: Option<&Path>,
    station: Option<PeerId>,
    roles: Roles,
    out: &Path,
) -> Result<PeerId> {
    // Checked before the token is issued (it is written with the same refusal, should the
    // file appear meanwhile): another station's token there would be lost.
    if std::fs::symlink_metadata(out).is_ok() {
        bail!(
            "{} exists already: give another --out, or remove it first",
            out.display()
        );
    }
    let key = vodmesh_client::identity::load(key_file)?;
    let admin_token = admin_token(admin_token_file)?;
    let wire = Keypair::generate_ed25519();
    let station = match station {
        Some(s) => s,
        None => DirectorClient::connect(node, Some(wire.clone()))
            .await?
            .peer(),
    };
    let server = find_auth_server(node, wire.clone()).await?;
    let client = AuthClient::connect(&server, wire).await?;
    let mut request = Request::EnrollToken {
        station,
        roles,
        admin_token,
        proof: None,
    };
    request.prove_admin(&key, server.director, client.local_peer(), now_ms());
    let token = client.token(request).await?;
    // A token that does not verify is the server's fault; better to say so now than at the
    // new station's start.
    server
        .trusted()
        .verify(&token, now_ms(), Audience::Enroll, None, &station)
        .context("the auth server returned an invalid enrollment token")?;
    write_private_new(out, &token, "enrollment token")?;
    Ok(station)
}

/// `vodmesh station revoke`: ends the membership of the station whose director is `station`.
pub async fn revoke(node: &Multiaddr, admin: AdminKey<'_>, station: PeerId) -> Result<()> {
    admin_request(node, admin, |admin_token| Request::Revoke {
        station,
        admin_token,
        proof: None,
    })
    .await
}
