//! vodmesh-client: the caller side of vodmesh's control protocols, shared by the console,
//! the stations and the tools, so that a station never links the viewer.
//!
//! - [`rpc`]: [`RpcClient`], a client of one peer for any request-response protocol (the
//!   one dial loop and pending-request loop), which also opens streams to other peers.
//! - [`director`]: [`DirectorClient`], a client of one director (`/vodmesh/director/1`).
//! - [`auth`]: [`AuthClient`] of `/vodmesh/auth/1`, and finding the auth server through
//!   any director.
//! - [`files`]: password and token files, private writes, `$VODMESH_HOME`.
//! - [`identity`]: identity (key) files of every peer.
//! - [`cli`]: what every vodmesh binary does first and last (tracing, the `error:` line).

pub mod auth;
pub mod cli;
pub mod director;
pub mod files;
pub mod identity;
pub mod rpc;

pub use auth::{AuthClient, AuthError, AuthServer};
pub use director::{DirectorClient, DirectorError};
pub use rpc::{ClientError, RpcClient};
