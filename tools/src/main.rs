//! `vodmesh`: the operator tool of a vodmesh swarm.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use libp2p::Multiaddr;
use vodmesh_tools::{demo, status};

/// Operates a vodmesh swarm: identities, the swarm's status, the embedded demo.
#[derive(Parser, Debug)]
#[command(name = "vodmesh", version)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Creates a new ed25519 identity file and prints its peer id.
    Keygen {
        /// Where to write the key (refuses to overwrite).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Lists every live station of the swarm, found through the registry.
    Status {
        /// Any station's director address, ending in /p2p/<peer id>.
        #[arg(long, value_name = "MULTIADDR")]
        node: Multiaddr,
        /// Print {"stations": [...]} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The embedded default: a swarm of stations on loopback, started, checked and reported.
    Demo,
}

#[tokio::main]
async fn main() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Args::parse()).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<()> {
    match args.cmd {
        Cmd::Keygen { out } => {
            let key = libp2p::identity::Keypair::generate_ed25519();
            vodmesh_node::identity::save(&out, &key)
                .with_context(|| format!("writing {}", out.display()))?;
            println!("{}", key.public().to_peer_id());
        }
        Cmd::Status { node, json } => {
            let stations = status::fetch(&node).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status::to_json(&stations))?
                );
            } else {
                print!("{}", status::to_text(&stations));
            }
        }
        Cmd::Demo => demo::run().await?,
    }
    Ok(())
}
