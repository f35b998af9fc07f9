//! Invariants of the generated stream: what a consumer of the simulated traffic relies on.

use std::collections::HashMap;

use serde_json::Value;

use super::world::{SimEvent, World};
use crate::event::Channel;

fn stream(seed: u64, arenas: usize, count: usize) -> Vec<SimEvent> {
    let mut world = World::new(seed, arenas);
    (0..count).map(|_| world.next_event()).collect()
}

#[test]
fn a_seed_always_gives_the_same_stream() {
    assert_eq!(stream(7, 3, 2000), stream(7, 3, 2000));
    assert_ne!(stream(7, 3, 200), stream(8, 3, 200));
}

/// The events of each competition: a start, rounds 1..n with n as planned, an end; both
/// agents move and score in every round; totals are the running sums of the scores; the
/// end repeats the last totals and names the agent with the higher one.
#[test]
fn competitions_are_bracketed_and_their_scores_add_up() {
    let mut by_competition: HashMap<String, Vec<SimEvent>> = HashMap::new();
    for event in stream(1, 2, 20_000) {
        if event.event_type.starts_with("competition_") {
            let id = event.data["competition_id"].as_str().unwrap().to_string();
            by_competition.entry(id).or_default().push(event);
        }
    }
    let mut finished = 0;
    for (id, events) in &by_competition {
        assert_eq!(events[0].event_type, "competition_start", "{id}");
        let channels = &events[0].channels;
        assert_eq!(channels[1], format!("competition/{id}"));
        assert!(channels[0].starts_with("arena/a"));
        let planned = events[0].data["rounds_planned"].as_u64().unwrap();
        let agents: Vec<&str> = events[0].data["agents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["agent_id"].as_str().unwrap())
            .collect();
        assert_eq!(agents.len(), 2);
        assert_ne!(agents[0], agents[1]);
        let mut totals = [0u64, 0];
        let mut elapsed = 0;
        let rounds: Vec<&SimEvent> = events
            .iter()
            .filter(|e| e.event_type == "competition_round")
            .collect();
        for (i, round) in rounds.iter().enumerate() {
            assert_eq!(&round.channels, channels);
            assert_eq!(
                round.data["round"],
                i as u64 + 1,
                "{id}: rounds numbered 1..n"
            );
            let moves = round.data["moves"].as_array().unwrap();
            assert_eq!(moves.len(), 2);
            for (side, step) in moves.iter().enumerate() {
                assert_eq!(step["agent_id"], agents[side]);
                assert!(step["action"].as_str().is_some_and(|a| !a.is_empty()));
                totals[side] += step["score"].as_u64().unwrap();
                assert_eq!(step["total"], totals[side], "{id}: running total");
            }
            let now = round.data["elapsed_ms"].as_u64().unwrap();
            assert!(now > elapsed);
            elapsed = now;
        }
        assert!(rounds.len() as u64 <= planned);
        let last = events.last().unwrap();
        if last.event_type != "competition_end" {
            assert_eq!(events.len(), rounds.len() + 1, "{id} still runs");
            continue;
        }
        finished += 1;
        assert_eq!(events.len(), rounds.len() + 2, "{id}: one start, one end");
        assert_eq!(
            rounds.len() as u64,
            planned,
            "{id}: every planned round played"
        );
        assert_eq!(last.data["final_scores"][agents[0]], totals[0]);
        assert_eq!(last.data["final_scores"][agents[1]], totals[1]);
        assert_eq!(last.data["duration_ms"], elapsed);
        match totals[0].cmp(&totals[1]) {
            std::cmp::Ordering::Greater => assert_eq!(last.data["winner"], agents[0]),
            std::cmp::Ordering::Less => assert_eq!(last.data["winner"], agents[1]),
            std::cmp::Ordering::Equal => {
                assert_eq!(last.data["result"], "draw");
                assert!(last.data.get("winner").is_none());
            }
        }
    }
    assert!(finished > 100, "only {finished} competitions finished");
}

/// A training sample goes to the arena, competition, university and agent channels of the
/// agent it comes from, and only while that competition runs.
#[test]
fn training_data_goes_to_four_channels_of_a_running_competition() {
    let mut running: HashMap<String, Vec<String>> = HashMap::new();
    let mut samples = 0;
    for event in stream(3, 3, 10_000) {
        let data = &event.data;
        let competition = data["competition_id"].as_str().unwrap_or("").to_string();
        match event.event_type {
            "competition_start" => {
                let agents = data["agents"].as_array().unwrap();
                let ids = agents
                    .iter()
                    .map(|a| a["agent_id"].as_str().unwrap().to_string());
                running.insert(competition, ids.collect());
            }
            "competition_end" => {
                running.remove(&competition);
            }
            "training_data" => {
                samples += 1;
                let agent = data["agent_id"].as_str().unwrap();
                assert!(running[&competition].iter().any(|a| a == agent));
                assert_eq!(
                    event.channels,
                    vec![
                        format!("arena/{}", data["arena_id"].as_str().unwrap()),
                        format!("competition/{competition}"),
                        format!("university/{}", data["university_id"].as_str().unwrap()),
                        format!("agent/{agent}"),
                    ]
                );
            }
            _ => {}
        }
    }
    assert!(samples > 1000);
}

/// Rounds dominate the mix, then statuses, then training data; every type appears; every
/// channel is valid; events are sized like real ones and hold no nulls (which would count
/// against a dataset's quality score).
#[test]
fn the_mix_channels_and_sizes_look_real() {
    let events = stream(11, 2, 10_000);
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let mut bytes = 0;
    for event in &events {
        *counts.entry(event.event_type).or_default() += 1;
        for channel in &event.channels {
            Channel::parse(channel).unwrap();
        }
        let size = event.data.to_string().len();
        assert!((100..=500).contains(&size), "{size} bytes: {}", event.data);
        bytes += size;
        let fields = event.data.as_object().unwrap();
        assert!(fields.values().all(|v| !v.is_null()), "{}", event.data);
    }
    let count = |kind| counts.get(kind).copied().unwrap_or(0);
    assert!(count("competition_round") > count("agent_status"));
    assert!(count("agent_status") > count("training_data"));
    assert!(count("training_data") > count("agent_progress"));
    for kind in [
        "competition_start",
        "competition_end",
        "agent_progress",
        "curriculum_progress",
    ] {
        assert!(count(kind) > 100, "{kind}: {counts:?}");
    }
    let mean = bytes / events.len();
    assert!((150..=400).contains(&mean), "mean {mean} bytes");
}

/// Most fields of an agent's status stay the same from one status to the next, so delta
/// encoding (keyed by `agent_id`) sends little.
#[test]
fn consecutive_statuses_of_an_agent_differ_in_few_fields() {
    let mut last: HashMap<String, Value> = HashMap::new();
    let mut compared = 0;
    for event in stream(5, 2, 5000) {
        if event.event_type != "agent_status" {
            continue;
        }
        let agent = event.data["agent_id"].as_str().unwrap().to_string();
        if let Some(previous) = last.insert(agent, event.data.clone()) {
            let (before, after) = (
                previous.as_object().unwrap(),
                event.data.as_object().unwrap(),
            );
            let changed = after
                .iter()
                .filter(|(k, v)| before.get(*k) != Some(v))
                .count()
                + before.keys().filter(|k| !after.contains_key(*k)).count();
            assert!(
                changed <= 5 && after.len() >= 10,
                "{previous} -> {}",
                event.data
            );
            compared += 1;
        }
    }
    assert!(compared > 500);
}

#[test]
fn curriculum_progress_moves_through_modules() {
    let mut last: HashMap<String, (String, u64, u64)> = HashMap::new();
    for event in stream(9, 1, 20_000) {
        if event.event_type != "curriculum_progress" {
            continue;
        }
        let data = &event.data;
        let agent = data["agent_id"].as_str().unwrap().to_string();
        let position = (
            data["curriculum_id"].as_str().unwrap().to_string(),
            data["module_index"].as_u64().unwrap(),
            data["percent"].as_u64().unwrap(),
        );
        assert!(position.2 <= 100 && position.1 <= data["modules_total"].as_u64().unwrap());
        if let Some(before) = last.insert(agent, position.clone()) {
            let next_module = before.2 == 100;
            if !next_module {
                assert_eq!((&before.0, before.1), (&position.0, position.1));
                assert!(position.2 > before.2);
            } else {
                assert_ne!((&before.0, before.1), (&position.0, position.1));
            }
        }
    }
}

/// Records the batches it is given.
struct RecordingSink {
    batches: Vec<Vec<Value>>,
}

impl super::EventSink for RecordingSink {
    type Error = std::convert::Infallible;

    async fn publish(&mut self, batch: &[Value]) -> Result<(), Self::Error> {
        self.batches.push(batch.to_vec());
        Ok(())
    }
}

/// Paced from the start time: exactly rate × duration events, in several batches, each
/// with its own id, then the run ends by itself.
#[tokio::test]
async fn run_paced_publishes_rate_times_duration_and_stops() {
    let mut world = World::new(1, 2);
    let mut sink = RecordingSink { batches: vec![] };
    let pace = super::Pace {
        rate: 2000.0,
        duration: Some(std::time::Duration::from_millis(300)),
    };
    let started = std::time::Instant::now();
    let sent = super::run_paced(&mut world, pace, "t", &mut sink, std::future::pending())
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(sent, 600);
    assert!(elapsed >= pace.duration.unwrap() && elapsed.as_millis() < 1500);
    assert!(sink.batches.len() >= 10, "{} batches", sink.batches.len());
    let ids: Vec<&str> = sink
        .batches
        .iter()
        .flatten()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 600);
    assert_eq!(ids[0], "t-1");
    assert_eq!(ids[599], "t-600");
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 600);
}
