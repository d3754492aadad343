//! Ingest sources: HLS VOD playlists (local TS, fMP4 over http with its init segment as
//! segment 0), http(s) URLs of files; and bad sources, each refused with one line and nothing
//! left in the catalog.

use vodmesh_tests::http::{HttpServer, hls_playlist};
use vodmesh_tests::media::random_file;
use vodmesh_tests::stored::engine_segments;
use vodmesh_tests::swarm::{self, ingest_options, init_logging};
use vodmesh_tools::ingest;

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_playlists_and_urls_keep_their_segments_and_durations() -> anyhow::Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("home");
    let key = data.join("identity.key");
    let station = swarm::station(&data)
        .engines(2)
        .content_home()
        .start()
        .await?;

    // A local TS playlist: its media segments and #EXTINF durations are kept.
    let hls = dir.path().join("hls");
    std::fs::create_dir_all(&hls)?;
    let durations = [4.0f32, 4.0, 3.2, 1.5];
    let mut ts_bytes = Vec::new();
    let mut entries = Vec::new();
    for (i, d) in durations.iter().enumerate() {
        let b = bytes(300_000 + i * 1000, i as u8);
        std::fs::write(hls.join(format!("seg{i}.ts")), &b)?;
        ts_bytes.push(b);
        entries.push((format!("seg{i}.ts"), *d));
    }
    let refs: Vec<(&str, f32)> = entries.iter().map(|(u, d)| (u.as_str(), *d)).collect();
    std::fs::write(hls.join("index.m3u8"), hls_playlist(&refs, None))?;
    let source = hls.join("index.m3u8");
    let ts = ingest::run(&ingest_options(&station, &key, "ts", &source)).await?;
    assert_eq!(ts.segments, 4);
    assert_eq!(ts.duration_ms, 4000 + 4000 + 3200 + 1500);

    // fMP4 over http: the init segment is segment 0 (duration 0), then the media segments.
    let server = HttpServer::start().await?;
    let init = bytes(1200, 99);
    server.put("v/init.mp4", init.clone());
    let mut fmp4 = vec![init];
    for i in 0..3u8 {
        let b = bytes(200_000, 50 + i);
        server.put(&format!("v/part{i}.m4s"), b.clone());
        fmp4.push(b);
    }
    server.put(
        "v/index.m3u8",
        hls_playlist(
            &[("part0.m4s", 2.0), ("part1.m4s", 2.0), ("part2.m4s", 0.5)],
            Some("init.mp4"),
        )
        .into_bytes(),
    );
    let mp4 = ingest::run(&ingest_options(
        &station,
        &key,
        "mp4",
        server.url("v/index.m3u8"),
    ))
    .await?;
    assert_eq!(mp4.segments, 4);
    assert_eq!(mp4.duration_ms, 4500);

    // A plain file over http: cut into 4 MiB segments.
    let file = random_file(&dir.path().join("f.bin"), 9 * 1024 * 1024 + 17, 3)?;
    server.put("f.bin", file.clone());
    let plain = ingest::run(&ingest_options(
        &station,
        &key,
        "plain",
        server.url("f.bin"),
    ))
    .await?;
    assert_eq!(plain.segments, 3);

    station.shutdown().await;

    for (program, want) in [
        (ts.program, ts_bytes.clone()),
        (mp4.program, fmp4.clone()),
        (plain.program, vec![file.clone()]),
    ] {
        let (segments, _) = engine_segments(&data, 2, program).await?;
        let joined: Vec<u8> = segments.into_values().flatten().collect();
        assert!(joined == want.concat(), "segments differ from the source");
    }
    // Segment boundaries of the HLS source are kept exactly.
    let (segments, _) = engine_segments(&data, 2, mp4.program).await?;
    assert_eq!(segments.into_values().collect::<Vec<_>>(), fmp4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sources_fail_in_one_line_and_leave_nothing() -> anyhow::Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("home");
    let key = data.join("identity.key");
    let station = swarm::station(&data)
        .engines(2)
        .content_home()
        .start()
        .await?;
    let server = HttpServer::start().await?;
    server.put("seg0.ts", bytes(100_000, 1));
    server.put_versions("moving.ts", vec![bytes(100_000, 3), bytes(100_000, 4)]);
    server.put(
        "truncated.m3u8",
        b"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4.0,\nseg0.ts\n#EXTINF:4.0,\n".to_vec(),
    );
    server.put("malformed.m3u8", b"<html>not a playlist</html>".to_vec());
    server.put(
        "changing.m3u8",
        hls_playlist(&[("seg0.ts", 4.0), ("moving.ts", 4.0)], None).into_bytes(),
    );
    let local_bad = dir.path().join("bad.m3u8");
    std::fs::write(&local_bad, "#EXTM3U\n#EXTINF:oops\n")?;
    // Playlists that name segments elsewhere: another host (the cloud metadata service, a
    // port of this machine), the station's own identity key beside a local playlist.
    let port = server
        .base
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_string();
    server.put(
        "elsewhere.m3u8",
        hls_playlist(
            &[
                ("seg0.ts", 4.0),
                (&format!("http://127.0.0.2:{port}/seg0.ts"), 4.0),
            ],
            None,
        )
        .into_bytes(),
    );
    server.put(
        "metadata.m3u8",
        hls_playlist(&[("http://169.254.169.254/latest/meta-data", 4.0)], None).into_bytes(),
    );
    let playlists = dir.path().join("playlists");
    std::fs::create_dir_all(&playlists)?;
    let local = |name: &str, uri: &str| -> std::io::Result<String> {
        let path = playlists.join(name);
        std::fs::write(&path, hls_playlist(&[(uri, 4.0)], None))?;
        Ok(path.to_string_lossy().into_owned())
    };
    let key_path = key.to_string_lossy().into_owned();
    let beside_key = local("key.m3u8", "../home/identity.key")?;
    let absolute_key = local("absolute.m3u8", &key_path)?;
    let from_server = local("remote-segment.m3u8", &server.url("seg0.ts"))?;
    // A "video" that is an HLS playlist naming a file of this machine (ffmpeg would package
    // the file's contents into the program), and one in a container that is no video's: both
    // refused before ffmpeg packages anything.
    let fake_video = dir.path().join("fake.mp4");
    std::fs::write(
        &fake_video,
        "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile:///etc/hostname\n#EXT-X-ENDLIST\n",
    )?;
    let subtitles = dir.path().join("subtitles.mkv");
    std::fs::write(&subtitles, "1\n00:00:01,000 --> 00:00:02,000\nhello\n\n")?;

    let mut cases: Vec<(String, &str)> = vec![
        (
            dir.path()
                .join("missing.bin")
                .to_string_lossy()
                .into_owned(),
            "cannot open",
        ),
        ("http://127.0.0.1:1/program.bin".into(), "cannot fetch"),
        (server.url("absent.bin"), "cannot fetch"),
        (server.url("malformed.m3u8"), "malformed playlist"),
        (local_bad.to_string_lossy().into_owned(), "playlist"),
        (server.url("truncated.m3u8"), "truncated"),
        (server.url("changing.m3u8"), "changed during ingest"),
        (server.url("elsewhere.m3u8"), "not on the playlist's host"),
        (server.url("metadata.m3u8"), "--allow-host 169.254.169.254"),
        (beside_key, "outside the playlist's directory"),
        (absolute_key, "outside the playlist's directory"),
        (from_server.clone(), "--allow-host 127.0.0.1"),
    ];
    if vodmesh_tools::source::ffmpeg_installed() {
        cases.push((fake_video.to_string_lossy().into_owned(), "fake.mp4"));
        cases.push((
            subtitles.to_string_lossy().into_owned(),
            "not a video container",
        ));
    }
    for (source, want) in cases {
        let err = ingest::run(&ingest_options(&station, &key, "bad", &source))
            .await
            .err()
            .map(|e| format!("{e:#}"));
        let Some(err) = err else {
            anyhow::bail!("{source} was ingested");
        };
        assert!(err.contains(want), "{source}: {err}");
        assert!(!err.contains('\n'), "{source}: not one line: {err}");
    }
    assert!(
        vodmesh_tools::programs::fetch(station.addr(), Some(&key))
            .await?
            .is_empty(),
        "nothing half-ingested in the catalog"
    );
    // Control: the host allowed, the local playlist's remote segment is ingested.
    let mut allowed = ingest_options(&station, &key, "allowed", &from_server);
    allowed.allow_hosts = vec!["127.0.0.1".into()];
    let info = ingest::run(&allowed).await?;
    assert_eq!(info.segments, 1);
    station.shutdown().await;
    Ok(())
}
