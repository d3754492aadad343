//! The swarm a console belongs to: the issuer key it pins at its first login, kept in
//! `$VODMESH_HOME/issuer`, or given with `--issuer`. Afterwards the console logs in only with an
//! auth server that signs with that key, so a station of another swarm (or an uninvited one
//! that claims the auth role) never receives its password.
//!
//! The pin also covers what the console takes from the swarm afterwards: a refreshed token
//! must be signed by the issuer of the one it replaces (the pinned one: the login checked it;
//! `vodmesh_client::auth::refresh` enforces it), and a program's manifest must be signed by a
//! content manager that issuer certified ([`manifest_signer`]), so that a station of another
//! swarm, or an uninvited one, cannot have the console play its programs.
//!
//! [`check`] is the decision, a pure function; [`load`] and [`save`] keep the file.

use std::path::PathBuf;

use libp2p::PeerId;
use vodmesh_client::files::{FileError, Home, read_small, write_private};
use vodmesh_proto::member;
use vodmesh_proto::signed::Signed;
use vodmesh_proto::station::StationRecord;
use vodmesh_proto::token::{IssuerKey, TrustedIssuers};

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
    /// The program's manifest is signed by a peer that the pinned issuer did not certify as
    /// a content manager (or whose station the swarm does not list).
    #[error(
        "the program's manifest is signed by {signer}, not a content manager certified by \
         {pinned}, the issuer this console trusts: it is not a program of your swarm"
    )]
    ManifestSigner {
        /// The manifest's signer.
        signer: PeerId,
        /// The pinned key.
        pinned: IssuerKey,
    },
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

/// Checks that `signer`, the signer of a manifest that the director `via` handed over, chains
/// to `pinned` at `now_ms`, from `records`: signed station records as a director lists the
/// swarm (`Swarm`), each checked here (its signature, its certificate against `pinned` alone).
/// The signer chains when it is listed as a content manager `pinned` certified; or, when it
/// is not listed at all (a content manager that is down: its record expired, issue 25), when
/// `via` is listed as a member `pinned` certified, since members keep and hand over only the
/// manifests of certified content managers.
pub fn manifest_signer(
    records: &[Signed],
    (signer, via): (PeerId, PeerId),
    pinned: IssuerKey,
    now_ms: u64,
) -> Result<(), PinError> {
    let trusted: TrustedIssuers = [pinned].into_iter().collect();
    let listed: Vec<StationRecord> = (records.iter())
        .filter_map(|signed| StationRecord::verify(signed, now_ms).ok())
        .collect();
    let certified = |peer: PeerId| {
        (listed.iter())
            .filter(|record| record.director == peer)
            .find_map(|record| member::of_record(record, &trusted, now_ms).ok())
    };
    let chains = match certified(signer) {
        Some(member) => member.roles.content_manager,
        None if listed.iter().any(|r| r.director == signer) => false,
        None => certified(via).is_some(),
    };
    if chains {
        Ok(())
    } else {
        Err(PinError::ManifestSigner { signer, pinned })
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
    use vodmesh_proto::station::Roles;
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

    /// A station record of `key`'s peer claiming the content manager role, with a
    /// certificate from `issuer` granting `granted`, signed by `key`.
    fn record(key: &libp2p::identity::Keypair, issuer: &Issuer, granted: Roles) -> Signed {
        use vodmesh_proto::token::{Audience, Claims, Rights, TokenId};
        let director = key.public().to_peer_id();
        let certificate = issuer
            .sign(&Claims {
                issuer: issuer.public(),
                subject: director,
                audience: Audience::Member,
                rights: Rights::All,
                not_before_ms: 0,
                expires_ms: 10_000,
                id: TokenId::random(),
                user: None,
                roles: Some(granted),
                addr: None,
            })
            .unwrap();
        StationRecord {
            director,
            addrs: vec![],
            engines: vec![],
            region: None,
            coords: None,
            bandwidth_mbps: 1,
            roles: Roles {
                content_manager: true,
                home: true,
                auth: false,
            },
            issuer: None,
            issued_ms: 1,
            expires_ms: 10_000,
            counters: Default::default(),
            certificate: Some(certificate.into()),
            revoked: vec![],
            http: None,
            https: false,
        }
        .sign(key)
    }

    #[test]
    fn a_manifest_counts_only_from_a_content_manager_the_pinned_issuer_certified() {
        let (ours, theirs) = (Issuer::generate(), Issuer::generate());
        let (cm, home, stranger) = (
            libp2p::identity::Keypair::generate_ed25519(),
            libp2p::identity::Keypair::generate_ed25519(),
            libp2p::identity::Keypair::generate_ed25519(),
        );
        let cm_role = Roles {
            content_manager: true,
            ..Roles::default()
        };
        let home_only = Roles {
            home: true,
            ..Roles::default()
        };
        let records = vec![
            record(&cm, &ours, cm_role),
            record(&home, &ours, home_only),
            record(&stranger, &theirs, cm_role),
        ];
        let peer = |k: &libp2p::identity::Keypair| k.public().to_peer_id();
        let now = 5_000;
        // Handed over by the stranger's station, certified by another issuer.
        let check = |records: &[Signed], signer, issuer: &Issuer, now| {
            manifest_signer(records, (signer, peer(&stranger)), issuer.public(), now)
        };
        assert!(check(&records, peer(&cm), &ours, now).is_ok());
        // Certified by another issuer, certified without the role, listed nowhere, expired.
        for signer in [peer(&stranger), peer(&home), PeerId::random()] {
            let refused = check(&records, signer, &ours, now).unwrap_err();
            assert!(
                refused.to_string().contains(&signer.to_string()),
                "{refused}"
            );
        }
        assert!(check(&records, peer(&stranger), &theirs, now).is_ok());
        assert!(check(&records, peer(&cm), &ours, 20_000).is_err());
        // A content manager that is down (not listed) is vouched for by a member that hands
        // its manifest over, not by anyone else; a listed one without the role by nobody.
        let (down, pinned) = (PeerId::random(), ours.public());
        assert!(manifest_signer(&records, (down, peer(&home)), pinned, now).is_ok());
        assert!(manifest_signer(&records, (peer(&stranger), peer(&home)), pinned, now).is_err());
        assert!(manifest_signer(&records, (down, PeerId::random()), pinned, now).is_err());
        // A record signed by someone else than the station it describes does not count.
        let mut forged = record(&cm, &ours, cm_role);
        forged.signature = record(&home, &ours, cm_role).signature;
        assert!(check(&[forged], peer(&cm), &ours, now).is_err());
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
