//! What every vodmesh binary (`vodmesh-node`, `vodmesh`, `vodmesh-console`) does first and
//! last: log to stderr with `tracing` (text or JSON, [`LogFormat`]), end a failed run with one
//! `error: ...` line and a documented exit status ([`EXIT_CODES`]), and describe itself:
//! `--version` with the git commit ([`version!`](crate::version)), shell completions and man
//! pages generated from its clap definition ([`Docs`]).

use std::fmt::Display;
use std::io::Write;
use std::path::PathBuf;

/// Exit status of a run that failed: the one `error: ...` line on stderr says why.
pub const EXIT_ERROR: i32 = 1;
/// Exit status of a command line or a configuration that is wrong (clap's own usage errors,
/// a bad `--config` file or `VODMESH_*` variable, a value out of range): nothing was started.
pub const EXIT_USAGE: i32 = 2;

/// The exit statuses, as every binary's `--help` ends (`after_help`) and the README lists.
pub const EXIT_CODES: &str = "\
Exit status: 0 done (also a station, an engine or a gateway stopped by SIGINT or SIGTERM
after a clean shutdown; --help, --version); 1 error (one `error: ...` line on stderr says
what to do); 2 bad command line or configuration (unknown flag or key, invalid value):
nothing was started.";

/// `--version`: the crate version and the git commit it was built from (`unknown` outside a
/// git checkout), e.g. `0.1.0 (commit a6cd5b3)`. Expands in the calling crate, whose build
/// script (`build/git_commit.rs` of the workspace) sets `VODMESH_GIT_COMMIT`.
#[macro_export]
macro_rules! version {
    () => {
        concat!(
            env!("CARGO_PKG_VERSION"),
            " (commit ",
            env!("VODMESH_GIT_COMMIT"),
            ")"
        )
    };
}

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people: `2026-12-02T05:50:30Z  INFO vodmesh_node: director listening peer=...`.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields, spans), for log shippers.
    Json,
}

/// The logging flags every binary takes (flattened into its clap definition).
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct LogArgs {
    /// Log lines on stderr as `text` or `json` (one object per line, for log shippers). What
    /// is logged: RUST_LOG (e.g. `info`, `warn,vodmesh_node=debug`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT", global = true)]
    pub log_format: LogFormat,
}

/// Sends `tracing` events to stderr in `format`, filtered by `RUST_LOG`, else by
/// `default_filter` (an `EnvFilter` directive such as `warn,vodmesh_node=info`).
pub fn init_tracing(default_filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    // Colours only on a terminal: a log redirected to a file has no escape codes in it.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `text` as it may be written to a terminal: control characters (escape sequences that would
/// move the cursor, retitle the window or hide what follows; newlines that would forge lines)
/// and bidirectional overrides written as `\u{..}`. For what other peers said (titles,
/// regions, disk paths, error messages) before it is printed.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `error` and its causes on one line, `: ` between them, leaving out a cause the line ends
/// with already: an error that prints its source in its own message (as many of the crates'
/// errors do) would otherwise say it twice, `... in use (os error 98): ... in use (os error
/// 98)`.
pub fn one_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = e.source();
    }
    line
}

/// A binary's `main`: starts tracing ([`init_tracing`]) and a multi-threaded tokio runtime,
/// and runs `run` on it. A failure is one line on stderr, `error: ` and the error with its
/// causes ([`one_line`]), and exit status [`EXIT_ERROR`].
pub fn main<E: AsRef<dyn std::error::Error + Send + Sync>>(
    default_filter: &str,
    log: LogArgs,
    run: impl Future<Output = Result<(), E>>,
) {
    init_tracing(default_filter, log.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(run).map_err(|e| one_line(e.as_ref())),
        Err(e) => Err(format!("cannot start the async runtime: {e}")),
    };
    if let Err(line) = result {
        eprintln!("error: {}", printable(&line));
        // At once, as `#[tokio::main]` did: a blocking task (a read of stdin) must not hold
        // the exit up.
        std::process::exit(EXIT_ERROR);
    }
}

/// SIGINT and SIGTERM, caught from when it is installed: a long-running command (a station,
/// an engine, the HLS gateway) installs it first, so that a signal that arrives while it is
/// still starting stops it as cleanly as a later one, with status 0, instead of killing it.
pub struct Stop {
    #[cfg(unix)]
    signals: [tokio::signal::unix::Signal; 2],
}

impl Stop {
    /// Installs the handlers (inside a tokio runtime).
    pub fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                signals: [
                    signal(SignalKind::terminate())?,
                    signal(SignalKind::interrupt())?,
                ],
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Waits for SIGINT or SIGTERM, or returns at once for one that came since
    /// [`Stop::install`] (or the last wait); which one. It may be waited for again (a second
    /// signal during a station's drain stops it at once).
    pub async fn wait(&mut self) -> Signal {
        #[cfg(unix)]
        {
            let [term, int] = &mut self.signals;
            tokio::select! {
                _ = term.recv() => Signal::Term,
                _ = int.recv() => Signal::Int,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Int
        }
    }
}

/// The signal that asked the process to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C): stop now.
    Int,
    /// SIGTERM (systemd, docker, kubernetes): a station drains first.
    Term,
}

/// Ends the process on a command line or configuration that is wrong: `error: ` and `what`
/// on one line, exit status [`EXIT_USAGE`].
pub fn usage_error(what: impl Display) -> ! {
    eprintln!("error: {what}");
    std::process::exit(EXIT_USAGE);
}

/// The subcommands that describe a binary, generated from its clap definition (flattened into
/// each binary's subcommands).
#[derive(clap::Subcommand, Clone, Debug)]
pub enum Docs {
    /// Prints a shell completion script: `source <(vodmesh completions bash)`, or save it where
    /// the shell loads completions (bash: /usr/share/bash-completion/completions/NAME; zsh: a
    /// directory of $fpath as _NAME; fish: ~/.config/fish/completions/NAME.fish).
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Prints the man page (roff) on stdout, e.g. `vodmesh man | man -l -`; with --dir, writes
    /// one page per subcommand (NAME.1, NAME-SUBCOMMAND.1) there.
    Man {
        /// Write the pages into this directory instead (e.g. /usr/local/share/man/man1).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

impl Docs {
    /// Writes what was asked for `cmd` (the binary's own `clap::Command`): a completion
    /// script or the man page on stdout, or man pages into a directory.
    pub fn run(&self, mut cmd: clap::Command) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        match self {
            Self::Completions { shell } => {
                // Into memory first: clap_complete panics on a write error (a closed pipe).
                let mut script = Vec::new();
                let name = cmd.get_name().to_string();
                clap_complete::generate(*shell, &mut cmd, name, &mut script);
                out.write_all(&script)?;
            }
            Self::Man { dir: Some(dir) } => {
                std::fs::create_dir_all(dir)?;
                clap_mangen::generate_to(cmd, dir)?;
            }
            Self::Man { dir: None } => clap_mangen::Man::new(cmd).render(&mut out)?,
        }
        out.flush()
    }

    /// Runs [`Docs::run`] and ends the process: status 0, or 1 with one `error:` line (a
    /// directory that cannot be written, a closed stdout).
    pub fn exit(&self, cmd: clap::Command) -> ! {
        match self.run(cmd) {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                eprintln!("error: cannot write the {}: {e}", self.what());
                std::process::exit(EXIT_ERROR);
            }
        }
    }

    fn what(&self) -> &'static str {
        match self {
            Self::Completions { .. } => "completion script",
            Self::Man { .. } => "man page",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Inner {
        #[error("Address already in use (os error 98)")]
        InUse,
    }

    /// An error that prints its source in its own message and also gives it as its source.
    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("cannot listen on /ip4/127.0.0.1/tcp/1: {0}")]
        Listen(#[source] Inner),
        #[error("starting the station")]
        Start(#[source] Box<Outer>),
    }

    #[test]
    fn an_error_line_says_each_cause_once() {
        let e = Outer::Start(Box::new(Outer::Listen(Inner::InUse)));
        assert_eq!(
            one_line(&e),
            "starting the station: cannot listen on /ip4/127.0.0.1/tcp/1: Address already in \
             use (os error 98)"
        );
        // The control: causes that say something new are all there, in order.
        #[derive(Debug, thiserror::Error)]
        #[error("reading the token")]
        struct Reading(#[source] std::io::Error);
        let e = Reading(std::io::Error::other("permission denied"));
        assert_eq!(one_line(&e), "reading the token: permission denied");
    }

    #[test]
    fn what_peers_said_prints_without_terminal_controls() {
        assert!(matches!(
            printable("Sintel (2010) — 4K"),
            std::borrow::Cow::Borrowed(_)
        ));
        let title = "a\u{1b}]0;owned\u{7}b\u{1b}[2Jc\nerror: forged\u{202e}d\u{9b}";
        let shown = printable(title);
        assert!(!shown.chars().any(|c| c.is_control()), "{shown}");
        assert_eq!(
            shown,
            "a\\u{1b}]0;owned\\u{7}b\\u{1b}[2Jc\\u{a}error: forged\\u{202e}d\\u{9b}"
        );
    }
}
