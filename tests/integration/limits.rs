//! Limits: message rate (and the ban of a flooding client), connections in total and per
//! user, message and body sizes, subscriptions per connection, filter size.

use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

const SECRET: &str = "test-secret";

fn jwt_config(extra: &str) -> String {
    format!("[auth]\nmode = \"jwt\"\nhs256_secret = \"{SECRET}\"\n{extra}")
}

#[tokio::test]
async fn over_the_rate_a_message_is_refused_with_its_limit_and_wait() {
    let server =
        Server::start_with("[limits]\nmessages_per_second = 1\nburst = 3\nflood_refusals = 100")
            .await;
    let mut ws = server.ws("/ws").await;
    ws.recv_type("connection_established").await;
    for i in 0..10 {
        ws.send(json!({"type": "ping", "id": i})).await;
    }
    let mut pongs = 0;
    let mut refusals = 0;
    for _ in 0..10 {
        let message = ws.recv().await;
        match message["type"].as_str().unwrap() {
            "pong" => pongs += 1,
            "error" => {
                assert_eq!(message["code"], "RATE_LIMIT_EXCEEDED");
                assert_eq!(message["details"]["limit"], 1);
                let wait = message["details"]["retry_after_ms"].as_u64().unwrap();
                assert!((1..=1000).contains(&wait), "{wait}");
                refusals += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    // The burst passes; a token may have been refilled while the ten were read.
    assert!((3..=4).contains(&pongs), "{pongs} pongs");
    assert_eq!(pongs + refusals, 10);
}

#[tokio::test]
async fn a_client_that_keeps_flooding_is_closed_with_1008_and_refused_for_a_while() {
    let config = jwt_config(
        "[limits]\nmessages_per_second = 1\nburst = 2\nflood_refusals = 5\nflood_ban_secs = 3\n",
    );
    let server = Server::start_with(&config).await;
    let flooder = mint(SECRET, "flooder", &["subscribe:*"], 3600);
    let mut ws = server.ws(&format!("/ws?token={flooder}")).await;
    ws.recv_type("connection_established").await;
    // It keeps sending after it was closed; the close code reaches it all the same.
    for i in 0..500 {
        let ping = Message::text(json!({"type": "ping", "id": i}).to_string());
        if !ws.try_send(ping).await {
            break;
        }
    }
    let (code, reason) = ws.closed().await;
    assert_eq!(
        (code, reason.as_str()),
        (1008, "rate limit exceeded repeatedly")
    );

    let (status, body, headers) =
        Ws::refused(server.ws_request(&format!("/ws?token={flooder}"))).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "RATE_LIMIT_EXCEEDED");
    let wait = body["error"]["details"]["retry_after_ms"].as_u64().unwrap();
    assert!((1..=3000).contains(&wait), "{wait}");
    assert_eq!(body["error"]["details"]["limit"], 1);
    assert!(headers.contains_key("retry-after"));

    // Another user is not affected.
    let other = mint(SECRET, "other", &["subscribe:*"], 3600);
    let mut ws = server.ws(&format!("/ws?token={other}")).await;
    ws.recv_type("connection_established").await;

    // The ban ends.
    let request = || server.ws_request(&format!("/ws?token={flooder}"));
    wait_until(|| async { tokio_tungstenite::connect_async(request()).await.is_ok() }).await;
}

#[tokio::test]
async fn connections_over_the_global_limit_are_closed_with_1013_even_when_they_race() {
    let server = Server::start_with("[limits]\nmax_connections = 3").await;
    let attempts = (0..10).map(|_| {
        let url = server.ws_url("/ws");
        tokio::spawn(async move {
            let mut ws = Ws::connect(&url).await;
            let first = ws.next_raw().await;
            (ws, first)
        })
    });
    let mut open = Vec::new();
    let mut refused = 0;
    for attempt in attempts.collect::<Vec<_>>() {
        let (ws, first) = attempt.await.unwrap();
        match first {
            Some(Message::Text(text)) => {
                assert!(text.contains("connection_established"), "{text}");
                open.push(ws);
            }
            Some(Message::Close(Some(frame))) => {
                assert_eq!(
                    (u16::from(frame.code), frame.reason.as_str()),
                    (1013, "connection limit reached")
                );
                refused += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((open.len(), refused), (3, 7));
    assert_eq!(server.health().await.unwrap()["connections"], 3);

    // A closed connection frees its place.
    open.pop().unwrap().close().await;
    wait_until(|| async { server.health().await.unwrap()["connections"] == 2 }).await;
    let mut ws = server.ws("/ws").await;
    ws.recv_type("connection_established").await;
}

#[tokio::test]
async fn connections_over_the_per_user_limit_are_closed_with_1013() {
    let server = Server::start_with(&jwt_config("[limits]\nmax_connections_per_user = 2")).await;
    let alice = mint(SECRET, "alice", &["subscribe:*"], 3600);
    let bob = mint(SECRET, "bob", &["subscribe:*"], 3600);
    let mut kept = Vec::new();
    for _ in 0..2 {
        let mut ws = server.ws(&format!("/ws?token={alice}")).await;
        ws.recv_type("connection_established").await;
        kept.push(ws);
    }
    let mut third = server.ws(&format!("/ws?token={alice}")).await;
    assert_eq!(
        third.closed().await,
        (1013, "connection limit per user reached".to_string())
    );
    let mut ws = server.ws(&format!("/ws?token={bob}")).await;
    ws.recv_type("connection_established").await;
    kept.pop().unwrap().close().await;
    wait_until(|| async { server.health().await.unwrap()["connections"] == 2 }).await;
    let mut again = server.ws(&format!("/ws?token={alice}")).await;
    again.recv_type("connection_established").await;
}

#[tokio::test]
async fn a_message_over_max_message_bytes_is_refused_with_1009() {
    let server = Server::start_with("[limits]\nmax_message_bytes = 1024").await;
    let mut ws = server.ws("/ws/arena/a1").await;
    ws.recv_type("subscribed").await;
    let at_limit = json!({"type": "ping", "id": "x".repeat(1024 - 23)}).to_string();
    assert_eq!(at_limit.len(), 1024);
    ws.send_raw(Message::text(at_limit)).await;
    assert_eq!(ws.recv().await["type"], "pong");
    let big = json!({"type": "ping", "id": "x".repeat(4 << 20)}).to_string();
    ws.send_raw(Message::text(big)).await;
    let error = ws.recv().await;
    assert_eq!(error["code"], "MESSAGE_TOO_LARGE");
    assert_eq!(ws.closed().await.0, 1009);
}

#[tokio::test]
async fn http_bodies_over_the_limit_get_413_and_append_nothing() {
    let server = Server::start_with("[limits]\nmax_http_body_bytes = 1024").await;
    let big = json!({"channel": "arena/a1", "event_type": "t", "data": {"x": "y".repeat(2000)}});
    let (status, body) = server.publish(big).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("MESSAGE_TOO_LARGE"))
    );
    assert_eq!(server.health().await.unwrap()["head"], 0);
    server.publish_one("arena/a1", "t", json!({"x": 1})).await;
}

#[tokio::test]
async fn subscriptions_per_connection_and_filter_size_are_capped() {
    let server = Server::start_with("[limits]\nmax_subscriptions_per_connection = 2").await;
    let mut ws = server.ws("/ws").await;
    ws.recv_type("connection_established").await;
    ws.subscribe("arena/a1", json!({})).await;
    ws.subscribe("arena/a2", json!({})).await;
    ws.send(json!({"type": "subscribe", "id": "s3", "channel": "arena/a3"}))
        .await;
    let error = ws.recv().await;
    assert_eq!(
        (
            error["code"].as_str(),
            error["id"].as_str(),
            error["details"]["limit"].as_u64()
        ),
        (Some("SUBSCRIPTION_LIMIT"), Some("s3"), Some(2))
    );
    ws.send(json!({"type": "unsubscribe", "channel": "arena/a2"}))
        .await;
    ws.recv_type("unsubscribed").await;
    let mut deep = json!(1);
    for _ in 0..20 {
        deep = json!({ "k": deep });
    }
    ws.send(json!({"type": "subscribe", "id": "s4", "channel": "arena/a4", "filters": {"x": {"eq": deep}}}))
        .await;
    let error = ws.recv().await;
    assert_eq!(
        (error["code"].as_str(), error["id"].as_str()),
        (Some("INVALID_MESSAGE"), Some("s4"))
    );
    assert!(error["message"].as_str().unwrap().contains("nest"));
    // The refused subscriptions were not made: events of a3/a4 do not arrive, a1's do.
    server.publish_one("arena/a3", "t", json!({})).await;
    server.publish_one("arena/a4", "t", json!({"x": 1})).await;
    let seq = server.publish_one("arena/a1", "t", json!({})).await;
    assert_eq!(ws.recv_type("event").await["seq"], seq);
}

#[tokio::test]
async fn http_publishing_over_its_rate_is_refused_per_user_and_nothing_is_appended() {
    let config = jwt_config("[limits]\nhttp_publish_per_second = 1\nhttp_publish_burst = 2\n");
    let server = Server::start_with(&config).await;
    let a = mint(SECRET, "a", &["publish:*", "subscribe:*"], 3600);
    let b = mint(SECRET, "b", &["publish:*"], 3600);
    let event = |n: u64| json!({"channel": "arena/rate", "event_type": "t", "data": {"n": n}});
    for n in 0..2 {
        let (status, body) = server.publish_as(&a, event(n)).await;
        assert_eq!(status, 200, "{body}");
    }
    let refused = reqwest::Client::new()
        .post(server.url("/api/v1/events"))
        .bearer_auth(&a)
        .json(&event(2))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "RATE_LIMIT_EXCEEDED");
    assert_eq!(body["error"]["details"]["limit"], 1);
    let wait = body["error"]["details"]["retry_after_ms"].as_u64().unwrap();
    assert!((1..=1000).contains(&wait), "{wait}");
    assert_eq!(retry_after, 1);

    let (status, body) = server.publish_as(&b, event(3)).await;
    assert_eq!(
        (status, &body["seq"]),
        (200, &json!(3)),
        "another user has its own rate"
    );

    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
    let (status, body) = server.publish_as(&a, event(4)).await;
    assert_eq!((status, &body["seq"]), (200, &json!(4)), "{body}");
    let (status, history) = server
        .get_as(Some(&a), "/api/v1/channels/arena/rate/events")
        .await;
    assert_eq!(status, 200, "{history}");
    let ns: Vec<u64> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, [0, 1, 3, 4], "the refused request appended nothing");
}
