//! The auth server's side of station membership: enrollment tokens, enrollment (single-use
//! tokens), certificates (renewal, revocation, the auth station's own) and engine tokens.

use libp2p::PeerId;
use tracing::{info, instrument, warn};
use vodmesh_proto::ids::short_peer;
use vodmesh_proto::station::Roles;
use vodmesh_proto::token::{Audience, Claims, Rights, TokenId};

use super::{Caller, Enrollment, Error, MAX_ENGINES, Metrics, Server};

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
        let first =
            (self.db).enroll_once(&station, &enrollment, claims.id, claims.expires_ms, now_ms)?;
        if !first {
            warn!(token = %claims.id, "enrollment token presented again: refused");
            return Err(Error::EnrollmentUsed);
        }
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
        self.db.enroll(
            &station,
            &Enrollment {
                engines: engines.to_vec(),
                enrolled_ms: now_ms,
                token,
            },
        )?;
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
