//! Auth server scenarios against real redb files and key files in a temp dir, on a simulated
//! clock (`now_ms` is an argument).

use super::*;
use vodmesh_proto::ProgramId;
use vodmesh_proto::station::Roles;
use vodmesh_proto::token::Claims;

const T0: u64 = 1_700_000_000_000;
const PASSWORD: &str = "correct horse battery";

struct Fixture {
    _dir: tempfile::TempDir,
    server: Server,
    /// An admin by peer id (the station's own identity).
    station: PeerId,
    /// Verifies tokens as a director or engine would.
    trusted: TrustedIssuers,
}

fn fixture() -> anyhow::Result<Fixture> {
    let dir = tempfile::tempdir()?;
    let station = PeerId::random();
    let server = Server::open(
        dir.path(),
        Config {
            hash: HashParams::INSECURE_FOR_TESTS,
            admins: vec![station],
            ..Config::default()
        },
    )?;
    let trusted = [server.issuer_key()].into_iter().collect();
    Ok(Fixture {
        _dir: dir,
        server,
        station,
        trusted,
    })
}

impl Fixture {
    fn as_station(&self) -> Caller<'static> {
        Caller {
            peer: self.station,
            token: None,
        }
    }

    fn add(&self, name: &str, admin: bool, rights: Rights) -> anyhow::Result<()> {
        self.server.add_user(
            self.as_station(),
            name,
            PASSWORD,
            User { admin, rights },
            T0,
        )?;
        Ok(())
    }
}

fn failed(m: &Metrics) -> u64 {
    m.logins_failed.load(Ordering::Relaxed)
}

fn throttled(m: &Metrics) -> u64 {
    m.logins_throttled.load(Ordering::Relaxed)
}

#[test]
fn login_gives_a_console_token_with_the_users_rights() -> anyhow::Result<()> {
    let f = fixture()?;
    let p1 = ProgramId([1; 32]);
    f.add("alice", false, Rights::Programs(vec![p1]))?;
    let console = PeerId::random();
    let token = f.server.login("alice", PASSWORD, console, T0)?;
    let claims = f
        .trusted
        .verify(&token, T0, Audience::Console, Some(&p1), &console)?;
    assert_eq!(claims.rights, Rights::Programs(vec![p1]));
    assert_eq!(claims.expires_ms, T0 + 12 * 3_600_000);
    assert!(matches!(
        f.trusted.verify(
            &token,
            T0,
            Audience::Console,
            Some(&ProgramId([2; 32])),
            &console
        ),
        Err(TokenError::NotEntitled)
    ));
    assert_eq!(f.server.metrics().logins_ok.load(Ordering::Relaxed), 1);
    Ok(())
}

#[test]
fn brute_force_is_slowed_and_counted_but_the_right_password_still_works() -> anyhow::Result<()> {
    let f = fixture()?;
    f.add("alice", false, Rights::All)?;
    let m = f.server.metrics();
    let attacker = PeerId::random();
    let mut now = T0;

    // Five free guesses, each checked and refused.
    for i in 0..5 {
        let err = f
            .server
            .login("alice", &format!("guess {i}"), attacker, now)
            .unwrap_err();
        assert!(matches!(err, Error::BadCredentials), "{err}");
        assert_eq!(err.to_string(), "wrong user name or password");
    }
    assert_eq!(failed(&m), 5);

    // Then the account is locked: even the right password is not checked until the delay
    // passes, and from any peer (the lock is on the subscriber).
    let err = f
        .server
        .login("alice", "guess 6", attacker, now)
        .unwrap_err();
    assert!(
        matches!(err, Error::TooManyAttempts { retry_in_s: 1 }),
        "{err}"
    );
    assert_eq!(err.to_string(), "too many attempts, retry in 1s");
    let owner = PeerId::random();
    assert!(matches!(
        f.server.login("alice", PASSWORD, owner, now + 500),
        Err(Error::TooManyAttempts { retry_in_s: 1 })
    ));
    assert_eq!(throttled(&m), 2);
    assert_eq!(
        failed(&m),
        5,
        "refusals by the backoff are not password checks"
    );

    // Each further wrong guess doubles the wait: 2 s, 4 s, 8 s, 16 s.
    let mut waits = Vec::new();
    for _ in 0..5 {
        let wait = match f.server.login("alice", "wrong", attacker, now) {
            Err(Error::TooManyAttempts { retry_in_s }) => retry_in_s,
            other => panic!("expected a lock, got {other:?}"),
        };
        now += wait * 1_000;
        let err = f.server.login("alice", "wrong", attacker, now).unwrap_err();
        assert!(matches!(err, Error::BadCredentials), "{err}");
        waits.push(wait);
    }
    assert_eq!(waits, [1, 2, 4, 8, 16]);
    assert_eq!(failed(&m), 10);
    // So 5 guesses beyond the free ones cost the attacker 31 s, and 20 more would cost days
    // (capped at 15 min each).
    assert!(matches!(
        f.server.login("alice", PASSWORD, owner, now),
        Err(Error::TooManyAttempts { retry_in_s: 32 })
    ));

    // After the delay, the owner's right password works, and clears the subscriber's count.
    now += 32_000;
    let token = f.server.login("alice", PASSWORD, owner, now)?;
    f.trusted
        .verify(&token, now, Audience::Console, None, &owner)?;
    let err = f.server.login("alice", "typo", owner, now).unwrap_err();
    assert!(matches!(err, Error::BadCredentials));
    assert_eq!(failed(&m), 11);
    Ok(())
}

#[test]
fn one_peer_spraying_many_users_is_slowed() -> anyhow::Result<()> {
    let f = fixture()?;
    f.add("bob", false, Rights::All)?;
    let sprayer = PeerId::random();
    // Ten guesses, each at a different (mostly unknown) user: no subscriber reaches its limit,
    // but the peer does.
    for i in 0..10 {
        assert!(matches!(
            f.server
                .login(&format!("user{i}"), "password1", sprayer, T0),
            Err(Error::BadCredentials)
        ));
    }
    assert!(matches!(
        f.server.login("bob", PASSWORD, sprayer, T0),
        Err(Error::TooManyAttempts { retry_in_s: 1 })
    ));
    // Bob himself, from his own console, is not affected.
    f.server.login("bob", PASSWORD, PeerId::random(), T0)?;
    // Junk names (that no user can have) count against the peer too.
    let junker = PeerId::random();
    for _ in 0..10 {
        assert!(matches!(
            f.server.login("", "x", junker, T0),
            Err(Error::BadCredentials)
        ));
    }
    assert!(matches!(
        f.server.login(&"x".repeat(500), "x", junker, T0),
        Err(Error::TooManyAttempts { .. })
    ));
    assert_eq!(failed(&f.server.metrics()), 20);
    Ok(())
}

#[test]
fn unknown_users_and_oversized_passwords_are_plain_failures() -> anyhow::Result<()> {
    let f = fixture()?;
    f.add("carol", false, Rights::All)?;
    let peer = PeerId::random();
    assert!(matches!(
        f.server.login("nobody", PASSWORD, peer, T0),
        Err(Error::BadCredentials)
    ));
    assert!(matches!(
        f.server.login("carol", &"p".repeat(2000), peer, T0),
        Err(Error::BadCredentials)
    ));
    assert_eq!(failed(&f.server.metrics()), 2);
    Ok(())
}

#[test]
fn unenrolled_engines_get_no_engine_token() -> anyhow::Result<()> {
    let f = fixture()?;
    let engine = PeerId::random();
    let err = f.server.issue_engine_token(engine, T0).unwrap_err();
    assert!(matches!(err, Error::NotEnrolled(p) if p == engine), "{err}");
    assert!(err.to_string().contains("is not enrolled"), "{err}");
    assert_eq!(
        f.server
            .metrics()
            .engine_tokens_refused
            .load(Ordering::Relaxed),
        1
    );
    Ok(())
}

#[test]
fn enrollment_opens_engine_tokens() -> anyhow::Result<()> {
    let f = fixture()?;
    let station = PeerId::random();
    let (e1, e2) = (PeerId::random(), PeerId::random());

    // Only an admin gets an enrollment token.
    let stranger = Caller {
        peer: PeerId::random(),
        token: None,
    };
    assert!(matches!(
        f.server
            .issue_enroll_token(stranger, station, Roles::default(), T0),
        Err(Error::NotAdmin)
    ));
    let enroll = f
        .server
        .issue_enroll_token(f.as_station(), station, Roles::default(), T0)?;

    // Presented by another peer, it is worthless.
    let thief = PeerId::random();
    assert!(matches!(
        f.server.enroll_station(&enroll, thief, &[thief], T0),
        Err(Error::Token(TokenError::WrongPeer))
    ));
    // Expired.
    assert!(matches!(
        f.server
            .enroll_station(&enroll, station, &[e1], T0 + 25 * 3_600_000),
        Err(Error::Token(TokenError::Expired))
    ));
    // A console token is not an enrollment token.
    f.add("dave", false, Rights::All)?;
    let console = f.server.login("dave", PASSWORD, station, T0)?;
    assert!(matches!(
        f.server.enroll_station(&console, station, &[e1], T0),
        Err(Error::Token(TokenError::WrongAudience { .. }))
    ));
    // An enrollment token from another issuer, even a well-formed one.
    let other = Issuer::generate();
    let foreign = other.issue(station, Audience::Enroll, Rights::All, T0, T0 + 3_600_000)?;
    assert!(matches!(
        f.server.enroll_station(&foreign, station, &[e1], T0),
        Err(Error::Token(TokenError::UnknownIssuer(_)))
    ));
    assert!(f.server.issue_engine_token(e1, T0).is_err());

    // The real thing.
    f.server.enroll_station(&enroll, station, &[e1, e2], T0)?;
    let token = f.server.issue_engine_token(e1, T0)?;
    let claims = f
        .trusted
        .verify(&token, T0, Audience::Engine, Some(&ProgramId([7; 32])), &e1)?;
    assert_eq!(claims.expires_ms, T0 + 3_600_000);
    // Bound to e1: e2 cannot use it, but has its own.
    assert!(matches!(
        f.trusted.verify(&token, T0, Audience::Engine, None, &e2),
        Err(TokenError::WrongPeer)
    ));
    f.server.issue_engine_token(e2, T0)?;
    // The enrollment record names the token.
    let rec = f.server.db().station(&station)?.expect("enrolled");
    assert_eq!(rec.token, Some(Claims::peek(&enroll)?.id));
    // The station itself (the director) is not an engine.
    assert!(f.server.issue_engine_token(station, T0).is_err());
    // Renewing (as a restarted station does) with fewer engines withdraws the others.
    let cert = f.server.enroll_station(&enroll, station, &[e2], T0 + 1);
    assert!(matches!(cert, Err(Error::EnrollmentUsed)), "{cert:?}");
    let cert = f.server.certify(station, Roles::default(), T0);
    f.server.renew(&cert?, station, Some(&[e2]), T0 + 1)?;
    assert!(matches!(
        f.server.issue_engine_token(e1, T0),
        Err(Error::NotEnrolled(_))
    ));
    // The auth station's own engines need no token.
    let own = PeerId::random();
    f.server
        .enroll_own_station(f.station, &[own], Roles::default(), T0)?;
    f.server.issue_engine_token(own, T0)?;
    Ok(())
}

/// An enrolled station gets a certificate with the roles of its enrollment token; it renews
/// it with itself, not with another peer; once revoked it renews nothing, and its old
/// enrollment token does not bring it back, while a newer one does.
#[test]
fn certificates_carry_the_granted_roles_renew_and_end_with_a_revocation() -> anyhow::Result<()> {
    let f = fixture()?;
    let station = PeerId::random();
    let roles = Roles {
        content_manager: true,
        ..Roles::default()
    };
    let enroll = f
        .server
        .issue_enroll_token(f.as_station(), station, roles, T0)?;
    let cert = f.server.enroll_station(&enroll, station, &[], T0)?;
    let check = |cert: &[u8], at| vodmesh_proto::member::verify(cert, &station, &f.trusted, at);
    let (_, member) = check(&cert, T0)?;
    assert_eq!(member.roles, roles);
    let renewed = f.server.renew(&cert, station, None, T0 + 1_000)?;
    assert!(check(&renewed, T0 + 1_000).unwrap().1.expires_ms > member.expires_ms);
    assert!(
        f.server.renew(&cert, PeerId::random(), None, T0).is_err(),
        "another peer's"
    );
    assert!(
        f.server.renew(&enroll, station, None, T0).is_err(),
        "not a certificate"
    );

    f.server.db().revoke(&station, T0 + 2_000)?;
    assert!(matches!(
        f.server.renew(&renewed, station, None, T0 + 3_000),
        Err(Error::Revoked(_))
    ));
    assert!(matches!(
        f.server.enroll_station(&enroll, station, &[], T0 + 3_000),
        Err(Error::Revoked(_))
    ));
    let again = f
        .server
        .issue_enroll_token(f.as_station(), station, roles, T0 + 4_000)?;
    let cert = f.server.enroll_station(&again, station, &[], T0 + 4_000)?;
    check(&cert, T0 + 4_000)?;
    f.server.renew(&cert, station, None, T0 + 5_000)?;
    Ok(())
}

/// An enrollment token enrolls once, and a restart of the auth server does not open it again;
/// the enrolled station renews its certificate (listing its engines again, as it does when it
/// restarts), and a new token from an admin enrolls it anew.
#[test]
fn an_enrollment_token_enrolls_once_and_the_station_renews() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let admin = PeerId::random();
    let config = || Config {
        hash: HashParams::INSECURE_FOR_TESTS,
        admins: vec![admin],
        ..Config::default()
    };
    let as_admin = Caller {
        peer: admin,
        token: None,
    };
    let station = PeerId::random();
    let (e1, e2) = (PeerId::random(), PeerId::random());
    let (enroll, cert) = {
        let server = Server::open(dir.path(), config())?;
        let enroll = server.issue_enroll_token(as_admin, station, Roles::default(), T0)?;
        let cert = server.enroll_station(&enroll, station, &[e1], T0)?;
        let again = server.enroll_station(&enroll, station, &[e1], T0 + 1);
        assert!(matches!(again, Err(Error::EnrollmentUsed)), "{again:?}");
        assert!(
            again
                .err()
                .is_some_and(|e| e.to_string().contains("already used")),
            "a clear error"
        );
        (enroll, cert)
    };
    let server = Server::open(dir.path(), config())?;
    let again = server.enroll_station(&enroll, station, &[e1, e2], T0 + 2);
    assert!(matches!(again, Err(Error::EnrollmentUsed)), "{again:?}");
    assert!(
        server.issue_engine_token(e2, T0 + 2).is_err(),
        "nothing written"
    );
    // The enrolled station renews, with its engines again: renewal is no enrollment.
    let renewed = server.renew(&cert, station, Some(&[e1, e2]), T0 + 3)?;
    let trusted: TrustedIssuers = [server.issuer_key()].into_iter().collect();
    vodmesh_proto::member::verify(&renewed, &station, &trusted, T0 + 3)?;
    server.issue_engine_token(e2, T0 + 3)?;
    assert_eq!(
        server.db().station(&station)?.and_then(|e| e.token),
        Some(Claims::peek(&enroll)?.id),
        "the enrollment still names its token"
    );
    // Control: a new token enrolls, once.
    let fresh = server.issue_enroll_token(as_admin, station, Roles::default(), T0 + 4)?;
    server.enroll_station(&fresh, station, &[e1], T0 + 4)?;
    assert!(server.db().enrollment_used(Claims::peek(&fresh)?.id)?);
    // Used tokens are forgotten once expired (refused as expired anyway).
    let other = PeerId::random();
    let late = T0 + 48 * 3_600_000;
    let third = server.issue_enroll_token(as_admin, other, Roles::default(), late)?;
    server.enroll_station(&third, other, &[], late)?;
    assert!(!server.db().enrollment_used(Claims::peek(&enroll)?.id)?);
    assert!(matches!(
        server.enroll_station(&enroll, station, &[], late),
        Err(Error::Token(TokenError::Expired))
    ));
    Ok(())
}

#[test]
fn only_admins_add_users() -> anyhow::Result<()> {
    let f = fixture()?;
    let user = || User {
        admin: false,
        rights: Rights::All,
    };
    let nobody = PeerId::random();
    let err = f
        .server
        .add_user(
            Caller {
                peer: nobody,
                token: None,
            },
            "eve",
            PASSWORD,
            user(),
            T0,
        )
        .unwrap_err();
    assert!(matches!(err, Error::NotAdmin));
    assert_eq!(
        err.to_string(),
        "not an admin: this needs an admin token or an admin peer id"
    );
    assert!(f.server.db().user("eve")?.is_none());

    // A subscriber's console token does not make an admin.
    f.add("frank", false, Rights::All)?;
    let console = f.server.login("frank", PASSWORD, nobody, T0)?;
    assert!(matches!(
        f.server.add_user(
            Caller {
                peer: nobody,
                token: Some(&console)
            },
            "eve",
            PASSWORD,
            user(),
            T0
        ),
        Err(Error::Token(TokenError::WrongAudience { .. }))
    ));
    // Nor does a right password of a non-admin user give an admin token.
    assert!(matches!(
        f.server.admin_login("frank", PASSWORD, nobody, T0),
        Err(Error::NotAdmin)
    ));

    // An admin user's admin token does, for the peer it was issued to only.
    f.add("root", true, Rights::All)?;
    let laptop = PeerId::random();
    let admin = f.server.admin_login("root", PASSWORD, laptop, T0)?;
    let as_laptop = Caller {
        peer: laptop,
        token: Some(&admin),
    };
    f.server.add_user(as_laptop, "eve", PASSWORD, user(), T0)?;
    assert!(matches!(
        f.server.add_user(
            Caller {
                peer: nobody,
                token: Some(&admin)
            },
            "mallory",
            PASSWORD,
            user(),
            T0
        ),
        Err(Error::Token(TokenError::WrongPeer))
    ));
    // Not after it expires.
    assert!(matches!(
        f.server
            .add_user(as_laptop, "late", PASSWORD, user(), T0 + 2 * 3_600_000),
        Err(Error::Token(TokenError::Expired))
    ));
    assert_eq!(f.server.metrics().admin_refused.load(Ordering::Relaxed), 5);

    // Admins still get clear refusals for bad input.
    assert!(matches!(
        f.server.add_user(as_laptop, "eve", PASSWORD, user(), T0),
        Err(Error::UserExists(_))
    ));
    assert!(matches!(
        f.server
            .add_user(as_laptop, "two words", PASSWORD, user(), T0),
        Err(Error::BadUserName(_))
    ));
    assert!(matches!(
        f.server.add_user(as_laptop, "gina", "short", user(), T0),
        Err(Error::BadPassword(_))
    ));
    f.server.login("eve", PASSWORD, PeerId::random(), T0)?;
    Ok(())
}

#[test]
fn admin_tokens_of_trusted_issuers_are_accepted() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let other = Issuer::generate();
    let server = Server::open(
        dir.path(),
        Config {
            hash: HashParams::INSECURE_FOR_TESTS,
            trust: vec![other.public()],
            ..Config::default()
        },
    )?;
    let peer = PeerId::random();
    let token = other.issue(peer, Audience::Admin, Rights::All, T0, T0 + 60_000)?;
    server.add_user(
        Caller {
            peer,
            token: Some(&token),
        },
        "hank",
        PASSWORD,
        User {
            admin: false,
            rights: Rights::All,
        },
        T0,
    )?;
    Ok(())
}

#[test]
fn state_survives_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let station = PeerId::random();
    let config = || Config {
        hash: HashParams::INSECURE_FOR_TESTS,
        admins: vec![station],
        ..Config::default()
    };
    let engine = PeerId::random();
    let issuer = {
        let server = Server::open(dir.path(), config())?;
        server.add_user(
            Caller {
                peer: station,
                token: None,
            },
            "ivy",
            PASSWORD,
            User {
                admin: false,
                rights: Rights::All,
            },
            T0,
        )?;
        server.enroll_own_station(station, &[engine], Roles::default(), T0)?;
        server.issuer_key()
    };
    let server = Server::open(dir.path(), config())?;
    assert_eq!(server.issuer_key(), issuer);
    let console = PeerId::random();
    let token = server.login("ivy", PASSWORD, console, T0)?;
    let trusted: TrustedIssuers = [issuer].into_iter().collect();
    trusted.verify(&token, T0, Audience::Console, None, &console)?;
    server.issue_engine_token(engine, T0)?;
    Ok(())
}

#[test]
fn strangers_guessing_never_lock_a_subscriber_out_of_her_own_console() -> anyhow::Result<()> {
    let f = fixture()?;
    f.add("alice", false, Rights::All)?;
    let own = PeerId::random();
    f.server.login("alice", PASSWORD, own, T0)?;

    // 30 wrong guesses, each from a fresh identity: her name is locked for newcomers...
    for i in 0..30 {
        let _ = f
            .server
            .login("alice", &format!("guess {i}"), PeerId::random(), T0 + i);
    }
    let newcomer = f.server.login("alice", PASSWORD, PeerId::random(), T0 + 30);
    assert!(
        matches!(newcomer, Err(Error::TooManyAttempts { .. })),
        "{newcomer:?}"
    );
    // ...but her own console logs in at once.
    let token = f.server.login("alice", PASSWORD, own, T0 + 30)?;
    f.trusted
        .verify(&token, T0 + 30, Audience::Console, None, &own)?;
    // Her console is held to its own backoff all the same.
    for i in 0..10 {
        let _ = f.server.login("alice", &format!("typo {i}"), own, T0 + 40);
    }
    let typos = f.server.login("alice", PASSWORD, own, T0 + 40);
    assert!(
        matches!(typos, Err(Error::TooManyAttempts { .. })),
        "{typos:?}"
    );
    Ok(())
}

#[test]
fn unknown_consoles_share_a_budget_that_known_ones_are_outside_of() -> anyhow::Result<()> {
    let f = fixture()?;
    f.add("alice", false, Rights::All)?;
    let own = PeerId::random();
    f.server.login("alice", PASSWORD, own, T0)?;
    let held: Vec<_> = (0..MAX_STRANGER_CHECKS)
        .map(|_| f.server.stranger_check())
        .collect::<Option<_>>()
        .ok_or_else(|| anyhow::anyhow!("the budget holds {MAX_STRANGER_CHECKS}"))?;
    let stranger = f.server.login("alice", PASSWORD, PeerId::random(), T0);
    assert!(matches!(stranger, Err(Error::Busy)), "{stranger:?}");
    f.server.login("alice", PASSWORD, own, T0)?;
    drop(held);
    f.server.login("alice", PASSWORD, PeerId::random(), T0)?;
    Ok(())
}

#[test]
fn disabled_and_removed_subscribers_neither_log_in_nor_refresh() -> anyhow::Result<()> {
    let f = fixture()?;
    let p1 = ProgramId([1; 32]);
    f.add("bob", false, Rights::All)?;
    let console = PeerId::random();
    let token = f.server.login("bob", PASSWORD, console, T0)?;
    let refreshed = f.server.refresh(&token, console, T0 + 1)?;
    assert_eq!(
        Claims::peek(&refreshed)?.user.as_deref(),
        Some("bob"),
        "a refreshed token still names its subscriber"
    );

    f.server.disable_user(f.as_station(), "bob", true, T0 + 2)?;
    let login = f.server.login("bob", PASSWORD, console, T0 + 3);
    assert!(matches!(login, Err(Error::Disabled(_))), "{login:?}");
    let refresh = f.server.refresh(&refreshed, console, T0 + 3);
    assert!(matches!(refresh, Err(Error::LogInAgain)), "{refresh:?}");

    // Enabled again: the next refresh is granted, with her rights.
    f.server
        .disable_user(f.as_station(), "bob", false, T0 + 4)?;
    let again = f.server.refresh(&refreshed, console, T0 + 5)?;
    f.trusted
        .verify(&again, T0 + 5, Audience::Console, Some(&p1), &console)?;

    f.server.remove_user(f.as_station(), "bob", T0 + 6)?;
    let refresh = f.server.refresh(&again, console, T0 + 7);
    assert!(matches!(refresh, Err(Error::LogInAgain)), "{refresh:?}");
    let login = f.server.login("bob", PASSWORD, console, T0 + 7);
    assert!(matches!(login, Err(Error::BadCredentials)), "{login:?}");

    // Only an admin may, and only for a subscriber that exists.
    let stranger = Caller {
        peer: PeerId::random(),
        token: None,
    };
    f.add("carol", false, Rights::All)?;
    let refused = f.server.disable_user(stranger, "carol", true, T0 + 8);
    assert!(matches!(refused, Err(Error::NotAdmin)), "{refused:?}");
    let missing = f.server.remove_user(f.as_station(), "nobody", T0 + 8);
    assert!(matches!(missing, Err(Error::NoSuchUser(_))), "{missing:?}");
    // A console token that names no subscriber (issued before tokens did) logs in again.
    let anonymous = f.server.issue(
        console,
        Audience::Console,
        Rights::All,
        Duration::from_secs(60),
        T0,
    )?;
    let refresh = f.server.refresh(&anonymous, console, T0 + 9);
    assert!(matches!(refresh, Err(Error::LogInAgain)), "{refresh:?}");
    Ok(())
}

#[test]
fn a_url_token_is_issued_for_a_logged_in_subscribers_program_only() -> anyhow::Result<()> {
    let f = fixture()?;
    let (p1, p2) = (ProgramId([1; 32]), ProgramId([2; 32]));
    f.add("alice", false, Rights::Programs(vec![p1]))?;
    let console = PeerId::random();
    let token = f.server.login("alice", PASSWORD, console, T0)?;
    let local: std::net::IpAddr = "127.0.0.1".parse()?;
    let url = (f.server).url_token(&token, console, (Some(p1), None), None, T0)?;
    let claims = f.trusted.verify_url(&url, T0, &p1, local)?;
    assert_eq!(claims.rights, Rights::Programs(vec![p1]));
    assert_eq!(claims.user.as_deref(), Some("alice"));
    // The server's limit caps what is asked, and a shorter life is granted as asked.
    assert_eq!(claims.expires_ms, T0 + 6 * 3_600_000);
    let long = Some(Duration::from_secs(30 * 24 * 3600));
    let capped = (f.server).url_token(&token, console, (Some(p1), None), long, T0)?;
    assert_eq!(Claims::peek(&capped)?.expires_ms, T0 + 6 * 3_600_000);
    let short = Some(Duration::from_secs(60));
    let brief = (f.server).url_token(&token, console, (Some(p1), None), short, T0)?;
    assert_eq!(Claims::peek(&brief)?.expires_ms, T0 + 60_000);
    // Not for a program she may not watch; not for a console token someone else presents.
    assert!(matches!(
        f.server
            .url_token(&token, console, (Some(p2), None), None, T0),
        Err(Error::Token(TokenError::NotEntitled))
    ));
    assert!(matches!(
        (f.server).url_token(&token, PeerId::random(), (Some(p1), None), None, T0),
        Err(Error::Token(TokenError::WrongPeer))
    ));
    // A URL token buys no other: it is no console token.
    assert!(matches!(
        f.server
            .url_token(&url, console, (Some(p1), None), None, T0),
        Err(Error::Token(TokenError::WrongAudience { .. }))
    ));
    // Bound to an address prefix when asked.
    let prefix: AddrPrefix = "10.0.0.0/8".parse()?;
    let bound = (f.server).url_token(&token, console, (Some(p1), Some(prefix)), None, T0)?;
    assert!(
        f.trusted
            .verify_url(&bound, T0, &p1, "10.2.3.4".parse()?)
            .is_ok()
    );
    assert!(matches!(
        f.trusted.verify_url(&bound, T0, &p1, local),
        Err(TokenError::WrongAddress)
    ));
    // Disabled: no more URL tokens, as no more refreshes.
    f.server.disable_user(f.as_station(), "alice", true, T0)?;
    assert!(matches!(
        f.server
            .url_token(&token, console, (Some(p1), None), None, T0),
        Err(Error::LogInAgain)
    ));
    Ok(())
}
