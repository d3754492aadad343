//! What the gateway serves besides segments, made from a manifest or a program list alone:
//! the HTML pages here; the HLS playlist, segment names and byte ranges from
//! [`vodmesh_proto::hls`], which a station's HTTP edge shares. Pure functions.

use std::fmt::Write as _;

use vodmesh_proto::director::ProgramInfo;
pub(super) use vodmesh_proto::hls::{
    byte_range, playlist, segment_of, segment_type, variant, variant_of,
};

/// Where the player page loads hls.js from; a dot keeps it apart from program titles.
pub(super) const HLS_JS_PATH: &str = "/.vodmesh/hls.min.js";

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_escaped() {
        let page = player_page("<b>\"A&B\"</b>");
        assert!(page.contains("&lt;b&gt;&quot;A&amp;B&quot;&lt;/b&gt;"));
        assert!(!page.contains("<b>"));
    }
}
