//! The issuer key file: `<data dir>/issuer.key`, the 32-byte ed25519 secret seed, raw, mode 0600.
//!
//! Created on the auth server's first start (temp file, fsync, rename), loaded on every later
//! one. A key file that group or others may read is refused rather than used: whoever reads it
//! can mint tokens for the whole swarm.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use vodmesh_proto::token::Issuer;

/// File name of the issuer key in the data dir.
pub const FILE: &str = "issuer.key";

/// Why the issuer key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the file failed.
    #[error("issuer key {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The file is not 32 bytes.
    #[error("issuer key {path} is {len} bytes, not 32: restore it from a backup")]
    BadLength {
        /// The key file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// The key is gone but the subscriber database it served is there.
    #[error(
        "issuer key {path} is missing, but {db} is there: every token and station certificate \
         this auth server issued was signed with it. Restore it from a backup; to start a new auth \
         server with a new key (every station enrolled anew), move {db} aside too"
    )]
    Lost {
        /// Where the key should be.
        path: PathBuf,
        /// The database beside it.
        db: PathBuf,
    },
    /// Group or others may read or write the file.
    #[error("issuer key {path} is open to other users (mode {mode:o}): run chmod 600 on it")]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// Loads the issuer key from `dir`, creating it (and `dir`) on first use.
pub fn load_or_create(dir: &Path) -> Result<Issuer, KeyError> {
    let path = dir.join(FILE);
    let io_err = |source| KeyError::Io {
        path: path.clone(),
        source,
    };
    match fs::metadata(&path) {
        Ok(meta) => {
            check_permissions(&path, &meta)?;
            if meta.len() != 32 {
                return Err(KeyError::BadLength {
                    path,
                    len: meta.len(),
                });
            }
            let bytes = fs::read(&path).map_err(io_err)?;
            let seed: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| KeyError::BadLength {
                    path: path.clone(),
                    len: bytes.len() as u64,
                })?;
            Ok(Issuer::from_secret(&seed))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let db = dir.join(super::DB_FILE);
            if db.exists() {
                return Err(KeyError::Lost { path, db });
            }
            fs::create_dir_all(dir).map_err(io_err)?;
            let issuer = Issuer::generate();
            write_private(&path, &issuer.secret()).map_err(io_err)?;
            tracing::info!(issuer = %issuer.public(), path = %path.display(), "created issuer key");
            Ok(issuer)
        }
        Err(e) => Err(io_err(e)),
    }
}

#[cfg(unix)]
fn check_permissions(path: &Path, meta: &fs::Metadata) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_: &Path, _: &fs::Metadata) -> Result<(), KeyError> {
    Ok(())
}

/// Writes `bytes` to `path` readable by the owner only: temp file, fsync, rename, fsync dir.
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("key.tmp");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    // A temp file left by a crash keeps its old mode through `open`; set it again.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_reloaded() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        let a = load_or_create(&data)?;
        let b = load_or_create(&data)?;
        assert_eq!(a.public(), b.public());
        let path = data.join(FILE);
        assert_eq!(fs::read(&path)?.len(), 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
            fs::set_permissions(&path, fs::Permissions::from_mode(0o640))?;
            let err = load_or_create(&data).unwrap_err();
            assert!(
                matches!(err, KeyError::Permissions { mode: 0o640, .. }),
                "{err}"
            );
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        }
        fs::write(&path, [1u8; 31])?;
        assert!(matches!(
            load_or_create(&data),
            Err(KeyError::BadLength { len: 31, .. })
        ));
        Ok(())
    }

    #[test]
    fn a_lost_key_beside_its_database_is_not_made_anew() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        load_or_create(&data)?;
        fs::write(data.join(crate::auth::DB_FILE), b"")?;
        fs::remove_file(data.join(FILE))?;
        let err = load_or_create(&data).unwrap_err();
        assert!(matches!(err, KeyError::Lost { .. }), "{err}");
        assert!(!data.join(FILE).exists(), "no new key was written");
        // Control: with the database moved aside too, a new key is made.
        fs::remove_file(data.join(crate::auth::DB_FILE))?;
        load_or_create(&data)?;
        Ok(())
    }
}
