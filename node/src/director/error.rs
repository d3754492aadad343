//! What can go wrong in the director, and what a client is told: [`Error`] is mapped to the
//! wire's [`ErrorReply`] (a code for programs, one line for people) here and nowhere else.

use libp2p::PeerId;
use vodmesh_proto::admin::AdminError;
use vodmesh_proto::director::{ErrorCode, ErrorReply, Response};
use vodmesh_proto::manifest::ManifestError;
use vodmesh_proto::{ProgramId, SegmentId};
use vodmesh_registry::RegistryError;

use super::outbound::AskError;
use crate::content::plan::Shortfall;
use crate::control::FetchFailed;

/// The refusal every director gives for a program that is not playable yet.
pub const NOT_PUBLISHED: &str = "program not published";

/// A request the director could not serve, or work of its own that failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum Error {
    /// Neither the catalog, nor what this director learned, nor the registry knows it.
    #[error("unknown program")]
    UnknownProgram,
    /// Its publish time has not come (claim 11).
    #[error("{NOT_PUBLISHED}")]
    NotPublished,
    /// This station holds the segment but has not learned the program's catalog record
    /// (the loop fetches it from the registry before it answers).
    #[error("{NOT_PUBLISHED}")]
    Unlearned,
    /// The program's manifest lists no such segment.
    #[error("program {} has no segment {}", .0.program.short(), .0.index)]
    NoSuchSegment(SegmentId),
    /// No engine of this station holds the segment.
    #[error("segment {} of {} is not held by this station", .0.index, .0.program.short())]
    NotHeld(SegmentId),
    /// The engines that hold it are down, or the console could not reach them.
    #[error(
        "segment {} of {} is held only by engines that are down or unreachable",
        .0.index,
        .0.program.short()
    )]
    HeldOnlyUnreachable(SegmentId),
    /// Asked by another station for a segment this one has no complete copy of on an engine
    /// that is up.
    #[error("segment {0} is not here")]
    NotHere(SegmentId),
    /// A segment this station would copy in (it lacks it, or every engine holding it is
    /// busy), asked without a console token that opens the program: no copy is started.
    #[error(
        "this station copies a segment in for a console (a miss) only for a console token that opens the program (vodmesh-console login)"
    )]
    MissNeedsToken,
    /// No other station could name an engine to copy or stream the segment from.
    #[error("no station can serve segment {} of {}", .0.index, .0.program.short())]
    NoSource(SegmentId),
    /// Every engine holding the segment is at `--max-streams`.
    #[error("every engine holding this segment is at capacity")]
    AtCapacity,
    /// Every engine holding the segment is busy, here and at other stations.
    #[error("every engine holding this segment is busy; retry")]
    HoldersBusy,
    /// This station holds the segment on busy engines only, and no other station holds it.
    #[error("every engine holding this segment is busy, and no other station holds it")]
    OnlyHeldBusy,
    /// A console handed back by a filling engine, and no engine with the whole segment
    /// free for it (claim 21).
    #[error("no engine with the whole segment can take this console now")]
    NoWholeCopy,
    /// Too many misses are being filled at once.
    #[error("too many misses being filled; retry")]
    TooManyMisses,
    /// An engine's command queue is full.
    #[error("engine command queue full; retry")]
    EngineQueueFull,
    /// An engine chosen a moment ago is gone.
    #[error("engine gone")]
    EngineGone,
    /// No engine of this station is up.
    #[error("no engine of this station is up")]
    NoEngineUp,
    /// The station drains: it takes in no replica.
    #[error("this station is draining: it takes in no replica")]
    Draining,
    /// An engine an ingest resumes with is down.
    #[error("an engine of this ingest is down; retry once it is back")]
    IngestEngineDown,
    /// Catalog requests need `--content-manager`.
    #[error("this station is not a content manager (start it with --content-manager)")]
    NotContentManager,
    /// A title no new program may take.
    #[error("title {title:?} refused: {why}")]
    BadTitle {
        /// The title.
        title: String,
        /// Why.
        why: &'static str,
    },
    /// A title another program of the catalog has.
    #[error("program {program} is titled {title:?} already: give this one another title")]
    TitleTaken {
        /// The title.
        title: String,
        /// The program that has it.
        program: ProgramId,
    },
    /// An ingest of a program the catalog holds already, every segment of it held here (one
    /// missing would be repaired).
    #[error("program {0} is already in the catalog, every segment of it held here")]
    AlreadyInCatalog(ProgramId),
    /// The ingested content does not describe a program.
    #[error(transparent)]
    BadContent(#[from] ManifestError),
    /// A commit or abort of an ingest that is not in progress.
    #[error("no ingest of this program in progress")]
    NoIngest,
    /// An ingest of a program another client is pushing now.
    #[error(
        "program {program} is being ingested by another client (peer {client}), which stored a segment {ago_s} s ago: wait for it to end, or stop it and run this again (an ingest whose client stopped is taken over {} s after its last segment)",
        super::ingest::TAKE_OVER_AFTER.as_secs()
    )]
    IngestInProgress {
        /// The program.
        program: ProgramId,
        /// The client pushing it.
        client: PeerId,
        /// Seconds since it stored a segment (or began).
        ago_s: u64,
    },
    /// A commit before every segment is stored.
    #[error("{0} segment(s) not stored yet; ingest incomplete")]
    Incomplete(usize),
    /// The program does not fit on this home station's engines.
    #[error("{}", .0.message())]
    NoRoom(Shortfall),
    /// A replica does not fit on this station's engines, even counting what eviction frees.
    #[error(
        "no room: the program needs {need}, this station's engines have {room} free or evictable"
    )]
    NoRoomForReplica {
        /// The program's size, for people.
        need: String,
        /// What the engines could take, for people.
        room: String,
    },
    /// A catalog record that does not verify as its content manager's.
    #[error("catalog record does not verify")]
    BadRecord,
    /// Too many programs are being looked up in the registry at once.
    #[error("too many programs being looked up at once; retry")]
    FetchesBusy,
    /// Too many `Stations` asked at once.
    #[error("too many station records being looked up at once; retry")]
    StationsBusy,
    /// Too many `Programs` asked while a listing runs.
    #[error("too many program lists asked at once; retry")]
    ListingBusy,
    /// A catalog record of a program whose known record another content manager signed.
    #[error("program {} belongs to another content manager", .0.short())]
    NotOwner(ProgramId),
    /// This station's own catalog holds an entry that does not verify.
    #[error("catalog entry does not verify")]
    CorruptCatalog,
    /// A manifest from another director that is not what was asked for.
    #[error("{0}")]
    BadManifest(&'static str),
    /// A manifest from another director that does not verify.
    #[error("the program's manifest does not verify: {0}")]
    UnverifiedManifest(ManifestError),
    /// The program's content manager has no live station record.
    #[error("the program's content manager is not in the swarm")]
    ContentManagerGone,
    /// Neither the program's content manager nor a holder gave its manifest in time.
    #[error(
        "the program's content manager did not answer in time, nor did any holder give its manifest; retry later"
    )]
    ManifestSilent,
    /// The look-ups of a miss (registry, holders) did not end in time.
    #[error("the stations holding this program did not answer in time; retry")]
    GatherTimedOut,
    /// The admin proof does not hold.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// Another director asked for copies and is no live station of this swarm.
    #[error("not a live station of this swarm")]
    NotLive,
    /// Another director asked for more copies than are kept waiting while it is looked up.
    #[error("too many copies asked while this station is checked; retry")]
    CheckQueueFull,
    /// Segments of a replica could not be copied.
    #[error("{count} segment(s) failed, first {first}: {cause}")]
    CopiesFailed {
        /// How many.
        count: usize,
        /// The first that failed.
        first: SegmentId,
        /// Why, as the engine said.
        cause: FetchFailed,
    },
    /// A request only members may make, from a station that is not one (or not any more).
    #[error("{}", vodmesh_proto::member::NOT_A_MEMBER)]
    NotMember,
    /// A request only a certified content manager may make, from a member not granted the
    /// role.
    #[error("not a certified content manager")]
    NotCertified,
    /// A request this director does not serve.
    #[error("unsupported request {0}")]
    Unsupported(String),
    /// The segment location table failed.
    #[error(transparent)]
    Locations(#[from] crate::store::locations::Error),
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] crate::content::catalog::Error),
    /// The registry failed or is shutting down.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Another director did not answer as asked.
    #[error(transparent)]
    Ask(#[from] AskError),
}

impl Error {
    /// The wire's code for this failure.
    pub(super) fn code(&self) -> ErrorCode {
        use ErrorCode as C;
        match self {
            Self::UnknownProgram
            | Self::NoSuchSegment(_)
            | Self::NotHeld(_)
            | Self::HeldOnlyUnreachable(_)
            | Self::NotHere(_)
            | Self::NoSource(_)
            | Self::NoIngest => C::NotFound,
            Self::NotPublished | Self::Unlearned => C::NotPublished,
            Self::AtCapacity
            | Self::HoldersBusy
            | Self::OnlyHeldBusy
            | Self::NoWholeCopy
            | Self::TooManyMisses
            | Self::ListingBusy
            | Self::StationsBusy
            | Self::FetchesBusy
            | Self::CheckQueueFull
            | Self::EngineQueueFull
            | Self::EngineGone
            // Every segment was pushed, but an engine's report that it stored one may still
            // be on its way (over the backplane, for an engine process): a wait, not an end.
            | Self::Incomplete(_) => C::Busy,
            Self::NoEngineUp
            | Self::Draining
            | Self::IngestEngineDown
            | Self::IngestInProgress { .. }
            | Self::BadManifest(_)
            | Self::UnverifiedManifest(_)
            | Self::ContentManagerGone
            | Self::ManifestSilent
            | Self::GatherTimedOut
            | Self::Registry(_)
            | Self::Ask(_) => C::Unavailable,
            Self::NotContentManager
            | Self::AlreadyInCatalog(_)
            | Self::BadTitle { .. }
            | Self::TitleTaken { .. }
            | Self::BadContent(_)
            | Self::BadRecord
            | Self::Unsupported(_) => C::BadRequest,
            Self::NoRoom(_) | Self::NoRoomForReplica { .. } => C::Full,
            Self::Admin(_)
            | Self::NotLive
            | Self::NotMember
            | Self::NotCertified
            | Self::MissNeedsToken
            | Self::NotOwner(_) => C::Unauthorized,
            Self::CorruptCatalog
            | Self::CopiesFailed { .. }
            | Self::Locations(_)
            | Self::Catalog(_) => C::Internal,
        }
    }
}

impl From<Error> for ErrorReply {
    fn from(e: Error) -> Self {
        ErrorReply::new(e.code(), e.to_string())
    }
}

/// A family's answer as a response: `ok`'s, or the refusal.
pub(super) fn respond<T>(answer: Result<T, Error>, ok: impl FnOnce(T) -> Response) -> Response {
    answer.map_or_else(|e| Response::Error(e.into()), ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_see_the_code_and_line_they_always_saw() {
        let segment = SegmentId::new(ProgramId([9; 32]), 3);
        let short = segment.program.short();
        for (error, code, line) in [
            (
                Error::NotPublished,
                ErrorCode::NotPublished,
                "program not published".to_string(),
            ),
            (
                Error::NotHeld(segment),
                ErrorCode::NotFound,
                format!("segment 3 of {short} is not held by this station"),
            ),
            (
                Error::AtCapacity,
                ErrorCode::Busy,
                "every engine holding this segment is at capacity".into(),
            ),
            (
                Error::NoSource(segment),
                ErrorCode::NotFound,
                format!("no station can serve segment 3 of {short}"),
            ),
            // Busy since the tool waits out the engines' last reports (the line is the same).
            (
                Error::Incomplete(2),
                ErrorCode::Busy,
                "2 segment(s) not stored yet; ingest incomplete".into(),
            ),
        ] {
            assert_eq!(ErrorReply::from(error), ErrorReply::new(code, line));
        }
    }
}
