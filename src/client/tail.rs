//! `tail`: follows channels over WebSocket and, across disconnects and server restarts,
//! never misses or repeats an event.
//!
//! It keeps a cursor per channel (the last seq handled through it; `caught_up` and
//! `subscribed` move it too) and the log's epoch. After a drop it reconnects with
//! exponential backoff and jitter and subscribes again with `since` = each cursor and the
//! epoch, so the server sends exactly what was missed. An event published to several
//! subscribed channels comes once per connection, but a resume may offer it again through
//! another channel: the seqs printed above the lowest cursor are remembered and skipped.

use std::{
    collections::{BTreeSet, HashMap},
    time::Duration,
};

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::{next_message, Client, ClientError};

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Seqs remembered to skip repeats; beyond this the oldest are forgotten.
const MAX_REMEMBERED: usize = 100_000;

pub struct TailOptions {
    pub channels: Vec<String>,
    /// Start after this seq (resume); live from the head when absent.
    pub since: Option<u64>,
    /// The epoch `since` came from.
    pub epoch: Option<String>,
}

struct Position {
    cursors: HashMap<String, Option<u64>>,
    epoch: Option<String>,
    printed: BTreeSet<u64>,
}

impl Position {
    fn lowest(&self) -> u64 {
        self.cursors
            .values()
            .map(|c| c.unwrap_or(0))
            .min()
            .unwrap_or(0)
    }

    fn advance(&mut self, channel: &str, seq: u64) {
        if let Some(cursor) = self.cursors.get_mut(channel) {
            *cursor = Some(cursor.unwrap_or(0).max(seq));
        }
        let lowest = self.lowest();
        self.printed = self.printed.split_off(&(lowest + 1));
        while self.printed.len() > MAX_REMEMBERED {
            self.printed.pop_first();
        }
    }
}

/// Follows the channels until `on_event` fails (e.g. stdout closed); never returns `Ok`.
pub async fn tail(
    client: &Client,
    options: TailOptions,
    mut on_event: impl FnMut(&Value) -> Result<(), ClientError>,
) -> Result<(), ClientError> {
    let mut position = Position {
        cursors: options
            .channels
            .iter()
            .map(|c| (c.clone(), options.since))
            .collect(),
        epoch: options.epoch,
        printed: BTreeSet::new(),
    };
    let mut backoff = BACKOFF_START;
    loop {
        match session(
            client,
            &options.channels,
            &mut position,
            &mut on_event,
            &mut backoff,
        )
        .await
        {
            Err(ClientError::Io(e)) => return Err(ClientError::Io(e)),
            Err(e) => eprintln!("streamlog tail: {e}; reconnecting"),
            Ok(()) => eprintln!("streamlog tail: connection closed; reconnecting"),
        }
        let jitter = rand::random_range(0.5..1.5);
        tokio::time::sleep(backoff.mul_f64(jitter)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn session(
    client: &Client,
    channels: &[String],
    position: &mut Position,
    on_event: &mut impl FnMut(&Value) -> Result<(), ClientError>,
    backoff: &mut Duration,
) -> Result<(), ClientError> {
    let (mut ws, hello) = client.connect().await?;
    *backoff = BACKOFF_START;
    for channel in channels {
        let mut subscribe = json!({"type": "subscribe", "id": channel, "channel": channel});
        if let Some(cursor) = position.cursors[channel] {
            subscribe["since"] = json!(cursor.to_string());
            if let Some(epoch) = &position.epoch {
                subscribe["epoch"] = json!(epoch);
            }
        }
        ws.send(Message::text(subscribe.to_string())).await?;
    }
    let server_epoch = hello["epoch"].as_str().map(str::to_string);
    while let Some(message) = next_message(&mut ws).await? {
        let channel = message["channel"].as_str().unwrap_or_default().to_string();
        match message["type"].as_str() {
            Some("subscribed") => {
                if message["recovered"] == false {
                    eprintln!(
                        "streamlog tail: {channel}: not a full resume ({}); continuing",
                        message["reason"].as_str().unwrap_or("unknown")
                    );
                }
                if position.cursors.get(&channel) == Some(&None)
                    || message["reason"] == "epoch_mismatch"
                    || message["reason"] == "future_cursor"
                {
                    let head = message["head"].as_u64().unwrap_or(0);
                    position.cursors.insert(channel, Some(head));
                }
                position.epoch.clone_from(&server_epoch);
            }
            Some("caught_up") => {
                let seq = message["seq"].as_u64().unwrap_or(0);
                position.advance(&channel, seq);
            }
            // Broadcasts reach every connection; a tail prints only the channels it follows.
            Some("event") if !position.cursors.contains_key(&channel) => {}
            Some("event") => {
                let seq = message["seq"].as_u64().unwrap_or(0);
                let seen = position.printed.contains(&seq)
                    || position.cursors.get(&channel).copied().flatten() >= Some(seq);
                if !seen {
                    on_event(&message)?;
                    position.printed.insert(seq);
                }
                position.advance(&channel, seq);
            }
            Some("error") => eprintln!("streamlog tail: {message}"),
            _ => {}
        }
    }
    Ok(())
}
