//! What a station keeps in its data directory, checked before it starts:
//! - `DATA/lock` ([`DataLock`]): one process per data directory. Two stations (or a station
//!   and an engine process) on one `--data` would share its identity and write its databases
//!   in turn; the second is refused before it opens anything, with the first one's pid.
//! - the state beside each identity ([`DIRECTOR_STATE`], [`ENGINE_STATE`]): with it there and
//!   the key gone, the identity is lost and no new one is made in its place;
//! - the engines that ran ([`check_engines`]): none is left out by a smaller `--engines`.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Files a director writes beside its `identity.key` once it has run: with one of them there
/// and the key gone, the station's identity is lost, and no new one is made in its place.
pub const DIRECTOR_STATE: &[&str] = &[
    "node.json",
    "registry.redb",
    "locations.redb",
    "catalog.redb",
    "kept.redb",
    crate::auth::DB_FILE,
];
/// The same beside an engine's `identity.key`: its store's index.
pub const ENGINE_STATE: &[&str] = &["store.redb"];

/// Engines that ran under a data directory and that a start would leave out.
#[derive(Debug, thiserror::Error)]
#[error(
    "{engines_dir} holds engine(s) {list} that --engines {engines} leaves out, with the \
     segments they store: start with --engines {more}; to retire them, move their \
     directories out of {engines_dir} first",
    engines_dir = data.join("engines").display(),
    list = left_out.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
    more = left_out.iter().max().map_or(*engines, |i| i + 1)
)]
pub struct EnginesLeftOut {
    /// The data directory.
    pub data: PathBuf,
    /// `--engines`.
    pub engines: usize,
    /// The engines' indexes that hold a store and are not started.
    pub left_out: Vec<usize>,
}

/// Whether a start with `--engines engines` runs every engine that ran under `data`.
pub fn check_engines(data: &Path, engines: usize) -> Result<(), EnginesLeftOut> {
    match engines_left_out(data, engines) {
        left_out if left_out.is_empty() => Ok(()),
        left_out => Err(EnginesLeftOut {
            data: data.to_path_buf(),
            engines,
            left_out,
        }),
    }
}

/// The engines under `data` that ran (they have a store index) and whose index is
/// `engines` or more: a start with `--engines engines` would leave their segments unserved.
fn engines_left_out(data: &Path, engines: usize) -> Vec<usize> {
    let Ok(dir) = std::fs::read_dir(data.join("engines")) else {
        return Vec::new();
    };
    let mut left_out: Vec<usize> = dir
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let index: usize = entry.file_name().to_str()?.parse().ok()?;
            let ran = ENGINE_STATE.iter().any(|f| entry.path().join(f).exists());
            (index >= engines && ran).then_some(index)
        })
        .collect();
    left_out.sort_unstable();
    left_out
}

/// The lock file's name in a data directory.
pub const FILE: &str = "lock";

/// Why a data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error(
        "data directory {dir} is in use by another process{by}: stop it first, or give another --data",
        dir = dir.display(),
        by = holder.as_deref().map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    InUse {
        /// The data directory.
        dir: PathBuf,
        /// The pid its holder wrote, when it could be read.
        holder: Option<String>,
    },
    /// The lock file cannot be opened or locked.
    #[error("lock file {path}: {source}", path = path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A data directory held by this process until dropped (the operating system lets go of it
/// when the process dies, however it dies: no stale lock to remove by hand).
#[derive(Debug)]
pub struct DataLock {
    _file: std::fs::File,
}

impl DataLock {
    /// Takes `dir` (which must exist) for this process, or says who has it.
    pub fn take(dir: &Path) -> Result<Self, LockError> {
        let path = dir.join(FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let holder = (file.read_to_string(&mut pid).ok())
                    .map(|_| pid.trim().to_string())
                    .filter(|pid| !pid.is_empty() && pid.len() <= 20);
                return Err(LockError::InUse {
                    dir: dir.to_path_buf(),
                    holder,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        // The pid, for the line a second process prints (best effort: the lock is what counts).
        let _ = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_held_once_and_free_again_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let held = DataLock::take(dir.path()).unwrap();
        let err = DataLock::take(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "in use by another process (pid {})",
                std::process::id()
            )),
            "{err}"
        );
        drop(held);
        DataLock::take(dir.path()).unwrap();
    }
}
