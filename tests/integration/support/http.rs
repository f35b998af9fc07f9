//! The server's HTTP side, as the tests speak it: publishing, history and admin requests,
//! with or without a token, and raw bodies.

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::rustls;

use super::{Server, WAIT};

impl Server {
    /// A cloneable HTTP handle for tasks that publish concurrently.
    pub fn http(&self) -> Http {
        Http {
            base: self.url(""),
            client: self.http.clone(),
        }
    }

    /// POSTs a JSON body to /api/v1/events; answers (status, body).
    pub async fn publish(&self, body: Value) -> (u16, Value) {
        self.post_raw(
            "/api/v1/events",
            "application/json",
            body.to_string().into_bytes(),
        )
        .await
    }

    /// Publishes one event and returns its seq.
    pub async fn publish_one(&self, channel: &str, event_type: &str, data: Value) -> u64 {
        let (status, body) = self
            .publish(
                serde_json::json!({"channel": channel, "event_type": event_type, "data": data}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["seq"].as_u64().expect("seq")
    }

    pub async fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("POST");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(self.url(path)).send().await.expect("GET");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get_bytes(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
        let mut request = self.http.get(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("GET");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (status, headers, response.bytes().await.unwrap().to_vec())
    }

    /// A TLS connection to the server (which must have been started with `start_tls`).
    pub async fn tls_connect(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        let config = self.tls.clone().expect("a TLS server");
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .expect("TLS handshake")
    }

    /// One HTTP/1.1 request over TLS; answers (status, body).
    pub async fn https(&self, method: &str, path: &str, body: &str) -> Option<(u16, Vec<u8>)> {
        let mut tls = self.tls_connect().await;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        // A peer may end TLS without close_notify once it sent everything.
        let _ = tls.read_to_end(&mut answer).await;
        let text = String::from_utf8_lossy(&answer);
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let start = answer.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let mut body = answer[start..].to_vec();
        if text
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body = dechunk(&body);
        }
        Some((status, body))
    }

    /// Like `publish`, with `Authorization: Bearer <token>`.
    pub async fn publish_as(&self, token: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.url("/api/v1/events"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("POST");
        answer(response).await
    }

    /// Any request, with `Authorization: Bearer <token>` when one is given and a JSON body
    /// when one is given; answers (status, body).
    pub async fn request_as(
        &self,
        method: reqwest::Method,
        token: Option<&str>,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        answer(request.send().await.expect("request")).await
    }

    /// GET with `Authorization: Bearer <token>` when one is given; answers (status, body).
    pub async fn get_as(&self, token: Option<&str>, path: &str) -> (u16, Value) {
        let mut request = self.http.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        answer(request.send().await.expect("GET")).await
    }
}

async fn answer(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || body.len() < end + 2 + size {
            break;
        }
        out.extend_from_slice(&body[end + 2..end + 2 + size]);
        body = &body[(end + 4 + size).min(body.len())..];
    }
    out
}

/// Publishing over HTTP from spawned tasks; errors (a killed server) are returned, not panics.
#[derive(Clone)]
pub struct Http {
    base: String,
    client: reqwest::Client,
}

impl Http {
    pub async fn publish(&self, body: &Value) -> Result<(u16, Value), reqwest::Error> {
        let response = self
            .client
            .post(format!("{}/api/v1/events", self.base))
            .json(body)
            .timeout(WAIT)
            .send()
            .await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }
}
