//! Operations: metrics that move with traffic, the admin API, broadcasts, audit lines,
//! JSON logs, and shutdown on a second signal.

use serde_json::{json, Value};

use crate::support::*;

/// The value of a sample line `name{labels} value` (or `name value`) in a scrape.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn scrape(server: &Server) -> String {
    let (status, headers, body) = server.get_bytes("/metrics", &[]).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    String::from_utf8(body).unwrap()
}

#[tokio::test]
async fn metrics_follow_the_traffic() {
    let server = Server::start().await;
    let before = scrape(&server).await;
    assert_eq!(sample(&before, "streamlog_connections_active"), Some(0.0));
    assert_eq!(
        sample(&before, "streamlog_events_appended_total"),
        Some(0.0)
    );

    let mut ws = server.ws("/ws").await;
    ws.subscribe("arena/m", json!({})).await;
    ws.subscribe("agent/m", json!({})).await;
    for i in 0..3 {
        server.publish_one("arena/m", "t", json!({"i": i})).await;
    }
    ws.events(3).await;
    ws.send(json!({"type": "nope", "id": 1})).await;
    ws.recv_type("error").await;

    let during = scrape(&server).await;
    assert_eq!(sample(&during, "streamlog_connections_active"), Some(1.0));
    assert_eq!(sample(&during, "streamlog_subscriptions_active"), Some(2.0));
    assert_eq!(
        sample(&during, "streamlog_subscriptions_by_kind{kind=\"arena\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&during, "streamlog_subscriptions_by_kind{kind=\"agent\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&during, "streamlog_events_appended_total"),
        Some(3.0)
    );
    assert_eq!(
        sample(&during, "streamlog_events_delivered_total"),
        Some(3.0)
    );
    assert!(
        sample(&during, "streamlog_messages_sent_total").unwrap() >= 7.0,
        "{during}"
    );
    assert_eq!(
        sample(&during, "streamlog_delivery_latency_seconds_count"),
        Some(3.0)
    );
    assert_eq!(
        sample(&during, "streamlog_errors_total{code=\"UNKNOWN_TYPE\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&during, "streamlog_append_durable_seconds_count"),
        Some(3.0)
    );
    assert_eq!(sample(&during, "streamlog_log_head"), Some(3.0));
    assert!(sample(&during, "streamlog_log_size_bytes").unwrap() > 0.0);
    assert_eq!(
        sample(&during, "streamlog_retained_index_entries"),
        Some(3.0)
    );

    ws.close().await;
    wait_until(|| async {
        let text = scrape(&server).await;
        sample(&text, "streamlog_connections_active") == Some(0.0)
            && sample(&text, "streamlog_connections_closed_total{code=\"client\"}") == Some(1.0)
            && sample(&text, "streamlog_subscriptions_active") == Some(0.0)
    })
    .await;
    assert_eq!(
        sample(&during, "streamlog_connections_opened_total"),
        Some(1.0)
    );
    assert!(sample(&during, "streamlog_bytes_sent_total").unwrap() > 300.0);
    assert_eq!(
        sample(&during, "streamlog_append_group_events_count"),
        Some(3.0)
    );
    assert_eq!(sample(&during, "streamlog_queue_depth"), Some(0.0));
    // A refused handshake is counted by its HTTP status.
    assert_eq!(
        Ws::connect_refused(&server.ws_url("/ws?format=xml")).await,
        400
    );
    let refused = scrape(&server).await;
    assert_eq!(
        sample(
            &refused,
            "streamlog_connections_refused_total{code=\"400\"}"
        ),
        Some(1.0)
    );
    // HTTP errors are counted too.
    let (status, _) = server
        .post_raw("/api/v1/events", "application/json", b"{".to_vec())
        .await;
    assert_eq!(status, 400);
    let after = scrape(&server).await;
    // The refused handshake above and this body.
    assert_eq!(
        sample(&after, "streamlog_errors_total{code=\"INVALID_MESSAGE\"}"),
        Some(2.0)
    );
}

#[tokio::test]
async fn admin_lists_and_disconnects_connections_and_lists_channels() {
    let server = Server::start().await;
    let mut ws = server.ws("/ws/arena/adm").await;
    let hello = ws.recv_type("connection_established").await;
    let client_id = hello["client_id"].as_str().unwrap().to_string();
    ws.recv_type("subscribed").await;
    server.publish_one("arena/adm", "t", json!({})).await;
    server.publish_one("agent/x", "t", json!({})).await;
    ws.recv_type("event").await;

    let (status, list) = server.get_json("/api/v1/connections").await;
    assert_eq!(status, 200, "{list}");
    let conns = list["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 1);
    let c = &conns[0];
    assert_eq!(c["client_id"], client_id.as_str());
    assert_eq!(c["user"], "anonymous");
    assert!(c["remote_addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(c["subscriptions"], json!(["arena/adm"]));
    assert_eq!(c["queue_depth"], 0);
    assert!(c["messages_sent"].as_u64().unwrap() >= 3, "{c}");
    assert!(c["bytes_sent"].as_u64().unwrap() > 100, "{c}");
    assert!(c["connected_at"].as_str().unwrap().ends_with('Z'));

    let (status, channels) = server.get_json("/api/v1/channels").await;
    assert_eq!(status, 200);
    assert_eq!(
        channels["channels"],
        json!([
            {"channel": "agent/x", "head": 2, "retained": 1, "removed_upto": 0, "subscribers": 0},
            {"channel": "arena/adm", "head": 1, "retained": 1, "removed_upto": 0, "subscribers": 1},
        ])
    );

    let response = reqwest::Client::new()
        .delete(server.url(&format!(
            "/api/v1/connections/{client_id}?reason=maintenance"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(ws.closed().await, (1008, "maintenance".to_string()));
    let missing = reqwest::Client::new()
        .delete(server.url("/api/v1/connections/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    wait_until(|| async {
        server
            .log_text()
            .contains("admin disconnected a connection")
    })
    .await;
    assert!(server.log_text().contains("connection accepted"));
}

#[tokio::test]
async fn broadcast_reaches_every_connection_and_is_logged_for_resume() {
    let server = Server::start().await;
    let mut a = server.ws("/ws").await;
    a.recv_type("connection_established").await;
    let mut b = server.ws("/ws/arena/q").await;
    b.recv_type("subscribed").await;
    let (status, answer) = server
        .post_raw(
            "/api/v1/broadcast",
            "application/json",
            json!({"level": "warning", "message": "maintenance at 18:00", "affected_components": ["replay"]})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let seq = answer["seq"].as_u64().unwrap();
    for ws in [&mut a, &mut b] {
        let event = ws.recv_type("event").await;
        assert_eq!(event["seq"], seq);
        assert_eq!(event["channel"], "system/broadcast");
        assert_eq!(event["event_type"], "broadcast");
        assert_eq!(
            event["data"],
            json!({"level": "warning", "message": "maintenance at 18:00", "affected_components": ["replay"]})
        );
    }
    // It is in the log: a client that was away reads it back.
    let history = server.history_all("system/broadcast").await;
    assert_eq!(history.len(), 1);
    let (status, error) = server
        .post_raw(
            "/api/v1/broadcast",
            "application/json",
            br#"{"level":"loud","message":"x"}"#.to_vec(),
        )
        .await;
    assert_eq!(status, 422, "{error}");
    let (status, _) = server
        .post_raw("/api/v1/broadcast", "application/json", b"{}".to_vec())
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn json_log_format_writes_json_lines() {
    let server = Server::start_with_env("", &[("STREAMLOG_LOG_FORMAT", "json")]).await;
    let mut ws = server.ws("/ws").await;
    ws.recv_type("connection_established").await;
    wait_until(|| async { server.log_text().contains("connection accepted") }).await;
    let text = server.log_text();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3);
    for line in lines {
        let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(value["level"].is_string(), "{line}");
    }
    assert!(
        text.contains("\"auth_mode\":\"none\""),
        "the mode-none warning names the mode"
    );
}

#[tokio::test]
async fn a_second_signal_exits_at_once_and_the_log_survives() {
    let mut server = Server::start_with("[shutdown]\ndrain_timeout_secs = 60\n").await;
    for i in 0..5 {
        server.publish_one("arena/s", "t", json!({"i": i})).await;
    }
    // A client that never reads keeps nothing waiting: the session ends on its own. Signal
    // twice and the process must be gone quickly either way.
    let _idle = server.ws("/ws/arena/s").await;
    signal(server.pid(), "TERM");
    signal(server.pid(), "TERM");
    let started = std::time::Instant::now();
    let status = server.wait_exit();
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert!(
        status.code() == Some(0) || status.code() == Some(130),
        "{status:?}"
    );
    server.restart().await;
    assert_eq!(server.history_all("arena/s").await.len(), 5);
    assert_eq!(server.publish_one("arena/s", "t", json!({})).await, 6);
}

#[tokio::test]
async fn a_reader_that_falls_behind_is_counted_and_still_served() {
    let server = Server::start_with("[delivery]\nqueue_capacity = 2\n").await;
    let mut slow = server.ws("/ws/arena/lag").await;
    slow.recv_type("subscribed").await;
    // 16 MB in 40 groups while the reader does not read: the socket fills, the session
    // blocks on it, and its queue of 2 groups overflows.
    let pad = "x".repeat(8000);
    for b in 0..40 {
        let batch: Vec<Value> = (0..50)
            .map(|i| json!({"channel": "arena/lag", "event_type": "t", "data": {"i": b * 50 + i, "pad": pad}}))
            .collect();
        assert_eq!(server.publish(json!(batch)).await.0, 200);
    }
    assert_eq!(
        seqs(&slow.events(2000).await),
        (1..=2000).collect::<Vec<_>>()
    );
    let text = scrape(&server).await;
    assert!(
        sample(&text, "streamlog_lag_recoveries_total").unwrap() >= 1.0,
        "{text}"
    );
}
