//! One WebSocket connection: its state, and the loop that `select!`s over its inputs —
//! client messages (through the rate limit), its fan-out queue, answers to its publishes,
//! the heartbeat, the expiry of its token, shutdown — and, while a subscription is catching
//! up, the next page of the log.
//!
//! Every step writes into the sink's buffer and the loop flushes once per step, so a burst
//! of events costs one socket write.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use serde_json::Value;
use tokio::{io::AsyncWrite, sync::mpsc, time::MissedTickBehavior};

use super::{
    outbox::Outbox,
    publishing::{self, PublishAnswer, PublishRequest},
    reader::{Inbound, ReadFailure},
    replay::{ReplayRequest, Replays},
    sink::{FrameSink, SinkError},
    subscriptions::{resolve_start, Subscriptions},
};
use crate::{
    app::AppState,
    auth::Principal,
    batching::Batch,
    error::ApiError,
    event::Event,
    event::{now_ms, Channel, BROADCAST_CHANNEL},
    fanout::{ConnectionHandle, Delivery},
    filter::Filter,
    log::{AppendedGroup, ReadRange},
    metrics::METRICS,
    protocol::{
        self, ClientMessage, ErrorCode, Format, PublishMessage, ReplayMessage, ServerMessage,
        SubscribeMessage, SubscriptionInfo, Wire,
    },
    publish::{self, EventInput},
    rate_limit::{MessageRate, Verdict},
};

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

    async fn on_subscribe(&mut self, m: SubscribeMessage) -> Result<(), Flow> {
        let id = m.id.as_ref();
        let channel = match Channel::parse(&m.channel) {
            Ok(channel) => channel,
            Err(e) => {
                return self
                    .send_error(id, ErrorCode::InvalidChannel, &e.to_string(), None)
                    .await
            }
        };
        if !self.principal.can_subscribe(&channel) {
            let message = format!("the token does not grant subscribe on {channel}");
            return self
                .send_error(id, ErrorCode::Forbidden, &message, None)
                .await;
        }
        let limit = self.app.config.limits.max_subscriptions_per_connection;
        if !self.subs.contains(channel.as_str()) && self.subs.count() >= limit {
            let message = format!("a connection holds at most {limit} subscriptions");
            let details = serde_json::json!({ "limit": limit });
            return self
                .send_error(id, ErrorCode::SubscriptionLimit, &message, Some(details))
                .await;
        }
        let filter_source = m.filters.clone().unwrap_or(Value::Null);
        let filter = match Filter::parse(&filter_source) {
            Ok(filter) => filter,
            Err(e) => {
                return self
                    .send_error(id, ErrorCode::InvalidMessage, &e.to_string(), None)
                    .await
            }
        };
        let initial = InitialSubscription {
            channel,
            since: m.since.map(|c| c.0),
            epoch: m.epoch.filter(|e| !e.is_empty()),
            filter,
            filter_source,
        };
        self.start_subscription(m.id.as_ref(), initial).await
    }

    /// Registers with the fan-out first, then reads the position: see `subscriptions.rs`
    /// for why this order makes the hand-over gap-free.
    async fn start_subscription(
        &mut self,
        id: Option<&Value>,
        sub: InitialSubscription,
    ) -> Result<(), Flow> {
        self.app.hub.subscribe(&self.conn, &sub.channel);
        let position = match self.app.log.position(&sub.channel).await {
            Ok(position) => position,
            Err(e) => {
                let e = ApiError::from(e);
                return self.send_error(id, e.code, &e.message, None).await;
            }
        };
        let (start, reason) = resolve_start(
            sub.since,
            sub.epoch.as_deref(),
            self.app.log.epoch(),
            &position,
        );
        let message = ServerMessage::Subscribed {
            id,
            channel: sub.channel.as_str(),
            recovered: reason.is_none(),
            reason,
            head: position.head,
            earliest: position.earliest,
        };
        self.send_control(&message).await?;
        if !self.subs.contains(sub.channel.as_str()) {
            METRICS.subscription_added(sub.channel.kind());
        }
        // A (re)started subscription begins every delta chain with a full event.
        self.outbox.forget_channel(&sub.channel);
        let batched = self.app.hub.high_frequency().is_batched(&sub.channel);
        self.subs
            .add(sub.channel, sub.filter, sub.filter_source, start, batched);
        Ok(())
    }

    /// Ends the subscription and every replay of the channel; answers `NOT_FOUND` only
    /// when there was neither.
    async fn on_unsubscribe(&mut self, id: Option<Value>, name: &str) -> Result<(), Flow> {
        let stopped = self.replays.stop_channel(name, self.outbox.wire());
        let was_subscribed = self.subs.remove(name);
        if !was_subscribed && stopped.is_empty() {
            let message = format!(
                "not subscribed to `{}`",
                name.chars().take(200).collect::<String>()
            );
            return self
                .send_error(id.as_ref(), ErrorCode::NotFound, &message, None)
                .await;
        }
        for frame in &stopped {
            self.sink.send(frame).await?;
        }
        let channel = Channel::parse(name).expect("subscribed or replayed channels are valid");
        if was_subscribed {
            METRICS.subscription_removed(channel.kind());
            self.outbox.forget_channel(&channel);
        }
        if was_subscribed && channel.as_str() == BROADCAST_CHANNEL {
            // Broadcasts keep coming without a subscription, as for every connection.
            self.subs.add_implicit(channel.clone(), self.app.log.head());
        } else if was_subscribed {
            self.app.hub.unsubscribe(self.conn.id, &channel);
        }
        self.send_control(&ServerMessage::Unsubscribed {
            id: id.as_ref(),
            channel: channel.as_str(),
        })
        .await
    }

    async fn on_replay(&mut self, m: ReplayMessage) -> Result<(), Flow> {
        let id = m.id.clone();
        let started = ReplayRequest::parse(m, self.app.log.head()).and_then(|request| {
            if !self.principal.can_subscribe(&request.channel) {
                return Err(super::replay::Refusal {
                    code: ErrorCode::Forbidden,
                    message: format!("the token does not grant subscribe on {}", request.channel),
                });
            }
            self.replays.start(request, tokio::time::Instant::now())
        });
        match started {
            Ok(()) => Ok(()),
            Err(refusal) => {
                self.send_error(id.as_ref(), refusal.code, &refusal.message, None)
                    .await
            }
        }
    }

    async fn on_replay_stop(&mut self, id: Option<Value>) -> Result<(), Flow> {
        match id
            .as_ref()
            .and_then(|id| self.replays.stop(id, self.outbox.wire()))
        {
            Some(frame) => Ok(self.sink.send(&frame).await?),
            None => {
                let message = "no running replay has this id";
                self.send_error(id.as_ref(), ErrorCode::NotFound, message, None)
                    .await
            }
        }
    }

    /// Sends what the running replays have due now (at most a page each).
    async fn replay_step(&mut self) -> Result<(), Flow> {
        let page = self.app.config.delivery.catch_up_page;
        let frames = self
            .replays
            .step(
                self.app.log.as_ref(),
                page,
                self.outbox.wire(),
                tokio::time::Instant::now(),
            )
            .await
            .map_err(internal)?;
        for frame in &frames {
            self.sink.send(frame).await?;
        }
        Ok(())
    }

    async fn on_publish(&mut self, m: PublishMessage) -> Result<(), Flow> {
        let id = m.id;
        let input = EventInput {
            channel: m.channel,
            channels: m.channels,
            event_type: m.event_type,
            data: m.data,
            id: m.idempotency_key,
        };
        let event = match publish::validate(input) {
            Ok(event) => event,
            Err(e) => {
                return self
                    .send_error(id.as_ref(), e.code, &e.message, e.details)
                    .await
            }
        };
        if let Some(channel) = event
            .channels
            .iter()
            .find(|c| !self.principal.can_publish(c))
        {
            let message = format!("the token does not grant publish on {channel}");
            return self
                .send_error(id.as_ref(), ErrorCode::Forbidden, &message, None)
                .await;
        }
        let publisher = self.app.publisher.clone();
        let (requests, _) = self
            .publishes
            .get_or_insert_with(|| publishing::spawn(publisher));
        // Waits only when MAX_IN_FLIGHT publishes are unanswered: backpressure on the client.
        if requests.send(PublishRequest { id, event }).await.is_err() {
            return Err(Flow::Close(
                close::SERVER_ERROR,
                "publish pipeline stopped".into(),
            ));
        }
        Ok(())
    }

    async fn on_published(&mut self, answer: PublishAnswer) -> Result<(), Flow> {
        match answer.result {
            Ok(seq) => {
                self.send_control(&ServerMessage::Published {
                    id: answer.id.as_ref(),
                    seq,
                })
                .await
            }
            Err(e) => {
                self.send_error(answer.id.as_ref(), e.code, &e.message, e.details)
                    .await
            }
        }
    }

    async fn on_deliveries(&mut self, first: Delivery) -> Result<(), Flow> {
        self.deliver(&first).await?;
        for _ in 1..GROUPS_PER_STEP {
            match self.queue.try_recv() {
                Ok(delivery) => self.deliver(&delivery).await?,
                Err(_) => break,
            }
        }
        Ok(())
    }

    async fn deliver(&mut self, delivery: &Delivery) -> Result<(), Flow> {
        match delivery {
            Delivery::Group(group) => self.deliver_live(group).await,
            Delivery::Groups(groups) => {
                for group in groups {
                    self.deliver_live(group).await?;
                }
                Ok(())
            }
            Delivery::Batch(batch) => self.deliver_batch(batch).await,
        }
    }

    async fn deliver_live(&mut self, group: &AppendedGroup) -> Result<(), Flow> {
        let mut delivered = 0;
        for event in &group.events {
            if let Some(index) = self.subs.route_live(event) {
                let frame = self.outbox.event(event, index);
                self.sink.send(&frame).await?;
                delivered += 1;
            }
        }
        if delivered > 0 {
            METRICS.events_delivered.inc_by(delivered);
            self.unflushed_live.push((group.durable_at, delivered));
        }
        Ok(())
    }

    /// A flushed batch of a high-frequency channel: its events this connection takes, as
    /// one `batch` frame — the batch's shared frame when it takes them all.
    async fn deliver_batch(&mut self, batch: &Batch) -> Result<(), Flow> {
        let picked: Vec<&Arc<Event>> = batch
            .events
            .iter()
            .filter(|event| self.subs.route_batched(&batch.channel, event))
            .collect();
        if picked.is_empty() {
            return Ok(());
        }
        let whole = (picked.len() == batch.events.len()).then_some(&batch.frames);
        let frame = self.outbox.batch(&picked, &batch.channel, whole);
        self.sink.send(&frame).await?;
        let delivered = picked.len() as u64;
        METRICS.events_delivered.inc_by(delivered);
        self.unflushed_live.push((batch.durable_at, delivered));
        Ok(())
    }

    /// The queue overflowed: what it held (and what it missed) is read from the log instead.
    fn recover_from_lag(&mut self) {
        while self.queue.try_recv().is_ok() {}
        self.subs.start_lag_recovery();
        METRICS.lag_recoveries.inc();
        tracing::debug!(client_id = %self.conn.client_id, "queue overflowed; catching up from the log");
    }

    /// Delivers one page of the log to the subscription that is furthest behind.
    async fn catch_up_step(&mut self) -> Result<(), Flow> {
        let Some((channel, cursor)) = self.subs.next_catching_up() else {
            return Ok(());
        };
        let log = self.app.log.clone();
        let head_before_read = log.head();
        let limit = self.app.config.delivery.catch_up_page;
        let channels = [channel.clone()];
        let range = ReadRange {
            channels: &channels,
            after: cursor,
            until: u64::MAX,
            limit,
        };
        let page = log.read(range).await.map_err(internal)?;
        // Checked after the read: retention raises `removed_upto` before it deletes, so a
        // page that lost events to retention (before or during the read) is caught here.
        let position = log.position(&channel).await.map_err(internal)?;
        if position.removed_upto > cursor {
            // Retention removed events this connection had not received: it must know.
            return Err(Flow::Close(close::LAGGING, String::new()));
        }
        let picked: Vec<&Arc<Event>> = page
            .iter()
            .filter(|event| self.subs.route_catch_up(&channel, event))
            .collect();
        match self.app.hub.high_frequency().rule_for(&channel) {
            // A high-frequency channel's backlog goes out in batches too.
            Some(rule) => {
                for chunk in picked.chunks(rule.max_messages) {
                    let frame = self.outbox.batch(chunk, &channel, None);
                    self.sink.send(&frame).await?;
                }
            }
            None => {
                for event in &picked {
                    let index = event
                        .channel_index(channel.as_str())
                        .expect("read from this channel");
                    let frame = self.outbox.event(event, index);
                    self.sink.send(&frame).await?;
                }
            }
        }
        METRICS.events_delivered.inc_by(picked.len() as u64);
        if page.len() < limit {
            if let Some(seq) = self.subs.finish_catch_up(&channel, head_before_read) {
                self.send_control(&ServerMessage::CaughtUp {
                    channel: channel.as_str(),
                    seq,
                })
                .await?;
            }
        }
        Ok(())
    }

    /// The message is dropped unread: reading it is the cost the limit protects.
    async fn on_rate_limited(&mut self, retry_after: Duration) -> Result<(), Flow> {
        let limit = self.rate.per_second();
        let retry_after_ms = retry_after.as_millis().max(1) as u64;
        let message = format!("at most {limit} messages per second; message dropped");
        let details = serde_json::json!({ "limit": limit, "retry_after_ms": retry_after_ms });
        self.send_error(None, ErrorCode::RateLimitExceeded, &message, Some(details))
            .await
    }

    async fn on_flooding(&mut self) -> Result<(), Flow> {
        self.app.bans.ban(&self.abuse_key);
        tracing::info!(
            client_id = %self.conn.client_id,
            user = %self.conn.user,
            ban = %self.abuse_key,
            "closing a connection that kept flooding; its client is banned for a while"
        );
        Err(Flow::Close(
            close::POLICY,
            "rate limit exceeded repeatedly".into(),
        ))
    }

    async fn on_token_expired(&mut self) -> Result<(), Flow> {
        self.send_error(
            None,
            ErrorCode::Unauthorized,
            "the token has expired; reconnect with a new one",
            None,
        )
        .await?;
        Err(Flow::Close(close::POLICY, "token expired".into()))
    }

    async fn on_heartbeat(&mut self, timeout_ms: u64) -> Result<(), Flow> {
        let silent_for = now_ms().saturating_sub(self.last_seen_ms.load(Ordering::Relaxed));
        if silent_for > timeout_ms {
            return Err(Flow::Close(close::NORMAL, "heartbeat timeout".into()));
        }
        let ping =
            fastwebsockets::Frame::new(true, fastwebsockets::OpCode::Ping, None, Vec::new().into());
        Ok(self.sink.write(ping).await?)
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
