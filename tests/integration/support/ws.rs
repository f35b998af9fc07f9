//! A WebSocket client for the tests (tokio-tungstenite, independent of the server's own
//! WebSocket library): connect, send, receive with a deadline, read close codes.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::{
    tungstenite::{
        client::IntoClientRequest, handshake::client::Request, protocol::frame::coding::CloseCode,
        Message,
    },
    MaybeTlsStream, WebSocketStream,
};

use super::{Server, WAIT};

impl Server {
    pub async fn ws(&self, path: &str) -> Ws {
        Ws::connect(&self.ws_url(path)).await
    }

    /// A WebSocket request for `path`, to which headers can be added.
    pub fn ws_request(&self, path: &str) -> Request {
        self.ws_url(path).into_client_request().unwrap()
    }
}

pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    pub async fn connect(url: &str) -> Ws {
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        Ws { stream }
    }

    /// Connects and returns the HTTP status of a refused handshake.
    pub async fn connect_refused(url: &str) -> u16 {
        Self::refused(url.into_client_request().unwrap()).await.0
    }

    /// Connects with a prepared request (headers, subprotocols); also returns the server's
    /// handshake answer.
    pub async fn connect_with(
        request: Request,
    ) -> (
        Ws,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ) {
        let uri = request.uri().clone();
        let (stream, response) = tokio_tungstenite::connect_async(request)
            .await
            .unwrap_or_else(|e| panic!("connect {uri}: {e}"));
        (Ws { stream }, response)
    }

    /// A refused handshake: its status, its JSON body, and its headers.
    pub async fn refused(request: Request) -> (u16, Value, reqwest::header::HeaderMap) {
        let uri = request.uri().clone();
        match tokio_tungstenite::connect_async(request).await {
            Ok(_) => panic!("{uri}: the handshake was accepted"),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let body = response
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                (response.status().as_u16(), body, response.headers().clone())
            }
            Err(e) => panic!("{uri}: {e}"),
        }
    }

    /// The next frame of any kind (pings and pongs included), within 10 s.
    pub async fn next_raw(&mut self) -> Option<Message> {
        tokio::time::timeout(WAIT, self.stream.next())
            .await
            .expect("a frame within 10 s")
            .map(|m| m.expect("a frame"))
    }

    pub async fn send(&mut self, message: Value) {
        self.stream
            .send(Message::text(message.to_string()))
            .await
            .unwrap();
    }

    /// Sends, and says whether the frame went out (the server may have closed already).
    pub async fn try_send(&mut self, message: Message) -> bool {
        self.stream.send(message).await.is_ok()
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.stream.send(message).await.unwrap();
    }

    /// The next server message (pings skipped), or a panic after 10 s.
    pub async fn recv(&mut self) -> Value {
        self.try_recv(WAIT).await.expect("a message within 10 s")
    }

    /// The next server message within `wait`, `None` if none came.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()?;
            match next {
                Some(Ok(Message::Text(text))) => {
                    return Some(serde_json::from_str(&text).expect("JSON message"))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    /// The next server message or the close that ended the connection (10 s at most).
    pub async fn recv_or_close(&mut self) -> Incoming {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .expect("a message or a close within 10 s");
            match next {
                Some(Ok(Message::Text(text))) => {
                    return Incoming::Message(serde_json::from_str(&text).expect("JSON message"))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Incoming::Closed(u16::from(frame.code), frame.reason.to_string())
                }
                Some(Ok(Message::Close(None))) => {
                    return Incoming::Closed(CloseCode::Status.into(), String::new())
                }
                Some(Err(_)) | None => return Incoming::Closed(1006, "no close frame".into()),
                Some(Ok(other)) => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    /// Skips messages until one of type `kind`.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let message = self.recv().await;
            if message["type"] == kind {
                return message;
            }
        }
    }

    /// Reads until the server closes; returns the close code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .expect("close within 10 s")
            {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (u16::from(frame.code), frame.reason.to_string())
                }
                Some(Ok(Message::Close(None))) => return (CloseCode::Status.into(), String::new()),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return (1006, "no close frame".into()),
            }
        }
    }

    /// The underlying stream, e.g. to split it into a reader and a writer.
    pub fn into_stream(self) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
        self.stream
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }

    /// `subscribe` and wait for `subscribed`.
    pub async fn subscribe(&mut self, channel: &str, extra: Value) -> Value {
        let mut message = serde_json::json!({"type": "subscribe", "id": format!("sub-{channel}"), "channel": channel});
        if let Value::Object(extra) = extra {
            for (k, v) in extra {
                message[k] = v;
            }
        }
        self.send(message).await;
        self.recv_type("subscribed").await
    }

    /// Collects `event` messages until `count` arrived; other types are skipped.
    pub async fn events(&mut self, count: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let message = self.recv().await;
            if message["type"] == "event" {
                out.push(message);
            }
        }
        out
    }
}

/// What `Ws::recv_or_close` read.
#[derive(Debug)]
pub enum Incoming {
    Message(Value),
    Closed(u16, String),
}

pub fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}
