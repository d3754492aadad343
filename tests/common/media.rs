//! Test content: pseudo-random bytes ([`random_file`]), and real media: test videos made by
//! ffmpeg, frame counts by ffprobe, HLS packages, a `vodmesh-console serve` gateway process,
//! and a home station with a logged-in console to ingest them into. The tests that need
//! ffmpeg check for it first ([`crate::require::tools`]). And [`one_segment`], the content of
//! a program of one 5-byte segment, for tests that speak the ingest protocol themselves.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::cli::{Ingest, console, subscriber};
use crate::process::{Child, Node, NodeProcess, Tail};

/// Writes `len` pseudo-random bytes (seeded, so failures reproduce) to `path`.
pub fn random_file(path: &Path, len: usize, seed: u64) -> Result<Vec<u8>> {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut bytes = vec![0u8; len];
    rng.fill_bytes(&mut bytes);
    std::fs::write(path, &bytes)?;
    Ok(bytes)
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
    _child: Child,
    /// `http://127.0.0.1:PORT`, and `/KEY` when the gateway has an access key.
    pub base: String,
    /// Its stderr, with the console's decisions logged (`RUST_LOG=vodmesh_console=debug`).
    pub log: Tail,
}

impl Gateway {
    /// Starts `vodmesh-console serve` on a free loopback port, with the console home `home`.
    pub fn start(node: &NodeProcess, home: &Path) -> Result<Self> {
        Self::start_at(node, home, "127.0.0.1:0")
    }

    /// Starts `vodmesh-console serve --http HTTP`; `base` is reached over loopback whatever
    /// `http` binds, and holds the access key a gateway beyond loopback prints.
    pub fn start_at(node: &NodeProcess, home: &Path, http: &str) -> Result<Self> {
        let mut command = console(None, home);
        command
            .env("RUST_LOG", "vodmesh_console=debug")
            .args(["serve", "--node", &node.addr.to_string()])
            .args(["--http", http])
            .stderr(Stdio::piped());
        let loopback = http.starts_with("127.");
        // "serving http://127.0.0.1:PORT/ (loopback only: ...)", or beyond loopback
        // "serving http://0.0.0.0:PORT/KEY/ (reachable from other machines, ...)"
        let (mut child, base) =
            Child::spawn_until(&mut command, "vodmesh-console serve", |line| {
                let url = line
                    .strip_prefix("serving ")
                    .and_then(|r| r.split_whitespace().next())
                    .with_context(|| format!("unexpected first line of serve: {line}"))?;
                anyhow::ensure!(
                    line.contains("loopback") == loopback,
                    "says whether it binds to loopback: {line}"
                );
                let url = url
                    .trim_end_matches('/')
                    .replace("//0.0.0.0:", "//127.0.0.1:");
                Ok(Some(url))
            })?;
        let log = Tail::new(child.inner().stderr.take().context("no stderr")?);
        Ok(Self {
            _child: child,
            base,
            log,
        })
    }
}

/// Ingests `video` (a media file or an HLS playlist) into the home station `home` with its
/// admin key, published now as `title`; returns the program id.
pub fn ingest(home: &NodeProcess, video: &Path, title: &str) -> Result<String> {
    Ingest::new(&home.addr, &home.key(), title, video)
        .publish_now()
        .run()
}

/// A home station (two engines, auth, content manager) under `dir/home`, and a console logged
/// in as a subscriber under `dir/console`; returns the station and the console's home.
pub fn start_home(dir: &Path) -> Result<(NodeProcess, PathBuf)> {
    let home = Node::new(&dir.join("home")).engines(2).home().start()?;
    let console = dir.join("console");
    subscriber(&home.addr, &home.key(), &console, "viv")?;
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

/// `ffmpeg -v error -i INPUT -f null -` (a file or URL): the frames decoded; fails on any
/// error ffmpeg reports.
pub fn decode(input: &str) -> Result<u64> {
    let run = Command::new("ffmpeg")
        .args([
            "-nostdin", "-v", "error", "-stats", "-i", input, "-f", "null", "-",
        ])
        .output()?;
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

/// The content of a program `title` of one segment, the 5 bytes `bytes`, for tests that begin
/// an ingest themselves.
pub fn one_segment(title: &str) -> vodmesh_proto::manifest::ManifestContent {
    use vodmesh_proto::manifest::{ManifestContent, SegmentEntry};
    ManifestContent {
        title: title.into(),
        content_type: "application/octet-stream".into(),
        duration_ms: 1000,
        segments: vec![SegmentEntry {
            index: 0.into(),
            duration_ms: 1000,
            size: 5,
            hash: vodmesh_proto::SegmentHash::of(b"bytes"),
        }],
        renditions: Vec::new(),
    }
}
