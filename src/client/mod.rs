//! The streamlog client library, shared by the `streamlog` subcommands: HTTP calls
//! (publish, history, datasets) with reqwest, and WebSocket sessions (tail, replay) with
//! tokio-tungstenite, over TLS for `https://` servers (configured by `crate::tls`). It
//! speaks only the public protocol; nothing here knows the server's internals.

pub mod commands;
pub mod tail;

use std::{path::Path, sync::Arc};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::{tungstenite::Message, MaybeTlsStream, WebSocketStream};

pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("request failed: {}", with_causes(.0))]
    Http(#[from] reqwest::Error),
    #[error("the server answered {status}: {body}")]
    Server { status: u16, body: String },
    #[error("WebSocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("unexpected answer: {0}")]
    Protocol(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
}

impl ClientError {
    /// TLS failed (the server's certificate was refused, no protocol in common): asking
    /// again cannot help.
    pub fn is_tls_failure(&self) -> bool {
        matches!(self, ClientError::Http(error) if crate::tls::is_tls_failure(error))
    }
}

pub struct Client {
    /// `http://host:port`, without a trailing slash.
    base: String,
    token: Option<String>,
    http: reqwest::Client,
    /// Set for an `https://` server: the WebSocket goes over the same TLS configuration.
    tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
}

/// One page of a channel's history.
pub struct HistoryPage {
    pub events: Vec<Value>,
    /// The cursor to continue from.
    pub next: u64,
}

impl Client {
    /// A client of the server at `url` (`http://` or `https://`); `ca_cert`, a PEM file of
    /// certificates to trust besides the system's, for `https://`.
    pub fn new(
        url: &str,
        token: Option<String>,
        ca_cert: Option<&Path>,
    ) -> Result<Self, ClientError> {
        crate::tls::install_default_provider();
        let base = url.trim_end_matches('/').to_string();
        let (http, tls) = if base.starts_with("https://") {
            let tls = crate::tls::client_config(ca_cert).map_err(ClientError::Tls)?;
            let http = reqwest::Client::builder()
                .use_preconfigured_tls(tls.as_ref().clone())
                .build()?;
            (http, Some(tls))
        } else if base.starts_with("http://") {
            (reqwest::Client::new(), None)
        } else {
            return Err(ClientError::Protocol(format!(
                "`{url}` is not an http:// or https:// URL"
            )));
        };
        Ok(Self {
            base,
            token,
            http,
            tls,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn checked(response: reqwest::Response) -> Result<reqwest::Response, ClientError> {
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        Err(ClientError::Server { status, body })
    }

    async fn json(&self, request: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        let response = Self::checked(request.send().await?).await?;
        if response.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        Ok(response.json().await?)
    }

    /// Publishes a batch (appended in order, atomically); answers the seqs.
    pub async fn publish(&self, events: &[Value]) -> Result<Vec<u64>, ClientError> {
        let answer = self
            .json(
                self.request(reqwest::Method::POST, "/api/v1/events")
                    .json(events),
            )
            .await?;
        answer["seqs"]
            .as_array()
            .map(|seqs| seqs.iter().filter_map(Value::as_u64).collect())
            .ok_or_else(|| ClientError::Protocol(answer.to_string()))
    }

    pub async fn history(
        &self,
        channel: &str,
        since: u64,
        limit: usize,
    ) -> Result<HistoryPage, ClientError> {
        let path = format!("/api/v1/channels/{channel}/events?since={since}&limit={limit}");
        let answer = self.json(self.request(reqwest::Method::GET, &path)).await?;
        let events = answer["events"].as_array().cloned().unwrap_or_default();
        let next = answer["next"]
            .as_str()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| ClientError::Protocol(answer.to_string()))?;
        Ok(HistoryPage { events, next })
    }

    pub async fn create_dataset(&self, request: &Value) -> Result<Value, ClientError> {
        self.json(
            self.request(reqwest::Method::POST, "/api/v1/datasets")
                .json(request),
        )
        .await
    }

    pub async fn list_datasets(&self) -> Result<Value, ClientError> {
        self.json(self.request(reqwest::Method::GET, "/api/v1/datasets"))
            .await
    }

    pub async fn dataset(&self, id: &str) -> Result<Value, ClientError> {
        self.json(self.request(reqwest::Method::GET, &format!("/api/v1/datasets/{id}")))
            .await
    }

    /// The export body as it streams (gzip bytes when `gzip`: they are not decoded).
    pub async fn export_dataset(
        &self,
        id: &str,
        format: &str,
        anonymize: bool,
        gzip: bool,
    ) -> Result<reqwest::Response, ClientError> {
        let path = format!("/api/v1/datasets/{id}/export?format={format}&anonymize={anonymize}");
        let mut request = self.request(reqwest::Method::GET, &path);
        if gzip {
            request = request.header("accept-encoding", "gzip");
        }
        Self::checked(request.send().await?).await
    }

    /// Opens `/ws` (with the token, if any) and reads `connection_established`.
    pub async fn connect(&self) -> Result<(WsStream, Value), ClientError> {
        let mut url = format!("{}/ws", self.base.replacen("http", "ws", 1));
        if let Some(token) = &self.token {
            url.push_str(&format!("?token={token}"));
        }
        let connector = self.tls.clone().map(tokio_tungstenite::Connector::Rustls);
        let (mut ws, _) =
            tokio_tungstenite::connect_async_tls_with_config(url, None, false, connector).await?;
        let hello = next_message(&mut ws)
            .await?
            .ok_or_else(|| ClientError::Protocol("closed before connection_established".into()))?;
        Ok((ws, hello))
    }

    /// Runs a replay to its end, calling `on_event` for each event; answers the count.
    pub async fn replay(
        &self,
        request: Value,
        mut on_event: impl FnMut(&Value) -> Result<(), ClientError>,
    ) -> Result<u64, ClientError> {
        let (mut ws, _) = self.connect().await?;
        let mut request = request;
        request["type"] = json!("replay");
        ws.send(Message::text(request.to_string())).await?;
        loop {
            let message = next_message(&mut ws)
                .await?
                .ok_or_else(|| ClientError::Protocol("closed during the replay".into()))?;
            match message["type"].as_str() {
                Some("event") => on_event(&message)?,
                Some("replay_end") => return Ok(message["count"].as_u64().unwrap_or(0)),
                Some("error") => return Err(ClientError::Protocol(message.to_string())),
                _ => {}
            }
        }
    }
}

/// An error and what caused it, down the chain: reqwest's own message alone ("error
/// sending request") does not say that the certificate was refused.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// The next JSON message of a WebSocket, pings skipped; `None` once it closed.
pub async fn next_message(ws: &mut WsStream) -> Result<Option<Value>, ClientError> {
    while let Some(frame) = ws.next().await {
        match frame? {
            Message::Text(text) => {
                return serde_json::from_str(&text)
                    .map(Some)
                    .map_err(|e| ClientError::Protocol(e.to_string()))
            }
            Message::Close(_) => return Ok(None),
            _ => continue,
        }
    }
    Ok(None)
}
