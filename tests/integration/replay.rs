//! `replay` over WebSocket: exact ranges (seq and time), filters, pacing, replays beside live
//! subscriptions, stopping, and refusals.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

/// Sends `replay` and collects its events until `replay_end`, ignoring anything else.
async fn replay(ws: &mut Ws, request: Value) -> (Vec<Value>, Value) {
    ws.send(request).await;
    let mut events = Vec::new();
    loop {
        let message = ws.recv().await;
        match message["type"].as_str() {
            Some("event") if message.get("replay").is_some() => events.push(message),
            Some("replay_end") => return (events, message),
            Some("error") => panic!("replay refused: {message}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn replay_sends_exactly_the_seq_range_of_its_channel_then_replay_end() {
    let server = Server::start().await;
    let mut all = Vec::new();
    for i in 0..30 {
        let channel = if i % 3 == 0 {
            "arena/other"
        } else {
            "competition/c7"
        };
        let seq = server.publish_one(channel, "round", json!({"i": i})).await;
        if channel == "competition/c7" {
            all.push(seq);
        }
    }
    let mut ws = server.ws("/ws").await;
    ws.recv_type("connection_established").await;
    let (from, to) = (all[3], all[12]);
    let (events, end) = replay(
        &mut ws,
        json!({"type":"replay","id":"r5","channel":"competition/c7",
               "from": from.to_string(), "to": to.to_string(), "speed": 0}),
    )
    .await;
    let want: Vec<u64> = all
        .iter()
        .copied()
        .filter(|s| *s > from && *s <= to)
        .collect();
    assert_eq!(seqs(&events), want, "from is exclusive, to inclusive");
    assert!(events
        .iter()
        .all(|e| e["replay"] == "r5" && e["channel"] == "competition/c7"));
    assert_eq!(end["id"], "r5");
    assert_eq!(end["count"], want.len());
    assert!(end.get("stopped").is_none());

    // Without `to`: up to the head at the time of the request; filters apply.
    let (events, end) = replay(
        &mut ws,
        json!({"type":"replay","channel":"competition/c7","speed":0,
               "filters": {"i": {"min": 20}}}),
    )
    .await;
    let values: Vec<u64> = events
        .iter()
        .map(|e| e["data"]["i"].as_u64().unwrap())
        .collect();
    assert_eq!(values, vec![20, 22, 23, 25, 26, 28, 29]);
    assert_eq!(
        events[0]["replay"], true,
        "a replay without id is tagged `true`"
    );
    assert_eq!(end["count"], 7);
}

#[tokio::test]
async fn replay_by_time_range_selects_the_events_appended_in_it() {
    let server = Server::start().await;
    let mut batches = Vec::new();
    for batch in 0..3 {
        let events: Vec<Value> = (0..4)
            .map(|i| json!({"channel":"arena/t","event_type":"round","data":{"b":batch,"i":i}}))
            .collect();
        let (status, body) = server.publish(Value::Array(events)).await;
        assert_eq!(status, 200, "{body}");
        batches.push(body["seqs"].clone());
        // Distinct append times for the three batches (timestamps have 1 ms resolution).
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let (_, page) = server
        .get_json("/api/v1/channels/arena/t/events?limit=100")
        .await;
    let ts_of = |seq: &Value| {
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["seq"] == *seq)
            .unwrap()["ts"]
            .clone()
    };
    let middle_ts = ts_of(&batches[1][0]);
    assert_eq!(middle_ts, ts_of(&batches[1][3]), "one group, one ts");
    let mut ws = server.ws("/ws").await;
    ws.recv_type("connection_established").await;
    let (events, end) = replay(
        &mut ws,
        json!({"type":"replay","id":1,"channel":"arena/t","speed":0,
               "from_ts": middle_ts, "to_ts": middle_ts}),
    )
    .await;
    assert_eq!(
        Value::Array(seqs(&events).into_iter().map(Value::from).collect()),
        batches[1]
    );
    assert_eq!(end["count"], 4);
}

#[tokio::test]
async fn replay_keeps_the_original_spacing_divided_by_speed() {
    let server = Server::start().await;
    for i in 0..6 {
        server
            .publish_one("competition/pace", "round", json!({"i": i}))
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut ws = server.ws("/ws").await;
    ws.recv_type("connection_established").await;
    ws.send(json!({"type":"replay","id":"p","channel":"competition/pace","speed":2}))
        .await;
    let mut arrivals = Vec::new();
    loop {
        let message = ws.recv().await;
        if message["type"] == "event" {
            arrivals.push((Instant::now(), message["ts"].as_str().unwrap().to_string()));
        } else if message["type"] == "replay_end" {
            break;
        }
    }
    assert_eq!(arrivals.len(), 6);
    let ms = |ts: &str| {
        humantime::parse_rfc3339(ts)
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let (first_at, first_ts) = (arrivals[0].0, ms(&arrivals[0].1));
    for (at, ts) in &arrivals[1..] {
        let expected = (ms(ts) - first_ts) / 2;
        let got = at.duration_since(first_at).as_millis() as i64;
        // Never meaningfully early; late by at most a loaded machine's scheduling delay.
        assert!(
            got >= expected - 20 && got <= expected + 120,
            "arrived {got} ms after the first, expected {expected} ms"
        );
    }
    let total = arrivals[5].0.duration_since(first_at).as_millis() as i64;
    assert!(
        total >= 230,
        "5 gaps of ~100 ms at speed 2 take ~250 ms, took {total}"
    );
}

#[tokio::test]
async fn live_events_keep_flowing_while_a_slow_replay_waits() {
    let server = Server::start().await;
    for i in 0..3 {
        server
            .publish_one("competition/slow", "round", json!({"i": i}))
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut ws = server.ws("/ws").await;
    ws.recv_type("connection_established").await;
    ws.subscribe("arena/live", json!({})).await;
    // At speed 0.25 the three events span ~1.6 s: ample time for a live event to pass.
    ws.send(json!({"type":"replay","id":"slow","channel":"competition/slow","speed":0.25}))
        .await;
    let first = ws.recv().await;
    assert_eq!(
        (first["type"].as_str(), first["replay"].as_str()),
        (Some("event"), Some("slow"))
    );
    let live_seq = server.publish_one("arena/live", "tick", json!({})).await;
    let mut live_before_end = false;
    let mut replayed = 1;
    loop {
        let message = ws.recv().await;
        match message["type"].as_str() {
            Some("event") if message["channel"] == "arena/live" => {
                assert_eq!(message["seq"], live_seq);
                assert!(
                    message.get("replay").is_none(),
                    "live events are not tagged"
                );
                live_before_end = true;
            }
            Some("event") => replayed += 1,
            Some("replay_end") => {
                assert_eq!(message["count"], 3);
                break;
            }
            _ => {}
        }
    }
    assert!(
        live_before_end,
        "the live event came while the replay was waiting"
    );
    assert_eq!(replayed, 3);
    // The subscription is still live after the replay.
    let next = server.publish_one("arena/live", "tick", json!({})).await;
    assert_eq!(ws.recv_type("event").await["seq"], next);
}

#[tokio::test]
async fn replay_stop_and_unsubscribe_end_a_running_replay() {
    let server = Server::start().await;
    for i in 0..3 {
        server
            .publish_one("competition/stop", "round", json!({"i": i}))
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut ws = server.ws("/ws").await;
    ws.recv_type("connection_established").await;
    // Speed 0.01: the second event would come ~10 s after the first.
    ws.send(json!({"type":"replay","id":"a","channel":"competition/stop","speed":0.01}))
        .await;
    assert_eq!(ws.recv().await["replay"], "a");
    ws.send(json!({"type":"replay_stop","id":"a"})).await;
    let end = ws.recv().await;
    assert_eq!(
        (
            end["type"].as_str(),
            end["count"].as_u64(),
            end["stopped"].as_bool()
        ),
        (Some("replay_end"), Some(1), Some(true))
    );

    ws.send(json!({"type":"replay","id":"b","channel":"competition/stop","speed":0.01}))
        .await;
    assert_eq!(ws.recv().await["replay"], "b");
    ws.send(json!({"type":"unsubscribe","id":"u","channel":"competition/stop"}))
        .await;
    let end = ws.recv().await;
    assert_eq!(
        (end["type"].as_str(), end["id"].as_str()),
        (Some("replay_end"), Some("b"))
    );
    assert_eq!(end["stopped"], true);
    assert_eq!(ws.recv().await["type"], "unsubscribed");

    ws.send(json!({"type":"replay_stop","id":"b"})).await;
    let error = ws.recv().await;
    assert_eq!(
        (error["type"].as_str(), error["code"].as_str()),
        (Some("error"), Some("NOT_FOUND"))
    );
}

#[tokio::test]
async fn bad_replays_are_refused_with_protocol_errors() {
    let server = Server::start().await;
    let mut ws = server.ws("/ws").await;
    ws.recv_type("connection_established").await;
    let cases = [
        (
            json!({"type":"replay","id":1,"channel":"Bad Channel"}),
            "INVALID_CHANNEL",
        ),
        (
            json!({"type":"replay","id":2,"channel":"arena/a","speed":-1}),
            "INVALID_MESSAGE",
        ),
        (
            json!({"type":"replay","id":3,"channel":"arena/a","from":"x"}),
            "INVALID_MESSAGE",
        ),
        (json!({"type":"replay","id":4}), "INVALID_MESSAGE"),
        (
            json!({"type":"replay","id":5,"channel":"arena/a","from_ts":"soon"}),
            "INVALID_MESSAGE",
        ),
    ];
    for (request, code) in cases {
        let id = request["id"].clone();
        ws.send(request).await;
        let error = ws.recv().await;
        assert_eq!(
            (&error["type"], &error["code"], &error["id"]),
            (&json!("error"), &json!(code), &id)
        );
    }
    // An empty range ends at once.
    ws.send(json!({"type":"replay","id":6,"channel":"arena/a","speed":0}))
        .await;
    let end = ws.recv().await;
    assert_eq!(
        (end["type"].as_str(), end["count"].as_u64()),
        (Some("replay_end"), Some(0))
    );
}
