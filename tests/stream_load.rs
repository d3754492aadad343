//! The director's view of engine load is exact: a stream being served shows in the station
//! record; a console that goes away mid-segment leaves the count at zero; an engine at
//! `--max-streams` refuses with one line.

use std::time::Duration;

use vodmesh_console::client::DirectorClient;
use vodmesh_node::{Station, StationConfig};
use vodmesh_proto::SegmentId;
use vodmesh_proto::codec::{read_frame, write_frame};
use vodmesh_proto::director::{Request, Response};
use vodmesh_proto::station::StationRecord;
use vodmesh_proto::stream::{self, StreamReply, StreamRequest};
use vodmesh_proto::time::now_ms;
use vodmesh_tests::{init_logging, random_file, wait_until};
use vodmesh_tools::ingest::{self, IngestOptions};

async fn streams(client: &DirectorClient) -> anyhow::Result<Vec<u32>> {
    match client.request(Request::Station).await? {
        Response::Station(s) => Ok(StationRecord::verify(&s, now_ms())?
            .engines
            .iter()
            .map(|e| e.streams)
            .collect()),
        other => anyhow::bail!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_counts_are_exact_and_max_streams_is_enforced() -> anyhow::Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("home");
    let mut config = StationConfig::new(&data);
    config.engines = 1;
    config.home = true;
    config.content_manager = true;
    config.max_streams = 1;
    let issuer = vodmesh_proto::token::Issuer::generate();
    config.trust = vec![issuer.public()];
    let station = Station::start(config).await?;
    let source = dir.path().join("p.bin");
    random_file(&source, 16 * 1024 * 1024, 5)?;
    let info = ingest::run(&IngestOptions {
        node: station.addr().clone(),
        key: data.join("identity.key"),
        title: "load".into(),
        publish_at_ms: Some(now_ms()),
        replicas: 0,
        segment_size: ingest::DEFAULT_SEGMENT_SIZE,
        bitrate: ingest::DEFAULT_BITRATE,
        source,
        progress: false,
    })
    .await?;

    let console = libp2p::identity::Keypair::generate_ed25519();
    let token = issuer.issue(
        console.public().to_peer_id(),
        vodmesh_proto::token::Audience::Console,
        vodmesh_proto::token::Rights::All,
        now_ms(),
        now_ms() + 3_600_000,
    )?;
    let token = Some(serde_bytes::ByteBuf::from(token));
    let client = DirectorClient::connect(station.addr(), Some(console)).await?;
    let engine = station.engines[0].clone();
    client
        .add_addresses(engine.peer_id, engine.addrs.clone())
        .await?;
    assert_eq!(streams(&client).await?, vec![0]);

    // A console that asks for a 4 MiB segment and never reads: the engine keeps streaming
    // (held by backpressure) and the director counts it.
    let mut open = client.open_stream(engine.peer_id, stream::PROTOCOL).await?;
    write_frame(
        &mut open,
        &StreamRequest {
            segment: SegmentId::new(info.program, 0),
            offset: 0,
            token: token.clone(),
        },
    )
    .await?;
    let reply: StreamReply = read_frame(&mut open, stream::MAX_FRAME).await?;
    assert!(matches!(reply, StreamReply::Streaming { .. }));
    wait_until(
        "the director to count the stream",
        Duration::from_secs(10),
        || async { Ok(streams(&client).await? == vec![1]) },
    )
    .await?;

    // A second console is refused: the engine is at --max-streams 1.
    let mut second = client.open_stream(engine.peer_id, stream::PROTOCOL).await?;
    write_frame(
        &mut second,
        &StreamRequest {
            segment: SegmentId::new(info.program, 1),
            offset: 0,
            token: token.clone(),
        },
    )
    .await?;
    let reply: StreamReply = read_frame(&mut second, stream::MAX_FRAME).await?;
    assert_eq!(
        reply,
        StreamReply::Refused("engine busy: at --max-streams".into())
    );

    // The first console goes away mid-segment (its stream is dropped, which resets it): the
    // count returns to zero.
    drop(open);
    wait_until(
        "the stream to be counted out",
        Duration::from_secs(20),
        || async { Ok(streams(&client).await? == vec![0]) },
    )
    .await?;

    // Claims 16 and 17: a Locate tells the chosen engine to preload; the engine reports the
    // takeover and the stop of every stream, early or complete.
    let location = match client
        .request(Request::Locate {
            program: info.program,
            index: 2,
        })
        .await?
    {
        Response::Location(l) => l,
        other => anyhow::bail!("unexpected {other:?}"),
    };
    assert_eq!(location.engine, engine.peer_id);
    let mut full = client.open_stream(engine.peer_id, stream::PROTOCOL).await?;
    write_frame(
        &mut full,
        &StreamRequest {
            segment: SegmentId::new(info.program, 2),
            offset: 0,
            token: token.clone(),
        },
    )
    .await?;
    let StreamReply::Streaming { size, .. } = read_frame(&mut full, stream::MAX_FRAME).await?
    else {
        anyhow::bail!("refused");
    };
    let mut got = Vec::new();
    futures::AsyncReadExt::read_to_end(&mut full, &mut got).await?;
    assert_eq!(got.len() as u64, size);
    wait_until(
        "the complete stop to be reported",
        Duration::from_secs(10),
        || async {
            let a = match client.request(Request::Activity).await? {
                Response::Activity(a) => a,
                other => anyhow::bail!("unexpected {other:?}"),
            };
            Ok(a.preloads == 1
                && a.takeovers == 2
                && a.stops_early == 1
                && a.stops_complete == 1
                && a.active == 0)
        },
    )
    .await?;
    station.shutdown().await;
    Ok(())
}
