//! vodmesh-console: a subscriber's client of the swarm.
//!
//! - [`client`]: a connection to one director over `/vodmesh/director/1`, used by the console
//!   and by the `vodmesh` tool.
//! - [`play`]: playing a program with handoff from engine to engine, verified.

pub mod client;
pub mod play;
