//! The load tool's WebSocket client. The handshake is hyper's HTTP/1 upgrade; frames are
//! read straight out of one growing buffer, without a copy or an allocation per frame: a
//! thousand subscribers reading a million frames a second share the two cores with the
//! server they measure, so the tool's cost per frame is part of every figure.
//!
//! Only what the tool needs: it reads server frames (unmasked; fragmented ones are joined),
//! answers pings and closes, and sends masked text frames.

use std::{io, time::Instant};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Room made for a read when the buffer has less: a burst of frames is read at once. It
/// doubles while reads fill it (a resume's backlog), up to `MAX_READ_ROOM`, and starts
/// small again after a read that did not.
const READ_ROOM: usize = 4096;
const MAX_READ_ROOM: usize = 256 * 1024;

/// A frame read from a subscriber's socket.
pub enum Incoming {
    /// A data frame: its payload and whether it was binary.
    Data(Bytes, bool),
    /// The server closed with this code and reason (1006 when it closed without a frame).
    Closed(u16, String),
}

/// Why a WebSocket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("handshake refused with HTTP {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("WebSocket handshake: {0}")]
    Handshake(#[from] hyper::Error),
}

pub struct Ws {
    io: TokioIo<hyper::upgrade::Upgraded>,
    buffer: BytesMut,
    read_room: usize,
    /// The first frames of a fragmented message: its opcode and payload so far.
    fragments: Option<(u8, BytesMut)>,
    /// Replies (pongs, the close) not yet fully written, and how much of them was.
    out: Vec<u8>,
    out_written: usize,
    /// When the last read from the socket returned: the receipt time of every frame it
    /// brought.
    read_at: Instant,
}

impl Ws {
    /// Upgrades `tcp` to a WebSocket on `path_and_query`.
    pub async fn handshake(
        tcp: TcpStream,
        host: &str,
        path_and_query: &str,
    ) -> Result<Ws, ConnectError> {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        let request = hyper::Request::get(path_and_query)
            .header("host", host)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header(
                "sec-websocket-key",
                fastwebsockets::handshake::generate_key(),
            )
            .header("sec-websocket-version", "13")
            .body(Empty::<Bytes>::new())
            .expect("a valid request");
        let mut response = sender.send_request(request).await?;
        if response.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            return Err(ConnectError::Refused {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        let upgraded = hyper::upgrade::on(&mut response).await?;
        Ok(Ws {
            io: TokioIo::new(upgraded),
            buffer: BytesMut::new(),
            read_room: READ_ROOM,
            fragments: None,
            out: Vec::new(),
            out_written: 0,
            read_at: Instant::now(),
        })
    }

    /// The next data frame or the close; pings are answered on the way. Cancel-safe: what
    /// was read stays in the buffer, a reply half written is finished by the next call.
    pub async fn next_frame(&mut self) -> Incoming {
        match self.read_frame().await {
            Ok(incoming) => incoming,
            Err(e) => Incoming::Closed(1006, e.to_string()),
        }
    }

    /// When the bytes of the frames read since the last socket read arrived: one clock
    /// read per read from the socket, not per frame.
    pub fn read_at(&self) -> Instant {
        self.read_at
    }

    async fn read_frame(&mut self) -> io::Result<Incoming> {
        loop {
            self.write_replies().await?;
            let Some((fin, opcode, payload)) = self.parse()? else {
                if self.buffer.capacity() - self.buffer.len() < self.read_room / 4 {
                    self.buffer.reserve(self.read_room);
                }
                let room = self.buffer.capacity() - self.buffer.len();
                let read = self.io.read_buf(&mut self.buffer).await?;
                self.read_at = Instant::now();
                if read == 0 {
                    return Ok(Incoming::Closed(1006, "connection ended".into()));
                }
                self.read_room = if read == room {
                    (self.read_room * 2).min(MAX_READ_ROOM)
                } else {
                    READ_ROOM
                };
                continue;
            };
            match opcode {
                0x0..=0x2 => {
                    if let Some(message) = self.join(fin, opcode, payload)? {
                        return Ok(message);
                    }
                }
                0x8 => {
                    let (code, reason) = match payload.len() {
                        0 | 1 => (1005, String::new()),
                        _ => (
                            u16::from_be_bytes([payload[0], payload[1]]),
                            String::from_utf8_lossy(&payload[2..]).into_owned(),
                        ),
                    };
                    self.queue(0x8, &code.to_be_bytes());
                    let _ = self.write_replies().await;
                    return Ok(Incoming::Closed(code, reason));
                }
                0x9 => self.queue(0xA, &payload),
                _ => {}
            }
        }
    }

    /// A whole frame at the front of the buffer, if there is one: (fin, opcode, payload).
    fn parse(&mut self) -> io::Result<Option<(bool, u8, Bytes)>> {
        let Some(&[first, second]) = self.buffer.get(..2) else {
            return Ok(None);
        };
        if second & 0x80 != 0 {
            return Err(invalid("the server masked a frame"));
        }
        let (head, len) = match second & 0x7F {
            126 if self.buffer.len() >= 4 => (
                4,
                u16::from_be_bytes([self.buffer[2], self.buffer[3]]) as usize,
            ),
            127 if self.buffer.len() >= 10 => {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&self.buffer[2..10]);
                (10, u64::from_be_bytes(bytes) as usize)
            }
            126 | 127 => return Ok(None),
            len => (2, len as usize),
        };
        if self.buffer.len() < head + len {
            self.buffer.reserve(head + len - self.buffer.len());
            return Ok(None);
        }
        let mut frame = self.buffer.split_to(head + len);
        frame.advance(head);
        Ok(Some((first & 0x80 != 0, first & 0x0F, frame.freeze())))
    }

    /// A data frame, joined with the frames before it when the message was fragmented.
    fn join(&mut self, fin: bool, opcode: u8, payload: Bytes) -> io::Result<Option<Incoming>> {
        let whole = match (opcode, self.fragments.take()) {
            (0x0, None) => return Err(invalid("a continuation frame with nothing to continue")),
            (0x0, Some((first, mut so_far))) => {
                so_far.extend_from_slice(&payload);
                if !fin {
                    self.fragments = Some((first, so_far));
                    return Ok(None);
                }
                (first, so_far.freeze())
            }
            (_, Some(_)) => return Err(invalid("a new message inside a fragmented one")),
            (opcode, None) if !fin => {
                self.fragments = Some((opcode, BytesMut::from(&payload[..])));
                return Ok(None);
            }
            (opcode, None) => (opcode, payload),
        };
        Ok(Some(Incoming::Data(whole.1, whole.0 == 0x2)))
    }

    /// Sends a text message.
    pub async fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.queue(0x1, text.as_bytes());
        self.write_replies().await
    }

    /// Sends a close frame (1000), best effort.
    pub async fn close(&mut self) {
        self.queue(0x8, &1000u16.to_be_bytes());
        let _ = self.write_replies().await;
    }

    /// Adds a masked frame to what is to be written.
    fn queue(&mut self, opcode: u8, payload: &[u8]) {
        self.out.push(0x80 | opcode);
        match payload.len() {
            len @ 0..=125 => self.out.push(0x80 | len as u8),
            len @ 126..=0xFFFF => {
                self.out.push(0x80 | 126);
                self.out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                self.out.push(0x80 | 127);
                self.out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        let mask: [u8; 4] = rand::random();
        self.out.extend_from_slice(&mask);
        self.out
            .extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    }

    async fn write_replies(&mut self) -> io::Result<()> {
        while self.out_written < self.out.len() {
            let n = self.io.write(&self.out[self.out_written..]).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.out_written += n;
        }
        self.out.clear();
        self.out_written = 0;
        Ok(())
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that writes `bytes` after the handshake, then reads what the client sends.
    async fn serve(bytes: Vec<u8>) -> (Ws, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            while !request.ends_with(b"\r\n\r\n") {
                request.push(socket.read_u8().await.unwrap());
            }
            socket
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n")
                .await
                .unwrap();
            socket.write_all(&bytes).await.unwrap();
            let mut received = Vec::new();
            let _ = socket.read_to_end(&mut received).await;
            received
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let ws = Ws::handshake(tcp, &addr.to_string(), "/ws").await.unwrap();
        (ws, server)
    }

    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            len @ 0..=125 => out.push(len as u8),
            len => {
                out.push(126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    fn unmask(bytes: &[u8]) -> (u8, Vec<u8>) {
        let len = (bytes[1] & 0x7F) as usize;
        let mask = &bytes[2..6];
        let payload = bytes[6..6 + len]
            .iter()
            .zip(mask.iter().cycle())
            .map(|(b, m)| b ^ m)
            .collect();
        (bytes[0], payload)
    }

    #[tokio::test]
    async fn reads_frames_joins_fragments_answers_pings_and_closes() {
        let long = vec![b'x'; 300];
        let mut bytes = frame(0x81, b"hello");
        bytes.extend(frame(0x89, b"p"));
        bytes.extend(frame(0x01, b"fra"));
        bytes.extend(frame(0x80, b"gment"));
        bytes.extend(frame(0x82, &long));
        bytes.extend(frame(0x88, b"\x0f\xa0lagging"));
        let (mut ws, server) = serve(bytes).await;
        let Incoming::Data(text, false) = ws.next_frame().await else {
            panic!("text")
        };
        assert_eq!(&text[..], b"hello");
        let Incoming::Data(joined, false) = ws.next_frame().await else {
            panic!("joined")
        };
        assert_eq!(&joined[..], b"fragment");
        let Incoming::Data(binary, true) = ws.next_frame().await else {
            panic!("binary")
        };
        assert_eq!(binary.len(), 300);
        let Incoming::Closed(code, reason) = ws.next_frame().await else {
            panic!("close")
        };
        assert_eq!((code, reason.as_str()), (4000, "lagging"));
        drop(ws);
        let sent = server.await.unwrap();
        let (pong, payload) = unmask(&sent);
        assert_eq!((pong, payload.as_slice()), (0x8A, &b"p"[..]));
        let (close, payload) = unmask(&sent[7..]);
        assert_eq!(
            (close, payload.as_slice()),
            (0x88, &4000u16.to_be_bytes()[..])
        );
    }
}
