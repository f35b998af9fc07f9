//! The writing half of a WebSocket. Frames are gathered in a buffer and written with one
//! syscall per burst (`flush`), so a subscriber receiving a page of a resume or a busy
//! group pays one write, not one per event. The buffer is empty (unallocated) while idle.
//!
//! Every wait on the socket is bounded by the write timeout: a client that stops reading
//! cannot hold its session forever.

use std::{
    io,
    pin::Pin,
    sync::{atomic::Ordering, Arc},
    task::{ready, Context, Poll},
    time::Duration,
};

use fastwebsockets::{Frame, OpCode, Payload};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::{
    fanout::{ConnectionStats, LaidOut},
    metrics::METRICS,
    protocol::OutFrame,
};

/// Gathered bytes beyond which a burst is written out before more is added.
const FLUSH_AT: usize = 64 * 1024;
/// The longest header of a server frame (unmasked, 64-bit length).
const MAX_HEAD: usize = 10;
/// Room taken at the start of a burst, so that a burst of a few events grows its buffer
/// once or not at all instead of doubling up from a few bytes.
const BURST_ROOM: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("the client stopped reading for longer than the write timeout")]
    Timeout,
    #[error("the connection was closed")]
    Closed,
    #[error("socket: {0}")]
    Socket(#[from] io::Error),
}

/// Frames are laid out here, straight into the gather buffer (the header by
/// `fastwebsockets`): appending a frame is a copy, not a poll of the socket, and only a
/// full buffer or a flush waits.
pub struct FrameSink<W> {
    out: Gather<W>,
    timeout: Duration,
    stats: Arc<ConnectionStats>,
    /// A close frame went out: nothing may follow it.
    closed: bool,
    /// Messages and bytes not yet added to the server's totals: added once per flush, so
    /// that connections on different threads do not contend on the counters per frame.
    unflushed: (u64, u64),
}

impl<W: AsyncWrite + Unpin> FrameSink<W> {
    pub fn new(writer: W, timeout: Duration, stats: Arc<ConnectionStats>) -> Self {
        Self {
            out: Gather::new(writer),
            timeout,
            stats,
            closed: false,
            unflushed: (0, 0),
        }
    }

    /// Writes one server message (counted in the connection's and the server's totals).
    pub async fn send(&mut self, frame: &OutFrame) -> Result<(), SinkError> {
        self.count(1, frame.payload.len() as u64);
        self.write(data_frame(frame)).await
    }

    /// Writes `messages` server messages laid out together beforehand (see `lay_out`).
    pub async fn send_laid_out(
        &mut self,
        laid_out: &LaidOut,
        messages: u64,
    ) -> Result<(), SinkError> {
        self.make_room(laid_out.bytes.len()).await?;
        self.count(messages, laid_out.payload_bytes);
        self.out.buffer.extend_from_slice(&laid_out.bytes);
        Ok(())
    }

    fn count(&mut self, messages: u64, bytes: u64) {
        self.stats
            .messages_sent
            .fetch_add(messages, Ordering::Relaxed);
        self.stats.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
        self.unflushed.0 += messages;
        self.unflushed.1 += bytes;
    }

    /// Writes a frame of any kind (pong and close replies, pings).
    pub async fn write(&mut self, mut frame: Frame<'_>) -> Result<(), SinkError> {
        self.make_room(MAX_HEAD + frame.payload.len()).await?;
        self.closed = frame.opcode == OpCode::Close;
        append_frame(&mut self.out.buffer, &mut frame);
        Ok(())
    }

    /// Readies the buffer for `len` more bytes: nothing after a close frame; a full buffer
    /// is written out first; an empty one takes room for a burst.
    async fn make_room(&mut self, len: usize) -> Result<(), SinkError> {
        if self.closed {
            return Err(SinkError::Closed);
        }
        if self.out.buffer.len() >= FLUSH_AT {
            Self::within_timeout(self.timeout, self.out.drain()).await?;
        }
        if self.out.buffer.capacity() == 0 {
            self.out.buffer.reserve(BURST_ROOM.max(len));
        }
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<(), SinkError> {
        let (messages, bytes) = std::mem::take(&mut self.unflushed);
        if messages > 0 {
            METRICS.messages_sent.inc_by(messages);
            METRICS.bytes_sent.inc_by(bytes);
        }
        if self.out.buffer.is_empty() {
            return Ok(());
        }
        Self::within_timeout(self.timeout, self.out.flush()).await
    }

    /// Sends a close frame and flushes; errors are moot at that point.
    pub async fn close(&mut self, code: u16, reason: &str) {
        let _ = self.write(Frame::close(code, reason.as_bytes())).await;
        let _ = self.flush().await;
    }

    async fn within_timeout(
        timeout: Duration,
        step: impl std::future::Future<Output = io::Result<()>>,
    ) -> Result<(), SinkError> {
        match tokio::time::timeout(timeout, step).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(SinkError::Timeout),
        }
    }
}

/// Lays out server messages as one block of bytes, as `send` would write them one by one;
/// `payload_bytes` is what `send` would have counted.
pub fn lay_out<'f>(frames: impl Iterator<Item = &'f OutFrame>) -> LaidOut {
    let mut bytes = Vec::new();
    let mut payload_bytes = 0;
    for frame in frames {
        payload_bytes += frame.payload.len() as u64;
        append_frame(&mut bytes, &mut data_frame(frame));
    }
    LaidOut {
        bytes: bytes.into(),
        payload_bytes,
    }
}

fn data_frame(frame: &OutFrame) -> Frame<'_> {
    let opcode = if frame.binary {
        OpCode::Binary
    } else {
        OpCode::Text
    };
    Frame::new(true, opcode, None, Payload::Borrowed(&frame.payload))
}

/// The frame's header (by `fastwebsockets`) and payload, at the end of `buffer`.
fn append_frame(buffer: &mut Vec<u8>, frame: &mut Frame<'_>) {
    let mut head = [0u8; MAX_HEAD];
    let head_len = frame.fmt_head(&mut head);
    buffer.extend_from_slice(&head[..head_len]);
    buffer.extend_from_slice(&frame.payload);
}

/// The bytes of frames waiting for one write to the socket.
struct Gather<W> {
    inner: W,
    buffer: Vec<u8>,
    written: usize,
}

impl<W: AsyncWrite + Unpin> Gather<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            buffer: Vec::new(),
            written: 0,
        }
    }

    /// Writes the gathered bytes out.
    async fn drain(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_drain(cx)).await
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.drain().await?;
        self.inner.flush().await
    }

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
