//! Retention: what it removes is never served, a cursor into removed events is told so, and
//! the head never goes back.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn max_events_per_channel_keeps_the_newest_and_resume_reports_expired() {
    let server = Server::start_with("[retention]\nmax_events_per_channel = 5\n").await;
    let epoch = server.health().await.unwrap()["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    for i in 1..=20u64 {
        server.publish_one("arena/r", "t", json!({ "i": i })).await;
    }
    // Another channel's events are trimmed on their own count.
    for _ in 0..3 {
        server.publish_one("arena/keep", "t", json!({})).await;
    }
    wait_until(|| async { seqs(&server.history_all("arena/r").await) == vec![16, 17, 18, 19, 20] })
        .await;
    assert_eq!(server.history_all("arena/keep").await.len(), 3);

    // A cursor into the removed part: told so, delivery starts at the earliest retained.
    let mut ws = server
        .ws(&format!("/ws/arena/r?since=2&epoch={epoch}"))
        .await;
    ws.recv_type("connection_established").await;
    let subscribed = ws.recv().await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    assert_eq!(subscribed["recovered"], false, "{subscribed}");
    assert_eq!(subscribed["reason"], "expired", "{subscribed}");
    assert_eq!(subscribed["earliest"], 16, "{subscribed}");
    for seq in 16..=20 {
        let event = ws.recv().await;
        assert_eq!(event["type"], "event", "{event}");
        assert_eq!(event["seq"], seq, "{event}");
        assert_eq!(event["data"]["i"], seq);
    }
    let caught_up = ws.recv().await;
    assert_eq!(caught_up["type"], "caught_up", "{caught_up}");
    let live = server.publish_one("arena/r", "t", json!({"i": 24})).await;
    assert_eq!(ws.recv_type("event").await["seq"], live);

    // History says the same.
    let (status, page) = server
        .get_json("/api/v1/channels/arena/r/events?since=2")
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["recovered"], false, "{page}");
    let got = seqs(page["events"].as_array().unwrap());
    assert_eq!(got.first(), Some(&16), "{page}");

    // A cursor inside what is retained is a full recovery.
    let (_, page) = server
        .get_json("/api/v1/channels/arena/r/events?since=17")
        .await;
    assert_eq!(page["recovered"], true, "{page}");
    let mut ws = server.ws("/ws/arena/r?since=17").await;
    ws.recv_type("connection_established").await;
    assert_eq!(ws.recv().await["recovered"], true);
}

#[tokio::test]
async fn max_age_removes_old_events_and_the_head_never_goes_back() {
    let mut server = Server::start_with("[retention]\nmax_age_secs = 1\n").await;
    let mut last = 0;
    for i in 1..=5u64 {
        last = server
            .publish_one("arena/old", "t", json!({ "i": i }))
            .await;
    }
    assert_eq!(server.history_all("arena/old").await.len(), 5);
    wait_until(|| async { server.history_all("arena/old").await.is_empty() }).await;

    let mut ws = server.ws("/ws/arena/old?since=2").await;
    ws.recv_type("connection_established").await;
    let subscribed = ws.recv().await;
    assert_eq!(subscribed["recovered"], false, "{subscribed}");
    assert_eq!(subscribed["reason"], "expired", "{subscribed}");
    ws.close().await;

    let status = server.terminate();
    assert!(status.success());
    server.restart().await;
    assert!(server.history_all("arena/old").await.is_empty());
    let next = server.publish_one("arena/old", "t", json!({})).await;
    assert!(
        next > last,
        "seq {next} after a restart reuses one of <= {last}"
    );

    // The same after an unclean stop once the log is emptied again.
    wait_until(|| async { server.history_all("arena/old").await.is_empty() }).await;
    server.kill();
    server.restart().await;
    let after_kill = server.publish_one("arena/old", "t", json!({})).await;
    assert!(
        after_kill > next,
        "seq {after_kill} after kill -9 reuses {next}"
    );
}
