//! The directors a station remembers across restarts (`DIR/peers.json`): the members in its
//! routing table, written at every republish. A station restarted without `--bootstrap` (a
//! first station, the home) rejoins through them; one with `--bootstrap` dials them too, so
//! that a bootstrap station that is down does not keep it out of the swarm.
//!
//! Only members enter the routing table of a closed swarm, so only members are remembered.
//! Dialling one that is gone costs one failed dial.

use std::path::{Path, PathBuf};

use libp2p::kad;
use libp2p::{Multiaddr, PeerId};
use vodmesh_proto::net::{peer_of, with_peer};
use vodmesh_registry::PersistentStore;

/// The file, under the station's data directory.
const FILE: &str = "peers.json";
/// Directors remembered, at most.
pub(super) const MAX_REMEMBERED: usize = 64;
/// Addresses remembered of one director, at most.
const ADDRS_EACH: usize = 4;
/// Bytes of the file read, at most.
const MAX_FILE: u64 = 256 * 1024;

/// The file's contents.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Remembered {
    /// Director addresses, each ending in `/p2p/<peer id>`.
    directors: Vec<String>,
}

fn path(data: &Path) -> PathBuf {
    data.join(FILE)
}

/// The directors remembered under `data` (other than `me`), as dialable addresses ending in
/// `/p2p/<peer id>`. A missing or damaged file is an empty list.
pub(super) fn load(data: &Path, me: PeerId) -> Vec<Multiaddr> {
    let file = path(data);
    let Ok(meta) = std::fs::metadata(&file) else {
        return Vec::new();
    };
    if meta.len() > MAX_FILE {
        tracing::warn!(file = %file.display(), "remembered directors: file too large, ignored");
        return Vec::new();
    }
    let parsed = std::fs::read(&file)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Remembered>(&bytes).ok());
    let Some(remembered) = parsed else {
        tracing::warn!(file = %file.display(), "remembered directors: unreadable, ignored");
        return Vec::new();
    };
    (remembered.directors.iter())
        .filter_map(|a| a.parse::<Multiaddr>().ok())
        .filter(|a| peer_of(a).is_some_and(|p| p != me))
        .take(MAX_REMEMBERED * ADDRS_EACH)
        .collect()
}

/// Writes `addrs` as the directors remembered under `data` (a new file renamed over the
/// old: a crash leaves one or the other whole).
fn save(data: &Path, addrs: &[Multiaddr]) -> std::io::Result<()> {
    let remembered = Remembered {
        directors: addrs.iter().map(ToString::to_string).collect(),
    };
    let bytes = serde_json::to_vec_pretty(&remembered).map_err(std::io::Error::other)?;
    let file = path(data);
    let tmp = file.with_extension("json.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, &file)
}

/// Writes the members of `kad`'s routing table under `data` as the directors to rejoin
/// through after a restart, when they differ from `remembered` (which then holds them). A
/// director alone keeps what it remembered.
pub(super) fn remember(
    kad: &mut kad::Behaviour<PersistentStore>,
    data: &Path,
    remembered: &mut Vec<Multiaddr>,
) {
    let now = of_routing_table(kad);
    if now.is_empty() || now == *remembered {
        return;
    }
    if let Err(e) = save(data, &now) {
        tracing::warn!(error = %e, "the directors to rejoin through were not written");
    }
    *remembered = now;
}

/// The members in `kad`'s routing table, each at up to [`ADDRS_EACH`] of its addresses, at
/// most [`MAX_REMEMBERED`] of them, in a stable order.
fn of_routing_table(kad: &mut kad::Behaviour<PersistentStore>) -> Vec<Multiaddr> {
    let mut peers: Vec<(PeerId, Vec<Multiaddr>)> = Vec::new();
    for bucket in kad.kbuckets() {
        for entry in bucket.iter() {
            let addrs = (entry.node.value.iter())
                .take(ADDRS_EACH)
                .cloned()
                .collect();
            peers.push((*entry.node.key.preimage(), addrs));
        }
    }
    peers.sort_by_key(|(p, _)| *p);
    (peers.into_iter().take(MAX_REMEMBERED))
        .flat_map(|(p, addrs)| addrs.into_iter().map(move |a| with_peer(&a, p)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_directors_survive_a_restart_and_a_damaged_file_is_none() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let (me, other) = (PeerId::random(), PeerId::random());
        let a = |s: &str, p: PeerId| s.parse::<Multiaddr>().map(|a| with_peer(&a, p));
        let addrs: Vec<Multiaddr> = [
            a("/ip4/127.0.0.1/tcp/4001", other),
            a("/ip4/127.0.0.1/udp/4001/quic-v1", other),
            // This station's own address is never dialled.
            a("/ip4/127.0.0.1/tcp/4002", me),
        ]
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(std::io::Error::other)?;
        assert!(load(dir.path(), me).is_empty());
        save(dir.path(), &addrs)?;
        assert_eq!(load(dir.path(), me), addrs[..2]);
        std::fs::write(path(dir.path()), b"{\"directors\": [")?;
        assert!(load(dir.path(), me).is_empty());
        Ok(())
    }
}
