//! What a client asks of its connection: subscribe and unsubscribe, replays, publishing
//! (and the answer once the append is durable).

use serde_json::Value;
use tokio::io::AsyncWrite;

use super::{close, internal, Flow, InitialSubscription, Session};
use crate::{
    error::ApiError,
    event::{Channel, BROADCAST_CHANNEL},
    filter::Filter,
    metrics::METRICS,
    protocol::{ErrorCode, PublishMessage, ReplayMessage, ServerMessage, SubscribeMessage},
    publish::{self, EventInput},
    ws::{
        publishing::{self, PublishAnswer, PublishRequest},
        replay::ReplayRequest,
        subscriptions::resolve_start,
    },
};

impl<W: AsyncWrite + Unpin + Send> Session<W> {
    pub(super) async fn on_subscribe(&mut self, m: SubscribeMessage) -> Result<(), Flow> {
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
    pub(super) async fn start_subscription(
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
    pub(super) async fn on_unsubscribe(
        &mut self,
        id: Option<Value>,
        name: &str,
    ) -> Result<(), Flow> {
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

    pub(super) async fn on_replay(&mut self, m: ReplayMessage) -> Result<(), Flow> {
        let id = m.id.clone();
        let started = ReplayRequest::parse(m, self.app.log.head()).and_then(|request| {
            if !self.principal.can_subscribe(&request.channel) {
                return Err(crate::ws::replay::Refusal {
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

    pub(super) async fn on_replay_stop(&mut self, id: Option<Value>) -> Result<(), Flow> {
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
    pub(super) async fn replay_step(&mut self) -> Result<(), Flow> {
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

    pub(super) async fn on_publish(&mut self, m: PublishMessage) -> Result<(), Flow> {
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

    pub(super) async fn on_published(&mut self, answer: PublishAnswer) -> Result<(), Flow> {
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
}
