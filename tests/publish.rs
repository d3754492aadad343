//! Publish (claim 11): a program with a publish time 3 s ahead is refused with
//! `program not published` by every director before it and accepted after; a content manager
//! restarted before the publish time still publishes on time; `vodmesh publish` publishes now.

use std::path::Path;
use std::time::Duration;

use vodmesh_node::Station;
use vodmesh_proto::catalog::{CatalogRecord, ProgramState};
use vodmesh_proto::time::now_ms;
use vodmesh_tests::media::random_file;
use vodmesh_tests::swarm::{self, ingest_options, init_logging, listed};
use vodmesh_tests::wait;
use vodmesh_tools::ingest::{self, IngestOptions};
use vodmesh_tools::publish::playable;

/// The home station (auth, content manager) with two engines under `dir`.
async fn start_home(dir: &Path) -> anyhow::Result<Station> {
    swarm::station(dir).home().engines(2).start().await
}

/// An ingest into `home` of `source` in 1 MiB segments, with a title of its own.
fn options(
    home: &Station,
    key: &Path,
    source: &Path,
    publish_at_ms: Option<u64>,
    replicas: u32,
) -> IngestOptions {
    IngestOptions {
        publish_at_ms,
        replicas,
        segment_size: 1024 * 1024,
        ..ingest_options(home, key, &format!("t{}", now_ms()), source)
    }
}

fn refusal(r: anyhow::Result<()>) -> Option<String> {
    r.err().map(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_before_the_publish_time_and_served_after() -> anyhow::Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let home_dir = dir.path().join("home");
    let home = start_home(&home_dir).await?;
    let mut others = Vec::new();
    for name in ["other", "bystander"] {
        let station = swarm::station(dir.path().join(name)).engines(2);
        others.push(station.enrolled_with(&home, &home_dir).start().await?);
    }
    let [other, bystander] = &others[..] else {
        anyhow::bail!("two stations");
    };
    wait::until("three stations listed", Duration::from_secs(30), || async {
        Ok(listed(&home).await?.len() == 3)
    })
    .await?;
    let source = dir.path().join("p.bin");
    random_file(&source, 3 * 1024 * 1024, 5)?;
    let key = home_dir.join("identity.key");

    let publish_at = now_ms() + 6000;
    let info = ingest::run(&options(&home, &key, &source, Some(publish_at), 1)).await?;
    let program = info.program;
    assert!(now_ms() < publish_at, "ingest took too long for this test");
    for s in [&home, other, bystander] {
        assert_eq!(
            refusal(playable(s.addr(), program).await).as_deref(),
            Some("program not published"),
        );
    }
    let listed_state = vodmesh_tools::programs::fetch(home.addr(), Some(&key)).await?;
    assert_eq!(listed_state[0].state, ProgramState::Inactive);
    assert_eq!(listed_state[0].publish_at_ms, Some(publish_at));

    for s in [&home, other, bystander] {
        wait::until(
            "playable after the publish time",
            Duration::from_secs(15),
            || async { Ok(playable(s.addr(), program).await.is_ok()) },
        )
        .await?;
    }
    assert!(
        now_ms() >= publish_at,
        "never served before the publish time"
    );
    let listed_state = vodmesh_tools::programs::fetch(home.addr(), Some(&key)).await?;
    assert_eq!(listed_state[0].state, ProgramState::Published);

    // Without a publish time a program stays inactive until `vodmesh publish`; only admins
    // publish.
    let source2 = dir.path().join("q.bin");
    random_file(&source2, 1024 * 1024, 6)?;
    let later = ingest::run(&options(&home, &key, &source2, None, 0)).await?;
    assert_eq!(
        refusal(playable(other.addr(), later.program).await).as_deref(),
        Some("program not published")
    );
    let stranger = dir.path().join("stranger.key");
    vodmesh_node::identity::save(&stranger, &libp2p::identity::Keypair::generate_ed25519())?;
    assert!(
        vodmesh_tools::publish::run(home.addr(), &stranger, later.program)
            .await
            .is_err()
    );
    vodmesh_tools::publish::run(home.addr(), &key, later.program).await?;
    wait::until("published now", Duration::from_secs(15), || async {
        Ok(playable(other.addr(), later.program).await.is_ok())
    })
    .await?;

    // An unknown program is not "not published": it is unknown.
    let unknown = vodmesh_proto::ProgramId([9; 32]);
    assert_eq!(
        refusal(playable(home.addr(), unknown).await).as_deref(),
        Some("unknown program")
    );
    home.shutdown().await;
    for s in others {
        s.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_content_manager_still_publishes_on_time() -> anyhow::Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let home_dir = dir.path().join("home");
    let home = start_home(&home_dir).await?;
    let source = dir.path().join("p.bin");
    random_file(&source, 2 * 1024 * 1024, 9)?;
    let key = home_dir.join("identity.key");
    let publish_at = now_ms() + 5000;
    let info = ingest::run(&options(&home, &key, &source, Some(publish_at), 0)).await?;
    let program = info.program;
    home.shutdown().await;

    let home = start_home(&home_dir).await?;
    assert!(now_ms() < publish_at, "restart took too long for this test");
    assert_eq!(
        refusal(playable(home.addr(), program).await).as_deref(),
        Some("program not published")
    );
    // Nobody calls `vodmesh publish`: the re-armed scheduler must.
    wait::until(
        "published by the scheduler",
        Duration::from_secs(15),
        || async {
            let records = home.registry().get_catalog(program).await?;
            Ok(records
                .iter()
                .filter_map(|s| CatalogRecord::verify(s).ok())
                .any(|r| r.state == ProgramState::Published))
        },
    )
    .await?;
    let published_seen = now_ms();
    assert!(published_seen >= publish_at);
    assert!(
        published_seen < publish_at + 3000,
        "published on time (within the polling slack)"
    );
    playable(home.addr(), program).await?;
    home.shutdown().await;
    Ok(())
}

/// Publish time enforced where bytes leave (issue 19): a console that holds a valid token and
/// asks the engine holding an inactive program directly, past every director, gets no byte;
/// once the program is published the same request streams it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_streams_no_byte_of_an_inactive_program() -> anyhow::Result<()> {
    use vodmesh_proto::SegmentId;
    use vodmesh_proto::stream::StreamReply;
    use vodmesh_tests::console::Console;
    init_logging();
    let dir = tempfile::tempdir()?;
    let consoles = vodmesh_proto::token::Issuer::generate();
    let home_dir = dir.path().join("home");
    let home = swarm::station(&home_dir)
        .home()
        .trusting(&consoles)
        .start()
        .await?;
    let source = dir.path().join("p.bin");
    let bytes = random_file(&source, 64 * 1024, 11)?;
    let key = home_dir.join("identity.key");
    let info = ingest::run(&ingest_options(&home, &key, "not yet", &source)).await?;
    let console = Console::connect(home.addr(), Some(&consoles)).await?;
    let engine = console.station().await?.engines.remove(0);
    console.reach(engine.peer_id, &engine.addrs).await?;
    let segment = SegmentId::new(info.program, 0);
    let (_, reply) = console
        .ask(engine.peer_id, &console.request(segment, 0, 0))
        .await?;
    assert_eq!(reply, StreamReply::Refused("program not published".into()));
    // The control: published, the same request streams the program's bytes.
    vodmesh_tools::publish::run(home.addr(), &key, info.program).await?;
    assert_eq!(console.stream(engine.peer_id, segment).await?, bytes);
    home.shutdown().await;
    Ok(())
}

/// The embargo outlives a restart (issue 19): the home's engine, told that a program is not
/// published yet, is restarted with its station; its director never tells it again (the
/// program is of its own catalog), and still a console with a valid token that asks the
/// engine directly gets no byte of it, while a published program streams (the control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_engine_still_streams_no_byte_of_an_inactive_program() -> anyhow::Result<()> {
    use vodmesh_proto::SegmentId;
    use vodmesh_proto::stream::StreamReply;
    use vodmesh_tests::console::Console;
    init_logging();
    let dir = tempfile::tempdir()?;
    let consoles = vodmesh_proto::token::Issuer::generate();
    let home_dir = dir.path().join("home");
    let start = || {
        swarm::station(&home_dir)
            .home()
            .engines(1)
            .trusting(&consoles)
            .start()
    };
    let home = start().await?;
    let key = home_dir.join("identity.key");
    let source = dir.path().join("p.bin");
    let bytes = random_file(&source, 64 * 1024, 12)?;
    let later = ingest::run(&ingest_options(&home, &key, "later", &source)).await?;
    let now = ingest::run(&IngestOptions {
        publish_at_ms: Some(now_ms()),
        segment_size: 32 * 1024,
        ..ingest_options(&home, &key, "now", &source)
    })
    .await?;
    home.shutdown().await;

    let home = start().await?;
    let console = Console::connect(home.addr(), Some(&consoles)).await?;
    let engine = console.station().await?.engines.remove(0);
    console.reach(engine.peer_id, &engine.addrs).await?;
    let segment = SegmentId::new(later.program, 0);
    let (_, reply) = console
        .ask(engine.peer_id, &console.request(segment, 0, 0))
        .await?;
    assert_eq!(reply, StreamReply::Refused("program not published".into()));
    let published = console
        .stream(engine.peer_id, SegmentId::new(now.program, 1))
        .await?;
    assert_eq!(published, bytes[32 * 1024..]);
    home.shutdown().await;
    Ok(())
}

/// An engine that kept an embargo whose end it missed (it was down when the program was
/// published) is told the publish time again when it attaches: the published program streams
/// from it after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_engine_is_told_again_of_a_publish_it_missed() -> anyhow::Result<()> {
    use vodmesh_proto::SegmentId;
    use vodmesh_tests::console::Console;
    init_logging();
    let dir = tempfile::tempdir()?;
    let consoles = vodmesh_proto::token::Issuer::generate();
    let home_dir = dir.path().join("home");
    let start = || {
        swarm::station(&home_dir)
            .home()
            .engines(1)
            .trusting(&consoles)
            .start()
    };
    let home = start().await?;
    let key = home_dir.join("identity.key");
    let source = dir.path().join("p.bin");
    let bytes = random_file(&source, 64 * 1024, 13)?;
    let now = ingest::run(&IngestOptions {
        publish_at_ms: Some(now_ms()),
        ..ingest_options(&home, &key, "now", &source)
    })
    .await?;
    home.shutdown().await;
    vodmesh_tests::stored::embargo(&home_dir, 0, now.program, u64::MAX).await?;

    let home = start().await?;
    let console = Console::connect(home.addr(), Some(&consoles)).await?;
    let engine = console.station().await?.engines.remove(0);
    console.reach(engine.peer_id, &engine.addrs).await?;
    let segment = SegmentId::new(now.program, 0);
    wait::until(
        "the published program streamed",
        Duration::from_secs(30),
        || async { Ok(console.stream(engine.peer_id, segment).await.ok() == Some(bytes.clone())) },
    )
    .await?;
    home.shutdown().await;
    Ok(())
}
