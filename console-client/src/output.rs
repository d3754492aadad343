//! Writing the media into a pipe (`play --out -` into a player or another program) from the
//! playing task itself.
//!
//! tokio's `Stdout` writes each buffer on tokio's blocking pool, one at a time: a write waits
//! for the one before it to end, then hops to a pool thread. At a segment boundary the next
//! segment's first piece (flushed on its own, `play`) so waited behind the last write of the
//! segment before, then for a pool thread to take it. [`Piped`] writes into the pipe from the
//! task, without blocking its thread: each write takes what the pipe has room for
//! (`pwritev2` with `RWF_NOWAIT`), and a full pipe is waited on through the runtime's poller,
//! as tokio writes a player's stdin. Measured with `vodmesh bench --only handoff` (the
//! `--speed max` part, ten rounds of each in turn): the gap at a boundary, p99, median 0.83 ms
//! against 1.67 ms, under 1 ms in 7 rounds of 10 against 2. One console's throughput into the
//! pipe fell by about a tenth (446-480 MB/s against 504-632 in five rounds of `--only copy`):
//! the pipe's 64 KiB are now refilled through the poller rather than by a blocked thread. A
//! pipe grown to 1 MiB won the throughput back and more, and lost the boundary: it is left at
//! the system's default (the README's Performance section).

use std::io::IoSlice;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use rustix::io::{Errno, ReadWriteFlags};
use tokio::io::AsyncWrite;
use tokio::io::unix::AsyncFd;

/// A pipe written from the task that writes it, never blocking its thread. The descriptor is a
/// duplicate, left in blocking mode: the pipe may be shared with processes that expect it so
/// (a shell's `{ vodmesh-console play ...; echo; } | player`). On a kernel that cannot write a
/// pipe without blocking (`EOPNOTSUPP`), it is written as tokio writes a file, on its blocking
/// pool, from the first such write on.
pub struct Piped {
    fd: AsyncFd<OwnedFd>,
    fallback: Option<tokio::fs::File>,
}

impl Piped {
    /// `fd` written so, if it is a pipe; `None` for anything else (a terminal, a file).
    pub fn new(fd: impl AsFd) -> std::io::Result<Option<Self>> {
        let stat = rustix::fs::fstat(&fd)?;
        if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Fifo {
            return Ok(None);
        }
        let fd = rustix::io::dup(&fd)?;
        // SAFETY: the `AsyncFd` owns `fd`, an `OwnedFd` whose descriptor never changes, and
        // closes it when dropped, not before.
        #[allow(unsafe_code)]
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::WRITABLE) };
        Ok(Some(Self {
            fd: fd.map_err(std::io::Error::from)?,
            fallback: None,
        }))
    }

    /// Writes on tokio's blocking pool from now on.
    fn fall_back(&mut self) -> std::io::Result<()> {
        let file = std::fs::File::from(rustix::io::dup(self.fd.get_ref())?);
        tracing::debug!("this kernel cannot write a pipe without blocking: written as a file");
        self.fallback = Some(tokio::fs::File::from_std(file));
        Ok(())
    }
}

impl AsyncWrite for Piped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            if let Some(file) = self.fallback.as_mut() {
                return Pin::new(file).poll_write(cx, buf);
            }
            let mut ready = ready!(self.fd.poll_write_ready(cx))?;
            let written = ready.try_io(|fd| {
                let bufs = [IoSlice::new(buf)];
                // Offset -1: the pipe's own order, as `write` does.
                Ok(rustix::io::pwritev2(
                    fd,
                    &bufs,
                    u64::MAX,
                    ReadWriteFlags::NOWAIT,
                )?)
            });
            match written {
                Ok(Err(e)) if e.raw_os_error() == Some(Errno::OPNOTSUPP.raw_os_error()) => {
                    self.fall_back()?;
                }
                Ok(result) => return Poll::Ready(result),
                // Full: the readiness is cleared, and waited on above.
                Err(_full) => {}
            }
        }
    }

    /// What was written is in the pipe already.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.fallback.as_mut() {
            Some(file) => Pin::new(file).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.fallback.as_mut() {
            Some(file) => Pin::new(file).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::*;

    /// Bytes far past what the pipe holds (64 KiB by default) are written without blocking the
    /// runtime's only thread while nobody reads (the wait is the poller's: a timer on the same
    /// thread still fires), and all of them come out in order once the reader reads.
    #[tokio::test]
    async fn a_full_pipe_is_waited_on_without_blocking_and_every_byte_comes_out() {
        let (reader, writer) = std::io::pipe().unwrap();
        let mut piped = Piped::new(&writer).unwrap().expect("a pipe");
        drop(writer);
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let mut writing = tokio::spawn(async move {
            for piece in sent.chunks(100_000) {
                piped.write_all(piece).await?;
                piped.flush().await?;
            }
            std::io::Result::Ok(())
        });
        // Nobody reads: the writer cannot be done, and this thread is not blocked by it.
        let waited = tokio::time::timeout(Duration::from_millis(200), &mut writing).await;
        assert!(waited.is_err(), "3 MB went into an unread pipe: {waited:?}");
        let reading = std::thread::spawn(move || {
            let (mut reader, mut got) = (reader, Vec::new());
            reader.read_to_end(&mut got).map(|_| got)
        });
        writing.await.unwrap().unwrap();
        let got = tokio::task::spawn_blocking(move || reading.join())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(
            got == data,
            "{} of {} bytes, or out of order",
            got.len(),
            data.len()
        );
    }

    /// A reader gone is an error at the next write (a broken pipe), not a write that waits
    /// for ever.
    #[tokio::test]
    async fn a_pipe_whose_reader_is_gone_fails_the_write() {
        let (reader, writer) = std::io::pipe().unwrap();
        let mut piped = Piped::new(&writer).unwrap().expect("a pipe");
        drop((reader, writer));
        let e = piped.write_all(&[1; 1000]).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
    }

    /// Anything but a pipe is left to the caller (a file here).
    #[test]
    fn a_file_is_not_written_so() {
        let file = tempfile::tempfile().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        assert!(Piped::new(&file).unwrap().is_none());
    }
}
