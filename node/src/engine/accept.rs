//! Accepting the inbound streams of one protocol, each handled in a task of its own.
//!
//! The stream behaviour queues at most one pending inbound stream per protocol, so accepting
//! must be prompt: a loop per protocol does nothing else. Its tasks are owned by a [`JoinSet`]
//! that the loop reaps as they finish and, when the engine stops, aborts and waits for: no
//! stream, copy or ingest outlives its engine.

use std::future::Future;

use futures::StreamExt;
use libp2p::{PeerId, Stream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Hands every stream of `incoming` to `handle`, in a task each, until `stop` is cancelled
/// (or the behaviour goes away); then ends the tasks still running and returns.
pub(crate) async fn each<F, Fut>(
    mut incoming: libp2p_stream::IncomingStreams,
    stop: CancellationToken,
    mut handle: F,
) where
    F: FnMut(PeerId, Stream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            // The stop first: a stopping engine takes no new stream.
            biased;
            () = stop.cancelled() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            next = incoming.next() => match next {
                Some((peer, stream)) => {
                    tasks.spawn(handle(peer, stream));
                }
                None => break,
            },
        }
    }
    tasks.shutdown().await;
}
