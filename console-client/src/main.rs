//! `vodmesh-console`: log in, list programs and play them from the swarm.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use libp2p::Multiaddr;
use tokio::io::AsyncWrite;
use tokio::task::JoinSet;
use vodmesh_client::auth::{AuthClient, find_auth_server};
use vodmesh_client::cli::{Docs, EXIT_CODES, LogArgs, usage_error};
use vodmesh_client::files::{Home, read_password, read_token, write_private};
use vodmesh_client::{DirectorClient, DirectorError};
use vodmesh_console::output::Piped;
use vodmesh_console::pin;
use vodmesh_console::play::{self, Speed};
use vodmesh_console::remember;
use vodmesh_console::terminal::{self, Keys};
use vodmesh_proto::director::{Request, Response};
use vodmesh_proto::station::StationRecord;
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::Audience;

/// The vodmesh subscriber console: list programs and play them, each segment streamed from
/// the engine that holds it and verified against the program's signed manifest.
///
/// The console keeps its identity and tokens under $VODMESH_HOME (default: the platform data
/// directory, e.g. ~/.local/share/vodmesh): identity.key and tokens/console.token; and, after
/// a login, the swarm's directors in swarm.json, so that --node may be left out (VODMESH_NODE
/// overrides them).
#[derive(Parser, Debug)]
#[command(name = "vodmesh-console", version = vodmesh_client::version!(), after_help = EXIT_CODES)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Lists the published programs.
    Ls {
        /// Any station's director, ending in /p2p/<peer id>. Default: VODMESH_NODE, else the
        /// swarm remembered at login (the first director that answers).
        #[arg(long, value_name = "MULTIADDR")]
        node: Option<Multiaddr>,
        /// Print {"programs": [...]} as JSON, as `vodmesh programs --json` does.
        #[arg(long)]
        json: bool,
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
        /// Any station's director, ending in /p2p/<peer id>. Default: VODMESH_NODE, else the
        /// swarm remembered at login (the first director that answers).
        #[arg(long, value_name = "MULTIADDR")]
        node: Option<Multiaddr>,
        /// Start this many seconds into the program (before its end).
        #[arg(long, default_value_t = 0.0, value_name = "SECONDS", value_parser = seconds)]
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
        /// stalls, waits, engines, stations, verified, seeks, swaps, quit; for a program
        /// with renditions also renditions (segments fetched in each) and rendition_switches.
        #[arg(long, value_name = "FILE")]
        stats: Option<PathBuf>,
        /// For a program encoded at several bitrates (`vodmesh ingest --ladder`): play this
        /// rendition only (e.g. 720p). Without it the console picks one per segment from the
        /// throughput it measures and its buffer.
        #[arg(long, value_name = "NAME")]
        rendition: Option<String>,
        /// The program id or its exact title.
        program: String,
    },
    /// Proves a subscriber to the auth server (found through the swarm) and stores the console
    /// token, bound to this console's identity, in $VODMESH_HOME/tokens/console.token.
    Login {
        /// Any station's director address, ending in /p2p/<peer id>. Default: VODMESH_NODE,
        /// else the swarm remembered at the last login.
        #[arg(long, value_name = "MULTIADDR")]
        node: Option<Multiaddr>,
        /// Subscriber name.
        #[arg(long, value_name = "NAME")]
        user: String,
        /// The password, first line of this file.
        #[arg(long, value_name = "FILE")]
        password_file: PathBuf,
        /// Trust the auth server of this issuer (`ed25519:...`, as `--trust` takes it) and pin
        /// it. Without it: the issuer pinned at the first login ($VODMESH_HOME/issuer), and at
        /// the first login the one found.
        #[arg(long, value_name = "PUBKEY")]
        issuer: Option<vodmesh_proto::token::IssuerKey>,
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
        /// Any station's director, ending in /p2p/<peer id>. Default: VODMESH_NODE, else the
        /// swarm remembered at login (the first director that answers).
        #[arg(long, value_name = "MULTIADDR")]
        node: Option<Multiaddr>,
        /// The HTTP address to listen on (0.0.0.0:PORT serves other machines too: its URLs
        /// then start with an access key, printed once, since whoever reaches the gateway
        /// watches as you).
        #[arg(long, value_name = "ADDR:PORT", default_value = vodmesh_console::serve::DEFAULT_HTTP)]
        http: std::net::SocketAddr,
        /// The access key URLs start with (`http://ADDR:PORT/KEY/...`), to keep them the same
        /// across restarts. Default: a fresh one at each start beyond loopback, none on loopback
        /// (where only requests naming this machine, localhost or an IP address, are served).
        #[arg(long, value_name = "KEY", env = "VODMESH_ACCESS_KEY", value_parser = access_key)]
        access_key: Option<String>,
    },
    /// Prints a URL that plays a program (by id or exact title) in any standard player
    /// (ffplay, VLC, Safari, hls.js): the HLS playlist of a station's HTTP edge
    /// (`vodmesh-node --http`), carrying a URL token of the logged-in subscriber.
    ///
    /// The token is asked of the auth server in exchange for the console token of
    /// `vodmesh-console login`; it opens this program only, until it expires, and from
    /// --addr only when given. Whoever has the URL watches as you until then.
    Url {
        /// The director whose HTTP edge the URL names, ending in /p2p/<peer id>. Default:
        /// VODMESH_NODE, else the swarm remembered at login.
        #[arg(long, value_name = "MULTIADDR")]
        node: Option<Multiaddr>,
        /// Lifetime of the URL, seconds (the auth server caps it; default its own, 6 h).
        #[arg(long, value_name = "SECS")]
        ttl: Option<u64>,
        /// Bind the URL to players at these addresses (`203.0.113.0/24`, or one address).
        #[arg(long, value_name = "ADDR[/BITS]")]
        addr: Option<vodmesh_proto::token::AddrPrefix>,
        /// The program id or its exact title.
        program: String,
    },
    /// Asks a director for its station record and prints it.
    Ping {
        /// The director's address, ending in /p2p/<peer id>. Default: VODMESH_NODE, else the
        /// swarm remembered at login.
        #[arg(long, value_name = "MULTIADDR")]
        node: Option<Multiaddr>,
    },
    #[command(flatten)]
    Docs(Docs),
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

fn main() {
    let args = Args::parse();
    if let Cmd::Docs(docs) = &args.cmd {
        docs.exit(Args::command());
    }
    vodmesh_client::cli::main("warn", args.log, run(args.cmd));
}

/// A number of seconds, 0 or more (not `inf` or `nan`).
fn seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => Ok(s),
        _ => Err("a number of seconds, 0 or more".into()),
    }
}

/// A token's lifetime of `ms` for people: whole hours to the nearest (a 12 h token is said to
/// be valid 12 h, not the 11 h and some minutes left when it is printed), minutes under one.
fn lifetime(ms: u64) -> String {
    const MINUTE: u64 = 60_000;
    const HOUR: u64 = 60 * MINUTE;
    if ms + HOUR / 2 >= HOUR {
        format!("{} h", (ms + HOUR / 2) / HOUR)
    } else {
        format!("{} min", (ms + MINUTE / 2) / MINUTE)
    }
}

/// The director to ask: `--node`, else `VODMESH_NODE`, else the first of the remembered
/// swarm that answers ([`remember`]).
async fn director(node: Option<Multiaddr>) -> Result<Multiaddr> {
    let env = std::env::var(remember::ENV).ok();
    let remembered = match (&node, &env) {
        (None, None) => remember::load(&Home::from_env()?)?,
        _ => Vec::new(),
    };
    let candidates = remember::candidates(node, env.as_deref(), remembered)?;
    Ok(remember::first_answering(&candidates).await?)
}

async fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Ping { node } => ping(&director(node).await?).await,
        Cmd::Url {
            node,
            ttl,
            addr,
            program,
        } => url(&director(node).await?, &program, ttl, addr).await,
        // Handled in `main`, before the runtime starts.
        Cmd::Docs(_) => Ok(()),
        Cmd::Ls { node, json } => ls(&director(node).await?, json).await,
        Cmd::Serve {
            node,
            http,
            access_key,
        } => serve(&director(node).await?, http, access_key).await,
        Cmd::Login {
            node,
            user,
            password_file,
            admin,
            issuer,
        } => login(&director(node).await?, &user, &password_file, admin, issuer).await,
        Cmd::Play {
            node,
            start,
            out,
            player,
            speed,
            buffer,
            stats,
            rendition,
            program,
        } => {
            if !(0.0..=600.0).contains(&buffer) {
                usage_error("--buffer must be between 0 and 600 seconds");
            }
            let speed = match speed {
                SpeedArg::One => Speed::Realtime {
                    buffer: std::time::Duration::from_secs_f64(buffer),
                },
                SpeedArg::Max => Speed::Max,
            };
            let node = director(node).await?;
            let output = Output::open(out, player).await?;
            let target = (program.as_str(), rendition.as_deref());
            run_play(&node, target, start, output, speed, stats).await
        }
    }
}

async fn ls(node: &Multiaddr, json: bool) -> Result<()> {
    let client = Arc::new(DirectorClient::connect(node, None).await?);
    let programs = play::published(&client).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&play::programs_json(&programs))?
        );
        return Ok(());
    }
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
            vodmesh_client::cli::printable(&p.title)
        );
    }
    Ok(())
}

/// What to do about a console token that is not one.
const LOG_IN_AGAIN: &str = "log in again (vodmesh-console login) to replace it";

/// The console's identity and token, from `vodmesh-console login`; the task that keeps the
/// token fresh goes into `background` (none without a token: then the swarm refuses to
/// stream).
fn credentials(node: &Multiaddr, background: &mut JoinSet<()>) -> Result<play::Credentials> {
    let home = Home::from_env()?;
    let token_path = home.token_path("console");
    if !token_path.exists() {
        return Ok(play::Credentials::default());
    }
    let key = home.identity()?;
    let token = read_token(&token_path, "console token", LOG_IN_AGAIN)?;
    let mut credentials =
        play::Credentials::new(key.clone(), token).remembering(remember::known(&home));
    credentials.pinned = pin::load(&home, None)?.map(|(issuer, _)| issuer);
    credentials.remember_in = Some(home);
    // Refreshed in the background before it expires, without stopping playback.
    background.spawn(play::keep_fresh(
        node.clone(),
        key,
        credentials.token.clone(),
        Some(token_path),
    ));
    Ok(credentials)
}

/// An `--access-key`: one path segment of URL-safe characters, long enough not to guess.
fn access_key(key: &str) -> std::result::Result<String, String> {
    let ok = key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if key.len() < 16 || !ok {
        return Err("16 characters or more of A-Z, a-z, 0-9, - and _".into());
    }
    Ok(key.to_string())
}

async fn serve(
    node: &Multiaddr,
    http: std::net::SocketAddr,
    access_key: Option<String>,
) -> Result<()> {
    let mut background = JoinSet::new();
    let credentials = credentials(node, &mut background)?;
    if credentials.key.is_none() {
        eprintln!(
            "warning: no console token in $VODMESH_HOME: run `vodmesh-console login` first, \
             or the swarm will refuse to stream"
        );
    }
    Ok(vodmesh_console::serve::run(node.clone(), credentials, http, access_key).await?)
}

/// Where `play` writes the media.
enum Output {
    /// Stdout when it is a pipe.
    Pipe(Piped),
    Stdout(tokio::io::Stdout),
    /// The file, and its path when this play created it (removed if the play fails before
    /// writing a byte to it).
    File(tokio::fs::File, Option<PathBuf>),
    /// A player's standard input, the player, and its command.
    Player(tokio::process::ChildStdin, tokio::process::Child, String),
}

impl Output {
    /// `--out FILE`, `--out -` or `--player CMD`.
    async fn open(out: Option<String>, player: Option<String>) -> Result<Self> {
        match (out.as_deref(), player) {
            (Some(_), Some(_)) => bail!("give either --out or --player, not both"),
            (Some("-"), None) => match Piped::new(std::io::stdout()).context("stdout")? {
                Some(pipe) => Ok(Self::Pipe(pipe)),
                None => Ok(Self::Stdout(tokio::io::stdout())),
            },
            (Some(path), None) => {
                let new = tokio::fs::symlink_metadata(path).await.is_err();
                let file = (tokio::fs::File::create(path).await)
                    .with_context(|| format!("cannot create {path}"))?;
                Ok(Self::File(file, new.then(|| PathBuf::from(path))))
            }
            (None, Some(cmd)) => {
                let mut child = tokio::process::Command::new("sh")
                    .args(["-c", &cmd])
                    .stdin(std::process::Stdio::piped())
                    .spawn()
                    .with_context(|| format!("cannot start the player: {cmd}"))?;
                let stdin = child.stdin.take().context("player has no stdin")?;
                Ok(Self::Player(stdin, child, cmd))
            }
            (None, None) => bail!("give --out FILE, --out - (stdout) or --player CMD"),
        }
    }

    /// The writer, and how much to gather before a write to it.
    fn writer(&mut self) -> (&mut (dyn AsyncWrite + Unpin), usize) {
        match self {
            Self::Pipe(w) => (w, play::PIPE_OUT_BUFFER),
            Self::Stdout(w) => (w, play::OUT_BUFFER),
            Self::File(w, _) => (w, play::OUT_BUFFER),
            Self::Player(w, ..) => (w, play::OUT_BUFFER),
        }
    }

    /// After a play that failed: a file it created and wrote nothing to is removed (a refused
    /// play leaves no empty file behind).
    async fn abandon(self) {
        if let Self::File(file, Some(path)) = self
            && file
                .metadata()
                .await
                .is_ok_and(|m| m.is_file() && m.len() == 0)
        {
            drop(file);
            let _ = tokio::fs::remove_file(&path).await;
        }
    }

    /// After playback: a file made durable, a player given the end of its input and waited
    /// for.
    async fn finish(self) -> Result<()> {
        match self {
            Self::Pipe(_) | Self::Stdout(_) => {}
            // Durable when it is a file (not /dev/null or a pipe, which cannot sync).
            Self::File(file, _) => {
                if file.metadata().await.is_ok_and(|m| m.is_file()) {
                    file.sync_all().await?;
                }
            }
            // A player that could not run (not found: 127) or failed says so; one that
            // quit, or was stopped by a signal, does not.
            Self::Player(stdin, mut child, cmd) => {
                drop(stdin);
                let status = child.wait().await?;
                if let Some(code) = status.code().filter(|c| *c != 0) {
                    bail!("the player exited with status {code}: {cmd}");
                }
            }
        }
        Ok(())
    }
}

/// `vodmesh-console play`: `target` is the program and the rendition pinned, if any.
async fn run_play(
    node: &Multiaddr,
    (program, rendition): (&str, Option<&str>),
    start: f64,
    mut output: Output,
    speed: Speed,
    stats_file: Option<PathBuf>,
) -> Result<()> {
    let mut background = JoinSet::new();
    let credentials = match credentials(node, &mut background) {
        Ok(credentials) => credentials,
        Err(e) => {
            // No play: a file `--out` made for it is not left behind, empty.
            output.abandon().await;
            return Err(e);
        }
    };
    // On a terminal: a progress line, and keys (space, left/right, q) when stdin is one too.
    let show = std::io::stderr().is_terminal();
    let keys = if show && std::io::stdin().is_terminal() {
        match Keys::start() {
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
    let (keys, mut controls) = keys.map_or((None, None), |(k, c)| (Some(k), Some(c)));
    // Without keys (no terminal), SIGINT and SIGTERM quit as `q` does: the play ends, its
    // --stats are written ("quit": true) and the engines are told, instead of the process
    // dying with nothing written.
    if controls.is_none() {
        let mut stop = vodmesh_client::cli::Stop::install()?;
        let (quit, rx) = tokio::sync::mpsc::channel(1);
        background.spawn(async move {
            stop.wait().await;
            let _ = quit.send(play::Control::Quit).await;
        });
        controls = Some(rx);
    }
    let progress = |p: &play::Progress<'_>| {
        if show {
            terminal::show(p);
        }
    };
    let writer = output.writer();
    let target = (node, &credentials, program, rendition);
    let result = play::play_rendition(target, start, speed, writer, controls, progress).await;
    // The terminal leaves raw mode before anything else is printed.
    drop(keys);
    if show {
        eprintln!();
    }
    let stats = match result {
        Ok(stats) => stats,
        Err(e) => {
            output.abandon().await;
            return Err(e.into());
        }
    };
    output.finish().await?;
    if let Some(path) = stats_file {
        std::fs::write(&path, serde_json::to_vec_pretty(&stats)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn ping(node: &Multiaddr) -> Result<()> {
    let client = DirectorClient::connect(node, None).await?;
    match client.call(Request::Station).await? {
        Response::Station(signed) => {
            let rec = StationRecord::verify(&signed, now_ms())?;
            println!(
                "station {} with {} engine(s)",
                rec.director,
                rec.engines.len()
            );
            Ok(())
        }
        other => Err(DirectorError::unexpected(&other).into()),
    }
}

/// `vodmesh-console url`: the director's HTTP edge, the program, a URL token.
async fn url(
    node: &Multiaddr,
    program: &str,
    ttl: Option<u64>,
    addr: Option<vodmesh_proto::token::AddrPrefix>,
) -> Result<()> {
    let home = Home::from_env()?;
    let token_path = home.token_path("console");
    if !token_path.exists() {
        bail!("not logged in: run vodmesh-console login first");
    }
    let key = home.identity()?;
    let console_token = read_token(&token_path, "console token", LOG_IN_AGAIN)?;
    let client = Arc::new(DirectorClient::connect(node, Some(key.clone())).await?);
    let program = play::resolve(&client, program).await?;
    let record = match client.call(Request::Station).await? {
        Response::Station(signed) => StationRecord::verify(&signed, now_ms())?,
        other => return Err(DirectorError::unexpected(&other).into()),
    };
    let Some(http) = record.http else {
        bail!("this station serves no HTTP: start it with --http, or name another with --node");
    };
    // A director on every interface is reached at the host --node names.
    let host = if http.ip().is_unspecified() {
        host_of(node).context("--node names no IP address or host name")?
    } else {
        http.ip().to_string()
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let server = find_auth_server(node, key.clone()).await?;
    let issuer = vodmesh_proto::token::Claims::peek(&console_token)?.issuer;
    if server.issuer != issuer {
        bail!(
            "the auth server signs with {}, not with {issuer}, the issuer of this console's token: log in again",
            server.issuer
        );
    }
    let auth = AuthClient::connect(&server, key).await?;
    let request = vodmesh_proto::auth::Request::UrlToken {
        token: serde_bytes::ByteBuf::from(console_token),
        program: Some(program),
        addr,
        ttl_s: ttl,
    };
    let token = auth.token(request).await?;
    // Checked as an engine will check it, from an address the token allows.
    let from = addr.map_or(std::net::IpAddr::from([127, 0, 0, 1]), |a| a.ip);
    (server.trusted())
        .verify_url(&token, now_ms(), &program, from)
        .context("the auth server returned an invalid URL token")?;
    let token = vodmesh_proto::token::to_url_param(&token);
    let scheme = if record.https { "https" } else { "http" };
    println!(
        "{scheme}://{host}:{}/v/{program}/index.m3u8?token={token}",
        http.port()
    );
    Ok(())
}

/// The IP address or DNS name a multiaddr dials.
fn host_of(addr: &Multiaddr) -> Option<String> {
    use libp2p::multiaddr::Protocol;
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(ip.to_string()),
        Protocol::Ip6(ip) => Some(ip.to_string()),
        Protocol::Dns(name) | Protocol::Dns4(name) | Protocol::Dns6(name) => Some(name.to_string()),
        _ => None,
    })
}

async fn login(
    node: &Multiaddr,
    user: &str,
    password_file: &Path,
    admin: bool,
    issuer: Option<vodmesh_proto::token::IssuerKey>,
) -> Result<()> {
    let password = read_password(password_file)?;
    let home = Home::from_env()?;
    let key = home.identity()?;
    let me = key.public().to_peer_id();
    let pinned = pin::load(&home, issuer)?;
    let server = find_auth_server(node, key.clone()).await?;
    // Decided before the password leaves this console.
    let first = pin::check(pinned, server.issuer)? == pin::Pin::First;
    let save_pin = first || issuer.is_some();
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
    if save_pin {
        let pinned = pin::save(&home, server.issuer)?;
        println!("pinned issuer {} in {}", server.issuer, pinned.display());
    }
    let valid = lifetime(claims.expires_ms.saturating_sub(now_ms()));
    println!(
        "logged in: {kind} token for {me} (valid {valid}) in {}",
        path.display()
    );
    // The swarm, for later commands without --node: this director first, then the others.
    let mut directors = vec![node.clone()];
    directors.extend(swarm_directors(node).await);
    let kept = remember::save(&home, &directors)?;
    println!(
        "remembered {} director(s) of the swarm in {}: --node may be left out from now on",
        remember::load(&home)?.len(),
        kept.display()
    );
    Ok(())
}

/// The first address of every live station's director, as the director at `node` lists
/// them; none when it cannot say (the login stands: `node` alone is remembered).
async fn swarm_directors(node: &Multiaddr) -> Vec<Multiaddr> {
    let Ok(client) = DirectorClient::connect(node, None).await else {
        return Vec::new();
    };
    match client.request(Request::Swarm).await {
        Ok(Response::Swarm(list)) => remember::listed_directors(&list, None),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_s_lifetime_is_said_to_the_nearest_hour_or_minute() {
        // A 12 h token, printed a moment after it was issued.
        assert_eq!(lifetime(12 * 3_600_000 - 150), "12 h");
        assert_eq!(lifetime(90 * 60_000), "2 h");
        assert_eq!(lifetime(89 * 60_000), "1 h");
        // Under the half hour: minutes.
        assert_eq!(lifetime(29 * 60_000 + 40_000), "30 min");
        assert_eq!(lifetime(10_000), "0 min");
    }
}
