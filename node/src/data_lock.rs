//! `DATA/lock`: one process per data directory. Two stations (or a station and an engine
//! process) on one `--data` would share its identity and write its databases in turn; the
//! second is refused before it opens anything, with the first one's pid in the line.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

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
