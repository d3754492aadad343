//! `vodmesh`: the operator tool of a vodmesh swarm.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use libp2p::Multiaddr;
use libp2p::PeerId;
use vodmesh_proto::ProgramId;
use vodmesh_proto::token::Rights;
use vodmesh_tools::{admin, bench, demo, ingest, programs, publish, status};

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
        /// Print {"stations": [...], "totals": {...}} as JSON.
        #[arg(long)]
        json: bool,
        /// Refresh in place every 2 seconds (clearing the terminal) until Ctrl-C.
        #[arg(long)]
        watch: bool,
    },
    /// Subscribers of the auth server.
    #[command(subcommand)]
    User(UserCmd),
    /// Issues an enrollment token for a new station (admin only). Start the station with
    /// `vodmesh-node --enroll FILE`; its engines then receive engine tokens.
    Enroll {
        /// Any station's director address; the auth server is found through the swarm.
        #[arg(long, value_name = "MULTIADDR")]
        node: Multiaddr,
        /// The admin's identity file (an admin peer of the auth station, or see --admin-token).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// An admin token issued to --key's peer, if that peer is not an admin peer.
        #[arg(long, value_name = "FILE")]
        admin_token: Option<PathBuf>,
        /// The new station's director peer id (its DIR/identity.key, e.g. made with `vodmesh
        /// keygen`). Default: the station at --node.
        #[arg(long, value_name = "PEERID")]
        station: Option<PeerId>,
        /// Where to write the token (mode 0600).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Ingests a program into a home station (admin only); prints the program id last.
    Ingest {
        /// The home station's director, ending in /p2p/<peer id>.
        #[arg(long, value_name = "MULTIADDR")]
        node: Multiaddr,
        /// An admin identity of that station (its DIR/identity.key, or a key given to --admin).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The program's title.
        #[arg(long)]
        title: String,
        /// When the program becomes playable: `now` or an RFC 3339 time. Without it the program
        /// stays inactive until `vodmesh publish`.
        #[arg(long, value_name = "now|RFC3339")]
        publish_at: Option<String>,
        /// How many other stations should hold a copy.
        #[arg(long, default_value_t = 0, value_name = "N")]
        replicas: u32,
        /// Segment size for files without media segmentation, bytes.
        #[arg(long, default_value_t = ingest::DEFAULT_SEGMENT_SIZE, value_name = "BYTES")]
        segment_size: u64,
        /// Nominal bitrate of files without media timing, bit/s (sets segment durations).
        #[arg(long, default_value_t = ingest::DEFAULT_BITRATE, value_name = "BPS")]
        bitrate: u64,
        /// The source: a media file, an HLS VOD playlist (.m3u8 path or http(s) URL; TS or
        /// fMP4, whose init segment becomes segment 0), or an http(s) URL of a file.
        source: PathBuf,
    },
    /// Publishes a program now (admin only): it becomes playable on every station.
    Publish {
        /// The content manager's director, ending in /p2p/<peer id>.
        #[arg(long, value_name = "MULTIADDR")]
        node: Multiaddr,
        /// An admin identity of that station.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The program id.
        program: ProgramId,
    },
    /// Lists a content manager's programs.
    Programs {
        /// The content manager's director, ending in /p2p/<peer id>.
        #[arg(long, value_name = "MULTIADDR")]
        node: Multiaddr,
        /// Print {"programs": [...]} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The embedded default: a swarm of stations on loopback, started, checked and reported.
    Demo {
        /// Keep the swarm up after the report, with an HLS gateway on this address
        /// (e.g. 127.0.0.1:8080) for players, until Ctrl-C.
        #[arg(long, value_name = "ADDR:PORT")]
        serve: Option<std::net::SocketAddr>,
    },
    /// Measures every hot path beside a reference in the same run (copy, streams, startup,
    /// handoff, registry, store, footprint); prints a table, and the JSON with --json.
    Bench {
        /// Also write the JSON to this file.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Directory on the filesystem to measure (default: the system temp directory).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Small sizes: finishes in under two minutes (the CI smoke test).
        #[arg(long)]
        quick: bool,
        /// Run only this section (repeatable): copy, streams, startup, handoff, registry,
        /// store, footprint.
        #[arg(long, value_name = "SECTION")]
        only: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum UserCmd {
    /// Adds a subscriber (admin only).
    Add {
        /// Any station's director address; the auth server is found through the swarm.
        #[arg(long, value_name = "MULTIADDR")]
        node: Multiaddr,
        /// The admin's identity file (an admin peer of the auth station, or see --admin-token).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// An admin token issued to --key's peer, if that peer is not an admin peer.
        #[arg(long, value_name = "FILE")]
        admin_token: Option<PathBuf>,
        /// The new subscriber's password, first line of this file.
        #[arg(long, value_name = "FILE")]
        password_file: PathBuf,
        /// The subscriber may log in as an admin.
        #[arg(long)]
        admin: bool,
        /// A program the subscriber may watch (repeatable). Default: every program.
        #[arg(long, value_name = "PROGRAM")]
        program: Vec<ProgramId>,
        /// The subscriber's name.
        name: String,
    },
}

/// mimalloc: the glibc allocator costs 20-25 % on the stream read path (DESIGN section 12).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        Cmd::Status { node, json, watch } => {
            if watch {
                status::watch(&node, json).await?;
            } else {
                let stations = status::fetch(&node).await?;
                print!("{}", status::render(&stations, json)?);
            }
        }
        Cmd::User(UserCmd::Add {
            node,
            key,
            admin_token,
            password_file,
            admin,
            program,
            name,
        }) => {
            let rights = if program.is_empty() {
                Rights::All
            } else {
                Rights::Programs(program)
            };
            admin::user_add(
                &node,
                &key,
                admin_token.as_deref(),
                &name,
                &password_file,
                admin,
                rights,
            )
            .await?;
            println!("user {name} added");
        }
        Cmd::Enroll {
            node,
            key,
            admin_token,
            station,
            out,
        } => {
            let station = admin::enroll(&node, &key, admin_token.as_deref(), station, &out).await?;
            println!(
                "enrollment token for station {station} written to {}",
                out.display()
            );
        }
        Cmd::Ingest {
            node,
            key,
            title,
            publish_at,
            replicas,
            segment_size,
            bitrate,
            source,
        } => {
            let publish_at_ms = publish_at
                .as_deref()
                .map(ingest::parse_publish_at)
                .transpose()?;
            let opts = ingest::IngestOptions {
                node,
                key,
                title,
                publish_at_ms,
                replicas,
                segment_size,
                bitrate,
                source,
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
            let info = ingest::run(&opts).await?;
            eprintln!(
                "ingested \"{}\": {} segments, {} bytes",
                info.title, info.segments, info.size
            );
            println!("{}", info.program);
        }
        Cmd::Publish { node, key, program } => {
            let info = publish::run(&node, &key, program).await?;
            eprintln!("published \"{}\"", info.title);
            println!("{}", info.program);
        }
        Cmd::Programs { node, json } => {
            let list = programs::fetch(&node).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&programs::to_json(&list))?
                );
            } else {
                print!("{}", programs::to_text(&list));
            }
        }
        Cmd::Demo { serve } => demo::run(serve).await?,
        Cmd::Bench {
            json,
            dir,
            quick,
            only,
        } => {
            let dir = dir.unwrap_or_else(std::env::temp_dir);
            let (result, rows) = bench::run(&bench::Options { dir, quick, only }).await?;
            let text = serde_json::to_string_pretty(&result)?;
            println!("{}", bench::table(&rows));
            if let Some(path) = json {
                std::fs::write(&path, &text)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(())
}
