//! The blade controller: the in-process channel from a station's engines to its director.
//!
//! Engines are separate libp2p peers, but they run in the station's process, so the director
//! learns about them over a bounded channel rather than the network.

use libp2p::{Multiaddr, PeerId};

/// What an engine tells its director.
#[derive(Clone, Debug)]
pub enum EngineReport {
    /// The engine listens and is ready to serve.
    Ready {
        /// Index of the engine in the station (0..N).
        index: usize,
        /// The engine's peer id.
        peer_id: PeerId,
        /// Where it listens.
        addrs: Vec<Multiaddr>,
    },
    /// The engine stopped.
    Down {
        /// Index of the engine in the station.
        index: usize,
    },
}
