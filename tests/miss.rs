//! Cache misses (claims 14, 15): a station asked for a segment it does not hold copies it from
//! the cheapest holding station and streams it to the console while it arrives; when that
//! source dies mid-copy, the copy resumes from the next cheapest at the first missing byte,
//! and the console's bytes still match the source.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use futures::AsyncReadExt;
use libp2p::PeerId;
use vodmesh_node::Station;
use vodmesh_node::events::Kind;
use vodmesh_proto::SegmentId;
use vodmesh_proto::stream::StreamReply;
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::Issuer;
use vodmesh_tests::console::{Console, credentials};
use vodmesh_tests::media::random_file;
use vodmesh_tests::swarm::{self, ingest_options, init_logging};
use vodmesh_tests::wait;
use vodmesh_tools::ingest::{self, IngestOptions};

const MIB: usize = 1024 * 1024;
/// How long an event of the flow may take.
const MINUTE: Duration = Duration::from_secs(60);
const TOKYO: (f64, f64) = (35.68, 139.69);
const BERLIN: (f64, f64) = (52.52, 13.40);
const PARIS: (f64, f64) = (48.86, 2.35);
const NEW_YORK: (f64, f64) = (40.71, -74.01);

/// What differs between the test's stations.
struct Site {
    name: &'static str,
    coords: (f64, f64),
    bandwidth_mbps: u32,
    copy_rate_mbps: u32,
}

/// The home station (`auth: None`) is the auth station and content manager; the others are
/// enrolled with it. Every station also trusts `consoles`, the test's console token issuer.
async fn station(
    root: &Path,
    site: Site,
    auth: Option<&Station>,
    consoles: &Issuer,
) -> Result<Station> {
    let spec = swarm::station(root.join(site.name))
        .engines(2)
        .trusting(consoles)
        .with(|c| {
            c.coords = Some(site.coords);
            c.bandwidth_mbps = site.bandwidth_mbps;
            c.copy_rate_mbps = site.copy_rate_mbps;
        });
    match auth {
        Some(auth) => spec.enrolled_with(auth, &root.join("home")).start().await,
        None => spec.home().start().await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_is_filled_from_the_cheapest_holder_and_survives_its_death() -> Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let consoles = Issuer::generate();
    // The home is far away on a thin link; station a is near, on a fat link advertised, but
    // serves copies at 16 Mbit/s (so a copy from it lasts about a second).
    let home = station(
        root,
        Site {
            name: "home",
            coords: TOKYO,
            bandwidth_mbps: 50,
            copy_rate_mbps: 0,
        },
        None,
        &consoles,
    )
    .await?;
    let a = station(
        root,
        Site {
            name: "a",
            coords: BERLIN,
            bandwidth_mbps: 1000,
            copy_rate_mbps: 16,
        },
        Some(&home),
        &consoles,
    )
    .await?;
    wait::until("a in the swarm", Duration::from_secs(30), || async {
        Ok(home.swarm().await?.len() == 2)
    })
    .await?;

    // A program of two 2 MiB segments, replicated to a.
    let source = root.join("program.bin");
    let bytes = random_file(&source, 4 * MIB, 31)?;
    let sink = vodmesh_node::events::sink();
    home.send_events_to(&sink);
    a.send_events_to(&sink);
    let mut events = sink.subscribe();
    let mut log = Vec::new();
    let key = root.join("home").join("identity.key");
    let info = ingest::run(&IngestOptions {
        publish_at_ms: Some(now_ms()),
        replicas: 1,
        segment_size: 2 * MIB as u64,
        ..ingest_options(&home, &key, "missed", source)
    })
    .await?;
    let program = info.program;
    wait::event(&mut events, &mut log, "a's replica", MINUTE, |e| {
        e.program == program && e.peer == a.peer_id() && e.kind == Kind::ReplicaComplete
    })
    .await?;
    wait::until("a listed as a holder", Duration::from_secs(30), || async {
        let holders = home.registry().holders(program).await?;
        Ok(holders.contains(&a.peer_id()) && holders.contains(&home.peer_id()))
    })
    .await?;

    // Two more stations: c (near a), where the console asks, and d, far away.
    let c = station(
        root,
        Site {
            name: "c",
            coords: PARIS,
            bandwidth_mbps: 1000,
            copy_rate_mbps: 0,
        },
        Some(&home),
        &consoles,
    )
    .await?;
    let d = station(
        root,
        Site {
            name: "d",
            coords: NEW_YORK,
            bandwidth_mbps: 100,
            copy_rate_mbps: 0,
        },
        Some(&home),
        &consoles,
    )
    .await?;
    c.send_events_to(&sink);
    d.send_events_to(&sink);

    // A console asks c, which holds nothing, for segment 0: c answers at once with one of its
    // own engines, whose copy is filling, and chose a (cheaper than the home) as the source.
    let console = Console::connect(c.addr(), Some(&consoles)).await?;
    let location = console.locate(program, 0, false).await?;
    assert_eq!(location.director, c.peer_id());
    assert!(location.filling);
    let c_engines: BTreeSet<PeerId> = c.engines.iter().map(|e| e.peer_id).collect();
    assert!(c_engines.contains(&location.engine));
    let chosen = wait::event(&mut events, &mut log, "c's source choice", MINUTE, |e| {
        e.peer == c.peer_id() && matches!(e.kind, Kind::SourceChosen { .. })
    })
    .await?;
    assert!(
        matches!(chosen.kind, Kind::SourceChosen { station, .. } if station == a.peer_id()),
        "the cheaper holder (a) is chosen: {chosen:?}"
    );

    // The console streams the segment while it arrives; a dies after the first bytes.
    console.reach(location.engine, &location.addrs).await?;
    let request = console.request(SegmentId::new(program, 0), 0, 0);
    let (mut s, reply) = console.ask(location.engine, &request).await?;
    let StreamReply::Streaming { size, .. } = reply else {
        anyhow::bail!("refused: {reply:?}");
    };
    assert_eq!(size, 2 * MIB as u64);
    let mut got = vec![0u8; 256 * 1024];
    s.read_exact(&mut got).await?;
    a.shutdown().await;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await?;
    got.extend(rest);
    assert!(got == bytes[..2 * MIB], "the console's bytes differ");

    // The copy resumed at the home from a byte past what the console had read.
    let home_engines: BTreeSet<PeerId> = home.engines.iter().map(|e| e.peer_id).collect();
    let resumed = wait::event(&mut events, &mut log, "the copy to resume", MINUTE, |e| {
        e.peer == location.engine && matches!(e.kind, Kind::CopyResumed { .. })
    })
    .await?;
    match resumed.kind {
        Kind::CopyResumed { from, offset } => {
            assert!(home_engines.contains(&from), "resumed from the home");
            assert!(offset >= 256 * 1024, "resumed from byte {offset}");
        }
        other => anyhow::bail!("unexpected {other:?}"),
    }
    wait::until("c's counts", Duration::from_secs(20), || async {
        let act = console.activity().await?;
        Ok(act.misses == 1 && act.source_failovers == 1)
    })
    .await?;
    // The registry learns the new holder.
    wait::until("c listed as a holder", Duration::from_secs(30), || async {
        Ok(home
            .registry()
            .holders(program)
            .await?
            .contains(&c.peer_id()))
    })
    .await?;

    // The whole program plays from d, which holds nothing either: each segment is a miss
    // filled from the stations still holding it.
    let credentials = credentials(&consoles)?;
    let mut played = Vec::new();
    let stats = vodmesh_console::play::play(
        d.addr(),
        &credentials,
        &program.to_string(),
        0.0,
        vodmesh_console::play::Speed::Max,
        &mut played,
        None,
        |_| {},
    )
    .await?;
    assert!(played == bytes, "played from d: bytes differ");
    // Each segment was a miss that d filled: its engines copied both in. The console is
    // served from them, but not asserted to be: at `--speed max` a fetch that brought nothing
    // for 2 s is hedged at another holder (console-client's hedge.rs), and in one full-suite
    // run on a loaded machine both segments were won by such hedges at another station.
    let d_engines: BTreeSet<PeerId> = d.engines.iter().map(|e| e.peer_id).collect();
    let copied_at_d = |log: &[vodmesh_node::events::Event], index: u32| {
        log.iter().any(|e| {
            d_engines.contains(&e.peer)
                && e.segment == Some(vodmesh_proto::SegmentIndex(index))
                && matches!(e.kind, Kind::Copied { .. })
        })
    };
    wait::events(
        &mut events,
        &mut log,
        "d's copy of each segment",
        MINUTE,
        |log| (0..2).all(|index| copied_at_d(log, index)),
    )
    .await?;
    println!("the play from d was served by {:?}", stats.stations);
    for s in [home, c, d] {
        s.shutdown().await;
    }
    Ok(())
}

/// Claim 21: a console that seeks into a segment past what a still-filling copy holds is not
/// made to wait for a slow copy, nor given an error: the filling engine hands it back, the
/// director names an engine with the whole segment, and that engine serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seek_past_a_slow_copy_swaps_to_a_complete_one() -> Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let consoles = Issuer::generate();
    // The home serves copies at 1 Mbit/s: the copy reaches the seek's byte 1.5 MB after 12 s,
    // far longer than a console takes to ask even on a loaded machine (at 8 Mbit/s the copy
    // outran a console that took 2 s to start, and nothing was left to swap).
    let home = station(
        root,
        Site {
            name: "home",
            coords: BERLIN,
            bandwidth_mbps: 1000,
            copy_rate_mbps: 1,
        },
        None,
        &consoles,
    )
    .await?;
    let c = station(
        root,
        Site {
            name: "c",
            coords: PARIS,
            bandwidth_mbps: 1000,
            copy_rate_mbps: 0,
        },
        Some(&home),
        &consoles,
    )
    .await?;
    let source = root.join("program.bin");
    // Segment 0 of 2 MiB, segment 1 of 256 KiB: c copies the short second one in 2 s.
    let bytes = random_file(&source, 2 * MIB + MIB / 4, 32)?;
    let key = root.join("home").join("identity.key");
    let info = ingest::run(&IngestOptions {
        publish_at_ms: Some(now_ms()),
        segment_size: 2 * MIB as u64,
        bitrate: 8_000_000,
        ..ingest_options(&home, &key, "slow", source)
    })
    .await?;
    wait::until("c sees the home", Duration::from_secs(30), || async {
        Ok(c.swarm().await?.len() == 2)
    })
    .await?;

    // Start 1.5 s in: three quarters into segment 0 (2.1 s of media), which c must copy.
    let credentials = credentials(&consoles)?;
    let mut played = Vec::new();
    let stats = vodmesh_console::play::play(
        c.addr(),
        &credentials,
        &info.program.to_string(),
        1.5,
        vodmesh_console::play::Speed::Max,
        &mut played,
        None,
        |_| {},
    )
    .await?;
    assert_eq!(stats.swaps, 1, "{stats:?}");
    assert!(stats.verified);
    // 1.5 s at 8 Mbit/s is byte 1 500 000 (to the millisecond's rounding).
    let from = bytes.len() - played.len();
    assert!(
        (1_499_000..=1_501_000).contains(&from),
        "played from byte {from}"
    );
    assert!(
        played == bytes[from..],
        "played bytes differ from the source"
    );
    // The swapped segment came from the home, the next from c's own (filling) copy.
    assert!(stats.stations.contains(&home.peer_id().to_string()));
    let director = Console::connect(c.addr(), None).await?;
    assert_eq!(director.activity().await?.swaps, 1);
    for s in [home, c] {
        s.shutdown().await;
    }
    Ok(())
}

/// A station in Berlin on a link of `bandwidth_mbps`, serving copies unpaced.
fn berlin(name: &'static str, bandwidth_mbps: u32) -> Site {
    Site {
        name,
        coords: BERLIN,
        bandwidth_mbps,
        copy_rate_mbps: 0,
    }
}

/// Segments of the two tests of a wrong source: below what a throughput measurement needs, so
/// the costs stay the advertised ones.
const SMALL_SEGMENT: usize = 64 * 1024;

/// A home (the auth station, on a slow link: the dearest source, dear enough, 0.5 s a
/// segment, that round-trip times measured on a loaded machine do not reorder the two) and a
/// cheap station `name` holding a replica of a program of `segments` segments of
/// [`SMALL_SEGMENT`] ingested at the home: the stations, the program's bytes and its id.
async fn replicated_cheap(
    root: &Path,
    name: &'static str,
    consoles: &Issuer,
    segments: usize,
) -> Result<(Station, Station, Vec<u8>, vodmesh_proto::ProgramId)> {
    let home = station(root, berlin("home", 1), None, consoles).await?;
    let cheap = station(root, berlin(name, 1000), Some(&home), consoles).await?;
    let mut cheap_events = cheap.subscribe();
    let source = root.join(format!("{name}.bin"));
    let bytes = random_file(&source, segments * SMALL_SEGMENT, 41)?;
    let key = root.join("home").join("identity.key");
    let program = ingest::run(&IngestOptions {
        publish_at_ms: Some(now_ms()),
        replicas: 1,
        segment_size: SMALL_SEGMENT as u64,
        ..ingest_options(&home, &key, name, &source)
    })
    .await?
    .program;
    let replica = |e: &vodmesh_node::events::Event| e.kind == Kind::ReplicaComplete;
    let what = format!("{name}'s replica");
    wait::event(&mut cheap_events, &mut Vec::new(), &what, MINUTE, replica).await?;
    Ok((home, cheap, bytes, program))
}

/// A member that serves wrong bytes (issue 19): the liar holds a replica whose bytes were
/// replaced (its own store believes them) and is the cheapest source by far. A miss at a
/// third station tries it first, drops its bytes when they fail verification and fills the
/// segment from the honest home at once (the console gets the right bytes); the liar is
/// penalised, and the next miss does not try it first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_whose_bytes_fail_verification_is_dropped_and_tried_last_next_time() -> Result<()>
{
    use vodmesh_tests::stored::forge_segments;
    init_logging();
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let consoles = Issuer::generate();
    let (home, liar, bytes, program) = replicated_cheap(root, "liar", &consoles, 3).await?;
    let liar_peer = liar.peer_id();
    liar.shutdown().await;
    assert_eq!(forge_segments(&root.join("liar"), 2, program).await?, 3);
    let liar = station(root, berlin("liar", 1000), Some(&home), &consoles).await?;
    let seeker = station(root, berlin("seeker", 1000), Some(&home), &consoles).await?;
    wait::until("both holders seen", MINUTE, || async {
        let holders = seeker.registry().holders(program).await?;
        Ok(holders.contains(&liar_peer) && holders.contains(&home.peer_id()))
    })
    .await?;
    // The restarted liar names its engines for both segments, as it will to the seeker.
    let seeker_key = root.join("seeker").join("identity.key");
    let seeker_key = vodmesh_node::identity::load_or_create(&seeker_key)?;
    let asking = vodmesh_client::DirectorClient::connect(liar.addr(), Some(seeker_key)).await?;
    // Each ask bounded: in one full-suite run under load an ask went unanswered until the
    // client's 60 s time-out (not explained; noted in the closing note), which is not what
    // this test is about. A later ask is answered.
    wait::until("the liar naming its engines", MINUTE, || async {
        for index in 0..2 {
            let request = vodmesh_proto::director::Request::LocateCopy {
                program,
                index: index.into(),
                engines: vec![],
            };
            let answer = tokio::time::timeout(Duration::from_secs(10), asking.call(request))
                .await
                .ok()
                .and_then(Result::ok);
            if !matches!(
                answer,
                Some(vodmesh_proto::director::Response::Located { .. })
            ) {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await?;

    let mut events = seeker.subscribe();
    let mut log = Vec::new();
    let console = Console::connect(seeker.addr(), Some(&consoles)).await?;
    let at = |index: u32| {
        move |e: &vodmesh_node::events::Event| e.segment == Some(vodmesh_proto::SegmentIndex(index))
    };
    let chosen = |index: u32| {
        move |e: &vodmesh_node::events::Event| {
            at(index)(e) && matches!(e.kind, Kind::SourceChosen { .. })
        }
    };
    let location = console.locate(program, 0, false).await?;
    assert_eq!(location.director, seeker.peer_id(), "a copy at the seeker");
    let first = wait::event(&mut events, &mut log, "source 0", MINUTE, chosen(0)).await?;
    assert!(
        matches!(first.kind, Kind::SourceChosen { station, .. } if station == liar_peer),
        "the liar is the cheapest: {first:?}"
    );
    let penalised = |e: &vodmesh_node::events::Event| matches!(e.kind, Kind::SourcePenalised { station, failures: 1 } if station == liar_peer);
    wait::event(
        &mut events,
        &mut log,
        "the liar penalised",
        MINUTE,
        penalised,
    )
    .await?;
    let tabled = |e: &vodmesh_node::events::Event| at(0)(e) && e.kind == Kind::Tabled;
    wait::event(&mut events, &mut log, "segment 0 copied", MINUTE, tabled).await?;
    console.reach(location.engine, &location.addrs).await?;
    let got = console
        .stream(location.engine, SegmentId::new(program, 0))
        .await?;
    assert!(
        got == bytes[..SMALL_SEGMENT],
        "the copy holds the home's bytes"
    );

    // The next miss does not try the liar first.
    console.locate(program, 1, false).await?;
    let next = wait::event(&mut events, &mut log, "source 1", MINUTE, chosen(1)).await?;
    assert!(
        matches!(next.kind, Kind::SourceChosen { station, .. } if station == home.peer_id()),
        "{next:?}"
    );
    Ok(())
}

/// A source whose disk rotted in the middle of a segment (its store's tree is still the true
/// one, so it serves the copy verified, with the rotten byte): the copy checks each 16 KiB
/// group as it lands, keeps the groups before the rotten one, and resumes at the next source
/// from that group's first byte, not from nothing; the source is penalised as a liar, and the
/// copy holds the true bytes. (Before verified copies, the wrong byte was found only at the
/// end, and the whole segment was copied again: no resume.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_keeps_the_groups_before_a_rotten_one_and_resumes_after_them() -> Result<()> {
    use vodmesh_proto::verified::GROUP;
    use vodmesh_tests::stored::tamper_on_disk;
    init_logging();
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let consoles = Issuer::generate();
    let (home, rotten, bytes, program) = replicated_cheap(root, "rotten", &consoles, 1).await?;
    // A byte of the third group rots on whichever engine holds the replica.
    let segment = SegmentId::new(program, 0);
    let rot_at = 2 * GROUP as usize + 1000;
    let rotted = (0..2)
        .filter(|&engine| tamper_on_disk(&root.join("rotten"), engine, segment, rot_at).is_ok())
        .count();
    assert_eq!(
        rotted, 1,
        "one engine of the rotten station holds the replica"
    );
    let seeker = station(root, berlin("seeker", 1000), Some(&home), &consoles).await?;
    wait::until("both holders seen", MINUTE, || async {
        let holders = seeker.registry().holders(program).await?;
        Ok(holders.contains(&rotten.peer_id()) && holders.contains(&home.peer_id()))
    })
    .await?;

    let mut events = seeker.subscribe();
    let mut log = Vec::new();
    let console = Console::connect(seeker.addr(), Some(&consoles)).await?;
    let location = console.locate(program, 0, false).await?;
    assert_eq!(location.director, seeker.peer_id(), "a copy at the seeker");
    let chosen = wait::event(&mut events, &mut log, "the source", MINUTE, |e| {
        matches!(e.kind, Kind::SourceChosen { .. })
    })
    .await?;
    assert!(
        matches!(chosen.kind, Kind::SourceChosen { station, .. } if station == rotten.peer_id()),
        "the rotten station is the cheapest: {chosen:?}"
    );
    let resumed = wait::event(&mut events, &mut log, "the copy to resume", MINUTE, |e| {
        e.peer == location.engine && matches!(e.kind, Kind::CopyResumed { .. })
    })
    .await?;
    let home_engines: BTreeSet<PeerId> = home.engines.iter().map(|e| e.peer_id).collect();
    match resumed.kind {
        Kind::CopyResumed { from, offset } => {
            assert!(home_engines.contains(&from), "resumed from the home");
            assert_eq!(
                offset,
                2 * GROUP,
                "resumed from the rotten group's first byte"
            );
        }
        other => anyhow::bail!("unexpected {other:?}"),
    }
    let penalised = |e: &vodmesh_node::events::Event| matches!(e.kind, Kind::SourcePenalised { station, failures: 1 } if station == rotten.peer_id());
    wait::event(
        &mut events,
        &mut log,
        "the rotten station penalised",
        MINUTE,
        penalised,
    )
    .await?;
    let tabled = |e: &vodmesh_node::events::Event| e.kind == Kind::Tabled;
    wait::event(&mut events, &mut log, "the segment copied", MINUTE, tabled).await?;
    console.reach(location.engine, &location.addrs).await?;
    let got = console.stream(location.engine, segment).await?;
    assert!(got == bytes, "the copy holds the true bytes");
    for s in [home, rotten, seeker] {
        s.shutdown().await;
    }
    Ok(())
}

/// A miss (a gather across the swarm and a copy into an engine) is started only for a
/// console whose token opens the program (audit gap G9): a peer with no token, or with the
/// token of an issuer the station does not trust, asking a station that lacks the segment is
/// refused, and nothing is copied for it. The control: a console with a token has the copy
/// made there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_is_started_only_for_a_console_whose_token_opens_the_program() -> Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let consoles = Issuer::generate();
    let (home, cheap, _, program) = replicated_cheap(root, "cheap", &consoles, 2).await?;
    let seeker = station(root, berlin("seeker", 100), Some(&home), &consoles).await?;
    let stranger = Issuer::generate();
    for (who, issuer) in [("no token", None), ("a stranger's token", Some(&stranger))] {
        let asking = Console::connect(seeker.addr(), issuer).await?;
        match asking.locate(program, 0, false).await {
            Err(e) => assert!(
                format!("{e:#}").contains("only for a console token that opens the program"),
                "{who}: {e:#}"
            ),
            Ok(location) => anyhow::bail!("{who}: a miss was started for it: {location:?}"),
        }
    }
    let director = Console::connect(seeker.addr(), None).await?;
    assert_eq!(director.activity().await?.misses, 0, "nothing was copied");
    let console = Console::connect(seeker.addr(), Some(&consoles)).await?;
    let location = console.locate(program, 0, false).await?;
    assert_eq!(location.director, seeker.peer_id(), "a copy at the seeker");
    assert_eq!(director.activity().await?.misses, 1);
    for s in [home, cheap, seeker] {
        s.shutdown().await;
    }
    Ok(())
}
