//! Work a request family runs off the director's loop (registry look-ups, questions to other
//! directors, waits for an engine's copy): owned by the family in a [`Tasks`], whose results
//! the loop takes in its `select!` and hands back to the family; aborted and drained when the
//! director stops. Nothing is spawned detached.

use std::future::Future;

use tokio::task::JoinSet;

/// The tasks of one family, each ending in a `T` for the loop.
#[derive(Debug)]
pub(super) struct Tasks<T> {
    set: JoinSet<T>,
}

impl<T> Default for Tasks<T> {
    fn default() -> Self {
        Self {
            set: JoinSet::new(),
        }
    }
}

impl<T: Send + 'static> Tasks<T> {
    /// Runs `work` until it ends or the director stops.
    pub(super) fn spawn(&mut self, work: impl Future<Output = T> + Send + 'static) {
        self.set.spawn(work);
    }

    /// The next result; waits forever while there is no task (a `select!` arm that never
    /// fires). A task that panicked is logged and skipped.
    pub(super) async fn next(&mut self) -> T {
        loop {
            match self.set.join_next().await {
                Some(Ok(done)) => return done,
                Some(Err(e)) if e.is_panic() => {
                    tracing::error!(error = %e, "a director task panicked");
                }
                Some(Err(_)) => {}
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// Tasks still running.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.set.len()
    }

    /// Aborts every task and waits until all have ended.
    pub(super) async fn shutdown(&mut self) {
        self.set.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn results_come_back_in_the_order_tasks_end_and_shutdown_drains() {
        let mut tasks = Tasks::default();
        tasks.spawn(async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            2
        });
        tasks.spawn(async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            1
        });
        tasks.spawn(async { panic!("a task that fails") });
        assert_eq!(tasks.next().await, 1);
        assert_eq!(tasks.next().await, 2);
        // No task left: `next` waits (a select! arm that never fires).
        assert!(
            tokio::time::timeout(Duration::from_secs(60), tasks.next())
                .await
                .is_err()
        );
        tasks.spawn(std::future::pending());
        assert_eq!(tasks.len(), 1);
        tasks.shutdown().await;
        assert_eq!(tasks.len(), 0);
    }
}
