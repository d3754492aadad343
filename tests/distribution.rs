//! Distribution (claim 12): `--replicas 2` puts complete, verified copies of a 64 MiB program
//! on two other stations, following the claim's messages in order; the registry then lists
//! those stations as holders. A station too small for a program is passed over for one with
//! room, a shortfall is counted, and a `Replicate` that does not fit is refused at once.

use std::collections::BTreeSet;
use std::time::Duration;

use libp2p::PeerId;
use vodmesh_client::DirectorClient;
use vodmesh_client::director::DirectorError;
use vodmesh_node::Station;
use vodmesh_node::events::{Event, Kind};
use vodmesh_proto::director::{ErrorCode, Request, Response};
use vodmesh_proto::{ProgramId, SegmentIndex};
use vodmesh_tests::media::random_file;
use vodmesh_tests::stored::{engine_segments, held_elsewhere};
use vodmesh_tests::swarm::{self, counter, ingest_options, init_logging, wait_listed};
use vodmesh_tests::wait;
use vodmesh_tools::ingest::{self, IngestOptions};

/// Position of the first event matching `f`.
fn pos(log: &[Event], f: impl Fn(&Event) -> bool) -> Option<usize> {
    log.iter().position(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_follow_the_claim_12_sequence() -> anyhow::Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    // The home station is the auth station; the others are enrolled with it, so their
    // engines hold engine tokens (claims 24, 25: no copy without one).
    let home_dir = dir.path().join("home");
    let home = swarm::station(&home_dir).home().engines(3).start().await?;
    let mut others = Vec::new();
    for name in ["a", "b", "c"] {
        let station = swarm::station(dir.path().join(name)).engines(2);
        others.push(station.enrolled_with(&home, &home_dir).start().await?);
    }
    every_station_listed(&home, &others).await?;

    let source = dir.path().join("program.bin");
    let bytes = random_file(&source, 64 * 1024 * 1024, 12)?;
    let sink = vodmesh_node::events::sink();
    for s in std::iter::once(&home).chain(&others) {
        s.send_events_to(&sink);
    }
    let mut events = sink.subscribe();
    let key = home_dir.join("identity.key");
    let info = ingest::run(&IngestOptions {
        replicas: 2,
        ..ingest_options(&home, &key, "replicated", &source)
    })
    .await?;
    let program = info.program;
    assert_eq!(info.segments, 16);

    // Collect events until two stations report a complete replica, and each of them has
    // provided the program and tabled every segment (copy-done reaches the directors' tables
    // asynchronously).
    let mut log: Vec<Event> = Vec::new();
    let of = |log: &[Event], peer: PeerId, kind: Kind| {
        log.iter()
            .filter(|e| e.program == program && e.peer == peer && e.kind == kind)
            .map(|e| e.segment)
            .collect::<BTreeSet<_>>()
    };
    let complete = |log: &[Event]| {
        log.iter()
            .filter(|e| e.program == program && e.kind == Kind::ReplicaComplete)
            .map(|e| e.peer)
            .collect::<BTreeSet<_>>()
    };
    wait::events(
        &mut events,
        &mut log,
        "two complete replicas, each provided and every segment tabled",
        Duration::from_secs(120),
        |log| {
            let targets = complete(log);
            targets.len() == 2
                && targets.iter().all(|t| {
                    !of(log, *t, Kind::Provided).is_empty() && of(log, *t, Kind::Tabled).len() == 16
                })
        },
    )
    .await?;
    let targets = complete(&log);

    // The registry lists the two stations as holders, and so does `vodmesh programs`.
    let mut want = targets.clone();
    want.insert(home.peer_id());
    wait::until(
        "holders in the registry",
        Duration::from_secs(30),
        || async {
            let holders: BTreeSet<PeerId> = home
                .registry()
                .holders(program)
                .await?
                .into_iter()
                .collect();
            Ok(holders == want)
        },
    )
    .await?;
    let programs = vodmesh_tools::programs::fetch(home.addr(), Some(&key)).await?;
    let stations: BTreeSet<PeerId> = programs[0].stations.iter().copied().collect();
    assert_eq!(stations, want);

    // What else arrived meanwhile (a second `Provided` would be a fault).
    while let Ok(e) = events.try_recv() {
        log.push(e);
    }
    log.retain(|e| e.program == program);
    assert!(
        !targets.contains(&home.peer_id()),
        "the home is not a target"
    );

    let engine_of =
        |station: &Station, peer: &PeerId| station.engines.iter().any(|e| e.peer_id == *peer);
    for target in &targets {
        let t = *target;
        let station = others
            .iter()
            .find(|s| s.peer_id() == t)
            .ok_or_else(|| anyhow::anyhow!("unknown target"))?;
        let sent = pos(&log, |e| {
            e.peer == home.peer_id() && e.kind == Kind::ReplicateSent { target: t }
        })
        .ok_or_else(|| anyhow::anyhow!("no Replicate sent to {t}"))?;
        let received = pos(&log, |e| {
            e.peer == t
                && matches!(e.kind, Kind::ReplicateReceived { source } if source == home.peer_id())
        })
        .ok_or_else(|| anyhow::anyhow!("Replicate not received"))?;
        let manifest = pos(&log, |e| e.peer == t && e.kind == Kind::ManifestVerified)
            .ok_or_else(|| anyhow::anyhow!("manifest not verified"))?;
        assert!(sent < received && received < manifest);
        let mut first_tabled = usize::MAX;
        for i in (0..16).map(SegmentIndex) {
            let at = |f: &dyn Fn(&Event) -> bool| {
                pos(&log, |e| e.segment == Some(i) && f(e))
                    .ok_or_else(|| anyhow::anyhow!("segment {i}: an event is missing"))
            };
            let asked = at(&|e| e.peer == t && e.kind == Kind::LocateAsked)?;
            let located = log
                .iter()
                .find(|e| {
                    e.peer == t && e.segment == Some(i) && matches!(e.kind, Kind::Located { .. })
                })
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("segment {i} not located"))?;
            let Kind::Located {
                engine: source_engine,
            } = located.kind
            else {
                unreachable!()
            };
            assert!(
                engine_of(&home, &source_engine),
                "the source engine is the home's"
            );
            let located_at = at(&|e| e.peer == t && matches!(e.kind, Kind::Located { .. }))?;
            let directed = log
                .iter()
                .position(|e| {
                    e.peer == t
                        && e.segment == Some(i)
                        && matches!(e.kind, Kind::FetchDirected { .. })
                })
                .ok_or_else(|| anyhow::anyhow!("segment {i}: fetch not directed"))?;
            let Kind::FetchDirected { engine: mine } = log[directed].kind.clone() else {
                unreachable!()
            };
            assert!(
                engine_of(station, &mine),
                "one of the target's own engines fetches"
            );
            let served =
                at(&|e| e.peer == source_engine && e.kind == Kind::CopyServed { to: mine })?;
            let copied = at(&|e| {
                e.peer == mine
                    && e.kind
                        == Kind::Copied {
                            from: source_engine,
                        }
            })?;
            let tabled = at(&|e| e.peer == t && e.kind == Kind::Tabled)?;
            assert!(
                asked < located_at
                    && located_at < directed
                    && directed < served
                    && served < copied
                    && copied < tabled,
                "segment {i}: locate {asked} < located {located_at} < fetch {directed} < serve {served} < copied {copied} < tabled {tabled}"
            );
            assert!(manifest < asked);
            first_tabled = first_tabled.min(tabled);
        }
        let provided = pos(&log, |e| e.peer == t && e.kind == Kind::Provided)
            .ok_or_else(|| anyhow::anyhow!("{t} never provided the program"))?;
        assert!(first_tabled < provided, "provided on the first copy-done");
        assert_eq!(
            log.iter()
                .filter(|e| e.peer == t && e.kind == Kind::Provided)
                .count(),
            1
        );
    }

    // The copies are complete and verified (read back through each store, which verifies),
    // evictable on the targets, and equal the source.
    let dirs: Vec<(PeerId, std::path::PathBuf)> = others
        .iter()
        .zip(["a", "b", "c"])
        .map(|(s, n)| (s.peer_id(), dir.path().join(n)))
        .collect();
    home.shutdown().await;
    for s in others {
        s.shutdown().await;
    }
    for (peer, data) in dirs {
        let (segments, _) = engine_segments(&data, 2, program).await?;
        if targets.contains(&peer) {
            assert_eq!(segments.len(), 16, "a complete copy");
            let joined: Vec<u8> = segments.into_values().flatten().collect();
            assert!(joined == bytes, "the copy equals the source");
            assert!(
                held_elsewhere(&data, 2, program).await?,
                "copies are evictable"
            );
        } else {
            assert!(segments.is_empty(), "the third station holds nothing");
        }
    }
    Ok(())
}

const MIB: usize = 1024 * 1024;

/// The directors that report `kind` for `program` in `log`.
fn reporting(log: &[Event], program: ProgramId, kind: &Kind) -> BTreeSet<PeerId> {
    (log.iter())
        .filter(|e| e.program == program && e.kind == *kind)
        .map(|e| e.peer)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_too_small_for_a_program_is_passed_over_for_one_with_room() -> anyhow::Result<()>
{
    init_logging();
    let dir = tempfile::tempdir()?;
    let home_dir = dir.path().join("home");
    let home = swarm::station(&home_dir).home().start().await?;
    // `small` is alone in its region, so it is asked early, and holds 2 MiB; c and d are
    // bounded only by their disks.
    let mut others = Vec::new();
    for (name, region, capacity) in [("small", "eu", 2 * MIB), ("c", "us", 0), ("d", "us", 0)] {
        let station = swarm::station(dir.path().join(name)).with(|c| {
            c.region = Some(region.into());
            c.capacity = capacity as u64;
        });
        others.push(station.enrolled_with(&home, &home_dir).start().await?);
    }
    let (small, c, d) = (
        others[0].peer_id(),
        others[1].peer_id(),
        others[2].peer_id(),
    );
    every_station_listed(&home, &others).await?;
    let sink = vodmesh_node::events::sink();
    for s in std::iter::once(&home).chain(&others) {
        s.send_events_to(&sink);
    }
    let mut events = sink.subscribe();
    let mut log: Vec<Event> = Vec::new();
    let key = home_dir.join("identity.key");
    // Ingests `len` bytes with `replicas` and waits until the content manager placed them
    // and as many stations hold a complete replica as it placed.
    let mut distribute = async |title: &str, len: usize, replicas: u32| {
        let source = dir.path().join(format!("{title}.bin"));
        random_file(&source, len, u64::from(replicas) + len as u64)?;
        let program = ingest::run(&IngestOptions {
            replicas,
            segment_size: 256 * 1024,
            ..ingest_options(&home, &key, title, &source)
        })
        .await?
        .program;
        let what = format!("{title}: its replicas placed and complete");
        wait::events(
            &mut events,
            &mut log,
            &what,
            Duration::from_secs(60),
            |log| {
                let placed = log.iter().find_map(|e| match e.kind {
                    Kind::ReplicasPlaced { placed, .. } if e.program == program => Some(placed),
                    _ => None,
                });
                placed.is_some_and(|p| {
                    reporting(log, program, &Kind::ReplicaComplete).len() == p as usize
                })
            },
        )
        .await?;
        anyhow::Ok(program)
    };

    // Control: a program that fits goes to the small station first (a new region).
    let fits = distribute("fits", MIB, 2).await?;
    // One that does not: the small station is passed over, c and d take it.
    let big = distribute("big", 4 * MIB, 2).await?;
    // Three wanted, two stations with room: one is unplaced, and counted.
    let short = distribute("short", 3 * MIB, 3).await?;
    let complete = |p| reporting(&log, p, &Kind::ReplicaComplete);
    assert!(complete(fits).contains(&small), "{:?}", complete(fits));
    assert_eq!(complete(big), BTreeSet::from([c, d]));
    assert_eq!(complete(short), BTreeSet::from([c, d]));
    let home_told = |p, (wanted, placed)| {
        let kind = Kind::ReplicasPlaced { wanted, placed };
        reporting(&log, p, &kind) == BTreeSet::from([home.peer_id()])
    };
    assert!(home_told(fits, (2, 2)) && home_told(big, (2, 2)) && home_told(short, (3, 2)));
    let sent_small = Kind::ReplicateSent { target: small };
    assert!(
        reporting(&log, big, &sent_small).is_empty(),
        "passed over by its record"
    );
    wait::until(
        "one replica counted unplaced",
        Duration::from_secs(10),
        || async { Ok(counter(&home, "vodmesh_replicas_unplaced_total")? == 1) },
    )
    .await?;

    // A `Replicate` larger than the small station's room is refused at once and counted; one
    // that fits, and one of unknown size (an older content manager), are taken.
    let home_key = vodmesh_node::identity::load_or_create(&key)?;
    let client = DirectorClient::connect(others[0].addr(), Some(home_key)).await?;
    let replicate = |program, size| Request::Replicate {
        program,
        source: home.peer_id(),
        source_addrs: vec![home.addr().clone()],
        size,
    };
    let declined = async || match client.call(Request::Activity).await? {
        Response::Activity(a) => anyhow::Ok(a.copies_declined),
        other => anyhow::bail!("not an activity: {other:?}"),
    };
    let before = declined().await?;
    let (too_big, fitting, unknown) = (ProgramId([1; 32]), ProgramId([2; 32]), ProgramId([3; 32]));
    match client.call(replicate(too_big, 3 * MIB as u64)).await {
        Err(DirectorError::Refused(e)) => {
            assert_eq!(e.code, ErrorCode::Full, "{e}");
            assert!(e.message.starts_with("no room"), "{e}");
        }
        other => anyhow::bail!("a replica too big for the station was not refused: {other:?}"),
    }
    assert_eq!(
        client.call(replicate(fitting, MIB as u64)).await?,
        Response::Ok
    );
    assert_eq!(client.call(replicate(unknown, 0)).await?, Response::Ok);
    assert_eq!(declined().await?, before + 1);

    // What the stores hold: the big program whole on c and d, nothing of it on the small
    // station; the small station's journal holds the replicas it took, not the one refused.
    home.shutdown().await;
    for s in others {
        s.shutdown().await;
    }
    for (name, holds) in [("small", 0), ("c", 16), ("d", 16)] {
        let (segments, _) = engine_segments(&dir.path().join(name), 1, big).await?;
        assert_eq!(segments.len(), holds, "{name}");
    }
    let kept = vodmesh_node::content::Catalog::open(&dir.path().join("small/kept.redb"))?;
    let journaled: BTreeSet<ProgramId> =
        kept.open_replicas()?.into_iter().map(|(p, _)| p).collect();
    assert_eq!(journaled, BTreeSet::from([fitting, unknown]));
    Ok(())
}

/// A `Replicate` asked of a station with no engine up (its engine processes not attached yet)
/// is taken and journaled, to start when an engine comes: before, it was journaled and
/// answered `no engine up`, so the content manager placed the replica elsewhere too and this
/// station copied it all the same later. The same station draining refuses one, and
/// journals nothing of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_is_taken_with_no_engine_up_and_refused_while_draining() -> anyhow::Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let home_dir = dir.path().join("home");
    let home = swarm::station(&home_dir).home().start().await?;
    let bare = swarm::station(dir.path().join("bare"))
        .engines(0)
        .enrolled_with(&home, &home_dir)
        .start()
        .await?;
    let key = vodmesh_node::identity::load_or_create(&home_dir.join("identity.key"))?;
    let client = DirectorClient::connect(bare.addr(), Some(key)).await?;
    let asked = |program| Request::Replicate {
        program,
        source: home.peer_id(),
        source_addrs: vec![home.addr().clone()],
        size: MIB as u64,
    };
    let (program, while_draining) = (ProgramId([4; 32]), ProgramId([5; 32]));
    assert_eq!(client.call(asked(program)).await?, Response::Ok);
    bare.drain(Duration::ZERO).await;
    match client.call(asked(while_draining)).await {
        Err(DirectorError::Refused(e)) => {
            assert_eq!(e.code, ErrorCode::Unavailable, "{e}");
            assert!(e.message.contains("draining"), "{e}");
        }
        other => anyhow::bail!("a draining station took a replica: {other:?}"),
    }
    bare.shutdown().await;
    home.shutdown().await;
    let kept = vodmesh_node::content::Catalog::open(&dir.path().join("bare/kept.redb"))?;
    let journaled: Vec<ProgramId> = kept.open_replicas()?.into_iter().map(|(p, _)| p).collect();
    assert_eq!(journaled, vec![program]);
    Ok(())
}

/// Waits until the home's director lists itself and every one of `others`.
async fn every_station_listed(home: &Station, others: &[Station]) -> anyhow::Result<()> {
    let all: BTreeSet<PeerId> = std::iter::once(home.peer_id())
        .chain(others.iter().map(Station::peer_id))
        .collect();
    wait_listed(
        "every station listed",
        &[home],
        &all,
        Duration::from_secs(30),
    )
    .await
}
