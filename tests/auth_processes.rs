//! The auth server over the network, as real processes driven through the command-line
//! contract: `vodmesh-node --auth`, `vodmesh user add`, `vodmesh enroll`, `vodmesh-node
//! --enroll`, `vodmesh-console login`.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use libp2p::PeerId;
use vodmesh_node::nodefile::NodeFile;
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::{Audience, IssuerKey, TokenError, TrustedIssuers};
use vodmesh_tests::cli::{
    bin, command_in, enroll, keygen, login, refusal, refusal_of, run, user_add,
};
use vodmesh_tests::process::{Node, NodeProcess};
use vodmesh_tests::wait;

const PASSWORD: &str = "correct horse battery";

fn issuer_of(node: &NodeProcess) -> Result<IssuerKey> {
    Ok(node.issuer()?.parse()?)
}

/// `vodmesh-console login` as alice, from the console under `home`.
fn alice(home: &Path, node: &NodeProcess, password: &Path) -> std::process::Command {
    login(None, home, &node.addr, "alice", password)
}

#[test]
fn login_user_add_and_brute_force_over_the_network() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let auth = NodeProcess::start(&dir.path().join("auth"), &["--auth"])?;
    let issuer = issuer_of(&auth)?;
    let trusted: TrustedIssuers = [issuer].into_iter().collect();

    // A station with no --trust joins but says it will serve nothing.
    let plain = Node::new(&dir.path().join("plain"))
        .bootstrap(&auth.addr)
        .start()?;
    plain.wait_log("will serve no stream and no copy", Duration::from_secs(10))?;
    let auth_log = std::fs::read_to_string(auth.data.join("stderr.log"))?;
    assert!(
        !auth_log.contains("serve no stream"),
        "an --auth station trusts itself"
    );

    let pw = dir.path().join("pw");
    std::fs::write(&pw, format!("{PASSWORD}\n"))?;
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "not the password\n")?;

    // `vodmesh user add` with a key that is no admin: refused, one line.
    let stranger = dir.path().join("stranger.key");
    keygen(None, &stranger)?;
    assert_eq!(
        refusal(&mut user_add(None, &auth.addr, &stranger, "alice", &pw))?,
        "error: not an admin: this needs an admin token or an admin peer id"
    );
    // With the auth station's own key (through another station's address): accepted.
    run(&mut user_add(None, &plain.addr, &auth.key(), "alice", &pw))?;

    // Login through the station that is not the auth server: found through the swarm.
    let home = dir.path().join("console");
    run(&mut alice(&home, &plain, &pw))?;
    let token = std::fs::read(home.join("tokens/console.token"))?;
    let console = vodmesh_node::identity::load(&home.join("identity.key"))?
        .public()
        .to_peer_id();
    let claims = trusted.verify(&token, now_ms(), Audience::Console, None, &console)?;
    assert_eq!(claims.subject, console);
    assert_eq!(claims.issuer, issuer);
    // Bound to the console: worthless from any other peer.
    assert!(matches!(
        trusted.verify(&token, now_ms(), Audience::Console, None, &PeerId::random()),
        Err(TokenError::WrongPeer)
    ));
    // Refreshed over the network by its own console (what playback does at half-life); the
    // same token from another identity is refused.
    let key = vodmesh_node::identity::load(&home.join("identity.key"))?;
    let rt = tokio::runtime::Runtime::new()?;
    // A refreshed token expires later than the old one once the clock (the server's is the
    // test's: the same machine) has moved past the old one's issue.
    let issued = claims.not_before_ms;
    wait::blocking(
        "the clock to pass the token's issue",
        Duration::from_secs(5),
        || Ok(now_ms() > issued),
    )?;
    let fresh = rt.block_on(vodmesh_client::auth::refresh(&plain.addr, &key, &token))?;
    let renewed = trusted.verify(&fresh, now_ms(), Audience::Console, None, &console)?;
    assert!(renewed.expires_ms > claims.expires_ms);
    let stranger = libp2p::identity::Keypair::generate_ed25519();
    assert!(
        rt.block_on(vodmesh_client::auth::refresh(
            &plain.addr,
            &stranger,
            &token
        ))
        .is_err()
    );

    // A wrong password: one line.
    assert_eq!(
        refusal(&mut alice(&home, &auth, &bad))?,
        "error: wrong user name or password"
    );

    // Brute force: the server slows the guesser down...
    let mut wrong = 1;
    let mut throttled = None;
    for _ in 0..15 {
        let line = refusal(&mut alice(&home, &auth, &bad))?;
        if let Some(rest) = line.strip_prefix("error: too many attempts, retry in ") {
            throttled = Some(rest.trim_end_matches('s').parse::<u64>()?);
            break;
        }
        assert_eq!(line, "error: wrong user name or password");
        wrong += 1;
    }
    let wait = throttled.context("repeated wrong passwords were never throttled")?;
    // ...counts every failure and every throttled attempt (which costs it no hash)...
    let log = std::fs::read_to_string(auth.data.join("stderr.log"))?;
    assert!(wrong >= 5, "throttled after only {wrong} failures");
    assert_eq!(
        log.matches("login failed").count(),
        wrong,
        "failures not counted:\n{log}"
    );
    auth.wait_log("too many attempts", Duration::from_secs(5))?;
    // ...and the right password still works once the backoff has passed.
    let mut wait = wait;
    let mut ok = false;
    for _ in 0..3 {
        // Part of what is tested: the guesser waits the time the server named (a login
        // while throttled counts as an attempt and would prolong the backoff).
        std::thread::sleep(Duration::from_millis(wait * 1000 + 300));
        let out = alice(&home, &auth, &pw).output()?;
        if out.status.success() {
            ok = true;
            break;
        }
        let line = refusal_of(&out)?;
        let rest = line
            .strip_prefix("error: too many attempts, retry in ")
            .with_context(|| format!("right password refused: {line}"))?;
        wait = rest.trim_end_matches('s').parse()?;
    }
    assert!(ok, "the right password never got through after the backoff");
    Ok(())
}

#[test]
fn enrollment_gives_engines_tokens() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let auth = NodeProcess::start(&dir.path().join("auth"), &["--auth"])?;
    let issuer = issuer_of(&auth)?;
    let trusted: TrustedIssuers = [issuer].into_iter().collect();

    // The auth station enrolls its own engine.
    let own = NodeFile::read(&auth.data)?;
    check_engine_token(&auth, 0, own.engines[0].peer_id, &trusted)?;

    // A new station: its identity first, then an enrollment token for it.
    let new_dir = dir.path().join("new");
    let new_peer: PeerId = keygen(None, &new_dir.join("identity.key"))?.parse()?;
    let token_file = dir.path().join("enroll.token");
    let stranger = dir.path().join("stranger.key");
    keygen(None, &stranger)?;
    let by_stranger = &mut enroll(
        None,
        &auth.addr,
        &stranger,
        &new_peer.to_string(),
        &token_file,
    );
    assert!(refusal(by_stranger)?.starts_with("error: not an admin"));
    let by_admin = || {
        enroll(
            None,
            &auth.addr,
            &auth.key(),
            &new_peer.to_string(),
            &token_file,
        )
    };
    run(&mut by_admin())?;
    // The file is never overwritten: a second token into it is refused, the first is kept.
    let first = std::fs::read(&token_file)?;
    let again = refusal(&mut by_admin())?;
    assert!(again.contains("exists already"), "{again}");
    assert_eq!(std::fs::read(&token_file)?, first);

    let trust = issuer.to_string();
    let token = token_file.to_string_lossy();
    let new = Node::new(&new_dir)
        .bootstrap(&auth.addr)
        .trust(&trust)
        .args(&["--enroll", &token])
        .engines(2)
        .start()?;
    let file = NodeFile::read(&new.data)?;
    assert_eq!(file.director.peer_id, new_peer);
    assert_eq!(file.issuer, None, "only the auth station names an issuer");
    for (i, engine) in file.engines.iter().enumerate() {
        check_engine_token(&new, i, engine.peer_id, &trusted)?;
    }

    // Its certificate makes it a member (issue 19).
    new.wait_log("a member", Duration::from_secs(20))?;

    // The same token presented by another station: it names its subject, so that station
    // refuses to start, with one line that says what to do.
    let thief = dir.path().join("thief");
    let thief_peer = keygen(None, &thief.join("identity.key"))?;
    let line = refusal(
        command_in(None, "vodmesh-node")
            .arg("--data")
            .arg(&thief)
            .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--trust", &trust])
            .args(["--bootstrap", &auth.addr.to_string(), "--enroll", &token]),
    )?;
    assert!(
        line.starts_with("error: starting the station: enrollment token")
            && line.contains(&thief_peer),
        "{line}"
    );
    assert!(line.contains("vodmesh enroll --station"), "{line}");
    assert!(!thief.join("engines/0/engine.token").exists());
    Ok(())
}

/// An enrollment token enrolls once: the same station identity presenting it again from a
/// fresh data directory is refused with a clear line and that station stops, while the station restarted on its own
/// data directory with the same `--enroll FILE` renews its certificate and is a member again,
/// its engines holding tokens (issue 20).
#[test]
fn an_enrollment_token_enrolls_once_and_a_restart_renews() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let auth = NodeProcess::start(&dir.path().join("auth"), &["--auth"])?;
    let issuer = issuer_of(&auth)?;
    let trusted: TrustedIssuers = [issuer].into_iter().collect();
    let trust = issuer.to_string();
    let new_dir = dir.path().join("new");
    let token_file =
        vodmesh_tests::cli::enroll_new_station(None, &auth.addr, &auth.key(), &new_dir, &[])?;
    let token = token_file.to_string_lossy();
    let station = |data: &Path| {
        Node::new(data)
            .bootstrap(&auth.addr)
            .trust(&trust)
            .args(&["--enroll", &token])
    };
    let new = station(&new_dir).start()?;
    new.wait_log("a member", Duration::from_secs(20))?;
    let engine = NodeFile::read(&new.data)?.engines[0].peer_id;
    check_engine_token(&new, 0, engine, &trusted)?;
    let new = new.crash()?;

    // The same identity and token from a data directory that never enrolled: refused.
    let copy_dir = dir.path().join("copy");
    std::fs::create_dir_all(&copy_dir)?;
    std::fs::copy(new_dir.join("identity.key"), copy_dir.join("identity.key"))?;
    // It stops by itself, not zero, its last line the reason (before, it ran on as a
    // station that was no member and never would be).
    let mut copy = station(&copy_dir).start()?;
    copy.wait_log("enrollment refused", Duration::from_secs(20))?;
    assert!(!copy.wait_exit(Duration::from_secs(30))?, "exited 0");
    let last = copy.log().lines().last().unwrap_or_default().to_string();
    assert!(
        last.starts_with("error: enrollment refused: this enrollment token was already used"),
        "{}",
        copy.log()
    );
    assert!(!copy.log().contains("a member"), "{}", copy.log());

    // The station restarted on its data: a renewal, not a refusal.
    std::fs::remove_file(new_dir.join("engines/0/engine.token"))?;
    let new = new.start()?;
    new.wait_log("a member", Duration::from_secs(20))?;
    assert!(!new.log().contains("enrollment refused"), "{}", new.log());
    check_engine_token(&new, 0, engine, &trusted)?;
    Ok(())
}

/// Waits for engine `index` of `station` to hold its token and checks it is an engine token
/// for `engine`.
fn check_engine_token(
    station: &NodeProcess,
    index: usize,
    engine: PeerId,
    trusted: &TrustedIssuers,
) -> Result<()> {
    let token = std::fs::read(station.wait_engine_token(index)?)?;
    let claims = trusted.verify(&token, now_ms(), Audience::Engine, None, &engine)?;
    assert_eq!(claims.subject, engine);
    // An engine token is no console token.
    assert!(
        trusted
            .verify(&token, now_ms(), Audience::Console, None, &engine)
            .is_err()
    );
    Ok(())
}

/// `vodmesh user disable|enable|remove NAME` as the auth station's admin.
fn user(auth: &NodeProcess, verb: &str, name: &str) -> std::process::Command {
    let mut command = std::process::Command::new(bin("vodmesh"));
    command
        .args(["user", verb, "--node", &auth.addr.to_string(), "--key"])
        .arg(auth.key())
        .arg(name);
    command
}

#[test]
fn strangers_never_lock_a_subscriber_out_and_admins_disable_and_remove() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let auth = NodeProcess::start(&dir.path().join("auth"), &["--auth"])?;
    let pw = dir.path().join("pw");
    std::fs::write(&pw, format!("{PASSWORD}\n"))?;
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "not the password\n")?;
    run(&mut user_add(None, &auth.addr, &auth.key(), "alice", &pw))?;
    let own = dir.path().join("own");
    run(&mut alice(&own, &auth, &pw))?;

    // 30 wrong guesses, each from a console of its own (a fresh identity): her name is locked
    // to newcomers, even with the right password...
    for i in 0..30 {
        let line = refusal(&mut alice(
            &dir.path().join(format!("guess{i}")),
            &auth,
            &bad,
        ))?;
        assert!(line.starts_with("error: "), "{line}");
    }
    let newcomer = refusal(&mut alice(&dir.path().join("newcomer"), &auth, &pw))?;
    assert!(newcomer.contains("too many attempts"), "{newcomer}");
    // ...but not to the console she logged in from before: at once.
    run(&mut alice(&own, &auth, &pw))?;

    // Disabled: no login, not even from her own console; enabled again: she logs in.
    assert_eq!(
        run(&mut user(&auth, "disable", "alice"))?.trim(),
        "user alice disabled"
    );
    let refused = refusal(&mut alice(&own, &auth, &pw))?;
    assert!(refused.contains("alice is disabled"), "{refused}");
    run(&mut user(&auth, "enable", "alice"))?;
    run(&mut alice(&own, &auth, &pw))?;
    // Removed: her name is unknown (and still locked by the guesses: no console of hers is
    // known any more).
    run(&mut user(&auth, "remove", "alice"))?;
    let removed = refusal(&mut alice(&own, &auth, &pw))?;
    assert!(
        removed == "error: wrong user name or password" || removed.contains("too many attempts"),
        "{removed}"
    );
    assert_eq!(
        refusal(&mut user(&auth, "remove", "alice"))?,
        "error: no user alice"
    );
    Ok(())
}

/// A second process on a running station's data directory is refused before it touches
/// anything, naming the first one's pid. A station whose identity, engine identity or issuer
/// key is gone is not given new ones (it would come back a stranger, and the auth server's
/// tokens and certificates would all stop verifying): it refuses to start, naming the file to
/// restore, and writes none. With the file back it starts as the same station, same issuer.
/// A database that does not open is named by its path. Started with fewer `--engines` than
/// ran, it names the engine it would leave out.
#[test]
fn a_station_whose_data_is_in_use_or_lost_a_key_refuses_to_start() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("auth");
    let one_engine = Node::new(&data).args(&["--auth"]);
    let node = one_engine.clone().engines(2);
    let auth = node.clone().start()?;
    let (peer, issuer) = (auth.peer(), auth.issuer()?);
    let written = std::fs::read(data.join("node.json"))?;
    let line = node.refused()?;
    let held = format!("is in use by another process (pid {})", auth.pid());
    assert!(line.contains(&held), "{line}");
    assert_eq!(std::fs::read(data.join("node.json"))?, written);
    let node = auth.crash()?;
    let kept = dir.path().join("kept.key");
    for file in ["identity.key", "issuer.key", "engines/0/identity.key"] {
        std::fs::rename(data.join(file), &kept)?;
        let line = node.refused()?;
        assert!(
            line.contains(file) && line.contains("missing") && line.contains("is there"),
            "{line}"
        );
        assert!(!data.join(file).exists(), "{file} was made anew");
        std::fs::rename(&kept, data.join(file))?;
    }
    let again = node.start()?;
    assert_eq!(again.peer(), peer);
    assert_eq!(again.issuer()?, issuer);
    // A database that does not open is named in the line (its path), each of them.
    let node = again.crash()?;
    for file in ["locations.redb", "auth.redb", "engines/0/store.redb"] {
        let path = data.join(file);
        let kept = std::fs::read(&path)?;
        std::fs::write(&path, b"not a database")?;
        let line = node.failed()?;
        assert!(line.contains(&path.display().to_string()), "{line}");
        std::fs::write(&path, kept)?;
    }
    // Fewer engines than ran: the one left out (and its segments) is named, not dropped.
    let line = one_engine.refused()?;
    assert!(
        line.contains("holds engine(s) 1 that --engines 1 leaves out")
            && line.contains("start with --engines 2"),
        "{line}"
    );
    Ok(())
}
