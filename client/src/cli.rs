//! What every vodmesh binary (`vodmesh-node`, `vodmesh`, `vodmesh-console`) does first and
//! last: log to stderr with `tracing`, and end a failed run with one `error: ...` line.

use std::fmt::Display;

/// Sends `tracing` events to stderr, filtered by `RUST_LOG`, else by `default_filter` (an
/// `EnvFilter` directive such as `warn,vodmesh_node=info`).
pub fn init_tracing(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// A binary's `main`: starts tracing ([`init_tracing`]) and a multi-threaded tokio runtime,
/// and runs `run` on it. A failure is one line on stderr, `error: ` and the error with its
/// causes (`{:#}`), and exit status 1.
pub fn main<E: Display>(default_filter: &str, run: impl Future<Output = Result<(), E>>) {
    init_tracing(default_filter);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(run).map_err(|e| format!("{e:#}")),
        Err(e) => Err(format!("cannot start the async runtime: {e}")),
    };
    if let Err(line) = result {
        eprintln!("error: {line}");
        // At once, as `#[tokio::main]` did: a blocking task (a read of stdin) must not hold
        // the exit up.
        std::process::exit(1);
    }
}
