//! The one typed configuration: defaults, the TOML file, environment overrides, validation.
//!
//! Every key of the public contract lives here with its default. A bad value fails at start
//! with a message naming the key and what it accepts; nothing downstream re-validates.

use std::{net::SocketAddr, path::PathBuf};

use serde::Deserialize;

use crate::event::ChannelPattern;

mod sections;

pub use sections::*;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP/WebSocket listener binds; port 0 picks a free port.
    pub listen: String,
    pub data_dir: PathBuf,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub heartbeat: HeartbeatConfig,
    pub retention: RetentionConfig,
    pub storage: StorageConfig,
    pub delivery: DeliveryConfig,
    pub shutdown: ShutdownConfig,
    pub security: SecurityConfig,
    pub tls: TlsConfig,
    pub frames: FramesConfig,
    pub high_frequency: Vec<HighFrequencyRule>,
    /// `serve --insecure-demo`: mode `none` may listen on a non-loopback address. Only the
    /// command line sets it, so that a config file cannot open a demo server to the network.
    #[serde(skip)]
    pub insecure_demo: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8000".into(),
            data_dir: PathBuf::from("./data"),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            heartbeat: HeartbeatConfig::default(),
            retention: RetentionConfig::default(),
            storage: StorageConfig::default(),
            delivery: DeliveryConfig::default(),
            shutdown: ShutdownConfig::default(),
            security: SecurityConfig::default(),
            tls: TlsConfig::default(),
            frames: FramesConfig::default(),
            high_frequency: Vec::new(),
            insecure_demo: false,
        }
    }
}

/// Overrides taken from the command line; they win over the environment and the file.
#[derive(Debug, Default, Clone)]
pub struct CliOverrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub insecure_demo: bool,
}

impl Config {
    /// Loads the file (if any), applies `STREAMLOG_*` variables, then the CLI flags, and
    /// validates the result.
    pub fn load(file: Option<&std::path::Path>, cli: &CliOverrides) -> Result<Self, ConfigError> {
        let mut config = match file {
            Some(path) => Self::from_toml_file(path)?,
            None => Config::default(),
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        if let Some(listen) = &cli.listen {
            config.listen = listen.clone();
        }
        if let Some(dir) = &cli.data_dir {
            config.data_dir = dir.clone();
        }
        config.insecure_demo = cli.insecure_demo;
        config.validate()?;
        Ok(config)
    }

    fn from_toml_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }

    fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = var("STREAMLOG_LISTEN") {
            self.listen = v;
        }
        if let Some(v) = var("STREAMLOG_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = var("STREAMLOG_AUTH_MODE") {
            self.auth.mode = match v.as_str() {
                "none" => AuthMode::None,
                "jwt" => AuthMode::Jwt,
                other => {
                    return Err(invalid(
                        "STREAMLOG_AUTH_MODE",
                        format!("`{other}` is not a mode; use `none` or `jwt`"),
                    ))
                }
            };
        }
        if let Some(v) = var("STREAMLOG_HS256_SECRET") {
            self.auth.hs256_secret = v;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let addr = self.listen_addr()?;
        if self.auth.mode == AuthMode::None && !addr.ip().is_loopback() && !self.insecure_demo {
            return Err(invalid(
                "auth.mode",
                format!(
                    "mode `none` lets anyone publish and read; it only listens on loopback, \
                     not on {addr}. Use auth.mode = \"jwt\", or pass --insecure-demo"
                ),
            ));
        }
        self.validate_security()?;
        if self.auth.mode == AuthMode::Jwt
            && self.auth.hs256_secret.is_empty()
            && self.auth.rs256_public_key_pem.is_none()
        {
            return Err(invalid(
                "auth.hs256_secret",
                "auth.mode = \"jwt\" needs hs256_secret or rs256_public_key_pem",
            ));
        }
        let positive = [
            ("limits.max_connections", self.limits.max_connections),
            (
                "limits.max_connections_per_user",
                self.limits.max_connections_per_user,
            ),
            (
                "limits.messages_per_second",
                self.limits.messages_per_second as usize,
            ),
            ("limits.burst", self.limits.burst as usize),
            ("limits.max_message_bytes", self.limits.max_message_bytes),
            (
                "limits.max_subscriptions_per_connection",
                self.limits.max_subscriptions_per_connection,
            ),
            (
                "limits.max_http_body_bytes",
                self.limits.max_http_body_bytes,
            ),
            ("limits.max_batch_events", self.limits.max_batch_events),
            ("limits.flood_refusals", self.limits.flood_refusals as usize),
            ("limits.flood_ban_secs", self.limits.flood_ban_secs as usize),
            (
                "heartbeat.interval_secs",
                self.heartbeat.interval_secs as usize,
            ),
            (
                "heartbeat.timeout_secs",
                self.heartbeat.timeout_secs as usize,
            ),
            (
                "storage.cache_capacity_mb",
                self.storage.cache_capacity_mb as usize,
            ),
            ("storage.max_group_events", self.storage.max_group_events),
            ("delivery.queue_capacity", self.delivery.queue_capacity),
            ("delivery.catch_up_page", self.delivery.catch_up_page),
            (
                "delivery.write_timeout_secs",
                self.delivery.write_timeout_secs as usize,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if self.heartbeat.timeout_secs <= self.heartbeat.interval_secs {
            return Err(invalid(
                "heartbeat.timeout_secs",
                "must be greater than heartbeat.interval_secs",
            ));
        }
        if !(1..=100).contains(&self.frames.delta_full_every) {
            return Err(invalid(
                "frames.delta_full_every",
                "must be between 1 and 100",
            ));
        }
        for (event_type, field) in &self.frames.delta_keys {
            if field.is_empty() || field.split('.').any(str::is_empty) {
                return Err(invalid(
                    &format!("frames.delta_keys.{event_type}"),
                    format!("`{field}` is not a field path like `agent_id` or `agent.id`"),
                ));
            }
        }
        for (i, rule) in self.high_frequency.iter().enumerate() {
            let key = format!("high_frequency[{i}]");
            ChannelPattern::new(&rule.pattern)
                .map_err(|e| invalid(&format!("{key}.pattern"), e.to_string()))?;
            if rule.batch_max_messages == 0 {
                return Err(invalid(
                    &format!("{key}.batch_max_messages"),
                    "must be greater than 0",
                ));
            }
        }
        Ok(())
    }

    fn validate_security(&self) -> Result<(), ConfigError> {
        for (i, origin) in self.security.allowed_origins.iter().enumerate() {
            let well_formed = origin.split_once("://").is_some_and(|(scheme, host)| {
                !scheme.is_empty() && !host.is_empty() && !host.contains('/')
            });
            if !well_formed {
                return Err(invalid(
                    &format!("security.allowed_origins[{i}]"),
                    format!("`{origin}` is not an origin like https://app.example.com"),
                ));
            }
        }
        match (&self.tls.cert, &self.tls.key) {
            (Some(_), None) => Err(invalid("tls.key", "tls.cert is set; tls.key is needed too")),
            (None, Some(_)) => Err(invalid(
                "tls.cert",
                "tls.key is set; tls.cert is needed too",
            )),
            _ => Ok(()),
        }
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| {
            invalid(
                "listen",
                format!("`{}` is not an address like 127.0.0.1:8000", self.listen),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_example_parses_with_defaults_filled_in() {
        let config: Config = toml::from_str(
            r#"
            listen = "127.0.0.1:9000"
            [auth]
            mode = "none"
            [retention]
            max_events_per_channel = 5
            [[high_frequency]]
            pattern = "arena/*"
            batch_max_delay_ms = 20
            batch_max_messages = 256
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.limits.max_message_bytes, 65_536);
        assert_eq!(config.heartbeat.interval_secs, 25);
        assert_eq!(config.retention.max_events_per_channel, 5);
        assert_eq!(config.high_frequency[0].pattern, "arena/*");
    }

    #[test]
    fn unknown_key_and_bad_mode_name_the_problem() {
        let err = toml::from_str::<Config>("[limits]\nmax_conections = 3").unwrap_err();
        assert!(err.to_string().contains("max_conections"), "{err}");
        let err = toml::from_str::<Config>("[auth]\nmode = \"ldap\"").unwrap_err();
        assert!(err.to_string().contains("none"), "{err}");
    }

    #[test]
    fn env_overrides_and_validation() {
        let mut config = Config::default();
        config
            .apply_env(|k| match k {
                "STREAMLOG_AUTH_MODE" => Some("jwt".into()),
                "STREAMLOG_LISTEN" => Some("127.0.0.1:0".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(config.listen, "127.0.0.1:0");
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("auth.hs256_secret"), "{err}");
        config.auth.hs256_secret = "s".into();
        config.validate().unwrap();
        let err = config
            .apply_env(|k| (k == "STREAMLOG_AUTH_MODE").then(|| "maybe".into()))
            .unwrap_err();
        assert!(err.to_string().contains("none"));
    }

    #[test]
    fn mode_none_stays_on_loopback_unless_the_demo_is_declared_insecure() {
        let mut config = Config {
            listen: "0.0.0.0:8000".into(),
            ..Config::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("auth.mode") && err.contains("--insecure-demo"),
            "{err}"
        );
        config.insecure_demo = true;
        config.validate().unwrap();
        config.insecure_demo = false;
        config.auth.mode = AuthMode::Jwt;
        config.auth.hs256_secret = "s".into();
        config.validate().unwrap();
        for loopback in ["127.0.0.1:0", "[::1]:0", "127.0.0.2:80"] {
            let config = Config {
                listen: loopback.into(),
                ..Config::default()
            };
            config.validate().unwrap();
        }
    }

    #[test]
    fn security_and_tls_keys_are_checked() {
        let cases = [
            (
                "[security]\nallowed_origins = [\"https://a.example\", \"x\"]",
                "security.allowed_origins[1]",
            ),
            (
                "[security]\nallowed_origins = [\"https://a.example/\"]",
                "security.allowed_origins[0]",
            ),
            ("[tls]\ncert = \"c.pem\"", "tls.key"),
            ("[tls]\nkey = \"k.pem\"", "tls.cert"),
            ("[limits]\nflood_refusals = 0", "limits.flood_refusals"),
        ];
        for (text, key) in cases {
            let config: Config = toml::from_str(text).unwrap();
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let config: Config = toml::from_str(
            "[security]\nallowed_origins = [\"http://localhost:3000\"]\n[tls]\ncert = \"c\"\nkey = \"k\"",
        )
        .unwrap();
        config.validate().unwrap();
        assert!(config.tls.enabled());
    }
}
