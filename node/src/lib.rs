//! vodmesh-node: one media station (a director plus its engines), and the optional roles a
//! station can take on (home station, content manager, auth server).
//!
//! - [`station`]: starts a station (director + N engines) and stops it.
//! - [`director`]: the station's director peer: the registry server, the control protocol
//!   `/vodmesh/director/1`, the station record it republishes.
//! - `edge`: the HTTP edge's shared plumbing (`--http`: URL tokens, paths, one-line answers,
//!   CORS, the TCP or TLS listener with its idle cut).
//! - [`tls`]: the HTTP edge's TLS (`--tls-cert/--tls-key`).
//! - [`engine`]: one engine peer, with its own identity and listen addresses (the seed's blade).
//! - [`store`]: an engine's segment store: independent I/O channels per disk, a redb index,
//!   crash-safe verified writes, eviction; and the director's segment location table.
//! - [`content`]: the content manager: ingest sessions and the catalog.
//! - [`auth`]: the auth server's state: issuer key, subscriber database, rate-limited logins,
//!   enrollment, token issuance.
//! - [`events`]: what happens in a station, step by step (distribution, publish, misses,
//!   copies), sent to its [`station::Observer`] for tests and observers.
//! - [`control`]: the in-process channel between a director and its engines (the seed's blade
//!   controller).
//! - [`metrics`]: a station's counters and gauges, and the HTTP server of `--metrics`
//!   (Prometheus text, the status page).
//! - [`health`]: `/healthz` and `/readyz` of `--metrics`: when a station is ready.
//! - [`history`]: the last ten minutes of every station, for the status page's sparklines.
//! - [`status`]: the status page of `--metrics` and its `/status.json`.
//! - [`blade`]: `/vodmesh/blade/1`, engines in processes of their own attached to their
//!   director (deployment mode b), with heartbeats that mark a silent engine down.
//! - [`identity`]: identity files under the data directory (`vodmesh_client::identity`).
//! - [`config`]: what `vodmesh-node`'s flags configure.
//! - [`conn_limits`]: caps on the connections a director or an engine takes in.
//! - [`cli`]: `vodmesh-node`'s flags (clap), read from the command line, the environment and
//!   a `--config` file.
//! - [`nodefile`]: `DIR/node.json`, what scripts read to find a running station.
//! - [`data_dir`]: what a data directory holds, checked at a start: `DIR/lock` (one process
//!   per data directory), the state beside each identity, the engines that ran.
//! - `expiring`: a bounded map whose entries expire, for what a peer may leave behind.
//! - `peer_slots`: what one peer may hold at once of something bounded (engine copy and
//!   stream slots, a director's miss gathers).

pub mod auth;
pub mod blade;
pub mod cli;
pub mod config;
pub mod conn_limits;
pub mod content;
pub mod control;
pub mod data_dir;
pub mod director;
pub(crate) mod edge;
pub mod engine;
pub mod events;
pub(crate) mod expiring;
pub mod health;
pub mod history;
pub use vodmesh_client::identity;
mod listen;
pub use listen::Error as ListenError;
pub mod metrics;
pub mod nodefile;
pub(crate) mod peer_slots;
pub mod station;
pub mod status;
pub mod store;
pub mod tls;

pub use config::StationConfig;
pub use station::Station;
