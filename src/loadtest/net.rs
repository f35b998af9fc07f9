//! How the load tool reaches the server: the checked loopback `Target`, HTTP calls
//! (publish, health, metrics, channel list) and WebSocket connections in any frame mode,
//! optionally from a chosen source address.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use serde_json::Value;
use tokio::net::TcpSocket;

pub use super::wsclient::{ConnectError, Incoming, Ws};
use super::{frames::Mode, BenchError};

/// A running server on this machine.
#[derive(Clone)]
pub struct Target {
    /// `http://host:port`, without a trailing slash.
    base: String,
    pub addr: SocketAddr,
    token: Option<String>,
    pub http: reqwest::Client,
}

impl Target {
    /// Refuses anything but a plain-HTTP server on a loopback address: the tool opens
    /// thousands of connections and must never be pointed at a remote host.
    pub async fn new(url: &str, token: Option<String>) -> Result<Target, BenchError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| BenchError::Setup(format!("--url `{url}`: {e}")))?;
        if parsed.scheme() != "http" {
            return Err(BenchError::Setup(format!(
                "--url `{url}`: the load tool speaks plain http to a local server"
            )));
        }
        let host = parsed.host_str().unwrap_or_default().to_string();
        let port = parsed.port_or_known_default().unwrap_or(80);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| BenchError::Setup(format!("--url `{url}`: {e}")))?
            .collect();
        let Some(addr) = addrs.first().copied() else {
            return Err(BenchError::Setup(format!("--url `{url}`: no address")));
        };
        if !addrs.iter().all(|a| a.ip().is_loopback()) {
            return Err(BenchError::Setup(format!(
                "--url `{url}` is not a loopback address: the load tool only runs against a \
                 server on this machine"
            )));
        }
        Ok(Target {
            base: format!("http://{addr}"),
            addr,
            token,
            http: http_client()?,
        })
    }

    /// The same target with an HTTP client of its own, for use on another runtime (a
    /// client's pooled connections belong to the runtime that opened them).
    pub fn for_other_runtime(&self) -> Result<Target, BenchError> {
        Ok(Target {
            http: http_client()?,
            ..self.clone()
        })
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn get_text(&self, path: &str) -> Result<String, BenchError> {
        let response = self.request(reqwest::Method::GET, path).send().await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            return Err(BenchError::Server(format!("GET {path}: {status}: {text}")));
        }
        Ok(text)
    }

    pub async fn health(&self) -> Result<Value, BenchError> {
        let text = self.get_text("/health").await?;
        serde_json::from_str(&text).map_err(|e| BenchError::Server(format!("/health: {e}")))
    }

    /// The value of an unlabelled sample of `/metrics`.
    pub async fn metric(&self, name: &str) -> Result<f64, BenchError> {
        let text = self.get_text("/metrics").await?;
        parse_metric(&text, name).ok_or_else(|| {
            BenchError::Server(format!(
                "/metrics has no `{name}`: is this a streamlog server of this version?"
            ))
        })
    }

    /// Every channel the log holds, with its head (`GET /api/v1/channels`, admin).
    pub async fn channels(&self) -> Result<Vec<(String, u64)>, BenchError> {
        let text = self.get_text("/api/v1/channels").await?;
        let answer: Value = serde_json::from_str(&text)
            .map_err(|e| BenchError::Server(format!("/api/v1/channels: {e}")))?;
        Ok(answer["channels"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| Some((c["channel"].as_str()?.to_string(), c["head"].as_u64()?)))
            .collect())
    }

    /// Publishes a batch (a JSON array body); answers the seqs.
    pub async fn publish(&self, body: String) -> Result<Vec<u64>, BenchError> {
        let response = self
            .request(reqwest::Method::POST, "/api/v1/events")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            return Err(BenchError::Server(format!("publish: {status}: {text}")));
        }
        let answer: Value = serde_json::from_str(&text)
            .map_err(|e| BenchError::Server(format!("publish answer: {e}")))?;
        answer["seqs"]
            .as_array()
            .map(|seqs| seqs.iter().filter_map(Value::as_u64).collect())
            .ok_or_else(|| BenchError::Server(format!("publish answer: {text}")))
    }

    /// The request target of a WebSocket on `path`: the path with the mode's, the token's
    /// and `extra` parameters.
    pub fn ws_path(&self, path: &str, mode: Mode, extra: &[(&str, String)]) -> String {
        let mut params: Vec<String> = mode
            .query()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        params.extend(extra.iter().map(|(k, v)| format!("{k}={v}")));
        if let Some(token) = &self.token {
            params.push(format!("token={token}"));
        }
        let mut target = path.to_string();
        if !params.is_empty() {
            target.push('?');
            target.push_str(&params.join("&"));
        }
        target
    }

    /// Opens a WebSocket on `path` (from `ws_path`), from `source` when given (an address
    /// of this host to bind to).
    pub async fn ws_connect(&self, path: &str, source: Option<IpAddr>) -> Result<Ws, ConnectError> {
        let socket = match self.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }?;
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let tcp = socket.connect(self.addr).await?;
        let _ = tcp.set_nodelay(true);
        Ws::handshake(tcp, &self.addr.to_string(), path).await
    }
}

fn http_client() -> Result<reqwest::Client, BenchError> {
    crate::tls::install_default_provider();
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| BenchError::Setup(e.to_string()))
}

impl From<ConnectError> for BenchError {
    fn from(e: ConnectError) -> Self {
        BenchError::Server(e.to_string())
    }
}

/// The first sample named exactly `name` in Prometheus text.
pub fn parse_metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_lines_are_matched_by_whole_name() {
        let text =
            "# HELP x\nstreamlog_connections_active_max 3\nstreamlog_connections_active 12\n";
        assert_eq!(
            parse_metric(text, "streamlog_connections_active"),
            Some(12.0)
        );
        assert_eq!(parse_metric(text, "streamlog_missing"), None);
    }
}
