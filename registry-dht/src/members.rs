//! Who the registry admits: the members of a closed swarm, as their certified station records
//! showed them ([`vodmesh_proto::member`]).
//!
//! A director of a closed swarm (one with trust roots: `--auth` or `--enroll`) admits a
//! station once it has seen a station record of it whose certificate a trusted issuer signed.
//! Admitted are the station's director and the engines its record lists (a member vouches for
//! its engines). Everything else is refused: its records are not stored, its provider records
//! not kept, its catalog records not believed unless a certified content manager signed them,
//! and it never enters the routing table.
//!
//! An open registry ([`Members::open`]: the tools' sims and benches, and a station with no
//! trust root at all) admits everyone and knows no roles.

use std::collections::{HashMap, HashSet};

use libp2p::PeerId;
use vodmesh_proto::member::{self, Member, NotMember};
use vodmesh_proto::station::{MAX_REVOKED, Roles, StationRecord};
use vodmesh_proto::token::{IssuerKey, TrustedIssuers};

/// Most stations remembered; beyond it the entries nearest their expiry are dropped first.
pub const MAX_MEMBERS: usize = 16_384;

/// What a director knows of the swarm's membership.
#[derive(Clone, Debug)]
pub struct Members {
    /// Most stations remembered ([`MAX_MEMBERS`]).
    limit: usize,
    /// The issuers whose certificates admit a station; `None`: an open registry.
    trusted: Option<TrustedIssuers>,
    /// Admitted stations, by director, with when the record that admitted them was signed.
    known: HashMap<PeerId, (Member, u64)>,
    /// Engines of admitted stations, to their director.
    engines: HashMap<PeerId, PeerId>,
    /// Stations each issuer revoked, as its certified auth station's latest record lists them.
    revoked: HashMap<IssuerKey, HashSet<PeerId>>,
}

impl Members {
    /// An open registry: everyone is admitted.
    pub fn open() -> Self {
        Self {
            limit: MAX_MEMBERS,
            trusted: None,
            known: HashMap::new(),
            engines: HashMap::new(),
            revoked: HashMap::new(),
        }
    }

    /// A closed registry: only stations certified by `trusted` are admitted.
    pub fn closed(trusted: TrustedIssuers) -> Self {
        Self {
            trusted: Some(trusted),
            ..Self::open()
        }
    }

    /// Whether only members are admitted.
    pub fn is_closed(&self) -> bool {
        self.trusted.is_some()
    }

    /// Checks the (signature-checked) station `record` at `now_ms` and remembers a member.
    /// `Ok(None)` in an open registry.
    pub fn admit(
        &mut self,
        record: &StationRecord,
        now_ms: u64,
    ) -> Result<Option<Member>, NotMember> {
        let Some(trusted) = &self.trusted else {
            return Ok(None);
        };
        let found = member::of_record(record, trusted, now_ms);
        let newer = self
            .known
            .get(&record.director)
            .is_none_or(|(_, issued)| record.issued_ms >= *issued);
        if !newer {
            // A late copy of an older record says nothing about the membership now.
            return found.map(Some);
        }
        // What the newest record says replaces what an older one said.
        self.forget(&record.director);
        let member = found?;
        if (self.revoked.get(&member.issuer)).is_some_and(|r| r.contains(&record.director)) {
            return Err(NotMember::Revoked);
        }
        if member.roles.auth {
            self.revocations(member.issuer, &record.revoked);
        }
        if self.known.len() >= self.limit {
            self.prune(now_ms);
        }
        for engine in &record.engines {
            self.engines.insert(engine.peer_id, record.director);
        }
        (self.known).insert(record.director, (member.clone(), record.issued_ms));
        Ok(Some(member))
    }

    /// Whether `record` would be admitted, without remembering anything.
    pub fn check(&self, record: &StationRecord, now_ms: u64) -> Result<(), NotMember> {
        match &self.trusted {
            None => Ok(()),
            Some(trusted) => member::of_record(record, trusted, now_ms).map(|_| ()),
        }
    }

    /// The certified auth station of `issuer` lists `revoked`: those it certified are members
    /// no more.
    fn revocations(&mut self, issuer: IssuerKey, revoked: &[PeerId]) {
        let list: HashSet<PeerId> = revoked.iter().take(MAX_REVOKED).copied().collect();
        let gone: Vec<PeerId> = (self.known.iter())
            .filter(|(p, (m, _))| m.issuer == issuer && list.contains(p))
            .map(|(p, _)| *p)
            .collect();
        for peer in gone {
            self.forget(&peer);
        }
        self.revoked.insert(issuer, list);
    }

    fn forget(&mut self, director: &PeerId) {
        if self.known.remove(director).is_some() {
            self.engines.retain(|_, d| d != director);
        }
    }

    /// Drops expired members, and then the half nearest expiry if that freed nothing.
    fn prune(&mut self, now_ms: u64) {
        self.known.retain(|_, (m, _)| m.expires_ms > now_ms);
        if self.known.len() >= self.limit {
            let mut by_expiry: Vec<(u64, PeerId)> = self
                .known
                .iter()
                .map(|(p, (m, _))| (m.expires_ms, *p))
                .collect();
            by_expiry.sort_unstable();
            for (_, peer) in by_expiry.into_iter().take(self.limit / 2) {
                self.known.remove(&peer);
            }
        }
        let known = &self.known;
        self.engines.retain(|_, d| known.contains_key(d));
    }

    /// The membership of the station whose director is `peer`, if it is a member at `now_ms`.
    pub fn member(&self, peer: &PeerId, now_ms: u64) -> Option<&Member> {
        (self.known.get(peer))
            .map(|(m, _)| m)
            .filter(|m| m.expires_ms > now_ms)
    }

    /// Whether `peer` is admitted at `now_ms`: anyone in an open registry; else a member's
    /// director or one of the engines a member's record lists.
    pub fn admits(&self, peer: &PeerId, now_ms: u64) -> bool {
        if !self.is_closed() {
            return true;
        }
        let director = self.engines.get(peer).unwrap_or(peer);
        self.member(director, now_ms).is_some()
    }

    /// Whether `peer` may act as a content manager (sign catalog records, send `Published` and
    /// `Replicate`): anyone in an open registry; else a member granted that role.
    pub fn is_content_manager(&self, peer: &PeerId, now_ms: u64) -> bool {
        self.roles(peer, now_ms).is_some_and(|r| r.content_manager)
    }

    /// The roles `peer` was granted; every role in an open registry, where nobody grants any.
    pub fn roles(&self, peer: &PeerId, now_ms: u64) -> Option<Roles> {
        if !self.is_closed() {
            return Some(Roles {
                home: true,
                content_manager: true,
                auth: true,
            });
        }
        self.member(peer, now_ms).map(|m| m.roles)
    }
}

#[cfg(test)]
mod tests {
    use libp2p::identity::Keypair;
    use vodmesh_proto::station::EngineInfo;
    use vodmesh_proto::token::{Audience, Claims, Issuer, Rights, TokenId};

    use super::*;

    fn peer() -> PeerId {
        Keypair::generate_ed25519().public().to_peer_id()
    }

    fn record(director: PeerId, engine: PeerId, cert: Option<Vec<u8>>) -> StationRecord {
        StationRecord {
            director,
            addrs: vec![],
            engines: vec![EngineInfo {
                peer_id: engine,
                addrs: vec![],
                streams: 0,
                max_streams: 1,
                used: 0,
                capacity: 0,
                up: true,
                disks: vec![],
                http: None,
                https: false,
                bulk: None,
            }],
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
            expires_ms: u64::MAX,
            counters: Default::default(),
            certificate: cert.map(Into::into),
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
                rights: Rights::All,
                not_before_ms: 0,
                expires_ms,
                id: TokenId::random(),
                user: None,
                roles: Some(roles),
                addr: None,
            })
            .expect("a certificate fits")
    }

    #[test]
    fn members_and_their_engines_are_admitted_others_not() {
        let issuer = Issuer::generate();
        let mut members = Members::closed([issuer.public()].into_iter().collect());
        let (cm, cm_engine, home, rogue) = (peer(), peer(), peer(), peer());
        let granted_cm = Roles {
            content_manager: true,
            ..Roles::default()
        };
        let cert = certify(&issuer, cm, granted_cm, 1_000);
        assert!(
            members
                .admit(&record(cm, cm_engine, Some(cert)), 10)
                .is_ok()
        );
        let cert = certify(&issuer, home, Roles::default(), 1_000);
        assert!(members.admit(&record(home, peer(), Some(cert)), 10).is_ok());
        // A rogue: no certificate, then one of an issuer nobody trusts.
        assert!(members.admit(&record(rogue, peer(), None), 10).is_err());
        let forged = certify(&Issuer::generate(), rogue, granted_cm, 1_000);
        assert!(
            members
                .admit(&record(rogue, peer(), Some(forged)), 10)
                .is_err()
        );

        assert!(members.admits(&cm, 10) && members.admits(&cm_engine, 10));
        assert!(members.admits(&home, 10));
        assert!(!members.admits(&rogue, 10) && !members.admits(&peer(), 10));
        assert!(members.is_content_manager(&cm, 10));
        assert!(
            !members.is_content_manager(&home, 10),
            "its record claims the role, its certificate does not grant it"
        );
        assert!(!members.is_content_manager(&rogue, 10));
        // Expired: no longer admitted, nor its engines.
        assert!(!members.admits(&cm, 1_000) && !members.admits(&cm_engine, 1_000));
        // A late copy of an older record without a certificate changes nothing; a newer one
        // ends the membership at once.
        let mut old = record(cm, cm_engine, None);
        old.issued_ms = 0;
        assert!(members.admit(&old, 20).is_err());
        assert!(members.admits(&cm, 20));
        let mut newer = record(cm, cm_engine, None);
        newer.issued_ms = 2;
        assert!(members.admit(&newer, 20).is_err());
        assert!(!members.admits(&cm, 20) && !members.admits(&cm_engine, 20));
    }

    #[test]
    fn a_station_revoked_by_its_issuers_auth_station_is_a_member_no_more() {
        let issuer = Issuer::generate();
        let mut members = Members::closed([issuer.public()].into_iter().collect());
        let (auth, station, engine) = (peer(), peer(), peer());
        let cert = certify(&issuer, station, Roles::default(), 1_000);
        assert!(
            members
                .admit(&record(station, engine, Some(cert.clone())), 10)
                .is_ok()
        );
        let auth_roles = Roles {
            auth: true,
            ..Roles::default()
        };
        let mut auth_record = record(
            auth,
            peer(),
            Some(certify(&issuer, auth, auth_roles, 1_000)),
        );
        auth_record.roles.auth = true;
        auth_record.revoked = vec![station];
        // Listed by a station that may not speak for the issuer (not a certified auth
        // station): nothing changes.
        let mut not_auth = record(peer(), peer(), None);
        not_auth.revoked = vec![station];
        assert!(members.admit(&not_auth, 10).is_err());
        assert!(members.admits(&station, 10));
        // Listed by the issuer's auth station: out, with its engines, and it stays out.
        assert!(members.admit(&auth_record, 10).is_ok());
        assert!(!members.admits(&station, 10) && !members.admits(&engine, 10));
        let mut again = record(station, engine, Some(cert));
        again.issued_ms = 5;
        assert!(matches!(members.admit(&again, 10), Err(NotMember::Revoked)));
        // Taken off the list (enrolled anew): a member again.
        auth_record.revoked.clear();
        auth_record.issued_ms = 6;
        assert!(members.admit(&auth_record, 10).is_ok());
        again.issued_ms = 7;
        assert!(members.admit(&again, 10).is_ok());
    }

    #[test]
    fn an_open_registry_admits_everyone_with_every_role() {
        let mut members = Members::open();
        let p = peer();
        assert!(matches!(
            members.admit(&record(p, peer(), None), 1),
            Ok(None)
        ));
        assert!(members.admits(&peer(), 1));
        assert!(members.is_content_manager(&peer(), 1));
    }

    #[test]
    fn the_table_stays_bounded() {
        let issuer = Issuer::generate();
        let mut members = Members::closed([issuer.public()].into_iter().collect());
        members.limit = 64;
        for i in 0..100 {
            let p = peer();
            let cert = certify(&issuer, p, Roles::default(), 1_000 + i as u64);
            assert!(members.admit(&record(p, peer(), Some(cert)), 10).is_ok());
        }
        assert!(members.known.len() <= 64);
        assert!(members.engines.len() <= 64);
    }
}
