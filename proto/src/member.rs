//! Membership: who is a station of the swarm, and which roles it was granted.
//!
//! A station is a member when its station record carries a **station certificate** that a
//! trusted issuer signed: a token ([`crate::token`]) of audience [`Audience::Member`] whose
//! subject is the station's director and whose [`Claims::roles`] are the roles granted
//! (`auth`, `content_manager`, `home`). The auth server signs one for every station that
//! enrolls (`vodmesh enroll --station PEERID --role ...`, then `vodmesh-node --enroll FILE`)
//! and renews it before it expires; the auth station signs its own. A signed
//! [`Revocation`] from the same issuer ends a membership before its expiry.
//!
//! Roles come from the certificate, never from the record's own flags: [`Member::roles`] is
//! what the record claims *and* the certificate grants ([`Roles::granted`]).

use libp2p::PeerId;

use crate::station::{Roles, StationRecord};
use crate::token::{Audience, Claims, IssuerKey, TokenError, TrustedIssuers};

/// The one line a non-member is told, in a director's `Error` reply.
pub const NOT_A_MEMBER: &str = "not a member";

/// Why a station is not (or no longer) a member.
#[derive(Debug, thiserror::Error)]
pub enum NotMember {
    /// Its record carries no certificate.
    #[error("no station certificate")]
    NoCertificate,
    /// The certificate does not verify: unknown issuer, forged, expired, another station's.
    #[error("station certificate refused: {0}")]
    Refused(#[from] TokenError),
    /// Its issuer revoked it.
    #[error("station certificate revoked")]
    Revoked,
}

/// A station whose certificate verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its director.
    pub station: PeerId,
    /// Who certified it.
    pub issuer: IssuerKey,
    /// The roles it plays and was granted.
    pub roles: Roles,
    /// When the certificate expires (ms since the epoch).
    pub expires_ms: u64,
}

impl Roles {
    /// The roles both in `self` (what a record claims) and in `granted` (what a certificate
    /// grants).
    pub fn granted(&self, granted: &Roles) -> Roles {
        Roles {
            home: self.home && granted.home,
            content_manager: self.content_manager && granted.content_manager,
            auth: self.auth && granted.auth,
        }
    }

    /// The roles as the words `vodmesh status` and `vodmesh enroll --role` use, joined by `,`;
    /// `-` for none.
    pub fn words(&self) -> String {
        let words: Vec<&str> = [
            (self.auth, "auth"),
            (self.content_manager, "content-manager"),
            (self.home, "home"),
        ]
        .into_iter()
        .filter_map(|(on, w)| on.then_some(w))
        .collect();
        if words.is_empty() {
            "-".into()
        } else {
            words.join(",")
        }
    }
}

/// Checks the certificate `cert` of station `station` against `trusted` at `now_ms`.
pub fn verify(
    cert: &[u8],
    station: &PeerId,
    trusted: &TrustedIssuers,
    now_ms: u64,
) -> Result<(Claims, Member), NotMember> {
    let claims = trusted.verify(cert, now_ms, Audience::Member, None, station)?;
    let member = Member {
        station: *station,
        issuer: claims.issuer,
        roles: claims.roles.unwrap_or_default(),
        expires_ms: claims.expires_ms,
    };
    Ok((claims, member))
}

/// The membership of the station that `record` describes (its signature already checked):
/// its certificate verified against `trusted`, with the roles both claimed and granted.
pub fn of_record(
    record: &StationRecord,
    trusted: &TrustedIssuers,
    now_ms: u64,
) -> Result<Member, NotMember> {
    let cert = record
        .certificate
        .as_ref()
        .ok_or(NotMember::NoCertificate)?;
    let (_, mut member) = verify(cert, &record.director, trusted, now_ms)?;
    member.roles = record.roles.granted(&member.roles);
    Ok(member)
}

/// What `record`'s certificate says, read without checking it (for listings: the director
/// that listed the record checked it): who certified the station, with which roles (those
/// claimed and granted), until when. `None` without a certificate.
pub fn peek(record: &StationRecord) -> Option<Member> {
    let claims = Claims::peek(record.certificate.as_ref()?).ok()?;
    (claims.audience == Audience::Member && claims.subject == record.director).then(|| Member {
        station: record.director,
        issuer: claims.issuer,
        roles: record.roles.granted(&claims.roles.unwrap_or_default()),
        expires_ms: claims.expires_ms,
    })
}

/// Self-certified roles of `record`: its certificate checked against the issuer key the record
/// itself names. What a console can check of an auth station before it pins an issuer; it
/// proves only that the record's issuer stands behind the roles, not that anyone trusts it.
pub fn self_certified(record: &StationRecord, now_ms: u64) -> Option<Member> {
    let issuer: IssuerKey = record.issuer.as_deref()?.parse().ok()?;
    let trusted: TrustedIssuers = [issuer].into_iter().collect();
    of_record(record, &trusted, now_ms).ok()
}

#[cfg(test)]
mod tests {
    use libp2p::identity::Keypair;

    use super::*;
    use crate::token::{Issuer, TokenId};

    fn record(director: PeerId, roles: Roles, issuer: Option<String>) -> StationRecord {
        StationRecord {
            director,
            addrs: vec![],
            engines: vec![],
            region: None,
            coords: None,
            bandwidth_mbps: 1,
            roles,
            issuer,
            issued_ms: 1,
            expires_ms: u64::MAX,
            counters: Default::default(),
            certificate: None,
            revoked: vec![],
            http: None,
            https: false,
        }
    }

    fn certify(issuer: &Issuer, station: PeerId, roles: Roles, expires_ms: u64) -> Vec<u8> {
        issuer
            .sign(&Claims {
                issuer: issuer.public(),
                subject: station,
                audience: Audience::Member,
                rights: crate::token::Rights::All,
                not_before_ms: 0,
                expires_ms,
                id: TokenId::random(),
                user: None,
                roles: Some(roles),
                addr: None,
            })
            .expect("a certificate fits a token")
    }

    const ALL: Roles = Roles {
        home: true,
        content_manager: true,
        auth: true,
    };

    #[test]
    fn roles_are_those_claimed_and_granted() {
        let issuer = Issuer::generate();
        let trusted: TrustedIssuers = [issuer.public()].into_iter().collect();
        let station = Keypair::generate_ed25519().public().to_peer_id();
        let mut rec = record(station, ALL, None);
        assert!(matches!(
            of_record(&rec, &trusted, 10),
            Err(NotMember::NoCertificate)
        ));
        let home_only = Roles {
            home: true,
            ..Roles::default()
        };
        rec.certificate = Some(certify(&issuer, station, home_only, 1_000_000).into());
        let member = of_record(&rec, &trusted, 10).expect("a member");
        assert_eq!(member.roles, home_only, "a role claimed but not granted");
        assert_eq!(member.roles.words(), "home");
        assert_eq!(Roles::default().words(), "-");
        assert_eq!(ALL.words(), "auth,content-manager,home");
        // Granted but not claimed: not played either.
        rec.roles = Roles::default();
        assert_eq!(
            of_record(&rec, &trusted, 10).unwrap().roles,
            Roles::default()
        );
    }

    #[test]
    fn a_certificate_of_another_station_issuer_or_kind_or_an_expired_one_is_refused() {
        let issuer = Issuer::generate();
        let trusted: TrustedIssuers = [issuer.public()].into_iter().collect();
        let station = Keypair::generate_ed25519().public().to_peer_id();
        let other = Keypair::generate_ed25519().public().to_peer_id();
        let mut rec = record(station, ALL, None);
        let refused = |rec: &StationRecord| of_record(rec, &trusted, 10).is_err();
        rec.certificate = Some(certify(&issuer, other, ALL, 1_000_000).into());
        assert!(refused(&rec), "another station's certificate");
        rec.certificate = Some(certify(&Issuer::generate(), station, ALL, 1_000_000).into());
        assert!(refused(&rec), "an untrusted issuer");
        let engine_token = issuer
            .issue(
                station,
                Audience::Engine,
                crate::token::Rights::All,
                0,
                1_000_000,
            )
            .unwrap();
        rec.certificate = Some(engine_token.into());
        assert!(refused(&rec), "a token of another kind");
        rec.certificate = Some(certify(&issuer, station, ALL, 5).into());
        assert!(
            of_record(&rec, &trusted, 5 + crate::token::CLOCK_SKEW_MS).is_err(),
            "expired"
        );
        rec.certificate = Some(certify(&issuer, station, ALL, 1_000_000).into());
        assert!(!refused(&rec), "the control case: a member");
    }

    #[test]
    fn self_certified_checks_against_the_records_own_issuer() {
        let issuer = Issuer::generate();
        let station = Keypair::generate_ed25519().public().to_peer_id();
        let mut rec = record(station, ALL, Some(issuer.public().to_string()));
        assert!(self_certified(&rec, 10).is_none());
        rec.certificate = Some(certify(&issuer, station, ALL, 1_000_000).into());
        assert_eq!(self_certified(&rec, 10).unwrap().roles, ALL);
        rec.issuer = Some(Issuer::generate().public().to_string());
        assert!(self_certified(&rec, 10).is_none(), "signed by another key");
    }
}
