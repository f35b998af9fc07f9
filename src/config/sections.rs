//! The sections of the configuration file, each with its keys and their defaults (the
//! contract's values). Validation across keys is `Config::validate`'s.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Demo mode: every request is allowed. Logged loudly at start.
    None,
    Jwt,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    pub hs256_secret: String,
    /// An RSA (RS256) or EC P-256 (ES256) public key: the PEM text, or the path of a PEM file.
    pub rs256_public_key_pem: Option<String>,
    /// Clock skew allowed between the token issuer and this server, on `exp` and `nbf`. A
    /// connection is closed once `exp` plus this leeway has passed.
    pub leeway_secs: u64,
    /// When set, tokens must carry this `aud`.
    pub audience: Option<String>,
    /// When set, tokens must carry this `iss`.
    pub issuer: Option<String>,
    /// `/metrics` answers without a token (the default). When false (mode `jwt`), a
    /// scrape needs a token granting `metrics` or `admin`.
    pub metrics_public: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::None,
            hs256_secret: String::new(),
            rs256_public_key_pem: None,
            leeway_secs: 30,
            audience: None,
            issuer: None,
            metrics_public: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    /// Client->server WebSocket messages per second, token bucket per connection.
    pub messages_per_second: u32,
    pub burst: u32,
    /// Largest client->server WebSocket message accepted.
    pub max_message_bytes: usize,
    pub max_subscriptions_per_connection: usize,
    /// Largest HTTP request body accepted (publish batches, dataset requests).
    pub max_http_body_bytes: usize,
    /// Most events one publish request may carry.
    pub max_batch_events: usize,
    /// Messages refused by the rate limit within `FLOOD_WINDOW` after which the connection
    /// is closed with 1008 and its user (or, in mode `none`, its address) is banned.
    pub flood_refusals: u32,
    /// How long a flooding user is refused at the handshake (429).
    pub flood_ban_secs: u64,
    /// HTTP publish requests per second per user (in mode `none`, all requests share one
    /// bucket); over it, 429 `RATE_LIMIT_EXCEEDED`. 0: no limit.
    pub http_publish_per_second: u32,
    /// Requests a user may send at once before the rate applies; 0: `http_publish_per_second`.
    pub http_publish_burst: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_connections_per_user: 10,
            messages_per_second: 100,
            burst: 100,
            max_message_bytes: 65_536,
            max_subscriptions_per_connection: 100,
            max_http_body_bytes: 16 << 20,
            max_batch_events: 10_000,
            flood_refusals: 50,
            flood_ban_secs: 60,
            http_publish_per_second: 0,
            http_publish_burst: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    pub interval_secs: u64,
    pub timeout_secs: u64,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self {
            interval_secs: 25,
            timeout_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// 0 = unlimited; otherwise keep the newest N events of each channel.
    pub max_events_per_channel: u64,
    /// 0 = unlimited.
    pub max_age_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// sled page cache. sled's own default (1 GiB) is too large for small machines.
    pub cache_capacity_mb: u64,
    /// How many events one group commit may hold at most (one fsync for all of them).
    pub max_group_events: usize,
    /// Recent events kept in memory, decoded and with their frames, for resumes and slow
    /// readers; 0 reads everything from disk.
    pub recent_events_cached: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            cache_capacity_mb: 256,
            max_group_events: 16_384,
            recent_events_cached: 65_536,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Per-connection outbound queue, in deliveries (an append group, a pulse's groups, a
    /// batch). When it is full the connection stops taking live events and catches up from
    /// the log instead.
    pub queue_capacity: usize,
    /// Shortest time between two fan-out pulses: live events that arrive sooner after the
    /// last one wait for the next and go out together (one write per connection). 0 sends
    /// every append group as it comes.
    pub coalesce_ms: u64,
    /// Events read from the log per step of a resume or catch-up.
    pub catch_up_page: usize,
    /// A socket write that makes no progress for this long closes the connection with 4000.
    pub write_timeout_secs: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 256,
            coalesce_ms: 2,
            catch_up_page: 2048,
            write_timeout_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// Origins (`https://app.example.com`) whose browser pages may open WebSockets. Empty:
    /// every origin. Requests without an `Origin` header (non-browser clients) always pass.
    pub allowed_origins: Vec<String>,
}

/// Built-in TLS: both paths or neither.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// After SIGTERM, how long open connections get to receive their 1001 close before the
    /// log is flushed and the process exits.
    pub drain_timeout_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_timeout_secs: 5,
        }
    }
}

/// Outbound frame options a connection may ask for (`compress=gzip`, `delta=true`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FramesConfig {
    /// With `compress=gzip`, messages of at least this many bytes are gzipped; smaller
    /// ones stay plain, since gzip makes tiny messages bigger.
    pub gzip_min_bytes: usize,
    /// With `delta=true`, a full event goes out at least every this many deltas of a key
    /// (1 to 100).
    pub delta_full_every: u32,
    /// event_type -> the field of `data` (a dot path) whose value keys its delta chain;
    /// event types not listed chain per (channel, event_type).
    pub delta_keys: std::collections::HashMap<String, String>,
}

impl Default for FramesConfig {
    fn default() -> Self {
        let keys = [("agent_status", "agent_id"), ("agent_progress", "agent_id")];
        Self {
            gzip_min_bytes: 512,
            delta_full_every: 100,
            delta_keys: keys
                .into_iter()
                .map(|(t, f)| (t.to_string(), f.to_string()))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HighFrequencyRule {
    pub pattern: String,
    #[serde(default = "default_batch_delay")]
    pub batch_max_delay_ms: u64,
    #[serde(default = "default_batch_messages")]
    pub batch_max_messages: usize,
}

fn default_batch_delay() -> u64 {
    20
}
fn default_batch_messages() -> usize {
    256
}
