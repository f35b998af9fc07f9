//! Where the `bytes` scenario's traffic comes from: the `streamlog simulate` subcommand of
//! this same binary, run as a child process, or (`--no-sim`) a small publisher of
//! competition rounds and keyed agent statuses, shaped like the simulator's events.

use std::{
    collections::HashMap,
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use tokio::process::{Child, Command};

use super::{net::Target, BenchError};

/// Channel kinds the simulator publishes to.
const SIM_KINDS: [&str; 5] = ["arena", "competition", "university", "agent", "curriculum"];

/// Fails with a clear message when this binary has no `simulate` subcommand.
pub async fn check_simulator() -> Result<std::path::PathBuf, BenchError> {
    let exe = std::env::current_exe()
        .map_err(|e| BenchError::Setup(format!("cannot find this program's path: {e}")))?;
    let known = Command::new(&exe)
        .args(["simulate", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|status| status.success());
    if !known {
        return Err(BenchError::Failed(format!(
            "`{} simulate` is not a known subcommand of this build, so there is no simulator \
             traffic: run the bytes scenario with --no-sim to publish its own traffic",
            exe.display()
        )));
    }
    Ok(exe)
}

pub struct SimulatorArgs<'a> {
    pub url: &'a str,
    pub token: Option<&'a str>,
    pub arenas: u32,
    pub rate: u64,
    pub secs: f64,
}

/// Starts `streamlog simulate`; the token travels in the environment, not the arguments.
pub fn spawn_simulator(exe: &std::path::Path, args: &SimulatorArgs) -> Result<Child, BenchError> {
    let mut command = Command::new(exe);
    command
        .arg("simulate")
        .args(["--url", args.url])
        .args(["--arenas", &args.arenas.to_string()])
        .args(["--rate", &args.rate.to_string()])
        .args(["--duration", &format!("{}", args.secs.ceil() as u64)])
        .env_remove("STREAMLOG_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(token) = args.token {
        command.env("STREAMLOG_TOKEN", token);
    }
    command
        .spawn()
        .map_err(|e| BenchError::Failed(format!("cannot start the simulator: {e}")))
}

/// The simulator's channels: those of its kinds that are new or grew since `before`, at
/// most `max` of them (a connection may hold only so many subscriptions).
pub fn grown_channels(
    before: &[(String, u64)],
    after: &[(String, u64)],
    max: usize,
) -> Vec<String> {
    let before: HashMap<&str, u64> = before.iter().map(|(c, h)| (c.as_str(), *h)).collect();
    let mut grown: Vec<String> = after
        .iter()
        .filter(|(channel, head)| {
            let kind = channel.split('/').next().unwrap_or_default();
            SIM_KINDS.contains(&kind) && before.get(channel.as_str()).is_none_or(|b| head > b)
        })
        .map(|(channel, _)| channel.clone())
        .collect();
    grown.sort();
    grown.truncate(max);
    grown
}

/// Agents whose statuses the own traffic publishes, one key each for delta encoding.
const AGENTS: u64 = 8;
const TICK: Duration = Duration::from_millis(20);

/// Publishes `rate` events/s for `secs`: `agent_status` of a few agents (a couple of
/// fields change each time) to `agent_channel`, and `competition_round` to
/// `arena_channel`. Answers the number of events published.
pub async fn own_traffic(
    target: &Target,
    arena_channel: &str,
    agent_channel: &str,
    rate: u64,
    secs: f64,
) -> Result<u64, BenchError> {
    let total = (rate as f64 * secs).round() as u64;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(TICK);
    while sent < total {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        if due <= sent {
            continue;
        }
        let events: Vec<Value> = (sent..due)
            .map(|i| own_event(i, arena_channel, agent_channel))
            .collect();
        sent += target
            .publish(Value::Array(events).to_string())
            .await?
            .len() as u64;
    }
    Ok(sent)
}

fn own_event(i: u64, arena_channel: &str, agent_channel: &str) -> Value {
    let agent = i % AGENTS;
    let step = i / AGENTS;
    if i % 4 == 3 {
        let scores: serde_json::Map<String, Value> = (0..AGENTS)
            .map(|a| {
                (
                    format!("agent_{a}"),
                    json!(((step * 7 + a * 13) % 100) as f64 / 100.0),
                )
            })
            .collect();
        return json!({"channel": arena_channel, "event_type": "competition_round", "data": {
            "competition_id": "bench_competition", "round": step, "arena": arena_channel,
            "scores": scores, "leader": format!("agent_{}", step % AGENTS),
        }});
    }
    // As a platform publishes it: to the agent's channel and to its arena's.
    json!({"channels": [agent_channel, arena_channel], "event_type": "agent_status", "data": {
        "agent_id": format!("agent_{agent}"), "university": "univ_1", "status": "competing",
        "model": "policy-v3", "step": step, "energy": 100 - (step % 100),
        "position": {"x": step % 50, "y": (step * 3) % 50}, "reward": (step % 17) as f64 / 4.0,
    }})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulator_channels_are_those_of_its_kinds_that_grew() {
        let before = vec![("arena/a1".to_string(), 5), ("agent/x".to_string(), 9)];
        let after = vec![
            ("arena/a1".to_string(), 8),
            ("agent/x".to_string(), 9),
            ("university/u1".to_string(), 2),
            ("system/datasets".to_string(), 20),
            ("competition/c1".to_string(), 3),
        ];
        assert_eq!(
            grown_channels(&before, &after, 10),
            ["arena/a1", "competition/c1", "university/u1"]
        );
        assert_eq!(grown_channels(&before, &after, 1), ["arena/a1"]);
    }
}
