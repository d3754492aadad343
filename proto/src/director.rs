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

use crate::codec::Limits;
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
        for req in [Request::Station, Request::Swarm] {
            let b = encode(&req);
            assert_eq!(decode::<Request>(&b, LIMITS.request).unwrap(), req);
        }
        let key = libp2p::identity::Keypair::generate_ed25519();
        let signed = Signed::sign("x", &1u8, &key);
        for resp in [
            Response::Station(signed.clone()),
            Response::Swarm(vec![signed]),
            Response::Error(ErrorReply::new(
                ErrorCode::NotPublished,
                "program not published",
            )),
        ] {
            let b = encode(&resp);
            assert_eq!(decode::<Response>(&b, LIMITS.response).unwrap(), resp);
        }
    }
}
