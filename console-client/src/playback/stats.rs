//! What a play reports: the statistics `--stats` writes when it ends ([`PlayStats`]), and where
//! it stands meanwhile, for a progress line ([`Progress`]). [`super::Playback`] keeps them.

use libp2p::PeerId;
use serde::Serialize;

/// What `--stats` writes (DESIGN.md §11).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PlayStats {
    /// From the play request to the first byte written.
    pub startup_ms: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Segments written.
    pub segments: u32,
    /// Boundaries where the next segment came from another engine.
    pub handoffs: u32,
    /// Segments that arrived after their play time (realtime only).
    pub stalls: u32,
    /// The longest of those stalls: how long the play position waited for a segment, in ms.
    pub longest_stall_ms: u64,
    /// Engines that served, by peer id.
    pub engines: Vec<String>,
    /// Stations (directors) whose engines served.
    pub stations: Vec<String>,
    /// Every segment matched its manifest hash.
    pub verified: bool,
    /// Seeks the viewer made during playback.
    pub seeks: u32,
    /// Segments for which a filling engine handed the console to one with the whole
    /// segment, because the console sought past what it had received (claim 21).
    pub swaps: u32,
    /// The viewer quit before the end.
    pub quit: bool,
    /// Busy answers waited out: an engine at `--max-streams`, or a director with nothing
    /// free to send the console to. The console asks again; it never fails for busy.
    pub waits: u32,
    /// For a program with renditions (an ABR ladder): segments fetched in each rendition, by
    /// name.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub renditions: std::collections::BTreeMap<String, u32>,
    /// For a program with renditions: how often the rendition changed from one segment
    /// fetched to the next.
    pub rendition_switches: u32,
}

/// Where playback stands, for a progress line.
#[derive(Clone, Debug)]
pub struct Progress<'a> {
    /// The statistics so far.
    pub stats: &'a PlayStats,
    /// The play position in media time.
    pub position_ms: u64,
    /// The program's duration.
    pub duration_ms: u64,
    /// Media written ahead of the play position.
    pub buffered_ms: u64,
    /// The engine that served the last segment, and its station's director.
    pub engine: Option<(PeerId, PeerId)>,
    /// Whether the viewer paused.
    pub paused: bool,
    /// For a program with renditions: the one the segment playing was fetched in.
    pub rendition: Option<String>,
}
