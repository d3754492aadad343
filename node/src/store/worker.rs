//! A dedicated OS thread with a bounded job queue: two per disk (its reads and writes, and the
//! seals that make its segments durable), one for the index.
//!
//! Each disk having its own thread is what makes disks independent I/O channels: a blocking
//! `pread` on one disk occupies only that disk's thread, so a write to another disk never
//! queues behind it (nor behind tokio's shared blocking pool).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

type Job = Box<dyn FnOnce() + Send + 'static>;

enum Msg {
    Run(Job),
    Stop,
}

/// The queue went away: the store was shut down.
#[derive(Debug)]
pub(crate) struct Closed;

pub(crate) struct Worker {
    tx: mpsc::Sender<Msg>,
    /// Jobs queued or running: the disk's current I/O load.
    queued: Arc<AtomicUsize>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Worker {
    /// Starts a thread named `name` that runs jobs in order, at most `depth` waiting.
    pub(crate) fn spawn(name: String, depth: usize) -> std::io::Result<Self> {
        let (tx, mut rx) = mpsc::channel::<Msg>(depth.max(1));
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            while let Some(Msg::Run(job)) = rx.blocking_recv() {
                job();
            }
        })?;
        Ok(Self {
            tx,
            queued: Arc::new(AtomicUsize::new(0)),
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    /// Runs `f` on the worker thread and returns its result; waits for queue space first
    /// (backpressure), so callers never pile up unbounded work.
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T, Closed>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let queued = self.queued.clone();
        queued.fetch_add(1, Ordering::Relaxed);
        let job: Job = Box::new(move || {
            let out = f();
            queued.fetch_sub(1, Ordering::Relaxed);
            // The caller may have gone (a dropped future); the work is done regardless.
            let _ = reply.send(out);
        });
        if self.tx.send(Msg::Run(job)).await.is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(Closed);
        }
        rx.await.map_err(|_| Closed)
    }

    /// Queues `f` without waiting for it or for queue space; for clean-up from `Drop`.
    /// Returns false if the queue was full or closed (the job is then not run).
    pub(crate) fn try_spawn(&self, f: impl FnOnce() + Send + 'static) -> bool {
        self.tx.try_send(Msg::Run(Box::new(f))).is_ok()
    }

    /// Jobs queued or running.
    pub(crate) fn load(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Lets queued jobs finish, then stops the thread and waits for it.
    pub(crate) async fn stop(&self) {
        // Stop is queued behind earlier jobs, so everything already accepted still runs.
        let _ = self.tx.send(Msg::Stop).await;
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}
