//! The `vodmesh` operator tool.
//!
//! - [`status`]: the whole swarm, found through the registry, as text or JSON.
//! - [`admin`]: `vodmesh user add` and `vodmesh enroll`, admin requests to the auth server.
//! - [`demo`]: the embedded default: a swarm on loopback, started, checked, reported.

pub mod admin;
pub mod demo;
pub mod status;
