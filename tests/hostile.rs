//! Hostile peers (issue 20), through real `vodmesh-node` processes: what a peer that dials in
//! and misbehaves can hold of a station, each with the control case a well-behaved peer
//! gets.

use std::time::Duration;

use anyhow::{Context, Result};
use vodmesh_proto::ProgramId;
use vodmesh_proto::signed::Signed;
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::Issuer;
use vodmesh_tests::cli::{Ingest, Play};
use vodmesh_tests::console::{Console, wait_holds_all, wait_holds_all_as};
use vodmesh_tests::media::random_file;
use vodmesh_tests::process::Node;
use vodmesh_tests::replica::HomeAndReplica;
use vodmesh_tests::rogue::issuer_of;
use vodmesh_tests::{status, wait};

const MIB: usize = 1024 * 1024;

/// A stranger opens as many copy streams to the home's engine as it serves copies at once
/// (8), and sends nothing on them. Before, each held one of the 8 serve slots from the
/// moment it opened, with no deadline: the engine never served a copy again. Now the slot
/// is taken only once a request came and its token passed, so another station's miss is
/// still filled by a copy from that engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_copy_streams_do_not_stop_an_engine_serving_copies() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let home = Node::new(&dir.path().join("home"))
        .engines(1)
        .home()
        .start()?;
    let b = Node::new(&dir.path().join("b"))
        .engines(1)
        .enrolled_with(&home)?
        .start()?;
    let b_director = b.peer();
    let home_addr = home.addr.clone();
    wait::until_blocking(
        "the stations to find each other",
        Duration::from_secs(30),
        move || Ok(status::directors(&home_addr)?.contains(&b_director)),
    )
    .await?;
    let source = dir.path().join("program.bin");
    random_file(&source, 3 * MIB, 20)?;
    let program: ProgramId = Ingest::new(&home.addr, &home.key(), "idle", &source)
        .publish_now()
        .segment_size(MIB)
        .run()?
        .parse()?;

    let stranger = Console::connect(&home.addr, None).await?;
    let engine = home.engines()?.remove(0);
    stranger.reach(engine.peer_id, &engine.addrs).await?;
    let mut idle = Vec::new();
    for _ in 0..8 {
        let stream = stranger
            .client
            .open_stream(engine.peer_id, vodmesh_proto::copy::PROTOCOL)
            .await?;
        idle.push(stream);
    }

    // b holds none of it: asking b for each segment (as a console with a token: a miss is
    // started for no other) is a miss, filled by a copy from the home's engine while the
    // idle streams are still open.
    let issuer = issuer_of(&home.data)?;
    wait_holds_all_as(&b.addr, program, 3, Some(&issuer), Duration::from_secs(60)).await?;
    drop(idle);
    Ok(())
}

/// Any peer can open `/vodmesh/ingest/1` streams to an engine. One that sends nothing is
/// closed once its header is late (before, it was held, with its task, as long as the
/// connection lived: streams enough exhaust the engine). Control: a stream that sends its
/// header at once is answered (refused: no such push was announced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_stream_that_sends_nothing_is_closed_and_one_that_asks_is_answered() -> Result<()>
{
    use futures::AsyncReadExt;
    use vodmesh_proto::codec::{read_frame, write_frame};
    use vodmesh_proto::ingest::{self, IngestAck, IngestHeader};

    let dir = tempfile::tempdir()?;
    let home = Node::new(&dir.path().join("home"))
        .engines(1)
        .home()
        .start()?;
    let stranger = Console::connect(&home.addr, None).await?;
    let engine = home.engines()?.remove(0);
    stranger.reach(engine.peer_id, &engine.addrs).await?;
    let open = || {
        stranger
            .client
            .open_stream(engine.peer_id, ingest::PROTOCOL)
    };
    let mut silent = open().await?;

    let mut asking = open().await?;
    let header = IngestHeader {
        segment: vodmesh_proto::SegmentId::new(ProgramId([7; 32]), 0),
        hash: vodmesh_proto::SegmentHash::of(b"never announced"),
        size: 15,
    };
    write_frame(&mut asking, &header).await?;
    let answer: IngestAck = read_frame(&mut asking, ingest::MAX_FRAME).await?;
    assert!(
        matches!(&answer, IngestAck::Refused(why) if why.contains("not announced")),
        "{answer:?}"
    );

    // The engine ends the silent stream: its read returns (an end or a reset) rather than
    // waiting for the connection to go.
    let mut byte = [0u8; 1];
    let ended = tokio::time::timeout(Duration::from_secs(60), silent.read(&mut byte)).await;
    assert!(
        matches!(ended, Ok(Ok(0) | Err(_))),
        "a silent ingest stream was kept open: {ended:?}"
    );
    Ok(())
}

/// One console floods a station with `Locate`s of segments it lacks, each a miss to gather,
/// while the holder they would be gathered from is frozen (SIGSTOP: each gather waits on it).
/// Before, the flood took all 32 gathers and another console's `Locate` was answered busy for
/// as long as it lasted; now a peer gathers at most 4 at once, so the other console's miss is
/// gathered (from the replica's station, once the frozen holder times out). The station
/// learns the program first, so that the asks are misses and not waits for its record.
#[test]
fn a_locate_flood_from_one_console_leaves_another_console_s_miss_filled() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let setup = HomeAndReplica::small(dir.path(), "flood", 4, 9)?;
    let c = Node::new(&dir.path().join("c"))
        .engines(1)
        .enrolled_with(&setup.home)?
        .start()?;
    let (home, b) = (setup.home.peer(), setup.b.peer());
    wait::blocking("c to find both holders", Duration::from_secs(30), || {
        let directors = status::directors(&c.addr)?;
        Ok(directors.contains(&home) && directors.contains(&b))
    })?;
    let program: ProgramId = setup.program.parse()?;
    let frozen = setup.home.engines()?.remove(0).peer_id;
    let issuer = issuer_of(&setup.home.data)?;
    let ask = (&c.addr, program, frozen, &issuer);
    tokio::runtime::Runtime::new()?.block_on(flood_and_ask(&setup, ask))
}

/// The flood of [`a_locate_flood_from_one_console_leaves_another_console_s_miss_filled`].
async fn flood_and_ask(
    setup: &HomeAndReplica,
    (c, program, frozen, issuer): (&libp2p::Multiaddr, ProgramId, libp2p::PeerId, &Issuer),
) -> Result<()> {
    // c learns the program (its catalog record and manifest) while every holder answers.
    // Every console is a subscriber's (a token of the auth station's): a miss is started
    // for no other.
    Console::connect(c, Some(issuer))
        .await?
        .locate(program, 0, false)
        .await?;
    setup.home.signal("STOP")?;
    // 64 asks at once, each a miss whose gather waits on the frozen holder (about 20 s).
    let flooder = std::sync::Arc::new(Console::connect(c, Some(issuer)).await?);
    let (busy_tx, mut busy) = tokio::sync::watch::channel(false);
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..64 {
        let (flooder, busy_tx) = (flooder.clone(), busy_tx.clone());
        flood.spawn(async move {
            let answer = flooder.locate(program, 1 + i % 2, false).await;
            if answer.is_err_and(|e| e.to_string().contains("too many misses")) {
                let _ = busy_tx.send(true);
            }
        });
    }
    // The flooder has all it may gather: its other asks were answered busy at once.
    tokio::time::timeout(Duration::from_secs(10), busy.wait_for(|b| *b)).await??;

    // While the flood's gathers wait, another console's miss is gathered all the same.
    let other = Console::connect(c, Some(issuer)).await?;
    let location = other.locate(program, 3, false).await;
    setup.home.signal("CONT")?;
    flood.abort_all();
    let location = location?;
    assert_ne!(location.engine, frozen, "not the frozen holder");
    Ok(())
}

/// The content manager (the home) is frozen (SIGSTOP: it accepts connections and never
/// answers) while consoles ask station c, which knows neither program yet, for segments of
/// a program only the home holds: each such miss must ask the content manager for the
/// manifest. Eight consoles keep 32 of these gathers going. Before, each held its gather slot
/// until the look-ups gave up (the registry queries and the asks of each holder one after the
/// other), so the flood kept every slot and another console's miss was answered busy; now a
/// gather gives up on a content manager that does not answer within a few seconds and says
/// so, a program whose manifest could not be had is answered at once for a while, and the
/// other console's miss of the replicated program is filled from the replica's station.
#[test]
fn a_content_manager_that_never_answers_does_not_hold_the_gathers() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let setup = HomeAndReplica::small(dir.path(), "replicated", 2, 11)?;
    let only_home = dir.path().join("only-home.bin");
    random_file(&only_home, 512 * 1024, 12)?;
    let lone: ProgramId = Ingest::new(&setup.home.addr, &setup.home.key(), "lone", &only_home)
        .publish_now()
        .segment_size(256 * 1024)
        .run()?
        .parse()?;
    let c = Node::new(&dir.path().join("c"))
        .engines(1)
        .enrolled_with(&setup.home)?
        .start()?;
    let (home, b) = (setup.home.peer(), setup.b.peer());
    wait::blocking("c to find both holders", Duration::from_secs(30), || {
        let directors = status::directors(&c.addr)?;
        Ok(directors.contains(&home) && directors.contains(&b))
    })?;
    let replicated: ProgramId = setup.program.parse()?;
    let frozen = setup.home.engines()?.remove(0).peer_id;
    let issuer = issuer_of(&setup.home.data)?;
    setup.home.signal("STOP")?;
    let outcome = tokio::runtime::Runtime::new()?.block_on(frozen_manager(
        (&c.addr, &issuer),
        (lone, replicated),
        frozen,
    ));
    setup.home.signal("CONT")?;
    outcome
}

/// The flood and the other console's miss of
/// [`a_content_manager_that_never_answers_does_not_hold_the_gathers`].
async fn frozen_manager(
    (c, issuer): (&libp2p::Multiaddr, &Issuer),
    (lone, replicated): (ProgramId, ProgramId),
    frozen: libp2p::PeerId,
) -> Result<()> {
    let started = std::time::Instant::now();
    let (said_tx, mut said) = tokio::sync::watch::channel(None::<String>);
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let flooder = std::sync::Arc::new(Console::connect(c, Some(issuer)).await?);
        for i in 0..4 {
            let (flooder, said_tx) = (flooder.clone(), said_tx.clone());
            flood.spawn(async move {
                loop {
                    let answer = flooder.locate(lone, i % 2, false).await;
                    if let Err(e) = answer {
                        let line = e.to_string();
                        if !line.contains("too many misses") {
                            said_tx.send_replace(Some(line));
                        }
                        // A flood, not a spin: the answers come at once now.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            });
        }
    }
    // The flood's gathers end, with a line that names the silent content manager.
    let line = tokio::time::timeout(Duration::from_secs(90), said.wait_for(Option::is_some))
        .await??
        .clone()
        .unwrap_or_default();
    eprintln!("flood answered after {:?}: {line}", started.elapsed());
    assert!(
        line.contains("content manager did not answer in time"),
        "{line}"
    );

    // While the flood goes on, another console's miss of the replicated program is filled.
    let other = Console::connect(c, Some(issuer)).await?;
    let retry_busy = async {
        loop {
            match other.locate(replicated, 1, false).await {
                Ok(location) => return Ok(location),
                Err(e) if e.to_string().contains("too many misses") => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
    };
    let location = tokio::time::timeout(Duration::from_secs(60), retry_busy).await??;
    eprintln!("other filled after {:?}", started.elapsed());
    flood.abort_all();
    assert_ne!(location.engine, frozen, "not the frozen holder");
    Ok(())
}

/// A station that hangs (stopped: its connections stay open and nothing answers on them)
/// holds up no listing of the swarm: the home still lists every program and a console plays
/// one by its title. Before, each program's holders were looked up one after the other, each
/// waiting on the hung station's registry answers, so a listing of six programs outlived the
/// client's 60 s and failed. The control: the same listing with every station answering.
#[test]
fn a_hung_station_does_not_hold_up_the_listing_of_the_swarm() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let setup = HomeAndReplica::small(dir.path(), "first", 2, 31)?;
    let mut ids = vec![setup.program.clone()];
    for seed in 32..37 {
        let source = dir.path().join(format!("{seed}.bin"));
        random_file(&source, 256 * 1024, seed)?;
        let id = Ingest::new(
            &setup.home.addr,
            &setup.home.key(),
            &format!("p{seed}"),
            &source,
        )
        .publish_now()
        .segment_size(256 * 1024)
        .replicas(1)
        .run()?;
        tokio::runtime::Runtime::new()?.block_on(wait_holds_all(
            &setup.b.addr,
            id.parse()?,
            1,
            Duration::from_secs(60),
        ))?;
        ids.push(id);
    }
    ids.sort();
    assert_eq!(status::programs(&setup.home.addr, None)?, ids);

    setup.b.signal("STOP")?;
    let started = std::time::Instant::now();
    let listed = status::programs(&setup.home.addr, None);
    eprintln!("listed after {:?}", started.elapsed());
    let started = std::time::Instant::now();
    let played = Play::new(&setup.console, &setup.home.addr, "first").run();
    eprintln!("played by title after {:?}", started.elapsed());
    // A console that pinned its issuer (logged in) checks the manifest's signer against the
    // records of the stations it needs (`Stations`), not against a walk of the whole swarm,
    // which waits out the hung station (a play by id took 4 s, now tens of ms: README).
    let pinned = Play::new(&setup.console, &setup.home.addr, &setup.program).run();
    let stations = stations(&setup.home.addr, &[setup.home.peer(), setup.b.peer()]);
    // `vodmesh status` says which station did not answer, instead of showing its registry
    // record as if it had.
    let node = setup.home.addr.to_string();
    let text = vodmesh_tests::cli::vodmesh(&["status", "--node", &node]);
    let json = vodmesh_tests::cli::vodmesh(&["status", "--node", &node, "--json"]);
    setup.b.signal("CONT")?;
    assert_eq!(listed?, ids);
    assert!(played?.bytes == setup.bytes, "the play differs");
    assert!(
        pinned?.bytes == setup.bytes,
        "the pinned play by id differs"
    );
    // Both stations' records, the hung one's from the registry's copies.
    let (found, refused) = stations?;
    let mut directors = Vec::new();
    for signed in &found {
        let record = vodmesh_proto::station::StationRecord::verify(signed, now_ms())?;
        directors.push(record.director.to_string());
    }
    directors.sort();
    let mut wanted = vec![setup.home.peer(), setup.b.peer()];
    wanted.sort();
    assert_eq!(directors, wanted);
    // More than a request may name is refused, not looked up.
    assert!(refused.contains("Stations of 9 directors"), "{refused}");
    let text = text?;
    let b = setup.b.peer();
    let b_part = text
        .split("station ")
        .find(|s| s.starts_with(&b))
        .unwrap_or_default();
    assert!(b_part.contains("NOT ANSWERING"), "{text}");
    let home_part = (text.split("station "))
        .find(|s| s.starts_with(&setup.home.peer()))
        .unwrap_or_default();
    assert!(home_part.contains("programs held"), "{text}");
    assert!(!home_part.contains("NOT ANSWERING"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&json?)?;
    let answered: Vec<(String, bool)> = (json["stations"].as_array().into_iter().flatten())
        .filter_map(|s| {
            let peer = s["director"]["peer_id"].as_str()?.to_string();
            Some((peer, s["answered"].as_bool()?))
        })
        .collect();
    assert!(answered.contains(&(b, false)), "{json}");
    assert!(answered.contains(&(setup.home.peer(), true)), "{json}");
    Ok(())
}

/// `Stations` of `directors` asked of the director at `addr`: the records answered, and the
/// refusal of one naming nine directors.
fn stations(addr: &libp2p::Multiaddr, directors: &[String]) -> Result<(Vec<Signed>, String)> {
    use vodmesh_proto::director::{MAX_STATIONS_ASKED, Request, Response};
    let directors: Vec<libp2p::PeerId> = (directors.iter())
        .map(|d| d.parse())
        .collect::<Result<_, _>>()?;
    tokio::runtime::Runtime::new()?.block_on(async {
        let client = vodmesh_client::DirectorClient::connect(addr, None).await?;
        let found = match client.call(Request::Stations { directors }).await? {
            Response::Swarm(records) => records,
            other => anyhow::bail!("Stations answered {other:?}"),
        };
        let many = vec![libp2p::PeerId::random(); MAX_STATIONS_ASKED + 1];
        let refused = match client.call(Request::Stations { directors: many }).await {
            Err(e) => e.to_string(),
            Ok(other) => anyhow::bail!("Stations of nine answered {other:?}"),
        };
        Ok((found, refused))
    })
}

/// Opens `dials` connections to `peer` at `addr` from one swarm of a single identity, and
/// waits until every dial ended and `held` of them stay up (the others refused: closed by
/// the other side, or failed); returns how many came up in all.
async fn connections_held(
    addr: &libp2p::Multiaddr,
    peer: libp2p::PeerId,
    dials: u32,
    held: u32,
) -> Result<u32> {
    use futures::StreamExt;
    use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
    use libp2p::swarm::{SwarmEvent, dummy};

    let key = libp2p::identity::Keypair::generate_ed25519();
    let mut swarm = vodmesh_proto::net::build_swarm(key, |_| dummy::Behaviour)?;
    for _ in 0..dials {
        let opts = DialOpts::peer_id(peer)
            .addresses(vec![addr.clone()])
            .condition(PeerCondition::Always)
            .build();
        swarm.dial(opts)?;
    }
    let (mut up, mut failed, mut closed) = (0u32, 0u32, 0u32);
    let settled = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { .. } => up += 1,
                SwarmEvent::OutgoingConnectionError { .. } => failed += 1,
                SwarmEvent::ConnectionClosed { .. } => closed += 1,
                _ => {}
            }
            if up + failed == dials && up - closed == held {
                return;
            }
        }
    })
    .await;
    anyhow::ensure!(
        settled.is_ok(),
        "{dials} dials: {up} up, {failed} failed, {closed} closed; wanted {held} held"
    );
    Ok(up)
}

/// One peer dials a director, then an engine, more times than one peer may hold
/// connections (`conn_limits::MAX_PER_PEER`): the connections past the cap are refused and
/// the cap's worth stay up. Before, every one was taken (a peer id costs nothing, and each
/// connection its buffers and handlers). The control: another peer connects to the director
/// and is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_past_its_connection_cap_is_refused_and_another_is_served() -> Result<()> {
    use vodmesh_node::conn_limits::MAX_PER_PEER;
    use vodmesh_proto::director::{Request, Response};

    vodmesh_tests::swarm::init_logging();
    let dir = tempfile::tempdir()?;
    let station = vodmesh_tests::swarm::station(dir.path())
        .engines(1)
        .home()
        .start()
        .await?;
    let file = vodmesh_node::nodefile::NodeFile::read(dir.path())?;
    let engine = file.engines.first().context("no engine")?;
    let targets = [
        (station.addr().clone(), file.director.peer_id),
        (
            (engine.addrs.iter().find(|a| vodmesh_proto::net::is_tcp(a)))
                .context("no engine TCP address")?
                .clone(),
            engine.peer_id,
        ),
    ];
    for (addr, peer) in &targets {
        connections_held(addr, *peer, MAX_PER_PEER + 4, MAX_PER_PEER).await?;
    }
    let client = vodmesh_client::DirectorClient::connect(station.addr(), None).await?;
    let answer = client.call(Request::Station).await?;
    assert!(matches!(answer, Response::Station(_)), "{answer:?}");
    station.shutdown().await;
    Ok(())
}
