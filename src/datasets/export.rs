//! Dataset exports: the pinned events as full event objects (JSON Lines or consecutive
//! MessagePack maps), optionally anonymized and gzip-compressed, produced page by page as
//! the client reads, so an export holds one page in memory whatever the dataset's size.
//!
//! The bytes depend only on the dataset: the same events in the same order, the same
//! encoders, gzip fed the same pieces without early flushes. Every export is identical.

use std::{io, sync::Arc};

use bytes::Bytes;
use futures_util::Stream;

use super::anonymize::Anonymizer;
use crate::{
    log::EventLog,
    protocol::{self, GzipStream},
};

/// Events encoded per piece of the body.
const EXPORT_PAGE: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Jsonl,
    Msgpack,
}

impl ExportFormat {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "jsonl" | "ndjson" => Some(Self::Jsonl),
            "msgpack" => Some(Self::Msgpack),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Jsonl => "application/x-ndjson",
            Self::Msgpack => "application/msgpack",
        }
    }
}

pub struct ExportPlan {
    pub name: String,
    /// Events the dataset holds: an export that finds fewer fails rather than end short.
    pub count: u64,
    pub format: ExportFormat,
    pub anonymizer: Option<Anonymizer>,
    pub gzip: bool,
}

struct State {
    log: Arc<dyn EventLog>,
    plan: ExportPlan,
    position: u64,
    gzip: Option<GzipStream>,
    done: bool,
}

impl State {
    /// The next piece of the body; `None` once everything was produced.
    async fn next_piece(&mut self) -> Option<io::Result<Bytes>> {
        if self.done {
            return None;
        }
        if self.position >= self.plan.count {
            self.done = true;
            return self.gzip.take().map(|gzip| Ok(Bytes::from(gzip.finish())));
        }
        let page = match self
            .log
            .read_pinned(&self.plan.name, self.position, EXPORT_PAGE)
            .await
        {
            Ok(page) => page,
            Err(e) => return Some(Err(self.fail(format!("log read failed: {e}")))),
        };
        if page.is_empty() {
            // The dataset was deleted during the export: end with an error, never short.
            return Some(Err(
                self.fail("the dataset was deleted during the export".into())
            ));
        }
        self.position += page.len() as u64;
        let mut out = Vec::with_capacity(page.len() * 256);
        for event in &page {
            let anonymized;
            let event = match &self.plan.anonymizer {
                Some(anonymizer) => {
                    anonymized = anonymizer.event(event);
                    &anonymized
                }
                None => event,
            };
            match self.plan.format {
                ExportFormat::Jsonl => {
                    protocol::write_stored_event_json(&mut out, event, None);
                    out.push(b'\n');
                }
                ExportFormat::Msgpack => {
                    protocol::write_stored_event_msgpack(&mut out, event, None)
                }
            }
        }
        let piece = match &mut self.gzip {
            Some(gzip) => gzip.compress(&out),
            None => out,
        };
        Some(Ok(Bytes::from(piece)))
    }

    fn fail(&mut self, why: String) -> io::Error {
        self.done = true;
        tracing::warn!(dataset = %self.plan.name, %why, "export aborted");
        io::Error::other(why)
    }
}

/// The body of an export.
pub fn stream(
    log: Arc<dyn EventLog>,
    plan: ExportPlan,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let gzip = plan.gzip.then(GzipStream::default);
    let state = State {
        log,
        plan,
        position: 0,
        gzip,
        done: false,
    };
    futures_util::stream::unfold(state, |mut state| async move {
        let piece = state.next_piece().await?;
        Some((piece, state))
    })
}
