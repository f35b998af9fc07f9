//! The `streamlog` client subcommands against a real server: `tail` printing every event
//! exactly once across its own restart and the server's, and the other subcommands.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
};

use serde_json::{json, Value};

use crate::support::*;

/// `streamlog ARGS... --url <server>`.
fn streamlog(server: &Server, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_streamlog"));
    command
        .env_remove("STREAMLOG_TOKEN")
        .args(args)
        .args(["--url", &server.url("")]);
    command
}

/// A `streamlog tail` process and the JSON lines it printed so far.
struct Tail {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Tail {
    fn spawn(server: &Server, args: &[&str]) -> Tail {
        let args = [&["tail"][..], args].concat();
        let mut child = streamlog(server, &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start streamlog tail");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock()
                    .unwrap()
                    .push(serde_json::from_str(&line).expect("a JSON line"));
            }
        });
        Tail { child, lines }
    }

    async fn wait_for(&self, count: usize) {
        wait_until(|| async { self.lines.lock().unwrap().len() >= count }).await;
    }

    fn kill(mut self) -> Vec<Value> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let lines = self.lines.lock().unwrap().clone();
        lines
    }
}

#[tokio::test]
async fn tail_prints_every_event_once_across_its_own_and_the_servers_restarts() {
    let mut server = Server::start().await;
    let epoch = server.health().await.unwrap()["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    let first = Tail::spawn(&server, &["arena/t", "--since", "0"]);
    for i in 0..10 {
        server.publish_one("arena/t", "tick", json!({"i": i})).await;
    }
    first.wait_for(10).await;
    let printed_first = first.kill();
    let last = printed_first.last().unwrap()["seq"].as_u64().unwrap();

    // Published while no tail runs: the restarted tail must print them, and nothing twice.
    for i in 10..15 {
        server.publish_one("arena/t", "tick", json!({"i": i})).await;
    }
    let since = last.to_string();
    let second = Tail::spawn(&server, &["arena/t", "--since", &since, "--epoch", &epoch]);
    second.wait_for(5).await;

    server.kill();
    server.restart_same_port().await;
    for i in 15..20 {
        server.publish_one("arena/t", "tick", json!({"i": i})).await;
    }
    second.wait_for(10).await;
    let printed_second = second.kill();

    let all: Vec<u64> = printed_first
        .iter()
        .chain(&printed_second)
        .map(|e| e["data"]["i"].as_u64().unwrap())
        .collect();
    assert_eq!(
        all,
        (0..20).collect::<Vec<_>>(),
        "every event exactly once, in order"
    );
}

fn run(mut command: Command, stdin: Option<&str>) -> Vec<Value> {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    if stdin.is_some() {
        command.stdin(Stdio::piped());
    }
    let mut child = command.spawn().unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test]
async fn publish_history_replay_and_datasets_subcommands() {
    let server = Server::start().await;
    let one = streamlog(
        &server,
        &[
            "publish",
            "agent/c",
            "training_data",
            r#"{"university_id":"u1"}"#,
        ],
    );
    assert_eq!(run(one, None), vec![json!({"seq": 1})]);
    let batch = streamlog(&server, &["publish"]);
    let ndjson = (0..3)
        .map(|i| {
            json!({"channel":"agent/c","event_type":"training_data","data":{"i":i}}).to_string()
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        run(batch, Some(&ndjson)),
        vec![json!({"seq": 2}), json!({"seq": 3}), json!({"seq": 4})]
    );

    let history = streamlog(&server, &["history", "agent/c", "--since", "1"]);
    assert_eq!(seqs(&run(history, None)), vec![2, 3, 4]);

    let replay = streamlog(
        &server,
        &["replay", "agent/c", "--from", "2", "--speed", "0"],
    );
    let replayed = run(replay, None);
    assert_eq!(seqs(&replayed), vec![3, 4]);
    assert!(replayed.iter().all(|e| e["replay"] == "cli"));

    let create = streamlog(
        &server,
        &["datasets", "create", "--id", "c1", "--channel", "agent/c"],
    );
    assert_eq!(run(create, None)[0]["data_points_count"], 4);
    let list = streamlog(&server, &["datasets", "list"]);
    assert_eq!(run(list, None)[0]["dataset_id"], "c1");
    let export = streamlog(&server, &["datasets", "export", "c1"]);
    let exported = run(export, None);
    let (_, _, body) = server.get_bytes("/api/v1/datasets/c1/export", &[]).await;
    let direct: Vec<Value> = std::str::from_utf8(&body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(exported, direct);
    assert_eq!(seqs(&exported), vec![1, 2, 3, 4]);
}
