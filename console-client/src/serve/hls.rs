//! What the gateway serves besides segments, made from a manifest or a program list alone:
//! the HLS playlist, segment names, the HTML pages, and byte ranges. Pure functions.

use std::fmt::Write as _;

use vodmesh_proto::SegmentIndex;
use vodmesh_proto::director::ProgramInfo;
use vodmesh_proto::manifest::ManifestContent;

/// Where the player page loads hls.js from; a dot keeps it apart from program titles.
pub(super) const HLS_JS_PATH: &str = "/.vodmesh/hls.min.js";

/// The file name of segment `index` in the playlist: `.m4s` in fMP4 HLS, else `.ts`.
pub(super) fn segment_name(fmp4: bool, index: SegmentIndex) -> String {
    if fmp4 {
        format!("{index}.m4s")
    } else {
        format!("{index}.ts")
    }
}

/// The segment a file name of the playlist names (`3.ts`, `3.m4s`, `3.mp4`).
pub(super) fn segment_of(file: &str) -> Option<SegmentIndex> {
    file.strip_suffix(".ts")
        .or_else(|| file.strip_suffix(".m4s"))
        .or_else(|| file.strip_suffix(".mp4"))
        .and_then(|n| n.parse().ok())
}

/// The `Content-Type` of the segments of `content`.
pub(super) fn segment_type(content: &ManifestContent) -> &'static str {
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
pub(super) fn playlist(content: &ManifestContent) -> String {
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
            segment_name(true, SegmentIndex(0))
        );
    }
    for s in media {
        let _ = writeln!(
            m3u8,
            "#EXTINF:{}.{:03},\n{}",
            s.duration_ms / 1000,
            s.duration_ms % 1000,
            segment_name(fmp4, s.index)
        );
    }
    m3u8.push_str("#EXT-X-ENDLIST\n");
    m3u8
}

/// Escapes text for HTML.
fn html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page that lists `programs`, each with links to its player page and its playlist.
pub(super) fn index_page(programs: &[ProgramInfo]) -> String {
    let mut page = String::from(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>vodmesh</title></head>\n\
         <body><h1>vodmesh programs</h1>\n<ul>\n",
    );
    for p in programs {
        let id = p.program.to_string();
        let _ = writeln!(
            page,
            "<li><a href=\"{id}/\">{}</a> ({:.1} s, {:.1} MiB) \
             &middot; <a href=\"{id}/index.m3u8\">index.m3u8</a></li>",
            html(&p.title),
            p.duration_ms as f64 / 1000.0,
            p.size as f64 / (1024.0 * 1024.0),
        );
    }
    if programs.is_empty() {
        page.push_str("<li>no published programs</li>\n");
    }
    page.push_str("</ul></body></html>\n");
    page
}

/// The page that plays the program titled `title` (its playlist at `index.m3u8`, beside the
/// page) with an HTML5 `<video>` and hls.js, or natively where the browser plays HLS.
pub(super) fn player_page(title: &str) -> String {
    let title = html(title);
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:1em}}video{{width:100%;max-width:960px;background:#000}}</style>
</head><body>
<h1>{title}</h1>
<video id="video" controls muted playsinline></video>
<p id="status"></p>
<script src="..{HLS_JS_PATH}"></script>
<script>
const video = document.getElementById('video');
const status = document.getElementById('status');
const src = 'index.m3u8';
if (window.Hls && Hls.isSupported()) {{
  const hls = new Hls();
  hls.on(Hls.Events.ERROR, (_, d) => {{ if (d.fatal) status.textContent = 'error: ' + d.type + ' ' + d.details; }});
  hls.loadSource(src);
  hls.attachMedia(video);
}} else if (video.canPlayType('application/vnd.apple.mpegurl')) {{
  video.src = src;
}} else {{
  status.textContent = 'this browser plays neither HLS nor Media Source Extensions';
}}
</script>
</body></html>
"#
    )
}

/// A single byte range of a body of `len` bytes, as `start..end`; `Err(())` when it cannot
/// be satisfied. `None` when there is no usable single range (then the whole body is sent).
pub(super) fn byte_range(value: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
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
    fn segment_names_go_both_ways_and_titles_are_escaped() {
        assert_eq!(segment_name(true, SegmentIndex(3)), "3.m4s");
        assert_eq!(segment_name(false, SegmentIndex(3)), "3.ts");
        for file in ["3.ts", "3.m4s", "3.mp4"] {
            assert_eq!(segment_of(file), Some(SegmentIndex(3)), "{file}");
        }
        for file in ["3", "x.ts", "-1.ts", "3.ts.ts"] {
            assert_eq!(segment_of(file), None, "{file}");
        }
        let page = player_page("<b>\"A&B\"</b>");
        assert!(page.contains("&lt;b&gt;&quot;A&amp;B&quot;&lt;/b&gt;"));
        assert!(!page.contains("<b>"));
    }
}
