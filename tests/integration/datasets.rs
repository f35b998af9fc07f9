//! Datasets: sealing, `dataset_ready`, metadata, exports (identical bytes, both formats,
//! gzip, anonymized), retention leaving sealed events, deletion.

use std::io::Read;

use serde_json::{json, Value};

use crate::support::*;

async fn create(server: &Server, body: Value) -> (u16, Value) {
    server
        .post_raw(
            "/api/v1/datasets",
            "application/json",
            body.to_string().into_bytes(),
        )
        .await
}

async fn export(server: &Server, path: &str, gzip: bool) -> Vec<u8> {
    let headers: &[(&str, &str)] = if gzip {
        &[("accept-encoding", "gzip")]
    } else {
        &[]
    };
    let (status, response_headers, body) = server.get_bytes(path, headers).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        response_headers.get("content-encoding").is_some(),
        gzip,
        "gzip only when accepted"
    );
    body
}

fn lines(body: &[u8]) -> Vec<Value> {
    std::str::from_utf8(body)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn msgpack_objects(body: &[u8]) -> Vec<Value> {
    let mut reader = body;
    let mut out = Vec::new();
    while !reader.is_empty() {
        out.push(rmp_serde::from_read(&mut reader).unwrap());
    }
    out
}

#[tokio::test]
async fn a_sealed_dataset_is_announced_and_exports_identically_in_every_form() {
    let server = Server::start().await;
    let mut ws = server.ws("/ws/system/datasets").await;
    ws.recv_type("subscribed").await;
    let points = [
        (
            "agent/a1",
            "training_data",
            json!({"university_id":"u1","agent_id":"a1","x":1}),
        ),
        (
            "agent/a2",
            "training_data",
            json!({"university_id":"u2","agent_id":"a2","x":2}),
        ),
        ("agent/a1", "agent_status", json!({"agent_id":"a1"})),
        (
            "agent/a1",
            "training_data",
            json!({"university_id":"u1","agent_id":"a1","x":1}),
        ),
        (
            "agent/a2",
            "training_data",
            json!({"university_id":"u2","agent_id":"a2","x":null}),
        ),
        ("arena/x", "training_data", json!({"university_id":"u9"})),
    ];
    let mut training = Vec::new();
    for (channel, event_type, data) in &points {
        let seq = server.publish_one(channel, event_type, data.clone()).await;
        if *event_type == "training_data" && channel.starts_with("agent/") {
            training.push(seq);
        }
    }
    let (status, created) = create(
        &server,
        json!({"dataset_id":"train-1","channels":["agent/a1","agent/a2"],
               "event_types":["training_data"],"since":"0"}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["dataset_id"], "train-1");
    assert_eq!(created["data_points_count"], 4);
    assert_eq!(created["source_universities"], json!(["u1", "u2"]));
    // 4 points: one duplicate, one with a null field: 2 usable.
    assert_eq!(created["quality_score"], 0.5);

    let ready = ws.recv_type("event").await;
    assert_eq!(ready["event_type"], "dataset_ready");
    assert_eq!(ready["seq"], created["dataset_ready_seq"]);
    assert_eq!(
        ready["data"],
        json!({"dataset_id":"train-1","source_universities":["u1","u2"],
               "data_points_count":4,"quality_score":0.5})
    );

    let (status, meta) = server.get_json("/api/v1/datasets/train-1").await;
    assert_eq!(status, 200);
    assert_eq!(meta["data_points_count"], 4);
    assert!(
        meta.get("anonymization_key").is_none(),
        "the key is never answered"
    );
    let (_, list) = server.get_json("/api/v1/datasets").await;
    assert_eq!(list["datasets"][0]["dataset_id"], "train-1");

    let path = "/api/v1/datasets/train-1/export?format=jsonl";
    let first = export(&server, path, false).await;
    // New events in the same channels change nothing: the dataset is sealed.
    server
        .publish_one(
            "agent/a1",
            "training_data",
            json!({"university_id":"u1","x":5}),
        )
        .await;
    assert_eq!(export(&server, path, false).await, first, "identical bytes");
    let objects = lines(&first);
    assert_eq!(seqs(&objects), training);
    assert_eq!(objects[0]["channels"], json!(["agent/a1"]));
    assert_eq!(objects[0]["data"], points[0].2);
    assert!(objects[0].get("channel").is_none());
    for key in ["seq", "id", "channels", "event_type", "ts", "data"] {
        assert!(objects[0].get(key).is_some(), "full event object: {key}");
    }

    let mp_path = "/api/v1/datasets/train-1/export?format=msgpack";
    let mp = export(&server, mp_path, false).await;
    assert_eq!(export(&server, mp_path, false).await, mp);
    assert_eq!(
        msgpack_objects(&mp),
        objects,
        "both formats carry the same objects"
    );

    let gz = export(&server, path, true).await;
    assert_eq!(
        export(&server, path, true).await,
        gz,
        "identical gzip bytes"
    );
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut plain)
        .unwrap();
    assert_eq!(plain, first);

    let anon_path = "/api/v1/datasets/train-1/export?format=jsonl&anonymize=true";
    let anon = export(&server, anon_path, false).await;
    assert_eq!(
        export(&server, anon_path, false).await,
        anon,
        "stable within the dataset"
    );
    let anon = lines(&anon);
    assert_eq!(seqs(&anon), training);
    let a1 = anon[0]["data"]["agent_id"].as_str().unwrap().to_string();
    assert!(a1.starts_with("anon_"), "{a1}");
    assert_eq!(
        anon[2]["data"]["agent_id"],
        a1.as_str(),
        "same agent, same pseudonym"
    );
    assert_ne!(anon[1]["data"]["agent_id"], a1.as_str());
    assert_eq!(anon[0]["channels"], json!([format!("agent/{a1}")]));
    assert_eq!(anon[0]["data"]["x"], 1, "other fields unchanged");
}

#[tokio::test]
async fn retention_leaves_sealed_events_until_the_dataset_is_deleted() {
    let server = Server::start_with("[retention]\nmax_events_per_channel = 3\n").await;
    for i in 0..3 {
        server
            .publish_one("agent/r", "training_data", json!({"i": i}))
            .await;
    }
    let (status, created) =
        create(&server, json!({"dataset_id":"kept","channels":["agent/r"]})).await;
    assert_eq!(status, 201, "{created}");
    let path = "/api/v1/datasets/kept/export";
    let sealed = export(&server, path, false).await;
    let sealed_seqs = seqs(&lines(&sealed));
    assert!(!sealed_seqs.is_empty());
    for i in 0..10 {
        server
            .publish_one("agent/r", "training_data", json!({"i": 100 + i}))
            .await;
    }
    // Retention runs every second: wait until the channel no longer holds the sealed events.
    let last_sealed = *sealed_seqs.last().unwrap();
    wait_until(|| async {
        let (_, page) = server
            .get_json("/api/v1/channels/agent/r/events?limit=100")
            .await;
        page["events"][0]["seq"]
            .as_u64()
            .is_some_and(|s| s > last_sealed)
    })
    .await;
    assert_eq!(
        export(&server, path, false).await,
        sealed,
        "still exportable, unchanged"
    );

    let response = reqwest::Client::new()
        .delete(server.url("/api/v1/datasets/kept"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(server.get_json("/api/v1/datasets/kept").await.0, 404);
    assert_eq!(server.get_bytes(path, &[]).await.0, 404);
    // The id is free again, and a new seal sees only what retention kept.
    let (status, again) =
        create(&server, json!({"dataset_id":"kept","channels":["agent/r"]})).await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(again["data_points_count"], 3);
}

#[tokio::test]
async fn bad_dataset_requests_get_clear_errors() {
    let server = Server::start().await;
    server
        .publish_one("agent/e", "training_data", json!({}))
        .await;
    let ok = json!({"dataset_id":"d1","channels":["agent/e"]});
    assert_eq!(create(&server, ok.clone()).await.0, 201);
    let cases = [
        (ok, 409),
        (json!({"dataset_id":"d2","channels":["Bad"]}), 422),
        (json!({"dataset_id":"d3","channels":[]}), 422),
        (json!({"dataset_id":"a/b","channels":["agent/e"]}), 422),
        (json!({"dataset_id":"d4"}), 400),
        (
            json!({"dataset_id":"d5","channels":["agent/e"],"filters":3}),
            400,
        ),
    ];
    for (body, status) in cases {
        let (got, answer) = create(&server, body.clone()).await;
        assert_eq!(got, status, "{body} -> {answer}");
        assert!(answer["error"]["code"].is_string(), "{answer}");
    }
    assert_eq!(server.get_json("/api/v1/datasets/nope").await.0, 404);
    let (status, _, _) = server
        .get_bytes("/api/v1/datasets/d1/export?format=csv", &[])
        .await;
    assert_eq!(status, 400);
}
