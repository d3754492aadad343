//! The director's part in playback: which engine streams a segment (claim 18), and whether a
//! program may be streamed at all (claim 11).

use vodmesh_proto::ProgramId;
use vodmesh_proto::SegmentId;
use vodmesh_proto::director::{ErrorCode, ErrorReply, SegmentLocation};

use super::Director;
use crate::control::EngineCommand;
use crate::store::locations::LocationState;

impl Director {
    /// Tells the engine a console was just sent to that the segment is coming (claim 16).
    pub(super) fn preload(&mut self, location: &SegmentLocation, program: ProgramId, index: u32) {
        let engine = self
            .engines
            .iter()
            .position(|e| e.as_ref().is_some_and(|e| e.peer_id == location.engine));
        if let Some(tx) = engine.and_then(|i| self.engine_commands.get(i))
            && tx
                .try_send(EngineCommand::Preload {
                    segment: SegmentId::new(program, index),
                })
                .is_ok()
        {
            self.activity.preloads += 1;
        }
    }

    /// The engine of this station that should stream `program`'s segment `index`: among the
    /// engines holding it that are up and below their stream limit, a complete copy before a
    /// filling one, then the fewest active streams.
    pub(super) fn locate(
        &self,
        program: ProgramId,
        index: u32,
    ) -> Result<SegmentLocation, ErrorReply> {
        let segment = SegmentId::new(program, index);
        let holders = self
            .locations
            .list(segment)
            .map_err(|e| ErrorReply::new(ErrorCode::Internal, e.to_string()))?;
        if holders.is_empty() {
            return Err(ErrorReply::new(
                ErrorCode::NotFound,
                format!(
                    "segment {index} of {} is not held by this station",
                    program.short()
                ),
            ));
        }
        // Claim 11: nothing is streamed before the publish time. A station that holds a copy
        // but has not learned the program's catalog record refuses too.
        self.playable(&program).map_err(|e| match e.code {
            ErrorCode::NotFound => {
                ErrorReply::new(ErrorCode::NotPublished, "program not published")
            }
            _ => e,
        })?;
        let best = holders
            .iter()
            .filter_map(|loc| {
                let info = self
                    .engines
                    .iter()
                    .flatten()
                    .find(|e| e.peer_id == loc.engine && e.up)?;
                (info.streams < info.max_streams).then_some((loc, info))
            })
            .min_by_key(|(loc, info)| (loc.state != LocationState::Complete, info.streams));
        match best {
            Some((loc, info)) => Ok(SegmentLocation {
                engine: info.peer_id,
                addrs: info.addrs.clone(),
                director: self.peer_id(),
                filling: loc.state == LocationState::Filling,
            }),
            None => Err(ErrorReply::new(
                ErrorCode::Busy,
                "every engine holding this segment is at capacity",
            )),
        }
    }
}
