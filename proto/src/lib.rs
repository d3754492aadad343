//! Wire types shared by every vodmesh peer.
//!
//! Directors, engines, consoles and the `vodmesh` tool all speak the messages defined here, so
//! they live in one small crate:
//!
//! - [`auth`]: `/vodmesh/auth/1`, logins, user administration, enrollment and engine tokens,
//!   answered by the auth station's director.
//! - [`admin`]: the signed claim that proves admin rights for one operation, at a director or
//!   at the auth server.
//! - [`blade`]: `/vodmesh/blade/1`, the backplane between a director and an engine in a
//!   process of its own.
//! - [`ids`]: typed identifiers (`ProgramId`, `SegmentIndex`, `SegmentHash`, `SegmentId`,
//!   `StationId`) with `Display`, `FromStr`, serde and a short form for log fields.
//! - [`codec`]: the CBOR codec (cbor4ii via serde) with an explicit size limit on every decode,
//!   the request-response codec built on it, and length-prefixed frames for bulk streams.
//! - [`signed`]: a signed envelope (CBOR payload + libp2p public key + signature) used for
//!   station records, catalog records and manifests.
//! - [`catalog`]: the signed catalog record (program state and publish time).
//! - [`hls`]: HLS playlists, segment names and byte ranges for standard players (the
//!   console's gateway and a station's HTTP edge).
//! - [`manifest`]: a program's signed manifest (segments, sizes, durations, hashes).
//! - [`member`]: station certificates: who is a member of the swarm, with which roles.
//! - [`copy`]: `/vodmesh/copy/1`, segment copies from engine to engine (distribution).
//! - [`ingest`]: `/vodmesh/ingest/1`, segment bytes pushed into a home station's engines.
//! - [`stream`]: `/vodmesh/stream/1`, an engine streaming a segment to a console.
//! - [`station`]: the station record every director publishes in the registry.
//! - [`director`]: `/vodmesh/director/1`, the control protocol a director answers.
//! - [`net`]: how every vodmesh peer builds its libp2p swarm (TCP + QUIC, noise, yamux).
//! - [`time`]: wall-clock milliseconds, the unit of every timestamp on the wire.
//! - [`fuzzing`]: the decoders a peer's bytes reach, as entry points for the fuzzers (`fuzz/`).
//! - [`verified`]: verified streaming by 16 KiB chunk group: a segment's BLAKE3 tree (whose
//!   root is the manifest's segment hash), the leaves a store keeps, the stream order an engine
//!   sends and the decoder a console checks it with.
//! - [`token`]: security tokens: ed25519-signed CBOR claims bound to the holder's peer id,
//!   issued by the auth server and verified offline by every director and engine.

pub mod admin;
pub mod auth;
pub mod blade;
pub mod catalog;
pub mod codec;
pub mod copy;
pub mod director;
pub mod fuzzing;
pub mod hls;
pub mod ids;
pub mod ingest;
pub mod manifest;
pub mod member;
pub mod net;
pub mod signed;
pub mod station;
pub mod stream;
pub mod time;
pub mod token;
pub mod verified;

pub use ids::{ProgramId, SegmentHash, SegmentId, SegmentIndex, StationId};
