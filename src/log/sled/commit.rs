//! The single writer. Appends from every publisher queue up here; the thread takes all that
//! is waiting (up to a limit), writes it as one atomic sled batch, fsyncs once, and only
//! then makes the new head visible, tells watchers, and answers the publishers.
//!
//! Why one thread: seqs are assigned in the order batches are written, so they are
//! gapless and strictly increasing without any locking of the sequence itself, and the
//! fsync cost (the dominant one) is shared by every append that waited behind it.

use std::{
    collections::HashMap,
    sync::{atomic::Ordering, Arc},
};

use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use super::{storage, Shared};
use crate::{
    event::{now_ms, Event, NewEvent},
    log::{codec, AppendOutcome, AppendedGroup, LogError},
};

/// Appends waiting for the committer. Publishers block (asynchronously) once it is full,
/// which is the backpressure a publisher feels when the disk cannot keep up.
const QUEUE_DEPTH: usize = 4096;

pub(super) enum Command {
    Append {
        batch: Vec<NewEvent>,
        reply: oneshot::Sender<Result<Vec<AppendOutcome>, LogError>>,
    },
    Close {
        reply: oneshot::Sender<Result<(), LogError>>,
    },
}

type Reply = oneshot::Sender<Result<Vec<AppendOutcome>, LogError>>;

pub(super) fn spawn(
    shared: Arc<Shared>,
    max_group_events: usize,
) -> Result<(mpsc::Sender<Command>, std::thread::JoinHandle<()>), LogError> {
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    let thread = std::thread::Builder::new()
        .name("streamlog-commit".into())
        .spawn(move || run(shared, rx, max_group_events))
        .map_err(|e| LogError::Storage(format!("cannot start the commit thread: {e}")))?;
    Ok((tx, thread))
}

fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Command>, max_group_events: usize) {
    let mut pending: Option<Command> = None;
    loop {
        let first = match pending.take() {
            Some(command) => command,
            None => match rx.blocking_recv() {
                Some(command) => command,
                None => break,
            },
        };
        let (mut batches, mut replies) = (Vec::new(), Vec::new());
        let mut count = 0;
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Append { batch, reply } => {
                    count += batch.len();
                    batches.push(batch);
                    replies.push(reply);
                }
                Command::Close { reply } => {
                    if !batches.is_empty() {
                        commit_and_answer(&shared, batches, replies);
                    }
                    let _ = reply.send(shared.db.flush().map(|_| ()).map_err(storage));
                    return;
                }
            }
            if count >= max_group_events {
                break;
            }
            next = rx.try_recv().ok();
        }
        // A Close seen while grouping is handled first thing in the next round.
        pending = next;
        commit_and_answer(&shared, batches, replies);
    }
    let _ = shared.db.flush();
}

fn commit_and_answer(shared: &Shared, batches: Vec<Vec<NewEvent>>, replies: Vec<Reply>) {
    match commit(shared, batches) {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(error) => {
            tracing::error!(%error, "append failed");
            let message = error.to_string();
            for reply in replies {
                let _ = reply.send(Err(LogError::Storage(message.clone())));
            }
        }
    }
}

/// Writes one group durably. Returns the outcomes of each submitted batch, in order.
fn commit(
    shared: &Shared,
    batches: Vec<Vec<NewEvent>>,
) -> Result<Vec<Vec<AppendOutcome>>, LogError> {
    let mut state = shared.write.lock().expect("write lock");
    if let Some(reason) = &state.poisoned {
        return Err(LogError::Poisoned(reason.clone()));
    }
    let ts_ms = now_ms().max(state.last_ts);
    let head = shared.head.load(Ordering::Acquire);
    let mut next_seq = head + 1;
    let mut sled_batch = sled::Batch::default();
    let mut events: Vec<Arc<Event>> = Vec::new();
    let mut keys_in_group: HashMap<String, u64> = HashMap::new();
    let mut touched: HashMap<String, codec::ChannelMeta> = HashMap::new();
    let mut outcomes = Vec::with_capacity(batches.len());

    for batch in batches {
        let mut batch_outcomes = Vec::with_capacity(batch.len());
        for new in batch {
            if let Some(key) = &new.idempotency_key {
                if let Some(seq) = find_key(shared, &keys_in_group, key)? {
                    batch_outcomes.push(AppendOutcome {
                        seq,
                        duplicate: true,
                    });
                    continue;
                }
            }
            let seq = next_seq;
            next_seq += 1;
            let client_key = new.idempotency_key.clone();
            let event = build_event(&shared.epoch, seq, ts_ms, new);
            sled_batch.insert(&codec::event_key(seq), codec::encode_record(&event));
            for channel in &event.channels {
                sled_batch.insert(codec::channel_index_key(channel.as_str(), seq), &[]);
                let meta = touched
                    .entry(channel.as_str().to_string())
                    .or_insert_with(|| {
                        state
                            .channels
                            .get(channel.as_str())
                            .copied()
                            .unwrap_or_default()
                    });
                meta.retained += 1;
            }
            if let Some(key) = client_key {
                sled_batch.insert(
                    codec::idempotency_key(&key),
                    &codec::encode_idempotency_value(seq, ts_ms),
                );
                sled_batch.insert(&codec::idempotency_order_key(seq), key.as_bytes());
                keys_in_group.insert(key, seq);
            }
            batch_outcomes.push(AppendOutcome {
                seq,
                duplicate: false,
            });
            events.push(Arc::new(event));
        }
        outcomes.push(batch_outcomes);
    }
    if events.is_empty() {
        return Ok(outcomes);
    }
    for (channel, meta) in &touched {
        sled_batch.insert(codec::channel_meta_key(channel), &meta.encode());
    }

    let written = shared
        .tree
        .apply_batch(sled_batch)
        .and_then(|_| shared.db.flush().map(|_| ()));
    if let Err(e) = written {
        // The batch may sit in sled's memory without being durable: refuse every further
        // append rather than hand out seqs on top of it.
        state.poisoned = Some(e.to_string());
        return Err(storage(e));
    }
    state.channels.extend(touched);
    state.last_ts = ts_ms;
    shared.head.store(next_seq - 1, Ordering::Release);
    drop(state);
    // Nobody may be listening (no connections yet): that is fine.
    let _ = shared.watch.send(Arc::new(AppendedGroup { events }));
    Ok(outcomes)
}

fn find_key(
    shared: &Shared,
    keys_in_group: &HashMap<String, u64>,
    key: &str,
) -> Result<Option<u64>, LogError> {
    if let Some(seq) = keys_in_group.get(key) {
        return Ok(Some(*seq));
    }
    match shared
        .tree
        .get(codec::idempotency_key(key))
        .map_err(storage)?
    {
        Some(value) => Ok(Some(codec::decode_idempotency_value(&value)?.0)),
        None => Ok(None),
    }
}

fn build_event(epoch: &str, seq: u64, ts_ms: u64, new: NewEvent) -> Event {
    // Ids the server makes (`epoch-seq`) get no idempotency entry: no client sent them.
    let id = new
        .idempotency_key
        .unwrap_or_else(|| format!("{epoch}-{seq}"));
    let data: Box<RawValue> = new.data;
    Event::new(seq, id, new.channels, new.event_type, ts_ms, data)
}
