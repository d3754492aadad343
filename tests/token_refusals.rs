//! Tokens as capabilities on the wire (claims 24, 25): an engine refuses a copy without an
//! engine token, with a console token, or with another peer's engine token; it refuses a
//! stream with an engine token; each refusal is one line and nothing else is sent.

use std::time::Duration;

use anyhow::Result;
use vodmesh_proto::codec::{read_frame, write_frame};
use vodmesh_proto::copy::{self, CopyReply, CopyRequest};
use vodmesh_proto::stream::StreamReply;
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::{Audience, Issuer, Rights};
use vodmesh_proto::{ProgramId, SegmentId};
use vodmesh_tests::console::Console;
use vodmesh_tests::media::random_file;
use vodmesh_tests::swarm::{self, ingest_options, init_logging};
use vodmesh_tests::wait;
use vodmesh_tools::ingest::{self, IngestOptions};

/// Asks `engine` for a copy of `segment` as `console`, presenting `token`; its answer.
async fn copy_reply(
    console: &Console,
    engine: libp2p::PeerId,
    segment: SegmentId,
    token: Option<Vec<u8>>,
) -> Result<CopyReply> {
    let mut s = console.client.open_stream(engine, copy::PROTOCOL).await?;
    write_frame(
        &mut s,
        &CopyRequest {
            segment,
            token: token.map(serde_bytes::ByteBuf::from),
            offset: 0,
            verified: true,
        },
    )
    .await?;
    Ok(read_frame(&mut s, copy::MAX_FRAME).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_and_streams_need_the_right_kind_of_token() -> Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("home");
    let issuer = Issuer::generate();
    let station = swarm::station(&data)
        .content_home()
        .trusting(&issuer)
        .start()
        .await?;
    let source = dir.path().join("p.bin");
    random_file(&source, 1024 * 1024, 3)?;
    let key = data.join("identity.key");
    let info = ingest::run(&IngestOptions {
        publish_at_ms: Some(now_ms()),
        ..ingest_options(&station, &key, "guarded", source)
    })
    .await?;
    let segment = SegmentId::new(info.program, 0);
    // A console with no token of its own: each request presents the token under test.
    let client = Console::connect(station.addr(), None).await?;
    let peer = client.client.local_peer();
    let engine = station.engines[0].clone();
    client.reach(engine.peer_id, &engine.addrs).await?;
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
    let request = vodmesh_proto::stream::StreamRequest {
        token: Some(mint(peer, Audience::Engine)?.into()),
        ..client.request(segment, 0, 0)
    };
    let (_s, reply) = client.ask(engine.peer_id, &request).await?;
    assert_eq!(
        reply,
        StreamReply::Refused("wrong token kind: engine token, expected console token".into())
    );

    // Every refusal is counted by the director (five copies, one stream).
    wait::until("refusals counted", Duration::from_secs(10), || async {
        let a = client.activity().await?;
        Ok(a.refused_copies == 5 && a.refused_streams == 1)
    })
    .await?;
    station.shutdown().await;
    Ok(())
}
