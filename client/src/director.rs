//! A client of one director over `/vodmesh/director/1`, used by the console, the tools and
//! the tests: requests, and streams to the engines the director names.

use std::ops::Deref;
use std::time::Duration;

use libp2p::Multiaddr;
use libp2p::identity::Keypair;
use vodmesh_proto::director::{self, ErrorReply, Request, Response};

use crate::rpc::{ClientError, Protocol, RpcClient};

/// How long one request may take (a swarm walk of a large swarm takes a while).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a director did not give the answer asked for.
#[derive(Debug, thiserror::Error)]
pub enum DirectorError {
    /// The network failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The director refused; its one line (`program not published`, `token expired`, ...).
    #[error("{}", .0.message)]
    Refused(ErrorReply),
    /// The director answered something else than the request calls for.
    #[error("unexpected answer from the director: {0}")]
    Unexpected(String),
}

impl DirectorError {
    /// An answer the request did not call for.
    pub fn unexpected(answer: &Response) -> Self {
        Self::Unexpected(format!("{answer:?}"))
    }
}

/// A connection to one director. It is an [`RpcClient`] of the director protocol, and opens
/// streams to the engines the director names.
#[derive(Debug)]
pub struct DirectorClient {
    rpc: RpcClient<Request, Response>,
}

impl DirectorClient {
    /// Connects to the director at `addr` with identity `key` (a new one if `None`).
    pub async fn connect(addr: &Multiaddr, key: Option<Keypair>) -> Result<Self, ClientError> {
        let key = key.unwrap_or_else(Keypair::generate_ed25519);
        let protocol = Protocol {
            name: director::PROTOCOL,
            limits: director::LIMITS,
            timeout: REQUEST_TIMEOUT,
        };
        let rpc = RpcClient::connect(std::slice::from_ref(addr), key, protocol).await?;
        Ok(Self { rpc })
    }

    /// Sends `request`; the director's refusal ([`Response::Error`]) is
    /// [`DirectorError::Refused`].
    pub async fn call(&self, request: Request) -> Result<Response, DirectorError> {
        match self.rpc.request(request).await? {
            Response::Error(e) => Err(DirectorError::Refused(e)),
            answer => Ok(answer),
        }
    }
}

impl Deref for DirectorClient {
    type Target = RpcClient<Request, Response>;

    fn deref(&self) -> &Self::Target {
        &self.rpc
    }
}
