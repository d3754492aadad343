//! The registry's async face: what everything in the node that is not the director's event
//! loop holds ([`RegistryHandle`], cheap to clone), and the [`Command`]s it sends over a
//! bounded channel for [`crate::registry::Registry::execute`] to start.

use std::collections::HashSet;

use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot, watch};
use vodmesh_proto::ProgramId;
use vodmesh_proto::signed::Signed;
use vodmesh_proto::station::StationRecord;

use crate::config::SETTLE_WITHIN;
use crate::stats::HoldersTrace;

/// A registry request, answered on its `reply` channel.
#[derive(Debug)]
pub enum Command {
    /// Store a signed station record locally and at the closest directors.
    PutStation {
        /// The signed record (signed by the station's director).
        record: Signed,
        /// Answered when the record is stored locally and the replication query finished.
        reply: oneshot::Sender<Result<(), RegistryError>>,
    },
    /// Fetch the freshest valid station record of a director.
    GetStation {
        /// The station's director.
        director: PeerId,
        /// `None` when no live record exists.
        reply: oneshot::Sender<Option<(StationRecord, Signed)>>,
    },
    /// Announce that this station holds segments of a program.
    Provide {
        /// The program.
        program: ProgramId,
        /// Answered when the provider record is announced.
        reply: oneshot::Sender<Result<(), RegistryError>>,
    },
    /// Stop announcing a program.
    StopProviding {
        /// The program.
        program: ProgramId,
    },
    /// The directors of the stations holding a program.
    Holders {
        /// The program.
        program: ProgramId,
        /// The holders found so far, grown as the look-up finds them; dropping every receiver
        /// cuts the look-up short.
        found: watch::Sender<Found>,
    },
    /// Store a signed catalog record.
    PutCatalog {
        /// The record (signed by the content manager).
        record: Signed,
        /// Answered when stored locally and replicated.
        reply: oneshot::Sender<Result<(), RegistryError>>,
    },
    /// Every valid catalog record found for a program (callers pick by signer and time).
    GetCatalog {
        /// The program.
        program: ProgramId,
        /// The records found so far, grown as the look-up finds them; dropping every
        /// receiver cuts the look-up short.
        found: watch::Sender<FoundRecords>,
    },
    /// The directors closest to a key, found by a network query.
    Closest {
        /// The key (any bytes; peer ids are used to crawl the swarm).
        key: Vec<u8>,
        /// The peers found.
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    /// The peers in the local routing table.
    RoutingTable {
        /// The peers.
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    /// Join the DHT through the peers added so far.
    Bootstrap,
    /// Like [`Command::Holders`], and also what the lookup cost (for `vodmesh sim`).
    TraceHolders {
        /// The program.
        program: ProgramId,
        /// The holders found and the query's figures.
        reply: oneshot::Sender<HoldersTrace>,
    },
}

/// Why a registry operation failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RegistryError {
    /// The record was refused before it was stored.
    #[error("record refused: {0}")]
    Refused(String),
    /// The local store refused it.
    #[error("record store: {0}")]
    Store(String),
    /// The director's event loop is gone (it is shutting down).
    #[error("registry is shut down")]
    Closed,
}

/// Waits until `done` holds of what a look-up found, or, once [`SETTLE_WITHIN`] has passed,
/// until `enough` does: [`RegistryError::Closed`] when the look-up was dropped before either.
async fn settle<T>(
    found: &mut watch::Receiver<T>,
    done: impl Fn(&T) -> bool,
    enough: impl Fn(&T) -> bool,
) -> Result<(), RegistryError> {
    let whole = tokio::time::timeout(SETTLE_WITHIN, found.wait_for(&done)).await;
    let ended = match whole.map(|ended| ended.is_ok()) {
        Ok(ended) => ended,
        Err(_) => found.wait_for(|f| done(f) || enough(f)).await.is_ok(),
    };
    ended.then_some(()).ok_or(RegistryError::Closed)
}

/// What a holders look-up found so far ([`Command::Holders`]).
#[derive(Clone, Debug, Default)]
pub struct Found {
    /// The directors found holding the program.
    pub holders: HashSet<PeerId>,
    /// The look-up ended: no more will be found.
    pub done: bool,
}

/// What a catalog look-up found so far ([`Command::GetCatalog`]).
#[derive(Clone, Debug, Default)]
pub struct FoundRecords {
    /// The valid records found, each once.
    pub records: Vec<Signed>,
    /// The look-up ended: no more will be found.
    pub done: bool,
}

/// The async face of the registry, used by everything in the node that is not its event loop.
#[derive(Clone, Debug)]
pub struct RegistryHandle {
    tx: mpsc::Sender<Command>,
}

impl RegistryHandle {
    /// A handle and the receiver the director's loop drains into [`Registry::execute`].
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self { tx }, rx)
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, RegistryError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| RegistryError::Closed)?;
        rx.await.map_err(|_| RegistryError::Closed)
    }

    /// Publishes this station's signed record.
    pub async fn put_station(&self, record: Signed) -> Result<(), RegistryError> {
        self.ask(|reply| Command::PutStation { record, reply })
            .await?
    }

    /// The freshest valid record of a station, if it is alive.
    pub async fn get_station(
        &self,
        director: PeerId,
    ) -> Result<Option<(StationRecord, Signed)>, RegistryError> {
        self.ask(|reply| Command::GetStation { director, reply })
            .await
    }

    /// Announces that this station holds segments of `program`.
    pub async fn provide(&self, program: ProgramId) -> Result<(), RegistryError> {
        self.ask(|reply| Command::Provide { program, reply })
            .await?
    }

    /// Stops announcing `program`.
    pub async fn stop_providing(&self, program: ProgramId) -> Result<(), RegistryError> {
        self.tx
            .send(Command::StopProviding { program })
            .await
            .map_err(|_| RegistryError::Closed)
    }

    /// The directors of stations that hold segments of `program`: all the look-up finds.
    pub async fn holders(&self, program: ProgramId) -> Result<HashSet<PeerId>, RegistryError> {
        let mut found = self.look_up_holders(program).await?;
        let done = found.wait_for(|f| f.done).await;
        let done = done.map_err(|_| RegistryError::Closed)?;
        Ok(done.holders.clone())
    }

    /// [`RegistryHandle::holders`], or, once [`SETTLE_WITHIN`] has passed, those found as
    /// soon as `enough` holds of them: a look-up that meets a hung director waits out
    /// [`PEER_ANSWER_TIMEOUT`] for its answer; a caller that has holders to go on with need
    /// not (one that has none by then still waits for the end).
    ///
    /// [`PEER_ANSWER_TIMEOUT`]: crate::config::PEER_ANSWER_TIMEOUT
    pub async fn holders_enough(
        &self,
        program: ProgramId,
        enough: impl Fn(&HashSet<PeerId>) -> bool,
    ) -> Result<HashSet<PeerId>, RegistryError> {
        let mut found = self.look_up_holders(program).await?;
        settle(&mut found, |f| f.done, |f| enough(&f.holders)).await?;
        Ok(found.borrow().holders.clone())
    }

    /// [`RegistryHandle::holders`], or those found within `patience` where the look-up takes
    /// longer (its copies in this director's own store first: they are found at once). A
    /// look-up that meets a hung director waits out [`PEER_ANSWER_TIMEOUT`] for its answer;
    /// a caller that only adds the holders to what it knows need not.
    ///
    /// [`PEER_ANSWER_TIMEOUT`]: crate::config::PEER_ANSWER_TIMEOUT
    pub async fn holders_within(
        &self,
        patience: std::time::Duration,
        program: ProgramId,
    ) -> Result<HashSet<PeerId>, RegistryError> {
        let mut found = self.look_up_holders(program).await?;
        let ended = tokio::time::timeout(patience, found.wait_for(|f| f.done));
        // A look-up dropped before its end: the registry stopped.
        if matches!(ended.await, Ok(Err(_))) {
            return Err(RegistryError::Closed);
        }
        Ok(found.borrow().holders.clone())
    }

    /// Starts a holders look-up; what it finds grows in the receiver.
    async fn look_up_holders(
        &self,
        program: ProgramId,
    ) -> Result<watch::Receiver<Found>, RegistryError> {
        self.look_up(|found| Command::Holders { program, found })
            .await
    }

    /// Starts the look-up `make` names; what it finds grows in the receiver.
    async fn look_up<T: Default>(
        &self,
        make: impl FnOnce(watch::Sender<T>) -> Command,
    ) -> Result<watch::Receiver<T>, RegistryError> {
        let (found, rx) = watch::channel(T::default());
        self.tx
            .send(make(found))
            .await
            .map_err(|_| RegistryError::Closed)?;
        Ok(rx)
    }

    /// Publishes a signed catalog record.
    pub async fn put_catalog(&self, record: Signed) -> Result<(), RegistryError> {
        self.ask(|reply| Command::PutCatalog { record, reply })
            .await?
    }

    /// Every valid catalog record for `program` that the whole look-up finds, or, once
    /// [`SETTLE_WITHIN`] has passed, those found by then if there is one (this director's own
    /// copy is found at once; the reachable directors answer within the time, and one that
    /// never answers is not waited out).
    pub async fn get_catalog(&self, program: ProgramId) -> Result<Vec<Signed>, RegistryError> {
        let mut found = self.look_up_catalog(program).await?;
        settle(&mut found, |f| f.done, |f| !f.records.is_empty()).await?;
        Ok(found.borrow().records.clone())
    }

    /// Starts a catalog look-up; what it finds grows in the receiver.
    pub(crate) async fn look_up_catalog(
        &self,
        program: ProgramId,
    ) -> Result<watch::Receiver<FoundRecords>, RegistryError> {
        self.look_up(|found| Command::GetCatalog { program, found })
            .await
    }

    /// The directors closest to `key`.
    pub async fn closest(&self, key: Vec<u8>) -> Result<Vec<PeerId>, RegistryError> {
        self.ask(|reply| Command::Closest { key, reply }).await
    }

    /// The peers in this director's routing table.
    pub async fn routing_table(&self) -> Result<Vec<PeerId>, RegistryError> {
        self.ask(|reply| Command::RoutingTable { reply }).await
    }

    /// The holders of `program`, with what finding them cost.
    pub async fn trace_holders(&self, program: ProgramId) -> Result<HoldersTrace, RegistryError> {
        self.ask(|reply| Command::TraceHolders { program, reply })
            .await
    }

    /// Starts a Kademlia bootstrap.
    pub async fn bootstrap(&self) -> Result<(), RegistryError> {
        self.tx
            .send(Command::Bootstrap)
            .await
            .map_err(|_| RegistryError::Closed)
    }
}
