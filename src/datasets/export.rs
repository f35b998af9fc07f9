//! Dataset exports: the pinned events as full event objects (JSON Lines or consecutive
//! MessagePack maps), optionally anonymized and gzip-compressed, produced page by page as
//! the client reads, so an export holds one page in memory whatever the dataset's size.
//!
//! The bytes depend only on the dataset: the same events in the same order, the same
//! encoders, gzip fed the same pieces without early flushes. Every export is identical.

use std::{io, sync::Arc};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::mpsc;

use super::anonymize::Anonymizer;
use crate::{
    event::Event,
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

/// Encoded pages waiting for the body: the producer reads and encodes the next pages while
/// the body compresses and writes this one, so the two run on both cores.
const PAGES_AHEAD: usize = 2;

struct Producer {
    log: Arc<dyn EventLog>,
    name: String,
    count: u64,
    format: ExportFormat,
    anonymizer: Option<Anonymizer>,
}

impl Producer {
    /// Sends every page, encoded, in order; stops early when the body is gone (the client
    /// disconnected) or the dataset is.
    async fn run(self, pages: mpsc::Sender<io::Result<Vec<u8>>>) {
        let mut position = 0;
        while position < self.count {
            let page = match self
                .log
                .read_pinned(&self.name, position, EXPORT_PAGE)
                .await
            {
                Ok(page) if page.is_empty() => {
                    Err(self.fail("the dataset was deleted during the export"))
                }
                Ok(page) => Ok(page),
                Err(e) => Err(self.fail(&format!("log read failed: {e}"))),
            };
            let encoded = page.map(|page| {
                position += page.len() as u64;
                self.encode(&page)
            });
            let failed = encoded.is_err();
            if pages.send(encoded).await.is_err() || failed {
                return;
            }
        }
    }

    fn encode(&self, page: &[Arc<Event>]) -> Vec<u8> {
        let mut out = Vec::with_capacity(page.len() * 256);
        for event in page {
            let anonymized;
            let event = match &self.anonymizer {
                Some(anonymizer) => {
                    anonymized = anonymizer.event(event);
                    &anonymized
                }
                None => event,
            };
            match self.format {
                ExportFormat::Jsonl => {
                    protocol::write_stored_event_json(&mut out, event, None);
                    out.push(b'\n');
                }
                ExportFormat::Msgpack => {
                    protocol::write_stored_event_msgpack(&mut out, event, None)
                }
            }
        }
        out
    }

    fn fail(&self, why: &str) -> io::Error {
        // An export never ends short: the body fails, and the client sees it incomplete.
        tracing::warn!(dataset = %self.name, %why, "export aborted");
        io::Error::other(why.to_string())
    }
}

/// The body of an export.
pub fn stream(
    log: Arc<dyn EventLog>,
    plan: ExportPlan,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let (sender, pages) = mpsc::channel(PAGES_AHEAD);
    let producer = Producer {
        log,
        name: plan.name,
        count: plan.count,
        format: plan.format,
        anonymizer: plan.anonymizer,
    };
    tokio::spawn(producer.run(sender));
    let gzip = plan.gzip.then(GzipStream::default);
    futures_util::stream::unfold((pages, gzip), |(mut pages, mut gzip)| async move {
        match pages.recv().await {
            Some(Ok(page)) => {
                let piece = match &mut gzip {
                    Some(gzip) => gzip.compress(&page),
                    None => page,
                };
                Some((Ok(Bytes::from(piece)), (pages, gzip)))
            }
            Some(Err(e)) => Some((Err(e), (pages, None))),
            // Every page was sent: the gzip trailer, once.
            None => gzip
                .take()
                .map(|gzip| (Ok(Bytes::from(gzip.finish())), (pages, None))),
        }
    })
}
