//! An uninvited station (issue 19), through real processes: a `vodmesh-node --auth
//! --content-manager --home` that was never enrolled, whose peer id sorts before every
//! member's (so that a walk of the swarm would meet it first), joins by bootstrap and copies
//! the members' `--trust`. It gets nothing: a console logging in through a member never
//! reaches it, a title it ingested too plays the real bytes, its other programs are not
//! listed nor played (the console refuses a manifest its pinned issuer did not certify the
//! signer of), and its `--replicas 2` ingest leaves the members' stores as they were. Once an
//! admin enrolls it, it is a member like any other: listed, and it fills a miss from the home.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use libp2p::PeerId;
use vodmesh_proto::token::{Audience, Claims};
use vodmesh_tests::cli::{self, Ingest, Play, subscriber};
use vodmesh_tests::media::random_file;
use vodmesh_tests::process::Node;
use vodmesh_tests::{status, wait};

const KIB: usize = 1024;

/// Writes to `dir/identity.key` an identity whose peer id sorts before every one of `others`;
/// returns it. The keys are made in this process, as many as it takes: the chance of one
/// sorting first is the smallest of the others' places among all ids, which for two members
/// is under 1 % in about one run in fifty (64 tries of `vodmesh keygen` failed one full suite).
fn identity_sorting_first(dir: &std::path::Path, others: &[String]) -> Result<PeerId> {
    std::fs::create_dir_all(dir)?;
    let others: Vec<PeerId> = others.iter().map(|p| p.parse()).collect::<Result<_, _>>()?;
    for _ in 0..10_000_000 {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let peer = key.public().to_peer_id();
        if others.iter().all(|o| peer < *o) {
            vodmesh_client::identity::save(&dir.join("identity.key"), &key)?;
            return Ok(peer);
        }
    }
    bail!("no identity sorting first in ten million tries")
}

#[test]
fn an_uninvited_station_gets_nothing_until_an_admin_enrolls_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let home = Node::new(&dir.path().join("home")).home().ttl(5).start()?;
    let member = Node::new(&dir.path().join("member"))
        .enrolled_with(&home)?
        .ttl(5)
        .start()?;
    let issuer = home.issuer()?;
    let rogue_dir = dir.path().join("rogue");
    let rogue_peer = identity_sorting_first(&rogue_dir, &[home.peer(), member.peer()])?;
    let rogue = Node::new(&rogue_dir)
        .home()
        .trust(&issuer)
        .bootstrap(&member.addr)
        .ttl(5)
        .start()?;
    // The rogue sees the members (it trusts their issuer), so it does take part.
    wait::blocking(
        "the rogue to see the members",
        Duration::from_secs(30),
        || {
            let seen = status::directors(&rogue.addr)?;
            Ok(seen.contains(&home.peer()) && seen.contains(&member.peer()))
        },
    )?;

    // A console logs in through the member: its token is the home's, not the rogue's.
    let viewer = dir.path().join("viewer");
    subscriber(&member.addr, &home.key(), &viewer, "ida")?;
    let token =
        std::fs::read(viewer.join("tokens").join("console.token")).context("the console token")?;
    let claims = Claims::peek(&token)?;
    assert_eq!(claims.audience, Audience::Console);
    assert_eq!(claims.issuer.to_string(), issuer);
    // It pinned the home's issuer: through the rogue (which names itself as the auth server),
    // the next login is refused before the password leaves the console.
    let password = viewer.join("password");
    let line = cli::refusal(&mut cli::login(
        None,
        &viewer,
        &rogue.addr,
        "ida",
        &password,
    ))?;
    assert!(
        line.contains("the issuer this console trusts") && line.contains(&issuer),
        "{line}"
    );
    // `vodmesh status` through the member: the two members, each with its certified roles.
    let json = status::json_in(None, &member.addr)?;
    let stations = json["stations"].as_array().context("no stations")?;
    let mut roles: Vec<(&str, &str)> = stations
        .iter()
        .map(|s| {
            let m = &s["membership"];
            assert_eq!(m["member"], true, "{s}");
            let peer = s["director"]["peer_id"].as_str().unwrap_or_default();
            (peer, m["roles"].as_str().unwrap_or_default())
        })
        .collect();
    roles.sort();
    let mut wanted = [
        (home.peer(), "auth,content-manager,home"),
        (member.peer(), "-"),
    ];
    wanted.sort();
    let wanted: Vec<(&str, &str)> = wanted.iter().map(|(p, r)| (p.as_str(), *r)).collect();
    assert_eq!(roles, wanted, "{json}");

    // The same title at the home and at the rogue (other bytes), and a program only the
    // rogue has, which it wants on two more stations.
    let real = dir.path().join("real.bin");
    let real_bytes = random_file(&real, 3 * 256 * KIB, 91)?;
    let fake = dir.path().join("fake.bin");
    random_file(&fake, 3 * 256 * KIB, 92)?;
    let program = Ingest::new(&home.addr, &home.key(), "news", &real)
        .publish_now()
        .segment_size(256 * KIB)
        .replicas(0)
        .run()?;
    let fake_program = Ingest::new(&rogue.addr, &rogue.key(), "news", &fake)
        .publish_now()
        .segment_size(256 * KIB)
        .run()?;
    let rogue_only = Ingest::new(&rogue.addr, &rogue.key(), "rogue only", &fake)
        .publish_now()
        .segment_size(128 * KIB)
        .replicas(2)
        .run()?;
    rogue.wait_log("replicate refused", Duration::from_secs(30))?;
    // Both members refused the rogue's replicas: their engines hold the home's program
    // (the home) and nothing (the member).
    let held = |addr| -> Result<u64> { Ok(status::used_bytes(addr)?.iter().sum()) };
    assert_eq!(held(&member.addr)?, 0);
    assert_eq!(held(&home.addr)?, real_bytes.len() as u64);

    // Through the member: only the home's program is listed, and the title plays its bytes.
    let listed = status::programs(&member.addr, None)?;
    assert_eq!(listed, vec![program.clone()], "{listed:?}");
    assert!(!listed.contains(&fake_program) && !listed.contains(&rogue_only));
    let played = Play::new(&viewer, &member.addr, "news").run()?;
    assert!(played.bytes == real_bytes, "the title played other bytes");
    // Through the rogue itself, by id: it serves its program, but its manifest is signed by
    // a content manager the pinned issuer never certified, and the console refuses it.
    let line = cli::refusal(&mut Play::new(&viewer, &rogue.addr, &rogue_only).command())?;
    assert!(
        line.contains("not a content manager certified by") && line.contains(&issuer),
        "{line}"
    );

    // An admin enrolls the same identity: it restarts as a member (its own auth server and
    // catalog set aside), is listed, and fills a miss from the home.
    drop(rogue);
    let token = rogue_dir.join("enroll.token");
    cli::run(&mut cli::enroll(
        None,
        &home.addr,
        &home.key(),
        &rogue_peer.to_string(),
        &token,
    ))?;
    let enrolled = Node::new(&rogue_dir)
        .trust(&issuer)
        .bootstrap(&member.addr)
        .args(&["--enroll", &token.to_string_lossy()])
        .ttl(5)
        .start()?;
    wait::blocking(
        "the enrolled station in the swarm",
        Duration::from_secs(30),
        || Ok(status::directors(&member.addr)?.contains(&rogue_peer.to_string())),
    )?;
    let played = Play::new(&viewer, &enrolled.addr, &program).run()?;
    assert!(played.bytes == real_bytes, "played bytes differ");
    assert_eq!(
        played.stats["stations"],
        serde_json::json!([rogue_peer.to_string()]),
        "the enrolled station served the program itself: {}",
        played.stats
    );
    Ok(())
}
