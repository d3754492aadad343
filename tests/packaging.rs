//! Every packaging plays from the console (issue 27): MPEG-TS HLS, fMP4 HLS (its init segment
//! is segment 0, duration 0) and an mp4 file packaged by `vodmesh ingest`, each played by
//! `vodmesh-console play` from the start and with `--start` in the middle, decoded by ffmpeg
//! from the console's own output, through a `--player "ffmpeg -i - -f null -"` pipe, and
//! through the gateway (`vodmesh-console serve`). The frames decoded are what ffprobe counts
//! in the source from that point on, within one segment's frames (the console enters HLS at
//! the start of the segment that holds the time sought).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use vodmesh_tests::cli::{Play, bin};
use vodmesh_tests::http::get;
use vodmesh_tests::media::{
    Gateway, count_frames, decode, ffmpeg_frames, frames_from, ingest, make_video, package_hls,
    start_home,
};
use vodmesh_tests::process::NodeProcess;
use vodmesh_tests::require;

/// The test video: 12 s at 25 frames/s, a keyframe every 2 s, packaged in 4 s segments.
const SECONDS: u32 = 12;
const FPS: f64 = 25.0;
/// The longest segment of every packaging here, in frames (4 s).
const SEGMENT_FRAMES: u64 = 100;

/// Where a play starts: the beginning, or `--start 6` (in the middle of the second segment).
const STARTS: [Option<f64>; 2] = [None, Some(6.0)];

/// `vodmesh-console play --speed max` of `program` through `home`, as the console under
/// `console`, from `--start` when given.
fn play(home: &NodeProcess, console: &Path, program: &str, start: Option<f64>) -> Play {
    let play = Play::new(console, &home.addr, program);
    match start {
        Some(s) => play.args(&["--start", &s.to_string()]),
        None => play,
    }
}

/// `vodmesh-console play --player "ffmpeg -i - -f null -"`: the frames the player decoded,
/// from its progress line (the player writes to the console's stderr).
fn play_into_ffmpeg(
    home: &NodeProcess,
    console: &Path,
    program: &str,
    start: Option<f64>,
) -> Result<u64> {
    let played = play(home, console, program, start)
        .player("ffmpeg -i - -f null -")
        .run()?;
    ffmpeg_frames(&played.log)
        .with_context(|| format!("no frame count from the player: {}", played.log))
}

/// What a player seeking to `at` seconds fetches from the gateway: the init segment when the
/// playlist has one (`#EXT-X-MAP`), then every media segment from the one playing at `at`.
fn served_from(base: &str, program: &str, at: f64) -> Result<Vec<u8>> {
    let get = |name: &str| -> Result<Vec<u8>> {
        let reply = get(&format!("{base}/{program}/{name}"), None)?;
        anyhow::ensure!(reply.status == 200, "GET {name}: {}", reply.text());
        Ok(reply.body)
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
    if !require::tools(&["ffmpeg", "ffprobe"])? {
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
            play(&home, &console, program, start).out(&out).run()?;
            let file = out.to_string_lossy();
            assert_frames(&format!("{case}, --out"), decode(&file)?, source, start);
            assert_eq!(
                count_frames(&file)?,
                decode(&file)?,
                "{case}: ffprobe and ffmpeg agree"
            );

            // Piped into a player.
            let piped = play_into_ffmpeg(&home, &console, program, start)?;
            assert_frames(&format!("{case}, --player"), piped, source, start);

            // Through the gateway: ffmpeg reads the playlist from the start; from the middle,
            // the segments a player seeking there fetches (ffmpeg 5.1 cannot seek in fMP4
            // HLS, even from its own files).
            let url = format!("{}/{program}/index.m3u8", gateway.base);
            let served = match start {
                None => decode(&url)?,
                Some(at) => {
                    let fetched = dir.path().join(format!("{program}-gateway.out"));
                    std::fs::write(&fetched, served_from(&gateway.base, program, at)?)?;
                    decode(&fetched.to_string_lossy())?
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

/// Drives `vodmesh-console play --speed 1` on a pseudo-terminal the way a viewer does: waits
/// for the progress line to show a media segment written (0.1 MiB or more), presses right
/// (seek +30 s, past the end of a 12 s program: the last segment), and waits for the end.
const SEEKER: &str = r#"
import os, pty, re, select, sys, time
console, node, out, program = sys.argv[1:5]
pid, fd = pty.fork()
if pid == 0:
    os.execv(console, [console, "play", "--node", node, "--speed", "1", "--out", out, program])
seen = b""
end = time.time() + 60
while not re.search(rb"playing .* 0\.[1-9] MiB", seen):
    ready, _, _ = select.select([fd], [], [], max(0.0, end - time.time()))
    if not ready:
        sys.exit("no progress line; the terminal shows %r" % seen[-300:])
    try:
        seen += os.read(fd, 4096)
    except OSError:
        sys.exit("the console ended early: %r" % seen[-300:])
os.write(fd, b"\x1b[C")
while True:
    try:
        if not os.read(fd, 4096):
            break
    except OSError:
        break
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"#;

#[test]
fn a_key_seek_in_an_fmp4_program_writes_the_init_segment_again() -> Result<()> {
    if !require::tools(&["ffmpeg", "ffprobe", "python3"])? {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let video = dir.path().join("card.mp4");
    make_video(&video, SECONDS)?;
    let package = dir.path().join("fmp4");
    let playlist = package_hls(&video, &package, true)?;
    let (home, console) = start_home(dir.path())?;
    let program = ingest(&home, &playlist, "fmp4")?;
    let out = dir.path().join("seek.out");
    let viewer = Command::new("python3")
        .env("VODMESH_HOME", &console)
        .args(["-c", SEEKER])
        .arg(bin("vodmesh-console"))
        .arg(home.addr.to_string())
        .arg(&out)
        .arg(&program)
        .output()?;
    assert!(
        viewer.status.success(),
        "{}",
        String::from_utf8_lossy(&viewer.stderr)
    );
    // The output is the package's files end to end: the init segment, the media segments
    // written before the seek, the init segment again, then the last media segment.
    let init = std::fs::read(package.join("init.mp4"))?;
    let media: Vec<Vec<u8>> = (0..3)
        .map(|i| std::fs::read(package.join(format!("index{i}.m4s"))))
        .collect::<std::io::Result<_>>()?;
    let played = std::fs::read(&out)?;
    let mut rest = played.as_slice();
    let mut pieces = Vec::new();
    while !rest.is_empty() {
        let (name, len) = if rest.starts_with(&init) {
            ("init".to_string(), init.len())
        } else {
            let i = media
                .iter()
                .position(|m| rest.starts_with(m))
                .context("the output holds bytes that are no segment of the package")?;
            (format!("media{i}"), media[i].len())
        };
        pieces.push(name);
        rest = &rest[len..];
    }
    eprintln!("written: {pieces:?}");
    let inits = pieces.iter().filter(|p| *p == "init").count();
    assert_eq!(
        pieces.first().map(String::as_str),
        Some("init"),
        "{pieces:?}"
    );
    assert_eq!(
        inits, 2,
        "the init segment again after the seek: {pieces:?}"
    );
    assert_eq!(
        pieces.last().map(String::as_str),
        Some("media2"),
        "{pieces:?}"
    );
    // A player decodes every media segment written, across the repeated header.
    let frames = decode(&out.to_string_lossy())?;
    assert_eq!(frames, SEGMENT_FRAMES * (pieces.len() - inits) as u64);
    Ok(())
}
