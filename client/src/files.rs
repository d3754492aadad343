//! Small private files: passwords and tokens read with a size cap, secrets written readable
//! by their owner only, and `$VODMESH_HOME`, where a console keeps its identity and tokens.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Longest password file read, in bytes.
pub const MAX_PASSWORD_FILE: u64 = 4096;
/// Longest token file read, in bytes.
pub const MAX_TOKEN_FILE: u64 = vodmesh_proto::token::MAX_TOKEN as u64;

/// Why a local file could not be read or written. The `Display` text is the one line a user
/// sees: what the file is, where, and what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Reading or writing failed.
    #[error("{what} {}: {cause}", .path.display())]
    Io {
        /// What the file is (`password file`, `identity`, ...).
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// The file's contents are refused.
    #[error("{what} {}: {reason}", .path.display())]
    Refused {
        /// What the file is.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl FileError {
    /// An I/O error on `path`, a file of kind `what`.
    pub fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        move |cause| Self::Io {
            what,
            path: path.to_path_buf(),
            cause,
        }
    }

    /// `path`, a file of kind `what`, has contents that are refused for `reason`.
    pub fn refused(what: &'static str, path: &Path, reason: impl Into<String>) -> Self {
        Self::Refused {
            what,
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// Reads a small file (a password, a token, a key): at most `limit` bytes.
pub fn read_small(path: &Path, what: &'static str, limit: u64) -> Result<Vec<u8>, FileError> {
    let meta = std::fs::metadata(path).map_err(FileError::io(what, path))?;
    if meta.len() > limit {
        return Err(FileError::refused(
            what,
            path,
            format!("larger than {limit} bytes"),
        ));
    }
    std::fs::read(path).map_err(FileError::io(what, path))
}

/// Reads a token file (`what`: `console token`, `admin token`, ...) and checks that it holds
/// a token (its claims decode; nothing else is checked here), so that a damaged file is named
/// with `fix`, what to do about it, and not met later as a malformed token.
pub fn read_token(path: &Path, what: &'static str, fix: &str) -> Result<Vec<u8>, FileError> {
    use vodmesh_proto::token::{Claims, TokenError};
    let bytes = read_small(path, what, MAX_TOKEN_FILE)?;
    let why = match Claims::peek(&bytes) {
        Ok(_) => return Ok(bytes),
        Err(TokenError::Malformed(e)) => e.reason(),
        Err(e) => e.to_string(),
    };
    Err(FileError::refused(
        what,
        path,
        format!("not a vodmesh token ({why}): {fix}"),
    ))
}

/// Reads a password file: UTF-8, one line (a trailing newline is not part of the password).
pub fn read_password(path: &Path) -> Result<String, FileError> {
    let what = "password file";
    let bytes = read_small(path, what, MAX_PASSWORD_FILE)?;
    let text = String::from_utf8(bytes).map_err(|_| FileError::refused(what, path, "not UTF-8"))?;
    let line = text.strip_suffix('\n').unwrap_or(&text);
    Ok(line.strip_suffix('\r').unwrap_or(line).to_string())
}

/// Creates `path` readable and writable by its owner only (0600) and its parent
/// directories; fails if it exists.
pub(crate) fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Writes `bytes` to `path` readable by its owner only (0600), replacing it atomically.
pub fn write_private(path: &Path, bytes: &[u8], what: &'static str) -> Result<(), FileError> {
    let tmp = write_beside(path, bytes).map_err(FileError::io(what, path))?;
    std::fs::rename(&tmp, path)
        .and_then(|()| sync_parent(path))
        .map_err(FileError::io(what, path))
}

/// Writes `bytes` to `path` readable by its owner only (0600), all of them or nothing: a
/// write cut short (a full disk, a crash) leaves no file, where it would leave an empty or
/// partial one. Fails if `path` exists, which is never overwritten.
pub fn write_private_new(path: &Path, bytes: &[u8], what: &'static str) -> Result<(), FileError> {
    let err = FileError::io(what, path);
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(FileError::refused(
            what,
            path,
            "exists already: never overwritten",
        ));
    }
    let tmp = write_beside(path, bytes).map_err(FileError::io(what, path))?;
    // A hard link, unlike a rename, fails where `path` appeared meanwhile.
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(FileError::refused(
            what,
            path,
            "exists already: never overwritten",
        )),
        linked => linked.and_then(|()| sync_parent(path)).map_err(err),
    }
}

/// `bytes` written and synced to `<path>.tmp` (0600, parent directories made): the first
/// half of an atomic write.
fn write_beside(path: &Path, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // A temp file left by a write that died: replaced, never appended to.
    let _ = std::fs::remove_file(&tmp);
    let written = create_private(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

/// Makes a new directory entry in `path`'s directory durable.
fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// `$VODMESH_HOME`: a console's identity (`identity.key`) and tokens (`tokens/`).
#[derive(Clone, Debug)]
pub struct Home {
    /// The directory.
    pub dir: PathBuf,
}

impl Home {
    /// `$VODMESH_HOME`, else the platform data directory (`$XDG_DATA_HOME/vodmesh`,
    /// `~/.local/share/vodmesh`, `~/Library/Application Support/vodmesh` on macOS).
    pub fn from_env() -> Result<Self, FileError> {
        if let Some(dir) = std::env::var_os("VODMESH_HOME").filter(|d| !d.is_empty()) {
            return Ok(Self { dir: dir.into() });
        }
        if cfg!(not(target_os = "macos"))
            && let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty())
        {
            return Ok(Self {
                dir: PathBuf::from(xdg).join("vodmesh"),
            });
        }
        let home = std::env::var_os("HOME")
            .filter(|d| !d.is_empty())
            .ok_or_else(|| {
                FileError::refused(
                    "home directory",
                    Path::new("$HOME"),
                    "not set; set VODMESH_HOME",
                )
            })?;
        let base = if cfg!(target_os = "macos") {
            PathBuf::from(home).join("Library/Application Support")
        } else {
            PathBuf::from(home).join(".local/share")
        };
        Ok(Self {
            dir: base.join("vodmesh"),
        })
    }

    /// The console's identity file.
    pub fn identity_path(&self) -> PathBuf {
        self.dir.join("identity.key")
    }

    /// The file of the token of `kind` (`console`, `admin`).
    pub fn token_path(&self, kind: &str) -> PathBuf {
        self.dir.join("tokens").join(format!("{kind}.token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_files_lose_one_trailing_newline_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret pass\n").unwrap();
        assert_eq!(read_password(&p).unwrap(), "s3cret pass");
        std::fs::write(&p, "two\n\n").unwrap();
        assert_eq!(read_password(&p).unwrap(), "two\n");
        std::fs::write(&p, vec![b'x'; 5000]).unwrap();
        assert!(read_password(&p).is_err());
        std::fs::write(&p, [0xff, 0xfe]).unwrap();
        let refused = read_password(&p).unwrap_err().to_string();
        assert!(refused.starts_with("password file ") && refused.ends_with(": not UTF-8"));
    }

    #[test]
    fn private_files_are_owner_only_and_identity_persists() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home {
            dir: dir.path().join("home"),
        };
        let a = home.identity().unwrap();
        let b = home.identity().unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            write_private(&home.token_path("console"), b"t", "token").unwrap();
            for path in [home.identity_path(), home.token_path("console")] {
                let mode = std::fs::metadata(&path).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{}", path.display());
            }
        }
        write_private(&home.token_path("console"), b"u", "token").unwrap();
        assert_eq!(std::fs::read(home.token_path("console")).unwrap(), b"u");
    }
}
