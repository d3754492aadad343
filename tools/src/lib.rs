//! The `vodmesh` operator tool.
//!
//! - [`status`]: the whole swarm, found through the registry, as text or JSON.
//! - [`ingest`]: a program into a home station.
//! - [`programs`]: a content manager's catalog.
//! - [`bench`]: measurements as JSON, beside `dd` and other references.
//! - [`station`]: `vodmesh station drain`, a station drained from afar by an admin.
//! - [`admin`]: `vodmesh user add` and `vodmesh enroll`, admin requests to the auth server.
//! - [`demo`]: the embedded default: a swarm on loopback, started, checked, reported.
//! - [`sim`]: many stations' directors in one process, joined into one registry, measured.
//! - [`allocator`]: the binary's global allocator (mimalloc, jemalloc for the simulation).

pub mod admin;
pub mod allocator;
pub mod bench;
pub mod demo;
pub mod ingest;
pub mod ladder;
pub mod programs;
pub mod publish;
pub mod sim;
pub mod source;
pub mod station;
pub mod status;
