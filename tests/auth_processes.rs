//! The auth server over the network, as real processes driven through the command-line
//! contract: `vodmesh-node --auth`, `vodmesh user add`, `vodmesh enroll`, `vodmesh-node
//! --enroll`, `vodmesh-console login`.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use libp2p::PeerId;
use vodmesh_node::nodefile::NodeFile;
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::{Audience, IssuerKey, TokenError, TrustedIssuers};
use vodmesh_tests::{NodeProcess, bin, vodmesh};

const PASSWORD: &str = "correct horse battery";

/// Runs a workspace binary with `VODMESH_HOME=home`.
fn run(name: &str, home: &Path, args: &[&str]) -> Result<Output> {
    Ok(Command::new(bin(name))
        .env("VODMESH_HOME", home)
        .args(args)
        .output()?)
}

/// The one line a refused command printed; fails if it succeeded or printed more.
fn refusal(out: &Output) -> Result<String> {
    if out.status.success() {
        bail!(
            "expected a refusal, got success: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let lines: Vec<&str> = stderr.lines().collect();
    if lines.len() != 1 || !lines[0].starts_with("error: ") {
        bail!("expected one `error: ` line, got: {stderr:?}");
    }
    Ok(lines[0].to_string())
}

fn issuer_of(node: &NodeProcess) -> Result<IssuerKey> {
    let file = NodeFile::read(&node.data)?;
    let issuer = file
        .issuer
        .context("no issuer in node.json of an --auth station")?;
    Ok(issuer.parse()?)
}

fn wait_for_log(data: &Path, needle: &str, timeout: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let log = std::fs::read_to_string(data.join("stderr.log")).unwrap_or_default();
        if log.contains(needle) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "`{needle}` not in {} after {timeout:?}:\n{log}",
                data.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn login(home: &Path, node: &str, password_file: &Path) -> Result<Output> {
    run(
        "vodmesh-console",
        home,
        &[
            "login",
            "--node",
            node,
            "--user",
            "alice",
            "--password-file",
            &password_file.display().to_string(),
        ],
    )
}

#[test]
fn login_user_add_and_brute_force_over_the_network() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let auth = NodeProcess::start(&dir.path().join("auth"), &["--auth"])?;
    let issuer = issuer_of(&auth)?;
    let auth_addr = auth.addr.to_string();
    let trusted: TrustedIssuers = [issuer].into_iter().collect();

    // A station with no --trust joins but says it will serve nothing.
    let plain = NodeProcess::start(&dir.path().join("plain"), &["--bootstrap", &auth_addr])?;
    wait_for_log(
        &plain.data,
        "will serve no stream and no copy",
        Duration::from_secs(10),
    )?;
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
    vodmesh(&["keygen", "--out", &stranger.display().to_string()])?;
    let out = run(
        "vodmesh",
        dir.path(),
        &[
            "user",
            "add",
            "--node",
            &auth_addr,
            "--key",
            &stranger.display().to_string(),
            "alice",
            "--password-file",
            &pw.display().to_string(),
        ],
    )?;
    assert_eq!(
        refusal(&out)?,
        "error: not an admin: this needs an admin token or an admin peer id"
    );
    // With the auth station's own key (through another station's address): accepted.
    let station_key = auth.data.join("identity.key").display().to_string();
    vodmesh(&[
        "user",
        "add",
        "--node",
        &plain.addr.to_string(),
        "--key",
        &station_key,
        "alice",
        "--password-file",
        &pw.display().to_string(),
    ])?;

    // Login through the station that is not the auth server: found through the swarm.
    let home = dir.path().join("console");
    let out = login(&home, &plain.addr.to_string(), &pw)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    std::thread::sleep(Duration::from_millis(1100));
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
    let out = login(&home, &auth_addr, &bad)?;
    assert_eq!(refusal(&out)?, "error: wrong user name or password");

    // Brute force: the server slows the guesser down...
    let mut wrong = 1;
    let mut throttled = None;
    for _ in 0..15 {
        let line = refusal(&login(&home, &auth_addr, &bad)?)?;
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
    wait_for_log(&auth.data, "too many attempts", Duration::from_secs(5))?;
    // ...and the right password still works once the backoff has passed.
    let mut wait = wait;
    let mut ok = false;
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(wait * 1000 + 300));
        let out = login(&home, &auth_addr, &pw)?;
        if out.status.success() {
            ok = true;
            break;
        }
        let line = refusal(&out)?;
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
    let auth_addr = auth.addr.to_string();
    let station_key = auth.data.join("identity.key").display().to_string();

    // The auth station enrolls its own engine.
    let own = NodeFile::read(&auth.data)?;
    wait_engine_token(&auth.data, 0, own.engines[0].peer_id, &trusted)?;

    // A new station: its identity first, then an enrollment token for it.
    let new_dir = dir.path().join("new");
    let new_peer: PeerId = vodmesh(&[
        "keygen",
        "--out",
        &new_dir.join("identity.key").display().to_string(),
    ])?
    .trim()
    .parse()?;
    let token_file = dir.path().join("enroll.token").display().to_string();
    let stranger = dir.path().join("stranger.key");
    vodmesh(&["keygen", "--out", &stranger.display().to_string()])?;
    let out = run(
        "vodmesh",
        dir.path(),
        &[
            "enroll",
            "--node",
            &auth_addr,
            "--key",
            &stranger.display().to_string(),
            "--station",
            &new_peer.to_string(),
            "--out",
            &token_file,
        ],
    )?;
    assert!(refusal(&out)?.starts_with("error: not an admin"));
    vodmesh(&[
        "enroll",
        "--node",
        &auth_addr,
        "--key",
        &station_key,
        "--station",
        &new_peer.to_string(),
        "--out",
        &token_file,
    ])?;

    let trust = issuer.to_string();
    let new = NodeProcess::start(
        &new_dir,
        &[
            "--bootstrap",
            &auth_addr,
            "--trust",
            &trust,
            "--enroll",
            &token_file,
            "--engines",
            "2",
        ],
    )?;
    let file = NodeFile::read(&new.data)?;
    assert_eq!(file.director.peer_id, new_peer);
    assert_eq!(file.issuer, None, "only the auth station names an issuer");
    for (i, engine) in file.engines.iter().enumerate() {
        wait_engine_token(&new.data, i, engine.peer_id, &trusted)?;
    }

    // The same token presented by another station is refused: it names its subject.
    let thief = NodeProcess::start(
        &dir.path().join("thief"),
        &[
            "--bootstrap",
            &auth_addr,
            "--trust",
            &trust,
            "--enroll",
            &token_file,
        ],
    )?;
    wait_for_log(&thief.data, "enrollment refused", Duration::from_secs(20))?;
    wait_for_log(
        &thief.data,
        "token belongs to another peer",
        Duration::from_secs(1),
    )?;
    assert!(!thief.data.join("engines/0/engine.token").exists());
    Ok(())
}

/// Waits for `DATA/engines/<index>/engine.token` and checks it is an engine token for `engine`.
fn wait_engine_token(
    data: &Path,
    index: usize,
    engine: PeerId,
    trusted: &TrustedIssuers,
) -> Result<()> {
    let path = data
        .join("engines")
        .join(index.to_string())
        .join("engine.token");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        if std::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(data.join("stderr.log")).unwrap_or_default();
            bail!("no engine token at {} after 30 s:\n{log}", path.display());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let token = std::fs::read(&path)?;
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
