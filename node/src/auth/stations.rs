//! The auth server's side of station membership: enrollment tokens, enrollment (single-use
//! tokens), certificates (renewal, revocation, the auth station's own) and engine tokens.

use libp2p::PeerId;
use tracing::{info, instrument, warn};
use vodmesh_proto::ids::short_peer;
use vodmesh_proto::station::Roles;
use vodmesh_proto::token::{Audience, Claims, Rights, TokenId};

use super::{Caller, Enrolled, Enrollment, Error, MAX_ENGINES, Metrics, Server};

impl Server {
    /// An enrollment token for the station whose director is `station` (`vodmesh enroll`);
    /// only an admin may ask.
    #[instrument(skip_all, fields(station = %short_peer(&station), by = %short_peer(&caller.peer)))]
    pub fn issue_enroll_token(
        &self,
        caller: Caller<'_>,
        station: PeerId,
        roles: Roles,
        now_ms: u64,
    ) -> Result<Vec<u8>, Error> {
        self.require_admin(caller, now_ms)?;
        let ttl = self.config.enroll_ttl;
        let claims = self.claims(station, Audience::Enroll, Rights::All, ttl, now_ms);
        self.sign(Claims {
            roles: Some(roles),
            ..claims
        })
    }

    /// A station (`--enroll FILE`) presents its enrollment token from its director's peer id
    /// `station`, listing its engines; from then on those engines receive engine tokens.
    /// Each token enrolls once ([`Error::EnrollmentUsed`] after): a station that restarts
    /// renews its certificate ([`Server::renew`]). Returns the station's certificate, with the
    /// roles the enrollment token grants.
    #[instrument(skip_all, fields(station = %short_peer(&station), engines = engines.len()))]
    pub fn enroll_station(
        &self,
        token: &[u8],
        station: PeerId,
        engines: &[PeerId],
        now_ms: u64,
    ) -> Result<Vec<u8>, Error> {
        let claims = self
            .own
            .verify(token, now_ms, Audience::Enroll, None, &station)?;
        // A token issued after the revocation is an admin's new decision: it enrolls again.
        let revoked = self.db.revoked(&station)?;
        if revoked.is_some_and(|at| claims.not_before_ms <= at) {
            return Err(Error::Revoked(station));
        }
        check_engines(engines)?;
        let enrollment = Enrollment {
            engines: engines.to_vec(),
            enrolled_ms: now_ms,
            token: Some(claims.id),
        };
        let enrolled =
            (self.db).enroll_once(&station, &enrollment, claims.id, claims.expires_ms, now_ms)?;
        if enrolled == Enrolled::TokenUsed {
            warn!(token = %claims.id, "enrollment token presented again: refused");
            return Err(Error::EnrollmentUsed);
        }
        refuse_taken(enrolled)?;
        if revoked.is_some() {
            self.db.unrevoke(&station)?;
        }
        Metrics::inc(&self.metrics.enrollments);
        info!("station enrolled");
        self.certify(station, claims.roles.unwrap_or_default(), now_ms)
    }

    /// The auth station enrolls its own engines, no token needed, and certifies itself with
    /// `roles` (the roles it runs).
    pub fn enroll_own_station(
        &self,
        station: PeerId,
        engines: &[PeerId],
        roles: Roles,
        now_ms: u64,
    ) -> Result<Vec<u8>, Error> {
        self.record_enrollment(station, engines, now_ms, None)?;
        self.certify(station, roles, now_ms)
    }

    /// Ends `station`'s membership (`vodmesh station revoke`); only an admin may. Its
    /// certificate is not renewed, and this station's record lists it as revoked.
    #[instrument(skip_all, fields(station = %short_peer(&station), by = %short_peer(&caller.peer)))]
    pub fn revoke(&self, caller: Caller<'_>, station: PeerId, now_ms: u64) -> Result<(), Error> {
        self.require_admin(caller, now_ms)?;
        // The auth station certifies itself: revoked, it renewed nothing, its content
        // manager's programs were refused everywhere, and enrolling it again did not help.
        if self.config.station == Some(station) {
            return Err(Error::RevokeOwn(station));
        }
        if self.db.station(&station)?.is_none() {
            return Err(Error::NotAStation(station));
        }
        self.db.revoke(&station, now_ms)?;
        info!("station revoked");
        Ok(())
    }

    /// A fresh certificate for `station`, in exchange for its current one: signed by this
    /// server, still valid, presented by its own station, and not revoked. A station that
    /// restarts renews this way and lists its `engines` again (they replace the enrolled
    /// ones); a renewal while it runs lists none and changes nothing.
    #[instrument(skip_all, fields(station = %short_peer(&station)))]
    pub fn renew(
        &self,
        certificate: &[u8],
        station: PeerId,
        engines: Option<&[PeerId]>,
        now_ms: u64,
    ) -> Result<Vec<u8>, Error> {
        let claims = self
            .own
            .verify(certificate, now_ms, Audience::Member, None, &station)?;
        self.check_not_revoked(&station)?;
        if let Some(engines) = engines {
            let token = self.db.station(&station)?.and_then(|e| e.token);
            self.record_enrollment(station, engines, now_ms, token)?;
        }
        self.certify(station, claims.roles.unwrap_or_default(), now_ms)
    }

    fn check_not_revoked(&self, station: &PeerId) -> Result<(), Error> {
        match self.db.revoked(station)? {
            Some(_) => Err(Error::Revoked(*station)),
            None => Ok(()),
        }
    }

    /// Signs a station certificate for `station` granting `roles`: the auth station's own
    /// (self-issued, with the roles it runs), and every enrolled station's.
    pub fn certify(&self, station: PeerId, roles: Roles, now_ms: u64) -> Result<Vec<u8>, Error> {
        let ttl = self.config.member_ttl;
        let claims = self.claims(station, Audience::Member, Rights::All, ttl, now_ms);
        self.sign(Claims {
            roles: Some(roles),
            ..claims
        })
    }

    fn record_enrollment(
        &self,
        station: PeerId,
        engines: &[PeerId],
        now_ms: u64,
        token: Option<TokenId>,
    ) -> Result<(), Error> {
        check_engines(engines)?;
        let enrolled = self.db.enroll(
            &station,
            &Enrollment {
                engines: engines.to_vec(),
                enrolled_ms: now_ms,
                token,
            },
        )?;
        refuse_taken(enrolled)?;
        Metrics::inc(&self.metrics.enrollments);
        info!("station enrolled");
        Ok(())
    }

    /// An engine token for `engine` (the peer asking), if its station is enrolled.
    #[instrument(skip_all, fields(engine = %short_peer(&engine)))]
    pub fn issue_engine_token(&self, engine: PeerId, now_ms: u64) -> Result<Vec<u8>, Error> {
        self.engine_token_of(engine, None, now_ms)
    }

    /// An engine token for `engine`, asked by the director `station`: only for an engine
    /// that `station` enrolled (an engine in a process of its own, which has no connection
    /// to this server and gets the token from its director).
    #[instrument(skip_all, fields(station = %short_peer(&station), engine = %short_peer(&engine)))]
    pub fn issue_station_engine_token(
        &self,
        station: PeerId,
        engine: PeerId,
        now_ms: u64,
    ) -> Result<Vec<u8>, Error> {
        self.engine_token_of(engine, Some(station), now_ms)
    }

    /// An engine token for `engine` if it is enrolled (by `station`, when given).
    fn engine_token_of(
        &self,
        engine: PeerId,
        station: Option<PeerId>,
        now_ms: u64,
    ) -> Result<Vec<u8>, Error> {
        let enrolled_by = self.db.station_of_engine(&engine)?;
        if enrolled_by.is_none() || station.is_some_and(|s| enrolled_by != Some(s)) {
            Metrics::inc(&self.metrics.engine_tokens_refused);
            warn!("engine token refused: not enrolled");
            return Err(Error::NotEnrolled(engine));
        }
        self.issue(
            engine,
            Audience::Engine,
            Rights::All,
            self.config.engine_ttl,
            now_ms,
        )
    }
}

fn check_engines(engines: &[PeerId]) -> Result<(), Error> {
    match engines.len() > MAX_ENGINES {
        true => Err(Error::TooManyEngines(engines.len())),
        false => Ok(()),
    }
}

/// [`Error::EngineTaken`] for an enrollment refused because it listed another station's
/// engine (logged: a station trying that is misconfigured, or worse).
fn refuse_taken(enrolled: Enrolled) -> Result<(), Error> {
    match enrolled {
        Enrolled::EngineTaken(taken) => {
            let (engine, owner) = (short_peer(&taken.engine), short_peer(&taken.station));
            warn!(%engine, %owner, "enrollment refused: it lists another station's engine");
            Err(Error::EngineTaken(Box::new(taken)))
        }
        Enrolled::TokenUsed => Err(Error::EnrollmentUsed),
        Enrolled::Done => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Config, EngineTaken, HashParams};

    const T0: u64 = 1_700_000_000_000;

    /// An auth server in a temp dir, its admin, and a way to enroll a station.
    struct Fixture {
        _dir: tempfile::TempDir,
        server: Server,
        admin: PeerId,
    }

    impl Fixture {
        fn new() -> anyhow::Result<Self> {
            let dir = tempfile::tempdir()?;
            let admin = PeerId::random();
            let config = Config {
                hash: HashParams::INSECURE_FOR_TESTS,
                admins: vec![admin],
                ..Config::default()
            };
            let server = Server::open(dir.path(), config)?;
            Ok(Self {
                _dir: dir,
                server,
                admin,
            })
        }

        /// An enrollment token for `station`.
        fn token(&self, station: PeerId) -> anyhow::Result<Vec<u8>> {
            let admin = Caller {
                peer: self.admin,
                token: None,
            };
            let roles = Roles::default();
            Ok((self.server).issue_enroll_token(admin, station, roles, T0)?)
        }

        /// Whether `station` gets an engine token for `engine`.
        fn engine_token(&self, station: PeerId, engine: PeerId) -> bool {
            (self.server)
                .issue_station_engine_token(station, engine, T0)
                .is_ok()
        }
    }

    /// `vodmesh station revoke` refuses the auth station itself (which certifies itself: the
    /// swarm had no content manager left, for good) and a peer id that never enrolled (a typo
    /// said "revoked"). Control: an enrolled station is revoked, and renews nothing after.
    #[test]
    fn the_auth_station_and_a_peer_never_enrolled_are_not_revoked() -> anyhow::Result<()> {
        let own = PeerId::random();
        let dir = tempfile::tempdir()?;
        let admin = PeerId::random();
        let config = Config {
            hash: HashParams::INSECURE_FOR_TESTS,
            admins: vec![admin],
            station: Some(own),
            ..Config::default()
        };
        let server = Server::open(dir.path(), config)?;
        let caller = || Caller {
            peer: admin,
            token: None,
        };
        let own_revoked = server.revoke(caller(), own, T0);
        assert!(matches!(own_revoked, Err(Error::RevokeOwn(p)) if p == own));
        let stranger = PeerId::random();
        let stranger_revoked = server.revoke(caller(), stranger, T0);
        assert!(matches!(stranger_revoked, Err(Error::NotAStation(p)) if p == stranger));

        let station = PeerId::random();
        let token = server.issue_enroll_token(caller(), station, Roles::default(), T0)?;
        let certificate = server.enroll_station(&token, station, &[], T0)?;
        server.revoke(caller(), station, T0 + 1)?;
        let renewed = server.renew(&certificate, station, None, T0 + 2);
        assert!(matches!(renewed, Err(Error::Revoked(p)) if p == station));
        Ok(())
    }

    fn taken(result: Result<Vec<u8>, Error>, engine: PeerId, owner: PeerId) -> bool {
        let expected = EngineTaken {
            engine,
            station: owner,
        };
        matches!(result, Err(Error::EngineTaken(t)) if *t == expected)
    }

    /// A member cannot take another station's engine, by renewing or by enrolling with it:
    /// refused, nothing written (the enrollment token stays unused), and the owner's engine
    /// keeps its engine tokens. Controls: a station re-lists its own engines and adds fresh
    /// ones; a revoked station's engine may be taken.
    #[test]
    fn a_station_cannot_take_another_stations_engine() -> anyhow::Result<()> {
        let f = Fixture::new()?;
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let (ea, eb, ec, fresh) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        let cert_a = f.server.enroll_station(&f.token(a)?, a, &[ea], T0)?;
        let cert_b = f.server.enroll_station(&f.token(b)?, b, &[eb], T0)?;

        // B renews listing A's engine: refused, with a line that says whose it is.
        let stolen = f.server.renew(&cert_b, b, Some(&[eb, ea]), T0 + 1);
        let line = stolen.as_ref().err().map(ToString::to_string);
        assert!(taken(stolen, ea, a), "{line:?}");
        assert!(line.is_some_and(|l| l.contains(&a.to_string())));
        assert!(f.engine_token(a, ea), "A's engine keeps its tokens");
        assert!(!f.engine_token(b, ea));
        assert!(f.engine_token(b, eb), "nothing written for B either");
        // C enrolls listing it: refused, and its token is not spent by the refusal.
        let token_c = f.token(c)?;
        assert!(taken(
            f.server.enroll_station(&token_c, c, &[ea], T0),
            ea,
            a
        ));
        assert!(f.engine_token(a, ea));
        assert!(!f.server.db().enrollment_used(Claims::peek(&token_c)?.id)?);

        // Controls: A re-lists its own engine, B lists a fresh one, C enrolls with its own.
        f.server.renew(&cert_a, a, Some(&[ea]), T0 + 2)?;
        assert!(f.engine_token(a, ea));
        f.server.renew(&cert_b, b, Some(&[eb, fresh]), T0 + 2)?;
        assert!(f.engine_token(b, fresh) && f.engine_token(b, eb));
        f.server.enroll_station(&token_c, c, &[ec], T0 + 2)?;
        assert!(f.engine_token(c, ec));
        // Once A is revoked, its engine is no one's to keep.
        f.server.db().revoke(&a, T0 + 3)?;
        f.server.renew(&cert_b, b, Some(&[eb, ea]), T0 + 4)?;
        assert!(f.engine_token(b, ea) && !f.engine_token(a, ea));
        Ok(())
    }
}
