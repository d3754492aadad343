//! A program of several renditions (adaptive bitrate), from rungs that were encoded
//! ([`crate::ladder`]) or that a master playlist names ([`variants`]): the rungs' segments
//! one rendition after another, refused unless they line up.

use std::path::Path;

use anyhow::{Context, Result, bail};
use vodmesh_proto::SegmentIndex;
use vodmesh_proto::manifest::{
    MAX_RENDITIONS, MAX_SEGMENTS, ManifestContent, Rendition, SegmentEntry,
};

use super::{Base, MAX_PLAYLIST, Piece, http_get, media, read_limited};

/// One encoded rung: its rendition's name, its segments and where they are, and its
/// picture: width, height and RFC 6381 codecs.
pub(crate) struct Rung {
    pub(crate) name: String,
    pub(crate) content: ManifestContent,
    pub(crate) pieces: Vec<Piece>,
    pub(crate) picture: (u32, u32, String),
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
            read_limited(path, MAX_PLAYLIST, "playlist larger than 4 MiB").await
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
