//! `DIR/node.json`: how scripts and tests find a running station (DESIGN.md §11).

use std::path::Path;

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

/// Why `node.json` cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be written or read.
    #[error("{what} {path}", path = path.display())]
    Io {
        /// Writing or reading.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It does not parse.
    #[error("parsing {path}", path = path.display())]
    Parse {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// A peer and where it listens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerEntry {
    /// The peer id.
    pub peer_id: PeerId,
    /// Where other peers reach it, each ending in `/p2p/<peer id>`: its `--announce`
    /// addresses, then every address it listens on (a listener on 0.0.0.0 at every address
    /// of the host), loopback last.
    pub addrs: Vec<Multiaddr>,
    /// Where it serves HTTP (`--http`), when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<std::net::SocketAddr>,
    /// Whether it serves `http` over TLS (`--tls-cert`): its URLs are `https://`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub https: bool,
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
    pub fn write(&self, dir: &Path) -> Result<(), Error> {
        let path = dir.join("node.json");
        let tmp = dir.join("node.json.tmp");
        let writing = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io {
                what: "writing",
                path,
                source,
            }
        };
        // Plain data: it always encodes.
        let json = serde_json::to_vec_pretty(self).unwrap_or_default();
        std::fs::write(&tmp, json).map_err(writing(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(writing(&path))
    }

    /// Reads `DIR/node.json`.
    pub fn read(dir: &Path) -> Result<Self, Error> {
        let path = dir.join("node.json");
        let bytes = std::fs::read(&path).map_err(|source| Error::Io {
            what: "reading",
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| Error::Parse { path, source })
    }
}
