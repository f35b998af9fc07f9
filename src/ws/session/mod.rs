//! One WebSocket connection: its state, and the loop that `select!`s over its inputs —
//! client messages (through the rate limit), its fan-out queue, answers to its publishes,
//! the heartbeat, the expiry of its token, shutdown — and, while a subscription is catching
//! up, the next page of the log.
//!
//! Every step writes into the sink's buffer and the loop flushes once per step, so a burst
//! of events costs one socket write.
//!
//! The steps live beside the loop: `requests` (what the client asks), `delivery` (events
//! from the fan-out and from the log), `upkeep` (heartbeats, token expiry, rate answers).

use std::{
    sync::{atomic::AtomicU64, Arc},
    time::Duration,
};

use serde_json::Value;
use tokio::{io::AsyncWrite, sync::mpsc, time::MissedTickBehavior};

use super::{
    outbox::Outbox,
    publishing::{PublishAnswer, PublishRequest},
    reader::{Inbound, ReadFailure},
    replay::Replays,
    sink::{FrameSink, SinkError},
    subscriptions::Subscriptions,
};
use crate::{
    app::AppState,
    auth::Principal,
    event::{now_ms, Channel, BROADCAST_CHANNEL},
    fanout::{ConnectionHandle, Delivery},
    filter::Filter,
    metrics::METRICS,
    protocol::{self, ClientMessage, ErrorCode, Format, ServerMessage, SubscriptionInfo, Wire},
    rate_limit::{MessageRate, Verdict},
};

mod delivery;
mod requests;
mod upkeep;

/// Groups taken from the queue in one step before the socket is flushed.
const GROUPS_PER_STEP: usize = 64;

pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_LARGE: u16 = 1009;
    pub const SERVER_ERROR: u16 = 1011;
    pub const TRY_AGAIN_LATER: u16 = 1013;
    pub const LAGGING: u16 = 4000;
}

/// A subscription asked for when the connection opened (`/ws/{kind}/{id}`).
pub struct InitialSubscription {
    pub channel: Channel,
    pub since: Option<u64>,
    pub epoch: Option<String>,
    pub filter: Filter,
    pub filter_source: Value,
}

pub struct SessionParams {
    pub principal: Principal,
    pub wire: Wire,
    /// The client accepts `delta` messages.
    pub delta: bool,
    /// Who is banned if this connection floods (see `handshake::abuse_key`).
    pub abuse_key: String,
}

/// What a step decided about the connection.
enum Flow {
    /// Close with this code and reason.
    Close(u16, String),
    /// The connection is already gone or closed by the client: just stop.
    End,
}

impl From<SinkError> for Flow {
    fn from(error: SinkError) -> Self {
        match error {
            // The close reason needs the cursor; `Session::lagging` fills it in.
            SinkError::Timeout => Flow::Close(close::LAGGING, String::new()),
            SinkError::Socket(_) | SinkError::Closed => Flow::End,
        }
    }
}

pub struct Session<W> {
    app: AppState,
    conn: Arc<ConnectionHandle>,
    queue: mpsc::Receiver<Delivery>,
    inbound: mpsc::Receiver<Inbound>,
    sink: FrameSink<W>,
    subs: Subscriptions,
    replays: Replays,
    outbox: Outbox,
    principal: Principal,
    publishes: Option<(mpsc::Sender<PublishRequest>, mpsc::Receiver<PublishAnswer>)>,
    last_seen_ms: Arc<AtomicU64>,
    /// Live deliveries written into the sink since the last flush, per group: their latency
    /// is measured once the flush has put them on the socket.
    unflushed_live: Vec<(std::time::Instant, u64)>,
    rate: MessageRate,
    abuse_key: String,
}

impl<W: AsyncWrite + Unpin + Send> Session<W> {
    pub fn new(
        app: AppState,
        conn: Arc<ConnectionHandle>,
        queue: mpsc::Receiver<Delivery>,
        inbound: mpsc::Receiver<Inbound>,
        sink: FrameSink<W>,
        params: &SessionParams,
        last_seen_ms: Arc<AtomicU64>,
    ) -> Self {
        let limits = &app.config.limits;
        let rate = MessageRate::new(
            limits.messages_per_second,
            limits.burst,
            limits.flood_refusals,
        );
        let outbox = Outbox::new(params.wire, params.delta.then(|| app.delta_keys.clone()));
        Self {
            app,
            conn,
            queue,
            inbound,
            sink,
            subs: Subscriptions::default(),
            replays: Replays::default(),
            outbox,
            principal: params.principal.clone(),
            publishes: None,
            last_seen_ms,
            unflushed_live: Vec::new(),
            rate,
            abuse_key: params.abuse_key.clone(),
        }
    }

    /// Runs the connection to its end; the caller unregisters it afterwards. Returns the
    /// close code the server sent, `None` when the client closed or vanished.
    pub async fn run(mut self, initial: Option<InitialSubscription>) -> Option<u16> {
        // Steps that run once or rarely are boxed, here and in `serve`: an idle connection's
        // task then holds only the loop's own state, not room for its largest step.
        let flow = match Box::pin(self.open(initial)).await {
            Ok(()) => self.serve().await,
            Err(flow) => flow,
        };
        for sub in self.subs.listed() {
            METRICS.subscription_removed(sub.channel.kind());
        }
        match flow {
            Flow::Close(code, mut reason) => {
                if code == close::LAGGING {
                    reason = format!("lagging: resume from {}", self.subs.resume_cursor());
                }
                tracing::debug!(code, %reason, "closing");
                Box::pin(self.sink.close(code, &reason)).await;
                Some(code)
            }
            Flow::End => None,
        }
    }

    async fn open(&mut self, initial: Option<InitialSubscription>) -> Result<(), Flow> {
        // The hub offers broadcasts to every registered connection, this one included since
        // before this head was read.
        let broadcast = Channel::parse(BROADCAST_CHANNEL).expect("valid channel");
        let head = self.app.log.head();
        self.subs.add_implicit(broadcast, head);
        let established = ServerMessage::ConnectionEstablished {
            client_id: &self.conn.client_id,
            server_time: crate::event::format_ts(now_ms()),
            head,
            epoch: self.app.log.epoch(),
        };
        self.sink.send(&self.outbox.control(&established)).await?;
        if let Some(sub) = initial {
            self.start_subscription(None, sub).await?;
        }
        self.sink.flush().await?;
        Ok(())
    }

    async fn serve(&mut self) -> Flow {
        let heartbeat = &self.app.config.heartbeat;
        let period = Duration::from_secs(heartbeat.interval_secs);
        let timeout_ms = heartbeat.timeout_secs * 1000;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut shutdown = self.app.shutdown.clone();
        let expiry = token_expiry(self.principal.expires_at_ms());
        // Made once, not per step: each would register with its notifier again.
        let stopping = async move { shutdown.wait_for(|stopping| *stopping).await.map(|_| ()) };
        let conn = self.conn.clone();
        let kicked = conn.kicked();
        tokio::pin!(expiry, stopping, kicked);
        loop {
            if self.conn.take_lagged() {
                self.recover_from_lag();
            }
            let catching_up = self.subs.is_catching_up();
            let replay_wake = self.replays.next_wake();
            let step = tokio::select! {
                _ = &mut stopping => {
                    Err(Flow::Close(close::GOING_AWAY, "server shutting down".into()))
                }
                item = self.inbound.recv() => match item {
                    Some(item) => Box::pin(self.on_inbound(item)).await,
                    None => Err(Flow::End),
                },
                Some(delivery) = self.queue.recv() => Box::pin(self.on_deliveries(delivery)).await,
                Some(answer) = next_answer(&mut self.publishes) => Box::pin(self.on_published(answer)).await,
                _ = ticks.tick() => Box::pin(self.on_heartbeat(timeout_ms)).await,
                reason = &mut kicked => Err(Flow::Close(close::POLICY, reason)),
                _ = &mut expiry => Box::pin(self.on_token_expired()).await,
                _ = std::future::ready(()), if catching_up => Box::pin(self.catch_up_step()).await,
                _ = sleep_until(replay_wake), if replay_wake.is_some() => Box::pin(self.replay_step()).await,
            };
            if let Err(flow) = step {
                return flow;
            }
            if let Err(error) = Box::pin(self.sink.flush()).await {
                return error.into();
            }
            for (durable_at, count) in self.unflushed_live.drain(..) {
                METRICS.delivered_live(durable_at, count);
            }
        }
    }

    async fn on_inbound(&mut self, item: Inbound) -> Result<(), Flow> {
        match item {
            Inbound::Message(message) => match self.rate.check() {
                Verdict::Allowed => self.on_message(&message.payload, message.binary).await,
                Verdict::Refused { retry_after } => self.on_rate_limited(retry_after).await,
                Verdict::Flooding => self.on_flooding().await,
            },
            Inbound::Reply(reply) => {
                let opcode = reply.opcode;
                let frame = fastwebsockets::Frame::new(true, opcode, None, reply.payload.into());
                self.sink.write(frame).await?;
                if opcode == fastwebsockets::OpCode::Close {
                    self.sink.flush().await?;
                    return Err(Flow::End);
                }
                Ok(())
            }
            Inbound::Closed => Err(Flow::End),
            Inbound::Failed(ReadFailure::TooLarge) => {
                let limit = self.app.config.limits.max_message_bytes;
                self.send_error(
                    None,
                    ErrorCode::MessageTooLarge,
                    &format!("messages are limited to {limit} bytes"),
                    None,
                )
                .await?;
                Err(Flow::Close(close::TOO_LARGE, "message too large".into()))
            }
            Inbound::Failed(ReadFailure::InvalidUtf8) => Err(Flow::Close(
                close::INVALID_DATA,
                "text frame is not UTF-8".into(),
            )),
            Inbound::Failed(ReadFailure::Protocol(why)) => {
                Err(Flow::Close(close::PROTOCOL_ERROR, *why))
            }
            Inbound::Failed(ReadFailure::Gone) => Err(Flow::End),
        }
    }

    async fn on_message(&mut self, payload: &[u8], binary: bool) -> Result<(), Flow> {
        let parsed = if binary {
            self.parse_binary(payload)
        } else {
            ClientMessage::parse_json(payload)
        };
        let message = match parsed {
            Ok(message) => message,
            Err(e) => {
                return self
                    .send_error(e.id.as_ref(), e.code, &e.message, None)
                    .await
            }
        };
        match message {
            ClientMessage::Subscribe(m) => self.on_subscribe(m).await,
            ClientMessage::Unsubscribe { id, channel } => self.on_unsubscribe(id, &channel).await,
            ClientMessage::GetSubscriptions { id } => {
                let listed = self.subs.listed();
                let subscriptions = listed
                    .iter()
                    .map(|s| SubscriptionInfo {
                        channel: s.channel.as_str(),
                        filters: &s.filter_source,
                    })
                    .collect();
                let message = ServerMessage::Subscriptions {
                    id: id.as_ref(),
                    subscriptions,
                };
                let frame = self.outbox.control(&message);
                Ok(self.sink.send(&frame).await?)
            }
            ClientMessage::Ping { id } => {
                self.send_control(&ServerMessage::Pong { id: id.as_ref() })
                    .await
            }
            ClientMessage::Publish(m) => self.on_publish(m).await,
            ClientMessage::Replay(m) => self.on_replay(m).await,
            ClientMessage::ReplayStop { id } => self.on_replay_stop(id).await,
        }
    }

    /// A binary client frame: MessagePack on `format=msgpack` connections, gzip (of JSON,
    /// or of MessagePack there) on any.
    fn parse_binary(&self, payload: &[u8]) -> Result<ClientMessage, protocol::ParseError> {
        let fail = |message: &str| protocol::ParseError {
            id: None,
            code: ErrorCode::InvalidMessage,
            message: message.into(),
        };
        let msgpack = self.outbox.wire().format == Format::MsgPack;
        let unpacked;
        let bytes = if payload.starts_with(&[0x1f, 0x8b]) {
            let limit = self.app.config.limits.max_message_bytes;
            unpacked = protocol::gunzip_limited(payload, limit).ok_or_else(|| {
                fail("a gzip frame must unpack to a message within the size limit")
            })?;
            &unpacked[..]
        } else if msgpack {
            payload
        } else {
            return Err(fail(
                "binary frames are read as gzip, or as MessagePack on connections with format=msgpack",
            ));
        };
        if msgpack {
            ClientMessage::parse_msgpack(bytes)
        } else {
            ClientMessage::parse_json(bytes)
        }
    }

    async fn send_control(&mut self, message: &ServerMessage<'_>) -> Result<(), Flow> {
        let frame = self.outbox.control(message);
        Ok(self.sink.send(&frame).await?)
    }

    async fn send_error(
        &mut self,
        id: Option<&Value>,
        code: ErrorCode,
        message: &str,
        details: Option<Value>,
    ) -> Result<(), Flow> {
        METRICS.error(code);
        self.send_control(&ServerMessage::Error {
            id,
            code,
            message,
            details,
        })
        .await
    }
}

fn internal(error: crate::log::LogError) -> Flow {
    tracing::error!(%error, "log read failed during delivery");
    Flow::Close(close::SERVER_ERROR, "internal error".into())
}

/// Completes when the token expires (never for credentials without expiry).
async fn token_expiry(expires_at_ms: Option<u64>) {
    match expires_at_ms {
        Some(at) => {
            let left = Duration::from_millis(at.saturating_sub(now_ms()));
            tokio::time::sleep(left).await;
        }
        None => std::future::pending().await,
    }
}

async fn next_answer(
    publishes: &mut Option<(mpsc::Sender<PublishRequest>, mpsc::Receiver<PublishAnswer>)>,
) -> Option<PublishAnswer> {
    match publishes {
        Some((_, answers)) => answers.recv().await,
        None => std::future::pending().await,
    }
}

/// Waits until `wake`; forever when there is nothing to wake for.
async fn sleep_until(wake: Option<tokio::time::Instant>) {
    match wake {
        Some(instant) => tokio::time::sleep_until(instant).await,
        None => std::future::pending().await,
    }
}
