//! `vodmesh-console`: log in, list programs and play them from the swarm.

use clap::Parser;

/// The vodmesh subscriber console. Playing programs arrives with the streaming issue; for now
/// the console can check that a director answers.
#[derive(Parser, Debug)]
#[command(name = "vodmesh-console", version)]
enum Cmd {
    /// Asks a director for its station record and prints it.
    Ping {
        /// The director's address, ending in /p2p/<peer id>.
        #[arg(long, value_name = "MULTIADDR")]
        node: libp2p::Multiaddr,
    },
}

#[tokio::main]
async fn main() {
    let cmd = Cmd::parse();
    let result = match cmd {
        Cmd::Ping { node } => ping(&node).await,
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn ping(node: &libp2p::Multiaddr) -> anyhow::Result<()> {
    use vodmesh_proto::director::{Request, Response};
    use vodmesh_proto::station::StationRecord;
    let client = vodmesh_console::client::DirectorClient::connect(node, None).await?;
    match client.request(Request::Station).await? {
        Response::Station(signed) => {
            let rec = StationRecord::verify(&signed, vodmesh_proto::time::now_ms())?;
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
