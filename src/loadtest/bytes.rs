//! Scenario `bytes`: bytes on the wire per event in each frame mode. While traffic flows
//! (the simulator, or the scenario's own with `--no-sim`), one subscriber per mode and per
//! class of traffic holds the class's channels and counts the WebSocket payload bytes and
//! the events it receives. The classes: everything; competition events on `arena/*` and
//! `competition/*` channels; `agent_status` on `agent/*` channels, and on `arena/*`
//! channels (where deltas pay).

use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::{
    frames::{Decoder, Message, Mode},
    net::{ConnectError, Incoming, Target, Ws},
    report::{Outcome, Table},
    traffic, BenchError,
};

/// The modes compared, plain JSON first (the reference of the ratios).
pub const MODES: [&str; 6] = [
    "json",
    "msgpack",
    "json+gzip",
    "msgpack+gzip",
    "json+delta",
    "msgpack+gzip+delta",
];

#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct BytesArgs {
    /// bytes: publish the scenario's own traffic instead of running `streamlog simulate`.
    #[arg(long)]
    pub no_sim: bool,
    /// bytes: seconds of traffic counted.
    #[arg(id = "bytes-secs", long = "bytes-secs", default_value_t = 10.0)]
    pub secs: f64,
    /// bytes: events per second (of the simulator, or of the own traffic).
    #[arg(id = "bytes-rate", long = "bytes-rate", default_value_t = 500)]
    pub rate: u64,
    /// bytes: arenas the simulator runs.
    #[arg(id = "bytes-arenas", long = "bytes-arenas", default_value_t = 4)]
    pub arenas: u32,
    /// bytes: seconds of simulator traffic before counting, to learn its channels.
    #[arg(
        id = "bytes-warmup-secs",
        long = "bytes-warmup-secs",
        default_value_t = 2.0
    )]
    pub warmup_secs: f64,
    /// bytes: most channels each subscriber holds.
    #[arg(
        id = "bytes-max-channels",
        long = "bytes-max-channels",
        default_value_t = 90
    )]
    pub max_channels: usize,
}

/// How long the subscribers keep counting once the traffic ended (batches are held for
/// up to their configured delay, a few tens of milliseconds).
const DRAIN: Duration = Duration::from_secs(1);

/// A slice of the traffic counted on its own: its channels, and the event types kept
/// (a subscription filter), if not all.
struct Class {
    name: &'static str,
    channels: Vec<String>,
    types: Option<&'static [&'static str]>,
}

fn classes(channels: &[String]) -> Vec<Class> {
    let of_kinds = |kinds: &[&str]| -> Vec<String> {
        channels
            .iter()
            .filter(|c| kinds.iter().any(|k| c.split('/').next() == Some(*k)))
            .cloned()
            .collect()
    };
    let classes = [
        Class {
            name: "all",
            channels: channels.to_vec(),
            types: None,
        },
        Class {
            name: "competition",
            channels: of_kinds(&["arena", "competition"]),
            types: Some(&["competition_start", "competition_round", "competition_end"]),
        },
        Class {
            name: "agent_status",
            channels: of_kinds(&["agent"]),
            types: Some(&["agent_status"]),
        },
        // The same events as a dashboard of an arena's agents takes them: more per batch.
        Class {
            name: "agent_status_by_arena",
            channels: of_kinds(&["arena"]),
            types: Some(&["agent_status"]),
        },
    ];
    classes
        .into_iter()
        .filter(|c| !c.channels.is_empty())
        .collect()
}

#[derive(Debug, Default)]
struct Counted {
    frames: u64,
    bytes: u64,
    events: u64,
    error: Option<String>,
}

pub async fn run(
    target: &Target,
    url: &str,
    token: Option<&str>,
    run_id: &str,
    args: &BytesArgs,
) -> Result<Outcome, BenchError> {
    let (stop_tx, stop) = watch::channel(false);
    let counters;
    let channels;
    let traffic_name;
    if args.no_sim {
        let arena = format!("arena/bench-{run_id}-bytes");
        let agent = format!("agent/bench-{run_id}-bytes");
        channels = vec![arena.clone(), agent.clone()];
        counters = start_counters(target, &classes(&channels), &stop).await?;
        eprintln!(
            "bytes: publishing {} events/s for {} s",
            args.rate, args.secs
        );
        traffic::own_traffic(target, &arena, &agent, args.rate, args.secs).await?;
        traffic_name = "own";
    } else {
        let exe = traffic::check_simulator().await?;
        let before = target.channels().await?;
        let sim_args = traffic::SimulatorArgs {
            url,
            token,
            arenas: args.arenas,
            rate: args.rate,
            secs: args.warmup_secs + args.secs,
        };
        eprintln!("bytes: running the simulator for {} s", sim_args.secs);
        let mut child = traffic::spawn_simulator(&exe, &sim_args)?;
        tokio::time::sleep(Duration::from_secs_f64(args.warmup_secs)).await;
        channels = traffic::grown_channels(&before, &target.channels().await?, args.max_channels);
        if channels.is_empty() {
            return Err(BenchError::Failed(format!(
                "the simulator published nothing in {} s",
                args.warmup_secs
            )));
        }
        counters = start_counters(target, &classes(&channels), &stop)
            .await
            .inspect_err(|_| {
                let _ = child.start_kill();
            })?;
        let limit = Duration::from_secs_f64(args.secs + 30.0);
        match tokio::time::timeout(limit, child.wait_with_output()).await {
            Ok(Ok(output)) if output.status.success() => {}
            Ok(Ok(output)) => {
                return Err(BenchError::Failed(format!(
                    "the simulator failed ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                )))
            }
            Ok(Err(e)) => return Err(BenchError::Failed(format!("the simulator: {e}"))),
            Err(_) => return Err(BenchError::Failed("the simulator did not end".into())),
        }
        traffic_name = "simulator";
    }
    tokio::time::sleep(DRAIN).await;
    let _ = stop_tx.send(true);

    let mut results = Vec::new();
    for (class, name, counter) in counters {
        let counted = match counter {
            Ok(task) => task
                .await
                .map_err(|e| BenchError::Failed(format!("counter task: {e}")))?,
            Err(refusal) => Err(refusal),
        };
        results.push((class, name, counted));
    }
    let mut outcome = Outcome {
        results: json!({"traffic": traffic_name, "channels": channels, "classes": []}),
        tables: Vec::new(),
        problems: Vec::new(),
    };
    for class in classes(&channels) {
        let of_class: Vec<_> = results
            .iter_mut()
            .filter(|(c, _, _)| *c == class.name)
            .map(|(_, name, counted)| (*name, std::mem::replace(counted, Err(String::new()))))
            .collect();
        let part = outcome_of(traffic_name, &class, of_class);
        if class.name == "all" {
            outcome.results["modes"] = part.results["modes"].clone();
        }
        outcome.results["classes"]
            .as_array_mut()
            .expect("an array")
            .push(
                json!({"class": class.name, "channels": class.channels.len(),
                         "event_types": class.types, "modes": part.results["modes"]}),
            );
        outcome.tables.extend(part.tables);
        outcome.problems.extend(
            part.problems
                .into_iter()
                .map(|p| format!("{}: {p}", class.name)),
        );
    }
    Ok(outcome)
}

type Counter = Result<tokio::task::JoinHandle<Result<Counted, String>>, String>;

/// Opens one subscriber per class and mode; a mode the server refuses at the handshake is
/// recorded as such.
async fn start_counters(
    target: &Target,
    classes: &[Class],
    stop: &watch::Receiver<bool>,
) -> Result<Vec<(&'static str, &'static str, Counter)>, BenchError> {
    let mut counters = Vec::new();
    for class in classes {
        for (name, counter) in start_class(target, class, stop).await? {
            counters.push((class.name, name, counter));
        }
    }
    Ok(counters)
}

async fn start_class(
    target: &Target,
    class: &Class,
    stop: &watch::Receiver<bool>,
) -> Result<Vec<(&'static str, Counter)>, BenchError> {
    let mut counters = Vec::new();
    for name in MODES {
        let mode = Mode::parse(name).expect("the modes compared are valid");
        let path = target.ws_path("/ws", mode, &[]);
        let counter = match target.ws_connect(&path, None).await {
            Ok(ws) => {
                let stop = stop.clone();
                let mut subscribed = subscribe_all(ws, mode, &class.channels, class.types).await?;
                Ok(tokio::spawn(async move {
                    count(&mut subscribed, mode, stop).await
                }))
            }
            Err(ConnectError::Refused { status, body }) => {
                Err(format!("refused by the server (HTTP {status}): {body}"))
            }
            Err(e) => return Err(e.into()),
        };
        counters.push((name, counter));
    }
    Ok(counters)
}

async fn subscribe_all(
    mut ws: Ws,
    mode: Mode,
    channels: &[String],
    types: Option<&[&str]>,
) -> Result<Ws, BenchError> {
    let mut decoder = Decoder::new(mode);
    for channel in channels {
        let mut request = json!({"type": "subscribe", "id": channel, "channel": channel});
        if let Some(types) = types {
            request["filters"] = json!({ "event_types": types });
        }
        ws.send_text(&request.to_string())
            .await
            .map_err(|e| BenchError::Server(format!("subscribe: {e}")))?;
    }
    let mut answered = 0;
    let wait = async {
        while answered < channels.len() {
            let Incoming::Data(payload, binary) = ws.next_frame().await else {
                return Err(BenchError::Server(format!(
                    "{} closed while subscribing",
                    mode.name()
                )));
            };
            let messages = decoder
                .decode(&payload, binary)
                .map_err(|e| BenchError::Failed(format!("{}: {e}", mode.name())))?;
            for message in messages {
                match message {
                    Message::Control(c) if c.kind == "subscribed" => answered += 1,
                    Message::Control(c) if c.kind == "error" => {
                        return Err(BenchError::Server(format!(
                            "subscribe: {}: {}",
                            c.code.unwrap_or_default(),
                            c.message.unwrap_or_default()
                        )))
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .map_err(|_| BenchError::Server("no `subscribed` within 30 s".into()))??;
    Ok(ws)
}

/// Counts data frames, their payload bytes and the events in them until `stop`.
async fn count(
    ws: &mut Ws,
    mode: Mode,
    mut stop: watch::Receiver<bool>,
) -> Result<Counted, String> {
    let mut decoder = Decoder::new(mode);
    let mut counted = Counted::default();
    loop {
        let frame = tokio::select! {
            frame = ws.next_frame() => frame,
            _ = stop.changed() => return Ok(counted),
        };
        let (payload, binary) = match frame {
            Incoming::Data(payload, binary) => (payload, binary),
            Incoming::Closed(code, reason) => return Err(format!("closed with {code}: {reason}")),
        };
        counted.frames += 1;
        counted.bytes += payload.len() as u64;
        match decoder.decode(&payload, binary) {
            Ok(messages) => {
                counted.events += messages
                    .iter()
                    .filter(|m| matches!(m, Message::Event(e) if e.channel != "system/broadcast"))
                    .count() as u64;
            }
            Err(e) => {
                counted.error.get_or_insert(e.to_string());
            }
        }
    }
}

fn outcome_of(
    traffic: &str,
    class: &Class,
    results: Vec<(&str, Result<Counted, String>)>,
) -> Outcome {
    let per_event = |c: &Counted| (c.events > 0).then(|| c.bytes as f64 / c.events as f64);
    let json_per_event = results
        .iter()
        .find(|(name, _)| *name == "json")
        .and_then(|(_, c)| c.as_ref().ok().and_then(per_event));
    let mut table = Table::new(
        &format!(
            "bytes: WebSocket payload bytes per event ({traffic} traffic, class `{}`: {} channels{})",
            class.name,
            class.channels.len(),
            class
                .types
                .map_or(String::new(), |t| format!(", {}", t.join(" ")))
        ),
        &[
            "mode",
            "events",
            "frames",
            "bytes",
            "bytes/event",
            "vs json",
        ],
    );
    let mut modes = Vec::new();
    let mut problems = Vec::new();
    for (name, counted) in results {
        match counted {
            Ok(c) => {
                let bytes_per_event = per_event(&c);
                let ratio = bytes_per_event.zip(json_per_event).map(|(b, j)| b / j);
                let show = |v: Option<f64>, digits: usize| {
                    v.map_or("-".into(), |v| format!("{v:.digits$}"))
                };
                table.rows.push(vec![
                    name.to_string(),
                    c.events.to_string(),
                    c.frames.to_string(),
                    c.bytes.to_string(),
                    show(bytes_per_event, 1),
                    show(ratio, 3),
                ]);
                if c.events == 0 {
                    problems.push(format!("{name}: no event received"));
                }
                if let Some(error) = &c.error {
                    problems.push(format!("{name}: undecodable frames; the first: {error}"));
                }
                modes.push(
                    json!({"mode": name, "status": "ok", "events": c.events, "frames": c.frames,
                    "bytes": c.bytes, "bytes_per_event": bytes_per_event, "ratio_to_json": ratio,
                    "decode_error": c.error}),
                );
            }
            Err(error) => {
                table.rows.push(vec![
                    name.to_string(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ]);
                if name == "json" || !error.starts_with("refused") {
                    problems.push(format!("{name}: {error}"));
                }
                let status = if error.starts_with("refused") {
                    "refused"
                } else {
                    "failed"
                };
                modes.push(json!({"mode": name, "status": status, "error": error}));
            }
        }
    }
    let notes: Vec<Value> = modes
        .iter()
        .filter(|m| m["status"] == "refused")
        .map(|m| {
            json!(format!(
                "{}: {}",
                m["mode"].as_str().unwrap_or_default(),
                m["error"].as_str().unwrap_or_default()
            ))
        })
        .collect();
    let mut tables = vec![table];
    if !notes.is_empty() {
        let mut refused = Table::figures("bytes: modes this server does not offer");
        for note in &notes {
            let text = note.as_str().unwrap_or_default();
            let (mode, why) = text.split_once(": ").unwrap_or((text, ""));
            refused.figure(mode, why);
        }
        tables.push(refused);
    }
    Outcome {
        results: json!({ "modes": modes }),
        tables,
        problems,
    }
}
