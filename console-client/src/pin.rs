//! The swarm a console belongs to: the issuer key it pins at its first login, kept in
//! `$VODMESH_HOME/issuer`, or given with `--issuer`. Afterwards the console logs in only with an
//! auth server that signs with that key, so a station of another swarm (or an uninvited one
//! that claims the auth role) never receives its password.
//!
//! [`check`] is the decision, a pure function; [`load`] and [`save`] keep the file.

use std::path::PathBuf;

use vodmesh_client::files::{FileError, Home, read_small, write_private};
use vodmesh_proto::token::IssuerKey;

/// Name of the file under `$VODMESH_HOME`.
pub const FILE: &str = "issuer";

/// Why a login was refused before any password left the console.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The auth server found signs with another key than the pinned one.
    #[error(
        "the auth server signs with {found}, not with {pinned}, the issuer this console trusts ({from}): \
         log in through a station of your swarm, or pass --issuer to trust another"
    )]
    OtherIssuer {
        /// The pinned key.
        pinned: IssuerKey,
        /// The auth server's key.
        found: IssuerKey,
        /// Where the pin comes from (`--issuer`, or the file).
        from: String,
    },
    /// The pin file is unreadable or not a key.
    #[error(transparent)]
    File(#[from] FileError),
}

/// What a login does with the issuer it found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pin {
    /// It is the pinned one.
    Matches,
    /// Nothing was pinned: this one is, once the login succeeds.
    First,
}

/// Decides a login with the auth server of issuer `found`, the console having pinned `pinned`
/// (from `from`).
pub fn check(pinned: Option<(IssuerKey, String)>, found: IssuerKey) -> Result<Pin, PinError> {
    match pinned {
        None => Ok(Pin::First),
        Some((pinned, _)) if pinned == found => Ok(Pin::Matches),
        Some((pinned, from)) => Err(PinError::OtherIssuer {
            pinned,
            found,
            from,
        }),
    }
}

fn path(home: &Home) -> PathBuf {
    home.dir.join(FILE)
}

/// The pinned issuer: `flag` (`--issuer`) if given, else the one in `$VODMESH_HOME/issuer`;
/// with where it comes from.
pub fn load(home: &Home, flag: Option<IssuerKey>) -> Result<Option<(IssuerKey, String)>, PinError> {
    if let Some(key) = flag {
        return Ok(Some((key, "--issuer".into())));
    }
    let path = path(home);
    if !path.exists() {
        return Ok(None);
    }
    let text = read_small(&path, "pinned issuer", 256)?;
    let key = String::from_utf8_lossy(&text)
        .trim()
        .parse::<IssuerKey>()
        .map_err(|e| FileError::refused("pinned issuer", &path, e.to_string()))?;
    Ok(Some((key, format!("pinned in {}", path.display()))))
}

/// Pins `key` in `$VODMESH_HOME/issuer`; returns the file.
pub fn save(home: &Home, key: IssuerKey) -> Result<PathBuf, PinError> {
    let path = path(home);
    write_private(&path, format!("{key}\n").as_bytes(), "pinned issuer")?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vodmesh_proto::token::Issuer;

    #[test]
    fn the_first_issuer_is_pinned_and_then_only_it_is_taken() {
        let (ours, theirs) = (Issuer::generate().public(), Issuer::generate().public());
        assert_eq!(check(None, ours).unwrap(), Pin::First);
        let pinned = || Some((ours, "pinned in issuer".to_string()));
        assert_eq!(check(pinned(), ours).unwrap(), Pin::Matches);
        let refused = check(pinned(), theirs).unwrap_err().to_string();
        assert!(refused.contains(&theirs.to_string()) && refused.contains("--issuer"));
    }

    #[test]
    fn the_pin_survives_in_the_home_and_the_flag_wins() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home {
            dir: dir.path().to_path_buf(),
        };
        let (ours, theirs) = (Issuer::generate().public(), Issuer::generate().public());
        assert!(load(&home, None).unwrap().is_none());
        save(&home, ours).unwrap();
        assert_eq!(load(&home, None).unwrap().unwrap().0, ours);
        assert_eq!(load(&home, Some(theirs)).unwrap().unwrap().0, theirs);
        std::fs::write(dir.path().join(FILE), "not a key").unwrap();
        assert!(load(&home, None).is_err());
    }
}
