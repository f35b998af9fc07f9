//! Start-up refusals and warnings of the security model.

use std::process::{Command, Stdio};

use crate::support::*;

#[test]
fn mode_none_refuses_a_non_loopback_address_without_insecure_demo() {
    let dir = tempfile::tempdir().unwrap();
    // Refused before binding: nothing listens on the network, even for a moment.
    let output = Command::new(env!("CARGO_BIN_EXE_streamlog"))
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env_remove("STREAMLOG_AUTH_MODE")
        .env_remove("STREAMLOG_LISTEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("auth.mode") && stderr.contains("--insecure-demo"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "refused before opening the log"
    );
}

#[test]
fn a_bad_tls_file_fails_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("streamlog.toml");
    std::fs::write(
        &config,
        "[tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_streamlog"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tls.cert"), "{stderr}");
}

#[tokio::test]
async fn mode_none_warns_loudly() {
    let server = Server::start().await;
    let log = server.log_text();
    assert!(
        log.contains("WARN") && log.contains("auth mode `none`"),
        "{log}"
    );
}
