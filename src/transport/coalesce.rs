//! Write coalescing for a connection: what the protocol writes between two
//! trips through the scheduler goes out in one system call.
//!
//! hyper's HTTP/2 connection task writes and flushes as soon as it is woken,
//! and the first response of a group commit's replies wakes it (tokio runs a
//! task woken by the running one next). So each gRPC response went out in a
//! `writev` of its own, about 150 bytes: under Dispatch load about a third
//! of the CPU of the bench's process (server and load generator) was spent
//! in system calls, most of it the loopback path behind such sends
//! (docs/PERFORMANCE.md). Here a flush with bytes buffered first yields
//! once: the tasks already queued (the other replies of the batch) run and
//! add their frames, and the next flush sends them all. grpc-go's transport
//! does the same (it flushes when its queue of frames is empty), as does
//! Netty's FlushConsolidationHandler.
//!
//! The server holds a flush back only while more than one request is in
//! flight on the connection: a lone call has nothing to wait for.
//!
//! Reads pass straight through. The buffer is bounded: a write that would
//! overflow it first sends what is buffered, and a large write goes straight
//! to the socket.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes held back for one flush; HTTP/2's default frame is 16 KiB.
const MAX_BUFFERED: usize = 64 * 1024;

pub struct Coalesce<T> {
    io: T,
    buf: Vec<u8>,
    /// How much of `buf` has been written to `io` already.
    sent: usize,
    /// The last flush yielded instead of writing; the next one writes.
    yielded: bool,
    /// Whether other writes may be on their way (the server: more than one
    /// request in flight on the connection). A lone call's flush goes out at
    /// once: waiting would only add a trip through the scheduler to it.
    others_pending: Box<dyn Fn() -> bool + Send + Sync>,
}

impl<T> Coalesce<T> {
    /// Coalesces every flush.
    pub fn new(io: T) -> Self {
        Self::when(io, || true)
    }

    /// Coalesces a flush only when `others_pending` says so.
    pub fn when(io: T, others_pending: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Self { io, buf: Vec::new(), sent: 0, yielded: false, others_pending: Box::new(others_pending) }
    }

    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Writes out everything buffered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.buf.clear();
        self.sent = 0;
        // Keep the buffer for the next round, unless growing it overshot
        // the bound (a Vec doubles): an idle connection holds at most that.
        if self.buf.capacity() > MAX_BUFFERED {
            self.buf = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Makes room for `len` more bytes: Ready(true) when they are to be
    /// buffered, Ready(false) when they should go straight to the socket.
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<bool>> {
        if self.buf.len() + len <= MAX_BUFFERED {
            return Poll::Ready(Ok(true));
        }
        ready!(self.poll_drain(cx))?;
        Poll::Ready(Ok(len < MAX_BUFFERED))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if !ready!(this.poll_room(cx, data.len()))? {
            return Pin::new(&mut this.io).poll_write(cx, data);
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let len = slices.iter().map(|s| s.len()).sum();
        if !ready!(this.poll_room(cx, len))? {
            return Pin::new(&mut this.io).poll_write_vectored(cx, slices);
        }
        for s in slices {
            this.buf.extend_from_slice(s);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.buf.is_empty() {
            this.yielded = false;
            return Pin::new(&mut this.io).poll_flush(cx);
        }
        if !this.yielded && (this.others_pending)() {
            // Deferred, not woken: tokio wakes a deferred task when its
            // worker has nothing else to run (or at its next look at I/O), so
            // the frames of every task queued before go out with these. A
            // plain self-wake went to the back of the queue but also woke an
            // idle worker to steal it: 75 µs more for a lone call.
            this.yielded = true;
            let _ = std::pin::pin!(tokio::task::yield_now()).poll(cx);
            return Poll::Pending;
        }
        ready!(this.poll_drain(cx))?;
        this.yielded = false;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// Counts the writes that reach the socket.
    struct Counting {
        io: TcpStream,
        writes: usize,
    }

    impl AsyncWrite for Counting {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
            self.writes += 1;
            Pin::new(&mut self.io).poll_write(cx, data)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    async fn pair() -> (Coalesce<Counting>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Coalesce::new(Counting { io: server, writes: 0 }), client)
    }

    #[tokio::test]
    async fn writes_between_flushes_reach_the_socket_in_one_call_and_in_order() {
        let (mut w, mut peer) = pair().await;
        for part in [&b"one "[..], b"two ", b"three"] {
            w.write_all(part).await.unwrap();
        }
        assert_eq!(w.get_ref().writes, 0, "nothing is written before a flush");
        w.flush().await.unwrap();
        assert_eq!(w.get_ref().writes, 1);
        let mut got = vec![0u8; 13];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"one two three");
    }

    #[tokio::test]
    async fn a_flush_waits_one_round_only_when_others_may_join() {
        let (busy, mut peer) = pair().await;
        let (idle, _peer) = pair().await;
        let mut idle = Coalesce::when(idle.io, || false);
        for (w, waits) in [(&mut { busy }, true), (&mut idle, false)] {
            w.write_all(b"reply").await.unwrap();
            let first = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *w).poll_flush(cx))).await;
            assert_eq!(first.is_pending(), waits);
            w.flush().await.unwrap();
            assert_eq!(w.get_ref().writes, 1);
        }
        let mut got = [0u8; 5];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"reply");
    }

    #[tokio::test]
    async fn a_write_past_the_bound_sends_the_buffer_first_and_large_writes_pass_through() {
        let (mut w, mut peer) = pair().await;
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            peer.read_to_end(&mut all).await.unwrap();
            all
        });
        let small = vec![1u8; MAX_BUFFERED - 10];
        let large = vec![2u8; MAX_BUFFERED * 2];
        w.write_all(&small).await.unwrap();
        assert_eq!(w.get_ref().writes, 0);
        w.write_all(&large).await.unwrap();
        assert!(w.get_ref().writes >= 2, "the buffer went out, then the large write");
        assert!(w.buf.is_empty(), "the large write was not copied");
        w.write_all(b"tail").await.unwrap();
        w.shutdown().await.unwrap();
        drop(w);
        let all = reader.await.unwrap();
        let mut want = small;
        want.extend_from_slice(&large);
        want.extend_from_slice(b"tail");
        assert_eq!(all.len(), want.len());
        assert!(all == want, "bytes arrive in the order written");
    }
}
