//! Built-in TLS: `https://` and `wss://` with a certificate made for the test.

use std::sync::Arc;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// A self-signed certificate for `localhost`, written to `dir`; returns the config lines
/// and a client configuration that trusts exactly that certificate.
fn self_signed(dir: &std::path::Path) -> (String, Arc<rustls::ClientConfig>) {
    let pair = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = params.self_signed(&pair).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, pair.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let config = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert_path.display(),
        key_path.display()
    );
    (config, Arc::new(client))
}

async fn next_json<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let next = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("a message");
    match next.unwrap().unwrap() {
        Message::Text(text) => serde_json::from_str(&text).unwrap(),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn wss_and_https_work_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (config, client) = self_signed(dir.path());
    let server = Server::start_tls(&config, client).await;
    assert!(server.log_text().contains("https"), "{}", server.log_text());

    let tls = server.tls_connect().await;
    let url = format!("wss://localhost:{}/ws/arena/secure", server.addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "connection_established");
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");

    let body = json!({"channel": "arena/secure", "event_type": "t", "data": {"x": 1}});
    let (status, answer) = server
        .https("POST", "/api/v1/events", &body.to_string())
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let event = next_json(&mut ws).await;
    assert_eq!(
        (event["type"].as_str(), event["data"]["x"].as_u64()),
        (Some("event"), Some(1))
    );

    // Plain HTTP on the TLS port gets no answer a client could take for the service.
    let plain = reqwest::get(server.url("/health")).await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
}
