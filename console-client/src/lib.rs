//! vodmesh-console: a subscriber's client of the swarm.
//!
//! - [`client`]: a connection to one director over `/vodmesh/director/1`, used by the console
//!   and by the `vodmesh` tool.
//! - [`play`]: playing a program with handoff from engine to engine, verified; `fetch`
//!   streams one segment (one stream per engine at a time, busy engines waited out) and
//!   `playback` holds the decisions (which segments a run writes, what follows a failed
//!   attempt), as plain functions.
//! - [`terminal`]: keys that steer playback and the progress line.
//! - [`serve`]: `vodmesh-console serve`, an HLS gateway for standard players and browsers.
//! - [`rpc`]: a request-response client of one peer for any vodmesh CBOR protocol.
//! - [`auth`]: `/vodmesh/auth/1` from the client side: finding the auth server, logins,
//!   admin requests, `$VODMESH_HOME`.

pub mod auth;
pub mod client;
mod fetch;
pub mod play;
mod playback;
pub mod rpc;
pub mod serve;
pub mod terminal;
