//! `DIR/node.json`: how scripts and tests find a running station (DESIGN.md §11).

use std::path::Path;

use anyhow::{Context, Result};
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

/// A peer and where it listens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerEntry {
    /// The peer id.
    pub peer_id: PeerId,
    /// Where other peers reach it, each ending in `/p2p/<peer id>`: its `--announce`
    /// addresses, then every address it listens on (a listener on 0.0.0.0 at every address
    /// of the host), loopback last.
    pub addrs: Vec<Multiaddr>,
}

/// The contents of `node.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeFile {
    /// The station's director.
    pub director: PeerEntry,
    /// Its engines.
    pub engines: Vec<PeerEntry>,
    /// The token issuer key, when this station is the auth server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
}

impl NodeFile {
    /// Writes `DIR/node.json` atomically (temp file, then rename).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join("node.json");
        let tmp = dir.join("node.json.tmp");
        let json = serde_json::to_vec_pretty(self).context("encoding node.json")?;
        std::fs::write(&tmp, json).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// Reads `DIR/node.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("node.json");
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
    }
}
