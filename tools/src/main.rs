//! `vodmesh`: the operator tool of a vodmesh swarm.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use libp2p::Multiaddr;
use libp2p::PeerId;
use vodmesh_client::cli::{Docs, EXIT_CODES, LogArgs};
use vodmesh_proto::ProgramId;
use vodmesh_proto::token::Rights;
use vodmesh_tools::{
    admin, allocator, bench, demo, ingest, programs, publish, sim, station, status,
};

/// Operates a vodmesh swarm: identities, the swarm's status, the embedded demo.
#[derive(Parser, Debug)]
#[command(name = "vodmesh", version = vodmesh_client::version!(), after_help = EXIT_CODES)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    log: LogArgs,
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
        /// Refresh in place every 2 seconds (clearing the terminal) until Ctrl-C; with --json,
        /// one JSON object per line every 2 seconds instead (no clearing, no header).
        #[arg(long)]
        watch: bool,
    },
    /// Subscribers of the auth server.
    #[command(subcommand)]
    User(UserCmd),
    /// A station, operated from afar (admin only).
    #[command(subcommand)]
    Station(StationCmd),
    /// Issues an enrollment token for a new station (admin only). Start the station with
    /// `vodmesh-node --enroll FILE`; its engines then receive engine tokens.
    Enroll {
        #[command(flatten)]
        admin: AdminArgs,
        /// The new station's director peer id (its DIR/identity.key, e.g. made with `vodmesh
        /// keygen`). Default: the station at --node.
        #[arg(long, value_name = "PEERID")]
        station: Option<PeerId>,
        /// Where to write the token (mode 0600).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// A role the station's certificate grants (repeat for several); without any, the
        /// station is a member that stores, copies and streams. Roles a station runs
        /// (`--home`, `--content-manager`, `--auth`) count only when its certificate grants them.
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<admin::Role>,
    },
    /// Ingests a program into a home station (admin only); prints the program id last.
    Ingest {
        /// The home station's director, ending in /p2p/<peer id>.
        #[arg(long, value_name = "MULTIADDR")]
        node: Multiaddr,
        /// An admin identity of that station (its DIR/identity.key, or a key given to --admin).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The program's title: what consoles play it by. 1 to 1024 bytes, no control
        /// character, not a program id, and no other program of the home's catalog's.
        #[arg(long, value_parser = title)]
        title: String,
        /// When the program becomes playable: `now` or an RFC 3339 time. Without it the program
        /// stays inactive until `vodmesh publish`.
        #[arg(long, value_name = "now|RFC3339", value_parser = publish_time)]
        publish_at: Option<String>,
        /// How many other stations should hold a copy.
        #[arg(long, default_value_t = 0, value_name = "N")]
        replicas: u32,
        /// Segment size for files without media segmentation, bytes (1 to 256 MiB).
        #[arg(
            long,
            default_value_t = ingest::DEFAULT_SEGMENT_SIZE,
            value_name = "BYTES",
            value_parser = clap::value_parser!(u64).range(1..=vodmesh_proto::manifest::MAX_SEGMENT_SIZE)
        )]
        segment_size: u64,
        /// Nominal bitrate of files without media timing, bit/s (sets segment durations).
        #[arg(long, default_value_t = ingest::DEFAULT_BITRATE, value_name = "BPS")]
        bitrate: u64,
        /// Show progress on stderr even when it is not a terminal: a line every few seconds
        /// (bytes, segments, rate). On a terminal a progress bar is shown anyway.
        #[arg(long)]
        progress: bool,
        /// A host an HLS playlist's segments may be fetched from besides the playlist's own
        /// (repeatable; a name, or an IP address as it is written in the URIs). Segment URIs
        /// on other hosts are refused: a playlist from elsewhere must not make this machine
        /// fetch from its own network (metadata services, local ports). A local playlist's
        /// files must be in its directory or below.
        #[arg(long, value_name = "HOST")]
        allow_host: Vec<String>,
        /// Encode the video file as an adaptive-bitrate ladder, one rendition per height
        /// (e.g. `1080p,720p,480p`; widths follow the source's aspect ratio), all cut at the
        /// same keyframes, into one program that players switch between segment by segment.
        #[arg(long, value_name = "HEIGHTS", value_delimiter = ',', value_parser = vodmesh_tools::ladder::parse_rung)]
        ladder: Vec<u32>,
        /// Ingest the source's bytes as they are, cut into --segment-size segments whatever
        /// it holds: a video file is not packaged (no ffmpeg), a playlist is not followed.
        /// Played back, the program is the file byte for byte.
        #[arg(long, conflicts_with = "ladder")]
        raw: bool,
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
    /// Lists the swarm's programs (state, size, holders), as any station's director knows
    /// them: its own, and those of every live station it finds; no content manager needed.
    Programs {
        /// Any station's director, ending in /p2p/<peer id>.
        #[arg(long, value_name = "MULTIADDR")]
        node: Multiaddr,
        /// An admin key of that station (its identity.key or an --admin): lists the programs
        /// not published yet too, which are shown to admins and member stations only.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
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
    /// Measures every hot path beside a reference in the same run (store, copy, streams,
    /// startup, handoff, registry, footprint, edge); prints a table, and the JSON with --json.
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
        /// Run only this section (repeatable).
        #[arg(
            long,
            value_name = "SECTION",
            value_parser = clap::builder::PossibleValuesParser::new(vodmesh_tools::bench::SECTIONS)
        )]
        only: Vec<String>,
    },
    /// Many stations in one process: N directors, each a real libp2p Kademlia peer of the
    /// media location registry on libp2p's memory transport (plaintext + yamux by default,
    /// --transport noise for the directors' encryption), built as a converged swarm (or
    /// joining one by one, --setup join) that more stations then join; then measures
    /// find-holders lookups (latency, hops) with optional churn, join times, records per
    /// director and, with --programs-per-station, what re-providing costs. Prints a table;
    /// --json writes every figure.
    ///
    /// Definitions: "hops" is the number of Kademlia requests the asking director had sent
    /// when the first remote answer naming a holder arrived (with 3 requests in flight, an
    /// upper bound on the path length); "ms" is the whole lookup as a director waits for it.
    /// A lookup succeeds when it names a holder still in the swarm.
    Sim {
        /// Stations at the start (at least 2).
        #[arg(long, value_name = "N", value_parser = at_least_two)]
        stations: usize,
        /// How the initial stations come to be. warm: built converged (every routing table
        /// filled and every record stored at the k stations closest to its key, from global
        /// knowledge, as Kademlia's lookups leave them), then --joins stations join through
        /// the real flow and are measured. join: every station joins through the real flow
        /// (1000 stations take about 17 minutes here: each join dials hundreds of peers, a
        /// noise handshake each).
        #[arg(long, value_enum, default_value_t = sim::Setup::Warm)]
        setup: sim::Setup,
        /// With --setup warm, stations that join the built swarm through the real flow.
        #[arg(long, default_value_t = 50, value_name = "J")]
        joins: usize,
        /// Programs in the catalog (default: N).
        #[arg(long, value_name = "P")]
        programs: Option<usize>,
        /// Stations holding each program at the start.
        #[arg(long, default_value_t = 3, value_name = "H")]
        holders: usize,
        /// Fraction of stations that leave, and of new ones that join, during the lookups
        /// (0 to 0.9).
        #[arg(long, default_value_t = 0.0, value_name = "FRACTION", value_parser = churn_fraction)]
        churn: f64,
        /// Find-holders lookups to measure.
        #[arg(long, default_value_t = 1000, value_name = "L")]
        lookups: usize,
        /// Lookups in flight at once (across all stations).
        #[arg(long, default_value_t = 8, value_name = "C")]
        concurrency: usize,
        /// Stations joining at once.
        #[arg(long, default_value_t = 8, value_name = "J")]
        join_concurrency: usize,
        /// Earlier stations each new station is given to join through.
        #[arg(long, default_value_t = 3, value_name = "B")]
        bootstraps: usize,
        /// Kademlia replication factor k (directors use 20).
        #[arg(long, default_value_t = 20, value_name = "K")]
        replication: usize,
        /// Record TTL, seconds (directors use 60). Stations re-provide their programs every
        /// third of it; the long default keeps those re-provides out of a run that lasts
        /// minutes, and the README carries their cost by arithmetic.
        #[arg(long, default_value_t = 7200, value_name = "SECS")]
        ttl: u64,
        /// Periodic Kademlia bootstrap of every station, seconds (directors: 30; 0: only on join
        /// and while a routing table is small). Off by default: at 1000 stations, refreshes every
        /// 30 s alone would need more than this machine's two cores; the README carries their
        /// cost by arithmetic.
        #[arg(long, default_value_t = 0, value_name = "SECS")]
        bootstrap_every: u64,
        /// Kademlia replication of every stored record to the directors now closest to it,
        /// seconds (directors: 600; 0: off). Off by default: each record costs a whole lookup,
        /// so it would measure itself instead of the lookups; the README carries its cost.
        #[arg(long, default_value_t = 0, value_name = "SECS")]
        replicate_every: u64,
        /// Seconds an idle connection stays open (directors: 60). Shorter bounds the memory of
        /// 1000 stations' connections, but measured at 5 s, lookups that meet a closing
        /// connection stall until the query time-out.
        #[arg(long, default_value_t = 20, value_name = "SECS")]
        idle_timeout: u64,
        /// Seconds a Kademlia query may take (directors: 10). Longer keeps a run on a loaded
        /// machine from counting a slow answer as a failed lookup.
        #[arg(long, default_value_t = 10, value_name = "SECS")]
        query_timeout: u64,
        /// How stations talk, always over libp2p's memory transport with yamux. plaintext:
        /// public keys exchanged in the clear, no encryption (the light mode: a fraction of the
        /// CPU and memory per connection, the same Kademlia). noise: the directors' handshake
        /// and encryption (the reference; 1000 stations need about 5 GiB).
        #[arg(long, value_enum, default_value_t = sim::Transport::Plaintext)]
        transport: sim::Transport,
        /// After the lookups, --republishers stations each provide this many programs of
        /// their own at once, as a director re-provides what it holds every third of the
        /// provider TTL; the report gives what one provide costs and the steady-state load of
        /// every station holding that many (0: no such round).
        #[arg(long, default_value_t = 0, value_name = "N")]
        programs_per_station: usize,
        /// Stations that re-provide in the --programs-per-station round.
        #[arg(long, default_value_t = 4, value_name = "R")]
        republishers: usize,
        /// The directors' station record TTL, seconds, at which the re-provide load is
        /// reported (vodmesh-node --record-ttl).
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        station_ttl: u64,
        /// The directors' provider record TTL, seconds, at which the re-provide load is
        /// reported (vodmesh-node --provider-ttl; default 30 times --station-ttl).
        #[arg(long, value_name = "SECS")]
        provider_ttl: Option<u64>,
        /// Seed of every random choice (identities, holders, bootstraps, churn).
        #[arg(long, default_value_t = 1, value_name = "S")]
        seed: u64,
        /// Also write the report as JSON to this file.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    #[command(flatten)]
    Docs(Docs),
}

#[derive(Subcommand, Debug)]
enum StationCmd {
    /// Drains a station: its director sends every new stream to other stations that hold
    /// the segment and takes in no copy, replica or ingest, and its /readyz answers 503;
    /// streams already running finish. The station keeps running (its director still
    /// answers and redirects) until it is stopped, or taken back with --resume. SIGTERM
    /// drains a station the same way before it stops (vodmesh-node --drain-timeout).
    Drain {
        /// The station's director, ending in /p2p/<peer id>.
        #[arg(long, value_name = "MULTIADDR")]
        node: Multiaddr,
        /// An admin identity of that station (its DIR/identity.key, or a key given to --admin).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// End the drain: the station takes new streams again.
        #[arg(long)]
        resume: bool,
    },
    /// Ends a station's membership before its certificate expires (admin only): the auth
    /// server renews it no more, and every director refuses it within one record TTL (the
    /// auth station's record lists it). Enrolling it anew makes it a member again.
    Revoke {
        #[command(flatten)]
        admin: AdminArgs,
        /// The station's director peer id.
        #[arg(value_name = "PEERID")]
        station: PeerId,
    },
}

/// Who acts as admin (`vodmesh user ...`, `vodmesh enroll`, `vodmesh station revoke`).
#[derive(clap::Args, Debug)]
struct AdminArgs {
    /// Any station's director address; the auth server is found through the swarm.
    #[arg(long, value_name = "MULTIADDR")]
    node: Multiaddr,
    /// The admin's identity file (an admin peer of the auth station, or see --admin-token).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// An admin token issued to --key's peer, if that peer is not an admin peer.
    #[arg(long, value_name = "FILE")]
    admin_token: Option<PathBuf>,
}

impl AdminArgs {
    fn admin(&self) -> admin::AdminKey<'_> {
        admin::AdminKey {
            key: &self.key,
            token: self.admin_token.as_deref(),
        }
    }
}

#[derive(Subcommand, Debug)]
enum UserCmd {
    /// Adds a subscriber (admin only).
    Add {
        #[command(flatten)]
        admin: AdminArgs,
        /// The new subscriber's password, first line of this file.
        #[arg(long, value_name = "FILE")]
        password_file: PathBuf,
        /// The subscriber may log in as an admin.
        #[arg(long = "admin")]
        admin_role: bool,
        /// A program the subscriber may watch (repeatable). Default: every program.
        #[arg(long, value_name = "PROGRAM")]
        program: Vec<ProgramId>,
        /// The subscriber's name.
        name: String,
    },
    /// Disables a subscriber (admin only): her logins are refused and her consoles' tokens
    /// are not refreshed, so a console playing stops within one token lifetime.
    Disable {
        #[command(flatten)]
        admin: AdminArgs,
        /// The subscriber's name.
        name: String,
    },
    /// Enables a disabled subscriber again (admin only).
    Enable {
        #[command(flatten)]
        admin: AdminArgs,
        /// The subscriber's name.
        name: String,
    },
    /// Removes a subscriber (admin only): as `disable`, and the name is free again.
    Remove {
        #[command(flatten)]
        admin: AdminArgs,
        /// The subscriber's name.
        name: String,
    },
}

/// mimalloc (the glibc allocator costs 20-25 % on the stream read path, DESIGN section 12),
/// jemalloc for `vodmesh sim` (see [`allocator`]).
#[global_allocator]
static GLOBAL: allocator::Allocator = allocator::Allocator;

/// `--publish-at`: `now` or an RFC 3339 time, checked as the flag is read (a wrong one is a
/// usage error, status 2); kept as given, read again when the ingest starts.
fn publish_time(text: &str) -> Result<String, String> {
    ingest::parse_publish_at(text)
        .map(|_| text.to_string())
        .map_err(|e| format!("{e:#}"))
}

/// `ingest --title`: one a new program may take ([`vodmesh_proto::manifest::title_refusal`];
/// whether another program has it, the home station says).
fn title(text: &str) -> Result<String, String> {
    match vodmesh_proto::manifest::title_refusal(text) {
        Some(why) => Err(why.into()),
        None => Ok(text.to_string()),
    }
}

/// `sim --stations`: a swarm of at least two.
fn at_least_two(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 2 => Ok(n),
        _ => Err("a number of stations, at least 2".into()),
    }
}

/// `sim --churn`: a fraction from 0 to 0.9.
fn churn_fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if (0.0..=0.9).contains(&f) => Ok(f),
        _ => Err("a fraction from 0 to 0.9".into()),
    }
}

fn main() {
    let args = Args::parse();
    if let Cmd::Docs(docs) = &args.cmd {
        docs.exit(Args::command());
    }
    if matches!(args.cmd, Cmd::Sim { .. }) && !allocator::is_jemalloc() {
        let e = allocator::exec_with_jemalloc();
        eprintln!("warning: the simulation runs on mimalloc, which needs more memory: {e}");
    }
    vodmesh_client::cli::main("warn", args.log, run(args));
}

async fn run(args: Args) -> Result<()> {
    match args.cmd {
        Cmd::Keygen { out } => {
            let key = libp2p::identity::Keypair::generate_ed25519();
            vodmesh_client::identity::save(&out, &key)
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
            admin: who,
            password_file,
            admin_role,
            program,
            name,
        }) => {
            let rights = if program.is_empty() {
                Rights::All
            } else {
                Rights::Programs(program)
            };
            admin::user_add(
                &who.node,
                who.admin(),
                &name,
                &password_file,
                admin_role,
                rights,
            )
            .await?;
            println!("user {name} added");
        }
        Cmd::User(UserCmd::Disable { admin: who, name }) => {
            admin::user_disable(&who.node, who.admin(), &name, true).await?;
            println!("user {name} disabled");
        }
        Cmd::User(UserCmd::Enable { admin: who, name }) => {
            admin::user_disable(&who.node, who.admin(), &name, false).await?;
            println!("user {name} enabled");
        }
        Cmd::User(UserCmd::Remove { admin: who, name }) => {
            admin::user_remove(&who.node, who.admin(), &name).await?;
            println!("user {name} removed");
        }
        Cmd::Station(StationCmd::Drain { node, key, resume }) => {
            let streams = station::drain(&node, &key, !resume).await?;
            if resume {
                println!("station taking new streams again ({streams} running)");
            } else {
                println!(
                    "station draining: {streams} stream(s) still running; new streams go to other stations"
                );
            }
        }
        Cmd::Station(StationCmd::Revoke {
            admin: who,
            station,
        }) => {
            admin::revoke(&who.node, who.admin(), station).await?;
            println!("station {station} revoked: every director refuses it within one record TTL");
        }
        Cmd::Enroll {
            admin: who,
            station,
            out,
            roles,
        } => {
            let roles = admin::Role::granted(&roles);
            let (key, token) = (&who.key, who.admin_token.as_deref());
            let station = admin::enroll(&who.node, key, token, station, roles, &out).await?;
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
            progress,
            allow_host,
            ladder,
            raw,
            source,
        } => {
            let publish_at_ms = publish_at
                .as_deref()
                .map(ingest::parse_publish_at)
                .transpose()?;
            let opts = ingest::IngestOptions {
                allow_hosts: allow_host,
                node,
                key,
                title,
                publish_at_ms,
                replicas,
                segment_size,
                bitrate,
                source,
                progress: progress || std::io::IsTerminal::is_terminal(&std::io::stderr()),
                ladder,
                raw,
            };
            // Ctrl-C (or SIGTERM) cancels: the station drops what it took at once.
            let mut stop = vodmesh_client::cli::Stop::install()?;
            let info = ingest::run_until(&opts, async move {
                stop.wait().await;
            })
            .await?;
            eprintln!(
                "ingested \"{}\": {} segments, {} bytes",
                info.title, info.segments, info.size
            );
            if replicas > 0 {
                eprintln!(
                    "{replicas} replica(s) are being placed on other stations in the background: \
                     `vodmesh programs` lists the stations holding it, and `vodmesh status` counts \
                     replicas no station had room for"
                );
            }
            println!("{}", info.program);
        }
        Cmd::Publish { node, key, program } => {
            let info = publish::run(&node, &key, program).await?;
            eprintln!("published \"{}\"", info.title);
            println!("{}", info.program);
        }
        Cmd::Programs { node, key, json } => {
            let list = programs::fetch(&node, key.as_deref()).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&programs::to_json(&list, &node))?
                );
            } else {
                eprintln!("{} program(s), as listed by {node}", list.len());
                print!("{}", programs::to_text(&list));
            }
        }
        Cmd::Demo { serve } => demo::run(serve).await?,
        // Handled in `main`, before the runtime starts.
        Cmd::Docs(_) => {}
        Cmd::Sim {
            stations,
            setup,
            joins,
            programs,
            holders,
            churn,
            lookups,
            concurrency,
            join_concurrency,
            bootstraps,
            replication,
            ttl,
            bootstrap_every,
            replicate_every,
            idle_timeout,
            query_timeout,
            transport,
            programs_per_station,
            republishers,
            station_ttl,
            provider_ttl,
            seed,
            json,
        } => {
            let directors = vodmesh_registry::RegistryConfig {
                record_ttl: std::time::Duration::from_secs(station_ttl.max(1)),
                provider_ttl: provider_ttl.map(std::time::Duration::from_secs),
                ..Default::default()
            };
            let opts = sim::Options {
                setup,
                joins,
                programs: programs.unwrap_or(stations),
                holders,
                churn,
                lookups,
                concurrency: concurrency.max(1),
                join_concurrency: join_concurrency.max(1),
                bootstraps: bootstraps.max(1),
                replication,
                ttl: std::time::Duration::from_secs(ttl.max(10)),
                bootstrap_every: (bootstrap_every > 0)
                    .then(|| std::time::Duration::from_secs(bootstrap_every)),
                replicate_every: (replicate_every > 0)
                    .then(|| std::time::Duration::from_secs(replicate_every)),
                idle_timeout: std::time::Duration::from_secs(idle_timeout.max(1)),
                query_timeout: std::time::Duration::from_secs(query_timeout.max(1)),
                transport,
                programs_per_station,
                republishers: republishers.max(1),
                directors,
                seed,
                ..sim::Options::new(stations)
            };
            let report = sim::run(opts).await?;
            print!("{}", sim::to_text(&report));
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
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
