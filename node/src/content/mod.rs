//! The content manager: ingest sessions, the catalog, publish state.
//!
//! A station started with `--content-manager` takes programs in: `vodmesh ingest` describes a
//! program's segments ([`ManifestContent`]), the content manager assigns each segment to one
//! of the station's engines, the client pushes the bytes to those engines, and on commit the
//! content manager checks that every segment is stored and verified, signs the manifest, and
//! enters the program in its catalog (redb) and in the registry (a signed catalog record under
//! `catalog/<id>`, and a provider record under `program/<id>`). Nothing enters the catalog
//! before every segment is in: an interrupted ingest leaves no program behind.

pub mod catalog;

use std::collections::{HashMap, HashSet};

use vodmesh_proto::ProgramId;
use vodmesh_proto::manifest::ManifestContent;

pub use catalog::{Catalog, CatalogEntry};

/// An ingest in progress.
#[derive(Debug)]
pub struct Session {
    /// What is being ingested.
    pub content: ManifestContent,
    /// When it becomes playable (`None`: inactive until published).
    pub publish_at_ms: Option<u64>,
    /// Copies wanted on other stations.
    pub replicas: u32,
    /// Segments stored so far.
    pub stored: HashSet<u32>,
}

/// Ingest sessions by program.
#[derive(Debug, Default)]
pub struct Sessions {
    sessions: HashMap<ProgramId, Session>,
}

impl Sessions {
    /// Starts (or restarts) a session.
    pub fn begin(&mut self, program: ProgramId, session: Session) {
        self.sessions.insert(program, session);
    }

    /// Records that a segment of `program` was stored.
    pub fn stored(&mut self, program: &ProgramId, index: u32) {
        if let Some(s) = self.sessions.get_mut(program) {
            s.stored.insert(index);
        }
    }

    /// The session of `program`.
    pub fn get(&self, program: &ProgramId) -> Option<&Session> {
        self.sessions.get(program)
    }

    /// Ends the session of `program`.
    pub fn end(&mut self, program: &ProgramId) -> Option<Session> {
        self.sessions.remove(program)
    }
}
