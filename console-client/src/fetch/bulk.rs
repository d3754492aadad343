//! The console's side of the bulk path (`vodmesh_proto::net::bulk`): a segment streams over a
//! TLS connection to its engine (no yamux between TLS and the bytes) where the director names
//! the engine's bulk address, and over a libp2p stream where not ([`Wire`] is either).
//!
//! Connections are kept per engine (`bulk::pool::Pool`, one handshake per engine, not per
//! segment). [`Fetcher::wire`] makes the choice for each attempt.

use vodmesh_client::ClientError;
use vodmesh_proto::director::SegmentLocation;
pub(crate) use vodmesh_proto::net::bulk::pool::{Pool, Wire};
use vodmesh_proto::stream as wire;

use super::{Attempt, AttemptError, Fetcher};
use crate::directors::AskError;
use crate::retry::Ended;

impl Fetcher {
    /// Where the stream of an attempt at `location` goes: a bulk connection when the engine
    /// takes them (a kept one unless `fresh`), else (or when it fails) a libp2p stream.
    pub(super) async fn wire(
        &self,
        location: &SegmentLocation,
        fresh: bool,
    ) -> Result<Wire, Attempt> {
        let engine = location.engine;
        // The connect and the handshake are each bounded by `HANDSHAKE_WITHIN` already.
        let within = 2 * vodmesh_proto::net::bulk::HANDSHAKE_WITHIN;
        let bulk = (location.bulk, location.addrs.as_slice());
        if let Some(wire) = self.bulk.open(engine, bulk, fresh, within).await {
            return Ok(wire);
        }
        let unreachable = |e: AttemptError| Attempt::Ended(Ended::Unreachable(engine), e);
        let client = &self.directors.first;
        client
            .add_addresses(engine, location.addrs.clone())
            .await
            .map_err(|e| Attempt::Ended(Ended::DirectorLost, AskError::from(e).into()))?;
        match client.open_stream(engine, wire::PROTOCOL).await {
            Ok(s) => Ok(Wire::Stream(s)),
            // The engine's queue of unaccepted streams is full: alive and overloaded, as
            // good as its own `Busy` answer.
            Err(ClientError::Busy(_)) => Err(Attempt::Ended(
                Ended::EngineBusy(engine),
                AttemptError::Busy(engine),
            )),
            Err(cause) => Err(unreachable(AttemptError::Unreachable { engine, cause })),
        }
    }
}
