//! Programs of several renditions (adaptive bitrate): `vodmesh ingest --ladder 1080p,720p,...`
//! encodes one video file as a ladder, and an HLS master playlist brings its variants
//! ([`variants`]); either way, one program.
//!
//! Each rung is an H.264/AAC encode of the source at that height (the width follows the
//! source's aspect ratio), packaged to MPEG-TS HLS by ffmpeg with a keyframe forced every
//! [`HLS_SEGMENT_SECONDS`] and no other (scene cuts off), so that every rung is cut at the
//! same instants: segment `i` of any rung may follow segment `i - 1` of any other. The rungs'
//! segments go into one manifest, rung after rung, and its [`Rendition`]s say which are whose,
//! with the figures a master playlist needs (peak bandwidth, resolution, RFC 6381 codecs).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use vodmesh_proto::SegmentIndex;
use vodmesh_proto::manifest::{
    MAX_RENDITIONS, MAX_SEGMENTS, ManifestContent, Rendition, SegmentEntry,
};

use crate::source::{
    self, Base, HLS_SEGMENT_SECONDS, MAX_PLAYLIST, Piece, Source, http_get, media,
};

/// One encoded rung: its rendition's name, its segments and where they are, and its
/// picture: width, height and RFC 6381 codecs.
pub(crate) struct Rung {
    pub(crate) name: String,
    pub(crate) content: ManifestContent,
    pub(crate) pieces: Vec<Piece>,
    pub(crate) picture: (u32, u32, String),
}

/// The tallest rung accepted (8K).
const MAX_HEIGHT: u32 = 4320;
/// The shortest rung accepted.
const MIN_HEIGHT: u32 = 64;

/// Parses one rung of `--ladder`: a height in pixels, as `720p` or `720`.
pub fn parse_rung(s: &str) -> Result<u32> {
    let digits = s.trim().strip_suffix(['p', 'P']).unwrap_or(s.trim());
    let height: u32 = digits
        .parse()
        .with_context(|| format!("--ladder {s}: expected a height like 720p"))?;
    if !(MIN_HEIGHT..=MAX_HEIGHT).contains(&height) || !height.is_multiple_of(2) {
        bail!(
            "--ladder {s}: a height is an even number of pixels from {MIN_HEIGHT} to {MAX_HEIGHT}"
        );
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

/// The variants of a master playlist, each a rendition named after its height (`720p`; `v2`
/// for the third variant when its height is unknown or taken), all lined up.
pub(crate) async fn variants(
    master: &m3u8_rs::MasterPlaylist,
    base: &Base,
    allow: &[String],
) -> Result<(ManifestContent, Vec<Piece>)> {
    let streams: Vec<&m3u8_rs::VariantStream> =
        (master.variants.iter()).filter(|v| !v.is_i_frame).collect();
    if streams.is_empty() || streams.len() > MAX_RENDITIONS {
        bail!(
            "a master playlist with 1 to {MAX_RENDITIONS} variants is ingested; this one has {}",
            streams.len()
        );
    }
    let mut rungs: Vec<Rung> = Vec::with_capacity(streams.len());
    for (n, v) in streams.iter().enumerate() {
        let at = base.resolve(&v.uri, allow)?;
        let text = read_playlist(&at).await?;
        let variant_base = match &at {
            Piece::Url(url) => Base::Url(url.clone()),
            Piece::File(path) | Piece::Range { path, .. } => {
                Base::Dir(path.parent().map(Path::to_path_buf).unwrap_or_default())
            }
        };
        let (content, pieces) = (media(text, variant_base, allow).await)
            .with_context(|| format!("variant {}", v.uri))?;
        let (width, height) = v.resolution.map_or((0, 0), |r| {
            let px = |x: u64| u32::try_from(x).unwrap_or(0);
            (px(r.width), px(r.height))
        });
        let by_height = (height > 0).then(|| format!("{height}p"));
        let name = match by_height {
            Some(name) if !rungs.iter().any(|r| r.name == name) => name,
            _ => format!("v{n}"),
        };
        // Codecs the manifest would refuse (too long, unprintable) are left out.
        let codecs = (v.codecs.clone())
            .filter(|c| c.len() <= 128 && c.bytes().all(|b| b.is_ascii_graphic()))
            .unwrap_or_default();
        rungs.push(Rung {
            name,
            content,
            pieces,
            picture: (width, height, codecs),
        });
    }
    combine(rungs)
}

/// A playlist named by a master playlist, up to [`MAX_PLAYLIST`] bytes.
async fn read_playlist(piece: &Piece) -> Result<Vec<u8>> {
    match piece {
        Piece::Url(url) => http_get(url, MAX_PLAYLIST).await,
        Piece::File(path) | Piece::Range { path, .. } => {
            source::read_limited(path, MAX_PLAYLIST, "playlist larger than 4 MiB").await
        }
    }
}

/// The rungs' segments as one program, rung after rung, with its renditions; refused when
/// ffmpeg did not cut every rung at the same instants.
pub(crate) fn combine(rendered: Vec<Rung>) -> Result<(ManifestContent, Vec<Piece>)> {
    let Some(Rung { content: top, .. }) = rendered.first() else {
        bail!("a ladder of no rung");
    };
    let durations =
        |c: &ManifestContent| c.segments.iter().map(|s| s.duration_ms).collect::<Vec<_>>();
    let (expected, content_type, duration_ms) =
        (durations(top), top.content_type.clone(), top.duration_ms);
    let total: usize = rendered.iter().map(|r| r.content.segments.len()).sum();
    if total > MAX_SEGMENTS {
        bail!("the ladder has more than {MAX_SEGMENTS} segments in all");
    }
    let mut segments = Vec::with_capacity(total);
    let mut all_pieces = Vec::with_capacity(total);
    let mut renditions = Vec::with_capacity(rendered.len());
    for Rung {
        name,
        content,
        pieces,
        picture: (width, height, codecs),
    } in rendered
    {
        if durations(&content) != expected {
            bail!(
                "the {name} encode was cut at other instants than the first rung's \
                 ({} segments against {}): its segments would not line up",
                content.segments.len(),
                expected.len()
            );
        }
        let first = SegmentIndex(u32::try_from(segments.len()).unwrap_or(u32::MAX));
        let bandwidth = (content.segments.iter())
            .filter(|s| s.duration_ms > 0)
            .map(|s| s.size * 8 * 1000 / u64::from(s.duration_ms))
            .max()
            .unwrap_or(0);
        for entry in &content.segments {
            let index = SegmentIndex(u32::try_from(segments.len()).unwrap_or(u32::MAX));
            segments.push(SegmentEntry { index, ..*entry });
        }
        all_pieces.extend(pieces);
        renditions.push(Rendition {
            name,
            bandwidth,
            width,
            height,
            codecs,
            first,
            count: u32::try_from(content.segments.len()).unwrap_or(u32::MAX),
        });
    }
    let content = ManifestContent {
        title: String::new(),
        content_type,
        duration_ms,
        segments,
        renditions,
    };
    Ok((content, all_pieces))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vodmesh_proto::SegmentHash;

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

    fn rung(name: &str, sizes: &[u64], durations: &[u32]) -> Rung {
        let segments: Vec<SegmentEntry> = (sizes.iter().zip(durations).zip(0u32..))
            .map(|((&size, &duration_ms), i)| SegmentEntry {
                index: SegmentIndex(i),
                duration_ms,
                size,
                hash: SegmentHash::of(&size.to_le_bytes()),
            })
            .collect();
        let pieces = (0..sizes.len())
            .map(|i| Piece::File(format!("{name}/{i}").into()))
            .collect();
        let content = ManifestContent {
            title: String::new(),
            content_type: "video/mp2t".into(),
            duration_ms: durations.iter().map(|&d| u64::from(d)).sum(),
            segments,
            renditions: Vec::new(),
        };
        Rung {
            name: name.into(),
            content,
            pieces,
            picture: (0, 0, String::new()),
        }
    }

    #[test]
    fn rungs_combine_into_one_program_whose_renditions_line_up() -> Result<()> {
        let (mut content, pieces) = combine(vec![
            rung("720p", &[4000, 2000], &[4000, 2000]),
            rung("240p", &[500, 250], &[4000, 2000]),
        ])?;
        content.title = "t".into();
        content.check()?;
        assert_eq!(content.segments.len(), 4);
        assert_eq!(pieces[2], Piece::File("240p/0".into()));
        let low = content.rendition("240p").context("240p")?;
        assert_eq!((low.first, low.count), (SegmentIndex(2), 2));
        // Peak: 4000 bytes in 4 s and 2000 in 2 s are both 8000 bit/s.
        assert_eq!(content.renditions[0].bandwidth, 8000);
        assert_eq!(content.duration_ms, 6000);
        let unaligned = combine(vec![
            rung("720p", &[4000, 2000], &[4000, 2000]),
            rung("240p", &[500, 250], &[3960, 2040]),
        ]);
        assert!(unaligned.is_err());
        Ok(())
    }
}
