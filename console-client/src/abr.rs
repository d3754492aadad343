//! Adaptive bitrate: which rendition of a program with several (an ABR ladder, see
//! [`vodmesh_proto::manifest::Rendition`]) each segment is fetched in.
//!
//! Playback works on positions: segment `i` of the ladder's first rendition stands for
//! segment `i` of every rendition, since they line up. [`Ladder::pick`] turns a position into
//! the program's segment of the rendition chosen for it, when the segment enters the fetch
//! window:
//!
//! - **Throughput** caps the choice: the highest rendition whose peak bandwidth fits in
//!   [`SAFETY`] of the throughput measured, the lower of the last [`SAMPLES`] segments'
//!   (one slow segment is enough to step down; stepping up takes two fast ones: an average
//!   would keep the memory of a fast link for many segments after it slowed). Before any
//!   measurement the lowest is taken, so the first bytes come fast.
//! - **Buffer** (buffer-based, as BBA): with less media written ahead than [`RESERVOIR`] of the
//!   target buffer, the console never steps up, and steps down one rendition when the
//!   throughput no longer carries the current one; above it, it steps up one rendition at a
//!   time as the throughput allows.
//! - At `--speed max` there is no play clock to protect: the throughput alone decides.
//! - `--rendition NAME` pins one rendition.
//! - An fMP4 program keeps the rendition it starts with: each rendition has its own
//!   initialization segment, which playback writes once per run (not switching there is a
//!   limit of this first version).
//!
//! Pure: it takes its measurements and returns its choices; [`crate::play`] applies them.

use std::collections::VecDeque;
use std::time::Duration;

use vodmesh_proto::SegmentIndex;
use vodmesh_proto::manifest::{ManifestContent, Rendition};

/// The share of the measured throughput a rendition's peak bandwidth may take.
pub const SAFETY: f64 = 0.8;
/// How many of the last segments' throughputs the estimate is the lowest of.
pub const SAMPLES: usize = 2;
/// Below this share of the target buffer the console does not step up.
pub const RESERVOIR: f64 = 0.5;
/// Segments shorter than this (bytes) say little about throughput and are not measured.
const MIN_SAMPLE: u64 = 16 * 1024;

/// `--rendition NAME` names no rendition of the program.
#[derive(Debug, thiserror::Error)]
#[error("the program has no rendition {name:?} (it has: {have})")]
pub struct UnknownRendition {
    name: String,
    have: String,
}

/// The renditions of a program and the choice among them.
#[derive(Clone, Debug)]
pub struct Ladder {
    /// The renditions, highest bandwidth first.
    renditions: Vec<Rendition>,
    /// A pinned rendition (`--rendition`).
    pinned: Option<usize>,
    /// The rendition of the last pick.
    current: Option<usize>,
    /// The throughputs of the last [`SAMPLES`] segments measured, bits per second, newest
    /// last.
    samples: VecDeque<f64>,
    /// Picks that changed the rendition.
    switches: u32,
    /// An fMP4 program: each rendition has its own initialization segment, which playback
    /// writes once per run, so the first rendition picked is kept.
    sticky: bool,
}

impl Ladder {
    /// The ladder of `content`, `None` for a program of one rendition (pinned to `pin`, which
    /// must then be absent).
    pub fn new(
        content: &ManifestContent,
        pin: Option<&str>,
    ) -> Result<Option<Self>, UnknownRendition> {
        let mut renditions = content.renditions.clone();
        renditions.sort_by_key(|r| std::cmp::Reverse(r.bandwidth));
        let unknown = |name: &str| UnknownRendition {
            name: name.to_string(),
            have: if renditions.is_empty() {
                "one rendition only, unnamed".to_string()
            } else {
                (renditions.iter())
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        };
        let pinned = match pin {
            Some(name) => Some(
                (renditions.iter())
                    .position(|r| r.name == name)
                    .ok_or_else(|| unknown(name))?,
            ),
            None => None,
        };
        if renditions.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self {
            renditions,
            pinned,
            current: None,
            samples: VecDeque::with_capacity(SAMPLES),
            switches: 0,
            sticky: content.has_init_segment(),
        }))
    }

    /// What playback plays: the positions of the program (its first rendition, indexed from
    /// 0), or the program itself when it has no renditions.
    pub fn positions(content: &ManifestContent) -> ManifestContent {
        (content.renditions.first())
            .and_then(|r| content.rendition_content(r))
            .unwrap_or_else(|| content.clone())
    }

    /// The program's segment for position `at`, in the rendition chosen now, with the
    /// rendition's name. `buffered` is the media written ahead of the play position and
    /// `target` the buffer playback keeps (`None` at `--speed max`).
    pub fn pick(
        &mut self,
        at: SegmentIndex,
        buffered: Duration,
        target: Option<Duration>,
    ) -> (SegmentIndex, &str) {
        let chosen = self.choose(buffered, target);
        if self.current.is_some_and(|c| c != chosen) {
            self.switches += 1;
        }
        self.current = Some(chosen);
        let r = &self.renditions[chosen];
        (r.segment(at.0).unwrap_or(r.first), r.name.as_str())
    }

    /// The rendition for the next segment, by the rules of the module's documentation.
    fn choose(&self, buffered: Duration, target: Option<Duration>) -> usize {
        if let Some(pinned) = self.pinned {
            return pinned;
        }
        if let (true, Some(current)) = (self.sticky, self.current) {
            return current;
        }
        let lowest = self.renditions.len() - 1;
        let Some(throughput) = self.throughput() else {
            return lowest;
        };
        // The highest rendition the throughput carries (the lowest when none does).
        let fits = (self.renditions.iter())
            .position(|r| r.bandwidth as f64 <= SAFETY * throughput)
            .unwrap_or(lowest);
        let Some(target) = target else {
            return fits;
        };
        let current = self.current.unwrap_or(lowest);
        let low_buffer = buffered.as_secs_f64() < RESERVOIR * target.as_secs_f64();
        if fits < current {
            // Up (a smaller index): one step at a time, and only with buffer to spare.
            if low_buffer { current } else { current - 1 }
        } else {
            // Down: straight to what the throughput carries.
            fits
        }
    }

    /// A segment of `bytes` took `elapsed` to fetch.
    pub fn measured(&mut self, bytes: u64, elapsed: Duration) {
        if bytes < MIN_SAMPLE || elapsed.is_zero() {
            return;
        }
        if self.samples.len() == SAMPLES {
            self.samples.pop_front();
        }
        self.samples
            .push_back(bytes as f64 * 8.0 / elapsed.as_secs_f64());
    }

    /// The throughput the choice counts on, bits per second: the lowest of the last samples.
    pub fn throughput(&self) -> Option<f64> {
        self.samples.iter().copied().reduce(f64::min)
    }

    /// The renditions as `name=bandwidth` (bits per second), highest first, for a log line.
    pub fn describe(&self) -> String {
        (self.renditions.iter())
            .map(|r| format!("{}={}", r.name, r.bandwidth))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Picks that changed the rendition so far.
    pub fn switches(&self) -> u32 {
        self.switches
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vodmesh_proto::SegmentHash;
    use vodmesh_proto::manifest::SegmentEntry;

    /// 1080p at 5 Mbit/s, 720p at 2.5, 360p at 0.8; three 4 s positions.
    fn content() -> ManifestContent {
        let names = [("360p", 800_000), ("1080p", 5_000_000), ("720p", 2_500_000)];
        ManifestContent {
            title: "t".into(),
            content_type: "video/mp2t".into(),
            duration_ms: 12_000,
            segments: (0..9)
                .map(|i| SegmentEntry {
                    index: SegmentIndex(i),
                    duration_ms: 4000,
                    size: 1000 + u64::from(i),
                    hash: SegmentHash::of(&[i as u8]),
                })
                .collect(),
            renditions: (names.iter().zip(0u32..))
                .map(|((name, bandwidth), n)| Rendition {
                    name: (*name).into(),
                    bandwidth: *bandwidth,
                    width: 0,
                    height: 0,
                    codecs: String::new(),
                    first: SegmentIndex(3 * n),
                    count: 3,
                })
                .collect(),
        }
    }

    const TARGET: Option<Duration> = Some(Duration::from_secs(8));
    const FULL: Duration = Duration::from_secs(8);
    const EMPTY: Duration = Duration::ZERO;

    /// Feeds a throughput of `mbps` until the estimate is it.
    fn at_mbps(ladder: &mut Ladder, mbps: f64) {
        for _ in 0..SAMPLES {
            ladder.measured((mbps * 1e6 / 2.0) as u64, Duration::from_secs(4));
        }
    }

    #[test]
    fn a_program_of_one_rendition_has_no_ladder_and_no_name_to_pin() {
        let mut one = content();
        one.renditions.clear();
        assert!(Ladder::new(&one, None).unwrap().is_none());
        assert!(Ladder::new(&one, Some("720p")).is_err());
        assert_eq!(Ladder::positions(&one), one);
    }

    #[test]
    fn it_starts_low_and_climbs_one_step_at_a_time_with_buffer_to_spare() {
        let mut ladder = Ladder::new(&content(), None).unwrap().unwrap();
        // Before a measurement: the lowest, 360p, whose segments are 0..3.
        assert_eq!(
            ladder.pick(SegmentIndex(0), EMPTY, TARGET),
            (SegmentIndex(0), "360p")
        );
        at_mbps(&mut ladder, 20.0);
        // Plenty of throughput, but a low buffer: no step up.
        assert_eq!(ladder.pick(SegmentIndex(1), EMPTY, TARGET).1, "360p");
        // With buffer: one step, then the next.
        assert_eq!(
            ladder.pick(SegmentIndex(1), FULL, TARGET),
            (SegmentIndex(7), "720p")
        );
        assert_eq!(
            ladder.pick(SegmentIndex(2), FULL, TARGET),
            (SegmentIndex(5), "1080p")
        );
        assert_eq!(ladder.switches(), 2);
    }

    #[test]
    fn a_throughput_drop_steps_down_at_once_and_its_return_climbs_back() {
        let mut ladder = Ladder::new(&content(), None).unwrap().unwrap();
        at_mbps(&mut ladder, 20.0);
        ladder.pick(SegmentIndex(0), FULL, TARGET);
        ladder.pick(SegmentIndex(0), FULL, TARGET);
        ladder.pick(SegmentIndex(0), FULL, TARGET);
        assert_eq!(ladder.pick(SegmentIndex(0), FULL, TARGET).1, "1080p");
        // 1.2 Mbit/s carries 360p (0.8 <= 0.96) and nothing above: straight down, buffer or not.
        at_mbps(&mut ladder, 1.2);
        assert_eq!(ladder.pick(SegmentIndex(1), FULL, TARGET).1, "360p");
        at_mbps(&mut ladder, 20.0);
        assert_eq!(ladder.pick(SegmentIndex(2), FULL, TARGET).1, "720p");
        assert_eq!(ladder.pick(SegmentIndex(2), FULL, TARGET).1, "1080p");
        // Less than 360p needs still plays 360p, the lowest.
        at_mbps(&mut ladder, 0.1);
        assert_eq!(ladder.pick(SegmentIndex(2), EMPTY, TARGET).1, "360p");
    }

    #[test]
    fn at_speed_max_throughput_alone_decides_and_a_pin_holds() {
        let mut ladder = Ladder::new(&content(), None).unwrap().unwrap();
        at_mbps(&mut ladder, 4.0);
        assert_eq!(ladder.pick(SegmentIndex(0), EMPTY, None).1, "720p");
        let mut pinned = Ladder::new(&content(), Some("1080p")).unwrap().unwrap();
        at_mbps(&mut pinned, 0.1);
        assert_eq!(
            pinned.pick(SegmentIndex(2), EMPTY, TARGET),
            (SegmentIndex(5), "1080p")
        );
        assert_eq!(pinned.switches(), 0);
        let unknown = Ladder::new(&content(), Some("4k")).unwrap_err().to_string();
        assert!(unknown.contains("1080p, 720p, 360p"), "{unknown}");
    }

    #[test]
    fn an_fmp4_program_keeps_its_first_rendition() {
        let mut c = content();
        c.content_type = vodmesh_proto::manifest::FMP4.into();
        for r in 0..3 {
            c.segments[r * 3].duration_ms = 0;
        }
        let mut ladder = Ladder::new(&c, None).unwrap().unwrap();
        assert_eq!(ladder.pick(SegmentIndex(0), EMPTY, TARGET).1, "360p");
        at_mbps(&mut ladder, 20.0);
        assert_eq!(ladder.pick(SegmentIndex(1), FULL, TARGET).1, "360p");
        assert_eq!(ladder.switches(), 0);
    }

    #[test]
    fn one_slow_segment_steps_down_and_two_fast_ones_let_it_climb() {
        let mut ladder = Ladder::new(&content(), None).unwrap().unwrap();
        at_mbps(&mut ladder, 100.0);
        for _ in 0..3 {
            ladder.pick(SegmentIndex(0), FULL, TARGET);
        }
        assert_eq!(ladder.pick(SegmentIndex(0), FULL, TARGET).1, "1080p");
        // One segment at 4 Mbit/s after many at 100: 1080p (5 Mbit/s) no longer fits.
        ladder.measured(2_000_000, Duration::from_secs(4));
        assert_eq!(ladder.pick(SegmentIndex(1), FULL, TARGET).1, "720p");
        // One fast segment is not enough to climb back...
        ladder.measured(50_000_000, Duration::from_secs(4));
        assert_eq!(ladder.pick(SegmentIndex(2), FULL, TARGET).1, "720p");
        // ...two are.
        ladder.measured(50_000_000, Duration::from_secs(4));
        assert_eq!(ladder.pick(SegmentIndex(2), FULL, TARGET).1, "1080p");
    }

    #[test]
    fn tiny_or_instant_fetches_are_not_measured() {
        let mut ladder = Ladder::new(&content(), None).unwrap().unwrap();
        ladder.measured(100, Duration::from_millis(1));
        ladder.measured(1 << 20, Duration::ZERO);
        assert_eq!(ladder.pick(SegmentIndex(0), FULL, TARGET).1, "360p");
    }
}
