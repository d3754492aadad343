//! `/vodmesh/director/1`: the control protocol a director answers.
//!
//! One CBOR [`Request`] and one CBOR [`Response`] per stream (libp2p request-response with
//! [`crate::codec::CborCodec`]). Consoles, the `vodmesh` tool and other directors are its
//! clients. Every request may be answered with [`Response::Error`], whose message is the one
//! line a user sees.
//!
//! Variants are only ever appended, never reordered or removed.

use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

use libp2p::{Multiaddr, PeerId};

use crate::catalog::ProgramState;
use crate::codec::Limits;
use crate::ids::{ProgramId, SegmentIndex};
use crate::manifest::ManifestContent;
use crate::signed::Signed;

/// The protocol name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/vodmesh/director/1");

/// Size caps: requests are small; a swarm listing of 10^4 station records is a few MiB.
pub const LIMITS: Limits = Limits {
    request: 1024 * 1024,
    response: 16 * 1024 * 1024,
};

/// What a client asks a director.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// This station's own signed record, fresh.
    Station,
    /// Every live station of the swarm, found through the registry.
    Swarm,
    /// Start ingesting a program into this (home) station; answered with an
    /// [`Response::IngestPlan`] naming the engine that takes each segment.
    IngestBegin {
        /// The program's content (segments with sizes and hashes).
        content: ManifestContent,
        /// When it becomes playable; `None` keeps it inactive until `vodmesh publish`.
        publish_at_ms: Option<u64>,
        /// How many other stations should hold a copy.
        replicas: u32,
        /// Admin proof for op `ingest` on the program id.
        admin: Signed,
    },
    /// Every segment was pushed: verify, sign the manifest, enter it in the catalog.
    IngestCommit {
        /// The program.
        program: ProgramId,
        /// Admin proof for op `ingest-commit` on the program id.
        admin: Signed,
    },
    /// The swarm's catalog: every program any live station catalogs or holds, with the
    /// stations holding it (answered by any director, not only content managers).
    Programs,
    /// A program's signed manifest.
    Manifest {
        /// The program.
        program: ProgramId,
    },
    /// This station's playback activity counters.
    Activity,
    /// Which engine should stream this segment (claim 18: chosen by load and status).
    Locate {
        /// The program.
        program: ProgramId,
        /// The segment.
        index: SegmentIndex,
        /// Only a complete copy will do: the console was handed over by an engine whose copy
        /// is still filling and has not reached the console's position (claim 21).
        #[serde(default)]
        complete: bool,
        /// Engines the console could not reach for this segment: not to be named again (the
        /// director learns of a dead engine only seconds later). A hint from one console: the
        /// director skips them for this console, and for every console once several report
        /// the same engine, until its heartbeat settles whether it is alive.
        #[serde(default)]
        avoid: Vec<PeerId>,
        /// Engines that answered this console busy (at `--max-streams`): not to be named for
        /// this request, but alive, so a copy may still be taken from them (claims 19, 20).
        #[serde(default)]
        busy: Vec<PeerId>,
        /// Also name the engines of up to this many segments after this one, those this
        /// station holds whole now ([`SegmentLocation::ahead`]): a console fetching several
        /// segments at once asks once for them (at most [`MAX_AHEAD`]).
        #[serde(default)]
        ahead: u8,
        /// The console's token (the one it shows the engines): a station that does not hold
        /// the segment copies it from another (a miss) only for a console whose token opens
        /// the program. Without it, only engines that hold the segment are named.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<serde_bytes::ByteBuf>,
    },
    /// Publish a program now (admin): it becomes playable everywhere.
    Publish {
        /// The program.
        program: ProgramId,
        /// Admin proof for op `publish` on the program id.
        admin: Signed,
    },
    /// From a content manager to the stations holding a program: its new signed catalog
    /// record (claim 11's `publish`). Answered with [`Response::Ok`].
    Published {
        /// The signed [`crate::catalog::CatalogRecord`].
        record: Signed,
    },
    /// From a content manager to a station chosen to hold a copy: fetch every segment of
    /// `program` from the station of director `source` (claim 12). Answered with
    /// [`Response::Ok`] at once; the copy runs afterwards. A station whose engines have less
    /// room than `size` refuses at once ([`ErrorCode::Full`]): the content manager asks
    /// another.
    Replicate {
        /// The program.
        program: ProgramId,
        /// The source station's director.
        source: PeerId,
        /// Its addresses.
        source_addrs: Vec<Multiaddr>,
        /// The program's total bytes; 0 (from a content manager of an older version): not
        /// known, the station finds out from the manifest.
        #[serde(default)]
        size: u64,
    },
    /// From a seeking director to a source director: which engine holds segment `index`,
    /// to copy it from (claim 12)? Answered with [`Response::Located`].
    LocateCopy {
        /// The program.
        program: ProgramId,
        /// The segment.
        index: SegmentIndex,
        /// The asking station's engines as it knows them now: a source that approved fewer
        /// of them for copies (an engine attached since it looked the station up) looks the
        /// station up again instead of refusing the new one until the approval runs out.
        /// Empty from a director of an older version. At most [`MAX_ENGINES_NAMED`] count.
        #[serde(default)]
        engines: Vec<PeerId>,
    },
    /// May `program` be streamed now? [`Response::Ok`], or an error such as
    /// `program not published`.
    Playable {
        /// The program.
        program: ProgramId,
    },
    /// Give up an ingest in progress (it failed on the client's side): the segments already
    /// pushed are dropped from the engines. Answered with [`Response::Ok`].
    IngestAbort {
        /// The program.
        program: ProgramId,
        /// Admin proof for op `ingest-abort` on the program id.
        admin: Signed,
    },
    /// From one director to another while it answers [`Request::Programs`]: the programs
    /// this station catalogs or keeps the manifest of (it holds their segments), without a
    /// swarm walk of its own. Answered with [`Response::Programs`].
    Held,
    /// Drain this station (admin), or take it back into service (`drain: false`): while
    /// draining, its director names none of its engines for a new stream (consoles are sent
    /// to other stations that hold the segment) and takes no copy, replica or ingest;
    /// streams already running finish. Answered with [`Response::Ok`].
    Drain {
        /// Drain (true) or take new streams again (false).
        drain: bool,
        /// Admin proof for op [`DRAIN_OP`] on [`DRAIN_SUBJECT`].
        admin: Signed,
    },
    /// [`Request::Programs`] for an admin: with the programs not published yet, which a
    /// director lists to admins and member stations only. Answered with
    /// [`Response::Programs`].
    AllPrograms {
        /// Admin proof for op [`PROGRAMS_OP`] on [`PROGRAMS_SUBJECT`].
        admin: Signed,
    },
    /// The signed records of these stations (by director), as the registry holds them now:
    /// what a console that pinned its issuer checks a manifest's signer against, without
    /// [`Request::Swarm`]'s walk of every station (which waits out any station that hangs).
    /// At most [`MAX_STATIONS_ASKED`]; answered with [`Response::Swarm`], a station the
    /// registry has no live record of left out. A director of an older version does not know
    /// it: the console asks for the swarm then.
    Stations {
        /// The stations' directors.
        directors: Vec<PeerId>,
    },
}

impl Request {
    /// The request's kind, for logs: a refused request is logged by its kind, never whole
    /// (a stranger's request may be a megabyte).
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Station => "Station",
            Request::Swarm => "Swarm",
            Request::IngestBegin { .. } => "IngestBegin",
            Request::IngestCommit { .. } => "IngestCommit",
            Request::Programs => "Programs",
            Request::AllPrograms { .. } => "AllPrograms",
            Request::Stations { .. } => "Stations",
            Request::Manifest { .. } => "Manifest",
            Request::Activity => "Activity",
            Request::Locate { .. } => "Locate",
            Request::Publish { .. } => "Publish",
            Request::Published { .. } => "Published",
            Request::Replicate { .. } => "Replicate",
            Request::LocateCopy { .. } => "LocateCopy",
            Request::Playable { .. } => "Playable",
            Request::IngestAbort { .. } => "IngestAbort",
            Request::Held => "Held",
            Request::Drain { .. } => "Drain",
        }
    }
}

/// The admin operation of [`Request::AllPrograms`].
pub const PROGRAMS_OP: &str = "programs";
/// The subject of [`Request::AllPrograms`]'s admin proof: the whole catalog.
pub const PROGRAMS_SUBJECT: &[u8] = b"catalog";

/// The admin operation of [`Request::Drain`].
pub const DRAIN_OP: &str = "drain";
/// The subject of [`Request::Drain`]'s admin proof: the station itself (the claim names its
/// director already).
pub const DRAIN_SUBJECT: &[u8] = b"station";

/// Where a console gets a segment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SegmentLocation {
    /// The engine.
    pub engine: PeerId,
    /// Its addresses.
    pub addrs: Vec<Multiaddr>,
    /// The director of its station.
    pub director: PeerId,
    /// Still being copied in (stream follows as bytes land).
    pub filling: bool,
    /// A swap: this engine takes over a console that a filling engine handed back.
    #[serde(default)]
    pub swap: bool,
    /// Where the engine serves the segment over HTTP, when it does (`vodmesh-node --http`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<std::net::SocketAddr>,
    /// Whether it serves `http` over TLS (`--tls-cert`): its URLs are `https://`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub https: bool,
    /// Where the engine takes bulk connections (`vodmesh_proto::net::bulk`), when it does: the
    /// console streams over one of those rather than a libp2p stream. An unspecified IP is
    /// the engine's: the console takes the IP of its TCP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bulk: Option<std::net::SocketAddr>,
    /// Where the segments right after this one are, in order, as far as `Locate { ahead }`
    /// asked and this station holds them whole: the engine chosen for each now. A console
    /// goes there without asking, for a moment; a busy or unreachable engine sends it back
    /// to a director. Always empty within an entry of `ahead`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ahead: Vec<SegmentLocation>,
}

impl SegmentLocation {
    /// Engine `engine` at `addrs`, of the station of director `director`: a whole copy, no
    /// swap, no HTTP or bulk listener known, nothing named ahead.
    pub fn new(engine: PeerId, addrs: Vec<Multiaddr>, director: PeerId) -> Self {
        Self {
            engine,
            addrs,
            director,
            filling: false,
            swap: false,
            http: None,
            https: false,
            bulk: None,
            ahead: Vec::new(),
        }
    }
}

/// The most engines of a [`Request::LocateCopy`] a source looks at (a station record lists
/// as many as its size limit lets it; more named are ignored, not refused).
pub const MAX_ENGINES_NAMED: usize = 64;

/// The most segments a `Locate` names beyond its own ([`Request::Locate`]'s `ahead`).
pub const MAX_AHEAD: u8 = 8;

/// The most stations one [`Request::Stations`] asks for.
pub const MAX_STATIONS_ASKED: usize = 8;

/// Where the segments of an ingest go: one engine and the segment indexes it takes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineTarget {
    /// The engine.
    pub peer_id: PeerId,
    /// Its addresses.
    pub addrs: Vec<Multiaddr>,
    /// The segments it takes.
    pub segments: Vec<SegmentIndex>,
}

/// A program as `vodmesh programs` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProgramInfo {
    /// The program id.
    pub program: ProgramId,
    /// Its title.
    pub title: String,
    /// Inactive or published.
    pub state: ProgramState,
    /// When it becomes (or became) playable.
    pub publish_at_ms: Option<u64>,
    /// Total bytes.
    pub size: u64,
    /// Media duration, ms.
    pub duration_ms: u64,
    /// Segment count.
    pub segments: u32,
    /// Directors of the stations holding it.
    pub stations: Vec<PeerId>,
}

impl ProgramInfo {
    /// Whether subscribers may play it at `now_ms`: published, and its publish time come.
    pub fn playable(&self, now_ms: u64) -> bool {
        self.state == ProgramState::Published && self.publish_at_ms.is_none_or(|t| t <= now_ms)
    }
}

/// A director's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// The station's signed record.
    Station(Signed),
    /// Signed records of every live station found.
    Swarm(Vec<Signed>),
    /// The request was refused or failed.
    Error(ErrorReply),
    /// Where to push each segment of an ingest.
    IngestPlan {
        /// The program id the station computed.
        program: ProgramId,
        /// The engines and their segments.
        engines: Vec<EngineTarget>,
    },
    /// One program.
    Program(ProgramInfo),
    /// The catalog.
    Programs(Vec<ProgramInfo>),
    /// A signed manifest.
    Manifest(Signed),
    /// Where to get a segment.
    Location(SegmentLocation),
    /// Playback activity counters.
    Activity(Activity),
    /// Done; nothing to return.
    Ok,
    /// The engine that holds a segment (answer to [`Request::LocateCopy`]).
    Located {
        /// The segment index.
        index: SegmentIndex,
        /// The engine.
        engine: PeerId,
        /// Its addresses.
        addrs: Vec<Multiaddr>,
        /// Streams the engine serves now, and its limit: the source's load, for the cost of
        /// copying from it (claim 15).
        #[serde(default)]
        streams: u32,
        /// The engine's `--max-streams`.
        #[serde(default)]
        max_streams: u32,
        /// Where the engine takes bulk connections (`net::bulk`), when it does: copies go
        /// over one of those.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bulk: Option<std::net::SocketAddr>,
    },
}

/// What a director heard from its engines about playback (claims 16 and 17).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    /// Engines told to read a segment ahead of a console.
    pub preloads: u64,
    /// Streams an engine reported taking over.
    pub takeovers: u64,
    /// Streams that ended at the segment's end.
    pub stops_complete: u64,
    /// Streams that ended early (the console went away).
    pub stops_early: u64,
    /// Streams being served right now, over all engines.
    pub active: u64,
    /// Stream requests refused for want of a valid console token.
    pub refused_streams: u64,
    /// Copy requests refused for want of a valid engine token (or an approved peer).
    pub refused_copies: u64,
    /// Segments copied to another engine of the station because every engine holding them
    /// was at its stream limit (claims 19, 20).
    #[serde(default)]
    pub replications: u64,
    /// Segments asked of this station that it did not hold, filled by copying them from the
    /// cheapest holding station while the console streams them (claims 14, 15).
    #[serde(default)]
    pub misses: u64,
    /// Copies that lost their source and resumed from the next cheapest one.
    #[serde(default)]
    pub source_failovers: u64,
    /// Consoles that sought past what a filling engine had received, handed to an engine
    /// with the whole segment (claim 21).
    #[serde(default)]
    pub swaps: u64,
    /// Swaps where the engine taking the console over handed one of its own consoles to the
    /// filling engine, to balance their load (claim 22).
    #[serde(default)]
    pub exchanges: u64,
    /// Programs with at least one segment on this station's engines.
    #[serde(default)]
    pub programs: u64,
    /// Copies (misses and replicas) this station declined for want of room: its engines were
    /// full with nothing evictable; a console was sent to a holder instead.
    #[serde(default)]
    pub copies_declined: u64,
    /// Replicas a content manager was asked for (`--replicas N`) and could not place: no
    /// other station with room took them (each program counts its shortfall).
    #[serde(default)]
    pub replicas_unplaced: u64,
    /// The station is draining (`vodmesh station drain`, or SIGTERM): it starts no new
    /// stream and takes in no replica.
    #[serde(default)]
    pub draining: bool,
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request is malformed or makes no sense.
    BadRequest,
    /// The program or segment is unknown.
    NotFound,
    /// The program exists but is not published yet.
    NotPublished,
    /// No valid token, or a token that does not allow this.
    Unauthorized,
    /// Every engine that could serve is at capacity.
    Busy,
    /// The station failed internally.
    Internal,
    /// The swarm could not be reached or did not answer in time.
    Unavailable,
    /// The station has no room for it (its engines' capacity is taken).
    Full,
}

/// A refusal: a code for programs and one line for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// Machine-readable reason.
    pub code: ErrorCode,
    /// The one line a user sees, e.g. `program not published`.
    pub message: String,
}

impl ErrorReply {
    /// A reply with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ErrorReply {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};

    #[test]
    fn every_message_round_trips() {
        let program = ProgramId([7; 32]);
        for req in [
            Request::Station,
            Request::Swarm,
            Request::Stations {
                directors: vec![PeerId::random(), PeerId::random()],
            },
            Request::LocateCopy {
                program,
                index: SegmentIndex(3),
                engines: vec![PeerId::random()],
            },
            Request::Playable { program },
            Request::Locate {
                program,
                index: SegmentIndex(1),
                complete: false,
                avoid: vec![PeerId::random()],
                busy: vec![PeerId::random()],
                ahead: 4,
                token: Some(serde_bytes::ByteBuf::from(vec![7; 300])),
            },
            Request::Replicate {
                program,
                source: PeerId::random(),
                source_addrs: vec!["/ip4/127.0.0.1/tcp/1".parse().unwrap()],
                size: 5 << 20,
            },
            Request::Drain {
                drain: true,
                admin: Signed::sign("x", &1u8, &libp2p::identity::Keypair::generate_ed25519()),
            },
            Request::AllPrograms {
                admin: Signed::sign("x", &2u8, &libp2p::identity::Keypair::generate_ed25519()),
            },
        ] {
            let b = encode(&req);
            assert_eq!(decode::<Request>(&b, LIMITS.request).unwrap(), req);
        }
        let key = libp2p::identity::Keypair::generate_ed25519();
        let signed = Signed::sign("x", &1u8, &key);
        for resp in [
            Response::Station(signed.clone()),
            Response::Swarm(vec![signed.clone()]),
            Response::Ok,
            Response::Located {
                index: SegmentIndex(2),
                engine: PeerId::random(),
                addrs: vec![],
                streams: 1,
                max_streams: 8,
                bulk: Some(([127, 0, 0, 1], 9).into()),
            },
            Response::Error(ErrorReply::new(ErrorCode::NotFound, "x")),
            Response::Error(ErrorReply::new(
                ErrorCode::NotPublished,
                "program not published",
            )),
        ] {
            let b = encode(&resp);
            assert_eq!(decode::<Response>(&b, LIMITS.response).unwrap(), resp);
        }
    }

    #[test]
    fn a_replicate_of_an_older_content_manager_has_no_size() {
        /// `Replicate` as content managers sent it before it carried the program's size.
        #[derive(Serialize)]
        enum Older {
            Replicate {
                program: ProgramId,
                source: PeerId,
                source_addrs: Vec<Multiaddr>,
            },
        }
        let (program, source) = (ProgramId([3; 32]), PeerId::random());
        let older = encode(&Older::Replicate {
            program,
            source,
            source_addrs: vec![],
        });
        let want = Request::Replicate {
            program,
            source,
            source_addrs: vec![],
            size: 0,
        };
        assert_eq!(decode::<Request>(&older, LIMITS.request).unwrap(), want);
    }

    #[test]
    fn a_program_is_playable_once_published_and_its_time_has_come() {
        let info = |state, publish_at_ms| ProgramInfo {
            program: ProgramId([1; 32]),
            title: "t".into(),
            state,
            publish_at_ms,
            size: 1,
            duration_ms: 1,
            segments: 1,
            stations: vec![],
        };
        assert!(info(ProgramState::Published, None).playable(5));
        assert!(info(ProgramState::Published, Some(5)).playable(5));
        assert!(!info(ProgramState::Published, Some(6)).playable(5));
        assert!(!info(ProgramState::Inactive, Some(1)).playable(5));
        assert!(!info(ProgramState::Inactive, None).playable(5));
    }
}
