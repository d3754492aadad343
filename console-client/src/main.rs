//! `vodmesh-console`: log in, list programs and play them from the swarm.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use libp2p::Multiaddr;
use vodmesh_console::auth::{AuthClient, Home, find_auth_server, read_password, write_private};
use vodmesh_console::client::DirectorClient;
use vodmesh_console::play::{self, Speed};
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::Audience;

/// The vodmesh subscriber console: list programs and play them, each segment streamed from
/// the engine that holds it and verified against the program's signed manifest.
///
/// The console keeps its identity and tokens under $VODMESH_HOME (default: the platform data
/// directory, e.g. ~/.local/share/vodmesh): identity.key and tokens/console.token.
#[derive(Parser, Debug)]
#[command(name = "vodmesh-console", version)]
enum Cmd {
    /// Lists the published programs.
    Ls {
        /// Any station's director, ending in /p2p/<peer id>.
        #[arg(long, value_name = "MULTIADDR")]
        node: Multiaddr,
    },
    /// Plays a program (by id or exact title).
    ///
    /// The output is always a stream a player can start on: an fMP4 program's
    /// initialization segment comes first, and again before the first media segment after
    /// --start or a seek (ffmpeg skips it as a repeated header); MPEG-TS and plain bytes are
    /// written as stored. An engine at its --max-streams is a wait, never an error: the
    /// console asks its director again (another holder, a copy onto an idle engine, another
    /// station) and stalls only when nothing can serve; --stats counts these `waits`.
    Play {
        /// Any station's director, ending in /p2p/<peer id>.
        #[arg(long, value_name = "MULTIADDR")]
        node: Multiaddr,
        /// Start this many seconds into the program.
        #[arg(long, default_value_t = 0.0, value_name = "SECONDS")]
        start: f64,
        /// Write the media to FILE, or to stdout with `-`.
        #[arg(long, value_name = "FILE|-")]
        out: Option<String>,
        /// Pipe the media into a player, e.g. "mpv -" or "ffplay -".
        #[arg(long, value_name = "CMD")]
        player: Option<String>,
        /// `1`: play by media time with a buffer ahead; `max`: as fast as the swarm delivers.
        #[arg(long, default_value = "1", value_enum)]
        speed: SpeedArg,
        /// At `--speed 1`: seconds of media to keep written ahead of the play position (at
        /// least one segment); what rides out the loss of an engine or a station.
        #[arg(long, default_value_t = 4.0, value_name = "SECONDS")]
        buffer: f64,
        /// Write playback statistics as JSON to FILE: startup_ms, bytes, segments, handoffs,
        /// stalls, waits, engines, stations, verified, seeks, swaps, quit.
        #[arg(long, value_name = "FILE")]
        stats: Option<PathBuf>,
        /// The program id or its exact title.
        program: String,
    },
    /// Proves a subscriber to the auth server (found through the swarm) and stores the console
    /// token, bound to this console's identity, in $VODMESH_HOME/tokens/console.token.
    Login {
        /// Any station's director address, ending in /p2p/<peer id>.
        #[arg(long, value_name = "MULTIADDR")]
        node: Multiaddr,
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
    /// An HLS gateway: serves the swarm's programs to standard players over HTTP
    /// (http://ADDR:PORT/<program>/index.m3u8, a player page at /<program>/, the list at /).
    ///
    /// Segments are fetched and verified as `play` does, with the console token of
    /// `vodmesh-console login`. Binds to loopback unless told otherwise.
    Serve {
        /// Any station's director, ending in /p2p/<peer id>.
        #[arg(long, value_name = "MULTIADDR")]
        node: Multiaddr,
        /// The HTTP address to listen on (0.0.0.0:PORT serves other machines too).
        #[arg(long, value_name = "ADDR:PORT", default_value = vodmesh_console::serve::DEFAULT_HTTP)]
        http: std::net::SocketAddr,
    },
    /// Asks a director for its station record and prints it.
    Ping {
        /// The director's address, ending in /p2p/<peer id>.
        #[arg(long, value_name = "MULTIADDR")]
        node: Multiaddr,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SpeedArg {
    #[value(name = "1")]
    One,
    Max,
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
    let result = match Cmd::parse() {
        Cmd::Ping { node } => ping(&node).await,
        Cmd::Ls { node } => ls(&node).await,
        Cmd::Serve { node, http } => serve(&node, http).await,
        Cmd::Login {
            node,
            user,
            password_file,
            admin,
        } => login(&node, &user, &password_file, admin).await,
        Cmd::Play {
            node,
            start,
            out,
            player,
            speed,
            buffer,
            stats,
            program,
        } => {
            if !(0.0..=600.0).contains(&buffer) {
                eprintln!("error: --buffer must be between 0 and 600 seconds");
                std::process::exit(2);
            }
            let speed = match speed {
                SpeedArg::One => Speed::Realtime {
                    buffer: std::time::Duration::from_secs_f64(buffer),
                },
                SpeedArg::Max => Speed::Max,
            };
            run_play(&node, &program, start, out, player, speed, stats).await
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn ls(node: &Multiaddr) -> Result<()> {
    let client = Arc::new(DirectorClient::connect(node, None).await?);
    let programs = play::published(&client).await?;
    if programs.is_empty() {
        // On stderr: stdout stays a list of programs (empty) for scripts.
        eprintln!("no published program in the swarm (yet)");
    }
    for p in programs {
        println!(
            "{}  {:>7.1} s  {:>8.1} MiB  {}",
            p.program,
            p.duration_ms as f64 / 1000.0,
            p.size as f64 / (1024.0 * 1024.0),
            p.title
        );
    }
    Ok(())
}

/// The console's identity and token, from `vodmesh-console login`, with the task that keeps
/// the token fresh (none without a token: then the swarm refuses to stream).
fn credentials(
    node: &Multiaddr,
) -> Result<(play::Credentials, Option<tokio::task::JoinHandle<()>>)> {
    let home = Home::from_env()?;
    let token_path = home.token_path("console");
    if !token_path.exists() {
        return Ok((play::Credentials::default(), None));
    }
    let key = home.identity()?;
    let token = vodmesh_console::auth::read_small(&token_path, "console token", 64 * 1024)?;
    let shared: play::SharedToken = Arc::new(std::sync::RwLock::new(Some(token)));
    // Refreshed in the background before it expires, without stopping playback.
    let refresher = vodmesh_console::auth::spawn_refresher(
        node.clone(),
        key.clone(),
        shared.clone(),
        Some(token_path),
    );
    Ok((
        play::Credentials {
            key: Some(key),
            token: shared,
        },
        Some(refresher),
    ))
}

async fn serve(node: &Multiaddr, http: std::net::SocketAddr) -> Result<()> {
    let (credentials, _refresher) = credentials(node)?;
    if credentials.key.is_none() {
        eprintln!(
            "warning: no console token in $VODMESH_HOME: run `vodmesh-console login` first, \
             or the swarm will refuse to stream"
        );
    }
    vodmesh_console::serve::run(node.clone(), credentials, http).await
}

async fn run_play(
    node: &Multiaddr,
    program: &str,
    start: f64,
    out: Option<String>,
    player: Option<String>,
    speed: Speed,
    stats_file: Option<PathBuf>,
) -> Result<()> {
    let (credentials, _refresher) = credentials(node)?;
    // On a terminal: a progress line, and keys (space, left/right, q) when stdin is one too.
    let show = std::io::stderr().is_terminal();
    let keys = if show && std::io::stdin().is_terminal() {
        match vodmesh_console::terminal::Keys::start() {
            Ok((keys, controls)) => {
                eprint!("keys: space pause/resume, left/right seek 30 s, q quit\r\n");
                Some((keys, controls))
            }
            Err(e) => {
                tracing::warn!(error = %e, "no keys: the terminal refused raw mode");
                None
            }
        }
    } else {
        None
    };
    let (keys, controls) = keys.map_or((None, None), |(k, c)| (Some(k), Some(c)));
    let progress = |p: &play::Progress<'_>| {
        if show {
            vodmesh_console::terminal::show(p);
        }
    };
    let result = async {
        match (out.as_deref(), player) {
            (Some(_), Some(_)) => bail!("give either --out or --player, not both"),
            (Some("-"), None) => {
                let mut stdout = tokio::io::stdout();
                play::play(
                    node,
                    &credentials,
                    program,
                    start,
                    speed,
                    &mut stdout,
                    controls,
                    progress,
                )
                .await
            }
            (Some(path), None) => {
                let mut file = tokio::fs::File::create(path)
                    .await
                    .with_context(|| format!("cannot create {path}"))?;
                let stats = play::play(
                    node,
                    &credentials,
                    program,
                    start,
                    speed,
                    &mut file,
                    controls,
                    progress,
                )
                .await?;
                // Durable when it is a file (not /dev/null or a pipe, which cannot sync).
                if file.metadata().await.is_ok_and(|m| m.is_file()) {
                    file.sync_all().await?;
                }
                Ok(stats)
            }
            (None, Some(cmd)) => {
                let mut child = tokio::process::Command::new("sh")
                    .args(["-c", &cmd])
                    .stdin(std::process::Stdio::piped())
                    .spawn()
                    .with_context(|| format!("cannot start the player: {cmd}"))?;
                let mut stdin = child.stdin.take().context("player has no stdin")?;
                let stats = play::play(
                    node,
                    &credentials,
                    program,
                    start,
                    speed,
                    &mut stdin,
                    controls,
                    progress,
                )
                .await?;
                drop(stdin);
                let _ = child.wait().await;
                Ok(stats)
            }
            (None, None) => bail!("give --out FILE, --out - (stdout) or --player CMD"),
        }
    }
    .await;
    // The terminal leaves raw mode before anything else is printed.
    drop(keys);
    if show {
        eprintln!();
    }
    let stats = result?;
    if let Some(path) = stats_file {
        std::fs::write(&path, serde_json::to_vec_pretty(&stats)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn ping(node: &Multiaddr) -> Result<()> {
    use vodmesh_proto::director::{Request, Response};
    use vodmesh_proto::station::StationRecord;
    let client = DirectorClient::connect(node, None).await?;
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
        Response::Error(e) => bail!("{}", e.message),
        other => bail!("unexpected answer: {other:?}"),
    }
}
async fn login(
    node: &Multiaddr,
    user: &str,
    password_file: &std::path::Path,
    admin: bool,
) -> Result<()> {
    let password = read_password(password_file)?;
    let home = Home::from_env()?;
    let key = home.identity()?;
    let me = key.public().to_peer_id();
    let server = find_auth_server(node, key.clone()).await?;
    let client = AuthClient::connect(&server, key).await?;
    let user = user.to_string();
    let (request, audience, kind) = if admin {
        (
            vodmesh_proto::auth::Request::AdminLogin { user, password },
            Audience::Admin,
            "admin",
        )
    } else {
        (
            vodmesh_proto::auth::Request::Login { user, password },
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
