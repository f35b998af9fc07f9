//! The shared state every route and session sees: configuration, the log, the fan-out hub,
//! the publisher, the authenticator, the ban list and the shutdown signal.

use std::{ops::Deref, sync::Arc};

use tokio::sync::watch;

use crate::{
    auth::Authenticator, bans::BanList, config::Config, fanout::Hub, log::EventLog,
    protocol::DeltaKeys, publish::Publisher, rate_limit::PublishRate,
};

pub struct App {
    pub config: Config,
    pub log: Arc<dyn EventLog>,
    pub hub: Arc<Hub>,
    pub publisher: Publisher,
    /// The delta key fields (`[frames] delta_keys`), shared by the connections that take
    /// deltas.
    pub delta_keys: Arc<DeltaKeys>,
    pub auth: Authenticator,
    /// Clients refused at the handshake for a while after flooding.
    pub bans: BanList,
    /// HTTP publish requests per user (`limits.http_publish_per_second`).
    pub publish_rate: PublishRate,
    /// Turns `true` once shutdown begins; sessions close with 1001 when they see it.
    pub shutdown: watch::Receiver<bool>,
}

#[derive(Clone)]
pub struct AppState(Arc<App>);

impl AppState {
    pub fn new(app: App) -> Self {
        Self(Arc::new(app))
    }
}

impl Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}
