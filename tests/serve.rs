//! `vodmesh-console serve` with real clients: a 20 s test video made by ffmpeg (testsrc +
//! sine) is ingested (packaged to HLS by ffmpeg), served, and read back by ffmpeg itself through
//! `http://127.0.0.1:PORT/<program>/index.m3u8`, decoding every frame without an error and
//! the same number of frames as the source; byte ranges, 404s and a 503 when the station that
//! holds a program stops; and headless Chromium playing the program page with hls.js.
//!
//! Where ffmpeg (or, for the browser test, node, Chromium and tests/browser/node_modules) is
//! absent, a test says so and passes, except under CI (`CI` set), where it fails: CI installs
//! them (.ci/run).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use vodmesh_tests::media::{Gateway, count_frames, ingest, make_video, missing, start_home};
use vodmesh_tests::{bin, vodmesh};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// GETs `url` with optional `Range`; returns status, Content-Range and body.
fn get(url: &str, range: Option<&str>) -> Result<(u16, Option<String>, Vec<u8>)> {
    let mut request = agent().get(url);
    if let Some(r) = range {
        request = request.header("Range", r);
    }
    let mut response = request.call()?;
    let status = response.status().as_u16();
    let content_range = response
        .headers()
        .get("content-range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response
        .body_mut()
        .with_config()
        .limit(512 * 1024 * 1024)
        .read_to_vec()?;
    Ok((status, content_range, body))
}

/// A home station with a subscriber console, and `video` ingested and published as `title`;

#[test]
fn ffmpeg_plays_a_served_program_frame_for_frame_with_ranges_404s_and_503() -> Result<()> {
    if missing(&["ffmpeg", "ffprobe"])? {
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
    let (status, _, page) = get(&format!("{base}/"), None)?;
    assert_eq!(status, 200);
    let page = String::from_utf8(page)?;
    assert!(page.contains(&format!("href=\"/{program}/\"")), "{page}");
    assert!(page.contains("test card"), "{page}");
    let (status, _, json) = get(&format!("{base}/?json"), None)?;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_slice(&json)?;
    assert_eq!(json.as_array().map_or(0, Vec::len), 2, "{json}");

    // The playlist: real durations from the packaging (about 4 s, keyframe aligned).
    let (status, _, m3u8) = get(&format!("{base}/test%20card/index.m3u8"), None)?;
    assert_eq!(status, 200, "a program is found by its title too");
    let m3u8 = String::from_utf8(m3u8)?;
    let durations: Vec<f64> = m3u8
        .lines()
        .filter_map(|l| l.strip_prefix("#EXTINF:"))
        .filter_map(|l| l.trim_end_matches(',').parse().ok())
        .collect();
    assert_eq!(durations.len(), 5, "{m3u8}");
    let total: f64 = durations.iter().sum();
    assert!((total - 20.0).abs() < 0.1, "{m3u8}");
    assert!(m3u8.contains("#EXT-X-ENDLIST"), "{m3u8}");

    // ffmpeg reads the playlist through the gateway and decodes every frame, without an error.
    let url = format!("{base}/{program}/index.m3u8");
    let decode = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i", &url, "-f", "null", "-"])
        .output()?;
    let errors = String::from_utf8_lossy(&decode.stderr);
    assert!(decode.status.success(), "ffmpeg failed: {errors}");
    assert!(errors.trim().is_empty(), "ffmpeg reported errors: {errors}");
    assert_eq!(
        count_frames(&url)?,
        source_frames,
        "frames decoded via serve"
    );

    // Byte ranges of a segment.
    let seg = format!("{base}/{program}/1.ts");
    let (status, range, whole) = get(&seg, None)?;
    assert_eq!((status, range), (200, None));
    let len = whole.len();
    assert!(len > 1000);
    let (status, range, part) = get(&seg, Some("bytes=100-1099"))?;
    assert_eq!(status, 206);
    assert_eq!(
        range.as_deref(),
        Some(format!("bytes 100-1099/{len}").as_str())
    );
    assert!(part == whole[100..1100]);
    let (status, range, tail) = get(&seg, Some("bytes=-500"))?;
    assert_eq!(status, 206);
    assert_eq!(
        range.as_deref(),
        Some(format!("bytes {}-{}/{len}", len - 500, len - 1).as_str())
    );
    assert!(tail == whole[len - 500..]);
    let (status, range, _) = get(&seg, Some(&format!("bytes={}-", len - 10)))?;
    assert_eq!((status, range.is_some()), (206, true));
    let (status, range, _) = get(&seg, Some(&format!("bytes={len}-")))?;
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
        let (status, _, body) = get(&format!("{base}/{path}"), None)?;
        assert_eq!(
            status,
            404,
            "GET /{path}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    // Serving a segment prefetches the next two: once the station holding the programs has
    // stopped, those still play, and the one after them is a 503 with one line that says why,
    // not a hang or a broken connection.
    let (status, _, _) = get(&format!("{base}/{other}/0.ts"), None)?;
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_secs(3));
    assert!(home.terminate()?, "the station stops cleanly");
    let started = std::time::Instant::now();
    for prefetched in ["1.ts", "2.ts"] {
        let (status, _, body) = get(&format!("{base}/{other}/{prefetched}"), None)?;
        assert_eq!(
            status,
            200,
            "{prefetched} was prefetched: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let (status, _, body) = get(&format!("{base}/{other}/3.ts"), None)?;
    let message = String::from_utf8(body)?;
    assert_eq!(status, 503, "{message}");
    assert_eq!(message.lines().count(), 1, "one line: {message:?}");
    assert!(message.trim().len() > 10, "a message: {message:?}");
    eprintln!("503: {}", message.trim());
    let (status, _, body) = get(&format!("{base}/"), None)?;
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "503s came in {:?}",
        started.elapsed()
    );
    Ok(())
}

#[test]
fn headless_chromium_plays_the_program_page() -> Result<()> {
    if missing(&["ffmpeg", "ffprobe", "node"])? {
        return Ok(());
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/play.js");
    let playwright =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/node_modules/playwright-core");
    if !Path::new(&chromium).exists() || !playwright.exists() {
        let why = format!(
            "Chromium ({chromium}) or playwright-core ({}) is absent: run \
             `apt-get install chromium` and `npm ci` in tests/browser",
            playwright.display()
        );
        if std::env::var_os("CI").is_some() {
            bail!("{why}");
        }
        eprintln!("SKIPPED: {why}");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let video = dir.path().join("browser.mp4");
    make_video(&video, 20)?;
    let (home, console) = start_home(dir.path())?;
    let program = ingest(&home, &video, "browser test card")?;
    let gateway = Gateway::start(&home, &console)?;

    // target/test-artifacts/, beside the binaries' profile directory.
    let artifacts = bin("vodmesh-console")
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("test-artifacts"))
        .context("no target directory")?;
    std::fs::create_dir_all(&artifacts)?;
    let screenshot = artifacts.join("serve-chromium.png");
    let _ = std::fs::remove_file(&screenshot);
    let out = Command::new("node")
        .arg(&script)
        .arg(format!("{}/{program}/", gateway.base))
        .arg(&screenshot)
        .arg(dir.path().join("chromium-profile"))
        .env("CHROMIUM", &chromium)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser did not play past 5 s:\n{stdout}\n{stderr}"
    );
    let result: serde_json::Value = serde_json::from_str(
        stdout
            .lines()
            .last()
            .context("the script printed nothing")?,
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
    if missing(&["ffmpeg", "ffprobe"])? {
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
    let hls = dir.path().join("fmp4");
    std::fs::create_dir_all(&hls)?;
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y", "-i"])
        .arg(&mp4)
        .args([
            "-c",
            "copy",
            "-f",
            "hls",
            "-hls_segment_type",
            "fmp4",
            "-hls_time",
            "4",
        ])
        .args(["-hls_playlist_type", "vod"])
        .arg(hls.join("index.m3u8"))
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mp4_frames = count_frames(&mp4.to_string_lossy())?;

    // Without ffmpeg on PATH, a video file is refused with one line that says why.
    let key = dir.path().join("admin.key");
    vodmesh(&["keygen", "--out", &key.to_string_lossy()])?;
    let empty = dir.path().join("empty-path");
    std::fs::create_dir_all(&empty)?;
    let out = Command::new(bin("vodmesh"))
        .env("PATH", &empty)
        .args([
            "ingest",
            "--node",
            "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWGJG2uVMdtxTBXxBN8NDNAM5qzjdwM4WZ9CtZ8Ydmf4JZ",
        ])
        .arg("--key")
        .arg(&key)
        .args(["--title", "nope"])
        .arg(&mkv)
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
    let fmp4 = ingest(&home, &hls.join("index.m3u8"), "fmp4")?;
    let gateway = Gateway::start(&home, &console)?;
    let base = &gateway.base;

    // The encode puts a keyframe every 4 s: segments of 4, 4 and 2 s.
    let (status, _, m3u8) = get(&format!("{base}/{encoded}/index.m3u8"), None)?;
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
    let (status, _, m3u8) = get(&format!("{base}/{fmp4}/index.m3u8"), None)?;
    assert_eq!(status, 200);
    let m3u8 = String::from_utf8(m3u8)?;
    assert!(m3u8.contains("#EXT-X-MAP:URI=\"0.m4s\""), "{m3u8}");
    assert!(m3u8.contains("\n1.m4s\n"), "{m3u8}");
    let url = format!("{base}/{fmp4}/index.m3u8");
    let decode = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i", &url, "-f", "null", "-"])
        .output()?;
    let errors = String::from_utf8_lossy(&decode.stderr);
    assert!(
        decode.status.success() && errors.trim().is_empty(),
        "{errors}"
    );
    assert_eq!(
        count_frames(&url)?,
        mp4_frames,
        "frames of the fMP4 program"
    );
    Ok(())
}
