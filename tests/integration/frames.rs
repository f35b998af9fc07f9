//! Negotiated frames (`format=msgpack`, `compress=gzip`, `delta=true`) and batches on
//! high-frequency channels. Every frame is decoded here with libraries other than the
//! server's (rmpv for MessagePack, libflate for gzip) and compared with the JSON form.

use std::{
    collections::{BTreeMap, HashMap},
    io::Read,
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::{tungstenite::Message, MaybeTlsStream, WebSocketStream};

use crate::support::{Server, WAIT};

const CONFIG: &str = r#"
[frames]
gzip_min_bytes = 200

[[high_frequency]]
pattern = "arena/*"
batch_max_delay_ms = 30
batch_max_messages = 16
"#;

/// How a frame came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    MsgPack,
    Gzip,
}

/// A WebSocket client that decodes every frame mode on its own.
struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    msgpack: bool,
    kinds: Vec<Kind>,
    payload_bytes: usize,
}

impl Client {
    async fn connect(server: &Server, path: &str, query: &str) -> Client {
        let url = server.ws_url(&format!("{path}?{query}"));
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Client {
            ws,
            msgpack: query.contains("format=msgpack"),
            kinds: Vec::new(),
            payload_bytes: 0,
        }
    }

    /// Sends a client message, as MessagePack on msgpack connections.
    async fn send(&mut self, message: Value) {
        let frame = if self.msgpack {
            let mut bytes = Vec::new();
            rmpv::encode::write_value(&mut bytes, &to_rmpv(&message)).unwrap();
            Message::binary(bytes)
        } else {
            Message::text(message.to_string())
        };
        self.ws.send(frame).await.unwrap();
    }

    /// The next server message, decoded.
    async fn recv(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a message within 10 s")
                .expect("open")
                .expect("a frame");
            let (kind, bytes) = match frame {
                Message::Text(text) => (Kind::Text, text.as_bytes().to_vec()),
                Message::Binary(bytes) if bytes.starts_with(&[0x1f, 0x8b]) => {
                    let mut out = Vec::new();
                    libflate::gzip::Decoder::new(&bytes[..])
                        .unwrap()
                        .read_to_end(&mut out)
                        .unwrap();
                    self.payload_bytes += bytes.len();
                    self.kinds.push(Kind::Gzip);
                    return decode(&out, self.msgpack);
                }
                Message::Binary(bytes) => (Kind::MsgPack, bytes.to_vec()),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            };
            assert_eq!(
                kind == Kind::MsgPack,
                self.msgpack,
                "binary frames exactly on msgpack connections"
            );
            self.payload_bytes += bytes.len();
            self.kinds.push(kind);
            return decode(&bytes, self.msgpack);
        }
    }

    async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let message = self.recv().await;
            if message["type"] == kind {
                return message;
            }
        }
    }

    async fn subscribe(&mut self, channel: &str, extra: Value) -> Value {
        let mut message = json!({"type":"subscribe","id":channel,"channel":channel});
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            message[k] = v;
        }
        self.send(message).await;
        self.recv_type("subscribed").await
    }

    /// Event and delta messages (batches opened) until `count` arrived; each with whether
    /// it came inside a batch.
    async fn deliveries(&mut self, count: usize) -> Vec<(Value, bool)> {
        let mut out = Vec::new();
        while out.len() < count {
            let message = self.recv().await;
            match message["type"].as_str() {
                Some("event" | "delta") => out.push((message, false)),
                Some("batch") => {
                    let inner = message["messages"].as_array().unwrap();
                    assert!(!inner.is_empty(), "no empty batches");
                    out.extend(inner.iter().map(|m| (m.clone(), true)));
                }
                _ => {}
            }
        }
        assert_eq!(out.len(), count, "no more than expected");
        out
    }
}

fn decode(bytes: &[u8], msgpack: bool) -> Value {
    if msgpack {
        let value = rmpv::decode::read_value(&mut &bytes[..]).expect("one MessagePack value");
        assert!(value.is_map(), "a MessagePack map");
        to_json(value)
    } else {
        serde_json::from_slice(bytes).expect("JSON")
    }
}

fn to_json(value: rmpv::Value) -> Value {
    use rmpv::Value as M;
    match value {
        M::Nil => Value::Null,
        M::Boolean(b) => Value::Bool(b),
        M::Integer(i) => match i.as_u64() {
            Some(u) => u.into(),
            None => i.as_i64().expect("an integer").into(),
        },
        M::F32(f) => json!(f as f64),
        M::F64(f) => json!(f),
        M::String(s) => Value::String(s.into_str().expect("UTF-8")),
        M::Array(items) => Value::Array(items.into_iter().map(to_json).collect()),
        M::Map(entries) => Value::Object(
            entries
                .into_iter()
                .map(|(k, v)| (k.as_str().expect("string keys").to_string(), to_json(v)))
                .collect(),
        ),
        other => panic!("unexpected MessagePack value {other:?}"),
    }
}

fn to_rmpv(value: &Value) -> rmpv::Value {
    use rmpv::Value as M;
    match value {
        Value::Null => M::Nil,
        Value::Bool(b) => M::Boolean(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => M::from(u),
            (_, Some(i)) => M::from(i),
            _ => M::F64(n.as_f64().unwrap()),
        },
        Value::String(s) => M::from(s.as_str()),
        Value::Array(items) => M::Array(items.iter().map(to_rmpv).collect()),
        Value::Object(map) => M::Map(
            map.iter()
                .map(|(k, v)| (M::from(k.as_str()), to_rmpv(v)))
                .collect(),
        ),
    }
}

/// Data that exercises every JSON kind.
fn rich_data(i: u64) -> Value {
    json!({
        "i": i, "neg": -(i as i64) - 1, "big": u64::MAX - i, "f": i as f64 + 0.25,
        "s": format!("naïve ☃ \"quoted\" {i}"), "t": i % 2 == 0, "n": null,
        "nested": {"list": [1, "two", {"three": [3.5]}], "empty": {}},
        "pad": "x".repeat((i % 5) as usize * 60),
    })
}

const MODES: [&str; 5] = [
    "format=json",
    "format=msgpack",
    "format=json&compress=gzip",
    "format=msgpack&compress=gzip",
    "format=msgpack&compress=gzip&delta=true",
];

#[tokio::test]
async fn every_frame_mode_decodes_to_the_json_form() {
    let server = Server::start_with(CONFIG).await;
    let mut clients = Vec::new();
    for query in MODES {
        let mut client = Client::connect(&server, "/ws", query).await;
        let hello = client.recv().await;
        assert_eq!(hello["type"], "connection_established", "{query}");
        assert!(hello["epoch"].is_string());
        for channel in ["competition/c1", "arena/a1"] {
            let subscribed = client.subscribe(channel, json!({})).await;
            assert_eq!(subscribed["recovered"], true, "{query}");
        }
        clients.push(client);
    }
    // Unbatched and batched channels, and an event in both (delivered once).
    let mut published = BTreeMap::new();
    for i in 0..40u64 {
        let channels = match i % 3 {
            0 => json!(["competition/c1"]),
            1 => json!(["arena/a1"]),
            _ => json!(["arena/a1", "competition/c1"]),
        };
        let body =
            json!({"channels": channels, "event_type": "competition_round", "data": rich_data(i)});
        let (status, answer) = server.publish(body).await;
        assert_eq!(status, 200, "{answer}");
        published.insert(answer["seq"].as_u64().unwrap(), rich_data(i));
    }
    let mut reference: Option<Vec<Value>> = None;
    for (query, client) in MODES.iter().zip(clients.iter_mut()) {
        let mut got: Vec<Value> = client
            .deliveries(published.len())
            .await
            .into_iter()
            .map(|(m, _)| m)
            .collect();
        got.sort_by_key(|m| m["seq"].as_u64());
        let seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(
            seqs,
            published.keys().copied().collect::<Vec<_>>(),
            "{query}"
        );
        if !query.contains("delta") {
            for message in &got {
                let seq = message["seq"].as_u64().unwrap();
                assert_eq!(message["type"], "event", "{query}");
                assert_eq!(message["data"], published[&seq], "{query}: data of {seq}");
            }
            match &reference {
                None => reference = Some(got),
                Some(reference) => assert_eq!(&got, reference, "{query} equals plain JSON"),
            }
        }
        if query.contains("gzip") {
            assert!(
                client.kinds.contains(&Kind::Gzip),
                "{query}: large frames are gzipped"
            );
        }
        let plain = if query.contains("msgpack") {
            Kind::MsgPack
        } else {
            Kind::Text
        };
        assert!(
            client.kinds.contains(&plain),
            "{query}: small frames stay plain"
        );
    }
}

#[tokio::test]
async fn msgpack_clients_publish_and_ping_in_msgpack() {
    let server = Server::start_with(CONFIG).await;
    let mut client = Client::connect(&server, "/ws/competition/c9", "format=msgpack").await;
    assert_eq!(client.recv().await["type"], "connection_established");
    assert_eq!(client.recv().await["type"], "subscribed");
    client
        .send(
            json!({"type":"publish","id":"p1","channel":"competition/c9",
                     "event_type":"competition_start","data":{"agents":["x","y"]}}),
        )
        .await;
    let mut published = None;
    let mut event = None;
    while published.is_none() || event.is_none() {
        let message = client.recv().await;
        match message["type"].as_str() {
            Some("published") => published = Some(message),
            Some("event") => event = Some(message),
            other => panic!("unexpected {other:?}"),
        }
    }
    let (published, event) = (published.unwrap(), event.unwrap());
    assert_eq!(published["id"], "p1");
    assert_eq!(event["seq"], published["seq"]);
    assert_eq!(event["data"], json!({"agents":["x","y"]}));
    client.send(json!({"type":"ping","id":7})).await;
    assert_eq!(client.recv().await, json!({"type":"pong","id":7}));
    // A malformed MessagePack frame is an error answer; the connection stays usable.
    client
        .ws
        .send(Message::binary(vec![0xc1, 0x00]))
        .await
        .unwrap();
    let error = client.recv().await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "INVALID_MESSAGE");
    client.send(json!({"type":"ping","id":"after"})).await;
    assert_eq!(client.recv().await["id"], "after");
}

#[tokio::test]
async fn unknown_frame_options_are_refused_at_the_handshake() {
    let server = Server::start().await;
    for query in ["format=xml", "compress=br", "delta=maybe"] {
        let url = server.ws_url(&format!("/ws?{query}"));
        let status = crate::support::Ws::connect_refused(&url).await;
        assert_eq!(status, 400, "{query}");
    }
}

/// Rebuilds `data` from events and deltas as a client does: a delta applies to the data
/// of the event with seq `base`.
struct Rebuilder {
    data_by_seq: HashMap<u64, Value>,
    /// Deltas in a row per (channel, agent) since the last full event.
    run: HashMap<String, u32>,
    max_run: u32,
    deltas: usize,
}

impl Rebuilder {
    fn new() -> Self {
        Self {
            data_by_seq: HashMap::new(),
            run: HashMap::new(),
            max_run: 0,
            deltas: 0,
        }
    }

    fn take(&mut self, message: &Value) -> (u64, Value) {
        let seq = message["seq"].as_u64().unwrap();
        let data = match message["type"].as_str().unwrap() {
            "event" => message["data"].clone(),
            "delta" => {
                let base = message["base"].as_u64().unwrap();
                assert!(base < seq, "a delta's base comes before it");
                let mut data = self.data_by_seq[&base].as_object().unwrap().clone();
                for field in message["unset"].as_array().unwrap() {
                    data.remove(field.as_str().unwrap());
                }
                for (k, v) in message["set"].as_object().unwrap() {
                    data.insert(k.clone(), v.clone());
                }
                Value::Object(data)
            }
            other => panic!("unexpected {other}"),
        };
        let key = format!("{}|{}", message["channel"], data["agent_id"]);
        let run = self.run.entry(key).or_default();
        if message["type"] == "delta" {
            *run += 1;
            self.deltas += 1;
        } else {
            *run = 0;
        }
        self.max_run = self.max_run.max(*run);
        self.data_by_seq.insert(seq, data.clone());
        (seq, data)
    }
}

fn agent_status(agent: usize, step: u64) -> Value {
    json!({
        "agent_id": format!("agent-{agent}"), "state": if step % 10 < 7 { "playing" } else { "thinking" },
        "competition_id": "c7", "elo": 1500 + agent * 10, "model": "ppo-v3", "university": "u1",
        "step": step, "cpu": (step % 13) as f64 / 10.0,
        "extra": if step % 25 == 0 { json!(null) } else { json!("x") },
    })
}

#[tokio::test]
async fn delta_frames_rebuild_the_published_data_across_resumes() {
    let server = Server::start_with(CONFIG).await;
    let channel = "agent/pool";
    let mut modes: Vec<(Client, Rebuilder, &str)> = Vec::new();
    for query in ["delta=true", "delta=true&format=msgpack&compress=gzip"] {
        let mut client = Client::connect(&server, &format!("/ws/{channel}"), query).await;
        assert_eq!(client.recv_type("subscribed").await["recovered"], true);
        modes.push((client, Rebuilder::new(), query));
    }
    let mut plain = Client::connect(&server, &format!("/ws/{channel}"), "").await;
    plain.recv_type("subscribed").await;

    let mut expected = BTreeMap::new();
    let publish = |from: u64, to: u64| {
        let server = &server;
        async move {
            let mut batch = Vec::new();
            for step in from..to {
                batch.push(json!({"channel": channel, "event_type": "agent_status",
                                  "data": agent_status(step as usize % 3, step)}));
            }
            let (status, answer) = server.publish(Value::Array(batch.clone())).await;
            assert_eq!(status, 200, "{answer}");
            let seqs: Vec<u64> = serde_json::from_value(answer["seqs"].clone()).unwrap();
            seqs.into_iter()
                .zip(batch.into_iter().map(|e| e["data"].clone()))
                .collect::<Vec<_>>()
        }
    };
    for (seq, data) in publish(0, 360).await {
        expected.insert(seq, data);
    }
    let total_plain: usize = {
        plain.deliveries(360).await;
        plain.payload_bytes
    };
    let mut resume_at = 0;
    for (client, rebuilder, query) in modes.iter_mut() {
        for (message, _) in client.deliveries(360).await {
            let (seq, data) = rebuilder.take(&message);
            assert_eq!(data, expected[&seq], "{query}: seq {seq} rebuilt exactly");
            resume_at = seq;
        }
        assert!(
            rebuilder.deltas > 300,
            "{query}: mostly deltas ({})",
            rebuilder.deltas
        );
        assert!(
            rebuilder.max_run <= 100,
            "{query}: a full event at least every 100 deltas"
        );
        assert!(
            client.payload_bytes * 10 < total_plain * 7,
            "{query}: {} bytes against {total_plain} plain",
            client.payload_bytes
        );
    }
    // Resume halfway back: the first message of each key is a full event again.
    let since = resume_at - 180;
    let more = publish(360, 420).await;
    for (seq, data) in &more {
        expected.insert(*seq, data.clone());
    }
    for (_, _, query) in &modes {
        let mut client = Client::connect(
            &server,
            &format!("/ws/{channel}"),
            &format!("{query}&since={since}"),
        )
        .await;
        let subscribed = client.recv_type("subscribed").await;
        assert_eq!(subscribed["recovered"], true);
        let mut rebuilder = Rebuilder::new();
        let mut seen_keys = std::collections::HashSet::new();
        let mut last = since;
        for (message, _) in client.deliveries(180 + 60).await {
            let key = message_key(&message, &rebuilder);
            if seen_keys.insert(key) {
                assert_eq!(
                    message["type"], "event",
                    "{query}: full first after a resume"
                );
            }
            let (seq, data) = rebuilder.take(&message);
            assert!(seq > last, "{query}: in order, no duplicate");
            last = seq;
            assert_eq!(data, expected[&seq], "{query}: seq {seq} after resume");
        }
        assert!(
            rebuilder.deltas > 150,
            "{query}: deltas resume after the full events"
        );
    }
}

fn message_key(message: &Value, rebuilder: &Rebuilder) -> String {
    let agent = match message["type"].as_str() {
        Some("event") => message["data"]["agent_id"].clone(),
        _ => rebuilder.data_by_seq[&message["base"].as_u64().unwrap()]["agent_id"].clone(),
    };
    format!("{}|{agent}", message["channel"])
}

#[tokio::test]
async fn batches_keep_seq_order_lose_nothing_and_resume_in_batches() {
    let server = Server::start_with(CONFIG).await;
    let mut live = Client::connect(&server, "/ws/arena/a1", "").await;
    live.recv_type("subscribed").await;
    let mut filtered = Client::connect(&server, "/ws/arena/a1", "types=competition_round").await;
    filtered.recv_type("subscribed").await;
    let head = server.head().await;

    // Several publishers at once: 300 events in 30 requests, two event types.
    let mut tasks = Vec::new();
    for p in 0..3u64 {
        let http = server.http();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for r in 0..10u64 {
                let batch: Vec<Value> = (0..10u64)
                    .map(|i| {
                        let event_type = if i % 2 == 0 { "competition_round" } else { "agent_status" };
                        json!({"channel":"arena/a1","event_type":event_type,"data":{"p":p,"r":r,"i":i}})
                    })
                    .collect();
                let (status, answer) = http.publish(&Value::Array(batch)).await.unwrap();
                assert_eq!(status, 200);
                seqs.extend(serde_json::from_value::<Vec<u64>>(answer["seqs"].clone()).unwrap());
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort();
    let mut batch_sizes = Vec::new();
    let mut got = Vec::new();
    while got.len() < all.len() {
        let message = live.recv().await;
        assert_eq!(
            message["type"], "batch",
            "a high-frequency channel sends batches"
        );
        let inner = message["messages"].as_array().unwrap();
        batch_sizes.push(inner.len());
        got.extend(inner.iter().map(|m| m["seq"].as_u64().unwrap()));
    }
    assert_eq!(got, all, "every event, in seq order, once");
    assert!(
        batch_sizes.iter().all(|n| *n <= 16),
        "batch_max_messages holds: {batch_sizes:?}"
    );
    assert!(
        batch_sizes.iter().any(|n| *n > 1),
        "events were coalesced: {batch_sizes:?}"
    );

    let rounds: Vec<u64> = filtered
        .deliveries(all.len() / 2)
        .await
        .into_iter()
        .map(|(m, in_batch)| {
            assert!(in_batch);
            assert_eq!(m["event_type"], "competition_round");
            m["seq"].as_u64().unwrap()
        })
        .collect();
    assert!(rounds.windows(2).all(|w| w[0] < w[1]));

    // A quiet channel: one event still goes out, alone in its batch.
    let seq = server
        .publish_one("arena/a1", "competition_end", json!({"w":"x"}))
        .await;
    let message = live.recv().await;
    assert_eq!(message["messages"][0]["seq"], seq);
    assert_eq!(message["messages"].as_array().unwrap().len(), 1);

    // A resume on the batched channel: the backlog in batches, `caught_up`, then live.
    let mut resumed = Client::connect(&server, "/ws/arena/a1", &format!("since={head}")).await;
    resumed.recv_type("subscribed").await;
    let mut backlog = Vec::new();
    loop {
        let message = resumed.recv().await;
        match message["type"].as_str() {
            Some("batch") => backlog.extend(
                message["messages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["seq"].as_u64().unwrap()),
            ),
            Some("caught_up") => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let mut want = all.clone();
    want.push(seq);
    assert_eq!(backlog, want);
    let next = server
        .publish_one("arena/a1", "competition_round", json!({}))
        .await;
    let message = resumed.recv().await;
    assert_eq!(message["messages"][0]["seq"], next);
}

/// Concurrent publishers make pulses of several append groups; every subscriber of the
/// channel gets its events once and in seq order, in its own mode, whether it takes the
/// pulse's shared frames as they are or picks events out (a type filter, deltas).
#[tokio::test]
async fn a_burst_to_one_channel_reaches_every_mode_and_filter_once_in_order() {
    let server = Server::start_with(CONFIG).await;
    let path = "/ws/competition/burst";
    let mut clients = Vec::new();
    for query in MODES.iter().copied().chain(["format=json&types=keep"]) {
        let mut client = Client::connect(&server, path, query).await;
        client.recv_type("subscribed").await;
        clients.push((query, client));
    }
    let event = |i: u64| {
        let event_type = if i % 2 == 0 { "keep" } else { "drop" };
        json!({"channel": "competition/burst", "event_type": event_type, "data": rich_data(i)})
    };
    let publishers: Vec<_> = (0..6u64)
        .map(|p| {
            let http = server.http();
            tokio::spawn(async move {
                let mut answered = Vec::new();
                for i in (0..10).map(|k| p * 10 + k) {
                    let (status, answer) = http.publish(&event(i)).await.expect("publish");
                    assert_eq!(status, 200, "{answer}");
                    answered.push((answer["seq"].as_u64().unwrap(), i));
                }
                answered
            })
        })
        .collect();
    let batch: Vec<Value> = (60..80).map(event).collect();
    let (status, answer) = server.publish(json!(batch)).await;
    assert_eq!(status, 200, "{answer}");
    let mut published: BTreeMap<u64, u64> = answer["seqs"]
        .as_array()
        .unwrap()
        .iter()
        .zip(60..)
        .map(|(seq, i)| (seq.as_u64().unwrap(), i))
        .collect();
    for publisher in publishers {
        published.extend(publisher.await.unwrap());
    }
    assert_eq!(published.len(), 80);

    for (query, client) in &mut clients {
        let wanted: Vec<(u64, u64)> = published
            .iter()
            .filter(|(_, i)| !query.contains("types=keep") || *i % 2 == 0)
            .map(|(&seq, &i)| (seq, i))
            .collect();
        let got: Vec<Value> = client
            .deliveries(wanted.len())
            .await
            .into_iter()
            .map(|(m, _)| m)
            .collect();
        let seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        let expected: Vec<u64> = wanted.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, expected, "{query}: once each, in seq order");
        if !query.contains("delta") {
            for (message, (seq, i)) in got.iter().zip(&wanted) {
                assert_eq!(message["type"], "event", "{query}");
                assert_eq!(message["channel"], "competition/burst", "{query}");
                assert_eq!(message["data"], rich_data(*i), "{query}: data of {seq}");
            }
        }
        let more = tokio::time::timeout(Duration::from_millis(300), client.recv()).await;
        assert!(more.is_err(), "{query}: nothing more, got {more:?}");
    }
}
