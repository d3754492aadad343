//! HLS for standard players, made from a manifest alone: the VOD media playlist, segment file
//! names, and single byte ranges. Pure functions, shared by the console's gateway
//! (`vodmesh-console serve`) and a station's HTTP edge (`vodmesh-node --http`).

use std::fmt::Write as _;

use crate::SegmentIndex;
use crate::manifest::ManifestContent;

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

/// The VOD playlist of a program, from its manifest. A program ingested from fMP4 HLS
/// (segment 0 is the initialization segment, of duration 0) gets an `#EXT-X-MAP` to it.
pub fn playlist(content: &ManifestContent) -> String {
    playlist_linking(content, &|name| name.to_string())
}

/// [`playlist`], with each segment's URI made from its file name by `link` (the HTTP edge
/// copies the player's `?token=` into every segment URI).
pub fn playlist_linking(content: &ManifestContent, link: &dyn Fn(&str) -> String) -> String {
    let fmp4 = content.has_init_segment();
    let media = content.segments.iter().skip(usize::from(fmp4));
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
            link(&segment_name(true, SegmentIndex(0)))
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
