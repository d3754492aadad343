//! Caps on the libp2p connections a director or an engine takes in (libp2p's
//! `connection_limits`): a peer id costs nothing, and before, a peer could open as many
//! connections as it liked, each with its buffers, handlers and handshake.
//!
//! The caps sit well above what a station meets in service: a console or an engine holds
//! one or two connections (TCP and QUIC, or two dials crossing), but a station's director
//! holds up to 9 at the auth station while it enrolls (its registry and director swarms, and
//! a client each for its enrollment, renewal and tokens, all under its key: measured in
//! `tests/publish.rs`; a cap of 8 failed its enrollment); a station serves thousands of
//! consoles (`vodmesh bench` drives 1000 against one engine), and connects them a few at a
//! time.

use libp2p::connection_limits::{Behaviour, ConnectionLimits};

/// Connections one peer may hold with this one, in and out.
pub const MAX_PER_PEER: u32 = 32;
/// Incoming connections established at once.
pub const MAX_INCOMING: u32 = 8192;
/// Incoming connections in their handshake at once.
pub const MAX_PENDING_INCOMING: u32 = 1024;

/// The behaviour that refuses connections past the caps.
pub(crate) fn behaviour() -> Behaviour {
    Behaviour::new(
        ConnectionLimits::default()
            .with_max_established_per_peer(Some(MAX_PER_PEER))
            .with_max_established_incoming(Some(MAX_INCOMING))
            .with_max_pending_incoming(Some(MAX_PENDING_INCOMING)),
    )
}
