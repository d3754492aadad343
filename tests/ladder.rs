//! An adaptive-bitrate ladder (issue 22): `vodmesh ingest --ladder` encodes one video file
//! into three renditions of one program, cut at the same instants; the console plays each
//! rendition pinned (`--rendition`) frame for frame at its own height, and unpinned picks per
//! segment, still frame for frame, saying which renditions it fetched; the gateway serves the
//! master playlist and each rendition's. An HLS master
//! playlist is ingested with its variants as renditions.

use std::process::Command;

use anyhow::{Context, Result, ensure};
use vodmesh_tests::cli::{Ingest, Play};
use vodmesh_tests::http::get;
use vodmesh_tests::media::{Gateway, count_frames, decode, make_video, start_home};
use vodmesh_tests::require;

/// The test video: 12 s at 25 frames/s, 640x360.
const SECONDS: u32 = 12;

/// The picture height of the first video stream of `file`, by ffprobe.
fn height(file: &str) -> Result<u32> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=height", "-of", "csv=p=0"])
        .arg(file)
        .output()?;
    ensure!(out.status.success(), "ffprobe {file} failed");
    let text = String::from_utf8(out.stdout)?;
    (text.lines().map(|l| l.trim().trim_end_matches(',')))
        .find(|l| !l.is_empty())
        .context("no height")?
        .parse()
        .with_context(|| format!("ffprobe printed {text:?}"))
}

#[test]
fn a_ladder_of_three_renditions_plays_each_frame_for_frame_and_the_console_picks_among_them()
-> Result<()> {
    if !require::tools(&["ffmpeg", "ffprobe"])? {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let video = dir.path().join("card.mp4");
    make_video(&video, SECONDS)?;
    let frames = count_frames(&video.to_string_lossy())?;

    let (home, console) = start_home(dir.path())?;
    let program = Ingest::new(&home.addr, &home.key(), "ladder", &video)
        .publish_now()
        .args(&["--ladder", "360p,240p,144p"])
        .run()?;

    for (name, expected) in [("360p", 360), ("240p", 240), ("144p", 144)] {
        let played = Play::new(&console, &home.addr, &program)
            .files(dir.path(), name)
            .args(&["--rendition", name])
            .run()?;
        let out = dir.path().join(format!("{name}.out"));
        let file = out.to_string_lossy();
        assert_eq!(decode(&file)?, frames, "{name}: every frame of the source");
        assert_eq!(height(&file)?, expected, "{name}: its own height");
        assert_eq!(played.stats["verified"], true);
        assert_eq!(played.stats["rendition_switches"], 0, "{name}: pinned");
        let segments = played.stats["renditions"][name].as_u64();
        assert_eq!(
            segments,
            played.stats["segments"].as_u64(),
            "{name}: only it"
        );
    }

    // Unpinned: the console starts on the lowest rendition and climbs as it measures the
    // loopback's throughput; whatever it picks, the frames are all there.
    let picked = Play::new(&console, &home.addr, &program)
        .files(dir.path(), "picked")
        .run()?;
    let file = dir.path().join("picked.out");
    assert_eq!(
        decode(&file.to_string_lossy())?,
        frames,
        "picked: every frame"
    );
    let used = (picked.stats["renditions"].as_object()).context("renditions in --stats")?;
    assert!(used.contains_key("144p"), "it starts low: {used:?}");
    let total: u64 = used.values().filter_map(|v| v.as_u64()).sum();
    assert_eq!(Some(total), picked.stats["segments"].as_u64());

    // The gateway: index.m3u8 is the master playlist; each variant's segments, fetched as a
    // player would, decode to every frame at the variant's height.
    let gateway = Gateway::start(&home, &console)?;
    let base = format!("{}/{program}", gateway.base);
    let master = get(&format!("{base}/index.m3u8"), None)?;
    ensure!(master.status == 200, "master playlist: {}", master.text());
    let master = String::from_utf8(master.body)?;
    assert_eq!(master.matches("#EXT-X-STREAM-INF:").count(), 3, "{master}");
    assert!(master.contains("RESOLUTION=256x144"), "{master}");
    for (name, expected) in [("360p", 360), ("144p", 144)] {
        assert!(master.contains(&format!("\n{name}.m3u8\n")), "{master}");
        let variant = get(&format!("{base}/{name}.m3u8"), None)?;
        ensure!(variant.status == 200, "{name}.m3u8: {}", variant.text());
        let variant = String::from_utf8(variant.body)?;
        let mut bytes = Vec::new();
        for uri in variant
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let segment = get(&format!("{base}/{uri}"), None)?;
            ensure!(segment.status == 200, "{name} {uri}: {}", segment.text());
            bytes.extend(segment.body);
        }
        let file = dir.path().join(format!("{name}.gateway.ts"));
        std::fs::write(&file, &bytes)?;
        let file = file.to_string_lossy();
        assert_eq!(decode(&file)?, frames, "{name} through the gateway");
        assert_eq!(height(&file)?, expected, "{name} through the gateway");
    }
    let missing = get(&format!("{base}/4k.m3u8"), None)?;
    assert_eq!(missing.status, 404, "{}", missing.text());

    // A rendition the program does not have is one line, not a panic.
    let refused = Play::new(&console, &home.addr, &program)
        .args(&["--rendition", "4k"])
        .refused()?;
    assert!(refused.contains("no rendition \"4k\""), "{refused}");
    assert!(refused.contains("360p, 240p, 144p"), "{refused}");
    Ok(())
}

/// Packages `video` as an HLS master playlist of two video-only variants (360 and 240 lines),
/// keyframes every 4 s in both; returns the master playlist.
fn package_master(video: &std::path::Path, dir: &std::path::Path) -> Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)?;
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y", "-i"])
        .arg(video)
        .args([
            "-filter_complex",
            "[0:v]split=2[a][b];[a]scale=-2:360[v0];[b]scale=-2:240[v1]",
        ])
        .args([
            "-map",
            "[v0]",
            "-map",
            "[v1]",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
        ])
        // Without bitrates ffmpeg leaves the variants out of the master playlist.
        .args(["-b:v:0", "800k", "-b:v:1", "400k"])
        .args([
            "-force_key_frames",
            "expr:gte(t,n_forced*4)",
            "-sc_threshold",
            "0",
        ])
        .args(["-f", "hls", "-hls_time", "4", "-hls_playlist_type", "vod"])
        .args([
            "-var_stream_map",
            "v:0 v:1",
            "-master_pl_name",
            "master.m3u8",
        ])
        .arg("-hls_segment_filename")
        .arg(dir.join("v%v_%03d.ts"))
        .arg(dir.join("v%v.m3u8"))
        .output()?;
    ensure!(
        out.status.success(),
        "ffmpeg could not package a master playlist: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(dir.join("master.m3u8"))
}

#[test]
fn a_master_playlist_is_ingested_with_its_variants_as_renditions() -> Result<()> {
    if !require::tools(&["ffmpeg", "ffprobe"])? {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let video = dir.path().join("card.mp4");
    make_video(&video, SECONDS)?;
    let frames = count_frames(&video.to_string_lossy())?;
    let master = package_master(&video, &dir.path().join("hls"))?;

    let (home, console) = start_home(dir.path())?;
    let program = Ingest::new(&home.addr, &home.key(), "master", &master)
        .publish_now()
        .run()?;
    for (name, expected) in [("360p", 360), ("240p", 240)] {
        Play::new(&console, &home.addr, &program)
            .files(dir.path(), name)
            .args(&["--rendition", name])
            .run()?;
        let out = dir.path().join(format!("{name}.out"));
        let file = out.to_string_lossy();
        assert_eq!(decode(&file)?, frames, "{name}: every frame of the source");
        assert_eq!(height(&file)?, expected, "{name}: its own height");
    }
    Ok(())
}
