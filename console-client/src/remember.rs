//! The swarm a console remembers, so that `--node` may be left out: `vodmesh-console login`
//! keeps the directors it learned (the station it logged in through first, then every other
//! live station of the swarm) in `$VODMESH_HOME/swarm.json`, and each play brings it up to
//! date with the swarm it finds ([`refresh`]: a station restarted on another port, one that
//! joined since). Without `--node` a command uses
//! `VODMESH_NODE` when it is set (one address, or several separated by commas), else those,
//! and asks the first that answers: a station that went down since is passed over.
//!
//! Which addresses to try is [`candidates`], a plain function; [`first_answering`] dials them.

use std::path::PathBuf;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use vodmesh_client::files::{FileError, Home, read_small, write_private};
use vodmesh_client::{ClientError, DirectorClient};
use vodmesh_proto::net::{dial_first, peer_of};
use vodmesh_proto::signed::Signed;
use vodmesh_proto::station::StationRecord;
use vodmesh_proto::time::now_ms;

/// The environment variable naming the director(s) to ask when `--node` is left out.
pub const ENV: &str = "VODMESH_NODE";
/// The file under `$VODMESH_HOME`.
const FILE: &str = "swarm.json";
/// Largest swarm file read: 10^4 stations' addresses fit well below it.
const MAX_FILE: u64 = 4 * 1024 * 1024;
/// The most directors remembered: enough to find a swarm, few enough that a console whose
/// stations all moved does not spend minutes dialling old addresses.
const MAX_KEPT: usize = 64;
/// How long one director may take to answer before the next is tried (a frozen station
/// accepts connections and answers nothing).
const DIAL_WAIT: Duration = Duration::from_secs(5);

/// Why no director could be asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Neither `--node`, nor `VODMESH_NODE`, nor a remembered swarm.
    #[error(
        "no station to ask: pass --node MULTIADDR (or set VODMESH_NODE), or log in first \
         (vodmesh-console login --node MULTIADDR ...), which remembers the swarm"
    )]
    NoNode,
    /// `VODMESH_NODE` holds something that is not a director address.
    #[error("VODMESH_NODE: {0:?} is not a director address ending in /p2p/<peer id>")]
    BadEnv(String),
    /// The swarm file could not be read or written.
    #[error(transparent)]
    File(#[from] FileError),
    /// The swarm file is not one this console wrote.
    #[error("{}: not a swarm file ({reason}); log in again to rewrite it", .path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// None of the directors answered; the last one's failure.
    #[error("no director answered (tried {tried}); the last: {last}")]
    NoneAnswered {
        /// How many were tried.
        tried: usize,
        /// What the last one failed with.
        last: ClientError,
    },
}

/// `swarm.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SwarmFile {
    /// Director addresses, ending in `/p2p/<peer id>`, in the order to try them.
    directors: Vec<Multiaddr>,
}

/// Where the remembered swarm of the console at `home` lives.
pub fn path(home: &Home) -> PathBuf {
    home.dir.join(FILE)
}

/// Remembers `directors` (the one logged in through first), one address per director:
/// later ones of the same peer are dropped.
pub fn save(home: &Home, directors: &[Multiaddr]) -> Result<PathBuf, Error> {
    let mut seen = std::collections::HashSet::new();
    let directors = (directors.iter())
        .filter(|a| peer_of(a).is_some_and(|p| seen.insert(p)))
        .cloned()
        .collect();
    let path = path(home);
    let json = serde_json::to_vec_pretty(&SwarmFile { directors }).map_err(|e| Error::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    write_private(&path, &json, "swarm file")?;
    Ok(path)
}

/// Brings the remembered swarm of the console at `home` up to date with the director
/// addresses of the stations a play found `listed`, so that a later command without
/// `--node` finds stations that moved to new addresses (a restart on another port) or joined
/// since the login. Only a console that remembers a swarm (it logged in) is written to, and
/// only when something changed. Whether the file was rewritten.
pub fn refresh(home: &Home, listed: &[Multiaddr]) -> Result<bool, Error> {
    if !path(home).exists() {
        return Ok(false);
    }
    let old = load(home)?;
    let new = merged(&old, listed);
    if new == old {
        return Ok(false);
    }
    save(home, &new)?;
    Ok(true)
}

/// `old` with each director's address replaced by the one `listed` gives for it, in the same
/// order (the one logged in through stays first), then the directors `listed` adds; one kept
/// that is not listed now (down, or the one asked) stays. At most [`MAX_KEPT`].
fn merged(old: &[Multiaddr], listed: &[Multiaddr]) -> Vec<Multiaddr> {
    let listed: Vec<(PeerId, &Multiaddr)> = (listed.iter())
        .filter_map(|a| Some((peer_of(a)?, a)))
        .collect();
    let now = |peer| listed.iter().find(|(p, _)| *p == peer).map(|(_, a)| *a);
    let mut seen = std::collections::HashSet::new();
    let mut kept = Vec::new();
    for addr in old {
        if let Some(peer) = peer_of(addr)
            && seen.insert(peer)
        {
            kept.push(now(peer).unwrap_or(addr).clone());
        }
    }
    for (peer, addr) in &listed {
        if seen.insert(*peer) {
            kept.push((*addr).clone());
        }
    }
    kept.truncate(MAX_KEPT);
    kept
}

/// The first address of each live station's director a `Swarm` answer lists (its signed
/// records, each verified), but `except`'s: what a console remembers at login, and the
/// directors the HLS gateway goes on through.
pub fn listed_directors(records: &[Signed], except: Option<PeerId>) -> Vec<Multiaddr> {
    let now = now_ms();
    (records.iter())
        .filter_map(|signed| StationRecord::verify(signed, now).ok())
        .filter(|record| Some(record.director) != except)
        .filter_map(|record| dial_first(&record.addrs).cloned())
        .collect()
}

/// The remembered directors; empty when the console never logged in.
pub fn load(home: &Home) -> Result<Vec<Multiaddr>, Error> {
    let path = path(home);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let bytes = read_small(&path, "swarm file", MAX_FILE)?;
    let file: SwarmFile = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    Ok(file.directors)
}

/// The directors to try, in order: `--node` alone when given; else `VODMESH_NODE` (`env`,
/// commas between addresses) when set and not empty; else the remembered ones.
pub fn candidates(
    flag: Option<Multiaddr>,
    env: Option<&str>,
    remembered: Vec<Multiaddr>,
) -> Result<Vec<Multiaddr>, Error> {
    if let Some(node) = flag {
        return Ok(vec![node]);
    }
    if let Some(env) = env.map(str::trim).filter(|e| !e.is_empty()) {
        return (env.split(',').map(str::trim).filter(|a| !a.is_empty()))
            .map(|a| match a.parse::<Multiaddr>() {
                Ok(addr) if peer_of(&addr).is_some() => Ok(addr),
                _ => Err(Error::BadEnv(a.to_string())),
            })
            .collect();
    }
    if remembered.is_empty() {
        return Err(Error::NoNode);
    }
    Ok(remembered)
}

/// Every director address the console knows besides `--node`: `VODMESH_NODE`'s (malformed
/// ones skipped) and the remembered swarm's (none when `swarm.json` is missing or unreadable).
/// A play falls back on them while its first director has not listed the swarm.
pub fn known(home: &Home) -> Vec<Multiaddr> {
    let env = std::env::var(ENV).unwrap_or_default();
    let from_env = (env.split(',').map(str::trim))
        .filter_map(|a| a.parse::<Multiaddr>().ok())
        .filter(|a| peer_of(a).is_some());
    let remembered = load(home).unwrap_or_else(|e| {
        tracing::debug!(error = %e, "the remembered swarm is not read");
        Vec::new()
    });
    from_env.chain(remembered).collect()
}

/// The first of `directors` that answers (one alone is not dialed here: the command's own
/// connection will say why it fails).
pub async fn first_answering(directors: &[Multiaddr]) -> Result<Multiaddr, Error> {
    if let [one] = directors {
        return Ok(one.clone());
    }
    let mut last = ClientError::NoAddress;
    for addr in directors {
        let dialed = tokio::time::timeout(DIAL_WAIT, DirectorClient::connect(addr, None)).await;
        match dialed {
            Ok(Ok(_)) => return Ok(addr.clone()),
            Ok(Err(e)) => {
                tracing::debug!(%addr, error = %e, "director did not answer; trying the next");
                last = e;
            }
            Err(_) => {
                tracing::debug!(%addr, "director did not answer in time; trying the next");
                last = ClientError::NoAddress;
            }
        }
    }
    Err(Error::NoneAnswered {
        tried: directors.len(),
        last,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> Multiaddr {
        let peer = PeerId::random();
        format!("/ip4/127.0.0.1/tcp/{port}/p2p/{peer}")
            .parse()
            .expect("a valid multiaddr")
    }

    #[test]
    fn a_refresh_moves_a_known_director_adds_new_ones_and_keeps_the_order() {
        let (first, moved, down) = (addr(1), addr(2), addr(3));
        let peer = peer_of(&moved).unwrap();
        let moved_now: Multiaddr = format!("/ip4/127.0.0.1/tcp/9/p2p/{peer}").parse().unwrap();
        let joined = addr(4);
        let old = vec![first.clone(), moved, down.clone()];
        let new = merged(&old, &[joined.clone(), moved_now.clone()]);
        assert_eq!(new, vec![first, moved_now, down, joined]);
        // Control: nothing listed, nothing changes.
        assert_eq!(merged(&old, &[]), old);
        // Bounded.
        let many: Vec<Multiaddr> = (0..100).map(addr).collect();
        assert_eq!(merged(&old, &many).len(), MAX_KEPT);
    }

    #[test]
    fn the_flag_goes_first_then_the_environment_then_the_remembered_swarm() {
        let (flag, env, kept) = (addr(1), addr(2), vec![addr(3), addr(4)]);
        let env_text = format!(" {env} , {} ", addr(5));
        let picked = candidates(Some(flag.clone()), Some(&env_text), kept.clone()).unwrap();
        assert_eq!(picked, vec![flag]);
        let picked = candidates(None, Some(&env_text), kept.clone()).unwrap();
        assert_eq!(picked.len(), 2);
        assert_eq!(picked[0], env);
        assert_eq!(candidates(None, Some("  "), kept.clone()).unwrap(), kept);
        assert_eq!(candidates(None, None, kept.clone()).unwrap(), kept);
    }

    #[test]
    fn nothing_to_ask_says_what_to_do() {
        let none = candidates(None, None, Vec::new()).unwrap_err();
        let line = none.to_string();
        assert!(line.contains("--node") && line.contains("log in"), "{line}");
        let bad = candidates(None, Some("/ip4/127.0.0.1/tcp/1"), Vec::new()).unwrap_err();
        assert!(matches!(bad, Error::BadEnv(_)), "no /p2p/: {bad}");
    }

    #[test]
    fn the_swarm_is_kept_once_per_director_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home {
            dir: dir.path().to_path_buf(),
        };
        assert!(load(&home).unwrap().is_empty());
        let (a, b) = (addr(1), addr(2));
        let a_again: Multiaddr = a.to_string().replace("/tcp/1/", "/tcp/9/").parse().unwrap();
        save(&home, &[a.clone(), b.clone(), a_again]).unwrap();
        assert_eq!(load(&home).unwrap(), vec![a, b]);
        std::fs::write(path(&home), b"{\"directors\": [\"not an address\"]}").unwrap();
        assert!(matches!(load(&home), Err(Error::Corrupt { .. })));
    }
}
