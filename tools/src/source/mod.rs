//! Where `vodmesh ingest` takes a program from: a local file, an HLS VOD playlist (a path or an
//! http(s) URL), or an http(s) URL of a file.
//!
//! - A video file (mp4, mkv, mov, webm, ...; local or downloaded) is packaged to HLS with
//!   `ffmpeg` in a temporary directory, in keyframe-aligned segments of about 4 s (stream copy
//!   when `ffprobe` finds H.264 video and AAC/MP3 audio, else an H.264/AAC encode), and that
//!   playlist is ingested as below. Without ffmpeg on PATH a video file is refused with a
//!   message that says so.
//! - Any other file (local, or downloaded from a URL into a temporary file first), and any
//!   source at all with `--raw` ([`open_raw`]), is cut into fixed-size segments with durations
//!   from a nominal bitrate.
//! - An HLS media playlist keeps its media segments and their `#EXTINF` durations, so seeking
//!   by time is exact. With fMP4 media, the `#EXT-X-MAP` initialization segment becomes
//!   segment 0 with a duration of 0, so the program's segments concatenated in order are a
//!   playable fMP4 stream. The playlist must be a complete VOD playlist (`#EXT-X-ENDLIST`);
//!   encrypted and byte-range playlists are refused.
//! - An HLS master playlist is ingested with all its variants, as one program whose
//!   renditions they are (each named after its height, e.g. `720p`); their segments must
//!   line up (the same count and durations).
//!
//! Every piece is read twice: once to hash it for the manifest, once to push it; a piece whose
//! bytes changed in between fails the ingest before anything is committed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use vodmesh_proto::SegmentHash;
use vodmesh_proto::manifest::{MAX_SEGMENT_SIZE, MAX_SEGMENTS, ManifestContent, SegmentEntry};

pub(crate) mod renditions;
mod video;
pub use self::video::{
    HLS_SEGMENT_SECONDS, VIDEO_EXTENSIONS, ffmpeg_installed, is_video, package_video,
};
pub(crate) use self::video::{probe, run_tool};

/// The largest playlist read.
pub const MAX_PLAYLIST: u64 = 4 * 1024 * 1024;
/// The largest file downloaded from a URL.
pub const MAX_DOWNLOAD: u64 = 64 * 1024 * 1024 * 1024;
/// Time limit of one HTTP request (a whole segment or playlist).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(120);

/// Where one segment's bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// A byte range of a local file.
    Range {
        /// The file.
        path: PathBuf,
        /// Start.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// A whole local file.
    File(PathBuf),
    /// A whole http(s) resource.
    Url(url::Url),
}

/// A source, ready to push: the manifest content and where each segment's bytes are.
#[derive(Debug)]
pub struct Source {
    /// The program's content (title to be set by the caller).
    pub content: ManifestContent,
    /// One piece per segment, in order.
    pub pieces: Vec<Piece>,
    /// A downloaded file, deleted when the source is dropped.
    _download: Option<tempfile::NamedTempFile>,
    /// The HLS packaging of a video file, deleted when the source is dropped.
    _packaged: Option<tempfile::TempDir>,
}

/// The segments of the HLS playlist ffmpeg wrote at `playlist` (its segments beside it).
pub(crate) async fn hls_playlist_file(playlist: &Path) -> Result<(ManifestContent, Vec<Piece>)> {
    let text = tokio::fs::read(playlist)
        .await
        .with_context(|| format!("reading {}", playlist.display()))?;
    let dir = playlist.parent().map(Path::to_path_buf).unwrap_or_default();
    hls(text, Base::Dir(dir), &[]).await
}

impl Source {
    /// A source packaged in the temporary directory `dir`, deleted when it is dropped.
    pub(crate) fn packaged(
        content: ManifestContent,
        pieces: Vec<Piece>,
        dir: tempfile::TempDir,
    ) -> Self {
        Self {
            content,
            pieces,
            _download: None,
            _packaged: Some(dir),
        }
    }
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(HTTP_TIMEOUT))
        .timeout_connect(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// GETs `url` whole, at most `limit` bytes.
pub(crate) async fn http_get(url: &url::Url, limit: u64) -> Result<Vec<u8>> {
    let u = url.to_string();
    tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
        let mut resp = agent()
            .get(&u)
            .call()
            .map_err(|e| anyhow::anyhow!("cannot fetch {u}: {e}"))?;
        resp.body_mut()
            .with_config()
            .limit(limit)
            .read_to_vec()
            .map_err(|e| anyhow::anyhow!("cannot read {u}: {e}"))
    })
    .await
    .context("download task failed")?
}

/// GETs `url` as text (a playlist), at most [`MAX_PLAYLIST`] bytes.
pub async fn http_text(url: &str) -> Result<String> {
    let url = url::Url::parse(url).with_context(|| format!("bad URL {url}"))?;
    let bytes = http_get(&url, MAX_PLAYLIST).await?;
    String::from_utf8(bytes).with_context(|| format!("{url} is not text"))
}

/// Downloads `url` into a temporary file.
async fn http_download(url: &url::Url) -> Result<tempfile::NamedTempFile> {
    let u = url.to_string();
    tokio::task::spawn_blocking(move || -> Result<tempfile::NamedTempFile> {
        let mut resp = agent()
            .get(&u)
            .call()
            .map_err(|e| anyhow::anyhow!("cannot fetch {u}: {e}"))?;
        let mut file = tempfile::NamedTempFile::new().context("creating a temporary file")?;
        let mut reader = resp.body_mut().with_config().limit(MAX_DOWNLOAD).reader();
        std::io::copy(&mut reader, file.as_file_mut())
            .map_err(|e| anyhow::anyhow!("cannot read {u}: {e}"))?;
        Ok(file)
    })
    .await
    .context("download task failed")?
}

/// Reads one piece.
pub async fn read_piece(piece: &Piece) -> Result<Vec<u8>> {
    match piece {
        Piece::Range { path, offset, len } => {
            if *len > MAX_SEGMENT_SIZE {
                bail!("segment larger than 256 MiB");
            }
            let mut file = tokio::fs::File::open(path)
                .await
                .with_context(|| format!("cannot open {}", path.display()))?;
            file.seek(std::io::SeekFrom::Start(*offset)).await?;
            let mut buf = vec![0u8; *len as usize];
            file.read_exact(&mut buf)
                .await
                .with_context(|| format!("{} changed during ingest", path.display()))?;
            Ok(buf)
        }
        Piece::File(path) => {
            read_limited(path, MAX_SEGMENT_SIZE, "segment larger than 256 MiB").await
        }
        Piece::Url(url) => http_get(url, MAX_SEGMENT_SIZE).await,
    }
}

/// The file at `path`, refused with `too_large` when it holds more than `limit` bytes (which
/// are all that is read).
pub(crate) async fn read_limited(path: &Path, limit: u64, too_large: &str) -> Result<Vec<u8>> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut buf = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut buf)
        .await
        .with_context(|| format!("reading {}", path.display()))?;
    if buf.len() as u64 > limit {
        bail!("{}: {too_large}", path.display());
    }
    Ok(buf)
}

/// Cuts `path` into segments of `size` bytes and hashes each.
pub async fn segment_file(
    path: &Path,
    size: u64,
    bitrate: u64,
) -> Result<(ManifestContent, Vec<Piece>)> {
    if size == 0 || size > MAX_SEGMENT_SIZE {
        bail!("segment size must be 1 byte to 256 MiB");
    }
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let len = file.metadata().await?.len();
    if len == 0 {
        bail!("{} is empty", path.display());
    }
    if len.div_ceil(size) > MAX_SEGMENTS as u64 {
        bail!(
            "{} needs more than {MAX_SEGMENTS} segments; raise --segment-size",
            path.display()
        );
    }
    let mut segments = Vec::new();
    let mut pieces = Vec::new();
    let mut buf = vec![0u8; size as usize];
    let mut offset = 0u64;
    let mut index = 0u32;
    while offset < len {
        let n = (len - offset).min(size) as usize;
        file.read_exact(&mut buf[..n])
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        let bits = n as u64 * 8;
        segments.push(SegmentEntry {
            index: index.into(),
            duration_ms: ((bits * 1000) / bitrate.max(1)).max(1) as u32,
            size: n as u64,
            hash: SegmentHash::of(&buf[..n]),
        });
        pieces.push(Piece::Range {
            path: path.to_path_buf(),
            offset,
            len: n as u64,
        });
        offset += n as u64;
        index += 1;
    }
    let title = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let content = ManifestContent {
        title,
        content_type: content_type(&path.to_string_lossy()).to_string(),
        duration_ms: segments.iter().map(|s| u64::from(s.duration_ms)).sum(),
        segments,
        renditions: Vec::new(),
    };
    Ok((content, pieces))
}

fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit('.').next().unwrap_or_default();
    match ext {
        "ts" => "video/mp2t",
        "mp4" | "m4v" | "m4s" => "video/mp4",
        "mkv" => "video/x-matroska",
        "webm" => "video/webm",
        _ => "application/octet-stream",
    }
}

/// Where a playlist is, for resolving its segment URIs.
pub(crate) enum Base {
    Dir(PathBuf),
    Url(url::Url),
}

impl Base {
    /// Where segment `uri` of a playlist here is. Refused when it is elsewhere: a URL not on
    /// the playlist's own origin nor on a host of `allow`, a file outside the playlist's
    /// directory (a playlist from someone else must not read this machine's files, such as a
    /// station's identity key, or make it fetch from its own network).
    pub(crate) fn resolve(&self, uri: &str, allow: &[String]) -> Result<Piece> {
        let bad = || format!("bad segment URI {uri}");
        match self {
            Base::Dir(dir) if !is_url(uri) => Ok(Piece::File(within(dir, uri)?)),
            Base::Dir(_) => fetched(url::Url::parse(uri).with_context(bad)?, None, allow),
            Base::Url(base) => fetched(base.join(uri).with_context(bad)?, Some(base), allow),
        }
    }
}

/// Segment `url` of the playlist at `playlist` (`None`: a local one), if it may be fetched:
/// over http(s), from the playlist's origin or a host in `allow`.
fn fetched(url: url::Url, playlist: Option<&url::Url>, allow: &[String]) -> Result<Piece> {
    if !matches!(url.scheme(), "http" | "https") {
        bail!("segment {url}: only http(s) segment URLs are fetched");
    }
    let host = url.host_str().unwrap_or_default();
    let own = playlist.is_some_and(|p| p.origin() == url.origin());
    let allowed = allow.iter().any(|a| {
        a.trim_matches(['[', ']'])
            .eq_ignore_ascii_case(host.trim_matches(['[', ']']))
    });
    if !own && !allowed {
        let whose = if playlist.is_some() {
            "not on the playlist's host"
        } else {
            "named by a local playlist"
        };
        bail!("segment {url} is on {host}, {whose}: give --allow-host {host} if you trust it");
    }
    Ok(Piece::Url(url))
}

/// Segment `uri` of a local playlist in `dir`, if it is in `dir` or below (no absolute path, no
/// `..`, no link that leads out).
fn within(dir: &Path, uri: &str) -> Result<PathBuf> {
    let outside = || {
        anyhow::anyhow!(
            "segment {uri} is outside the playlist's directory {}: a local playlist's segments \
             must be in it or below",
            dir.display()
        )
    };
    let relative = Path::new(uri);
    let plain = relative.components().all(|c| {
        matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    });
    if !plain {
        return Err(outside());
    }
    let path = dir.join(relative);
    let root = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    // A missing file is reported when it is read.
    if let (Ok(real), Ok(root)) = (std::fs::canonicalize(&path), std::fs::canonicalize(root))
        && !real.starts_with(&root)
    {
        return Err(outside());
    }
    Ok(path)
}

/// Parses an HLS media playlist into pieces with durations; `None` marks the init segment.
fn parse_playlist(text: &[u8], base: &Base, allow: &[String]) -> Result<(Vec<(Piece, u32)>, bool)> {
    let malformed = |why: &str| anyhow::anyhow!("malformed playlist: {why}");
    if !text.starts_with(b"#EXTM3U") {
        return Err(malformed("it does not start with #EXTM3U"));
    }
    let playlist = m3u8_rs::parse_playlist_res(text).map_err(|_| malformed("cannot parse it"))?;
    let media = match playlist {
        m3u8_rs::Playlist::MediaPlaylist(m) => m,
        m3u8_rs::Playlist::MasterPlaylist(_) => {
            bail!("a master playlist: give one of its media playlists")
        }
    };
    if !media.end_list {
        bail!(
            "truncated or live playlist: no #EXT-X-ENDLIST (only complete VOD playlists are ingested)"
        );
    }
    if media.segments.is_empty() {
        return Err(malformed("no media segments"));
    }
    let mut pieces = Vec::new();
    let mut map_uri: Option<String> = None;
    for seg in &media.segments {
        if seg
            .key
            .as_ref()
            .is_some_and(|k| k.method != m3u8_rs::KeyMethod::None)
        {
            bail!("encrypted playlists are not supported");
        }
        if seg.byte_range.is_some() {
            bail!("byte-range playlists are not supported");
        }
        if let Some(map) = &seg.map {
            match &map_uri {
                None if pieces.is_empty() => {
                    if map.byte_range.is_some() {
                        bail!("byte-range playlists are not supported");
                    }
                    map_uri = Some(map.uri.clone());
                    pieces.push((base.resolve(&map.uri, allow)?, 0));
                }
                Some(u) if *u == map.uri => {}
                _ => bail!("playlists with several #EXT-X-MAP are not supported"),
            }
        }
        if seg.uri.trim().is_empty() {
            return Err(malformed("a segment without a URI"));
        }
        if !(seg.duration.is_finite() && seg.duration >= 0.0 && seg.duration < 86_400.0) {
            return Err(malformed("a segment with a bad #EXTINF duration"));
        }
        let ms = (f64::from(seg.duration) * 1000.0).round() as u32;
        pieces.push((base.resolve(&seg.uri, allow)?, ms));
    }
    if pieces.len() > MAX_SEGMENTS {
        bail!("playlist has more than {MAX_SEGMENTS} segments");
    }
    Ok((pieces, map_uri.is_some()))
}

/// The segments of an HLS playlist: a media playlist's, or, for a master playlist, every
/// variant's as one program with renditions ([`crate::ladder::combine`]).
async fn hls(text: Vec<u8>, base: Base, allow: &[String]) -> Result<(ManifestContent, Vec<Piece>)> {
    if text.starts_with(b"#EXTM3U")
        && let Ok(m3u8_rs::Playlist::MasterPlaylist(master)) = m3u8_rs::parse_playlist_res(&text)
    {
        return renditions::variants(&master, &base, allow).await;
    }
    media(text, base, allow).await
}

/// The segments of an HLS media playlist.
pub(crate) async fn media(
    text: Vec<u8>,
    base: Base,
    allow: &[String],
) -> Result<(ManifestContent, Vec<Piece>)> {
    let (pieces, fmp4) = parse_playlist(&text, &base, allow)?;
    let mut segments = Vec::with_capacity(pieces.len());
    for (index, (piece, duration_ms)) in pieces.iter().enumerate() {
        let bytes = read_piece(piece).await?;
        if bytes.is_empty() {
            bail!("segment {index} of the playlist is empty");
        }
        segments.push(SegmentEntry {
            index: (index as u32).into(),
            duration_ms: *duration_ms,
            size: bytes.len() as u64,
            hash: SegmentHash::of(&bytes),
        });
    }
    let content_type = if fmp4 { "video/mp4" } else { "video/mp2t" };
    let content = ManifestContent {
        title: String::new(),
        content_type: content_type.to_string(),
        duration_ms: segments.iter().map(|s| u64::from(s.duration_ms)).sum(),
        segments,
        renditions: Vec::new(),
    };
    Ok((content, pieces.into_iter().map(|(p, _)| p).collect()))
}

/// Opens `source` (a path or an http(s) URL), reads and hashes every segment.
/// Opens `source`; an HLS playlist's segments may come from its own origin (its directory, for
/// a local one) and the hosts in `allow`.
pub async fn open(
    source: &str,
    segment_size: u64,
    bitrate: u64,
    allow: &[String],
) -> Result<Source> {
    if is_url(source) {
        let url = url::Url::parse(source).with_context(|| format!("bad URL {source}"))?;
        if url.path().ends_with(".m3u8") {
            let text = http_get(&url, MAX_PLAYLIST).await?;
            let (content, pieces) = hls(text, Base::Url(url), allow).await?;
            return Ok(Source {
                content,
                pieces,
                _download: None,
                _packaged: None,
            });
        }
        if !is_video(url.path()) {
            return open_raw(source, segment_size, bitrate).await;
        }
        let file = http_download(&url).await?;
        let mut source = video::packaged(file.path()).await?;
        source._download = Some(file);
        return Ok(source);
    }
    let path = Path::new(source);
    if path.extension().is_some_and(|e| e == "m3u8") {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {source}"))?;
        let mut text = Vec::new();
        file.take(MAX_PLAYLIST + 1)
            .read_to_end(&mut text)
            .with_context(|| format!("reading {source}"))?;
        if text.len() as u64 > MAX_PLAYLIST {
            bail!("{source}: playlist larger than 4 MiB");
        }
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let (content, pieces) = hls(text, Base::Dir(dir), allow).await?;
        return Ok(Source {
            content,
            pieces,
            _download: None,
            _packaged: None,
        });
    }
    if is_video(source) {
        return video::packaged(path).await;
    }
    open_raw(source, segment_size, bitrate).await
}

/// Opens `source` (a path or an http(s) URL of a file, downloaded first) as plain bytes cut
/// into segments of `segment_size`, whatever it holds (`vodmesh ingest --raw`, and any file
/// that is neither a video nor a playlist): no packaging, no playlist parsing, and the
/// program's segments concatenated are the file. Durations follow from `bitrate`.
pub async fn open_raw(source: &str, segment_size: u64, bitrate: u64) -> Result<Source> {
    if !is_url(source) {
        let (content, pieces) = segment_file(Path::new(source), segment_size, bitrate).await?;
        return Ok(Source {
            content,
            pieces,
            _download: None,
            _packaged: None,
        });
    }
    let url = url::Url::parse(source).with_context(|| format!("bad URL {source}"))?;
    let download = http_download(&url).await?;
    let (mut content, pieces) = segment_file(download.path(), segment_size, bitrate).await?;
    // The downloaded file's name is a temporary one: the type follows the URL's path.
    content.content_type = content_type(url.path()).to_string();
    Ok(Source {
        content,
        pieces,
        _download: Some(download),
        _packaged: None,
    })
}

/// For the fuzzers (`fuzz/`, tests/fuzz_smoke.rs): a playlist as `vodmesh ingest` reads it, of
/// a remote origin and of a local directory (that does not exist: nothing is read). Must not
/// panic, and what it accepts stays within the limits.
pub fn fuzz_playlist(data: &[u8]) {
    let Ok(origin) = url::Url::parse("http://192.0.2.1:8000/v/index.m3u8") else {
        return;
    };
    let bases = [
        Base::Url(origin),
        Base::Dir(PathBuf::from("/nonexistent/vodmesh-fuzz")),
    ];
    for base in &bases {
        if let Ok((pieces, _)) = parse_playlist(data, base, &[]) {
            assert!(!pieces.is_empty() && pieces.len() <= MAX_SEGMENTS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn playlists_parse_or_fail_in_one_line() -> Result<()> {
        let base = Base::Dir(PathBuf::from("/x"));
        let ok = b"#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:4\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:4.0,\na.m4s\n#EXTINF:2.5,\nb.m4s\n#EXT-X-ENDLIST\n";
        let (pieces, fmp4) = parse_playlist(ok, &base, &[])?;
        assert!(fmp4);
        assert_eq!(
            pieces.iter().map(|p| p.1).collect::<Vec<_>>(),
            vec![0, 4000, 2500]
        );
        assert_eq!(pieces[0].0, Piece::File(PathBuf::from("/x/init.mp4")));
        let truncated = b"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4.0,\na.ts\n#EXTINF:4.0,\n";
        assert!(parse_playlist(truncated, &base, &[]).is_err());
        assert!(parse_playlist(b"hello", &base, &[]).is_err());
        let url = Base::Url(url::Url::parse("http://127.0.0.1:1/v/index.m3u8")?);
        let ts = b"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4.0,\na.ts\n#EXT-X-ENDLIST\n";
        let (pieces, fmp4) = parse_playlist(ts, &url, &[])?;
        assert!(!fmp4);
        assert_eq!(
            pieces[0].0,
            Piece::Url(url::Url::parse("http://127.0.0.1:1/v/a.ts")?)
        );
        Ok(())
    }

    #[test]
    fn segments_elsewhere_are_refused_unless_allowed() -> Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("sub"))?;
        let local = Base::Dir(dir.path().join("sub"));
        let remote = Base::Url(url::Url::parse("http://192.0.2.1:8000/v/index.m3u8")?);
        let allow = ["169.254.169.254".to_string()];
        for uri in ["a.ts", "./a.ts", "deeper/a.ts"] {
            assert!(local.resolve(uri, &[]).is_ok(), "{uri}");
        }
        for uri in ["../identity.key", "/etc/hostname", "a/../../b.ts"] {
            let err = local.resolve(uri, &[]).err().map(|e| e.to_string());
            assert!(err.is_some_and(|e| e.contains("outside")), "{uri}");
        }
        // A link that leads out of the directory.
        std::os::unix::fs::symlink(dir.path(), dir.path().join("sub/out"))?;
        std::fs::write(dir.path().join("secret"), b"k")?;
        assert!(local.resolve("out/secret", &[]).is_err());
        for uri in [
            "a.ts",
            "/v2/a.ts",
            "../b/a.ts",
            "http://192.0.2.1:8000/x.ts",
        ] {
            assert!(remote.resolve(uri, &[]).is_ok(), "{uri}");
        }
        for uri in [
            "http://169.254.169.254/latest/meta-data",
            "//127.0.0.1:9100/metrics",
            "http://192.0.2.1:8001/x.ts",
            "file:///etc/hostname",
        ] {
            assert!(remote.resolve(uri, &[]).is_err(), "{uri}");
        }
        assert!(
            remote
                .resolve("http://169.254.169.254/x.ts", &allow)
                .is_ok()
        );
        assert!(local.resolve("http://169.254.169.254/x.ts", &[]).is_err());
        assert!(local.resolve("http://169.254.169.254/x.ts", &allow).is_ok());
        Ok(())
    }
}
