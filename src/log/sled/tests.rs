//! Model-based tests of the sled engine: random appends, reads and restarts applied both to
//! the real store and to a `BTreeMap`, compared after every step.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use super::*;
use crate::event::now_ms;
use crate::log::{EventLog, PinOutcome, PinnedSet, ReadRange};

fn new_event(channels: &[&str], key: Option<&str>, n: u64) -> NewEvent {
    NewEvent {
        channels: channels
            .iter()
            .map(|c| Channel::parse(c).unwrap())
            .collect(),
        event_type: "t".into(),
        data: RawValue::from_string(format!(r#"{{"n":{n}}}"#)).unwrap(),
        idempotency_key: key.map(str::to_string),
    }
}

fn open(dir: &Path, retention: RetentionConfig) -> SledLog {
    // sled's own flusher thread may hold the directory lock for a moment after the previous
    // instance in this process was dropped; a restarted process never meets this.
    for _ in 0..100 {
        match SledLog::open(dir, &StorageConfig::default(), retention.clone()) {
            Err(LogError::Storage(e)) if e.contains("could not acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            result => return result.unwrap(),
        }
    }
    panic!("the store stayed locked")
}

async fn read_all(log: &SledLog, channel: &str) -> Vec<u64> {
    let channels = [Channel::parse(channel).unwrap()];
    log.read(ReadRange {
        channels: &channels,
        after: 0,
        until: u64::MAX,
        limit: usize::MAX,
    })
    .await
    .unwrap()
    .iter()
    .map(|e| e.seq)
    .collect()
}

/// A tiny deterministic generator, so that a failing case can be replayed from its seed.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_random_appends_reads_and_restarts() {
    const CHANNELS: [&str; 4] = ["arena/a", "arena/b", "agent/x", "competition/c"];
    for seed in 1..=4u64 {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), RetentionConfig::default());
        let epoch = log.epoch().to_string();
        let mut rng = Lcg(seed);
        // channel -> seqs, and key -> seq
        let mut model: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        let mut keys: BTreeMap<String, u64> = BTreeMap::new();
        let mut head = 0;
        for step in 0..120 {
            match rng.next(10) {
                0 => {
                    log.close().await.unwrap();
                    drop(log);
                    log = open(dir.path(), RetentionConfig::default());
                    assert_eq!(log.epoch(), epoch, "epoch survives restarts");
                }
                1..=7 => {
                    let size = 1 + rng.next(5);
                    let mut batch = Vec::new();
                    let mut expected = Vec::new();
                    for _ in 0..size {
                        let a = CHANNELS[rng.next(4) as usize];
                        let b = CHANNELS[rng.next(4) as usize];
                        let chans: Vec<&str> = if a == b { vec![a] } else { vec![a, b] };
                        let key = (rng.next(3) == 0).then(|| format!("k{}", rng.next(20)));
                        batch.push(new_event(&chans, key.as_deref(), step));
                        expected.push((chans, key));
                    }
                    let outcomes = log.append(batch).await.unwrap();
                    for ((chans, key), outcome) in expected.into_iter().zip(outcomes) {
                        if let Some(seq) = key.as_ref().and_then(|k| keys.get(k)) {
                            assert!(outcome.duplicate);
                            assert_eq!(outcome.seq, *seq);
                            continue;
                        }
                        head += 1;
                        assert_eq!(outcome.seq, head, "seqs are gapless and increasing");
                        if let Some(k) = key {
                            keys.insert(k, head);
                        }
                        for c in chans {
                            model.entry(c).or_default().push(head);
                        }
                    }
                }
                _ => {
                    let c = CHANNELS[rng.next(4) as usize];
                    let want = model.get(c).cloned().unwrap_or_default();
                    assert_eq!(read_all(&log, c).await, want, "seed {seed} step {step}");
                }
            }
            assert_eq!(log.head(), head);
        }
        // A merged read of two channels: each event once, in seq order.
        let both = [
            Channel::parse("arena/a").unwrap(),
            Channel::parse("arena/b").unwrap(),
        ];
        let merged: Vec<u64> = log
            .read(ReadRange {
                channels: &both,
                after: 0,
                until: u64::MAX,
                limit: usize::MAX,
            })
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        let mut want: Vec<u64> = model.get("arena/a").cloned().unwrap_or_default();
        want.extend(model.get("arena/b").cloned().unwrap_or_default());
        want.sort_unstable();
        want.dedup();
        assert_eq!(merged, want);
        log.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_retention_keeps_newest_and_never_reuses_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let retention = RetentionConfig {
        max_events_per_channel: 3,
        max_age_secs: 0,
    };
    // The background pass stays off (unlimited): the test runs each pass itself.
    let log = open(dir.path(), RetentionConfig::default());
    let mut batch = Vec::new();
    for n in 0..10 {
        batch.push(new_event(&["arena/a"], None, n));
    }
    // One event also in another channel: it must survive while that channel keeps it.
    batch.push(new_event(&["arena/a", "arena/b"], None, 10));
    batch.push(new_event(&["arena/a"], None, 11));
    log.append(batch).await.unwrap();
    retention::enforce(&log.shared, &retention, now_ms()).unwrap();
    assert_eq!(read_all(&log, "arena/a").await, vec![10, 11, 12]);
    let pos = log
        .position(&Channel::parse("arena/a").unwrap())
        .await
        .unwrap();
    assert_eq!((pos.earliest, pos.removed_upto, pos.retained), (10, 9, 3));

    log.append(vec![new_event(&["arena/a"], None, 12); 3])
        .await
        .unwrap();
    retention::enforce(&log.shared, &retention, now_ms()).unwrap();
    assert_eq!(read_all(&log, "arena/a").await, vec![13, 14, 15]);
    assert_eq!(
        read_all(&log, "arena/b").await,
        vec![11],
        "still held by arena/b"
    );
    log.close().await.unwrap();
    drop(log);

    // Age retention empties the log entirely; the head must not fall back on restart.
    let aged = RetentionConfig {
        max_events_per_channel: 0,
        max_age_secs: 1,
    };
    let log = open(dir.path(), RetentionConfig::default());
    retention::enforce(&log.shared, &aged, now_ms() + 10_000).unwrap();
    assert!(read_all(&log, "arena/a").await.is_empty());
    assert!(read_all(&log, "arena/b").await.is_empty());
    log.close().await.unwrap();
    drop(log);
    let log = open(dir.path(), RetentionConfig::default());
    assert_eq!(log.head(), 15);
    let out = log
        .append(vec![new_event(&["arena/a"], None, 0)])
        .await
        .unwrap();
    assert_eq!(out[0].seq, 16);
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appenders_share_groups_and_get_distinct_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(open(dir.path(), RetentionConfig::default()));
    let mut watch = log.watch();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..20 {
                let out = log
                    .append(vec![new_event(&["arena/a"], None, t * 100 + i)])
                    .await
                    .unwrap();
                seqs.push(out[0].seq);
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=320).collect::<Vec<_>>());
    // Watchers see every group, in seq order.
    let mut seen = Vec::new();
    while seen.len() < 320 {
        let group = watch.recv().await.unwrap();
        seen.extend(group.events.iter().map(|e| e.seq));
    }
    assert_eq!(seen, (1..=320).collect::<Vec<_>>());
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_events_outlive_retention_until_unpinned() {
    let dir = tempfile::tempdir().unwrap();
    let retention = RetentionConfig {
        max_events_per_channel: 2,
        max_age_secs: 0,
    };
    let log = open(dir.path(), retention.clone());
    // Seqs 1-3 (one chunk, that retention will delete whole) and 4-5 in arena/old.
    log.append((0..3).map(|n| new_event(&["arena/old"], None, n)).collect())
        .await
        .unwrap();
    log.append((3..5).map(|n| new_event(&["arena/old"], None, n)).collect())
        .await
        .unwrap();
    retention::enforce(&log.shared, &retention, now_ms()).unwrap();
    // Seqs 6-11 and 12-14 in arena/a: two chunks, so that unpinning can delete one chunk
    // and not the other.
    log.append((0..6).map(|n| new_event(&["arena/a"], None, n)).collect())
        .await
        .unwrap();
    log.append((6..9).map(|n| new_event(&["arena/a"], None, n)).collect())
        .await
        .unwrap();
    // Seqs from both chunks.
    let seqs: Vec<u64> = vec![7, 8, 10, 12];
    assert_eq!(
        log.pin("d2", vec![1, 7], Vec::new()).await.unwrap(),
        PinOutcome::Gone { seq: 1 },
        "seq 1's chunk was deleted"
    );
    assert_eq!(
        log.pin("d1", seqs.clone(), b"meta".to_vec()).await.unwrap(),
        PinOutcome::Pinned { count: 4 }
    );
    assert_eq!(
        log.pin("d1", vec![1], Vec::new()).await.unwrap(),
        PinOutcome::NameTaken
    );
    retention::enforce(&log.shared, &retention, now_ms()).unwrap();
    assert_eq!(
        read_all(&log, "arena/a").await,
        vec![13, 14],
        "the channel obeys retention"
    );
    let pinned: Vec<u64> = log
        .read_pinned("d1", 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(pinned, seqs, "the pinned events are still there");
    let tail: Vec<u64> = log
        .read_pinned("d1", 2, 1)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(tail, vec![10]);
    log.close().await.unwrap();
    drop(log);

    // Pins survive a restart; unpinning hands the chunks back to retention.
    let log = open(dir.path(), retention.clone());
    let sets = log.pinned_sets().await.unwrap();
    assert_eq!(
        sets,
        vec![PinnedSet {
            name: "d1".into(),
            count: 4,
            meta: b"meta".to_vec()
        }]
    );
    assert!(log.unpin("d1").await.unwrap());
    assert!(!log.unpin("d1").await.unwrap());
    assert!(log.pinned("d1").await.unwrap().is_none());
    let first_chunk = log.shared.tree.get(codec::chunk_key(6)).unwrap();
    assert!(first_chunk.is_none(), "nothing references chunk 6 any more");
    let second_chunk = log
        .shared
        .tree
        .get(codec::chunk_refs_key(12))
        .unwrap()
        .unwrap();
    assert_eq!(
        codec::decode_u64(&second_chunk).unwrap(),
        2,
        "13 and 14 are indexed"
    );
    assert_eq!(log.head(), 14);
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_lists_span_parts() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), RetentionConfig::default());
    let total = codec::PIN_PART_SEQS as u64 * 2 + 10;
    for start in (0..total).step_by(4000) {
        let batch = (start..(start + 4000).min(total))
            .map(|n| new_event(&["arena/a"], None, n))
            .collect();
        log.append(batch).await.unwrap();
    }
    let seqs: Vec<u64> = (1..=total).collect();
    log.pin("big", seqs, Vec::new()).await.unwrap();
    let mut from = 0;
    let mut read = Vec::new();
    loop {
        let page = log.read_pinned("big", from, 1000).await.unwrap();
        if page.is_empty() {
            break;
        }
        from += page.len() as u64;
        read.extend(page.iter().map(|e| e.seq));
    }
    assert_eq!(read, (1..=total).collect::<Vec<_>>());
    log.close().await.unwrap();
}
