//! What each client subcommand of `streamlog` does, on top of [`Client`]: output goes to
//! stdout (events as JSON lines), diagnostics to stderr, progress bars only when stdout is
//! a terminal.

use std::io::{BufRead, IsTerminal, Write};

use futures_util::StreamExt;
use serde_json::{json, Value};

use super::{
    tail::{tail, TailOptions},
    Client, ClientError,
};

/// Events per publish request when reading NDJSON from stdin.
const PUBLISH_BATCH: usize = 500;
const HISTORY_PAGE: usize = 1000;

fn print_line(value: &Value) -> Result<(), ClientError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{value}")?;
    out.flush()?;
    Ok(())
}

fn progress(total: Option<u64>, what: &str) -> Option<indicatif::ProgressBar> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    let bar = match total {
        Some(total) => indicatif::ProgressBar::new(total),
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.set_message(what.to_string());
    Some(bar)
}

/// One event from arguments, or NDJSON event objects from stdin, in batches.
pub async fn publish(
    client: &Client,
    channel: Option<String>,
    event_type: Option<String>,
    data: Option<String>,
) -> Result<(), ClientError> {
    if let (Some(channel), Some(event_type)) = (channel, event_type) {
        let data: Value = match data {
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| ClientError::Protocol(format!("data is not JSON: {e}")))?,
            None => json!({}),
        };
        let seqs = client
            .publish(&[json!({"channel": channel, "event_type": event_type, "data": data})])
            .await?;
        return print_line(&json!({"seq": seqs[0]}));
    }
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    let mut lines = std::io::stdin().lock().lines();
    loop {
        let line = lines.next().transpose()?;
        if let Some(line) = &line {
            if !line.trim().is_empty() {
                let event = serde_json::from_str(line)
                    .map_err(|e| ClientError::Protocol(format!("stdin line is not JSON: {e}")))?;
                batch.push(event);
            }
        }
        if batch.len() == PUBLISH_BATCH || (line.is_none() && !batch.is_empty()) {
            for seq in client.publish(&batch).await? {
                print_line(&json!({"seq": seq}))?;
            }
            batch.clear();
        }
        if line.is_none() {
            return Ok(());
        }
    }
}

pub async fn follow(
    client: &Client,
    channels: Vec<String>,
    since: Option<u64>,
    epoch: Option<String>,
) -> Result<(), ClientError> {
    let options = TailOptions {
        channels,
        since,
        epoch,
    };
    tail(client, options, print_line).await
}

pub async fn history(
    client: &Client,
    channel: &str,
    since: u64,
    limit: Option<usize>,
) -> Result<(), ClientError> {
    let mut cursor = since;
    let mut left = limit.unwrap_or(usize::MAX);
    while left > 0 {
        let page = client
            .history(channel, cursor, HISTORY_PAGE.min(left))
            .await?;
        for event in &page.events {
            print_line(event)?;
        }
        left -= page.events.len().min(left);
        if page.next == cursor {
            return Ok(());
        }
        cursor = page.next;
    }
    Ok(())
}

pub async fn replay(client: &Client, request: Value) -> Result<(), ClientError> {
    let bar = progress(None, "replaying");
    let count = client
        .replay(request, |event| {
            if let Some(bar) = &bar {
                bar.inc(1);
            }
            print_line(event)
        })
        .await?;
    if let Some(bar) = bar {
        bar.finish_with_message(format!("{count} events replayed"));
    }
    Ok(())
}

pub async fn create_dataset(client: &Client, request: Value) -> Result<(), ClientError> {
    print_line(&client.create_dataset(&request).await?)
}

pub async fn list_datasets(client: &Client) -> Result<(), ClientError> {
    let answer = client.list_datasets().await?;
    for dataset in answer["datasets"].as_array().into_iter().flatten() {
        print_line(dataset)?;
    }
    Ok(())
}

/// Streams an export to `output` (stdout when absent), as the server sends it.
pub async fn export_dataset(
    client: &Client,
    id: &str,
    format: &str,
    anonymize: bool,
    gzip: bool,
    output: Option<std::path::PathBuf>,
) -> Result<(), ClientError> {
    let total = client.dataset(id).await?["data_points_count"].as_u64();
    let response = client.export_dataset(id, format, anonymize, gzip).await?;
    let mut sink: Box<dyn Write> = match &output {
        Some(path) => Box::new(std::io::BufWriter::new(std::fs::File::create(path)?)),
        None => Box::new(std::io::stdout().lock()),
    };
    // Counting events needs plain JSON Lines; otherwise the bar counts bytes.
    let by_lines = format == "jsonl" && !gzip;
    let bar = progress(if by_lines { total } else { None }, "exporting");
    let mut body = response.bytes_stream();
    while let Some(piece) = body.next().await {
        let piece = piece?;
        sink.write_all(&piece)?;
        if let Some(bar) = &bar {
            if by_lines {
                bar.inc(piece.iter().filter(|b| **b == b'\n').count() as u64);
            } else {
                bar.inc(piece.len() as u64);
            }
        }
    }
    sink.flush()?;
    if let Some(bar) = bar {
        bar.finish_with_message("exported");
    }
    Ok(())
}
