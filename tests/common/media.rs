//! Real media for the tests: test videos made by ffmpeg, frame counts by ffprobe, HLS
//! packages, a `vodmesh-console serve` gateway process, and programs ingested into a home
//! station with a logged-in console.
//!
//! Where ffmpeg is absent a test says so and passes, except under CI (`CI` set), where it
//! fails: CI installs it (.ci/run).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::{NodeProcess, bin, subscriber, vodmesh};

/// Whether `program -version` (ffmpeg's spelling) or `program --version` runs.
pub fn installed(program: &str) -> bool {
    let flag = if program.starts_with("ff") {
        "-version"
    } else {
        "--version"
    };
    Command::new(program)
        .arg(flag)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Skips (returns true) when a tool is missing, with a line that says which; under CI a
/// missing tool is a failure.
pub fn missing(tools: &[&str]) -> Result<bool> {
    let absent: Vec<&str> = tools.iter().copied().filter(|t| !installed(t)).collect();
    if absent.is_empty() {
        return Ok(false);
    }
    if std::env::var_os("CI").is_some() {
        bail!("{absent:?} not installed, but CI must run this test (see .ci/run)");
    }
    eprintln!("SKIPPED: {absent:?} not installed (apt-get install ffmpeg chromium nodejs npm)");
    Ok(true)
}

/// A `seconds` long H.264/AAC test video at 25 frames/s (testsrc + a 440 Hz sine) with a
/// keyframe every 2 s.
pub fn make_video(path: &Path, seconds: u32) -> Result<()> {
    let secs = seconds.to_string();
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y"])
        .args(["-f", "lavfi", "-i"])
        .arg(format!("testsrc=duration={secs}:size=640x360:rate=25"))
        .args(["-f", "lavfi", "-i"])
        .arg(format!("sine=frequency=440:duration={secs}"))
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "50"])
        .args(["-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest"])
        .arg(path)
        .output()?;
    if !out.status.success() {
        bail!(
            "ffmpeg could not make the test video: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Video frames that ffprobe decodes from `input` (a file or URL).
pub fn count_frames(input: &str) -> Result<u64> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(input)
        .output()?;
    if !out.status.success() {
        bail!(
            "ffprobe {input} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout)?;
    // One line per stream entry (a stream may be listed again under its program).
    text.lines()
        .map(|l| l.trim().trim_end_matches(','))
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .parse()
        .with_context(|| format!("ffprobe printed {text:?}"))
}

/// A `vodmesh-console serve` process; killed when dropped.
pub struct Gateway {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Gateway {
    /// Starts `vodmesh-console serve` on a free loopback port, with the console home `home`.
    pub fn start(node: &NodeProcess, home: &Path) -> Result<Self> {
        let mut child = Command::new(bin("vodmesh-console"))
            .env("VODMESH_HOME", home)
            .args(["serve", "--node", &node.addr.to_string()])
            .args(["--http", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().context("serve printed nothing")??;
        // "serving http://127.0.0.1:PORT/ (loopback only: ...)"
        let Some(url) = first
            .strip_prefix("serving ")
            .and_then(|r| r.split_whitespace().next())
        else {
            bail!("unexpected first line of serve: {first}");
        };
        assert!(
            first.contains("loopback"),
            "says it binds to loopback: {first}"
        );
        std::thread::spawn(move || for _ in lines {});
        Ok(Self {
            child,
            base: url.trim_end_matches('/').to_string(),
        })
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Ingests `video` (a media file or an HLS playlist) into the home station `home` with its
/// admin key, published now as `title`; returns the program id.
pub fn ingest(home: &NodeProcess, video: &Path, title: &str) -> Result<String> {
    let key = home.data.join("identity.key");
    let out = vodmesh(&[
        "ingest",
        "--node",
        &home.addr.to_string(),
        "--key",
        &key.to_string_lossy(),
        "--title",
        title,
        "--publish-at",
        "now",
        &video.to_string_lossy(),
    ])?;
    let program = out.lines().last().unwrap_or_default().to_string();
    if program.len() != 64 {
        bail!("ingest did not print a program id last: {out}");
    }
    Ok(program)
}

/// A home station (two engines, auth, content manager) under `dir/home`, and a console logged
/// in as a subscriber under `dir/console`; returns the station and the console's home.
pub fn start_home(dir: &Path) -> Result<(NodeProcess, PathBuf)> {
    let home = NodeProcess::start(
        &dir.join("home"),
        &["--engines", "2", "--home", "--content-manager", "--auth"],
    )?;
    let console = dir.join("console");
    subscriber(&home.addr, &dir.join("home/identity.key"), &console, "viv")?;
    Ok((home, console))
}

/// Packages `video` as an HLS VOD playlist of about 4 s segments under `dir` with ffmpeg
/// (stream copy): MPEG-TS segments, or fMP4 ones with an init segment (`#EXT-X-MAP`). Returns
/// the playlist's path.
pub fn package_hls(video: &Path, dir: &Path, fmp4: bool) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let playlist = dir.join("index.m3u8");
    let kind = if fmp4 { "fmp4" } else { "mpegts" };
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y", "-i"])
        .arg(video)
        .args(["-c", "copy", "-f", "hls", "-hls_time", "4"])
        .args(["-hls_segment_type", kind, "-hls_playlist_type", "vod"])
        .arg(&playlist)
        .output()?;
    if !out.status.success() {
        bail!(
            "ffmpeg could not package {}: {}",
            video.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(playlist)
}

/// Video frames of `input` whose presentation time is at `seconds` or later, as ffprobe
/// lists its packets.
pub fn frames_from(input: &Path, seconds: f64) -> Result<u64> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0"])
        .args(["-show_entries", "packet=pts_time", "-of", "csv=p=0"])
        .arg(input)
        .output()?;
    if !out.status.success() {
        bail!(
            "ffprobe {} failed: {}",
            input.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout)?;
    Ok(text
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse::<f64>().ok())
        .filter(|t| *t >= seconds - 1e-6)
        .count() as u64)
}

/// The last frame count ffmpeg's progress line printed in `stderr` (`frame=  300 fps=...`).
pub fn ffmpeg_frames(stderr: &str) -> Option<u64> {
    stderr
        .rsplit("frame=")
        .next()
        .filter(|_| stderr.contains("frame="))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}
