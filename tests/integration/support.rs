//! One helper per boundary: `Server` starts the real `streamlog` binary on a loopback port
//! with a temporary data dir; `Ws` is a WebSocket client (tokio-tungstenite, independent of
//! the server's own WebSocket library); `publish` and `get` speak HTTP; `mint` makes JWTs.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::rustls;
use tokio_tungstenite::{
    tungstenite::{
        client::IntoClientRequest, handshake::client::Request, protocol::frame::coding::CloseCode,
        Message,
    },
    MaybeTlsStream, WebSocketStream,
};

pub const WAIT: Duration = Duration::from_secs(10);

pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    config: Option<String>,
    env: Vec<(String, String)>,
    /// Extra arguments of `streamlog serve`, e.g. `--demo`.
    args: Vec<String>,
    pub output: Arc<Mutex<Vec<String>>>,
    http: reqwest::Client,
    /// Set for a server with built-in TLS: how the tests trust its certificate.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Server {
    pub async fn start() -> Server {
        Self::start_with("").await
    }

    /// Starts with this TOML configuration (may be empty).
    pub async fn start_with(config: &str) -> Server {
        Self::start_with_env(config, &[]).await
    }

    /// Starts with this configuration and these extra environment variables.
    pub async fn start_with_env(config: &str, env: &[(&str, &str)]) -> Server {
        Self::start_inner(config, env, None).await
    }

    /// Starts with these extra `serve` arguments and environment variables (and no
    /// configuration file).
    pub async fn start_with_args(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut server = Self::unlaunched("", env, None);
        server.args = args.iter().map(|a| a.to_string()).collect();
        server.launch().await;
        server
    }

    /// Starts a server with built-in TLS; `tls` trusts its certificate.
    pub async fn start_tls(config: &str, tls: Arc<rustls::ClientConfig>) -> Server {
        Self::start_inner(config, &[], Some(tls)).await
    }

    async fn start_inner(
        config: &str,
        env: &[(&str, &str)],
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Server {
        let mut server = Self::unlaunched(config, env, tls);
        server.launch().await;
        server
    }

    fn unlaunched(
        config: &str,
        env: &[(&str, &str)],
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Server {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().to_path_buf();
        Server {
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            dir,
            _temp: Some(temp),
            config: (!config.is_empty()).then(|| config.to_string()),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            args: Vec::new(),
            output: Arc::new(Mutex::new(Vec::new())),
            http: reqwest::Client::new(),
            tls,
        }
    }

    /// Starts again on the same data dir (after `kill` or `stop`), on a new port.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the server first");
        self.launch_on("127.0.0.1:0").await;
    }

    /// Starts again on the same data dir and the same port, for clients that reconnect to
    /// the address they know.
    pub async fn restart_same_port(&mut self) {
        assert!(self.child.is_none(), "stop or kill the server first");
        let addr = self.addr.to_string();
        self.launch_on(&addr).await;
    }

    async fn launch(&mut self) {
        self.launch_on("127.0.0.1:0").await;
    }

    async fn launch_on(&mut self, listen: &str) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_streamlog"));
        command
            .arg("serve")
            .args(["--listen", listen])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(&self.args)
            .env("STREAMLOG_LOG", "info")
            .env_remove("STREAMLOG_LISTEN")
            .env_remove("STREAMLOG_DATA_DIR")
            .env_remove("STREAMLOG_AUTH_MODE")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(config) = &self.config {
            let path = self.dir.join("streamlog.toml");
            std::fs::write(&path, config).unwrap();
            command.arg("--config").arg(path);
        }
        let mut child = command.spawn().expect("start streamlog");
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = self.output.clone();
            let addr_tx = addr_tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Some(rest) = line.split("streamlog listening on ").nth(1) {
                        // Plain or JSON log lines: the address is the run of address characters.
                        let addr: String = rest
                            .chars()
                            .take_while(|c| {
                                c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']')
                            })
                            .collect();
                        let _ = addr_tx.send(addr);
                    }
                    output.lock().unwrap().push(line);
                }
            });
        }
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("server did not start: {:?}", self.output.lock().unwrap()));
        self.addr = addr.parse().expect("listen address");
        self.child = Some(child);
        wait_until(|| async { self.health().await.is_some() }).await;
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, then wait for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        signal(self.pid(), "TERM");
        self.wait_exit()
    }

    /// Waits (20 s at most) for the process to exit by itself, e.g. after a signal.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "server did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A cloneable HTTP handle for tasks that publish concurrently.
    pub fn http(&self) -> Http {
        Http {
            base: self.url(""),
            client: self.http.clone(),
        }
    }

    /// The log head as `/health` reports it.
    pub async fn head(&self) -> u64 {
        let health = self.health().await.expect("health");
        health["head"].as_u64().expect("head")
    }

    /// Every retained event of `channel`, walking the history pages (bounded).
    pub async fn history_all(&self, channel: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut since = "0".to_string();
        for _ in 0..10_000 {
            let path = format!("/api/v1/channels/{channel}/events?since={since}&limit=1000");
            let (status, page) = self.get_json(&path).await;
            assert_eq!(status, 200, "{path}: {page}");
            let events = page["events"].as_array().expect("events").clone();
            if events.is_empty() {
                return out;
            }
            since = page["next"].as_str().expect("next").to_string();
            out.extend(events);
        }
        panic!("history of {channel} did not end");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn log_text(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    pub async fn health(&self) -> Option<Value> {
        if self.tls.is_some() {
            let (status, body) = self.https("GET", "/health", "").await?;
            return (status == 200).then(|| serde_json::from_slice(&body).ok())?;
        }
        let response = self.http.get(self.url("/health")).send().await.ok()?;
        if response.status() != 200 {
            return None;
        }
        response.json().await.ok()
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

    pub async fn ws(&self, path: &str) -> Ws {
        Ws::connect(&self.ws_url(path)).await
    }

    /// A WebSocket request for `path`, to which headers can be added.
    pub fn ws_request(&self, path: &str) -> Request {
        self.ws_url(path).into_client_request().unwrap()
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

    /// The server's resident memory, in KiB (Linux).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
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

/// A signed HS256 token for `sub` with these permissions, expiring in `exp_in` seconds
/// (negative: already expired).
pub fn mint(secret: &str, sub: &str, permissions: &[&str], exp_in: i64) -> String {
    let exp = now_secs() as i64 + exp_in;
    let claims = serde_json::json!({ "sub": sub, "exp": exp, "permissions": permissions });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
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

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Polls `check` until it holds (10 s at most).
pub async fn wait_until<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    pub async fn connect(url: &str) -> Ws {
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        Ws { stream }
    }

    /// Connects and returns the HTTP status of a refused handshake.
    pub async fn connect_refused(url: &str) -> u16 {
        Self::refused(url.into_client_request().unwrap()).await.0
    }

    /// Connects with a prepared request (headers, subprotocols); also returns the server's
    /// handshake answer.
    pub async fn connect_with(
        request: Request,
    ) -> (
        Ws,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ) {
        let uri = request.uri().clone();
        let (stream, response) = tokio_tungstenite::connect_async(request)
            .await
            .unwrap_or_else(|e| panic!("connect {uri}: {e}"));
        (Ws { stream }, response)
    }

    /// A refused handshake: its status, its JSON body, and its headers.
    pub async fn refused(request: Request) -> (u16, Value, reqwest::header::HeaderMap) {
        let uri = request.uri().clone();
        match tokio_tungstenite::connect_async(request).await {
            Ok(_) => panic!("{uri}: the handshake was accepted"),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let body = response
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                (response.status().as_u16(), body, response.headers().clone())
            }
            Err(e) => panic!("{uri}: {e}"),
        }
    }

    /// The next frame of any kind (pings and pongs included), within 10 s.
    pub async fn next_raw(&mut self) -> Option<Message> {
        tokio::time::timeout(WAIT, self.stream.next())
            .await
            .expect("a frame within 10 s")
            .map(|m| m.expect("a frame"))
    }

    pub async fn send(&mut self, message: Value) {
        self.stream
            .send(Message::text(message.to_string()))
            .await
            .unwrap();
    }

    /// Sends, and says whether the frame went out (the server may have closed already).
    pub async fn try_send(&mut self, message: Message) -> bool {
        self.stream.send(message).await.is_ok()
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.stream.send(message).await.unwrap();
    }

    /// The next server message (pings skipped), or a panic after 10 s.
    pub async fn recv(&mut self) -> Value {
        self.try_recv(WAIT).await.expect("a message within 10 s")
    }

    /// The next server message within `wait`, `None` if none came.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()?;
            match next {
                Some(Ok(Message::Text(text))) => {
                    return Some(serde_json::from_str(&text).expect("JSON message"))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    /// The next server message or the close that ended the connection (10 s at most).
    pub async fn recv_or_close(&mut self) -> Incoming {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .expect("a message or a close within 10 s");
            match next {
                Some(Ok(Message::Text(text))) => {
                    return Incoming::Message(serde_json::from_str(&text).expect("JSON message"))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Incoming::Closed(u16::from(frame.code), frame.reason.to_string())
                }
                Some(Ok(Message::Close(None))) => {
                    return Incoming::Closed(CloseCode::Status.into(), String::new())
                }
                Some(Err(_)) | None => return Incoming::Closed(1006, "no close frame".into()),
                Some(Ok(other)) => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    /// Skips messages until one of type `kind`.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let message = self.recv().await;
            if message["type"] == kind {
                return message;
            }
        }
    }

    /// Reads until the server closes; returns the close code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .expect("close within 10 s")
            {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (u16::from(frame.code), frame.reason.to_string())
                }
                Some(Ok(Message::Close(None))) => return (CloseCode::Status.into(), String::new()),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return (1006, "no close frame".into()),
            }
        }
    }

    /// The underlying stream, e.g. to split it into a reader and a writer.
    pub fn into_stream(self) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
        self.stream
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }

    /// `subscribe` and wait for `subscribed`.
    pub async fn subscribe(&mut self, channel: &str, extra: Value) -> Value {
        let mut message = serde_json::json!({"type": "subscribe", "id": format!("sub-{channel}"), "channel": channel});
        if let Value::Object(extra) = extra {
            for (k, v) in extra {
                message[k] = v;
            }
        }
        self.send(message).await;
        self.recv_type("subscribed").await
    }

    /// Collects `event` messages until `count` arrived; other types are skipped.
    pub async fn events(&mut self, count: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let message = self.recv().await;
            if message["type"] == "event" {
                out.push(message);
            }
        }
        out
    }
}

/// What `Ws::recv_or_close` read.
#[derive(Debug)]
pub enum Incoming {
    Message(Value),
    Closed(u16, String),
}

pub fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}
