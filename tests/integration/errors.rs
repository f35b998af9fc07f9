//! Bad input over WebSocket and HTTP: the documented error codes and statuses, and a
//! connection that keeps working after an error.

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

async fn connected(server: &Server) -> Ws {
    let mut ws = server.ws("/ws").await;
    ws.recv_type("connection_established").await;
    ws
}

async fn expect_error(ws: &mut Ws, code: &str) -> Value {
    let message = ws.recv().await;
    assert_eq!(message["type"], "error", "{message}");
    assert_eq!(message["code"], code, "{message}");
    assert!(message["message"].is_string(), "{message}");
    message
}

async fn still_works(ws: &mut Ws, id: &str) {
    ws.send(json!({"type": "ping", "id": id})).await;
    assert_eq!(ws.recv().await, json!({"type": "pong", "id": id}));
}

#[tokio::test]
async fn websocket_errors_are_answered_and_the_connection_survives() {
    let server = Server::start().await;
    let mut ws = connected(&server).await;

    ws.send_raw(Message::text("{not json")).await;
    expect_error(&mut ws, "INVALID_MESSAGE").await;
    still_works(&mut ws, "p1").await;

    ws.send_raw(Message::text("[1, 2]")).await;
    expect_error(&mut ws, "INVALID_MESSAGE").await;
    still_works(&mut ws, "p2").await;

    ws.send(json!({"type": "dance", "id": "x"})).await;
    let error = expect_error(&mut ws, "UNKNOWN_TYPE").await;
    assert_eq!(error["id"], "x");
    still_works(&mut ws, "p3").await;

    ws.send(json!({"type": "subscribe", "id": "s1", "channel": "Bad Channel"}))
        .await;
    let error = expect_error(&mut ws, "INVALID_CHANNEL").await;
    assert_eq!(error["id"], "s1");
    still_works(&mut ws, "p4").await;

    for (n, filters) in [
        json!("not an object"),
        json!({"score": {"between": [1, 2]}}),
        json!({"score": {"min": "high"}}),
        json!({"event_types": "competition_round"}),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("f{n}");
        ws.send(json!({"type": "subscribe", "id": id, "channel": "arena/a", "filters": filters}))
            .await;
        let error = expect_error(&mut ws, "INVALID_MESSAGE").await;
        assert_eq!(error["id"], id.as_str(), "{filters}");
        still_works(&mut ws, &format!("pf{n}")).await;
    }

    // None of the refused subscriptions exists.
    ws.send(json!({"type": "get_subscriptions", "id": "g"}))
        .await;
    let list = ws.recv().await;
    assert_eq!(list["subscriptions"], json!([]), "{list}");

    // And the connection still delivers.
    ws.subscribe("arena/a", json!({})).await;
    let seq = server.publish_one("arena/a", "t", json!({})).await;
    assert_eq!(ws.recv_type("event").await["seq"], seq);
}

#[tokio::test]
async fn subscription_limit_is_enforced() {
    let server = Server::start_with("[limits]\nmax_subscriptions_per_connection = 2\n").await;
    let mut ws = connected(&server).await;
    ws.subscribe("arena/a", json!({})).await;
    ws.subscribe("arena/b", json!({})).await;
    ws.send(json!({"type": "subscribe", "id": "third", "channel": "arena/c"}))
        .await;
    let error = expect_error(&mut ws, "SUBSCRIPTION_LIMIT").await;
    assert_eq!(error["id"], "third");
    still_works(&mut ws, "p").await;
    // Re-subscribing to a held channel is not a new subscription; freeing one allows another.
    ws.send(json!({"type": "unsubscribe", "id": "u", "channel": "arena/a"}))
        .await;
    assert_eq!(ws.recv().await["type"], "unsubscribed");
    let subscribed = ws.subscribe("arena/c", json!({})).await;
    assert_eq!(subscribed["channel"], "arena/c");
    server.publish_one("arena/c", "t", json!({})).await;
    assert_eq!(ws.recv_type("event").await["channel"], "arena/c");
}

#[tokio::test]
async fn a_message_over_the_size_limit_closes_with_1009() {
    let server = Server::start_with("[limits]\nmax_message_bytes = 1024\n").await;
    let mut ws = connected(&server).await;
    // Just under the limit is fine.
    let small = json!({"type": "ping", "id": "x".repeat(900)});
    ws.send(small.clone()).await;
    assert_eq!(ws.recv().await["type"], "pong");

    let big = json!({"type": "ping", "id": "x".repeat(2000)});
    ws.send(big).await;
    let (code, reason) = ws.closed().await;
    assert_eq!(code, 1009, "{reason}");
}

#[tokio::test]
async fn refused_websocket_handshakes() {
    let server = Server::start().await;
    let status = Ws::connect_refused(&server.ws_url("/ws/Bad/x")).await;
    assert!(status == 400 || status == 422, "invalid channel: {status}");
    let status = Ws::connect_refused(&server.ws_url("/ws/arena/bad%20id")).await;
    assert!(
        status == 400 || status == 422,
        "invalid channel id: {status}"
    );
    let status = Ws::connect_refused(&server.ws_url("/ws?format=xml")).await;
    assert_eq!(status, 400);
    let status = Ws::connect_refused(&server.ws_url("/ws/arena/a?since=abc")).await;
    assert_eq!(status, 400);
}

fn assert_http_error(status: u16, body: &Value, want_status: u16) {
    assert_eq!(status, want_status, "{body}");
    assert!(body["error"]["code"].is_string(), "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

#[tokio::test]
async fn http_publish_errors_and_accepted_encodings() {
    let server = Server::start().await;
    let path = "/api/v1/events";

    let (status, body) = server
        .post_raw(path, "application/json", b"{\"channel\": ".to_vec())
        .await;
    assert_http_error(status, &body, 400);

    let (status, body) = server
        .publish(json!({"channel": "arena/a", "data": {}}))
        .await;
    assert_http_error(status, &body, 400);

    let (status, body) = server
        .publish(json!({"channel": "Bad Channel", "event_type": "t", "data": {}}))
        .await;
    assert_http_error(status, &body, 422);
    assert_eq!(body["error"]["code"], "INVALID_CHANNEL");

    let (status, body) = server
        .post_raw(
            path,
            "text/plain",
            br#"{"channel":"arena/a","event_type":"t","data":{}}"#.to_vec(),
        )
        .await;
    assert_http_error(status, &body, 415);
    assert_eq!(server.head().await, 0, "nothing appended by refused bodies");

    // NDJSON: always a batch.
    let ndjson = "{\"channel\":\"arena/a\",\"event_type\":\"t\",\"data\":{\"n\":1}}\n\
                  {\"channel\":\"arena/a\",\"event_type\":\"t\",\"data\":{\"n\":2}}\n";
    let (status, body) = server
        .post_raw(path, "application/x-ndjson", ndjson.as_bytes().to_vec())
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"seqs": [1, 2]}));
    let (status, body) = server
        .post_raw(
            path,
            "application/x-ndjson",
            b"{\"channel\":\"arena/a\",\"event_type\":\"t\",\"data\":{\"n\":3}}\n".to_vec(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"seqs": [3]}));

    // MessagePack: one map, or an array of maps.
    let one = rmp_serde::to_vec_named(
        &json!({"channel": "arena/a", "event_type": "t", "data": {"n": 4, "f": 0.5}}),
    )
    .unwrap();
    let (status, body) = server.post_raw(path, "application/msgpack", one).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"seq": 4}));
    let many = rmp_serde::to_vec_named(&json!([
        {"channel": "arena/a", "event_type": "t", "data": {"n": 5}},
        {"channels": ["arena/a", "agent/z"], "event_type": "t", "data": {"n": 6}},
    ]))
    .unwrap();
    let (status, body) = server.post_raw(path, "application/msgpack", many).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"seqs": [5, 6]}));
    let (status, body) = server
        .post_raw(path, "application/msgpack", vec![0xc1, 0x00])
        .await;
    assert_http_error(status, &body, 400);

    let history = server.history_all("arena/a").await;
    let data: Vec<Value> = history.iter().map(|e| e["data"].clone()).collect();
    assert_eq!(
        data,
        vec![
            json!({"n": 1}),
            json!({"n": 2}),
            json!({"n": 3}),
            json!({"n": 4, "f": 0.5}),
            json!({"n": 5}),
            json!({"n": 6}),
        ]
    );
    assert_eq!(history[5]["channels"], json!(["arena/a", "agent/z"]));
}
