//! Every packaging plays from the console (issue 27): MPEG-TS HLS, fMP4 HLS (its init segment
//! is segment 0, duration 0) and an mp4 file packaged by `vodmesh ingest`, each played by
//! `vodmesh-console play` from the start and with `--start` in the middle, decoded by ffmpeg
//! from the console's own output, through a `--player "ffmpeg -i - -f null -"` pipe, and
//! through the gateway (`vodmesh-console serve`). The frames decoded are what ffprobe counts
//! in the source from that point on, within one segment's frames (the console enters HLS at
//! the start of the segment that holds the time sought).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use vodmesh_tests::bin;
use vodmesh_tests::media::{
    Gateway, count_frames, ffmpeg_frames, frames_from, ingest, make_video, missing, package_hls,
    start_home,
};

/// The test video: 12 s at 25 frames/s, a keyframe every 2 s, packaged in 4 s segments.
const SECONDS: u32 = 12;
const FPS: f64 = 25.0;
/// The longest segment of every packaging here, in frames (4 s).
const SEGMENT_FRAMES: u64 = 100;

/// Where a play starts: the beginning, or `--start 6` (in the middle of the second segment).
const STARTS: [Option<f64>; 2] = [None, Some(6.0)];

/// `vodmesh-console play --speed max` of `program` with `--out out` (and `--start`); fails
/// with its stderr unless it exits 0.
fn play_to_file(
    node: &str,
    console: &Path,
    program: &str,
    start: Option<f64>,
    out: &Path,
) -> Result<()> {
    let mut command = Command::new(bin("vodmesh-console"));
    command
        .env("VODMESH_HOME", console)
        .args(["play", "--node", node, "--speed", "max", "--out"])
        .arg(out);
    if let Some(s) = start {
        command.args(["--start", &s.to_string()]);
    }
    let run = command.arg(program).output()?;
    if !run.status.success() {
        bail!("play failed: {}", String::from_utf8_lossy(&run.stderr));
    }
    Ok(())
}

/// `vodmesh-console play --player "ffmpeg -i - -f null -"`: the frames the player decoded,
/// from its progress line (the player writes to the console's stderr).
fn play_into_ffmpeg(node: &str, console: &Path, program: &str, start: Option<f64>) -> Result<u64> {
    let mut command = Command::new(bin("vodmesh-console"));
    command.env("VODMESH_HOME", console).args([
        "play",
        "--node",
        node,
        "--speed",
        "max",
        "--player",
        "ffmpeg -i - -f null -",
    ]);
    if let Some(s) = start {
        command.args(["--start", &s.to_string()]);
    }
    let run = command.arg(program).output()?;
    let stderr = String::from_utf8_lossy(&run.stderr);
    if !run.status.success() {
        bail!("play --player failed: {stderr}");
    }
    ffmpeg_frames(&stderr).with_context(|| format!("no frame count from the player: {stderr}"))
}

/// `ffmpeg -v error [-ss START] -i INPUT -f null -`: the frames decoded; fails on any error
/// ffmpeg reports.
fn decode(input: &str, start: Option<f64>) -> Result<u64> {
    let mut command = Command::new("ffmpeg");
    command.args(["-nostdin", "-v", "error", "-stats"]);
    if let Some(s) = start {
        command.args(["-ss", &s.to_string()]);
    }
    let run = command.args(["-i", input, "-f", "null", "-"]).output()?;
    let stderr = String::from_utf8_lossy(&run.stderr);
    let errors: Vec<&str> = stderr
        .split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("frame="))
        .collect();
    if !run.status.success() || !errors.is_empty() {
        bail!("ffmpeg could not decode {input}: {errors:?}");
    }
    ffmpeg_frames(&stderr).with_context(|| format!("no frame count for {input}: {stderr}"))
}

/// What a player seeking to `at` seconds fetches from the gateway: the init segment when the
/// playlist has one (`#EXT-X-MAP`), then every media segment from the one playing at `at`.
fn served_from(base: &str, program: &str, at: f64) -> Result<Vec<u8>> {
    let get = |name: &str| -> Result<Vec<u8>> {
        let url = format!("{base}/{program}/{name}");
        let mut response = ureq::get(&url).call()?;
        Ok(response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_vec()?)
    };
    let playlist = String::from_utf8(get("index.m3u8")?)?;
    let mut bytes = Vec::new();
    if let Some(map) = playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MAP:URI=\""))
    {
        bytes.extend(get(map.trim_end_matches('"'))?);
    }
    let mut lines = playlist.lines();
    let mut t = 0.0;
    while let Some(line) = lines.next() {
        let Some(extinf) = line.strip_prefix("#EXTINF:") else {
            continue;
        };
        let duration: f64 = extinf.trim_end_matches(',').parse()?;
        let name = lines.next().context("#EXTINF without a segment")?;
        if t + duration > at {
            bytes.extend(get(name)?);
        }
        t += duration;
    }
    Ok(bytes)
}

/// Asserts `got` frames decoded from a play that starts at `start` hold every frame the
/// source has from there on, and at most one segment more (the console enters at the start
/// of the segment holding `start`).
fn assert_frames(what: &str, got: u64, source: u64, start: Option<f64>) {
    assert!(
        got >= source && got <= source + SEGMENT_FRAMES,
        "{what}: {got} frames decoded, the source has {source} from {start:?} on"
    );
}

#[test]
fn ts_fmp4_and_packaged_mp4_play_from_the_console_a_player_pipe_and_the_gateway() -> Result<()> {
    if missing(&["ffmpeg", "ffprobe"])? {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let video = dir.path().join("card.mp4");
    make_video(&video, SECONDS)?;
    let total = count_frames(&video.to_string_lossy())?;
    assert_eq!(total, (f64::from(SECONDS) * FPS) as u64);
    let ts = package_hls(&video, &dir.path().join("ts"), false)?;
    let fmp4 = package_hls(&video, &dir.path().join("fmp4"), true)?;

    let (home, console) = start_home(dir.path())?;
    let node = home.addr.to_string();
    let cases = [
        ("TS HLS", ingest(&home, &ts, "ts")?),
        ("fMP4 HLS", ingest(&home, &fmp4, "fmp4")?),
        ("mp4 packaged by ingest", ingest(&home, &video, "mp4")?),
    ];
    let gateway = Gateway::start(&home, &console)?;

    for (what, program) in &cases {
        for start in STARTS {
            let source = frames_from(&video, start.unwrap_or(0.0))?;
            let case = format!("{what} from {start:?}");

            // The console's own output, read back by ffmpeg.
            let out = dir
                .path()
                .join(format!("{program}-{}.out", start.unwrap_or(0.0)));
            play_to_file(&node, &console, program, start, &out)?;
            let file = out.to_string_lossy();
            assert_frames(
                &format!("{case}, --out"),
                decode(&file, None)?,
                source,
                start,
            );
            assert_eq!(
                count_frames(&file)?,
                decode(&file, None)?,
                "{case}: ffprobe and ffmpeg agree"
            );

            // Piped into a player.
            let piped = play_into_ffmpeg(&node, &console, program, start)?;
            assert_frames(&format!("{case}, --player"), piped, source, start);

            // Through the gateway: ffmpeg reads the playlist from the start; from the middle,
            // the segments a player seeking there fetches (ffmpeg 5.1 cannot seek in fMP4
            // HLS, even from its own files).
            let url = format!("{}/{program}/index.m3u8", gateway.base);
            let served = match start {
                None => decode(&url, None)?,
                Some(at) => {
                    let fetched = dir.path().join(format!("{program}-gateway.out"));
                    std::fs::write(&fetched, served_from(&gateway.base, program, at)?)?;
                    decode(&fetched.to_string_lossy(), None)?
                }
            };
            assert_frames(&format!("{case}, gateway"), served, source, start);
        }
    }

    // The fMP4 program's output starts with its init segment, from the start and after
    // --start: the bytes are the package's init.mp4 then the media segments from there.
    let init = std::fs::read(dir.path().join("fmp4/init.mp4"))?;
    for start in STARTS {
        let out = dir
            .path()
            .join(format!("{}-{}.out", cases[1].1, start.unwrap_or(0.0)));
        let played = std::fs::read(&out)?;
        assert!(
            played.starts_with(&init),
            "the fMP4 output from {start:?} does not start with the init segment"
        );
    }
    Ok(())
}
