//! Closed membership on the wire (issue 19): what a peer that was never enrolled sends a
//! director is refused, and the same thing from a certified member is taken (each refusal has
//! its control case).
//!
//! The home station (auth, content manager, home) certifies itself; a member is a key with a
//! certificate from the home's issuer, whose station record the home has received. The
//! stranger is a key that put an uncertified record, or none at all.

use std::time::Duration;

use libp2p::PeerId;
use libp2p::identity::Keypair;
use vodmesh_client::DirectorClient;
use vodmesh_client::director::DirectorError;
use vodmesh_proto::director::{Request, Response};
use vodmesh_proto::member::NOT_A_MEMBER;
use vodmesh_proto::station::Roles;
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::Issuer;
use vodmesh_proto::{ProgramId, signed::Signed};
use vodmesh_registry::RecordKind;
use vodmesh_tests::media::random_file;
use vodmesh_tests::rogue::{Rogue, catalog_record, certify, issuer_of, station_record};
use vodmesh_tests::swarm::{TEST_TTL, ingest_options, init_logging, station};
use vodmesh_tests::wait;
use vodmesh_tools::ingest::{self, IngestOptions};

const CM: Roles = Roles {
    home: false,
    content_manager: true,
    auth: false,
};

/// Puts the station record of `rogue` (claiming every role), certified by `issuer` if given.
async fn join(rogue: &mut Rogue, issuer: Option<&Issuer>, granted: Roles) -> anyhow::Result<()> {
    let all = Roles {
        home: true,
        content_manager: true,
        auth: true,
    };
    let cert = issuer
        .map(|i| certify(i, rogue.peer(), granted))
        .transpose()?;
    let signed: Signed = station_record(rogue.peer(), all, cert).sign(&rogue.key);
    rogue
        .put_signed(RecordKind::Station(rogue.peer()), &signed)
        .await
}

/// The director's line for `request` from `key`, or `None` if it accepted it.
async fn refusal(
    addr: &libp2p::Multiaddr,
    key: &Keypair,
    request: Request,
) -> anyhow::Result<Option<String>> {
    let client = DirectorClient::connect(addr, Some(key.clone())).await?;
    Ok(match client.call(request).await {
        Ok(_) => None,
        Err(DirectorError::Refused(reply)) => Some(reply.message),
        Err(e) => return Err(e.into()),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_non_members_are_refused_and_members_records_are_stored() -> anyhow::Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let home = station(dir.path()).home().start().await?;
    let issuer = issuer_of(dir.path())?;
    let registry = home.registry();

    let mut stranger = Rogue::new(home.addr())?;
    join(&mut stranger, None, CM).await?;
    let mut foreign = Rogue::new(home.addr())?;
    join(&mut foreign, Some(&Issuer::generate()), CM).await?;
    let mut member = Rogue::new(home.addr())?;
    join(&mut member, Some(&issuer), Roles::default()).await?;
    let mut manager = Rogue::new(home.addr())?;
    join(&mut manager, Some(&issuer), CM).await?;

    // Station records: only the certified ones are stored.
    assert!(registry.get_station(member.peer()).await?.is_some());
    assert!(registry.get_station(manager.peer()).await?.is_some());
    assert!(registry.get_station(stranger.peer()).await?.is_none());
    assert!(registry.get_station(foreign.peer()).await?.is_none());

    // A forged catalog record (a program id and title of the stranger's choosing, "issued"
    // at the end of time) is refused; so is one of a member not granted the role; one of a
    // certified content manager is stored.
    let program = ProgramId([0x19; 32]);
    for (rogue, kind) in [(&mut stranger, "stranger"), (&mut member, "member")] {
        let forged = catalog_record(&rogue.key, program, kind);
        rogue
            .put_signed(RecordKind::Catalog(program), &forged)
            .await?;
    }
    assert!(registry.get_catalog(program).await?.is_empty());
    let genuine = catalog_record(&manager.key, program, "genuine");
    (manager.put_signed(RecordKind::Catalog(program), &genuine)).await?;
    assert_eq!(registry.get_catalog(program).await?, vec![genuine]);

    home.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn station_requests_of_non_members_are_refused_and_members_are_served() -> anyhow::Result<()>
{
    init_logging();
    let dir = tempfile::tempdir()?;
    let home = station(dir.path()).home().start().await?;
    let issuer = issuer_of(dir.path())?;
    let addr = home.addr().clone();

    let mut stranger = Rogue::new(&addr)?;
    join(&mut stranger, None, CM).await?;
    let mut member = Rogue::new(&addr)?;
    join(&mut member, Some(&issuer), Roles::default()).await?;
    let mut manager = Rogue::new(&addr)?;
    join(&mut manager, Some(&issuer), CM).await?;
    // A peer that never put any record at all.
    let unknown = Keypair::generate_ed25519();

    let program = ProgramId([0x21; 32]);
    let replicate = |source: PeerId| Request::Replicate {
        program,
        source,
        source_addrs: vec![],
        size: 0,
    };
    let locate_copy = Request::LocateCopy {
        program,
        index: 0.into(),
        engines: vec![],
    };
    let not_member = Some(NOT_A_MEMBER.to_string());

    // Unsolicited `Replicate`: refused to strangers, to members without the role; the
    // control, from a certified content manager, is taken (the copy then fails on its own).
    for key in [&stranger.key, &unknown] {
        let source = key.public().to_peer_id();
        assert_eq!(refusal(&addr, key, replicate(source)).await?, not_member);
    }
    assert_eq!(
        refusal(&addr, &member.key, replicate(member.peer())).await?,
        Some("not a certified content manager".into())
    );
    assert_eq!(
        refusal(&addr, &manager.key, replicate(manager.peer())).await?,
        None
    );

    // Unsolicited `Published`: a record of the sender's own, refused unless it is a certified
    // content manager.
    let published = |key: &Keypair| Request::Published {
        record: catalog_record(key, program, "taken over"),
    };
    for key in [&stranger.key, &unknown] {
        assert_eq!(refusal(&addr, key, published(key)).await?, not_member);
    }
    assert_eq!(
        refusal(&addr, &manager.key, published(&manager.key)).await?,
        None
    );

    // `LocateCopy`: a stranger is told it is not a member; a member gets the station's own
    // answer (this station holds no such segment).
    for key in [&stranger.key, &unknown] {
        assert_eq!(refusal(&addr, key, locate_copy.clone()).await?, not_member);
    }
    let answer = refusal(&addr, &member.key, locate_copy).await?;
    assert!(
        answer.as_deref().is_some_and(|a| a != NOT_A_MEMBER),
        "{answer:?}"
    );

    // What a console needs stays open to anyone.
    let console = DirectorClient::connect(&addr, Some(unknown)).await?;
    assert!(matches!(
        console.call(Request::Programs).await?,
        Response::Programs(_)
    ));
    assert!(matches!(
        console.call(Request::Station).await?,
        Response::Station(_)
    ));
    home.shutdown().await;
    Ok(())
}

/// A station that was never enrolled (its own auth server, every role) joins by bootstrap:
/// the home keeps it out of its routing table and out of the swarm it lists, and its provider
/// and catalog records out of its registry, while an enrolled station that joined the same
/// way is in both, and a holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uninvited_station_stays_out_of_routing_tables_and_listings() -> anyhow::Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let home_dir = dir.path().join("home");
    let home = station(&home_dir).home().start().await?;
    let rogue = station(dir.path().join("rogue"))
        .home()
        .bootstrap(&home)
        .start()
        .await?;
    let member = station(dir.path().join("member"))
        .enrolled_with(&home, &home_dir)
        .start()
        .await?;
    let registry = home.registry();
    wait::until(
        "the member in the home's table and swarm",
        Duration::from_secs(30),
        || async {
            let listed = home.swarm().await?;
            Ok(registry.routing_table().await?.contains(&member.peer_id())
                && listed.iter().any(|s| s.director == member.peer_id()))
        },
    )
    .await?;

    // The rogue ingests a program of its own (and provides it); then the home ingests one
    // with a replica, which the member takes and provides.
    let source = dir.path().join("p.bin");
    random_file(&source, 256 * 1024, 19)?;
    let rogue_key = dir.path().join("rogue").join("identity.key");
    let ingested = |station, key, title| IngestOptions {
        publish_at_ms: Some(now_ms()),
        ..ingest_options(station, key, title, &source)
    };
    let theirs = ingest::run(&ingested(&rogue, &rogue_key, "theirs")).await?;
    let ours = ingest::run(&IngestOptions {
        replicas: 1,
        ..ingested(&home, &home_dir.join("identity.key"), "ours")
    })
    .await?;
    let wanted = member.peer_id();
    wait::until(
        "the member as a holder",
        Duration::from_secs(60),
        || async { Ok(registry.holders(ours.program).await?.contains(&wanted)) },
    )
    .await?;
    // The rogue's provider record went out before the home's ingest began: by the time the
    // member's replica is provided, it was refused.
    let holders = registry.holders(theirs.program).await?;
    assert!(!holders.contains(&rogue.peer_id()), "{holders:?}");
    assert!(registry.get_catalog(theirs.program).await?.is_empty());

    // The rogue joined before the member and has republished since: had it been admitted,
    // it would be in by now.
    assert!(!registry.routing_table().await?.contains(&rogue.peer_id()));
    let listed: Vec<PeerId> = home.swarm().await?.iter().map(|s| s.director).collect();
    assert!(!listed.contains(&rogue.peer_id()), "{listed:?}");
    assert!(registry.get_station(rogue.peer_id()).await?.is_none());
    for s in [rogue, member, home] {
        s.shutdown().await;
    }
    Ok(())
}

/// `vodmesh station revoke`: a member whose requests were served is refused once an admin
/// revoked it, and drops out of the swarm's listing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_station_is_refused_within_a_record_ttl() -> anyhow::Result<()> {
    let (_dir, (home, home_dir), (member, member_dir)) = home_and_member().await?;
    let key = vodmesh_node::identity::load_or_create(&member_dir.join("identity.key"))?;
    let addr = home.addr().clone();
    let locate_copy = Request::LocateCopy {
        program: ProgramId([0x22; 32]),
        index: 0.into(),
        engines: vec![],
    };
    let id = member.peer_id();
    let listed = || async { anyhow::Ok(home.swarm().await?.iter().any(|r| r.director == id)) };
    wait::until("the member listed", Duration::from_secs(30), listed).await?;
    // The control: served as a member (the station holds no such segment).
    let answer = refusal(&addr, &key, locate_copy.clone()).await?;
    assert!(answer.is_some_and(|a| a != NOT_A_MEMBER));

    let admin_key = home_dir.join("identity.key");
    vodmesh_tools::admin::revoke(
        &addr,
        vodmesh_tools::admin::AdminKey {
            key: &admin_key,
            token: None,
        },
        member.peer_id(),
    )
    .await?;
    // The auth station lists the revocation in its next record (a third of the TTL).
    wait::until("the member refused", TEST_TTL * 2, || async {
        Ok(refusal(&addr, &key, locate_copy.clone()).await?.as_deref() == Some(NOT_A_MEMBER))
    })
    .await?;
    assert!(!listed().await?, "still listed");
    member.shutdown().await;
    home.shutdown().await;
    Ok(())
}

/// Programs not published yet are the swarm's own business (issue 19): a console, or a
/// stranger with an uncertified record, does not see one in `Programs` and is told
/// `program not published` for its `Manifest`, while it gets both of a published program
/// (the control); a member station gets the manifest (it replicates the program: the
/// member named by the ingest's `--replicas 1` holds it before its publish), and an admin's
/// `vodmesh programs --key` lists it, a stranger's key being no admin's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programs_not_published_yet_are_shown_to_members_and_admins_only() -> anyhow::Result<()> {
    use vodmesh_proto::director::ErrorCode;
    let (dir, (home, home_dir), (member, member_dir)) = home_and_member().await?;
    let member_key = vodmesh_node::identity::load_or_create(&member_dir.join("identity.key"))?;
    let addr = home.addr().clone();
    let mut stranger = Rogue::new(&addr)?;
    join(&mut stranger, None, CM).await?;
    let console = Keypair::generate_ed25519();

    let admin_key = home_dir.join("identity.key");
    let source = dir.path().join("p.bin");
    random_file(&source, 256 * 1024, 23)?;
    let later = ingest::run(&IngestOptions {
        replicas: 1,
        ..ingest_options(&home, &admin_key, "later", &source)
    })
    .await?
    .program;
    let now = ingest::run(&IngestOptions {
        publish_at_ms: Some(now_ms()),
        segment_size: 64 * 1024,
        ..ingest_options(&home, &admin_key, "now", &source)
    })
    .await?
    .program;
    let registry = home.registry();
    wait::until(
        "the member holding the program not published yet",
        Duration::from_secs(60),
        || async { Ok(registry.holders(later).await?.contains(&member.peer_id())) },
    )
    .await?;

    let listed = |key: Keypair| {
        let addr = addr.clone();
        async move {
            let client = DirectorClient::connect(&addr, Some(key)).await?;
            match client.call(Request::Programs).await? {
                Response::Programs(list) => anyhow::Ok(
                    list.iter()
                        .map(|p| p.program)
                        .collect::<std::collections::BTreeSet<_>>(),
                ),
                other => anyhow::bail!("{other:?}"),
            }
        }
    };
    let manifest = |key: Keypair, program| {
        let addr = addr.clone();
        async move {
            let client = DirectorClient::connect(&addr, Some(key)).await?;
            anyhow::Ok(match client.call(Request::Manifest { program }).await {
                Ok(Response::Manifest(_)) => Ok(()),
                Ok(other) => anyhow::bail!("{other:?}"),
                Err(DirectorError::Refused(reply)) => Err(reply),
                Err(e) => return Err(e.into()),
            })
        }
    };
    for key in [&console, &stranger.key] {
        assert_eq!(listed(key.clone()).await?, [now].into());
        let refused = manifest(key.clone(), later).await?.err();
        assert_eq!(
            refused.as_ref().map(|r| r.code),
            Some(ErrorCode::NotPublished)
        );
        assert_eq!(
            refused.map(|r| r.message).as_deref(),
            Some("program not published")
        );
        assert_eq!(manifest(key.clone(), now).await?, Ok(()));
    }
    // A member station sees it, as does an admin; a stranger's key proves nothing.
    assert_eq!(listed(member_key.clone()).await?, [later, now].into());
    assert_eq!(manifest(member_key, later).await?, Ok(()));
    let as_admin = vodmesh_tools::programs::fetch(&addr, Some(&admin_key)).await?;
    let ids: Vec<ProgramId> = as_admin.iter().map(|p| p.program).collect();
    assert!(ids.contains(&later) && ids.contains(&now), "{ids:?}");
    let stranger_key = dir.path().join("stranger.key");
    vodmesh_node::identity::save(&stranger_key, &Keypair::generate_ed25519())?;
    let refused = vodmesh_tools::programs::fetch(&addr, Some(&stranger_key)).await;
    let refused = refused.err().map(|e| e.to_string());
    assert_eq!(refused.as_deref(), Some("not an admin of this station"));
    member.shutdown().await;
    home.shutdown().await;
    Ok(())
}

/// The registry queries a station has started.
/// A home station, a member that joined it, and a stranger (claiming the content manager
/// role) that did; the temp dir holds the home's data.
/// A home station (the auth station) and a member enrolled with it, each with its data
/// directory, under a new temporary directory.
async fn home_and_member() -> anyhow::Result<(
    tempfile::TempDir,
    (vodmesh_node::Station, std::path::PathBuf),
    (vodmesh_node::Station, std::path::PathBuf),
)> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let home_dir = dir.path().join("home");
    let home = station(&home_dir).home().start().await?;
    let member_dir = dir.path().join("member");
    let member = station(&member_dir)
        .enrolled_with(&home, &home_dir)
        .start()
        .await?;
    Ok((dir, (home, home_dir), (member, member_dir)))
}

async fn home_member_and_stranger()
-> anyhow::Result<(tempfile::TempDir, vodmesh_node::Station, Rogue, Rogue)> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let home = station(dir.path()).home().start().await?;
    let issuer = issuer_of(dir.path())?;
    let addr = home.addr().clone();
    let mut member = Rogue::new(&addr)?;
    join(&mut member, Some(&issuer), Roles::default()).await?;
    let mut stranger = Rogue::new(&addr)?;
    join(&mut stranger, None, CM).await?;
    Ok((dir, home, member, stranger))
}

fn dht_queries_started(station: &vodmesh_node::Station) -> anyhow::Result<u64> {
    let line = "vodmesh_dht_queries_started_total ";
    let text = station.metrics().encode();
    let count = (text.lines())
        .find_map(|l| l.strip_prefix(line))
        .ok_or_else(|| anyhow::anyhow!("no {line} in the metrics"))?;
    Ok(count.trim().parse()?)
}

/// A stranger asks what only members may ask (`Held`), many times at once and then again:
/// each is refused, after at most one registry look-up of the stranger in a while. Before,
/// every request started a look-up of its own: a stranger's way of making a director query
/// the swarm as often as it likes, with requests of a few bytes. The control: a member's
/// `Held` is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_s_member_requests_are_refused_after_one_look_up() -> anyhow::Result<()> {
    const ASKS: usize = 64;
    let (_dir, home, member, stranger) = home_member_and_stranger().await?;
    let addr = home.addr().clone();

    let client = DirectorClient::connect(&addr, Some(stranger.key.clone())).await?;
    let before = dht_queries_started(&home)?;
    for _ in 0..2 {
        let asks = (0..ASKS).map(|_| client.call(Request::Held));
        for answer in futures::future::join_all(asks).await {
            match answer {
                Err(DirectorError::Refused(reply)) => assert_eq!(reply.message, NOT_A_MEMBER),
                other => panic!("a stranger's Held: {other:?}"),
            }
        }
    }
    let looked_up = dht_queries_started(&home)? - before;
    // One look-up of the stranger; a few of the station's own may start meanwhile.
    assert!(
        looked_up < 8,
        "{looked_up} registry look-ups for {} requests",
        2 * ASKS
    );
    let answer = (DirectorClient::connect(&addr, Some(member.key.clone())).await?)
        .call(Request::Held)
        .await?;
    assert!(matches!(answer, Response::Programs(_)), "{answer:?}");
    home.shutdown().await;
    Ok(())
}

/// A member asks `LocateCopy` many times at once before the director checked its station:
/// every request is answered, after one registry look-up of that station. Before, each
/// request started a registry query of its own, a member's way of making a director query
/// the swarm as often as it likes. The control: a request from a stranger is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_s_copy_requests_before_its_check_wait_for_one_look_up() -> anyhow::Result<()> {
    const ASKS: usize = 64;
    let (dir, home, member, stranger) = home_member_and_stranger().await?;
    let addr = home.addr().clone();

    let source = dir.path().join("p.bin");
    random_file(&source, 64 * 1024, 29)?;
    let key = dir.path().join("identity.key");
    let program = ingest::run(&IngestOptions {
        publish_at_ms: Some(now_ms()),
        ..ingest_options(&home, &key, "asked", &source)
    })
    .await?
    .program;
    let locate_copy = Request::LocateCopy {
        program,
        index: 0.into(),
        engines: vec![],
    };
    assert_eq!(
        refusal(&addr, &stranger.key, locate_copy.clone()).await?,
        Some(NOT_A_MEMBER.to_string())
    );

    let client = DirectorClient::connect(&addr, Some(member.key.clone())).await?;
    let before = dht_queries_started(&home)?;
    let asks = (0..ASKS).map(|_| client.call(locate_copy.clone()));
    for answer in futures::future::join_all(asks).await {
        let answer = answer?;
        assert!(matches!(answer, Response::Located { .. }), "{answer:?}");
    }
    let looked_up = dht_queries_started(&home)? - before;
    // One look-up of the member for its copies (and one for its admission); a few of the
    // station's own may start meanwhile.
    assert!(
        looked_up < 8,
        "{looked_up} registry look-ups for {ASKS} requests"
    );
    home.shutdown().await;
    Ok(())
}

/// `IngestCommit` and `IngestAbort` carry an admin proof: one signed by a stranger's key, or
/// by a certified content manager of the swarm that is no admin of this station, is refused,
/// and the ingest in progress is left as it is (the admin's commit finds it, one segment
/// short). `Published` is a content manager's word about its own records only: a certified
/// content manager passing on a record another one signed (the home's own) is refused. The
/// controls: the admin's abort drops the ingest (its commit then finds none), and the
/// manager's `Published` of its own record is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_commits_aborts_and_published_of_others_are_refused() -> anyhow::Result<()> {
    let (dir, home, _member, stranger) = home_member_and_stranger().await?;
    let addr = home.addr().clone();
    let director = vodmesh_proto::net::peer_of(&addr).ok_or_else(|| anyhow::anyhow!("no peer"))?;
    let mut manager = Rogue::new(&addr)?;
    join(&mut manager, Some(&issuer_of(dir.path())?), CM).await?;
    let admin = vodmesh_node::identity::load_or_create(&dir.path().join("identity.key"))?;

    let content = vodmesh_tests::media::one_segment("guarded");
    let program = content.program_id();
    let proof = |key: &Keypair, op: &str| {
        vodmesh_proto::admin::prove(key, op, program.as_bytes(), director, now_ms())
    };
    let commit = |key: &Keypair| Request::IngestCommit {
        program,
        admin: proof(key, "ingest-commit"),
    };
    let abort = |key: &Keypair| Request::IngestAbort {
        program,
        admin: proof(key, "ingest-abort"),
    };
    let owner = DirectorClient::connect(&addr, Some(Keypair::generate_ed25519())).await?;
    let begun = owner
        .call(Request::IngestBegin {
            content,
            publish_at_ms: None,
            replicas: 0,
            admin: proof(&admin, "ingest"),
        })
        .await?;
    assert!(matches!(begun, Response::IngestPlan { .. }), "{begun:?}");

    let not_admin = Some("not an admin of this station".to_string());
    for key in [&stranger.key, &manager.key] {
        assert_eq!(refusal(&addr, key, commit(key)).await?, not_admin);
        assert_eq!(refusal(&addr, key, abort(key)).await?, not_admin);
    }
    // The ingest is still there: the admin's commit finds it, its segment not stored.
    // (Over a connection of its own: the admin key is the director's, which it cannot dial.)
    let tool = Keypair::generate_ed25519();
    let incomplete = refusal(&addr, &tool, commit(&admin)).await?;
    assert!(
        incomplete
            .as_deref()
            .is_some_and(|l| l.contains("not stored yet")),
        "{incomplete:?}"
    );

    // `Published` of a record the sender did not sign: refused; its own: taken.
    let others = catalog_record(&admin, ProgramId([0x15; 32]), "the home's");
    let passed_on = Request::Published { record: others };
    assert_eq!(
        refusal(&addr, &manager.key, passed_on).await?,
        Some("catalog record does not verify".into())
    );
    let own = catalog_record(&manager.key, ProgramId([0x16; 32]), "its own");
    let told = Request::Published { record: own };
    assert_eq!(refusal(&addr, &manager.key, told).await?, None);

    // The control: the admin's abort drops the ingest.
    assert!(matches!(owner.call(abort(&admin)).await?, Response::Ok));
    let gone = refusal(&addr, &tool, commit(&admin)).await?;
    assert_eq!(
        gone.as_deref(),
        Some("no ingest of this program in progress")
    );
    home.shutdown().await;
    Ok(())
}

/// A certified content manager signs a record of another content manager's program (the
/// home's, not published yet), "published" and issued at the end of time: the home's
/// registry keeps the home's record, and a member station that knows the program refuses it
/// as `Published` (before, the registry took the newer record in place of the owner's, and
/// the member took it too: the program played there before its publish). The control: the
/// owner's own update, its publish, is taken by both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_manager_cannot_replace_another_s_program_record() -> anyhow::Result<()> {
    let (dir, (home, home_dir), (member, _)) = home_and_member().await?;
    let mut manager = Rogue::new(home.addr())?;
    join(&mut manager, Some(&issuer_of(&home_dir)?), CM).await?;

    let admin_key = home_dir.join("identity.key");
    let source = dir.path().join("p.bin");
    random_file(&source, 64 * 1024, 31)?;
    let opts = ingest_options(&home, &admin_key, "owned", &source);
    let program = ingest::run(&opts).await?.program;
    let playable = |program| {
        let addr = member.addr().clone();
        async move {
            let client = DirectorClient::connect(&addr, None).await?;
            anyhow::Ok(match client.call(Request::Playable { program }).await {
                Ok(_) => None,
                Err(DirectorError::Refused(reply)) => Some(reply.message),
                Err(e) => return Err(e.into()),
            })
        }
    };
    // The member learns the home's record (from the registry): not published.
    let not_published = Some("program not published".to_string());
    assert_eq!(playable(program).await?, not_published);

    let taken = catalog_record(&manager.key, program, "taken over");
    (manager.put_signed(RecordKind::Catalog(program), &taken)).await?;
    let refused = refusal(
        member.addr(),
        &manager.key,
        Request::Published { record: taken },
    )
    .await?;
    assert!(
        refused
            .as_deref()
            .is_some_and(|l| l.contains("belongs to another content manager")),
        "{refused:?}"
    );
    assert_eq!(playable(program).await?, not_published);
    let records = home.registry().get_catalog(program).await?;
    let signers: Vec<Option<PeerId>> = (records.iter())
        .map(|r| vodmesh_proto::catalog::CatalogRecord::verify(r).ok())
        .map(|r| r.map(|r| r.content_manager))
        .collect();
    assert!(!signers.is_empty());
    assert!(
        signers.iter().all(|s| *s == Some(home.peer_id())),
        "{signers:?}"
    );

    // The control: the owner publishes; the member plays it.
    vodmesh_tools::publish::run(home.addr(), &admin_key, program).await?;
    wait::until(
        "the member sees the owner's publish",
        Duration::from_secs(30),
        || async { Ok(playable(program).await?.is_none()) },
    )
    .await?;
    member.shutdown().await;
    home.shutdown().await;
    Ok(())
}

/// A stranger asks `Programs` many times at once, and again: one listing (the station's
/// catalog read, the other stations asked, a registry look-up of each program's holders)
/// answers them all. Before, each request made a listing of its own: 128 requests of a few
/// bytes, 128 look-ups of each program's holders. The control: a program ingested after is
/// listed once the shared answer is refreshed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_s_program_lists_share_one_listing() -> anyhow::Result<()> {
    const ASKS: usize = 64;
    let (dir, home, _member, stranger) = home_member_and_stranger().await?;
    let addr = home.addr().clone();
    let key = dir.path().join("identity.key");
    let mut programs = std::collections::BTreeSet::new();
    for n in 0..3u8 {
        let source = dir.path().join(format!("p{n}.bin"));
        random_file(&source, 16 * 1024, 40 + u64::from(n))?;
        let opts = IngestOptions {
            publish_at_ms: Some(now_ms()),
            ..ingest_options(&home, &key, &format!("listed {n}"), &source)
        };
        programs.insert(ingest::run(&opts).await?.program);
    }
    let client = DirectorClient::connect(&addr, Some(stranger.key.clone())).await?;
    let listed = |answer: Response| match answer {
        Response::Programs(list) => Ok(list.iter().map(|p| p.program).collect()),
        other => Err(anyhow::anyhow!("{other:?}")),
    };
    let before = dht_queries_started(&home)?;
    for _ in 0..2 {
        let asks = (0..ASKS).map(|_| client.call(Request::Programs));
        for answer in futures::future::join_all(asks).await {
            let got: std::collections::BTreeSet<ProgramId> = listed(answer?)?;
            assert_eq!(got, programs);
        }
    }
    let queries = dht_queries_started(&home)? - before;
    assert!(
        queries < 24,
        "{queries} registry queries for {} program lists",
        2 * ASKS
    );

    let source = dir.path().join("late.bin");
    random_file(&source, 16 * 1024, 49)?;
    let opts = IngestOptions {
        publish_at_ms: Some(now_ms()),
        ..ingest_options(&home, &key, "late", &source)
    };
    let late = ingest::run(&opts).await?.program;
    wait::until(
        "the late program listed",
        Duration::from_secs(30),
        || async {
            let got: std::collections::BTreeSet<ProgramId> =
                listed(client.call(Request::Programs).await?)?;
            Ok(got.contains(&late))
        },
    )
    .await?;
    home.shutdown().await;
    Ok(())
}

/// G4: `Manifest` and `Playable` of programs a station neither catalogs nor keeps each need
/// a registry walk (and a manifest, a download from the program's content manager), and any
/// peer may ask them. A stranger asks the member, 64 at once and again, for the manifest of
/// the home's published program and for a program that does not exist: one fetch a program
/// at a time answers everyone waiting on it, and the published manifest fetched lately
/// answers at once. Before, each request made a fetch of its own. The control: every answer
/// is still the right one (the manifest; the unknown program refused, not busy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_s_manifest_and_playable_asks_share_one_fetch() -> anyhow::Result<()> {
    const ASKS: usize = 64;
    let (dir, (home, home_dir), (member, _)) = home_and_member().await?;
    let source = dir.path().join("fetched.bin");
    random_file(&source, 16 * 1024, 60)?;
    let opts = IngestOptions {
        publish_at_ms: Some(now_ms()),
        ..ingest_options(&home, &home_dir.join("identity.key"), "fetched", &source)
    };
    let program = ingest::run(&opts).await?.program;
    let unknown = ProgramId([0x5a; 32]);
    let client = DirectorClient::connect(member.addr(), None).await?;
    let manifest_of = |answer: Result<Response, DirectorError>| match answer {
        Ok(Response::Manifest(signed)) => Ok(signed),
        other => Err(anyhow::anyhow!("{other:?}")),
    };
    wait::until(
        "the member to find the program in the registry",
        Duration::from_secs(30),
        || async { Ok(manifest_of(client.call(Request::Manifest { program }).await).is_ok()) },
    )
    .await?;

    let before = dht_queries_started(&member)?;
    for _ in 0..2 {
        // 64 at once of each (one connection carries about 100 requests at a time).
        let known = (0..ASKS).map(|_| client.call(Request::Manifest { program }));
        let known = futures::future::join_all(known).await;
        let manifests = (0..ASKS).map(|_| client.call(Request::Manifest { program: unknown }));
        let manifests = futures::future::join_all(manifests).await;
        let playable = (0..ASKS).map(|_| client.call(Request::Playable { program: unknown }));
        let playable = futures::future::join_all(playable).await;
        for answer in known {
            let signed = manifest_of(answer)?;
            let manifest = vodmesh_proto::manifest::Manifest::verify(&signed)?;
            assert_eq!(manifest.content.program_id(), program);
        }
        for answer in manifests.into_iter().chain(playable) {
            match answer {
                Err(DirectorError::Refused(reply)) => {
                    assert!(!reply.message.contains("at once"), "{}", reply.message);
                }
                other => anyhow::bail!("an unknown program: {other:?}"),
            }
        }
    }
    let queries = dht_queries_started(&member)? - before;
    // 384 before (one a request), 5 to 11 seen: a fetch that ends before the last of a
    // batch arrived is followed by another.
    eprintln!("{queries} registry queries for {} asks", 6 * ASKS);
    assert!(
        queries < 48,
        "{queries} registry queries for {} asks",
        6 * ASKS
    );
    member.shutdown().await;
    home.shutdown().await;
    Ok(())
}
