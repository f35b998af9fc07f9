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

/// `streamlog ARGS... --url <url>` with the test's environment cleared of client settings.
fn streamlog_cli(url: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_streamlog"))
        .env_remove("STREAMLOG_TOKEN")
        .env_remove("STREAMLOG_CA_CERT")
        .args(args)
        .args(["--url", url])
        .output()
        .expect("run streamlog")
}

fn json_lines(output: &std::process::Output) -> Vec<Value> {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test]
async fn client_subcommands_speak_https_and_wss_trusting_a_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let (config, client) = self_signed(dir.path());
    let server = Server::start_tls(&config, client).await;
    let url = format!("https://localhost:{}", server.addr.port());
    let ca = dir.path().join("cert.pem");
    let ca = ca.to_str().unwrap();

    // Not trusted without the certificate: refused, and the error says why.
    let refused = streamlog_cli(&url, &["history", "arena/cli"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("invalid peer certificate"), "{stderr}");

    let published = streamlog_cli(
        &url,
        &["publish", "arena/cli", "t", r#"{"x":1}"#, "--ca-cert", ca],
    );
    assert_eq!(json_lines(&published), vec![json!({"seq": 1})]);
    let history = json_lines(&streamlog_cli(
        &url,
        &["history", "arena/cli", "--ca-cert", ca],
    ));
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["data"], json!({"x": 1}));
    // A replay runs over the WebSocket: wss:// with the same trust.
    let replayed = json_lines(&streamlog_cli(
        &url,
        &["replay", "arena/cli", "--speed", "0", "--ca-cert", ca],
    ));
    assert_eq!(replayed.len(), 1);
    assert_eq!(
        (replayed[0]["seq"].as_u64(), replayed[0]["replay"].as_str()),
        (Some(1), Some("cli"))
    );

    // A refused certificate is not retried: `simulate` gives up at once and says why.
    let started = std::time::Instant::now();
    let simulate = streamlog_cli(&url, &["simulate", "--duration", "1"]);
    assert!(!simulate.status.success());
    let stderr = String::from_utf8_lossy(&simulate.stderr);
    assert!(stderr.contains("invalid peer certificate"), "{stderr}");
    assert!(!stderr.contains("retrying"), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    // A file that holds no certificate is named in the error.
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let bad = streamlog_cli(
        &url,
        &["history", "arena/cli", "--ca-cert", empty.to_str().unwrap()],
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("no certificate in the file"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
