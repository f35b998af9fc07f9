//! Publish -> deliver: exact fields, ordering, multi-channel, filters, the control messages.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn published_event_is_delivered_with_exact_fields() {
    let server = Server::start().await;
    let mut ws = server.ws("/ws/arena/a1").await;
    let hello = ws.recv().await;
    assert_eq!(hello["type"], "connection_established");
    assert_eq!(hello["head"], 0);
    let epoch = hello["epoch"].as_str().unwrap().to_string();
    assert!(!epoch.is_empty());
    assert!(hello["client_id"].is_string());
    let subscribed = ws.recv().await;
    assert_eq!(subscribed["type"], "subscribed");
    assert_eq!(subscribed["channel"], "arena/a1");
    assert_eq!(subscribed["recovered"], true);

    let seq = server
        .publish_one(
            "arena/a1",
            "competition_round",
            json!({"round": 1, "scores": {"a": 0.5}}),
        )
        .await;
    assert_eq!(seq, 1);
    let event = ws.recv().await;
    assert_eq!(event["type"], "event");
    assert_eq!(event["seq"], 1);
    assert_eq!(event["channel"], "arena/a1");
    assert_eq!(event["event_type"], "competition_round");
    assert_eq!(event["data"], json!({"round": 1, "scores": {"a": 0.5}}));
    let ts = event["ts"].as_str().unwrap();
    assert!(
        ts.ends_with('Z') && ts.len() == 24,
        "RFC 3339 with milliseconds: {ts}"
    );
    let keys: Vec<_> = event.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys.len(), 6, "{keys:?}");
}

#[tokio::test]
async fn events_arrive_in_seq_order_across_channels_and_multi_channel_events_once() {
    let server = Server::start().await;
    let mut ws = server.ws("/ws").await;
    ws.recv_type("connection_established").await;
    ws.subscribe("arena/a1", json!({})).await;
    ws.subscribe("competition/c7", json!({})).await;

    let mut published = Vec::new();
    for i in 0..20 {
        let body = match i % 3 {
            0 => json!({"channel": "arena/a1", "event_type": "t", "data": {"i": i}}),
            1 => json!({"channel": "competition/c7", "event_type": "t", "data": {"i": i}}),
            _ => {
                json!({"channels": ["arena/a1", "competition/c7", "agent/x"], "event_type": "t", "data": {"i": i}})
            }
        };
        let (status, answer) = server.publish(body).await;
        assert_eq!(status, 200);
        published.push(answer["seq"].as_u64().unwrap());
    }
    // One unrelated event must not arrive.
    server.publish_one("arena/other", "t", json!({})).await;
    let events = ws.events(20).await;
    assert_eq!(seqs(&events), published);
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["data"]["i"], i as u64);
        let channel = event["channel"].as_str().unwrap();
        assert!(
            channel == "arena/a1" || channel == "competition/c7",
            "{channel}"
        );
    }
    assert!(
        ws.try_recv(std::time::Duration::from_millis(300))
            .await
            .is_none(),
        "nothing else"
    );
}

#[tokio::test]
async fn batch_publish_answers_seqs_in_order() {
    let server = Server::start().await;
    let mut ws = server.ws("/ws/arena/b").await;
    ws.recv_type("subscribed").await;
    let batch: Vec<_> = (0..5)
        .map(|i| json!({"channel": "arena/b", "event_type": "t", "data": {"i": i}}))
        .collect();
    let (status, answer) = server.publish(json!(batch)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["seqs"], json!([1, 2, 3, 4, 5]));
    assert_eq!(seqs(&ws.events(5).await), vec![1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn filters_and_types_select_events() {
    let server = Server::start().await;
    let mut typed = server
        .ws("/ws/arena/f?types=competition_round,competition_end")
        .await;
    typed.recv_type("subscribed").await;
    let mut filtered = server.ws("/ws").await;
    let subscribed = filtered
        .subscribe(
            "arena/f",
            json!({"filters": {"event_types": ["competition_round"], "score": {"min": 0.8}}}),
        )
        .await;
    assert_eq!(subscribed["id"], "sub-arena/f");

    server
        .publish_one("arena/f", "competition_round", json!({"score": 0.9}))
        .await; // 1: both
    server
        .publish_one("arena/f", "competition_round", json!({"score": 0.1}))
        .await; // 2: typed
    server
        .publish_one("arena/f", "agent_status", json!({"score": 1.0}))
        .await; // 3: none
    server
        .publish_one("arena/f", "competition_end", json!({}))
        .await; // 4: typed
    assert_eq!(seqs(&typed.events(3).await), vec![1, 2, 4]);
    assert_eq!(seqs(&filtered.events(1).await), vec![1]);
    assert!(filtered
        .try_recv(std::time::Duration::from_millis(300))
        .await
        .is_none());
}

#[tokio::test]
async fn control_messages_ping_subscriptions_unsubscribe() {
    let server = Server::start().await;
    let mut ws = server.ws("/ws").await;
    ws.recv_type("connection_established").await;
    ws.send(json!({"type": "ping", "id": "p1"})).await;
    assert_eq!(ws.recv().await, json!({"type": "pong", "id": "p1"}));

    ws.subscribe("arena/a", json!({"filters": {"x": 1}})).await;
    ws.subscribe("agent/b", json!({})).await;
    ws.send(json!({"type": "get_subscriptions", "id": "g"}))
        .await;
    let list = ws.recv().await;
    assert_eq!(list["type"], "subscriptions");
    assert_eq!(list["id"], "g");
    assert_eq!(
        list["subscriptions"],
        json!([{"channel": "agent/b", "filters": null}, {"channel": "arena/a", "filters": {"x": 1}}])
    );

    ws.send(json!({"type": "unsubscribe", "id": "u", "channel": "agent/b"}))
        .await;
    assert_eq!(
        ws.recv().await,
        json!({"type": "unsubscribed", "id": "u", "channel": "agent/b"})
    );
    server.publish_one("agent/b", "t", json!({})).await;
    assert!(ws
        .try_recv(std::time::Duration::from_millis(300))
        .await
        .is_none());
    ws.send(json!({"type": "unsubscribe", "id": "u2", "channel": "agent/b"}))
        .await;
    let error = ws.recv().await;
    assert_eq!(
        (error["type"].as_str(), error["code"].as_str()),
        (Some("error"), Some("NOT_FOUND"))
    );
}

#[tokio::test]
async fn websocket_publish_is_answered_after_append_and_delivered() {
    let server = Server::start().await;
    let mut subscriber = server.ws("/ws/arena/p").await;
    subscriber.recv_type("subscribed").await;
    let mut publisher = server.ws("/ws").await;
    publisher.recv_type("connection_established").await;
    for i in 0..10 {
        publisher
            .send(json!({"type": "publish", "id": format!("r{i}"), "channel": "arena/p", "event_type": "t", "data": {"i": i}}))
            .await;
    }
    for i in 0..10u64 {
        let answer = publisher.recv().await;
        assert_eq!(
            answer,
            json!({"type": "published", "id": format!("r{i}"), "seq": i + 1})
        );
    }
    assert_eq!(
        seqs(&subscriber.events(10).await),
        (1..=10).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn broadcast_channel_reaches_every_connection_without_subscribing() {
    let server = Server::start().await;
    let mut a = server.ws("/ws").await;
    a.recv_type("connection_established").await;
    let mut b = server.ws("/ws/arena/z").await;
    b.recv_type("subscribed").await;
    server
        .publish_one("system/broadcast", "announcement", json!({"message": "hi"}))
        .await;
    assert_eq!(a.recv_type("event").await["channel"], "system/broadcast");
    assert_eq!(b.recv_type("event").await["data"]["message"], "hi");
}
