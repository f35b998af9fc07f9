//! Heartbeat: a client that completes the handshake and then goes silent is closed after
//! `timeout_secs`, and everything it held is released; client pings are answered.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// Opens a WebSocket by hand on a raw TCP socket; returns the socket after the 101.
async fn raw_handshake(server: &Server, path: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: {}\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
        server.addr
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 4096, "no end of the response head");
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp
}

#[tokio::test]
async fn a_silent_client_is_pinged_then_closed_and_its_resources_released() {
    let server = Server::start_with("[heartbeat]\ninterval_secs = 1\ntimeout_secs = 2").await;
    let started = Instant::now();
    let mut silent = raw_handshake(&server, "/ws/arena/quiet").await;
    // The session registers just after the 101 was sent.
    wait_until(|| async {
        let health = server.health().await.unwrap();
        (
            health["connections"].as_u64(),
            health["subscriptions"].as_u64(),
        ) == (Some(1), Some(1))
    })
    .await;

    // Read (never write) until the server ends the stream.
    let mut received = Vec::new();
    let read = tokio::time::timeout(WAIT, silent.read_to_end(&mut received)).await;
    let closed_after = started.elapsed();
    assert!(
        read.is_ok(),
        "the server did not close the silent connection"
    );
    assert!(closed_after >= Duration::from_secs(2), "{closed_after:?}");
    let frames = server_frames(&received);
    let opcodes: Vec<u8> = frames.iter().map(|(op, _)| *op).collect();
    assert!(
        opcodes.contains(&0x9),
        "pinged before being closed: {opcodes:?}"
    );
    let (last_op, close_payload) = frames.last().unwrap();
    assert_eq!(*last_op, 0x8, "ends with a close frame");
    assert_eq!(
        u16::from_be_bytes([close_payload[0], close_payload[1]]),
        1000
    );

    let health = server.health().await.unwrap();
    assert_eq!(
        (
            health["connections"].as_u64(),
            health["subscriptions"].as_u64()
        ),
        (Some(0), Some(0))
    );

    // A client that answers pings (tungstenite does) stays.
    let mut ws = server.ws("/ws/arena/chatty").await;
    ws.recv_type("subscribed").await;
    let watching = Instant::now();
    while watching.elapsed() < Duration::from_secs(3) {
        let message = ws.next_raw().await.expect("still open");
        assert!(!message.is_close(), "closed although it answers pings");
    }
    let seq = server.publish_one("arena/chatty", "t", json!({})).await;
    assert_eq!(ws.recv_type("event").await["seq"], seq);
}

/// Unmasked server frames: (opcode, payload). Servers never fragment control frames.
fn server_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while bytes.len() >= 2 {
        let opcode = bytes[0] & 0x0f;
        let (len, header) = match bytes[1] & 0x7f {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        frames.push((opcode, bytes[header..header + len].to_vec()));
        bytes = &bytes[header + len..];
    }
    frames
}

#[tokio::test]
async fn client_pings_are_answered_with_the_same_payload() {
    let server = Server::start().await;
    let mut ws = server.ws("/ws").await;
    ws.recv_type("connection_established").await;
    ws.send_raw(Message::Ping(b"are you there".to_vec().into()))
        .await;
    // Server pings may come first; a few frames at most.
    let pong = 'found: {
        for _ in 0..5 {
            match ws.next_raw().await.expect("open") {
                Message::Pong(payload) => break 'found payload,
                Message::Ping(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
        panic!("no pong");
    };
    assert_eq!(&pong[..], b"are you there");
}
