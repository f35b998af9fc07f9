//! The end of a connection that the server closes. After its close frame, the server shuts
//! its side down and reads (and drops) what the client still sends, for a moment, before it
//! lets the socket go: closing a socket with unread data makes the kernel answer with a
//! reset, and a client that was still sending — a flood, a message over the size limit —
//! would then lose the close frame that tells it why.
//!
//! `Shared` lets the reader task, the writer and this final step use one stream in turn.

use std::{
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Longest a closed connection is kept to drain what its client still sends.
const LINGER: Duration = Duration::from_secs(2);
/// Most bytes drained: enough for a message well over any sensible size limit.
const DRAIN_BUDGET: usize = 16 << 20;

/// A stream used by several owners, one poll at a time. The lock is only held inside a
/// poll, never across an await, so the reader and the writer never wait for each other.
pub struct Shared<S>(Arc<Mutex<S>>);

impl<S> Shared<S> {
    pub fn new(stream: S) -> Self {
        Self(Arc::new(Mutex::new(stream)))
    }

    fn with<T>(&self, f: impl FnOnce(Pin<&mut S>) -> T) -> T
    where
        S: Unpin,
    {
        let mut stream = self.0.lock().expect("connection stream");
        f(Pin::new(&mut *stream))
    }
}

impl<S> Clone for Shared<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Shared<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.with(|s| s.poll_read(cx, buf))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Shared<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.with(|s| s.poll_write(cx, data))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        parts: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.with(|s| s.poll_write_vectored(cx, parts))
    }

    fn is_write_vectored(&self) -> bool {
        self.0
            .lock()
            .expect("connection stream")
            .is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|s| s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|s| s.poll_shutdown(cx))
    }
}

/// Shuts the server's side down (the close frame was sent and flushed before), then drains
/// the client's side until it ends, `LINGER` passes or `DRAIN_BUDGET` bytes were read.
pub async fn linger<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    let deadline = tokio::time::Instant::now() + LINGER;
    if tokio::time::timeout_at(deadline, stream.shutdown())
        .await
        .is_err()
    {
        return;
    }
    let mut buffer = vec![0u8; 16 * 1024];
    let mut drained = 0;
    while drained < DRAIN_BUDGET {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lingering_close_drains_what_the_peer_still_sends() {
        let (server, mut client) = tokio::io::duplex(1024);
        let mut shared = Shared::new(server);
        let writer = tokio::spawn(async move {
            // More than the pipe holds: this only completes if the other side reads.
            client.write_all(&vec![7u8; 64 * 1024]).await.unwrap();
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            drop(client);
            rest.len()
        });
        linger(&mut shared).await;
        assert_eq!(writer.await.unwrap(), 0, "the server's side was shut down");
    }
}
