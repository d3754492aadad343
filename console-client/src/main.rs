//! `vodmesh-console`: log in, list programs and play them from the swarm.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use vodmesh_console::auth::{AuthClient, Home, find_auth_server, read_password, write_private};
use vodmesh_proto::auth::Request;
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::Audience;

/// The vodmesh subscriber console. Playing programs arrives with the streaming issue; for now
/// the console can log in and check that a director answers.
///
/// The console keeps its identity and tokens under $VODMESH_HOME (default: the platform data
/// directory, e.g. ~/.local/share/vodmesh): identity.key and tokens/console.token.
#[derive(Parser, Debug)]
#[command(name = "vodmesh-console", version)]
enum Cmd {
    /// Asks a director for its station record and prints it.
    Ping {
        /// The director's address, ending in /p2p/<peer id>.
        #[arg(long, value_name = "MULTIADDR")]
        node: libp2p::Multiaddr,
    },
    /// Proves a subscriber to the auth server (found through the swarm) and stores the console
    /// token, bound to this console's identity, in $VODMESH_HOME/tokens/console.token.
    Login {
        /// Any station's director address, ending in /p2p/<peer id>.
        #[arg(long, value_name = "MULTIADDR")]
        node: libp2p::Multiaddr,
        /// Subscriber name.
        #[arg(long, value_name = "NAME")]
        user: String,
        /// The password, first line of this file.
        #[arg(long, value_name = "FILE")]
        password_file: PathBuf,
        /// Ask for an admin token instead (tokens/admin.token), for admin subscribers.
        #[arg(long)]
        admin: bool,
    },
}

#[tokio::main]
async fn main() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cmd = Cmd::parse();
    let result = match cmd {
        Cmd::Ping { node } => ping(&node).await,
        Cmd::Login {
            node,
            user,
            password_file,
            admin,
        } => login(&node, &user, &password_file, admin).await,
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn login(
    node: &libp2p::Multiaddr,
    user: &str,
    password_file: &std::path::Path,
    admin: bool,
) -> anyhow::Result<()> {
    let password = read_password(password_file)?;
    let home = Home::from_env()?;
    let key = home.identity()?;
    let me = key.public().to_peer_id();
    let server = find_auth_server(node, key.clone()).await?;
    let client = AuthClient::connect(&server, key).await?;
    let user = user.to_string();
    let (request, audience, kind) = if admin {
        (
            Request::AdminLogin { user, password },
            Audience::Admin,
            "admin",
        )
    } else {
        (
            Request::Login { user, password },
            Audience::Console,
            "console",
        )
    };
    let token = client.token(request).await?;
    let claims = server
        .trusted()
        .verify(&token, now_ms(), audience, None, &me)
        .context("the auth server returned an invalid token")?;
    let path = home.token_path(kind);
    write_private(&path, &token, "token")?;
    let hours = claims.expires_ms.saturating_sub(now_ms()) / 3_600_000;
    println!(
        "logged in: {kind} token for {me} (valid {hours} h) in {}",
        path.display()
    );
    Ok(())
}

async fn ping(node: &libp2p::Multiaddr) -> anyhow::Result<()> {
    use vodmesh_proto::director::{Request, Response};
    use vodmesh_proto::station::StationRecord;
    let client = vodmesh_console::client::DirectorClient::connect(node, None).await?;
    match client.request(Request::Station).await? {
        Response::Station(signed) => {
            let rec = StationRecord::verify(&signed, now_ms())?;
            println!(
                "station {} with {} engine(s)",
                rec.director,
                rec.engines.len()
            );
            Ok(())
        }
        Response::Error(e) => anyhow::bail!("{}", e.message),
        other => anyhow::bail!("unexpected answer: {other:?}"),
    }
}
