//! The director's segment location table: for each segment of its station, which engines hold
//! it, whether their copy is filling or complete, and their load.
//!
//! Kept in redb so a restarted director still knows where its segments are. Calls block on
//! the database (writes fsync); async callers run them with `spawn_blocking`. The file is a
//! [`RedbFile`]: opened again after a failed commit (every commit here is durable).

use std::path::Path;
use std::sync::Arc;

use libp2p::PeerId;
use redb::TableDefinition;
use tracing::warn;
use vodmesh_proto::{ProgramId, SegmentId, SegmentIndex};
use vodmesh_registry::RedbFile;

/// `(program, segment index, engine peer id bytes)`: a program's rows are contiguous, and a
/// segment's rows follow each other.
type Key = (&'static [u8; 32], u32, &'static [u8]);
/// `(state, load)`.
type Row = (u8, u32);

const LOCATIONS: TableDefinition<Key, Row> = TableDefinition::new("segment_locations");

/// Whether an engine's copy of a segment is complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LocationState {
    /// Still arriving; can be streamed as it fills (claim 21).
    Filling,
    /// Stored and verified.
    Complete,
}

/// One engine holding one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    /// The engine's peer id.
    pub engine: PeerId,
    /// Its copy's state.
    pub state: LocationState,
    /// Its load when last reported (streams, or any unit the director chooses).
    pub load: u32,
}

/// A location table operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// redb failed.
    #[error("segment location table: {0}")]
    Db(#[from] redb::Error),
}

fn db_err(e: impl Into<redb::Error>) -> Error {
    Error::Db(e.into())
}

/// The director's segment -> engines table.
#[derive(Clone)]
pub struct LocationTable {
    db: Arc<RedbFile>,
    /// The last count of programs held ([`LocationTable::program_count`]) and when.
    counted: Arc<std::sync::Mutex<Option<(std::time::Instant, usize)>>>,
}

/// How long a count of the programs held stands: any console may ask for it (`Activity`),
/// and counting scans the table.
const COUNT_STANDS: std::time::Duration = std::time::Duration::from_secs(2);

impl LocationTable {
    /// Opens (or creates) a table in its own database file.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let db = RedbFile::open(path)?;
        let tx = db.begin_write().map_err(db_err)?;
        tx.open_table(LOCATIONS).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(Self {
            db: Arc::new(db),
            counted: Arc::default(),
        })
    }

    /// How many programs this station holds segments of, counted at most
    /// [`COUNT_STANDS`] ago.
    pub fn program_count(&self) -> Result<usize, Error> {
        let mut counted = self
            .counted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, n)) = *counted
            && at.elapsed() < COUNT_STANDS
        {
            return Ok(n);
        }
        let n = self.programs()?.len();
        *counted = Some((std::time::Instant::now(), n));
        Ok(n)
    }

    /// Records (or updates) that `location.engine` holds `segment`.
    pub fn insert(&self, segment: SegmentId, location: &Location) -> Result<(), Error> {
        let peer = location.engine.to_bytes();
        let state = match location.state {
            LocationState::Filling => 0u8,
            LocationState::Complete => 1u8,
        };
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(LOCATIONS).map_err(db_err)?;
            t.insert(
                (segment.program.as_bytes(), segment.index.0, peer.as_slice()),
                (state, location.load),
            )
            .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(())
    }

    /// Forgets that `engine` holds `segment`; returns whether it was recorded.
    pub fn remove(&self, segment: SegmentId, engine: &PeerId) -> Result<bool, Error> {
        let peer = engine.to_bytes();
        let tx = self.db.begin_write().map_err(db_err)?;
        let existed = {
            let mut t = tx.open_table(LOCATIONS).map_err(db_err)?;
            t.remove((segment.program.as_bytes(), segment.index.0, peer.as_slice()))
                .map_err(db_err)?
                .is_some()
        };
        tx.commit().map_err(db_err)?;
        Ok(existed)
    }

    /// Forgets every segment of `engine` (it left the station); returns how many rows went.
    pub fn remove_engine(&self, engine: &PeerId) -> Result<usize, Error> {
        let peer = engine.to_bytes();
        let tx = self.db.begin_write().map_err(db_err)?;
        let mut removed = 0;
        {
            let mut t = tx.open_table(LOCATIONS).map_err(db_err)?;
            t.retain(|(_, _, p), _| {
                let keep = p != peer.as_slice();
                removed += usize::from(!keep);
                keep
            })
            .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(removed)
    }

    /// The engines holding `segment`.
    pub fn list(&self, segment: SegmentId) -> Result<Vec<Location>, Error> {
        Ok(self
            .scan(&segment.program, Some(segment.index))?
            .into_iter()
            .map(|(_, l)| l)
            .collect())
    }

    /// Every location of every segment of `program`, in segment order.
    pub fn for_program(&self, program: ProgramId) -> Result<Vec<(SegmentIndex, Location)>, Error> {
        self.scan(&program, None)
    }

    /// Every program with at least one segment located on this station, in id order (a skip
    /// scan: one range lookup per program, not one per row).
    pub fn programs(&self) -> Result<Vec<ProgramId>, Error> {
        self.db
            .read(|tx| {
                let t = tx.open_table(LOCATIONS)?;
                let mut out = Vec::new();
                let mut from = [0u8; 32];
                loop {
                    let start: (&[u8; 32], u32, &[u8]) = (&from, 0, &[]);
                    let Some(item) = t.range(start..)?.next() else {
                        break;
                    };
                    let (k, _) = item?;
                    let program = *k.value().0;
                    out.push(ProgramId(program));
                    // The next program id after this one, big-endian; none after all ones.
                    let mut next = program;
                    let Some(i) = next.iter().rposition(|b| *b != 0xff) else {
                        break;
                    };
                    next[i] += 1;
                    next[i + 1..].fill(0);
                    from = next;
                }
                Ok(out)
            })
            .map_err(db_err)
    }

    /// The rows of `program`: all its segments', or only segment `only`'s.
    fn scan(
        &self,
        program: &ProgramId,
        only: Option<SegmentIndex>,
    ) -> Result<Vec<(SegmentIndex, Location)>, Error> {
        self.db
            .read(|tx| {
                let t = tx.open_table(LOCATIONS)?;
                let from = only.map_or(0, |o| o.0);
                let start: (&[u8; 32], u32, &[u8]) = (program.as_bytes(), from, &[]);
                let mut out = Vec::new();
                for item in t.range(start..)? {
                    let (k, v) = item?;
                    let (p, index, peer) = k.value();
                    if p != program.as_bytes() || only.is_some_and(|o| o.0 != index) {
                        break;
                    }
                    let Ok(engine) = PeerId::from_bytes(peer) else {
                        warn!(program = %program.short(), segment = index, "unreadable engine id in the location table; skipped");
                        continue;
                    };
                    let (state, load) = v.value();
                    let state = if state == 1 {
                        LocationState::Complete
                    } else {
                        LocationState::Filling
                    };
                    out.push((
                        SegmentIndex(index),
                        Location {
                            engine,
                            state,
                            load,
                        },
                    ));
                }
                Ok(out)
            })
            .map_err(db_err)
    }
}
