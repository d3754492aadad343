//! Identity files: one ed25519 key per peer, kept under the data directory so that a
//! restarted station keeps its peer ids.
//!
//! The file holds the key in libp2p's protobuf encoding and is created readable by its owner
//! only.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use libp2p::identity::Keypair;

/// The longest identity file accepted (an ed25519 key is 68 bytes).
const MAX_KEY_FILE: u64 = 4096;

/// Loads the key at `path`, or creates a new one there if the file does not exist.
pub fn load_or_create(path: &Path) -> Result<Keypair> {
    match std::fs::metadata(path) {
        Ok(_) => load(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            save(path, &key)?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading identity {}", path.display())),
    }
}

/// Loads the key at `path`.
pub fn load(path: &Path) -> Result<Keypair> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("reading identity {}", path.display()))?;
    if meta.len() > MAX_KEY_FILE {
        anyhow::bail!(
            "identity {} is not a key file ({} bytes)",
            path.display(),
            meta.len()
        );
    }
    let bytes =
        std::fs::read(path).with_context(|| format!("reading identity {}", path.display()))?;
    Keypair::from_protobuf_encoding(&bytes)
        .with_context(|| format!("identity {} is not a libp2p key file", path.display()))
}

/// Writes `key` to `path` (mode 0600), creating parent directories; fails if it exists.
pub fn save(path: &Path, key: &Keypair) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let bytes = key
        .to_protobuf_encoding()
        .context("encoding identity key")?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("creating identity {}", path.display()))?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    Ok(())
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
        assert!(load(&junk).is_err());
        assert!(save(&path, &a).is_err(), "never overwrites an identity");
    }
}
