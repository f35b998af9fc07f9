//! What a scenario hands back (figures as JSON, tables for people, problems found) and how
//! the whole run is written: aligned text tables on stdout, and one JSON document.

use std::fmt::Display;

use serde_json::{json, Map, Value};

use super::latency::LatencySummary;

/// The result of one scenario that ran to its end.
pub struct Outcome {
    /// Every figure, for the JSON report.
    pub results: Value,
    pub tables: Vec<Table>,
    /// What went wrong while measuring (lost events, refused connections...): the run
    /// reports its figures and exits with a failure.
    pub problems: Vec<String>,
}

pub struct Table {
    pub title: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: &str, header: &[&str]) -> Table {
        Table {
            title: title.to_string(),
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// A two-column table of named figures.
    pub fn figures(title: &str) -> Table {
        Table::new(title, &["figure", "value"])
    }

    pub fn figure(&mut self, name: &str, value: impl Display) {
        self.rows.push(vec![name.to_string(), value.to_string()]);
    }

    pub fn latency(&mut self, name: &str, summary: Option<&LatencySummary>) {
        let value = match summary {
            Some(s) => format!(
                "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                s.p50_ms, s.p99_ms, s.max_ms
            ),
            None => "no samples".to_string(),
        };
        self.figure(name, value);
    }

    /// Columns padded to their widest cell; numbers (and the header above them) flush
    /// right.
    pub fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let numeric = |i: usize| {
            !self.rows.is_empty()
                && i > 0
                && self.rows.iter().all(|r| {
                    r.get(i)
                        .is_some_and(|c| c.parse::<f64>().is_ok() || c == "-")
                })
        };
        let line = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, cell)| {
                    if numeric(i) {
                        format!("{cell:>w$}", w = widths[i])
                    } else {
                        format!("{cell:<w$}", w = widths[i])
                    }
                })
                .collect();
            format!("  {}", padded.join("  ").trim_end())
        };
        let mut out = format!("{}\n{}\n", self.title, line(&self.header));
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&format!("{}\n", line(&rule)));
        for row in &self.rows {
            out.push_str(&format!("{}\n", line(row)));
        }
        out
    }
}

/// The JSON report of a run: the parameters, the machine, and each scenario's figures or
/// its error.
pub struct Report {
    doc: Value,
}

impl Report {
    pub fn new(url: &str, params: Value) -> Report {
        let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
        Report {
            doc: json!({
                "tool": "streamlog bench",
                "version": env!("CARGO_PKG_VERSION"),
                "started_at": humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                    .to_string(),
                "url": url,
                "machine": {
                    "nproc": nproc,
                    "os": std::env::consts::OS,
                    "arch": std::env::consts::ARCH,
                },
                "params": params,
                "scenarios": {},
            }),
        }
    }

    pub fn add(&mut self, scenario: &str, params: Value, outcome: &Result<Outcome, String>) {
        let mut entry = Map::new();
        entry.insert("params".into(), params);
        match outcome {
            Ok(outcome) => {
                entry.insert("ok".into(), json!(outcome.problems.is_empty()));
                entry.insert("results".into(), outcome.results.clone());
                entry.insert("problems".into(), json!(outcome.problems));
            }
            Err(error) => {
                entry.insert("ok".into(), json!(false));
                entry.insert("error".into(), json!(error));
            }
        }
        self.doc["scenarios"][scenario] = Value::Object(entry);
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(&self.doc).expect("a JSON value serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_numbers_right() {
        let mut table = Table::new("bytes", &["mode", "bytes/event"]);
        table.rows.push(vec!["json".into(), "310.5".into()]);
        table.rows.push(vec!["msgpack+gzip".into(), "88.0".into()]);
        let text = table.render();
        assert!(
            text.contains(&format!("  json{}310.5\n", " ".repeat(16))),
            "{text}"
        );
        assert!(
            text.contains(&format!("  msgpack+gzip{}88.0\n", " ".repeat(9))),
            "{text}"
        );
    }
}
