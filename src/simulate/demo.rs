//! `serve --demo`: the server publishes simulated traffic into its own log, so that a
//! newcomer has live channels to watch at once. Events go through the in-process write path
//! (`publish::validate`, then `Publisher`), not HTTP, so the demo works in every auth mode.

use std::net::SocketAddr;

use serde_json::Value;
use tokio::task::JoinHandle;

use super::{run_paced, run_prefix, world::World, EventSink, Pace};
use crate::{
    app::AppState,
    error::ApiError,
    publish::{validate, EventInput, Publisher},
    server::Companion,
};

/// The demo's traffic.
#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    pub arenas: usize,
    /// Events per second.
    pub rate: f64,
}

impl Default for DemoOptions {
    /// Modest: enough to watch events scroll by, little enough to leave a laptop alone.
    fn default() -> Self {
        Self {
            arenas: 2,
            rate: 20.0,
        }
    }
}

impl DemoOptions {
    /// The defaults, at `rate` events per second when one is given.
    pub fn with_rate(rate: Option<f64>) -> Self {
        let defaults = Self::default();
        Self {
            rate: rate.unwrap_or(defaults.rate),
            ..defaults
        }
    }
}

/// The companion task `server::serve` starts once the server listens.
pub fn companion(options: DemoOptions) -> Companion {
    Box::new(move |state, addr| start(state, addr, options))
}

struct InProcessSink {
    publisher: Publisher,
}

impl EventSink for InProcessSink {
    type Error = ApiError;

    async fn publish(&mut self, batch: &[Value]) -> Result<(), ApiError> {
        let events = batch
            .iter()
            .map(|event| {
                let input: EventInput = serde_json::from_value(event.clone())
                    .map_err(|e| ApiError::bad_request(e.to_string()))?;
                validate(input)
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.publisher.publish(events).await?;
        Ok(())
    }
}

/// Logs what to open, then publishes until shutdown begins.
fn start(state: AppState, addr: SocketAddr, options: DemoOptions) -> JoinHandle<()> {
    let host = if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    };
    let secure = state.config.tls.cert.is_some();
    let (ws, http) = if secure {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    tracing::info!(
        rate = options.rate,
        arenas = options.arenas,
        "demo traffic: AI agents competing in arenas a1..a{}; watch it live with \
         `websocat {ws}://{host}/ws/arena/a1`, read history with \
         `curl -s '{http}://{host}/api/v1/channels/arena/a1/events?since=0&limit=20'`",
        options.arenas
    );
    let seed = rand::random_range(0..1_000_000);
    tokio::spawn(async move {
        let mut world = World::new(seed, options.arenas);
        let mut sink = InProcessSink {
            publisher: state.publisher.clone(),
        };
        let mut shutdown = state.shutdown.clone();
        let stop = async move {
            let _ = shutdown.wait_for(|stopping| *stopping).await;
        };
        let pace = Pace {
            rate: options.rate,
            duration: None,
        };
        let prefix = run_prefix("demo");
        match run_paced(&mut world, pace, &prefix, &mut sink, stop).await {
            Ok(published) => tracing::info!(published, "demo traffic stopped"),
            Err(error) => tracing::warn!("demo traffic stopped: {}", error.message),
        }
    })
}
