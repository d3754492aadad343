//! vodmesh-node: a media station (a director and its engines), and the roles a station may
//! add: content manager, home station, authentication server.
//!
//! - [`auth`]: the authentication server's state: issuer key, subscriber database (redb,
//!   argon2id), login backoff, station enrollment, console/engine/admin/enrollment tokens.
//!   Networking comes later; tokens themselves are `vodmesh_proto::token`.

pub mod auth;
