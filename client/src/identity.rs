//! Identity files: one ed25519 key per peer (a station's director and engines, a console, an
//! admin), so that a restarted peer keeps its peer id.
//!
//! The file holds the key in libp2p's protobuf encoding and is created readable by its owner
//! only; an identity is never overwritten.

use std::io::Write;
use std::path::Path;

use libp2p::identity::Keypair;

use crate::files::{FileError, Home, create_private, read_small};

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
    match std::fs::metadata(path) {
        Ok(_) => load(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
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
    Keypair::from_protobuf_encoding(&bytes)
        .map_err(|_| FileError::refused(WHAT, path, "not a libp2p key file"))
}

/// Writes `key` to `path` (mode 0600), creating parent directories; fails if it exists.
pub fn save(path: &Path, key: &Keypair) -> Result<(), FileError> {
    let bytes = key
        .to_protobuf_encoding()
        .map_err(|e| FileError::refused(WHAT, path, e.to_string()))?;
    let mut file = create_private(path).map_err(FileError::io(WHAT, path))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(FileError::io(WHAT, path))
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
    }
}
