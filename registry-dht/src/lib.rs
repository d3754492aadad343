//! The media location registry (MLR): a Kademlia DHT whose servers are the directors.
//!
//! It stores three kinds of record (DESIGN.md §5), named by [`keys::RecordKind`]:
//!
//! - `station/<peer>`: the signed station record each director publishes about itself;
//! - `program/<id>`: provider records, the directors of stations holding a program;
//! - `catalog/<id>`: the content manager's signed catalog record of a program.
//!
//! Every inbound record is validated before it is stored ([`validate`]), and in a closed swarm
//! must come from a member ([`members`]: station certificates); the store survives a
//! restart ([`store`]); the node drives the Kademlia behaviour through [`registry::Registry`]
//! and talks to it with a [`handle::RegistryHandle`]; [`server`] is a registry server whole
//! (its swarm and loop), for the tools; [`stats`] is what a server counts; [`walk`] lists every
//! live station; [`redb_file`] is a redb file opened again after an I/O error, which every
//! database of a station goes through.

pub mod config;
pub mod handle;
pub mod keys;
pub mod members;
pub mod redb_file;
pub mod registry;
pub mod server;
pub mod stats;
pub mod store;
pub mod validate;
pub mod walk;

pub use keys::RecordKind;
pub use members::Members;
pub use redb_file::RedbFile;
pub use registry::{
    Command, Found, FoundRecords, HoldersTrace, Inbound, PROVIDER_TTL_FACTOR, Registry,
    RegistryConfig, RegistryError, RegistryHandle, RegistryStats,
};
pub use server::Server;
pub use store::{PersistentStore, StoreLimits};
pub use walk::{RecentWalk, Stations, WalkLimits, walk};
