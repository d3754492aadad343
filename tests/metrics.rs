//! `--metrics`: a station serves Prometheus text at `/metrics`, scraped here by a real HTTP
//! client; as consoles locate and stream segments the counters move by exactly what happened
//! (hits, streams started and stopped, bytes out, bytes in by ingest, token refusals), the
//! engine gauges show both engines up with their limits, the store gauges show what the
//! engines hold per disk, and the registry's queries are counted.

use std::collections::BTreeMap;
use std::time::Duration;

use vodmesh_client::DirectorClient;
use vodmesh_node::{Station, StationConfig};
use vodmesh_proto::SegmentId;
use vodmesh_proto::codec::{read_frame, write_frame};
use vodmesh_proto::director::{Request, Response};
use vodmesh_proto::stream::{self, StreamReply, StreamRequest};
use vodmesh_proto::time::now_ms;
use vodmesh_tests::{init_logging, random_file, wait_until};
use vodmesh_tools::ingest::{self, IngestOptions};

/// GETs `url` with a real HTTP client (off the async workers); the status and the body.
pub async fn get(url: String) -> anyhow::Result<(u16, String)> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<(u16, String)> {
        let mut response = ureq::get(&url).call()?;
        let status = response.status().as_u16();
        Ok((status, response.body_mut().read_to_string()?))
    })
    .await?
}

/// `vodmesh status` (the library the command runs, then the binary with `--json` and
/// `--watch`): both engines up with their disk's usage and capacity, the program held, the
/// totals; `/status.json` and `/` of the metrics address list the station.
async fn status_shows_storage_programs_and_totals(
    station: &Station,
    stored: u64,
) -> anyhow::Result<()> {
    let stations = vodmesh_tools::status::fetch(station.addr()).await?;
    let t = vodmesh_tools::status::Totals::of(&stations);
    assert_eq!(
        (t.stations, t.engines.engines, t.engines.up, t.programs),
        (1, 2, 2, 1)
    );
    assert_eq!(t.engines.used, stored);
    let engines = &stations[0].record.engines;
    for e in engines {
        assert_eq!(e.disks.len(), 1, "{e:?}");
        assert_eq!(e.disks[0].capacity, 1 << 30);
        assert_eq!(e.disks[0].used, e.used);
    }
    let text = vodmesh_tools::status::to_text(&stations);
    assert!(text.contains("2/2 engines up"), "{text}");
    assert!(text.contains("programs held 1"), "{text}");
    assert!(text.contains("    disk "), "{text}");

    let node = station.addr().to_string();
    let out = vodmesh_tests::vodmesh(&["status", "--node", &node, "--json"])?;
    let json: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(json["totals"]["programs"], 1);
    assert_eq!(json["totals"]["used"], stored);
    assert_eq!(
        json["stations"][0]["engines"][0]["disks"][0]["capacity"],
        1u64 << 30
    );

    // --watch redraws in place every 2 s until SIGINT, then exits cleanly.
    let watch = std::process::Command::new(vodmesh_tests::bin("vodmesh"))
        .args(["status", "--watch", "--node", &node])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let sent = std::process::Command::new("kill")
        .args(["-INT", &watch.id().to_string()])
        .status()?;
    assert!(sent.success());
    let out = tokio::task::spawn_blocking(move || watch.wait_with_output()).await??;
    assert!(out.status.success(), "--watch exited with {}", out.status);
    let screen = String::from_utf8(out.stdout)?;
    assert!(screen.matches("\x1b[H\x1b[2J").count() >= 2, "{screen}");
    assert!(screen.contains(&station.peer_id().to_string()));

    let base = format!(
        "http://{}",
        station
            .metrics_addr()
            .ok_or(anyhow::anyhow!("no metrics address"))?
    );
    let (code, body) = get(format!("{base}/status.json")).await?;
    assert_eq!(code, 200);
    let json: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(json["local"], station.peer_id().to_string());
    assert_eq!(json["totals"]["engines_up"], 2);
    let (code, page) = get(format!("{base}/")).await?;
    assert_eq!(code, 200);
    assert!(page.contains("/status.json") && !page.contains("src=\"http"));
    Ok(())
}

/// `name{labels} value` lines of a scrape, by `name{labels}`.
fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The sum of every series of `name` whose labels contain `label` (e.g. `kind="copy"`).
fn sum(m: &BTreeMap<String, f64>, name: &str, label: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| {
            (k.as_str() == name || k.starts_with(&format!("{name}{{"))) && k.contains(label)
        })
        .map(|(_, v)| v)
        .sum()
}

async fn scrape(url: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let (status, body) = get(url.to_string()).await?;
    anyhow::ensure!(status == 200, "scrape answered {status}");
    Ok(parse(&body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_streams_run() -> anyhow::Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("home");
    let mut config = StationConfig::new(&data);
    config.engines = 2;
    config.home = true;
    config.content_manager = true;
    config.max_streams = 7;
    config.capacity = 1 << 30;
    config.metrics_addr = Some("127.0.0.1:0".parse()?);
    let issuer = vodmesh_proto::token::Issuer::generate();
    config.trust = vec![issuer.public()];
    let station = Station::start(config).await?;
    let url = format!(
        "http://{}/metrics",
        station
            .metrics_addr()
            .ok_or(anyhow::anyhow!("no metrics address"))?
    );

    // Before anything is played: both engines up, at their limit of 7, nothing counted.
    let before = scrape(&url).await?;
    for engine in &station.engines {
        let label = format!("{{engine=\"{}\"}}", engine.peer_id);
        assert_eq!(before.get(&format!("vodmesh_engine_up{label}")), Some(&1.0));
        assert_eq!(
            before.get(&format!("vodmesh_engine_max_streams{label}")),
            Some(&7.0)
        );
    }
    assert_eq!(sum(&before, "vodmesh_streams_started_total", ""), 0.0);
    assert_eq!(sum(&before, "vodmesh_hits_total", ""), 0.0);

    let source = dir.path().join("p.bin");
    let len = 3 * 1024 * 1024 + 1000;
    random_file(&source, len, 3)?;
    let info = ingest::run(&IngestOptions {
        node: station.addr().clone(),
        key: data.join("identity.key"),
        title: "metered".into(),
        publish_at_ms: Some(now_ms()),
        replicas: 0,
        segment_size: 1024 * 1024,
        bitrate: ingest::DEFAULT_BITRATE,
        source,
        progress: false,
    })
    .await?;

    let console = libp2p::identity::Keypair::generate_ed25519();
    let token = vodmesh_tests::console_token(&issuer, console.public().to_peer_id())?;
    let token = Some(serde_bytes::ByteBuf::from(token));
    let client = DirectorClient::connect(station.addr(), Some(console)).await?;
    for engine in &station.engines {
        client
            .add_addresses(engine.peer_id, engine.addrs.clone())
            .await?;
    }

    // Play the whole program, segment after segment, as a console does: locate, stream.
    let mut played = 0u64;
    for index in 0..4u32 {
        let location = match client
            .request(Request::Locate {
                program: info.program,
                index,
                complete: false,
                avoid: Vec::new(),
                busy: Vec::new(),
            })
            .await?
        {
            Response::Location(l) => l,
            other => anyhow::bail!("unexpected {other:?}"),
        };
        let mut s = client
            .open_stream(location.engine, stream::PROTOCOL)
            .await?;
        write_frame(
            &mut s,
            &StreamRequest {
                segment: SegmentId::new(info.program, index),
                offset: 0,
                token: token.clone(),
                play_from: 0,
            },
        )
        .await?;
        let StreamReply::Streaming { size, .. } = read_frame(&mut s, stream::MAX_FRAME).await?
        else {
            anyhow::bail!("stream refused");
        };
        let mut got = Vec::new();
        futures::AsyncReadExt::read_to_end(&mut s, &mut got).await?;
        assert_eq!(got.len() as u64, size);
        played += size;
    }
    assert_eq!(played, len as u64);

    // A stream without a token: refused, and counted by reason.
    let engine = station.engines[0].peer_id;
    let mut refused = client.open_stream(engine, stream::PROTOCOL).await?;
    write_frame(
        &mut refused,
        &StreamRequest {
            segment: SegmentId::new(info.program, 0),
            offset: 0,
            token: None,
            play_from: 0,
        },
    )
    .await?;
    let reply: StreamReply = read_frame(&mut refused, stream::MAX_FRAME).await?;
    assert!(matches!(reply, StreamReply::Refused(_)), "{reply:?}");

    let want = len as f64;
    let seen = tokio::sync::Mutex::new(BTreeMap::new());
    let waited = wait_until(
        "the counters to show what was played",
        Duration::from_secs(15),
        || async {
            let mut last = seen.lock().await;
            *last = scrape(&url).await?;
            let m = &*last;
            Ok(sum(m, "vodmesh_hits_total", "") == 4.0
                && sum(m, "vodmesh_streams_started_total", "") == 4.0
                && sum(m, "vodmesh_streams_stopped_total", "kind=\"complete\"") == 4.0
                && sum(m, "vodmesh_streams_active", "") == 0.0
                && sum(m, "vodmesh_stream_bytes_out_total", "") == want
                && sum(m, "vodmesh_bytes_in_total", "kind=\"ingest\"") == want
                && sum(m, "vodmesh_token_refusals_total", "kind=\"stream\"") == 1.0
                && sum(m, "vodmesh_store_used_bytes", "") == want)
        },
    )
    .await;
    let last = seen.into_inner();
    if let Err(e) = waited {
        anyhow::bail!("{e}: last scrape {last:#?}");
    }
    // Two engines, one disk each, each bounded by --capacity.
    assert_eq!(
        sum(&last, "vodmesh_store_capacity_bytes", ""),
        2.0 * (1u64 << 30) as f64
    );
    // The director put its station record and announced the program in the registry.
    assert!(
        sum(&last, "vodmesh_dht_queries_total", "") >= 1.0,
        "{last:#?}"
    );
    assert!(sum(&last, "vodmesh_dht_query_seconds_count", "") >= 1.0);
    assert_eq!(sum(&last, "vodmesh_misses_total", ""), 0.0);

    status_shows_storage_programs_and_totals(&station, len as u64).await?;
    station.shutdown().await;
    Ok(())
}
