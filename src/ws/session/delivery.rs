//! Events on their way out: what the fan-out queued for this connection (append groups,
//! pulses, batches), and the log pages of a subscription that is catching up — after a
//! resume, or after its queue overflowed.

use std::{sync::Arc, time::Instant};

use tokio::io::AsyncWrite;

use super::{close, internal, Flow, Session, GROUPS_PER_STEP};
use crate::{
    batching::Batch,
    event::Event,
    fanout::{Delivery, Run},
    log::ReadRange,
    metrics::METRICS,
    protocol::{self, ServerMessage},
    ws::sink,
};

impl<W: AsyncWrite + Unpin + Send> Session<W> {
    pub(super) async fn on_deliveries(&mut self, first: Delivery) -> Result<(), Flow> {
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
            Delivery::Group(group) => self.deliver_live(&group.events, group.durable_at).await,
            Delivery::Groups(groups) => {
                for group in groups.iter() {
                    self.deliver_live(&group.events, group.durable_at).await?;
                }
                Ok(())
            }
            Delivery::Run(run) => self.deliver_run(run).await,
            Delivery::Batch(batch) => self.deliver_batch(batch).await,
        }
    }

    /// Live events of one append group, made durable at `durable_at`: those this connection
    /// takes, each through its channel.
    async fn deliver_live(
        &mut self,
        events: &[Arc<Event>],
        durable_at: Instant,
    ) -> Result<(), Flow> {
        let mut delivered = 0;
        for event in events {
            if let Some(index) = self.subs.route_live(event) {
                let frame = self.outbox.event(event, index);
                self.sink.send(&frame).await?;
                delivered += 1;
            }
        }
        if delivered > 0 {
            self.unflushed_live.push((durable_at, delivered));
        }
        Ok(())
    }

    /// A pulse's run of one channel: its shared, laid-out frames when this connection takes
    /// every event of it as it is; otherwise its events one by one, group by group.
    async fn deliver_run(&mut self, run: &Run) -> Result<(), Flow> {
        let takes_all = self.outbox.shares_event_frames()
            && self
                .subs
                .take_run(&run.channel, run.first_seq(), run.last_seq());
        if !takes_all {
            let mut events = run.events.as_slice();
            for &(durable_at, count) in &run.groups {
                let (these, rest) = events.split_at(count);
                self.deliver_live(these, durable_at).await?;
                events = rest;
            }
            return Ok(());
        }
        let wire = self.outbox.wire();
        let laid_out = run.laid_out(wire, || {
            // Each event of a run is in the run's channel alone: its channel number 0.
            sink::lay_out(
                run.events
                    .iter()
                    .map(|event| protocol::event_frame(event, 0, wire)),
            )
        });
        self.sink
            .send_laid_out(laid_out, run.events.len() as u64)
            .await?;
        self.unflushed_live.extend(
            run.groups
                .iter()
                .filter(|(_, count)| *count > 0)
                .map(|&(durable_at, count)| (durable_at, count as u64)),
        );
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
        self.unflushed_live
            .push((batch.durable_at, picked.len() as u64));
        Ok(())
    }

    /// The queue overflowed: what it held (and what it missed) is read from the log instead.
    pub(super) fn recover_from_lag(&mut self) {
        while self.queue.try_recv().is_ok() {}
        self.subs.start_lag_recovery();
        METRICS.lag_recoveries.inc();
        tracing::debug!(client_id = %self.conn.client_id, "queue overflowed; catching up from the log");
    }

    /// Delivers one page of the log to the subscription that is furthest behind.
    pub(super) async fn catch_up_step(&mut self) -> Result<(), Flow> {
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
}
