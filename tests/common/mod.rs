//! The harness of vodmesh's integration tests, one concept a module:
//!
//! - [`swarm`]: stations in this process, as many as a test needs (a home station that is the
//!   auth server and content manager, stations enrolled with it), and waiting for a swarm to
//!   converge;
//! - [`process`]: `vodmesh-node` processes (stations and engine processes) driven through the
//!   command-line contract, killed when dropped, and what they write, waited on as it comes;
//! - [`cli`]: the `vodmesh` and `vodmesh-console` command lines (keygen, enroll, subscribers,
//!   ingest, play), each written out once; [`status`]: `vodmesh status --json` read back;
//! - [`console`]: consoles in this process that speak the control and stream protocols
//!   themselves;
//! - [`wait`]: waiting on a condition or an event with a deadline;
//! - [`stored`]: what a stopped station's engines hold on disk;
//! - [`media`]: test content (random bytes, videos made by ffmpeg) and the HLS gateway;
//! - [`http`]: a file server for ingest sources, and a client for `/metrics` and pages;
//! - [`hosts`]: hosts as network namespaces, links shaped and cut;
//! - [`rogue`]: a peer that speaks the registry's protocol without being a station, and the
//!   records and certificates it (or a member) sends;
//! - [`require`]: what a test needs from the machine, and the rule when it is missing
//!   (skipped with a reason, a failure under CI).

pub mod cli;
pub mod console;
pub mod hosts;
pub mod http;
pub mod media;
pub mod process;
pub mod replica;
pub mod require;
pub mod rogue;
pub mod status;
pub mod stored;
pub mod swarm;
pub mod wait;
