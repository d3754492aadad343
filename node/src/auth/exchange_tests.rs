//! Token exchanges (`Refresh`, `UrlToken`) held per peer to [`limit::Rate::EXCHANGES`], on a
//! simulated clock (`now_ms` is an argument).

use super::*;

const T0: u64 = 1_700_000_000_000;
const PASSWORD: &str = "correct horse battery";

/// A console asking in a loop is refused past its burst, for refreshes and URL tokens alike,
/// before anything is checked; controls: another console of the same subscriber is served at
/// that moment, and the first is served again once a request's worth of time has passed.
#[test]
fn a_console_exchanging_tokens_in_a_loop_is_refused_past_its_rate() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let admin = PeerId::random();
    let config = Config {
        hash: HashParams::INSECURE_FOR_TESTS,
        admins: vec![admin],
        ..Config::default()
    };
    let server = Server::open(dir.path(), config)?;
    let caller = Caller {
        peer: admin,
        token: None,
    };
    let user = User {
        admin: false,
        rights: Rights::All,
    };
    server.add_user(caller, "alice", PASSWORD, user, T0)?;
    let (looping, other) = (PeerId::random(), PeerId::random());
    let token = server.login("alice", PASSWORD, looping, T0)?;
    let program = ProgramId([3; 32]);
    let url = |at| server.url_token(&token, looping, (Some(program), None), None, at);

    let limit::Rate { burst, every_ms } = limit::Rate::EXCHANGES;
    for _ in 0..burst - 1 {
        server.refresh(&token, looping, T0)?;
    }
    url(T0)?;
    let refused = server.refresh(&token, looping, T0);
    assert!(
        matches!(refused, Err(Error::TooManyRequests { retry_in_s: 6 })),
        "{refused:?}"
    );
    assert!(matches!(url(T0), Err(Error::TooManyRequests { .. })));
    // Refused before the token is looked at: a junk token gets the same answer.
    let junk = server.refresh(b"junk", looping, T0);
    assert!(matches!(junk, Err(Error::TooManyRequests { .. })));

    let theirs = server.login("alice", PASSWORD, other, T0)?;
    server.refresh(&theirs, other, T0)?;
    server.refresh(&token, looping, T0 + every_ms)?;
    assert!(server.refresh(&token, looping, T0 + every_ms).is_err());
    Ok(())
}
