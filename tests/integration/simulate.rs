//! `streamlog simulate` against a real server: paced, complete, idempotent across a server
//! restart, and ending by itself; `serve --demo` publishing live traffic in any auth mode.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::support::*;

/// Starts `streamlog simulate ARGS... --url <server>`.
fn simulate(server: &Server, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_streamlog"))
        .env_remove("STREAMLOG_TOKEN")
        .arg("simulate")
        .args(args)
        .args(["--url", &server.url("")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start streamlog simulate")
}

/// Waits (30 s at most) for `simulate` to exit by itself; answers the events its summary
/// says it published, the seconds it took, and what it wrote to stderr.
async fn finished(mut child: Child) -> (u64, f64, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "simulate did not stop by itself");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stdout}{stderr}");
    // "published N events in S s: R events/s (seed X)"
    let words: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"published"), "{stdout}");
    (words[1].parse().unwrap(), words[4].parse().unwrap(), stderr)
}

fn data_str<'a>(event: &'a Value, field: &str) -> &'a str {
    event["data"][field]
        .as_str()
        .unwrap_or_else(|| panic!("{field}: {event}"))
}

#[tokio::test]
async fn simulate_publishes_every_event_type_at_the_rate_and_stops_by_itself() {
    let server = Server::start().await;
    let child = simulate(
        &server,
        &[
            "--arenas",
            "2",
            "--rate",
            "300",
            "--duration",
            "2",
            "--seed",
            "42",
        ],
    );
    let (published, secs, _) = finished(child).await;
    assert!((570..=600).contains(&published), "{published} events");
    assert!((1.9..5.0).contains(&secs), "{secs} s");
    assert_eq!(
        server.head().await,
        published,
        "one seq per event, none twice"
    );

    let arena = server.history_all("arena/a1").await;
    let mut types: BTreeSet<String> = arena
        .iter()
        .map(|e| e["event_type"].as_str().unwrap().to_string())
        .collect();
    let university = server.history_all("university/u1").await;
    types.extend(
        university
            .iter()
            .map(|e| e["event_type"].as_str().unwrap().to_string()),
    );
    assert_eq!(
        types.into_iter().collect::<Vec<_>>(),
        [
            "agent_progress",
            "agent_status",
            "competition_end",
            "competition_round",
            "competition_start",
            "curriculum_progress",
            "training_data"
        ]
    );
    let ids: HashSet<&str> = arena.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), arena.len(), "no event stored twice");

    let rounds: Vec<&Value> = arena
        .iter()
        .filter(|e| e["event_type"] == "competition_round")
        .collect();
    assert!(rounds.len() > 50, "{} rounds", rounds.len());
    for round in &rounds {
        let moves = round["data"]["moves"].as_array().unwrap();
        assert_eq!(moves.len(), 2, "{round}");
        assert_ne!(moves[0]["agent_id"], moves[1]["agent_id"]);
        for side in moves {
            assert!(
                side["action"].is_string() && side["score"].is_u64(),
                "{round}"
            );
            assert!(side["total"].as_u64() >= side["score"].as_u64());
        }
    }

    // A training sample is one stored event, seen with the same seq through its arena,
    // competition, university and agent channels.
    let sample = arena
        .iter()
        .find(|e| e["event_type"] == "training_data")
        .expect("a training sample in arena/a1");
    let channels = [
        format!("competition/{}", data_str(sample, "competition_id")),
        format!("university/{}", data_str(sample, "university_id")),
        format!("agent/{}", data_str(sample, "agent_id")),
    ];
    assert_eq!(sample["channels"].as_array().unwrap().len(), 4, "{sample}");
    for channel in &channels {
        let history = server.history_all(channel).await;
        let copies: Vec<&Value> = history.iter().filter(|e| e["id"] == sample["id"]).collect();
        assert_eq!(copies.len(), 1, "{channel}");
        assert_eq!(copies[0]["seq"], sample["seq"], "{channel}");
        assert_eq!(copies[0]["data"], sample["data"], "{channel}");
    }

    // The competitions of the arena are bracketed: a start, rounds numbered from 1, an end
    // after the last round. The history holds every start: it begins with the run.
    let mut last_round: HashMap<&str, u64> = HashMap::new();
    for event in &arena {
        let Some(competition) = event["data"]["competition_id"].as_str() else {
            continue;
        };
        match event["event_type"].as_str().unwrap() {
            "competition_start" => assert_eq!(last_round.insert(competition, 0), None),
            "competition_round" => {
                let round = event["data"]["round"].as_u64().unwrap();
                let before = last_round.insert(competition, round);
                assert_eq!(before, Some(round - 1), "{event}");
            }
            "competition_end" => {
                let rounds = last_round.remove(competition).expect("started");
                assert_eq!(event["data"]["rounds"], rounds, "{event}");
            }
            _ => {}
        }
    }
}

/// The server is killed and restarted mid-run: the simulator retries the batches that got
/// no answer, with the same ids, so every event it counts is stored exactly once.
#[tokio::test]
async fn simulate_retries_across_a_server_restart_without_duplicates() {
    let mut server = Server::start().await;
    let child = simulate(&server, &["--rate", "200", "--duration", "4"]);
    wait_until(|| async { server.head().await > 100 }).await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.restart_same_port().await;
    let (published, _, stderr) = finished(child).await;
    assert!(
        stderr.contains("retrying"),
        "the restart went unnoticed: {stderr}"
    );
    assert!((700..=800).contains(&published), "{published} events");
    assert_eq!(server.head().await, published);
    let mut ids = HashSet::new();
    let mut stored = 0;
    for arena in ["arena/a1", "arena/a2"] {
        for event in server.history_all(arena).await {
            stored += 1;
            ids.insert(event["id"].as_str().unwrap().to_string());
        }
    }
    assert!(stored > 300);
    assert_eq!(ids.len(), stored, "an event stored twice");
}

#[tokio::test]
async fn serve_demo_streams_live_events_and_stops_cleanly() {
    let mut server = Server::start_with_args(&["--demo"], &[]).await;
    let mut ws = server.ws("/ws/arena/a1").await;
    let events = ws.events(5).await;
    for event in &events {
        assert_eq!(event["channel"], "arena/a1", "{event}");
        assert!(
            event["data"]["arena_id"] == "a1" || event["data"]["agent_id"].is_string(),
            "{event}"
        );
    }
    let hint = format!("websocat ws://{}/ws/arena/a1", server.addr);
    assert!(server.log_text().contains(&hint), "{}", server.log_text());
    assert!(server.terminate().success());
    assert!(server.log_text().contains("demo traffic stopped"));
}

/// The demo publishes in-process, so it runs even where HTTP publishing needs a token.
#[tokio::test]
async fn serve_demo_publishes_in_jwt_mode_too() {
    let secret = "a-demo-secret-of-at-least-32-bytes!!";
    let env = [
        ("STREAMLOG_AUTH_MODE", "jwt"),
        ("STREAMLOG_HS256_SECRET", secret),
    ];
    let mut server = Server::start_with_args(&["--demo", "--demo-rate", "50"], &env).await;
    wait_until(|| async { server.head().await >= 20 }).await;
    let (status, _) = server.get_json("/api/v1/channels/arena/a1/events").await;
    assert_eq!(status, 401, "reading still needs a token");
    assert!(server.terminate().success());
}
