//! Video files: packaged to HLS with ffmpeg (`vodmesh ingest film.mp4`), after ffprobe says
//! what is in them. The packaging's playlist is then ingested as any HLS playlist.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::{Source, hls_playlist_file};

/// Extensions of the video containers packaged with ffmpeg.
pub const VIDEO_EXTENSIONS: &[&str] = &[
    "mp4", "m4v", "mkv", "mov", "webm", "avi", "flv", "mpg", "mpeg", "ogv", "wmv", "3gp", "mts",
    "m2ts",
];
/// Target segment duration of packaged video, seconds.
pub const HLS_SEGMENT_SECONDS: u32 = 4;

/// Whether `name` (a path or URL path) is a video container that ffmpeg packages.
pub fn is_video(name: &str) -> bool {
    Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| VIDEO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Whether ffmpeg and ffprobe are on PATH (video files can be ingested).
pub fn ffmpeg_installed() -> bool {
    installed("ffmpeg") && installed("ffprobe")
}

/// Whether `program` runs (is on PATH).
fn installed(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("-version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a command to completion; fails with the last line it printed on stderr.
pub(crate) async fn run_tool(cmd: &mut tokio::process::Command, what: &str) -> Result<Vec<u8>> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        bail!("{what} failed: {}", last.unwrap_or("no message").trim());
    }
    Ok(out.stdout)
}

/// The demuxers (ffprobe's `format_name`) of the containers a video file may be in. Formats
/// that read other files or URLs named inside them (hls, concat, dash, image sequences, ...)
/// are not among them: a downloaded "video" that is really a playlist naming
/// `file:///etc/...` would otherwise be packaged with the contents of this machine's files.
const VIDEO_DEMUXERS: &[&str] = &[
    "mov", "matroska", "avi", "flv", "mpeg", "mpegts", "ogg", "asf",
];

/// What ffprobe finds in a media file.
pub(crate) struct Probed {
    /// The demuxer to force when packaging (one of [`VIDEO_DEMUXERS`]).
    pub(crate) demuxer: &'static str,
    /// The first video stream's codec and pixel format.
    pub(crate) video: Option<(String, String)>,
    /// The first audio stream's codec.
    audio: Option<String>,
}

/// Probes the media file `path` with ffprobe (local files only); refused unless its container
/// is one of [`VIDEO_DEMUXERS`].
pub(crate) async fn probe(path: &Path) -> Result<Probed> {
    let out = run_tool(
        tokio::process::Command::new("ffprobe")
            .args(["-v", "error", "-protocol_whitelist", "file"])
            .args([
                "-show_entries",
                "stream=codec_type,codec_name,pix_fmt:format=format_name",
            ])
            .args(["-of", "json"])
            .arg(path),
        &format!("ffprobe of {}", path.display()),
    )
    .await?;
    let json: serde_json::Value =
        serde_json::from_slice(&out).context("ffprobe printed something other than JSON")?;
    let format = json["format"]["format_name"].as_str().unwrap_or_default();
    let demuxer = format
        .split(',')
        .find_map(|name| VIDEO_DEMUXERS.iter().find(|d| **d == name).copied())
        .with_context(|| {
            format!(
                "{} is not a video container vodmesh packages (ffprobe says {format:?}; \
                 mp4, mkv, webm, mov, avi, flv, mpeg, MPEG-TS, ogg and wmv are)",
                path.display()
            )
        })?;
    let streams = json["streams"].as_array().cloned().unwrap_or_default();
    let first = |kind: &str| streams.iter().find(|s| s["codec_type"] == kind);
    let text = |s: &serde_json::Value, field: &str| s[field].as_str().unwrap_or("").to_string();
    Ok(Probed {
        demuxer,
        video: first("video").map(|s| (text(s, "codec_name"), text(s, "pix_fmt"))),
        audio: first("audio").map(|s| text(s, "codec_name")),
    })
}

/// Packages the video file `path` to HLS (MPEG-TS segments of about
/// [`HLS_SEGMENT_SECONDS`], cut at keyframes) in a new temporary directory; returns the
/// directory and its playlist.
pub async fn package_video(path: &Path) -> Result<(tempfile::TempDir, PathBuf)> {
    if !ffmpeg_installed() {
        bail!(
            "{} is a video file: vodmesh packages video to HLS with ffmpeg, which is not \
             installed (install it, e.g. `apt-get install ffmpeg`, or give an HLS playlist)",
            path.display()
        );
    }
    let Probed {
        demuxer,
        video,
        audio,
    } = probe(path).await?;
    if video.is_none() && audio.is_none() {
        bail!("{} has no video or audio stream", path.display());
    }
    // MPEG-TS HLS that every player plays: 8-bit 4:2:0 H.264 video, AAC (or MP3) audio.
    let copy = video
        .as_ref()
        .is_none_or(|(codec, pix)| codec == "h264" && (pix == "yuv420p" || pix == "yuvj420p"))
        && audio.as_deref().is_none_or(|a| a == "aac" || a == "mp3");
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let playlist = dir.path().join("index.m3u8");
    let secs = HLS_SEGMENT_SECONDS.to_string();
    let mut cmd = tokio::process::Command::new("ffmpeg");
    // Local files only, read by the demuxer ffprobe found: nothing named inside the file is
    // fetched or opened.
    cmd.args(["-nostdin", "-v", "error", "-protocol_whitelist", "file"])
        .args(["-f", demuxer, "-i"])
        .arg(path)
        .args(["-map", "0:v:0?", "-map", "0:a:0?", "-sn", "-dn"]);
    if copy {
        cmd.args(["-c", "copy"]);
    } else {
        // A keyframe every 4 s exactly, so that every segment starts with one.
        let keys = format!("expr:gte(t,n_forced*{secs})");
        cmd.args(["-c:v", "libx264", "-preset", "veryfast", "-crf", "21"])
            .args(["-pix_fmt", "yuv420p", "-sc_threshold", "0"])
            .args(["-force_key_frames", &keys])
            // Every source frame once, none duplicated or dropped to force a constant rate.
            .args(["-fps_mode", "passthrough"])
            .args(["-c:a", "aac", "-b:a", "128k", "-ac", "2"]);
    }
    cmd.args(["-f", "hls", "-hls_time", &secs, "-hls_list_size", "0"])
        .args(["-hls_playlist_type", "vod", "-hls_segment_type", "mpegts"])
        .arg("-hls_segment_filename")
        .arg(dir.path().join("seg%05d.ts"))
        .arg(&playlist);
    let how = if copy {
        "stream copy"
    } else {
        "H.264/AAC encode"
    };
    eprintln!("packaging {} to HLS with ffmpeg ({how})...", path.display());
    run_tool(&mut cmd, &format!("ffmpeg packaging of {}", path.display())).await?;
    Ok((dir, playlist))
}

/// Ingests the HLS packaging of the video file `path`.
pub(super) async fn packaged(path: &Path) -> Result<Source> {
    let (dir, playlist) = package_video(path).await?;
    let (content, pieces) = hls_playlist_file(&playlist).await?;
    Ok(Source::packaged(content, pieces, dir))
}
