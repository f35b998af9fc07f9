//! WebSocket publishing, pipelined. A connection's `publish` messages are appended in the
//! order they were sent, and all that are waiting go to the log together, so a client that
//! sends many publishes without waiting shares fsyncs instead of paying one each.
//! Answers come back to the session in the same order.

use serde_json::Value;
use tokio::sync::mpsc;

use crate::{error::ApiError, event::NewEvent, publish::Publisher};

/// Publishes accepted and not yet answered, per connection. A client that pipelines more
/// waits (its messages are not read) until answers come back.
const MAX_IN_FLIGHT: usize = 1024;

pub struct PublishRequest {
    pub id: Option<Value>,
    pub event: NewEvent,
}

pub struct PublishAnswer {
    pub id: Option<Value>,
    pub result: Result<u64, ApiError>,
}

/// Starts the connection's publish pipeline; answers arrive on the returned receiver.
pub fn spawn(
    publisher: Publisher,
) -> (mpsc::Sender<PublishRequest>, mpsc::Receiver<PublishAnswer>) {
    let (requests_tx, mut requests) = mpsc::channel::<PublishRequest>(MAX_IN_FLIGHT);
    let (answers_tx, answers) = mpsc::channel(MAX_IN_FLIGHT);
    tokio::spawn(async move {
        while let Some(first) = requests.recv().await {
            let mut waiting = vec![first];
            while let Ok(next) = requests.try_recv() {
                waiting.push(next);
            }
            let (ids, events): (Vec<_>, Vec<_>) =
                waiting.into_iter().map(|r| (r.id, r.event)).unzip();
            let results: Vec<Result<u64, ApiError>> = match publisher.publish(events).await {
                Ok(outcomes) => outcomes.into_iter().map(|o| Ok(o.seq)).collect(),
                Err(error) => vec![Err(error); ids.len()],
            };
            for (id, result) in ids.into_iter().zip(results) {
                if answers_tx.send(PublishAnswer { id, result }).await.is_err() {
                    return;
                }
            }
        }
    });
    (requests_tx, answers)
}
