//! The `vodmesh` operator tool.
//!
//! - [`status`]: the whole swarm, found through the registry, as text or JSON.
//! - [`demo`]: the embedded default: a swarm on loopback, started, checked, reported.

pub mod demo;
pub mod status;
