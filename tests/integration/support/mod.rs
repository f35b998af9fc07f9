//! One helper per boundary: `Server` starts the real `streamlog` binary on a loopback port
//! with a temporary data dir; `Ws` (in `ws`) is a WebSocket client (tokio-tungstenite,
//! independent of the server's own WebSocket library); `http` publishes and reads over
//! HTTP(S); `mint` makes JWTs.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;
use tokio_rustls::rustls;

mod http;
mod ws;

pub use http::Http;
pub use ws::{seqs, Incoming, Ws};

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
        // reqwest, with rustls in the build, wants a process-wide provider for every client.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
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
