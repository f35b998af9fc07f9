//! Mode `jwt`: where tokens are read, what they grant, every refusal (401 before the upgrade,
//! FORBIDDEN on a message, 1008 at expiry), and that nothing leaks to a refused client.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::support::*;

const SECRET: &str = "test-secret";

fn jwt_config(extra: &str) -> String {
    format!("[auth]\nmode = \"jwt\"\nhs256_secret = \"{SECRET}\"\nleeway_secs = 0\n{extra}")
}

fn token(sub: &str, permissions: &[&str]) -> String {
    mint(SECRET, sub, permissions, 3600)
}

/// Publishes `channel` (to which `ws` must not listen) and then `marker` (to which it
/// listens): since events of a connection arrive in seq order, the first event `ws` gets
/// being the marker proves the other one was not delivered.
async fn assert_not_delivered(server: &Server, ws: &mut Ws, channel: &str, marker: &str) {
    let admin = token("admin", &["admin"]);
    let body = json!({"channel": channel, "event_type": "secret", "data": {}});
    assert_eq!(server.publish_as(&admin, body).await.0, 200);
    let body = json!({"channel": marker, "event_type": "marker", "data": {}});
    assert_eq!(server.publish_as(&admin, body).await.0, 200);
    let event = ws.recv_type("event").await;
    assert_eq!(
        (event["channel"].as_str(), event["event_type"].as_str()),
        (Some(marker), Some("marker"))
    );
}

#[tokio::test]
async fn handshakes_without_a_valid_token_get_401_and_no_socket() {
    let server = Server::start_with(&jwt_config("")).await;
    let other_key = mint("another-secret", "u", &["admin"], 3600);
    let expired = mint(SECRET, "u", &["admin"], -5);
    let no_sub = {
        let claims = json!({"exp": now_secs() + 60, "permissions": ["admin"]});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let cases = [
        ("/ws".to_string(), "required"),
        ("/ws?token=garbage".to_string(), "not a JWT"),
        (format!("/ws?token={other_key}"), "signature"),
        (format!("/ws?token={expired}"), "expired"),
        (format!("/ws/arena/a1?token={no_sub}"), "sub"),
    ];
    for (path, words) in cases {
        let (status, body, headers) = Ws::refused(server.ws_request(&path)).await;
        assert_eq!(status, 401, "{path}");
        assert_eq!(body["error"]["code"], "UNAUTHORIZED", "{path}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{path}: {message}");
        assert!(headers.contains_key("www-authenticate"));
    }
    let mut request = server.ws_request("/ws");
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {expired}")).unwrap(),
    );
    assert_eq!(Ws::refused(request).await.0, 401);
    assert_eq!(server.health().await.unwrap()["connections"], 0);
}

#[tokio::test]
async fn the_token_is_read_from_query_header_or_subprotocol() {
    let server = Server::start_with(&jwt_config("")).await;
    let t = token("reader", &["subscribe:arena/*"]);

    let mut ws = server.ws(&format!("/ws/arena/q?token={t}")).await;
    ws.recv_type("subscribed").await;

    let mut request = server.ws_request("/ws/arena/h");
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
    );
    let (mut ws, _) = Ws::connect_with(request).await;
    ws.recv_type("subscribed").await;

    // A browser offers the token as a subprotocol, and needs one of its offers echoed
    // (the client library checks the echo like a browser does).
    for (offer, echoed) in [
        (format!("streamlog, bearer.{t}"), "streamlog".to_string()),
        (format!("bearer.{t}"), format!("bearer.{t}")),
    ] {
        let mut request = server.ws_request("/ws/arena/p");
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(&offer).unwrap(),
        );
        let (mut ws, response) = Ws::connect_with(request).await;
        assert_eq!(
            response.headers()["sec-websocket-protocol"]
                .to_str()
                .unwrap(),
            echoed
        );
        assert_eq!(ws.recv_type("subscribed").await["channel"], "arena/p");
        assert_eq!(
            publish_as_admin(&server, "arena/p").await,
            ws.recv_type("event").await["seq"]
        );
    }
}

/// Publishes one event with an admin token; returns its seq.
async fn publish_as_admin(server: &Server, channel: &str) -> serde_json::Value {
    let body = json!({"channel": channel, "event_type": "t", "data": {}});
    let (status, answer) = server.publish_as(&token("admin", &["admin"]), body).await;
    assert_eq!(status, 200, "{answer}");
    answer["seq"].clone()
}

#[tokio::test]
async fn subscribe_and_publish_need_a_matching_grant() {
    let server = Server::start_with(&jwt_config("")).await;
    let t = token("u1", &["subscribe:arena/*", "publish:arena/a1"]);

    // The connect-time channel is checked before the upgrade.
    let (status, body, _) = Ws::refused(server.ws_request(&format!("/ws/agent/x?token={t}"))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("FORBIDDEN"))
    );

    let mut ws = server.ws(&format!("/ws?token={t}")).await;
    ws.recv_type("connection_established").await;
    ws.send(json!({"type": "subscribe", "id": "s1", "channel": "agent/x"}))
        .await;
    let error = ws.recv().await;
    assert_eq!(
        (
            error["type"].as_str(),
            error["code"].as_str(),
            error["id"].as_str()
        ),
        (Some("error"), Some("FORBIDDEN"), Some("s1"))
    );
    ws.subscribe("arena/a1", json!({})).await;
    assert_not_delivered(&server, &mut ws, "agent/x", "arena/a1").await;

    ws.send(json!({"type": "publish", "id": "p1", "channel": "arena/a2", "event_type": "t", "data": {}}))
        .await;
    let error = ws.recv().await;
    assert_eq!(
        (error["code"].as_str(), error["id"].as_str()),
        (Some("FORBIDDEN"), Some("p1"))
    );
    ws.send(json!({"type": "publish", "id": "p2", "channel": "arena/a1", "event_type": "t", "data": {}}))
        .await;
    let published = ws.recv_type("published").await;
    assert_eq!(published["id"], "p2");
    // Only the three events above exist: the refused publish appended nothing.
    assert_eq!(published["seq"], 3);
}

#[tokio::test]
async fn http_endpoints_check_the_same_permissions() {
    let server = Server::start_with(&jwt_config("")).await;
    let event = json!({"channel": "arena/a1", "event_type": "t", "data": {}});
    let (status, body) = server.publish(event.clone()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("UNAUTHORIZED"))
    );
    let (status, body) = server.publish_as("not-a-token", event.clone()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("UNAUTHORIZED"))
    );
    let reader = token("r", &["subscribe:*"]);
    let (status, body) = server.publish_as(&reader, event.clone()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("FORBIDDEN"))
    );
    let batch = json!([event, {"channel": "agent/b", "event_type": "t"}]);
    let writer = token("w", &["publish:arena/*"]);
    let (status, body) = server.publish_as(&writer, batch).await;
    assert_eq!(
        (status, body["error"]["details"]["index"].as_u64()),
        (403, Some(1))
    );
    assert_eq!(
        server.health().await.unwrap()["head"],
        0,
        "nothing appended"
    );
    let (status, body) = server.publish_as(&writer, event).await;
    assert_eq!((status, body["seq"].as_u64()), (200, Some(1)));

    let path = "/api/v1/channels/arena/a1/events";
    let (status, body) = server.get_as(None, path).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("UNAUTHORIZED"))
    );
    let other = token("o", &["subscribe:agent/*"]);
    let (status, body) = server.get_as(Some(&other), path).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("FORBIDDEN"))
    );
    assert!(body.get("events").is_none());
    let (status, body) = server.get_as(Some(&reader), path).await;
    assert_eq!(
        (status, body["events"].as_array().map(Vec::len)),
        (200, Some(1))
    );
}

#[tokio::test]
async fn a_connection_is_closed_with_1008_when_its_token_expires() {
    let server = Server::start_with(&jwt_config("")).await;
    let short = mint(SECRET, "brief", &["subscribe:arena/*"], 2);
    let started = Instant::now();
    let mut ws = server.ws(&format!("/ws/arena/x?token={short}")).await;
    ws.recv_type("subscribed").await;
    let seq = publish_as_admin(&server, "arena/x").await;
    assert_eq!(
        ws.recv_type("event").await["seq"],
        seq,
        "served while valid"
    );
    let error = ws.recv_type("error").await;
    assert_eq!(error["code"], "UNAUTHORIZED");
    let (code, reason) = ws.closed().await;
    assert_eq!((code, reason.as_str()), (1008, "token expired"));
    // `exp` has a resolution of one second.
    let lived = started.elapsed();
    assert!(
        lived >= Duration::from_secs(1) && lived < Duration::from_secs(5),
        "{lived:?}"
    );
    wait_until(|| async { server.health().await.unwrap()["connections"] == 0 }).await;
}

#[tokio::test]
async fn public_key_tokens_verify_against_a_pem_file() {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("issuer.pem");
    std::fs::write(&pem, pair.public_key_pem()).unwrap();
    let config = format!(
        "[auth]\nmode = \"jwt\"\nrs256_public_key_pem = \"{}\"\n",
        pem.display()
    );
    let server = Server::start_with(&config).await;
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    let claims = json!({"sub": "es", "exp": now_secs() + 60, "permissions": ["subscribe:arena/*"]});
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    let es256 = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    let mut ws = server.ws(&format!("/ws/arena/e?token={es256}")).await;
    ws.recv_type("subscribed").await;
    // An HS256 token is refused: there is no shared secret, and the public key is not one.
    let hs = mint(&pair.public_key_pem(), "x", &["admin"], 60);
    let (status, body, _) = Ws::refused(server.ws_request(&format!("/ws?token={hs}"))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("UNAUTHORIZED"))
    );
}

#[tokio::test]
async fn browser_origins_outside_the_allowed_list_get_403() {
    let config = "[security]\nallowed_origins = [\"https://app.example.com\"]\n";
    let server = Server::start_with(config).await;
    let with_origin = |origin: &'static str| {
        let mut request = server.ws_request("/ws");
        request
            .headers_mut()
            .insert("origin", HeaderValue::from_static(origin));
        request
    };
    let (status, body, _) = Ws::refused(with_origin("https://evil.example")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("FORBIDDEN"))
    );
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("allowed_origins"));
    let (mut ws, _) = Ws::connect_with(with_origin("https://app.example.com")).await;
    ws.recv_type("connection_established").await;
    // Clients that are not browsers send no Origin.
    let mut ws = server.ws("/ws").await;
    ws.recv_type("connection_established").await;
}

#[tokio::test]
async fn admin_endpoints_need_the_admin_permission() {
    let server = Server::start_with(&jwt_config("")).await;
    let reader = token("r", &["subscribe:*", "publish:*"]);
    let admin = token("root", &["admin"]);
    for path in ["/api/v1/connections", "/api/v1/channels"] {
        let (status, body) = server.get_as(None, path).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("UNAUTHORIZED")),
            "{path}"
        );
        let (status, body) = server.get_as(Some(&reader), path).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (403, Some("FORBIDDEN")),
            "{path}"
        );
        assert_eq!(server.get_as(Some(&admin), path).await.0, 200, "{path}");
    }
}

#[tokio::test]
async fn metrics_are_open_unless_configured_for_metrics_and_admin_tokens() {
    let open = Server::start_with(&jwt_config("")).await;
    let (status, text) = open.get_as(None, "/metrics").await;
    assert_eq!(status, 200, "open by default, as the contract has it");
    assert!(text
        .as_str()
        .unwrap()
        .contains("streamlog_connections_active"));

    let server = Server::start_with(&jwt_config("metrics_public = false\n")).await;
    let (status, body) = server.get_as(None, "/metrics").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("UNAUTHORIZED"))
    );
    let reader = token("r", &["subscribe:*", "publish:*"]);
    let (status, body) = server.get_as(Some(&reader), "/metrics").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("FORBIDDEN"))
    );
    for grant in ["metrics", "admin"] {
        let (status, text) = server
            .get_as(Some(&token("scraper", &[grant])), "/metrics")
            .await;
        assert_eq!(status, 200, "{grant}");
        assert!(text
            .as_str()
            .unwrap()
            .contains("streamlog_events_appended_total"));
    }
    // `/health` stays open for load balancers.
    assert_eq!(server.get_as(None, "/health").await.0, 200);
}

#[tokio::test]
async fn datasets_and_replays_check_the_same_permissions() {
    use reqwest::Method;
    let server = Server::start_with(&jwt_config("")).await;
    let admin = token("root", &["admin"]);
    for i in 0..3 {
        let body = json!({"channel": "agent/a1", "event_type": "training_data", "data": {"i": i}});
        assert_eq!(server.publish_as(&admin, body).await.0, 200);
    }
    let request =
        json!({"dataset_id": "d1", "channels": ["agent/a1"], "event_types": ["training_data"]});
    let create = |token: Option<String>| {
        let request = request.clone();
        let server = &server;
        async move {
            server
                .request_as(
                    Method::POST,
                    token.as_deref(),
                    "/api/v1/datasets",
                    Some(request),
                )
                .await
        }
    };
    let (status, body) = create(None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("UNAUTHORIZED"))
    );
    // Reading the channels is not enough: announcing the dataset is a publish.
    let reader = token("reader", &["subscribe:agent/*"]);
    let (status, body) = create(Some(reader.clone())).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("FORBIDDEN"))
    );
    let curator = token("curator", &["subscribe:agent/*", "publish:system/datasets"]);
    let (status, body) = create(Some(curator.clone())).await;
    assert_eq!(
        (status, body["data_points_count"].as_u64()),
        (201, Some(3)),
        "{body}"
    );

    let outsider = token("outsider", &["subscribe:arena/*"]);
    let meta = "/api/v1/datasets/d1";
    let export = "/api/v1/datasets/d1/export";
    for (who, path, status) in [
        (&outsider, meta, 403),
        (&outsider, export, 403),
        (&reader, meta, 200),
        (&reader, export, 200),
    ] {
        let answer = server.request_as(Method::GET, Some(who), path, None).await;
        assert_eq!(answer.0, status, "{path}");
    }
    let deleted = server
        .request_as(Method::DELETE, Some(&curator), meta, None)
        .await;
    assert_eq!(deleted.0, 403, "deleting needs admin");
    let deleted = server
        .request_as(Method::DELETE, Some(&admin), meta, None)
        .await;
    assert_eq!(deleted.0, 204);

    // A replay is a read: it needs `subscribe` on its channel.
    let mut ws = server.ws(&format!("/ws?token={outsider}")).await;
    ws.recv_type("connection_established").await;
    ws.send(json!({"type": "replay", "id": "r1", "channel": "agent/a1", "from": "0", "speed": 0}))
        .await;
    let error = ws.recv().await;
    assert_eq!(
        (
            error["type"].as_str(),
            error["code"].as_str(),
            error["id"].as_str()
        ),
        (Some("error"), Some("FORBIDDEN"), Some("r1"))
    );
    let mut ws = server.ws(&format!("/ws?token={reader}")).await;
    ws.recv_type("connection_established").await;
    ws.send(json!({"type": "replay", "id": "r2", "channel": "agent/a1", "from": "0", "speed": 0}))
        .await;
    assert_eq!(ws.recv_type("replay_end").await["count"], 3);
}
