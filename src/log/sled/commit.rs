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

use tokio::sync::{mpsc, oneshot};

use super::{storage, Shared};
use crate::{
    event::{format_ts, now_ms, Event, NewEvent},
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
    let started = std::time::Instant::now();
    let mut state = shared.write.lock().expect("write lock");
    if let Some(reason) = &state.poisoned {
        return Err(LogError::Poisoned(reason.clone()));
    }
    let ts_ms = now_ms().max(state.last_ts);
    let ts = format_ts(ts_ms);
    let first_seq = shared.head.load(Ordering::Acquire) + 1;
    let mut next_seq = first_seq;
    let mut events: Vec<Arc<Event>> = Vec::new();
    let mut keys_in_group: HashMap<String, u64> = HashMap::new();
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
                keys_in_group.insert(key.clone(), next_seq);
            }
            let event = build_event(&shared.epoch, next_seq, (ts_ms, ts.clone()), new);
            batch_outcomes.push(AppendOutcome {
                seq: next_seq,
                duplicate: false,
            });
            next_seq += 1;
            events.push(Arc::new(event));
        }
        outcomes.push(batch_outcomes);
    }
    if events.is_empty() {
        return Ok(outcomes);
    }

    let mut sled_batch = sled::Batch::default();
    let mut touched: HashMap<&str, codec::ChannelMeta> = HashMap::new();
    for chunk in chunks(&events) {
        write_chunk(&mut sled_batch, chunk);
        for event in chunk {
            for channel in &event.channels {
                let meta = touched.entry(channel.as_str()).or_insert_with(|| {
                    state
                        .channels
                        .get(channel.as_str())
                        .copied()
                        .unwrap_or_default()
                });
                meta.retained += 1;
            }
        }
    }
    for (channel, meta) in &touched {
        sled_batch.insert(codec::channel_meta_key(channel), &meta.encode());
    }
    if !keys_in_group.is_empty() {
        let keys: Vec<String> = keys_in_group.keys().cloned().collect();
        for (key, seq) in &keys_in_group {
            sled_batch.insert(
                codec::idempotency_key(key),
                &codec::encode_idempotency_value(*seq, ts_ms),
            );
        }
        sled_batch.insert(
            &codec::idempotency_group_key(first_seq),
            codec::encode_idempotency_group(ts_ms, &keys),
        );
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
    let touched: Vec<(String, codec::ChannelMeta)> = touched
        .into_iter()
        .map(|(channel, meta)| (channel.to_string(), meta))
        .collect();
    state.channels.extend(touched);
    for chunk in chunks(&events) {
        shared.recent.insert(chunk);
    }
    state.last_ts = ts_ms;
    shared.head.store(next_seq - 1, Ordering::Release);
    drop(state);
    // Nobody may be listening (no connections yet): that is fine.
    let durable_at = std::time::Instant::now();
    let _ = shared.watch.send(Arc::new(AppendedGroup {
        events,
        durable_at,
        durable_in: durable_at - started,
    }));
    Ok(outcomes)
}

/// Splits a group into chunks of at most `MAX_CHUNK_EVENTS` events and about
/// `MAX_CHUNK_BYTES` of records.
fn chunks(events: &[Arc<Event>]) -> Vec<&[Arc<Event>]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, event) in events.iter().enumerate() {
        if i > start && (i - start == codec::MAX_CHUNK_EVENTS || bytes >= codec::MAX_CHUNK_BYTES) {
            out.push(&events[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += event.data.get().len() + event.event_type.len() + 32;
    }
    out.push(&events[start..]);
    out
}

/// One chunk value, its reference count, and one index entry per channel it holds.
fn write_chunk(sled_batch: &mut sled::Batch, chunk: &[Arc<Event>]) {
    let first_seq = chunk[0].seq;
    let mut builder = codec::ChunkBuilder::default();
    let mut per_channel: HashMap<&str, Vec<u64>> = HashMap::new();
    let mut refs = 0u64;
    for event in chunk {
        builder.push(event);
        for channel in &event.channels {
            per_channel
                .entry(channel.as_str())
                .or_default()
                .push(event.seq);
            refs += 1;
        }
    }
    sled_batch.insert(&codec::chunk_key(first_seq), builder.finish());
    sled_batch.insert(&codec::chunk_refs_key(first_seq), &codec::encode_u64(refs));
    for (channel, seqs) in per_channel {
        sled_batch.insert(
            codec::channel_index_key(channel, seqs[0]),
            codec::encode_index_entry(&seqs),
        );
    }
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

fn build_event(epoch: &str, seq: u64, ts: (u64, String), new: NewEvent) -> Event {
    // Ids the server makes (`epoch-seq`) get no idempotency entry: no client sent them.
    let id = new
        .idempotency_key
        .unwrap_or_else(|| format!("{epoch}-{seq}"));
    Event::with_ts(seq, id, new.channels, new.event_type, ts, new.data)
}
