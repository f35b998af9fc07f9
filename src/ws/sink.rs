//! The writing half of a WebSocket. Frames are gathered in a buffer and written with one
//! syscall per burst (`flush`), so a subscriber receiving a page of a resume or a busy
//! group pays one write, not one per event. The buffer is empty (unallocated) while idle.
//!
//! Every wait on the socket is bounded by the write timeout: a client that stops reading
//! cannot hold its session forever.

use std::{
    io,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use std::sync::{atomic::Ordering, Arc};

use fastwebsockets::{Frame, Payload, WebSocketError, WebSocketWrite};
use tokio::io::AsyncWrite;

use crate::{fanout::ConnectionStats, metrics::METRICS, protocol::OutFrame};

/// Gathered bytes beyond which a burst is written out before more is added.
const FLUSH_AT: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("the client stopped reading for longer than the write timeout")]
    Timeout,
    #[error("socket: {0}")]
    Socket(#[from] WebSocketError),
}

pub struct FrameSink<W> {
    ws: WebSocketWrite<Gather<W>>,
    timeout: Duration,
    stats: Arc<ConnectionStats>,
}

impl<W: AsyncWrite + Unpin> FrameSink<W> {
    pub fn new(
        writer: WebSocketWrite<Gather<W>>,
        timeout: Duration,
        stats: Arc<ConnectionStats>,
    ) -> Self {
        Self {
            ws: writer,
            timeout,
            stats,
        }
    }

    /// Writes one server message (counted in the connection's and the server's totals).
    pub async fn send(&mut self, frame: &OutFrame) -> Result<(), SinkError> {
        let bytes = frame.payload.len() as u64;
        self.stats.messages_sent.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
        METRICS.messages_sent.inc();
        METRICS.bytes_sent.inc_by(bytes);
        let payload = Payload::Borrowed(&frame.payload);
        let frame = if frame.binary {
            Frame::binary(payload)
        } else {
            Frame::text(payload)
        };
        self.write(frame).await
    }

    /// Writes a frame of any kind (pong and close replies, pings).
    pub async fn write(&mut self, frame: Frame<'_>) -> Result<(), SinkError> {
        // Writing into the gather buffer only waits when the buffer is full.
        match tokio::time::timeout(self.timeout, self.ws.write_frame(frame)).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(SinkError::Timeout),
        }
    }

    pub async fn flush(&mut self) -> Result<(), SinkError> {
        match tokio::time::timeout(self.timeout, self.ws.flush()).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(SinkError::Timeout),
        }
    }

    /// Sends a close frame and flushes; errors are moot at that point.
    pub async fn close(&mut self, code: u16, reason: &str) {
        let _ = self.write(Frame::close(code, reason.as_bytes())).await;
        let _ = self.flush().await;
    }
}

/// An `AsyncWrite` that gathers writes in memory until `poll_flush`.
pub struct Gather<W> {
    inner: W,
    buffer: Vec<u8>,
    written: usize,
}

impl<W> Gather<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            buffer: Vec::new(),
            written: 0,
        }
    }
}

impl<W: AsyncWrite + Unpin> Gather<W> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buffer.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buffer[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        // Given back once written: an idle connection holds no buffer, whatever its last
        // burst was. A busy one pays an allocation per burst, next to a syscall per burst.
        self.buffer = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Gather<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.buffer.len() >= FLUSH_AT {
            ready!(self.poll_drain(cx))?;
        }
        self.buffer.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        parts: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.buffer.len() >= FLUSH_AT {
            ready!(self.poll_drain(cx))?;
        }
        let mut total = 0;
        for part in parts {
            self.buffer.extend_from_slice(part);
            total += part.len();
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
