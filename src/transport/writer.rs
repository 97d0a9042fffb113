//! The one way bytes reach a client's socket: every transport writes
//! through [`write_all`], and so every transport has a write-stall
//! deadline.
//!
//! A client that stops reading fills its socket buffers, then the writes
//! to it stop making progress. Without a deadline the connection's task
//! would wait in that write forever (its pings and pong timeouts never
//! fire, since they wait for the write too), holding the connection and
//! everything it subscribed to. Here a write that makes no progress for
//! `limits.write_timeout` fails with [`WriteError::Stalled`]: the caller
//! closes the connection as a slow consumer, and the client resumes from
//! history when it reads again.
//!
//! The usual write costs one system call and no timer: the deadline is
//! armed only once the socket pushes back, and re-armed on progress.

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::AsyncWrite;

/// Why a write did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The client went away (reset, closed, any I/O error).
    #[error("the client went away")]
    Gone,
    /// The client stopped reading: no progress for the stall deadline.
    #[error("the client stopped reading")]
    Stalled,
}

/// The stall deadline of one writer: armed when the socket pushes back,
/// disarmed by progress. Used by [`write_all`] and [`flush`], and by the
/// server around the sockets hyper writes to, so that every path to a
/// client has the same deadline.
pub struct Deadline {
    stall: Duration,
    // Boxed, and only when needed: most writes never wait.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Deadline {
    /// A deadline of `stall` without progress.
    pub fn new(stall: Duration) -> Deadline {
        Deadline { stall, timer: None }
    }

    /// Passes on the outcome of a write attempt: progress disarms the
    /// deadline, pushing back arms it, and once it passes the attempt
    /// fails with [`io::ErrorKind::TimedOut`].
    pub fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        attempt: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match attempt {
            Poll::Ready(r) => {
                self.timer = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let stall = self.stall;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::ErrorKind::TimedOut.into())),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

fn classify(e: io::Error) -> WriteError {
    if e.kind() == io::ErrorKind::TimedOut {
        WriteError::Stalled
    } else {
        WriteError::Gone
    }
}

/// Writes all of `parts` to `io`, failing when the client is gone or when
/// no byte could be written for `stall`.
pub async fn write_all<W>(
    io: &mut W,
    mut parts: &mut [IoSlice<'_>],
    stall: Duration,
) -> Result<(), WriteError>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut deadline = Deadline::new(stall);
    poll_fn(|cx| {
        while !parts.is_empty() {
            let attempt = Pin::new(&mut *io).poll_write_vectored(cx, parts);
            match std::task::ready!(deadline.check(cx, attempt)) {
                Ok(0) => return Poll::Ready(Err(WriteError::Gone)),
                Ok(n) => IoSlice::advance_slices(&mut parts, n),
                Err(e) => return Poll::Ready(Err(classify(e))),
            }
        }
        Poll::Ready(Ok(()))
    })
    .await
}

/// Flushes `io` under the same deadline (for writers that buffer, such as
/// TLS sessions; a no-op on TCP).
pub async fn flush<W>(io: &mut W, stall: Duration) -> Result<(), WriteError>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut deadline = Deadline::new(stall);
    poll_fn(|cx| {
        let attempt = Pin::new(&mut *io).poll_flush(cx);
        deadline.check(cx, attempt).map_err(classify)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_reader_that_stops_makes_the_write_fail_after_the_deadline() {
        let (client, mut server) = tokio::io::duplex(1024);
        let data = vec![7u8; 64 * 1024];
        let started = tokio::time::Instant::now();
        let written = write_all(
            &mut server,
            &mut [IoSlice::new(&data)],
            Duration::from_millis(200),
        )
        .await;
        assert_eq!(written, Err(WriteError::Stalled));
        assert!(started.elapsed() >= Duration::from_millis(200));
        drop(client);
        // A reader that keeps reading, however slowly, is not stalled.
        let (mut client2, mut server2) = tokio::io::duplex(1024);
        let slow = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let mut total = 0;
            while total < 16 * 1024 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                total += client2.read(&mut buf).await.unwrap();
            }
            total
        });
        let small = vec![1u8; 16 * 1024];
        let written = write_all(
            &mut server2,
            &mut [IoSlice::new(&small)],
            Duration::from_millis(100),
        )
        .await;
        assert_eq!(written, Ok(()));
        assert_eq!(slow.await.unwrap(), 16 * 1024);
    }

    #[tokio::test]
    async fn a_closed_reader_is_gone() {
        let (client, mut server) = tokio::io::duplex(16);
        drop(client);
        let written = write_all(
            &mut server,
            &mut [IoSlice::new(b"x")],
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(written, Err(WriteError::Gone));
    }
}
