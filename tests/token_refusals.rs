//! Tokens as capabilities on the wire (claims 24, 25): an engine refuses a copy without an
//! engine token, with a console token, or with another peer's engine token; it refuses a
//! stream with an engine token; each refusal is one line and nothing else is sent.

use libp2p::identity::Keypair;
use vodmesh_client::DirectorClient;
use vodmesh_node::{Station, StationConfig};
use vodmesh_proto::codec::{read_frame, write_frame};
use vodmesh_proto::copy::{self, CopyReply, CopyRequest};
use vodmesh_proto::stream::{self, StreamReply, StreamRequest};
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::{Audience, Issuer, Rights};
use vodmesh_proto::{ProgramId, SegmentId};
use vodmesh_tests::{init_logging, random_file};
use vodmesh_tools::ingest::{self, IngestOptions};

async fn copy_reply(
    client: &DirectorClient,
    engine: libp2p::PeerId,
    segment: SegmentId,
    token: Option<Vec<u8>>,
) -> anyhow::Result<CopyReply> {
    let mut s = client.open_stream(engine, copy::PROTOCOL).await?;
    write_frame(
        &mut s,
        &CopyRequest {
            segment,
            token: token.map(serde_bytes::ByteBuf::from),
            offset: 0,
        },
    )
    .await?;
    Ok(read_frame(&mut s, copy::MAX_FRAME).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_and_streams_need_the_right_kind_of_token() -> anyhow::Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("home");
    let issuer = Issuer::generate();
    let mut config = StationConfig::new(&data);
    config.home = true;
    config.content_manager = true;
    config.trust = vec![issuer.public()];
    let station = Station::start(config).await?;
    let source = dir.path().join("p.bin");
    random_file(&source, 1024 * 1024, 3)?;
    let info = ingest::run(&IngestOptions {
        node: station.addr().clone(),
        key: data.join("identity.key"),
        title: "guarded".into(),
        publish_at_ms: Some(now_ms()),
        replicas: 0,
        segment_size: ingest::DEFAULT_SEGMENT_SIZE,
        bitrate: ingest::DEFAULT_BITRATE,
        source,
        progress: false,
    })
    .await?;
    let segment = SegmentId::new(info.program, 0);
    let me = Keypair::generate_ed25519();
    let peer = me.public().to_peer_id();
    let client = DirectorClient::connect(station.addr(), Some(me)).await?;
    let engine = station.engines[0].clone();
    client
        .add_addresses(engine.peer_id, engine.addrs.clone())
        .await?;
    let mint = |subject, audience| {
        issuer.issue(subject, audience, Rights::All, now_ms(), now_ms() + 600_000)
    };
    let refused = |r: CopyReply| match r {
        CopyReply::Refused(why) => why,
        other => panic!("a copy was served: {other:?}"),
    };

    assert_eq!(
        refused(copy_reply(&client, engine.peer_id, segment, None).await?),
        "no engine token: enroll the station first (vodmesh enroll)"
    );
    assert_eq!(
        refused(
            copy_reply(
                &client,
                engine.peer_id,
                segment,
                Some(mint(peer, Audience::Console)?)
            )
            .await?
        ),
        "wrong token kind: console token, expected engine token"
    );
    let stranger = libp2p::PeerId::random();
    assert_eq!(
        refused(
            copy_reply(
                &client,
                engine.peer_id,
                segment,
                Some(mint(stranger, Audience::Engine)?)
            )
            .await?
        ),
        "token belongs to another peer"
    );
    // A valid engine token of a peer that no live station lists as its engine: still refused.
    assert_eq!(
        refused(
            copy_reply(
                &client,
                engine.peer_id,
                segment,
                Some(mint(peer, Audience::Engine)?)
            )
            .await?
        ),
        "not an engine of a live station known to this station"
    );
    // A token for another program only.
    let other = issuer.issue(
        peer,
        Audience::Engine,
        Rights::Programs(vec![ProgramId([9; 32])]),
        now_ms(),
        now_ms() + 600_000,
    )?;
    assert_eq!(
        refused(copy_reply(&client, engine.peer_id, segment, Some(other)).await?),
        "not entitled to this program"
    );

    // An engine token on a stream.
    let mut s = client.open_stream(engine.peer_id, stream::PROTOCOL).await?;
    write_frame(
        &mut s,
        &StreamRequest {
            segment,
            offset: 0,
            token: Some(serde_bytes::ByteBuf::from(mint(peer, Audience::Engine)?)),
            play_from: 0,
        },
    )
    .await?;
    let reply: StreamReply = read_frame(&mut s, stream::MAX_FRAME).await?;
    assert_eq!(
        reply,
        StreamReply::Refused("wrong token kind: engine token, expected console token".into())
    );

    // Every refusal is counted by the director (five copies, one stream).
    vodmesh_tests::wait_until(
        "refusals counted",
        std::time::Duration::from_secs(10),
        || async {
            match client
                .request(vodmesh_proto::director::Request::Activity)
                .await?
            {
                vodmesh_proto::director::Response::Activity(a) => {
                    Ok(a.refused_copies == 5 && a.refused_streams == 1)
                }
                other => anyhow::bail!("unexpected {other:?}"),
            }
        },
    )
    .await?;
    station.shutdown().await;
    Ok(())
}
