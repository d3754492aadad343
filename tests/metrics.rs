//! `--metrics`: a station serves Prometheus text at `/metrics`, scraped here by a real HTTP
//! client; as consoles locate and stream segments the counters move by exactly what happened
//! (hits, streams started and stopped, bytes out, bytes in by ingest, token refusals), the
//! engine gauges show both engines up with their limits, the store gauges show what the
//! engines hold per disk, and the registry's queries are counted.

use std::time::Duration;

use anyhow::{Context, Result};
use vodmesh_node::Station;
use vodmesh_proto::SegmentId;
use vodmesh_proto::stream::StreamReply;
use vodmesh_proto::time::now_ms;
use vodmesh_proto::token::Issuer;
use vodmesh_tests::cli::{command_in, vodmesh};
use vodmesh_tests::console::Console;
use vodmesh_tests::http::{Scrape, get_async};
use vodmesh_tests::media::random_file;
use vodmesh_tests::process::{Child, Tail};
use vodmesh_tests::swarm::{self, ingest_options, init_logging};
use vodmesh_tests::wait;
use vodmesh_tools::ingest::{self, IngestOptions};

/// `vodmesh status` (the library the command runs, then the binary with `--json` and
/// `--watch`): both engines up with their disk's usage and capacity, the program held, the
/// totals; `/status.json` and `/` of the metrics address list the station.
async fn status_shows_storage_programs_and_totals(station: &Station, stored: u64) -> Result<()> {
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
    let out = vodmesh(&["status", "--node", &node, "--json"])?;
    let json: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(json["totals"]["programs"], 1);
    assert_eq!(json["totals"]["used"], stored);
    assert_eq!(
        json["stations"][0]["engines"][0]["disks"][0]["capacity"],
        1u64 << 30
    );

    // --watch redraws in place every 2 s until SIGINT, then exits cleanly.
    let mut watch: Child = command_in(None, "vodmesh")
        .args(["status", "--watch", "--node", &node])
        .stdout(std::process::Stdio::piped())
        .spawn()?
        .into();
    let screen = Tail::new(watch.inner().stdout.take().context("no stdout")?);
    let (screen, status) = tokio::task::spawn_blocking(move || -> Result<_> {
        const CLEAR: &[u8] = b"\x1b[H\x1b[2J";
        screen.wait_for("two redraws", Duration::from_secs(20), |s| {
            s.windows(CLEAR.len()).filter(|w| *w == CLEAR).count() >= 2
        })?;
        watch.signal("INT")?;
        let status = watch.inner().wait()?;
        Ok((String::from_utf8(screen.finish())?, status))
    })
    .await??;
    assert!(status.success(), "--watch exited with {status}");
    assert!(screen.matches("\x1b[H\x1b[2J").count() >= 2, "{screen}");
    assert!(screen.contains(&station.peer_id().to_string()));

    let base = format!(
        "http://{}",
        station.metrics_addr().context("no metrics address")?
    );
    let reply = get_async(format!("{base}/status.json")).await?;
    assert_eq!(reply.status, 200);
    let json: serde_json::Value = serde_json::from_slice(&reply.body)?;
    assert_eq!(json["local"], station.peer_id().to_string());
    assert_eq!(json["totals"]["engines_up"], 2);
    let reply = get_async(format!("{base}/")).await?;
    assert_eq!(reply.status, 200);
    let page = reply.text();
    assert!(page.contains("/status.json") && !page.contains("src=\"http"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_streams_run() -> Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("home");
    let issuer = Issuer::generate();
    let station = swarm::station(&data)
        .engines(2)
        .content_home()
        .trusting(&issuer)
        .with(|c| {
            c.max_streams = 7;
            c.capacity = 1 << 30;
            c.metrics_addr = "127.0.0.1:0".parse().ok();
        })
        .start()
        .await?;
    let url = format!(
        "http://{}/metrics",
        station.metrics_addr().context("no metrics address")?
    );

    // Before anything is played: both engines up, at their limit of 7, nothing counted.
    let before = Scrape::of(&url).await?;
    for engine in &station.engines {
        let label = format!("{{engine=\"{}\"}}", engine.peer_id);
        assert_eq!(before.get(&format!("vodmesh_engine_up{label}")), Some(1.0));
        assert_eq!(
            before.get(&format!("vodmesh_engine_max_streams{label}")),
            Some(7.0)
        );
    }
    assert_eq!(before.sum("vodmesh_streams_started_total", ""), 0.0);
    assert_eq!(before.sum("vodmesh_hits_total", ""), 0.0);

    let source = dir.path().join("p.bin");
    let len = 3 * 1024 * 1024 + 1000;
    random_file(&source, len, 3)?;
    let key = data.join("identity.key");
    let info = ingest::run(&IngestOptions {
        publish_at_ms: Some(now_ms()),
        segment_size: 1024 * 1024,
        ..ingest_options(&station, &key, "metered", source)
    })
    .await?;

    let console = Console::connect(station.addr(), Some(&issuer)).await?;
    for engine in &station.engines {
        console.reach(engine.peer_id, &engine.addrs).await?;
    }

    // Play the whole program, segment after segment, as a console does: locate, stream.
    let mut played = 0u64;
    for index in 0..4u32 {
        played += console.play_segment(info.program, index).await?.len() as u64;
    }
    assert_eq!(played, len as u64);

    // A stream without a token: refused, and counted by reason.
    let engine = station.engines[0].peer_id;
    let request = vodmesh_proto::stream::StreamRequest {
        token: None,
        ..console.request(SegmentId::new(info.program, 0), 0, 0)
    };
    let (_refused, reply) = console.ask(engine, &request).await?;
    assert!(matches!(reply, StreamReply::Refused(_)), "{reply:?}");

    let want = len as f64;
    let seen = tokio::sync::Mutex::new(Scrape::parse(""));
    let waited = wait::until(
        "the counters to show what was played",
        Duration::from_secs(15),
        || async {
            let mut last = seen.lock().await;
            *last = Scrape::of(&url).await?;
            let m = &*last;
            Ok(m.sum("vodmesh_hits_total", "") == 4.0
                && m.sum("vodmesh_locates_total", "") == 4.0
                && m.sum("vodmesh_streams_started_total", "") == 4.0
                && m.sum("vodmesh_streams_stopped_total", "kind=\"complete\"") == 4.0
                && m.sum("vodmesh_streams_active", "") == 0.0
                && m.sum("vodmesh_stream_bytes_out_total", "") == want
                && m.sum("vodmesh_bytes_in_total", "kind=\"ingest\"") == want
                && m.sum("vodmesh_token_refusals_total", "kind=\"stream\"") == 1.0
                && m.sum("vodmesh_store_used_bytes", "") == want)
        },
    )
    .await;
    let last = seen.into_inner();
    if let Err(e) = waited {
        anyhow::bail!("{e}: last scrape {:#?}", last.0);
    }
    // Two engines, one disk each, each bounded by --capacity.
    assert_eq!(
        last.sum("vodmesh_store_capacity_bytes", ""),
        2.0 * (1u64 << 30) as f64
    );
    // The director put its station record and announced the program in the registry.
    assert!(
        last.sum("vodmesh_dht_queries_total", "") >= 1.0,
        "{:#?}",
        last.0
    );
    assert!(last.sum("vodmesh_dht_query_seconds_count", "") >= 1.0);
    assert_eq!(last.sum("vodmesh_misses_total", ""), 0.0);

    status_shows_storage_programs_and_totals(&station, len as u64).await?;
    station.shutdown().await;
    Ok(())
}
