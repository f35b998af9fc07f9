//! `streamlog bench` against a real server with tiny parameters: every scenario reports
//! figures that hold together, and a connection limit is reported as such.

use std::process::Output;

use serde_json::Value;

use crate::support::*;

/// Runs `streamlog bench ARGS --url <server> --output json`; answers the process output
/// and the JSON report it printed.
async fn bench(server: &Server, args: &[&str]) -> (Output, Value) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_streamlog"));
    command
        .env_remove("STREAMLOG_TOKEN")
        .arg("bench")
        .args(args)
        .args(["--url", &server.url(""), "--output", "json"]);
    let output = tokio::time::timeout(std::time::Duration::from_secs(120), command.output())
        .await
        .expect("bench ends within 2 minutes")
        .expect("run streamlog bench");
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "the report is not JSON ({e}); stderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output, report)
}

fn number(value: &Value, what: &str) -> f64 {
    value
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {value}"))
}

#[tokio::test]
async fn every_scenario_reports_consistent_figures() {
    let server = Server::start().await;
    let file = server.dir.join("report.json");
    let (output, report) = bench(
        &server,
        &[
            "--publish-publishers=2",
            "--publish-batch=10",
            "--publish-secs=1",
            "--fanout-subscribers=5",
            "--fanout-rate=200",
            "--fanout-secs=2",
            "--catchup-events=2000",
            "--catchup-batch=500",
            "--idle-connections=200",
            "--no-sim",
            "--bytes-secs=1",
            "--bytes-rate=200",
            "--json",
            file.to_str().unwrap(),
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{report:#}\n{stderr}");
    let written: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(written, report, "--json writes the report that was printed");
    assert!(number(&report["machine"]["nproc"], "nproc") >= 1.0);
    let scenarios = &report["scenarios"];
    for name in ["publish", "fanout", "catchup", "idle", "bytes"] {
        assert_eq!(scenarios[name]["ok"], true, "{name}: {:#}", scenarios[name]);
        assert!(
            scenarios[name]["params"].is_object(),
            "{name} has its params"
        );
    }

    let publish = &scenarios["publish"]["results"];
    let published = number(&publish["events"], "publish.events");
    assert!(published >= 10.0 && published % 10.0 == 0.0, "{publish}");
    assert!(number(&publish["events_per_sec"], "events_per_sec") > 0.0);
    assert!(number(&publish["request_latency"]["p99_ms"], "p99") > 0.0);

    let fanout = &scenarios["fanout"]["results"];
    assert_eq!(fanout["events_published"], 400, "200/s for 2 s: {fanout}");
    assert_eq!(fanout["deliveries_expected"], 2000);
    assert_eq!(fanout["deliveries_received"], 2000);
    assert_eq!(fanout["lost"], 0);
    assert_eq!(fanout["duplicate_or_out_of_order"], 0);
    let latency = &fanout["latency"];
    assert_eq!(latency["count"], 2000);
    let (p50, max) = (
        number(&latency["p50_ms"], "p50"),
        number(&latency["max_ms"], "max"),
    );
    assert!(0.0 < p50 && p50 <= max && max < 10_000.0, "{latency}");

    let catchup = &scenarios["catchup"]["results"];
    assert_eq!(catchup["events_published"], 2000);
    assert_eq!(catchup["events_received"], 2000);
    assert_eq!(catchup["caught_up"], true);
    assert!(number(&catchup["events_per_sec"], "catch-up rate") > 0.0);

    let idle = &scenarios["idle"]["results"];
    assert_eq!(idle["connections_opened"], 200);
    assert_eq!(idle["refused_1013"], 0);
    let per_connection = number(&idle["bytes_per_connection"], "bytes per connection");
    assert!(
        per_connection.is_finite() && per_connection.abs() < 1e7,
        "{idle}"
    );
    assert!(number(&idle["server_connections_after"], "connections") >= 200.0);

    let modes = scenarios["bytes"]["results"]["modes"].as_array().unwrap();
    let names: Vec<&str> = modes.iter().map(|m| m["mode"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "json",
            "msgpack",
            "json+gzip",
            "msgpack+gzip",
            "json+delta",
            "msgpack+gzip+delta"
        ]
    );
    for mode in modes {
        match mode["status"].as_str() {
            Some("ok") => {
                assert!(number(&mode["events"], "events") > 0.0, "{mode}");
                assert!(
                    number(&mode["bytes_per_event"], "bytes/event") > 10.0,
                    "{mode}"
                );
                assert!(number(&mode["ratio_to_json"], "ratio") > 0.0, "{mode}");
            }
            // A server without this encoding says so at the handshake.
            Some("refused") => assert!(mode["error"].as_str().unwrap().contains("400"), "{mode}"),
            _ => panic!("{mode}"),
        }
    }
    assert_eq!(modes[0]["status"], "ok", "plain JSON is always served");
    assert_eq!(modes[0]["ratio_to_json"], 1.0);
}

#[tokio::test]
async fn a_connection_limit_is_reported_as_such() {
    let server = Server::start_with("[limits]\nmax_connections = 40\n").await;
    let (output, report) = bench(
        &server,
        &[
            "--scenario",
            "idle",
            "--idle-connections=60",
            "--idle-settle-secs=0",
        ],
    )
    .await;
    assert!(
        !output.status.success(),
        "a refused connection fails the run"
    );
    let idle = &report["scenarios"]["idle"];
    assert_eq!(idle["ok"], false);
    assert_eq!(idle["results"]["connections_opened"], 40, "{idle:#}");
    assert_eq!(idle["results"]["refused_1013"], 20);
    let problems = idle["problems"].to_string();
    assert!(
        problems.contains("1013") && problems.contains("max_connections"),
        "{problems}"
    );
    assert!(
        report["scenarios"].get("publish").is_none(),
        "only the chosen scenario runs"
    );
}

#[tokio::test]
async fn metrics_expose_the_resident_memory() {
    let server = Server::start().await;
    let (status, text) = server.get_json("/metrics").await;
    assert_eq!(status, 200);
    let text = text.as_str().expect("Prometheus text");
    let bytes: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("streamlog_process_resident_memory_bytes "))
        .expect("the gauge")
        .parse()
        .unwrap();
    // The same figure as the kernel's VmRSS, read moments apart.
    let rss = server.rss_kib() as f64 * 1024.0;
    assert!(bytes > 1e6 && bytes < 8e9, "{bytes}");
    assert!(
        (bytes - rss).abs() < rss * 0.5,
        "gauge {bytes}, VmRSS {rss}"
    );
}
