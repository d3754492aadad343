//! `vodmesh-console serve` with real clients: a 20 s test video made by ffmpeg (testsrc +
//! sine) is ingested (packaged to HLS by ffmpeg), served, and read back by ffmpeg itself through
//! `http://127.0.0.1:PORT/<program>/index.m3u8`, decoding every frame without an error and
//! the same number of frames as the source; byte ranges, 404s and a 503 when the station that
//! holds a program stops; and headless Chromium playing the program page with hls.js.
//!
//! Where ffmpeg (or, for the browser test, node, Chromium and tests/browser/node_modules) is
//! absent, a test says so and passes, except under CI (`CI` set), where it fails: CI installs
//! them (.ci/run).

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use vodmesh_tests::cli::{Ingest, keygen};
use vodmesh_tests::http::{Reply, get, get_with};
use vodmesh_tests::media::{
    Gateway, count_frames, decode, ingest, make_video, package_hls, start_home,
};
use vodmesh_tests::process::plain;
use vodmesh_tests::require::{self, Browser};

/// GETs `url` through the gateway, with `Range` when given.
fn fetch(url: &str, range: Option<&str>) -> Result<(u16, Option<String>, Vec<u8>)> {
    let Reply {
        status,
        content_range,
        body,
    } = get(url, range)?;
    Ok((status, content_range, body))
}

#[test]
fn ffmpeg_plays_a_served_program_frame_for_frame_with_ranges_404s_and_503() -> Result<()> {
    if !require::tools(&["ffmpeg", "ffprobe"])? {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let video = dir.path().join("test.mp4");
    make_video(&video, 20)?;
    let source_frames = count_frames(&video.to_string_lossy())?;
    assert_eq!(source_frames, 500, "20 s at 25 frames/s");

    let (home, console) = start_home(dir.path())?;
    let program = ingest(&home, &video, "test card")?;
    let other = ingest(&home, &video, "test card again")?;
    let gateway = Gateway::start(&home, &console)?;
    let base = &gateway.base;

    // The list, as HTML with links and as JSON.
    let (status, _, page) = fetch(&format!("{base}/"), None)?;
    assert_eq!(status, 200);
    let page = String::from_utf8(page)?;
    assert!(page.contains(&format!("href=\"{program}/\"")), "{page}");
    assert!(page.contains("test card"), "{page}");
    let (status, _, json) = fetch(&format!("{base}/?json"), None)?;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_slice(&json)?;
    let listed = json["programs"].as_array().map_or(0, Vec::len);
    assert_eq!(listed, 2, "{json}");

    // The playlist: real durations from the packaging (about 4 s, keyframe aligned).
    let (status, _, m3u8) = fetch(&format!("{base}/test%20card/index.m3u8"), None)?;
    assert_eq!(status, 200, "a program is found by its title too");
    let m3u8 = String::from_utf8(m3u8)?;
    let durations = durations(&m3u8);
    assert_eq!(durations.len(), 5, "{m3u8}");
    let total: f64 = durations.iter().sum();
    assert!((total - 20.0).abs() < 0.1, "{m3u8}");
    assert!(m3u8.contains("#EXT-X-ENDLIST"), "{m3u8}");

    // ffmpeg reads the playlist through the gateway and decodes every frame, without an error
    // (`decode` fails on any).
    let url = format!("{base}/{program}/index.m3u8");
    decode(&url)?;
    assert_eq!(
        count_frames(&url)?,
        source_frames,
        "frames decoded via serve"
    );

    // Byte ranges of a segment.
    let seg = format!("{base}/{program}/1.ts");
    let (status, range, whole) = fetch(&seg, None)?;
    assert_eq!((status, range), (200, None));
    let len = whole.len();
    assert!(len > 1000);
    let (status, range, part) = fetch(&seg, Some("bytes=100-1099"))?;
    assert_eq!(status, 206);
    assert_eq!(
        range.as_deref(),
        Some(format!("bytes 100-1099/{len}").as_str())
    );
    assert!(part == whole[100..1100]);
    let (status, range, tail) = fetch(&seg, Some("bytes=-500"))?;
    assert_eq!(status, 206);
    assert_eq!(
        range.as_deref(),
        Some(format!("bytes {}-{}/{len}", len - 500, len - 1).as_str())
    );
    assert!(tail == whole[len - 500..]);
    let (status, range, _) = fetch(&seg, Some(&format!("bytes={}-", len - 10)))?;
    assert_eq!((status, range.is_some()), (206, true));
    let (status, range, _) = fetch(&seg, Some(&format!("bytes={len}-")))?;
    assert_eq!(status, 416, "a range past the end");
    assert_eq!(range.as_deref(), Some(format!("bytes */{len}").as_str()));

    // 404s: unknown program, segment past the end, not a segment name.
    for path in [
        "no-such-program/index.m3u8",
        "no-such-program/0.ts",
        &format!("{}/index.m3u8", "0".repeat(64)),
        &format!("{program}/5.ts"),
        &format!("{program}/99999.ts"),
        &format!("{program}/x.ts"),
    ] {
        let (status, _, body) = fetch(&format!("{base}/{path}"), None)?;
        assert_eq!(
            status,
            404,
            "GET /{path}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    // Serving a segment prefetches the next two: once the station holding the programs has
    // stopped, those still play, and the one after them is a 503 with one line that says why,
    // not a hang or a broken connection. Nothing else is fetched meanwhile: the gateway's log
    // tells when the two prefetches are in (every segment of the first program is cached).
    let before = gateway.log.bytes_read();
    let (status, _, _) = fetch(&format!("{base}/{other}/0.ts"), None)?;
    assert_eq!(status, 200);
    gateway.log.wait_for(
        "segments 1 and 2 prefetched",
        Duration::from_secs(60),
        |log| {
            let since = plain(&String::from_utf8_lossy(
                log.get(before..).unwrap_or_default(),
            ));
            let fetched: Vec<&str> = since
                .lines()
                .filter(|l| l.contains("segment fetched"))
                .collect();
            ["index=1 ", "index=2 "]
                .iter()
                .all(|i| fetched.iter().any(|l| l.contains(i)))
        },
    )?;
    assert!(home.terminate()?, "the station stops cleanly");
    let started = std::time::Instant::now();
    for prefetched in ["1.ts", "2.ts"] {
        let (status, _, body) = fetch(&format!("{base}/{other}/{prefetched}"), None)?;
        assert_eq!(
            status,
            200,
            "{prefetched} was prefetched: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let (status, _, body) = fetch(&format!("{base}/{other}/3.ts"), None)?;
    let message = String::from_utf8(body)?;
    assert_eq!(status, 503, "{message}");
    assert_eq!(message.lines().count(), 1, "one line: {message:?}");
    assert!(message.trim().len() > 10, "a message: {message:?}");
    eprintln!("503: {}", message.trim());
    let (status, _, body) = fetch(&format!("{base}/"), None)?;
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "503s came in {:?}",
        started.elapsed()
    );
    Ok(())
}

/// The status of `GET url` with these headers, and its body as text.
fn status_of(url: &str, headers: &[(&str, &str)]) -> Result<(u16, String)> {
    let reply = get_with(url, headers)?;
    Ok((
        reply.status,
        String::from_utf8_lossy(&reply.body).into_owned(),
    ))
}

#[test]
fn a_gateway_beyond_loopback_needs_its_key_and_one_on_loopback_its_own_name() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (home, console) = start_home(dir.path())?;

    // Bound to every interface: the printed URL carries a key, and nothing answers without it.
    let open = Gateway::start_at(&home, &console, "0.0.0.0:0")?;
    let (root, key) = open
        .base
        .rsplit_once('/')
        .context("the printed URL has a key")?;
    assert!(key.len() >= 16, "a key that is not guessed: {key:?}");
    for (path, what) in [
        ("/".to_string(), "the list"),
        ("/.vodmesh/hls.min.js".to_string(), "a page's script"),
        (format!("/{}/", "0".repeat(32)), "another key"),
        (format!("/{key}x/"), "the key and more"),
        (
            format!("/{}/", &key[..key.len() - 1]),
            "a prefix of the key",
        ),
    ] {
        let (status, body) = status_of(&format!("{root}{path}"), &[])?;
        assert_eq!(status, 403, "{what} without the key: {body}");
        assert!(body.contains("access key"), "{body}");
    }
    // Control: under the key, the list, the script, and `/KEY` sent on to `/KEY/`.
    let (status, body) = status_of(&format!("{}/?json", open.base), &[])?;
    assert_eq!(status, 200, "{body}");
    let (status, _) = status_of(&format!("{}/.vodmesh/hls.min.js", open.base), &[])?;
    assert_eq!(status, 200);
    let (status, body) = status_of(&open.base, &[])?;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("<html"),
        "the list page after the redirect: {body}"
    );

    // On loopback, no key, but a page on another site that an attacker's DNS points at
    // 127.0.0.1 (DNS rebinding) sends its own name: refused.
    let local = Gateway::start(&home, &console)?;
    let port = local.base.rsplit(':').next().context("a port")?;
    let (status, body) = status_of(
        &format!("{}/?json", local.base),
        &[("Host", &format!("rebind.example:{port}"))],
    )?;
    assert_eq!(status, 403, "{body}");
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let (status, body) = status_of(&format!("{}/?json", local.base), &[("Host", &host)])?;
        assert_eq!(status, 200, "Host: {host}: {body}");
    }
    Ok(())
}

#[test]
fn headless_chromium_plays_the_program_page() -> Result<()> {
    if !require::tools(&["ffmpeg", "ffprobe"])? {
        return Ok(());
    }
    let Some(browser) = Browser::find()? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let video = dir.path().join("browser.mp4");
    make_video(&video, 20)?;
    let (home, console) = start_home(dir.path())?;
    let program = ingest(&home, &video, "browser test card")?;
    let gateway = Gateway::start(&home, &console)?;

    // Fails unless the browser played past 5 s.
    let (result, screenshot) = browser.run(
        "play.js",
        &format!("{}/{program}/", gateway.base),
        "serve-chromium.png",
        &dir.path().join("chromium-profile"),
        &[],
    )?;
    let at = result["currentTime"].as_f64().unwrap_or(0.0);
    assert!(at > 5.0, "video.currentTime = {at}: {result}");
    assert!(
        screenshot.exists(),
        "screenshot saved at {}",
        screenshot.display()
    );
    eprintln!(
        "played in Chromium: {result}; screenshot: {}",
        screenshot.display()
    );
    drop(gateway);
    drop(home);
    Ok(())
}

/// The `#EXTINF` durations of a playlist, seconds.
fn durations(m3u8: &str) -> Vec<f64> {
    m3u8.lines()
        .filter_map(|l| l.strip_prefix("#EXTINF:"))
        .filter_map(|l| l.trim_end_matches(',').parse().ok())
        .collect()
}

#[test]
fn other_codecs_are_encoded_fmp4_hls_keeps_its_init_segment_and_no_ffmpeg_is_one_line() -> Result<()>
{
    if !require::tools(&["ffmpeg", "ffprobe"])? {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    // MPEG-4 Part 2 video with MP3 audio in Matroska: not H.264, so ingest encodes it.
    let mkv = dir.path().join("old.mkv");
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc=duration=10:size=320x240:rate=25")
        .args(["-f", "lavfi", "-i", "sine=frequency=220:duration=10"])
        .args([
            "-c:v",
            "mpeg4",
            "-g",
            "300",
            "-c:a",
            "libmp3lame",
            "-shortest",
        ])
        .arg(&mkv)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mkv_frames = count_frames(&mkv.to_string_lossy())?;
    // fMP4 HLS made from an H.264 video: its init segment becomes segment 0.
    let mp4 = dir.path().join("card.mp4");
    make_video(&mp4, 12)?;
    let hls = package_hls(&mp4, &dir.path().join("fmp4"), true)?;
    let mp4_frames = count_frames(&mp4.to_string_lossy())?;

    // Without ffmpeg on PATH, a video file is refused with one line that says why.
    let key = dir.path().join("admin.key");
    keygen(None, &key)?;
    let empty = dir.path().join("empty-path");
    std::fs::create_dir_all(&empty)?;
    let nowhere = "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWGJG2uVMdtxTBXxBN8NDNAM5qzjdwM4WZ9CtZ8Ydmf4JZ";
    let out = Ingest::new(&nowhere.parse()?, &key, "nope", &mkv)
        .command()
        .env("PATH", &empty)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.starts_with("error: ")
            && stderr.contains("ffmpeg")
            && stderr.contains("not installed"),
        "{stderr}"
    );

    let (home, console) = start_home(dir.path())?;
    let encoded = ingest(&home, &mkv, "encoded")?;
    let fmp4 = ingest(&home, &hls, "fmp4")?;
    let gateway = Gateway::start(&home, &console)?;
    let base = &gateway.base;

    // The encode puts a keyframe every 4 s: segments of 4, 4 and 2 s.
    let (status, _, m3u8) = fetch(&format!("{base}/{encoded}/index.m3u8"), None)?;
    assert_eq!(status, 200);
    let m3u8 = String::from_utf8(m3u8)?;
    let d = durations(&m3u8);
    assert_eq!(d.len(), 3, "{m3u8}");
    assert!(d.iter().take(2).all(|s| (s - 4.0).abs() < 0.1), "{m3u8}");
    let url = format!("{base}/{encoded}/index.m3u8");
    assert_eq!(
        count_frames(&url)?,
        mkv_frames,
        "frames of the encoded program"
    );

    // fMP4: an #EXT-X-MAP to segment 0, media from segment 1 on.
    let (status, _, m3u8) = fetch(&format!("{base}/{fmp4}/index.m3u8"), None)?;
    assert_eq!(status, 200);
    let m3u8 = String::from_utf8(m3u8)?;
    assert!(m3u8.contains("#EXT-X-MAP:URI=\"0.m4s\""), "{m3u8}");
    assert!(m3u8.contains("\n1.m4s\n"), "{m3u8}");
    let url = format!("{base}/{fmp4}/index.m3u8");
    decode(&url)?;
    assert_eq!(
        count_frames(&url)?,
        mp4_frames,
        "frames of the fMP4 program"
    );
    Ok(())
}

/// The station a gateway was started with (`--node`) goes away: the gateway goes on through
/// another station of the swarm, learned through the first while it answered, and lists and
/// serves the program its replica there holds. Before, every request was a 503 naming the
/// dead station until the gateway was restarted.
#[test]
fn a_gateway_goes_on_through_another_station_when_its_own_is_gone() -> Result<()> {
    use vodmesh_tests::replica::HomeAndReplica;
    let dir = tempfile::tempdir()?;
    let HomeAndReplica {
        home,
        b,
        console,
        program,
        bytes,
    } = HomeAndReplica::small(dir.path(), "kept", 3, 51)?;
    let gateway = Gateway::start(&b, &console)?;
    let base = &gateway.base;
    let (status, _, _) = fetch(&format!("{base}/?json"), None)?;
    assert_eq!(status, 200);
    gateway.log.wait_for(
        "the gateway to learn the other station",
        Duration::from_secs(60),
        |log| plain(&String::from_utf8_lossy(log)).contains("learned the swarm's other directors"),
    )?;
    b.kill()?;
    let (status, _, json) = fetch(&format!("{base}/?json"), None)?;
    let json = String::from_utf8(json)?;
    assert_eq!(status, 200, "{json}");
    assert!(json.contains(&program), "{json}");
    let (status, _, segment) = fetch(&format!("{base}/{program}/1.ts"), None)?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&segment));
    assert!(
        segment == bytes[256 * 1024..512 * 1024],
        "segment 1 differs"
    );
    drop(home);
    Ok(())
}
