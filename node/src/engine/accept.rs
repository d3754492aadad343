//! Accepting the inbound streams of one protocol, each handled in a task of its own.
//!
//! The stream behaviour (`vodmesh_proto::net::streams`) queues a protocol's inbound streams up
//! to a bound and answers openers busy past it, so a loop per protocol that does nothing but
//! hand streams to tasks keeps the queue short. Its tasks are owned by a [`JoinSet`]
//! that the loop reaps as they finish and, when the engine stops, aborts and waits for: no
//! stream, copy or ingest outlives its engine.

use std::future::Future;

use futures::{Stream, StreamExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Hands every stream of `incoming` (a protocol's `(peer, stream)` pairs) to `handle`, in a
/// task each, until `stop` is cancelled (or the behaviour goes away); then ends the tasks still
/// running and returns.
pub(crate) async fn each<I, P, S, F, Fut>(mut incoming: I, stop: CancellationToken, mut handle: F)
where
    I: Stream<Item = (P, S)> + Unpin,
    F: FnMut(P, S) -> Fut,
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

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;

    #[tokio::test]
    async fn a_stopped_loop_ends_the_tasks_it_started_before_it_returns() {
        let (mut streams, incoming) = futures::channel::mpsc::channel::<(u32, ())>(4);
        // Every task holds a sender; the receiver sees the channel close once all are gone.
        let (alive, mut gone) = mpsc::channel::<()>(1);
        let (started, mut began) = mpsc::channel::<u32>(4);
        let stop = CancellationToken::new();
        let run = tokio::spawn(each(incoming, stop.clone(), move |peer, ()| {
            let (alive, started) = (alive.clone(), started.clone());
            async move {
                let _alive = alive;
                let _ = started.send(peer).await;
                // A stream that never ends on its own (a stalled console).
                std::future::pending::<()>().await;
            }
        }));
        for peer in [1, 2] {
            streams
                .try_send((peer, ()))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let mut seen = vec![began.recv().await, began.recv().await];
        seen.sort();
        assert_eq!(seen, vec![Some(1), Some(2)]);
        stop.cancel();
        run.await.unwrap_or_else(|e| panic!("{e}"));
        // Both tasks, which would never have ended on their own, are gone when `each` returns.
        assert_eq!(
            gone.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        );
    }
}
