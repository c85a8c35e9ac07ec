//! Faults below the protocol: a stream wrapper that can drip the server's
//! writes, stop reading, or cut the connection without a reply.
//!
//! smtp-server's hooks decide what to answer, not how the bytes travel, so
//! these three actions live here: the session hook that fires a rule tells
//! the connection's [`WireControl`], and [`FaultStream`] acts on the bytes.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

#[derive(Debug, Default)]
struct WireState {
    /// Write the current batch one octet per interval.
    drip: Option<Duration>,
    /// Cut the connection once the current batch is flushed.
    close_after_flush: bool,
    /// Reads end, writes vanish.
    severed: bool,
    /// Reads never complete (until severed).
    stop_reading: bool,
    read_waker: Option<Waker>,
}

/// What the fault engine tells one connection's stream.
#[derive(Debug, Default)]
pub(crate) struct WireControl {
    state: Mutex<WireState>,
}

impl WireControl {
    fn state(&self) -> MutexGuard<'_, WireState> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Sends the next batch of replies one octet per `interval`.
    pub(crate) fn drip(&self, interval: Duration) {
        self.state().drip = Some(interval);
    }

    /// Cuts the connection once the reply now queued has been written.
    pub(crate) fn close_after_flush(&self) {
        self.state().close_after_flush = true;
    }

    /// Cuts the connection now: nothing more is written, reads end.
    pub(crate) fn sever(&self) {
        let mut state = self.state();
        state.severed = true;
        if let Some(waker) = state.read_waker.take() {
            waker.wake();
        }
    }

    /// Stops reading from the client.
    pub(crate) fn stop_reading(&self) {
        self.state().stop_reading = true;
    }

    fn severed(&self) -> bool {
        self.state().severed
    }
}

/// A stream whose behaviour a [`WireControl`] changes.
#[derive(Debug)]
pub(crate) struct FaultStream<S> {
    inner: S,
    control: Arc<WireControl>,
    /// The pause before the next dripped octet.
    pause: Option<Pin<Box<Sleep>>>,
    /// The pause before the next dripped octet is over.
    paused: bool,
}

impl<S> FaultStream<S> {
    pub(crate) fn new(inner: S, control: Arc<WireControl>) -> Self {
        Self {
            inner,
            control,
            pause: None,
            paused: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FaultStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        {
            let mut state = this.control.state();
            if state.severed {
                return Poll::Ready(Ok(()));
            }
            if state.stop_reading {
                state.read_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FaultStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let drip = {
            let state = this.control.state();
            if state.severed {
                // The connection is gone as far as the client can tell.
                return Poll::Ready(Ok(buf.len()));
            }
            state.drip
        };
        let Some(interval) = drip else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if !this.paused {
            let pause = this
                .pause
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(interval)));
            if pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.pause = None;
            this.paused = true;
        }
        match Pin::new(&mut this.inner).poll_write(cx, &buf[..1]) {
            Poll::Ready(Ok(written)) => {
                this.paused = false;
                // Each octet leaves at once, not when the batch is done.
                let _ = Pin::new(&mut this.inner).poll_flush(cx);
                Poll::Ready(Ok(written))
            }
            other => other,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.control.severed() {
            return Poll::Ready(Ok(()));
        }
        let flushed = Pin::new(&mut this.inner).poll_flush(cx);
        if flushed.is_ready() {
            let close = {
                let mut state = this.control.state();
                // A drip covers one batch of replies.
                state.drip = None;
                std::mem::take(&mut state.close_after_flush)
            };
            if close {
                this.control.sever();
            }
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_drip_writes_one_octet_per_interval_for_one_batch() {
        let (near, mut far) = tokio::io::duplex(64);
        let control = Arc::new(WireControl::default());
        let mut stream = FaultStream::new(near, Arc::clone(&control));
        control.drip(Duration::from_millis(100));
        let start = tokio::time::Instant::now();
        stream.write_all(b"250 OK\r\n").await.unwrap();
        stream.flush().await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(800));
        // The next batch goes at full speed.
        stream.write_all(b"221 Bye\r\n").await.unwrap();
        stream.flush().await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(800));
        let mut got = vec![0; 17];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"250 OK\r\n221 Bye\r\n");
    }

    #[tokio::test]
    async fn severing_ends_reads_and_swallows_writes() {
        let (near, mut far) = tokio::io::duplex(64);
        let control = Arc::new(WireControl::default());
        let mut stream = FaultStream::new(near, Arc::clone(&control));
        far.write_all(b"hello").await.unwrap();
        control.sever();
        let mut buf = [0; 8];
        assert_eq!(stream.read(&mut buf).await.unwrap(), 0);
        stream.write_all(b"lost").await.unwrap();
        drop(stream);
        let mut rest = Vec::new();
        far.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn close_after_flush_writes_the_batch_then_cuts() {
        let (near, mut far) = tokio::io::duplex(64);
        let control = Arc::new(WireControl::default());
        let mut stream = FaultStream::new(near, Arc::clone(&control));
        control.close_after_flush();
        stream.write_all(b"421 bye\r\n").await.unwrap();
        stream.flush().await.unwrap();
        far.write_all(b"MAIL\r\n").await.unwrap();
        let mut buf = [0; 8];
        assert_eq!(stream.read(&mut buf).await.unwrap(), 0);
        let mut got = [0; 9];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"421 bye\r\n");
    }

    #[tokio::test(start_paused = true)]
    async fn stop_reading_holds_reads_until_severed() {
        let (near, mut far) = tokio::io::duplex(64);
        let control = Arc::new(WireControl::default());
        let mut stream = FaultStream::new(near, Arc::clone(&control));
        control.stop_reading();
        far.write_all(b"QUIT\r\n").await.unwrap();
        let mut buf = [0; 8];
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await;
        assert!(read.is_err(), "the read completed: {read:?}");
        let sever = Arc::clone(&control);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            sever.sever();
        });
        assert_eq!(stream.read(&mut buf).await.unwrap(), 0);
    }
}
