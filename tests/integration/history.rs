//! `GET /api/v1/channels/{kind}/{id}/events`: pages, ranges, type filters, the three formats,
//! gzip, and its errors.

use std::io::Read;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::support::*;

const TYPES: [&str; 3] = ["a", "b", "c"];

/// Publishes 25 events to `arena/h` (types a, b, c in turn), interleaved with events of other
/// channels so that the channel's seqs are not contiguous. Returns the channel's seqs.
async fn fill(server: &Server) -> Vec<u64> {
    let mut mine = Vec::new();
    for i in 0..25u64 {
        let event_type = TYPES[i as usize % 3];
        mine.push(
            server
                .publish_one(
                    "arena/h",
                    event_type,
                    json!({ "i": i, "nested": {"k": [i]} }),
                )
                .await,
        );
        if i % 4 == 0 {
            server.publish_one("arena/noise", "a", json!({})).await;
        }
    }
    mine
}

fn events_of(page: &Value) -> &Vec<Value> {
    page["events"].as_array().expect("events array")
}

#[tokio::test]
async fn pages_walk_every_event_with_exact_fields() {
    let server = Server::start().await;
    let mine = fill(&server).await;

    let mut since = "0".to_string();
    let mut walked = Vec::new();
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages <= 10, "pagination does not end");
        let (status, page) = server
            .get_json(&format!(
                "/api/v1/channels/arena/h/events?since={since}&limit=10"
            ))
            .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["recovered"], true, "{page}");
        let events = events_of(&page);
        assert!(events.len() <= 10);
        let next = page["next"].as_str().expect("next is a string").to_string();
        if events.is_empty() {
            assert_eq!(next, since, "an empty page keeps the cursor");
            break;
        }
        assert_eq!(
            next,
            events.last().unwrap()["seq"].to_string(),
            "next is the last seq"
        );
        walked.extend(events.iter().cloned());
        since = next;
    }
    assert_eq!(pages, 4, "10 + 10 + 5, then an empty page");
    assert_eq!(seqs(&walked), mine);

    for (i, event) in walked.iter().enumerate() {
        let object = event.as_object().unwrap();
        let mut keys: Vec<_> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "channel",
                "channels",
                "data",
                "event_type",
                "id",
                "seq",
                "ts"
            ],
            "{event}"
        );
        assert_eq!(event["channel"], "arena/h");
        assert_eq!(event["channels"], json!(["arena/h"]));
        assert_eq!(event["event_type"], TYPES[i % 3]);
        assert_eq!(event["data"], json!({ "i": i, "nested": {"k": [i]} }));
        assert!(
            event["id"].as_str().is_some_and(|id| !id.is_empty()),
            "{event}"
        );
        let ts = event["ts"].as_str().unwrap();
        assert!(ts.ends_with('Z') && ts.len() == 24, "{ts}");
    }
    // Server-made ids are distinct.
    let mut ids: Vec<_> = walked.iter().map(|e| e["id"].to_string()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), walked.len());

    // Default page, and a channel with nothing in it.
    let (_, page) = server.get_json("/api/v1/channels/arena/h/events").await;
    assert_eq!(seqs(events_of(&page)), mine);
    let (status, page) = server.get_json("/api/v1/channels/arena/empty/events").await;
    assert_eq!(status, 200);
    assert_eq!(page["events"], json!([]));
}

#[tokio::test]
async fn until_and_types_select_a_range() {
    let server = Server::start().await;
    let mine = fill(&server).await;

    let since = mine[4];
    let until = mine[14];
    let (status, page) = server
        .get_json(&format!(
            "/api/v1/channels/arena/h/events?since={since}&until={until}"
        ))
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        seqs(events_of(&page)),
        mine[5..=14].to_vec(),
        "since < seq <= until"
    );

    let (_, page) = server
        .get_json("/api/v1/channels/arena/h/events?types=a,c&limit=1000")
        .await;
    let got = events_of(&page);
    let want: Vec<u64> = mine
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 1)
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(seqs(got), want);
    assert!(got.iter().all(|e| e["event_type"] != "b"));

    // types with a page limit: the pages still cover everything, in order.
    let mut since = "0".to_string();
    let mut walked = Vec::new();
    for _ in 0..20 {
        let (_, page) = server
            .get_json(&format!(
                "/api/v1/channels/arena/h/events?types=b&limit=3&since={since}"
            ))
            .await;
        let events = events_of(&page);
        if events.is_empty() {
            break;
        }
        walked.extend(seqs(events));
        since = page["next"].as_str().unwrap().to_string();
    }
    let want_b: Vec<u64> = mine.iter().skip(1).step_by(3).copied().collect();
    assert_eq!(walked, want_b);
}

#[tokio::test]
async fn ndjson_msgpack_and_gzip_carry_the_same_events() {
    let server = Server::start().await;
    let mine = fill(&server).await;
    let base = "/api/v1/channels/arena/h/events?limit=1000";
    let (_, page) = server.get_json(base).await;
    let reference = events_of(&page).clone();
    assert_eq!(seqs(&reference), mine);

    let (status, headers, body) = server
        .get_bytes(&format!("{base}&format=ndjson"), &[])
        .await;
    assert_eq!(status, 200);
    let content_type = headers["content-type"].to_str().unwrap();
    assert!(content_type.contains("ndjson"), "{content_type}");
    let text = String::from_utf8(body).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines, reference);
    assert_eq!(text.lines().count(), 25);

    let (status, headers, body) = server
        .get_bytes(&format!("{base}&format=msgpack"), &[])
        .await;
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .contains("msgpack"));
    let decoded = decode_msgpack_stream(&body);
    assert_eq!(decoded, reference);

    for format in ["json", "ndjson", "msgpack"] {
        let path = format!("{base}&format={format}");
        let (_, _, plain) = server.get_bytes(&path, &[]).await;
        let (status, headers, zipped) = server
            .get_bytes(&path, &[("accept-encoding", "gzip")])
            .await;
        assert_eq!(status, 200);
        assert_eq!(
            headers.get("content-encoding").map(|v| v.to_str().unwrap()),
            Some("gzip"),
            "{format}"
        );
        assert_eq!(&zipped[..2], &[0x1f, 0x8b], "{format}: a gzip stream");
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(&zipped[..])
            .read_to_end(&mut unzipped)
            .expect("valid gzip");
        assert_eq!(unzipped, plain, "{format}: gzip of the same bytes");
    }
}

fn decode_msgpack_stream(bytes: &[u8]) -> Vec<Value> {
    let mut deserializer = rmp_serde::Deserializer::new(std::io::Cursor::new(bytes));
    let mut out = Vec::new();
    while (deserializer.position() as usize) < bytes.len() {
        assert!(out.len() <= bytes.len(), "decoding does not advance");
        out.push(Value::deserialize(&mut deserializer).expect("a MessagePack map"));
    }
    out
}

#[tokio::test]
async fn bad_parameters_are_refused_with_a_json_error() {
    let server = Server::start().await;
    server.publish_one("arena/h", "a", json!({})).await;
    for query in [
        "limit=abc",
        "limit=-1",
        "limit=1.5",
        "since=abc",
        "since=-3",
        "until=x",
    ] {
        let (status, body) = server
            .get_json(&format!("/api/v1/channels/arena/h/events?{query}"))
            .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body["error"]["code"].is_string(), "{query}: {body}");
        assert!(body["error"]["message"].is_string(), "{query}: {body}");
    }
    for path in [
        "/api/v1/channels/Arena/h/events",
        "/api/v1/channels/arena/bad%20id/events",
        "/api/v1/channels/9arena/h/events",
    ] {
        let (status, body) = server.get_json(path).await;
        assert_eq!(status, 422, "{path}: {body}");
        assert_eq!(body["error"]["code"], "INVALID_CHANNEL", "{path}: {body}");
        assert!(body["error"]["message"].is_string());
    }
}
