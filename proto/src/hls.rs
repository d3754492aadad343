//! HLS for standard players, made from a manifest alone: the VOD media playlist, segment file
//! names, and single byte ranges. Pure functions, shared by the console's gateway
//! (`vodmesh-console serve`) and a station's HTTP edge (`vodmesh-node --http`).

use std::fmt::Write as _;

use crate::SegmentIndex;
use crate::manifest::{ManifestContent, SegmentEntry};

/// The file name of segment `index` in the playlist: `.m4s` in fMP4 HLS, else `.ts`.
pub fn segment_name(fmp4: bool, index: SegmentIndex) -> String {
    if fmp4 {
        format!("{index}.m4s")
    } else {
        format!("{index}.ts")
    }
}

/// The segment a file name of the playlist names (`3.ts`, `3.m4s`, `3.mp4`).
pub fn segment_of(file: &str) -> Option<SegmentIndex> {
    file.strip_suffix(".ts")
        .or_else(|| file.strip_suffix(".m4s"))
        .or_else(|| file.strip_suffix(".mp4"))
        .and_then(|n| n.parse().ok())
}

/// The `Content-Type` of the segments of `content`.
pub fn segment_type(content: &ManifestContent) -> &'static str {
    if content.has_init_segment() {
        "video/mp4"
    } else if content.content_type == "video/mp2t" {
        "video/mp2t"
    } else {
        "application/octet-stream"
    }
}

/// The playlist a player starts from (`index.m3u8`), from the program's manifest: its VOD
/// media playlist, or, for a program with renditions (an ABR ladder), the master playlist
/// naming one media playlist per rendition ([`variant`]). A program ingested from fMP4 HLS
/// (segment 0 is the initialization segment, of duration 0) gets an `#EXT-X-MAP` to it.
pub fn playlist(content: &ManifestContent) -> String {
    playlist_linking(content, &|name| name.to_string())
}

/// [`playlist`], with each URI in it made from its file name by `link` (the HTTP edge copies
/// the player's `?token=` into every URI).
pub fn playlist_linking(content: &ManifestContent, link: &dyn Fn(&str) -> String) -> String {
    if content.renditions.is_empty() {
        return media_playlist(&content.segments, content.has_init_segment(), link);
    }
    let fmp4 = content.has_init_segment();
    let mut m3u8 = String::from("#EXTM3U\n");
    let _ = writeln!(m3u8, "#EXT-X-VERSION:{}", if fmp4 { 7 } else { 3 });
    m3u8.push_str("#EXT-X-INDEPENDENT-SEGMENTS\n");
    for r in &content.renditions {
        let _ = write!(m3u8, "#EXT-X-STREAM-INF:BANDWIDTH={}", r.bandwidth.max(1));
        if r.width > 0 && r.height > 0 {
            let _ = write!(m3u8, ",RESOLUTION={}x{}", r.width, r.height);
        }
        // The manifest admits printable codecs without quotes or commas inside a name only
        // as far as HLS goes: a quote would end the attribute.
        if !r.codecs.is_empty() && !r.codecs.contains('"') {
            let _ = write!(m3u8, ",CODECS=\"{}\"", r.codecs);
        }
        let _ = writeln!(m3u8, "\n{}", link(&variant_name(&r.name)));
    }
    m3u8
}

/// The file name of rendition `name`'s media playlist, beside the master playlist.
pub fn variant_name(name: &str) -> String {
    format!("{name}.m3u8")
}

/// The rendition a file name of the master playlist names (`720p.m3u8`), if it is one: a
/// name as renditions have them (1 to 32 of `A-Z a-z 0-9 . _ -`), other than `index`.
pub fn variant_of(file: &str) -> Option<&str> {
    file.strip_suffix(".m3u8").filter(|name| {
        *name != "index"
            && (1..=32).contains(&name.len())
            && (name.bytes()).all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    })
}

/// The media playlist of rendition `name` of a program with renditions, its URIs made by
/// `link`; `None` when the program has no such rendition.
pub fn variant(
    content: &ManifestContent,
    name: &str,
    link: &dyn Fn(&str) -> String,
) -> Option<String> {
    let r = content.rendition(name)?;
    let start = r.first.0 as usize;
    let segments = content
        .segments
        .get(start..start.checked_add(r.count as usize)?)?;
    Some(media_playlist(segments, content.has_init_segment(), link))
}

/// The VOD media playlist of `segments` (a whole program's, or one rendition's); with `fmp4`
/// the first is the initialization segment.
fn media_playlist(segments: &[SegmentEntry], fmp4: bool, link: &dyn Fn(&str) -> String) -> String {
    let Some(first) = segments.first() else {
        return String::from("#EXTM3U\n#EXT-X-ENDLIST\n");
    };
    let media = segments.iter().skip(usize::from(fmp4));
    // Each #EXTINF rounded to an integer must not exceed the target duration.
    let longest = media.clone().map(|s| s.duration_ms).max().unwrap_or(0);
    let target = u64::from(longest).div_ceil(1000).max(1);
    let mut m3u8 = String::from("#EXTM3U\n");
    let _ = writeln!(m3u8, "#EXT-X-VERSION:{}", if fmp4 { 7 } else { 3 });
    let _ = writeln!(m3u8, "#EXT-X-TARGETDURATION:{target}");
    m3u8.push_str("#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:VOD\n");
    if fmp4 {
        let _ = writeln!(
            m3u8,
            "#EXT-X-MAP:URI=\"{}\"",
            link(&segment_name(true, first.index))
        );
    }
    for s in media {
        let _ = writeln!(
            m3u8,
            "#EXTINF:{}.{:03},\n{}",
            s.duration_ms / 1000,
            s.duration_ms % 1000,
            link(&segment_name(fmp4, s.index))
        );
    }
    m3u8.push_str("#EXT-X-ENDLIST\n");
    m3u8
}

/// A single byte range of a body of `len` bytes, as `start..end`; `Err(())` when it cannot
/// be satisfied. `None` when there is no usable single range (then the whole body is sent).
pub fn byte_range(value: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None; // Several ranges: a full answer is allowed (RFC 9110 §14.2).
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        let suffix: u64 = last.parse().ok()?;
        if suffix == 0 || len == 0 {
            return Some(Err(()));
        }
        (len.saturating_sub(suffix), len)
    } else {
        let start: u64 = first.parse().ok()?;
        let end = if last.is_empty() {
            len
        } else {
            let last: u64 = last.parse().ok()?;
            if last < start {
                return None; // Syntactically invalid: ignored.
            }
            last.saturating_add(1).min(len)
        };
        if start >= len {
            return Some(Err(()));
        }
        (start, end)
    };
    Some(Ok(range))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ranges() {
        assert_eq!(byte_range("bytes=0-99", 1000), Some(Ok((0, 100))));
        assert_eq!(byte_range("bytes=900-", 1000), Some(Ok((900, 1000))));
        assert_eq!(byte_range("bytes=-10", 1000), Some(Ok((990, 1000))));
        assert_eq!(byte_range("bytes=-5000", 1000), Some(Ok((0, 1000))));
        assert_eq!(byte_range("bytes=990-5000", 1000), Some(Ok((990, 1000))));
        assert_eq!(byte_range("bytes=1000-", 1000), Some(Err(())));
        assert_eq!(byte_range("bytes=-0", 1000), Some(Err(())));
        assert_eq!(byte_range("bytes=5-1", 1000), None);
        assert_eq!(byte_range("bytes=0-1,5-6", 1000), None);
        assert_eq!(byte_range("items=0-1", 1000), None);
        assert_eq!(byte_range("bytes=x-1", 1000), None);
    }

    /// Two renditions of an fMP4 program: an init segment and two 4 s segments each.
    fn ladder() -> ManifestContent {
        use crate::SegmentHash;
        use crate::manifest::Rendition;
        let segments = (0..6)
            .map(|i| SegmentEntry {
                index: SegmentIndex(i),
                duration_ms: if i % 3 == 0 { 0 } else { 4000 },
                size: 100,
                hash: SegmentHash::of(&[i as u8]),
            })
            .collect();
        let rendition = |name: &str, bandwidth, height, first| Rendition {
            name: name.into(),
            bandwidth,
            width: height * 16 / 9,
            height,
            codecs: "avc1.64001f".into(),
            first: SegmentIndex(first),
            count: 3,
        };
        ManifestContent {
            title: "t".into(),
            content_type: crate::manifest::FMP4.into(),
            duration_ms: 8000,
            segments,
            renditions: vec![
                rendition("720p", 2_000_000, 720, 0),
                rendition("360p", 600_000, 360, 3),
            ],
        }
    }

    #[test]
    fn a_ladder_gets_a_master_playlist_and_a_media_playlist_per_rendition() {
        let content = ladder();
        content.check().unwrap();
        let master = playlist_linking(&content, &|f| format!("{f}?token=t"));
        assert!(master.starts_with("#EXTM3U\n"), "{master}");
        assert!(
            master.contains(
                "#EXT-X-STREAM-INF:BANDWIDTH=600000,RESOLUTION=640x360,CODECS=\"avc1.64001f\"\n360p.m3u8?token=t\n"
            ),
            "{master}"
        );
        assert!(!master.contains("#EXTINF"), "{master}");
        assert_eq!(variant_of("360p.m3u8"), Some("360p"));
        assert_eq!(variant_of("index.m3u8"), None);
        assert_eq!(variant_of("3.ts"), None);
        assert_eq!(variant_of("../index.m3u8"), None);
        assert_eq!(variant_of("a/b.m3u8"), None);
        let low = variant(&content, "360p", &|f| f.to_string()).unwrap();
        // Its own init segment (3) and media segments (4, 5), by their program indexes.
        assert!(low.contains("#EXT-X-MAP:URI=\"3.m4s\""), "{low}");
        assert!(
            low.contains("#EXTINF:4.000,\n4.m4s\n#EXTINF:4.000,\n5.m4s\n"),
            "{low}"
        );
        assert!(low.ends_with("#EXT-X-ENDLIST\n"), "{low}");
        assert!(variant(&content, "4k", &|f| f.to_string()).is_none());
        // Without renditions, index.m3u8 is the media playlist, as it always was.
        let mut one = content.clone();
        one.renditions.clear();
        one.duration_ms = 16_000;
        let media = playlist(&one);
        assert!(media.contains("#EXT-X-MAP:URI=\"0.m4s\""), "{media}");
        assert_eq!(media.matches("#EXTINF").count(), 5, "{media}");
    }

    #[test]
    fn segment_names_go_both_ways() {
        assert_eq!(segment_name(true, SegmentIndex(3)), "3.m4s");
        assert_eq!(segment_name(false, SegmentIndex(3)), "3.ts");
        for file in ["3.ts", "3.m4s", "3.mp4"] {
            assert_eq!(segment_of(file), Some(SegmentIndex(3)), "{file}");
        }
        for file in ["3", "x.ts", "-1.ts", "3.ts.ts"] {
            assert_eq!(segment_of(file), None, "{file}");
        }
    }
}
