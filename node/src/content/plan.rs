//! Where an ingest's segments go: a plain function of the engines' free room and the segment
//! sizes, so the rule is testable without a station.
//!
//! Consecutive segments go to consecutive engines (playback then hands off from engine to
//! engine, and the push writes to all of them at once), skipping an engine without room for
//! the next segment. A home station pins what it holds, so eviction frees nothing there: the
//! room is the engines' capacity less what they store, what writes have reserved and what
//! other ingests in progress were promised. An ingest that does not fit is refused before a
//! byte moves ([`Shortfall`]).

use vodmesh_proto::station::human_bytes;

/// An ingest that does not fit: what it needs against what the engines have free.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shortfall {
    /// Bytes of the whole program.
    pub need: u64,
    /// Bytes free over the bounded engines.
    pub free: u64,
    /// Free bytes per engine (`None`: bounded only by its disks).
    pub engines: Vec<Option<u64>>,
    /// The largest segment, which must fit on one engine.
    pub largest: u64,
}

impl Shortfall {
    /// The one line a user sees: the figures and the flags to change.
    pub fn message(&self) -> String {
        let per_engine: Vec<String> = self
            .engines
            .iter()
            .enumerate()
            .map(|(i, f)| match f {
                Some(f) => format!("engine {i}: {}", human_bytes(*f)),
                None => format!("engine {i}: unbounded"),
            })
            .collect();
        let why = if self.need > self.free {
            String::new()
        } else {
            format!(
                ", and no engine has room left for a {} segment",
                human_bytes(self.largest)
            )
        };
        format!(
            "not enough room on this home station: the program needs {} ({} bytes), its \
             engines have {} ({} bytes) free ({}){why}; a home station keeps every program and \
             evicts nothing: restart it with a larger --capacity (bytes per engine), or more \
             --engines or --disk",
            human_bytes(self.need),
            self.need,
            human_bytes(self.free),
            self.free,
            per_engine.join(", "),
        )
    }
}

/// Assigns each of `sizes` (in order) to an engine, given each engine's free room (`None`:
/// bounded only by its disks). Returns the engine (position in `rooms`) of every segment.
pub fn place(rooms: &[Option<u64>], sizes: &[u64]) -> Result<Vec<usize>, Shortfall> {
    let shortfall = || Shortfall {
        need: sizes.iter().fold(0, |sum, s| sum.saturating_add(*s)),
        free: rooms
            .iter()
            .flatten()
            .fold(0, |sum, f| sum.saturating_add(*f)),
        engines: rooms.to_vec(),
        largest: sizes.iter().copied().max().unwrap_or(0),
    };
    if rooms.is_empty() {
        return Err(shortfall());
    }
    let mut left = rooms.to_vec();
    let mut next = 0;
    let mut placed = Vec::with_capacity(sizes.len());
    for &size in sizes {
        let found = (0..left.len())
            .map(|k| (next + k) % left.len())
            .find(|&e| left[e].is_none_or(|free| free >= size));
        let Some(engine) = found else {
            return Err(shortfall());
        };
        if let Some(free) = &mut left[engine] {
            *free -= size;
        }
        placed.push(engine);
        next = (engine + 1) % left.len();
    }
    Ok(placed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB4: u64 = 4 * 1024 * 1024;

    #[test]
    fn unbounded_engines_take_segments_in_turn() {
        assert_eq!(
            place(&[None, None, None], &[1; 7]),
            Ok(vec![0, 1, 2, 0, 1, 2, 0])
        );
    }

    #[test]
    fn a_full_engine_is_skipped_and_the_turn_goes_on() {
        // Engine 0 has room for one segment, engine 1 for two.
        let rooms = [Some(MIB4), Some(2 * MIB4 + 5), Some(10 * MIB4)];
        let placed = place(&rooms, &[MIB4; 6]);
        assert_eq!(placed, Ok(vec![0, 1, 2, 1, 2, 2]));
    }

    #[test]
    fn a_program_larger_than_the_free_room_is_refused_with_the_figures() {
        // Issue 26: 32 MiB into two engines of 10 MB.
        let sizes = [MIB4; 8];
        let err = place(&[Some(10_000_000), Some(10_000_000)], &sizes);
        let Err(short) = err else {
            panic!("32 MiB fit into 20 MB");
        };
        assert_eq!((short.need, short.free), (33_554_432, 20_000_000));
        let m = short.message();
        for part in [
            "33.6 MB",
            "33554432 bytes",
            "20.0 MB",
            "engine 1: 10.0 MB",
            "--capacity",
        ] {
            assert!(m.contains(part), "{part} missing from: {m}");
        }
        assert!(!m.contains('\n'));
    }

    #[test]
    fn room_in_total_but_not_for_one_segment_is_refused_too() {
        let err = place(&[Some(3), Some(3)], &[4]);
        let Err(short) = err else {
            panic!("a 4-byte segment fit into 3 bytes");
        };
        assert!(short.need <= short.free);
        assert!(
            short
                .message()
                .contains("no engine has room left for a 4 B segment")
        );
        assert!(place(&[], &[1]).is_err());
    }
}
