//! Identity files: one ed25519 key per peer (a station's director and engines, a console, an
//! admin), so that a restarted peer keeps its peer id.
//!
//! The file holds the key in libp2p's protobuf encoding and is created readable by its owner
//! only; an identity is never overwritten.

use std::path::Path;

use libp2p::identity::Keypair;

use crate::files::{FileError, Home, read_small, write_private_new};

/// The longest identity file accepted (an ed25519 key is 68 bytes).
const MAX_KEY_FILE: u64 = 4096;
/// What an identity file is called in errors.
const WHAT: &str = "identity";

impl Home {
    /// The console's identity, created on first use.
    pub fn identity(&self) -> Result<Keypair, FileError> {
        load_or_create(&self.identity_path())
    }
}

/// Loads the key at `path`, or creates a new one there if the file does not exist.
pub fn load_or_create(path: &Path) -> Result<Keypair, FileError> {
    load_or_create_beside(path, &[])
}

/// Loads the key at `path`, or creates a new one there if the file does not exist and none
/// of `state` (names of files beside it that a peer writes once it has run) does either. A
/// peer whose state is there but whose key is not lost its identity: a new key would make it
/// a stranger to the swarm, which knows it by its peer id (its enrollment, its records), so
/// that is refused with what to do.
pub fn load_or_create_beside(path: &Path, state: &[&str]) -> Result<Keypair, FileError> {
    match std::fs::metadata(path) {
        Ok(_) => load(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = path.parent().unwrap_or(Path::new("."));
            if let Some(found) = state.iter().find(|name| dir.join(name).exists()) {
                return Err(FileError::refused(
                    WHAT,
                    path,
                    format!(
                        "missing, but {} is there: this peer ran with an identity that is now lost. \
                         Restore the file from a backup (a new key would make this peer a stranger \
                         to the swarm), or move {} aside to start afresh as a new peer",
                        dir.join(found).display(),
                        dir.display()
                    ),
                ));
            }
            let key = Keypair::generate_ed25519();
            save(path, &key)?;
            Ok(key)
        }
        Err(e) => Err(FileError::io(WHAT, path)(e)),
    }
}

/// Loads the key at `path`.
pub fn load(path: &Path) -> Result<Keypair, FileError> {
    let bytes = read_small(path, WHAT, MAX_KEY_FILE)?;
    if bytes.is_empty() {
        return Err(FileError::refused(
            WHAT,
            path,
            "empty (a write that never finished?): restore it from a backup, or remove it if this peer never ran",
        ));
    }
    Keypair::from_protobuf_encoding(&bytes)
        .map_err(|_| FileError::refused(WHAT, path, "not a libp2p key file"))
}

/// Writes `key` to `path` (mode 0600), creating parent directories: the whole key or no
/// file at all. Fails if `path` exists.
pub fn save(path: &Path, key: &Keypair) -> Result<(), FileError> {
    let bytes = key
        .to_protobuf_encoding()
        .map_err(|e| FileError::refused(WHAT, path, e.to_string()))?;
    write_private_new(path, &bytes, WHAT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_persists_and_junk_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/identity.key");
        let a = load_or_create(&path).unwrap();
        let b = load_or_create(&path).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        let junk = dir.path().join("junk.key");
        std::fs::write(&junk, b"not a key").unwrap();
        assert!(
            load(&junk)
                .unwrap_err()
                .to_string()
                .ends_with("not a libp2p key file")
        );
        std::fs::write(&junk, vec![0u8; 5000]).unwrap();
        assert!(load(&junk).is_err(), "a file too large to be a key");
        assert!(save(&path, &a).is_err(), "never overwrites an identity");
        assert_eq!(
            load_or_create(&path).unwrap().public().to_peer_id(),
            a.public().to_peer_id()
        );
    }

    #[test]
    fn a_lost_identity_beside_a_peer_s_state_is_not_made_anew() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        // Control: a directory with no state gets a new identity.
        let first = load_or_create_beside(&path, &["node.json"]).unwrap();
        std::fs::write(dir.path().join("node.json"), b"{}").unwrap();
        std::fs::remove_file(&path).unwrap();
        let err = load_or_create_beside(&path, &["store.redb", "node.json"]).unwrap_err();
        assert!(err.to_string().contains("node.json is there"), "{err}");
        assert!(!path.exists(), "no new identity was written");
        save(&path, &first).unwrap();
        let back = load_or_create_beside(&path, &["node.json"]).unwrap();
        assert_eq!(back.public().to_peer_id(), first.public().to_peer_id());
    }

    #[test]
    fn an_empty_identity_says_so_and_no_temp_file_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        std::fs::write(&path, b"").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
        std::fs::remove_file(&path).unwrap();
        load_or_create(&path).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["identity.key"]);
    }
}
