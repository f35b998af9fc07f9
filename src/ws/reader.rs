//! The reading half of a WebSocket, in a task of its own: reading must never stop (control
//! frames are only answered from inside `read_frame`) and a read cannot be cancelled midway.
//! Whole messages, protocol replies and the end of the stream are handed to the session.
//!
//! Fragmented messages are reassembled here, with the size limit applied to the whole
//! message, not only to each fragment.
//!
//! Messages waiting for the session hold a share of a byte budget of a few times the size
//! limit: a client that sends large messages faster than they are handled is slowed down
//! by TCP, and what a connection holds in memory stays a small multiple of the limit
//! however many messages are queued.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use fastwebsockets::{Frame, OpCode, WebSocketError, WebSocketRead};
use tokio::{
    io::AsyncRead,
    sync::{mpsc, OwnedSemaphorePermit, Semaphore},
};

use crate::event::now_ms;

/// What the reader hands the session. Kept to two words (its variants box what they carry):
/// the session's channel allocates room for 32 of them per connection up front.
#[derive(Debug)]
pub enum Inbound {
    /// A complete data message.
    Message(Box<Message>),
    /// A frame the protocol obliges us to send back (pong, close echo).
    Reply(Box<Reply>),
    /// The client sent a close frame (the echo was sent as a `Reply` before).
    Closed,
    /// The peer broke the protocol or the connection; nothing more will come.
    Failed(ReadFailure),
}

/// A data message, and its share of the byte budget (given back when it is dropped).
#[derive(Debug)]
pub struct Message {
    pub payload: Vec<u8>,
    pub binary: bool,
    _budget: OwnedSemaphorePermit,
}

#[derive(Debug)]
pub struct Reply {
    pub opcode: OpCode,
    pub payload: Vec<u8>,
}

#[derive(Debug)]
pub enum ReadFailure {
    TooLarge,
    InvalidUtf8,
    // Boxed to keep `ReadFailure` one word, and so `Inbound` two.
    #[allow(clippy::box_collection)]
    Protocol(Box<String>),
    Gone,
}

pub fn spawn<S>(
    mut read: WebSocketRead<S>,
    max_message_bytes: usize,
    inbound: mpsc::Sender<Inbound>,
    last_seen_ms: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()>
where
    S: AsyncRead + Unpin + Send + 'static,
{
    // A frame at the limit is accepted; fastwebsockets refuses `len >= max`.
    read.set_max_message_size(max_message_bytes + 1);
    let budget = Arc::new(Semaphore::new(budget_bytes(max_message_bytes) as usize));
    tokio::spawn(async move {
        let outcome = read_messages(
            &mut read,
            max_message_bytes,
            &inbound,
            &last_seen_ms,
            &budget,
        )
        .await;
        let _ = Box::pin(inbound.send(outcome)).await;
    })
}

async fn read_messages<S: AsyncRead + Unpin>(
    read: &mut WebSocketRead<S>,
    max_message_bytes: usize,
    inbound: &mpsc::Sender<Inbound>,
    last_seen_ms: &AtomicU64,
    budget: &Arc<Semaphore>,
) -> Inbound {
    let mut partial: Option<(Vec<u8>, bool)> = None;
    let replies = inbound.clone();
    let mut send_reply = move |frame: Frame<'_>| {
        let reply = Inbound::Reply(Box::new(Reply {
            opcode: frame.opcode,
            payload: frame.payload.to_vec(),
        }));
        let replies = replies.clone();
        // Boxed, as the waits below: an idle reader's task then holds only the frame read.
        async move {
            Box::pin(replies.send(reply))
                .await
                .map_err(|_| "session ended")
        }
    };
    loop {
        let frame = match read.read_frame(&mut send_reply).await {
            Ok(frame) => frame,
            Err(error) => return Inbound::Failed(failure(error)),
        };
        last_seen_ms.store(now_ms(), Ordering::Relaxed);
        let (payload, binary) = match frame.opcode {
            OpCode::Close => return Inbound::Closed,
            OpCode::Ping | OpCode::Pong => continue,
            OpCode::Text | OpCode::Binary if partial.is_some() => {
                return Inbound::Failed(ReadFailure::Protocol(Box::new(
                    "new message inside a fragmented one".into(),
                )))
            }
            OpCode::Text | OpCode::Binary if !frame.fin => {
                partial = Some((frame.payload.to_vec(), frame.opcode == OpCode::Binary));
                continue;
            }
            OpCode::Text | OpCode::Binary => {
                (frame.payload.to_vec(), frame.opcode == OpCode::Binary)
            }
            OpCode::Continuation => {
                let Some((buffer, binary)) = partial.as_mut() else {
                    return Inbound::Failed(ReadFailure::Protocol(Box::new(
                        "continuation without a message".into(),
                    )));
                };
                if buffer.len() + frame.payload.len() > max_message_bytes {
                    return Inbound::Failed(ReadFailure::TooLarge);
                }
                buffer.extend_from_slice(&frame.payload);
                if !frame.fin {
                    continue;
                }
                let binary = *binary;
                let (buffer, _) = partial.take().expect("checked above");
                if !binary && std::str::from_utf8(&buffer).is_err() {
                    return Inbound::Failed(ReadFailure::InvalidUtf8);
                }
                (buffer, binary)
            }
        };
        // Never more than the whole budget, or the wait would never end.
        let share = (payload.len() as u32).min(budget_bytes(max_message_bytes));
        let Ok(budget) = Box::pin(budget.clone().acquire_many_owned(share)).await else {
            return Inbound::Failed(ReadFailure::Gone);
        };
        let message = Inbound::Message(Box::new(Message {
            payload,
            binary,
            _budget: budget,
        }));
        if Box::pin(inbound.send(message)).await.is_err() {
            return Inbound::Failed(ReadFailure::Gone);
        }
    }
}

/// Bytes of messages a connection may have waiting for its session: three messages at the
/// limit (so that small messages are never held back by the budget), within what a
/// semaphore counts.
fn budget_bytes(max_message_bytes: usize) -> u32 {
    let ceiling = Semaphore::MAX_PERMITS.min(u32::MAX as usize);
    max_message_bytes
        .saturating_mul(3)
        .clamp(64 * 1024, ceiling) as u32
}

fn failure(error: WebSocketError) -> ReadFailure {
    match error {
        WebSocketError::FrameTooLarge => ReadFailure::TooLarge,
        WebSocketError::InvalidUTF8 => ReadFailure::InvalidUtf8,
        WebSocketError::UnexpectedEOF
        | WebSocketError::ConnectionClosed
        | WebSocketError::IoError(_) => ReadFailure::Gone,
        other => ReadFailure::Protocol(Box::new(other.to_string())),
    }
}
