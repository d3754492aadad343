//! Ingest into a home station: the bytes stored on the engines are the bytes of the source,
//! spread over the engines; only admins ingest; bad sources fail with one clear error and
//! leave nothing in the catalog.

use vodmesh_client::director::DirectorError;
use vodmesh_proto::director::{Request, Response};
use vodmesh_tests::media::random_file;
use vodmesh_tests::stored::engine_segments;
use vodmesh_tests::swarm::{self, ingest_options, init_logging};
use vodmesh_tools::ingest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_file_is_stored_exactly_across_the_engines() -> anyhow::Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("home");
    let source = dir.path().join("program.bin");
    let bytes = random_file(&source, 64 * 1024 * 1024, 7)?;
    let station = swarm::station(&data)
        .engines(3)
        .content_home()
        .start()
        .await?;
    let info = ingest::run(&ingest_options(
        &station,
        &data.join("identity.key"),
        "sixty-four",
        &source,
    ))
    .await?;
    assert_eq!(info.segments, 16);
    assert_eq!(info.size, bytes.len() as u64);
    let listed =
        vodmesh_tools::programs::fetch(station.addr(), Some(&data.join("identity.key"))).await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].program, info.program);
    station.shutdown().await;

    let (segments, _) = engine_segments(&data, 3, info.program).await?;
    assert_eq!(segments.len(), 16, "every segment stored exactly once");
    let joined: Vec<u8> = segments.into_values().flatten().collect();
    assert!(
        joined == bytes,
        "segments concatenated differ from the source"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_admins_and_bad_sources_are_refused_and_leave_nothing() -> anyhow::Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("home");
    let source = dir.path().join("program.bin");
    random_file(&source, 3 * 1024 * 1024, 8)?;
    let station = swarm::station(&data)
        .engines(3)
        .content_home()
        .start()
        .await?;

    let stranger = dir.path().join("stranger.key");
    vodmesh_node::identity::save(&stranger, &libp2p::identity::Keypair::generate_ed25519())?;
    let err = ingest::run(&ingest_options(&station, &stranger, "sixty-four", &source))
        .await
        .err()
        .map(|e| e.to_string());
    assert_eq!(err.as_deref(), Some("not an admin of this station"));

    let missing = dir.path().join("missing.bin");
    let err = ingest::run(&ingest_options(
        &station,
        &data.join("identity.key"),
        "sixty-four",
        &missing,
    ))
    .await
    .err()
    .map(|e| format!("{e:#}"));
    assert!(
        err.as_deref().is_some_and(|e| e.contains("cannot open")),
        "{err:?}"
    );

    let empty = dir.path().join("empty.bin");
    std::fs::write(&empty, b"")?;
    assert!(
        ingest::run(&ingest_options(
            &station,
            &data.join("identity.key"),
            "sixty-four",
            &empty
        ))
        .await
        .is_err()
    );

    assert!(
        vodmesh_tools::programs::fetch(station.addr(), Some(&data.join("identity.key")))
            .await?
            .is_empty()
    );

    // Titles: a program id is refused by the station itself (the library skips the command
    // line's own check); a title the catalog has is refused for another program. The
    // control: the first program of that title is stored.
    let key = data.join("identity.key");
    let an_id = vodmesh_proto::ProgramId([7; 32]).to_string();
    let err = ingest::run(&ingest_options(&station, &key, &an_id, &source))
        .await
        .err()
        .map(|e| format!("{e:#}"));
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains("cannot be a program id")),
        "{err:?}"
    );
    ingest::run(&ingest_options(&station, &key, "news", &source)).await?;
    let other = dir.path().join("other.bin");
    random_file(&other, 1024 * 1024, 9)?;
    let err = ingest::run(&ingest_options(&station, &key, "news", &other))
        .await
        .err()
        .map(|e| format!("{e:#}"));
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains("is titled \"news\" already")),
        "{err:?}"
    );
    let listed = vodmesh_tools::programs::fetch(station.addr(), Some(&key)).await?;
    assert_eq!(listed.len(), 1, "{listed:?}");
    station.shutdown().await;
    Ok(())
}

/// Ctrl-C (SIGINT) of `vodmesh ingest` halfway cancels it: the tool says so in one line and
/// exits non-zero, and the station drops the segments it took at once, not at its
/// `--ingest-timeout` (ten minutes here). The control: the same ingest left alone is stored.
#[test]
fn an_interrupted_ingest_is_dropped_by_the_station_at_once() -> anyhow::Result<()> {
    use std::time::{Duration, Instant};
    use vodmesh_tests::cli::Ingest;
    use vodmesh_tests::process::Node;
    use vodmesh_tests::stored::bytes_on_disk;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("home");
    let home = Node::new(&data)
        .home()
        .args(&["--ingest-timeout", "600"])
        .start()?;
    let source = dir.path().join("big.bin");
    random_file(&source, 320 * 1024 * 1024, 13)?;
    let ingest = Ingest::new(&home.addr, &home.key(), "big", &source).segment_size(1024 * 1024);
    let mut child = ingest.command().spawn()?;
    // Interrupted once the engine holds some of it.
    let started = Instant::now();
    while bytes_on_disk(&data, 0) == 0 {
        anyhow::ensure!(
            child.try_wait()?.is_none(),
            "the ingest ended before it was interrupted"
        );
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "nothing stored"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    send_signal(child.id(), "INT")?;
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.ends_with(
            "error: interrupted: the ingest was cancelled, and the station told to drop what it took\n"
        ),
        "{stderr}"
    );
    vodmesh_tests::wait::blocking("the segments dropped", Duration::from_secs(30), || {
        Ok(bytes_on_disk(&data, 0) == 0)
    })?;
    // The control: left alone, the same ingest is stored whole.
    ingest.run()?;
    assert_eq!(bytes_on_disk(&data, 0), 320 * 1024 * 1024);
    Ok(())
}

/// `vodmesh ingest --raw` takes a file's bytes as they are, whatever its name says: a `.mp4`
/// that is no video (a playlist naming a file of this machine, then random bytes) and an
/// `.m3u8` are each cut into `--segment-size` segments, and played back through the console
/// each is the file byte for byte. The control: without `--raw` the same `.mp4` is refused
/// (packaged with ffmpeg, which finds no video, or refused for want of ffmpeg) and nothing
/// is ingested.
#[test]
fn a_file_ingested_raw_plays_back_byte_for_byte_whatever_it_holds() -> anyhow::Result<()> {
    use vodmesh_tests::cli::{Ingest, Play, subscriber};
    use vodmesh_tests::process::Node;
    let dir = tempfile::tempdir()?;
    let home = Node::new(&dir.path().join("home")).home().start()?;
    let console = dir.path().join("console");
    subscriber(&home.addr, &home.key(), &console, "rae")?;
    let fake = dir.path().join("fake.mp4");
    let mut bytes =
        b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile:///etc/hostname\n#EXT-X-ENDLIST\n"
            .to_vec();
    bytes.extend(random_file(&dir.path().join("random.bin"), 300_000, 14)?);
    std::fs::write(&fake, &bytes)?;
    let playlist = dir.path().join("list.m3u8");
    std::fs::write(
        &playlist,
        b"#EXTM3U\n#EXTINF:4.0,\nseg0.ts\n#EXT-X-ENDLIST\n",
    )?;

    let refused = Ingest::new(&home.addr, &home.key(), "fake", &fake)
        .publish_now()
        .command()
        .output()?;
    assert!(
        !refused.status.success(),
        "a .mp4 that is no video was packaged"
    );
    for (source, title, want) in [
        (&fake, "fake", bytes.as_slice()),
        (&playlist, "list", &std::fs::read(&playlist)?[..]),
    ] {
        let program = Ingest::new(&home.addr, &home.key(), title, source)
            .publish_now()
            .segment_size(65_536)
            .args(&["--raw"])
            .run()?;
        let played = Play::new(&console, &home.addr, &program).run()?;
        assert!(
            played.bytes == want,
            "{title}: the played bytes differ from the file"
        );
    }
    Ok(())
}

/// Sends `signal` (`INT`, `TERM`) to process `pid` with kill(1).
fn send_signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}

/// Two clients ingesting one program at once: the second is refused while the first pushes
/// (before, it took the session over, and each of the two failed the other: "segment
/// announced for another peer", then the first's abort dropped the second's ingest), and its
/// abort leaves the first's ingest alone. Controls: the first client begins again (a resume)
/// and is served, and its own abort drops the ingest, after which the second may begin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_client_of_one_program_is_refused_and_cannot_drop_the_first_s_ingest()
-> anyhow::Result<()> {
    use vodmesh_client::DirectorClient;

    init_logging();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("home");
    let station = swarm::station(&data)
        .engines(1)
        .content_home()
        .start()
        .await?;
    let key = vodmesh_client::identity::load(&data.join("identity.key"))?;
    let content = vodmesh_tests::media::one_segment("twice");
    let (first, second) = (
        DirectorClient::connect(station.addr(), None).await?,
        DirectorClient::connect(station.addr(), None).await?,
    );
    let asks = AdminAsks {
        key: &key,
        content: &content,
        director: first.peer(),
    };
    let (begin, abort) = (|| asks.begin(), || asks.abort());
    let planned = |answer: &Result<Response, DirectorError>| {
        matches!(answer, Ok(Response::IngestPlan { .. }))
    };

    assert!(planned(&first.call(begin()).await));
    let refused = second.call(begin()).await;
    let line = match &refused {
        Err(DirectorError::Refused(reply)) => reply.message.clone(),
        other => anyhow::bail!("a second client's begin: {other:?}"),
    };
    assert!(line.contains("being ingested by another client"), "{line}");
    // Its abort (a failed ingest's client sends one) leaves the first's ingest: the first
    // resumes it.
    assert!(matches!(second.call(abort()).await, Ok(Response::Ok)));
    assert!(planned(&first.call(begin()).await), "the owner resumes");
    // The owner's abort drops it; then the second may begin.
    assert!(matches!(first.call(abort()).await, Ok(Response::Ok)));
    assert!(planned(&second.call(begin()).await));
    station.shutdown().await;
    Ok(())
}

/// Operator's #5: a segment of a home program damaged on disk is dropped by the scrub, and no
/// other station holds it. Ingesting the same source again repairs it: only the lost segment
/// is planned and pushed, and the program plays whole. A repair given up (its client's
/// abort) removes nothing, where an ingest given up removes every segment of its program;
/// once whole, an ingest of the program is refused as before (the control case).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_program_that_lost_a_segment_is_repaired_by_ingesting_it_again() -> anyhow::Result<()>
{
    use anyhow::Context;
    use vodmesh_client::DirectorClient;
    use vodmesh_proto::token::Issuer;
    use vodmesh_proto::{SegmentId, SegmentIndex};
    use vodmesh_tests::console::play_max;
    use vodmesh_tests::stored::{segment_file, tamper_on_disk};

    init_logging();
    const MIB: usize = 1024 * 1024;
    let dir = tempfile::tempdir()?;
    let issuer = Issuer::generate();
    let (station, data, bytes, program) = swarm::home_with_program(
        dir.path(),
        &issuer,
        ("repaired", 2 * MIB + 5000, 24),
        MIB as u64,
    )
    .await?;
    station.shutdown().await;
    let (damaged, kept) = (SegmentId::new(program, 1), SegmentId::new(program, 2));
    let engine = (0..2)
        .find(|e| segment_file(&data, *e, damaged).is_ok_and(|f| f.exists()))
        .context("no engine holds segment 1")?;
    tamper_on_disk(&data, engine, damaged, 1000)?;
    let kept_file = (0..2)
        .map(|e| segment_file(&data, e, kept))
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter()
        .find(|f| f.exists())
        .context("no engine holds segment 2")?;

    // Started again with --scrub: the damaged copy is dropped, the program cannot play.
    let station = swarm::station(&data)
        .content_home()
        .trusting(&issuer)
        .with(|c| c.scrub = true)
        .start()
        .await?;
    assert!(!segment_file(&data, engine, damaged)?.exists());

    // The same content asks a repair: the plan names segment 1 alone. Given up, it removes
    // nothing: segment 2 (and 0) stay.
    let source = dir.path().join("repaired.bin");
    let opened = vodmesh_tools::source::open(
        &source.to_string_lossy(),
        MIB as u64,
        ingest::DEFAULT_BITRATE,
        &[],
    )
    .await?;
    let mut content = opened.content.clone();
    content.title = "repaired".into();
    assert_eq!(content.program_id(), program);
    let key = vodmesh_client::identity::load(&data.join("identity.key"))?;
    let client = DirectorClient::connect(station.addr(), None).await?;
    let asks = AdminAsks {
        key: &key,
        content: &content,
        director: client.peer(),
    };
    let (begin, abort) = (|| asks.begin(), || asks.abort());
    let plan_of = |answer| match answer {
        Ok(Response::IngestPlan { engines, .. }) => {
            let planned: Vec<SegmentIndex> = (engines.into_iter())
                .flat_map(|t: vodmesh_proto::director::EngineTarget| t.segments)
                .collect();
            Ok(Some(planned))
        }
        Err(DirectorError::Refused(reply)) if reply.message.contains("already in the catalog") => {
            Ok(None)
        }
        other => anyhow::bail!("a repair's begin: {other:?}"),
    };
    // The engine reports the scrub's drop once it is up: the director hears of it shortly
    // after the station started, and until then holds the program whole.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let planned = loop {
        if let Some(planned) = plan_of(client.call(begin()).await)? {
            break planned;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the director never heard of the dropped segment"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(planned, vec![SegmentIndex(1)]);
    assert!(matches!(client.call(abort()).await, Ok(Response::Ok)));
    // The director's table still lists segments 0 and 2 (an ingest given up takes its
    // segments out of it before it answers): a begin after it plans segment 1 alone again.
    assert_eq!(
        plan_of(client.call(begin()).await)?,
        Some(vec![SegmentIndex(1)])
    );
    assert!(matches!(client.call(abort()).await, Ok(Response::Ok)));
    assert!(kept_file.exists(), "a repair given up removed a segment");

    // `vodmesh ingest` of the same file repairs it, and the program plays byte for byte (so
    // segments 0 and 2 were not removed by the aborts).
    let repaired = ingest::IngestOptions {
        segment_size: MIB as u64,
        ..ingest_options(&station, &data.join("identity.key"), "repaired", &source)
    };
    let info = ingest::run(&repaired).await?;
    assert_eq!((info.program, info.segments), (program, 3));
    let mut out = Vec::new();
    play_max(station.addr(), &issuer, program, &mut out).await?;
    assert!(out == bytes, "the repaired program differs");

    // Whole again: an ingest of it is refused.
    let Err(error) = ingest::run(&repaired).await else {
        anyhow::bail!("an ingest of a whole program of the catalog went through");
    };
    assert!(
        error
            .to_string()
            .contains("already in the catalog, every segment of it held here"),
        "{error:#}"
    );
    station.shutdown().await;
    Ok(())
}

/// An admin's `IngestBegin` and `IngestAbort` of `content` (no publish time, no replica),
/// each with a fresh proof for `director`.
struct AdminAsks<'a> {
    key: &'a libp2p::identity::Keypair,
    content: &'a vodmesh_proto::manifest::ManifestContent,
    director: libp2p::PeerId,
}

impl AdminAsks<'_> {
    fn proof(&self, op: &str) -> vodmesh_proto::signed::Signed {
        let program = self.content.program_id();
        let now = vodmesh_proto::time::now_ms();
        vodmesh_proto::admin::prove(self.key, op, program.as_bytes(), self.director, now)
    }

    fn begin(&self) -> Request {
        Request::IngestBegin {
            content: self.content.clone(),
            publish_at_ms: None,
            replicas: 0,
            admin: self.proof("ingest"),
        }
    }

    fn abort(&self) -> Request {
        Request::IngestAbort {
            program: self.content.program_id(),
            admin: self.proof("ingest-abort"),
        }
    }
}
