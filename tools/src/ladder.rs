//! `vodmesh ingest --ladder 1080p,720p,...`: one video file encoded as an adaptive-bitrate
//! ladder, one program.
//!
//! Each rung is an H.264/AAC encode of the source at that height (the width follows the
//! source's aspect ratio), packaged to MPEG-TS HLS by ffmpeg with a keyframe forced every
//! [`HLS_SEGMENT_SECONDS`] and no other (scene cuts off), so that every rung is cut at the
//! same instants: segment `i` of any rung may follow segment `i - 1` of any other. The rungs
//! become one program ([`crate::source::renditions`]) whose manifest's
//! [`vodmesh_proto::manifest::Rendition`]s say which segments are whose, with the figures a
//! master playlist needs (peak bandwidth, resolution, RFC 6381 codecs).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use vodmesh_proto::manifest::MAX_RENDITIONS;

use crate::source::renditions::{Rung, combine};
use crate::source::{self, HLS_SEGMENT_SECONDS, Piece, Source};

/// The tallest rung accepted (8K).
const MAX_HEIGHT: u32 = 4320;
/// The shortest rung accepted.
const MIN_HEIGHT: u32 = 64;

/// Parses one rung of `--ladder`: a height in pixels, as `720p` or `720` (clap names the
/// flag and the value in front of the error).
pub fn parse_rung(s: &str) -> Result<u32> {
    let digits = s.trim().strip_suffix(['p', 'P']).unwrap_or(s.trim());
    let height: u32 = digits.parse().context("expected a height like 720p")?;
    if !(MIN_HEIGHT..=MAX_HEIGHT).contains(&height) || !height.is_multiple_of(2) {
        bail!("a height is an even number of pixels from {MIN_HEIGHT} to {MAX_HEIGHT}");
    }
    Ok(height)
}

/// Checks a whole ladder: 1 to [`MAX_RENDITIONS`] rungs, no height twice.
pub fn check(rungs: &[u32]) -> Result<()> {
    if rungs.is_empty() || rungs.len() > MAX_RENDITIONS {
        bail!("--ladder takes 1 to {MAX_RENDITIONS} heights");
    }
    for (n, h) in rungs.iter().enumerate() {
        if rungs[..n].contains(h) {
            bail!("--ladder names {h}p twice");
        }
    }
    Ok(())
}

/// The video bitrate cap of a rung, kbit/s: about 5 Mbit/s at 1080p, 2.2 at 720p, 1 at 480p,
/// 0.25 at 240p (a quality-capped encode, CRF 23, never above it).
fn max_kbps(height: u32) -> u64 {
    (u64::from(height) * u64::from(height) * 43 / 10_000).max(150)
}

/// Opens the video file `path` as a ladder of `rungs` (heights): encodes every rung, reads and
/// hashes every segment.
pub async fn open(path: &Path, rungs: &[u32]) -> Result<Source> {
    check(rungs)?;
    if !source::is_video(&path.to_string_lossy()) {
        bail!(
            "--ladder encodes a video file (mp4, mkv, mov, webm, ...); {} is not one",
            path.display()
        );
    }
    if !source::ffmpeg_installed() {
        bail!(
            "--ladder encodes with ffmpeg, which is not installed (e.g. `apt-get install ffmpeg`)"
        );
    }
    let probed = source::probe(path).await?;
    if probed.video.is_none() {
        bail!(
            "{} has no video stream to encode a ladder of",
            path.display()
        );
    }
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let mut rendered = Vec::with_capacity(rungs.len());
    for (n, &height) in rungs.iter().enumerate() {
        let rung_dir = dir.path().join(format!("r{n}"));
        std::fs::create_dir(&rung_dir).context("creating a temporary directory")?;
        let playlist = encode(
            path,
            probed.demuxer,
            height,
            &rung_dir,
            (n + 1, rungs.len()),
        )
        .await?;
        let (content, pieces) = source::hls_playlist_file(&playlist).await?;
        let first = (pieces.first()).context("ffmpeg cut no segment")?;
        let picture = describe(first).await?;
        rendered.push(Rung {
            name: format!("{height}p"),
            content,
            pieces,
            picture,
        });
    }
    let (content, pieces) = combine(rendered)?;
    Ok(Source::packaged(content, pieces, dir))
}

/// One rung: the source scaled to `height` and encoded, packaged to HLS in `dir`; returns the
/// playlist.
async fn encode(
    path: &Path,
    demuxer: &str,
    height: u32,
    dir: &Path,
    (n, of): (usize, usize),
) -> Result<PathBuf> {
    let playlist = dir.join("index.m3u8");
    let secs = HLS_SEGMENT_SECONDS.to_string();
    let keys = format!("expr:gte(t,n_forced*{secs})");
    let kbps = max_kbps(height);
    let mut cmd = tokio::process::Command::new("ffmpeg");
    // Local files only, read by the demuxer ffprobe found (as `vodmesh ingest` of a video).
    cmd.args(["-nostdin", "-v", "error", "-protocol_whitelist", "file"])
        .args(["-f", demuxer, "-i"])
        .arg(path)
        .args(["-map", "0:v:0", "-map", "0:a:0?", "-sn", "-dn"])
        .args(["-vf", &format!("scale=-2:{height}")])
        .args(["-c:v", "libx264", "-preset", "veryfast", "-crf", "23"])
        .args([
            "-maxrate",
            &format!("{kbps}k"),
            "-bufsize",
            &format!("{}k", 2 * kbps),
        ])
        .args(["-pix_fmt", "yuv420p", "-sc_threshold", "0"])
        // A keyframe at every segment boundary and nowhere else: every rung cut alike.
        .args(["-force_key_frames", &keys])
        .args(["-fps_mode", "passthrough"])
        .args(["-c:a", "aac", "-b:a", "128k", "-ac", "2"])
        .args(["-f", "hls", "-hls_time", &secs, "-hls_list_size", "0"])
        .args(["-hls_playlist_type", "vod", "-hls_segment_type", "mpegts"])
        .arg("-hls_segment_filename")
        .arg(dir.join("seg%05d.ts"))
        .arg(&playlist);
    eprintln!("encoding {} at {height}p ({n} of {of})...", path.display());
    source::run_tool(
        &mut cmd,
        &format!("ffmpeg encode of {} at {height}p", path.display()),
    )
    .await?;
    Ok(playlist)
}

/// A rung's picture size and RFC 6381 codecs, from ffprobe of its first segment.
async fn describe(segment: &Piece) -> Result<(u32, u32, String)> {
    let Piece::File(path) = segment else {
        bail!("an encoded segment is not a local file");
    };
    let out = source::run_tool(
        tokio::process::Command::new("ffprobe")
            .args(["-v", "error", "-protocol_whitelist", "file", "-f", "mpegts"])
            .args([
                "-show_entries",
                "stream=codec_type,codec_name,profile,level,width,height",
            ])
            .args(["-of", "json"])
            .arg(path),
        "ffprobe of an encoded segment",
    )
    .await?;
    let json: serde_json::Value =
        serde_json::from_slice(&out).context("ffprobe printed something other than JSON")?;
    let streams = json["streams"].as_array().cloned().unwrap_or_default();
    let mut codecs = Vec::new();
    let (mut width, mut height) = (0, 0);
    for s in &streams {
        match (s["codec_type"].as_str(), s["codec_name"].as_str()) {
            (Some("video"), Some("h264")) => {
                width = s["width"]
                    .as_u64()
                    .and_then(|w| u32::try_from(w).ok())
                    .unwrap_or(0);
                height = s["height"]
                    .as_u64()
                    .and_then(|h| u32::try_from(h).ok())
                    .unwrap_or(0);
                let profile = s["profile"].as_str().unwrap_or("");
                let level = s["level"].as_u64().unwrap_or(0);
                codecs.push(avc1(profile, level));
            }
            (Some("audio"), Some("aac")) => codecs.push("mp4a.40.2".to_string()),
            _ => {}
        }
    }
    Ok((width, height, codecs.join(",")))
}

/// The RFC 6381 name of an H.264 stream of ffprobe's `profile` and `level` (e.g. `High`,
/// 31 -> `avc1.64001f`).
fn avc1(profile: &str, level: u64) -> String {
    let (idc, constraints) = match profile {
        "Constrained Baseline" => (0x42, 0xc0),
        "Baseline" => (0x42, 0x00),
        "Main" => (0x4d, 0x40),
        "High 10" => (0x6e, 0x00),
        "High 4:2:2" => (0x7a, 0x00),
        _ => (0x64, 0x00),
    };
    format!("avc1.{idc:02x}{constraints:02x}{:02x}", level.min(0xff))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rungs_are_heights_and_a_ladder_names_each_once() {
        assert_eq!(parse_rung("720p").ok(), Some(720));
        assert_eq!(parse_rung("1080").ok(), Some(1080));
        for bad in ["", "p", "721p", "32p", "9000p", "-2p", "720i", "1e3p"] {
            assert!(parse_rung(bad).is_err(), "{bad:?} was taken");
        }
        assert!(check(&[720, 480]).is_ok());
        assert!(check(&[720, 720]).is_err());
        assert!(check(&[]).is_err());
        assert!(check(&(1..=17).map(|n| n * 64).collect::<Vec<_>>()).is_err());
    }

    #[test]
    fn codecs_are_named_as_players_expect() {
        assert_eq!(avc1("High", 31), "avc1.64001f");
        assert_eq!(avc1("Main", 30), "avc1.4d401e");
        assert_eq!(avc1("Constrained Baseline", 21), "avc1.42c015");
    }
}
