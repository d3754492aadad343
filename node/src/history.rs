//! The last ten minutes of every station, for the status page's sparklines: the page's
//! server samples the swarm every [`EVERY`] (its own station from its metrics, the others
//! from their station records, as fresh as their last republish) and keeps the samples in
//! memory here. A sparkline shows streams as they were at each sample, and bytes out, misses
//! and copies as what happened between two samples (a counter that went back, a station that
//! restarted, counts from zero).
//!
//! Everything here is plain: [`History::record`] takes the time and the figures, and
//! [`sparkline`] draws numbers as a small inline SVG (no script, no external asset).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::time::Duration;

use libp2p::PeerId;
use serde_json::{Value, json};
use vodmesh_proto::station::Counters;

/// How far back the sparklines go.
pub const WINDOW: Duration = Duration::from_secs(600);
/// How often the swarm is sampled.
pub const EVERY: Duration = Duration::from_secs(10);
/// Stations kept at most (and walked at most per sample): in a larger swarm, the first ones
/// found, so that memory and registry traffic are bounded.
pub const MAX_STATIONS: usize = 256;
/// Width and height of a sparkline, in pixels.
const SIZE: (f64, f64) = (120.0, 24.0);

/// One station at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sample {
    at_ms: u64,
    streams: u64,
    counters: Counters,
}

/// The samples of every station within [`WINDOW`].
#[derive(Debug, Default)]
pub struct History {
    stations: BTreeMap<PeerId, VecDeque<Sample>>,
}

impl History {
    /// Records `station` at `now_ms`: `streams` served now and its running totals. Samples
    /// older than [`WINDOW`] go, and past [`MAX_STATIONS`] a new station is not kept.
    pub fn record(&mut self, now_ms: u64, station: PeerId, streams: u64, counters: Counters) {
        if !self.stations.contains_key(&station) && self.stations.len() >= MAX_STATIONS {
            return;
        }
        let samples = self.stations.entry(station).or_default();
        samples.push_back(Sample {
            at_ms: now_ms,
            streams,
            counters,
        });
        let oldest = now_ms.saturating_sub(WINDOW.as_millis() as u64);
        while samples.front().is_some_and(|s| s.at_ms < oldest) {
            samples.pop_front();
        }
    }

    /// Forgets stations with no sample within [`WINDOW`] of `now_ms` (they left the swarm).
    pub fn forget_gone(&mut self, now_ms: u64) {
        let oldest = now_ms.saturating_sub(WINDOW.as_millis() as u64);
        self.stations
            .retain(|_, s| s.back().is_some_and(|last| last.at_ms >= oldest));
    }

    /// The four series of `station`, oldest first: streams at each sample; bytes out,
    /// misses and copies between consecutive samples.
    pub fn series(&self, station: &PeerId) -> Option<Series> {
        let samples = self.stations.get(station)?;
        let mut series = Series {
            streams: samples.iter().map(|s| s.streams).collect(),
            ..Series::default()
        };
        for (a, b) in samples.iter().zip(samples.iter().skip(1)) {
            let step = |f: fn(&Counters) -> u64| {
                let (then, now) = (f(&a.counters), f(&b.counters));
                // A counter that went back was reset (the station restarted): all of it is new.
                now.checked_sub(then).unwrap_or(now)
            };
            series.bytes_out.push(step(|c| c.bytes_out));
            series.misses.push(step(|c| c.misses));
            series.copies.push(step(|c| c.copies));
        }
        Some(series)
    }

    /// `{"streams": {"values": [...], "svg": "<svg ...>"}, "bytes_out": ..., "misses": ...,
    /// "copies": ...}` for `station`, or `null` when it has no sample yet.
    pub fn to_json(&self, station: &PeerId) -> Value {
        let Some(series) = self.series(station) else {
            return Value::Null;
        };
        let one = |values: &[u64]| json!({ "values": values, "svg": sparkline(values) });
        json!({
            "every_s": EVERY.as_secs(),
            "streams": one(&series.streams),
            "bytes_out": one(&series.bytes_out),
            "misses": one(&series.misses),
            "copies": one(&series.copies),
        })
    }
}

/// A station's sparklines' numbers, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Series {
    /// Streams served at each sample.
    pub streams: Vec<u64>,
    /// Bytes streamed out between consecutive samples.
    pub bytes_out: Vec<u64>,
    /// Misses between consecutive samples.
    pub misses: Vec<u64>,
    /// Copies taken in between consecutive samples.
    pub copies: Vec<u64>,
}

/// `values` as a sparkline: an inline SVG polyline scaled to its largest value (a flat line
/// at the bottom when every value is 0; one value is drawn as a level line).
pub fn sparkline(values: &[u64]) -> String {
    let (w, h) = SIZE;
    let max = values.iter().copied().max().unwrap_or(0).max(1) as f64;
    let step = if values.len() > 1 {
        w / (values.len() - 1) as f64
    } else {
        w
    };
    let mut points = String::new();
    let level = |v: u64| h - 1.0 - (h - 2.0) * v as f64 / max;
    match values {
        [] => {}
        [one] => {
            let _ = write!(points, "0,{y:.1} {w:.1},{y:.1}", y = level(*one));
        }
        many => {
            for (i, v) in many.iter().enumerate() {
                let _ = write!(points, "{:.1},{:.1} ", i as f64 * step, level(*v));
            }
        }
    }
    format!(
        "<svg class=\"spark\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\"><polyline fill=\"none\" stroke=\"#36c\" stroke-width=\"1.5\" \
         points=\"{}\"/></svg>",
        points.trim_end()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(bytes_out: u64, copies: u64, misses: u64) -> Counters {
        Counters {
            bytes_out,
            copies,
            misses,
        }
    }

    #[test]
    fn counters_become_what_happened_between_samples_and_a_reset_counts_from_zero() {
        let mut h = History::default();
        let s = PeerId::random();
        h.record(0, s, 1, counters(100, 1, 0));
        h.record(10_000, s, 3, counters(400, 1, 2));
        h.record(20_000, s, 2, counters(50, 0, 0));
        let series = h.series(&s).unwrap();
        assert_eq!(series.streams, vec![1, 3, 2]);
        assert_eq!(series.bytes_out, vec![300, 50]);
        assert_eq!(series.copies, vec![0, 0]);
        assert_eq!(series.misses, vec![2, 0]);
    }

    #[test]
    fn only_the_last_ten_minutes_and_live_stations_are_kept() {
        let mut h = History::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let window = WINDOW.as_millis() as u64;
        h.record(0, a, 1, Counters::default());
        h.record(0, b, 1, Counters::default());
        h.record(window + 1, a, 2, Counters::default());
        assert_eq!(h.series(&a).unwrap().streams, vec![2]);
        h.forget_gone(window + 1);
        assert!(h.series(&b).is_none(), "b left the swarm");
        assert!(h.to_json(&b).is_null());
    }

    #[test]
    fn the_number_of_stations_is_bounded() {
        let mut h = History::default();
        for _ in 0..MAX_STATIONS + 5 {
            h.record(0, PeerId::random(), 0, Counters::default());
        }
        assert_eq!(h.stations.len(), MAX_STATIONS);
    }

    #[test]
    fn a_sparkline_is_an_inline_svg_scaled_to_its_largest_value() {
        let svg = sparkline(&[0, 5, 10]);
        assert!(svg.starts_with("<svg class=\"spark\""), "{svg}");
        assert!(
            svg.contains("points=\"0.0,23.0 60.0,12.0 120.0,1.0\""),
            "{svg}"
        );
        assert!(!svg.contains("http://") || svg.contains("xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(sparkline(&[7]).contains("points=\"0,1.0 120.0,1.0\""));
        assert!(sparkline(&[]).contains("points=\"\""));
    }
}
