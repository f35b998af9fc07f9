//! Datasets: immutable selections of events, sealed once and exported many times.
//!
//! Sealing reads the selection (channels, seq range, event types, filters) page by page,
//! computes its statistics (`stats.rs`), and pins the matching seqs in the log under the
//! dataset's id, with the dataset's metadata: from then on the set is fixed and retention
//! leaves its events alone. A `dataset_ready` event then goes to `system/datasets` through
//! the normal publish path. Exports (`export.rs`) read the pinned list page by page.
//!
//! Architecture invariant: datasets use only the `EventLog` trait (`pin`, `read_pinned`,
//! `unpin`); how pins are stored is the log engine's business.

pub mod anonymize;
pub mod export;
mod stats;

use serde::{Deserialize, Serialize};
use serde_json::{json, value::RawValue, Value};

use crate::{
    app::AppState,
    auth::Principal,
    error::ApiError,
    event::{format_ts, now_ms, Channel, NewEvent},
    filter::Filter,
    log::{PinOutcome, PinnedSet, ReadRange},
    protocol::Cursor,
};
use stats::DatasetStats;

pub const DATASETS_CHANNEL: &str = "system/datasets";
/// Most events one dataset may hold: sealing keeps the list of seqs (8 bytes each) in
/// memory until it is written.
pub const MAX_DATASET_EVENTS: u64 = 10_000_000;
const MAX_CHANNELS: usize = 64;
/// Events read per step while sealing.
const SELECT_PAGE: usize = 4096;
/// Retention may remove a selected event before it is pinned; the selection is then made
/// again, this many times at most.
const PIN_ATTEMPTS: usize = 3;

/// `POST /api/v1/datasets`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    #[serde(default)]
    pub dataset_id: Option<String>,
    pub channels: Vec<String>,
    #[serde(default)]
    pub event_types: Option<Vec<String>>,
    #[serde(default)]
    pub since: Option<Cursor>,
    #[serde(default)]
    pub until: Option<Cursor>,
    #[serde(default)]
    pub filters: Option<Value>,
}

/// A dataset's metadata, as answered by the API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dataset {
    pub dataset_id: String,
    pub channels: Vec<String>,
    pub event_types: Option<Vec<String>>,
    /// The selection covered `since < seq <= until`.
    pub since: u64,
    pub until: u64,
    pub filters: Value,
    pub created_at: String,
    pub data_points_count: u64,
    pub source_universities: Vec<String>,
    pub quality_score: f64,
}

/// What is stored with the pinned list (as JSON): the metadata and the secret key of
/// anonymized exports, which is never answered.
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    dataset: Dataset,
    /// 64 hex digits: the BLAKE3 key of anonymized exports.
    anonymization_key: String,
}

impl Stored {
    fn decode(set: &PinnedSet) -> Result<Self, ApiError> {
        serde_json::from_slice(&set.meta).map_err(|e| {
            tracing::error!(dataset = %set.name, error = %e, "dataset metadata is unreadable");
            ApiError::internal()
        })
    }

    fn key(&self) -> Result<[u8; 32], ApiError> {
        let bytes = (0..self.anonymization_key.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(self.anonymization_key.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>();
        bytes
            .and_then(|b| b.try_into().ok())
            .ok_or_else(ApiError::internal)
    }
}

/// Dataset ids follow the channel id rule: `[A-Za-z0-9_.:-]{1,128}`.
fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

fn new_id() -> String {
    use rand::Rng;
    format!("ds_{:016x}", rand::rng().random::<u64>())
}

fn may_read(who: &Principal, dataset: &Dataset) -> bool {
    who.is_admin()
        || dataset
            .channels
            .iter()
            .all(|c| Channel::parse(c).is_ok_and(|c| who.can_subscribe(&c)))
}

/// The created dataset and the seq of its `dataset_ready` event.
pub async fn create(
    app: &AppState,
    who: &Principal,
    request: CreateRequest,
) -> Result<(Dataset, u64), ApiError> {
    let id = request.dataset_id.clone().unwrap_or_else(new_id);
    if !valid_id(&id) {
        return Err(ApiError::unprocessable(
            "dataset_id must match [A-Za-z0-9_.:-]{1,128}",
        ));
    }
    if request.channels.is_empty() || request.channels.len() > MAX_CHANNELS {
        return Err(ApiError::unprocessable(format!(
            "channels must list 1 to {MAX_CHANNELS} channels"
        )));
    }
    let mut channels = request
        .channels
        .iter()
        .map(|c| Channel::parse(c))
        .collect::<Result<Vec<_>, _>>()?;
    channels.sort();
    channels.dedup();
    if let Some(channel) = channels.iter().find(|c| !who.can_subscribe(c)) {
        return Err(ApiError::forbidden(format!(
            "the token does not grant subscribe on {channel}"
        )));
    }
    let ready_channel = Channel::parse(DATASETS_CHANNEL).expect("valid channel");
    if !who.can_publish(&ready_channel) && !who.is_admin() {
        return Err(ApiError::forbidden(format!(
            "creating a dataset needs publish on {DATASETS_CHANNEL} or admin"
        )));
    }
    let mut filter_source = request.filters.clone().unwrap_or(Value::Null);
    if let Some(types) = &request.event_types {
        if filter_source.is_null() {
            filter_source = json!({});
        }
        if let Some(map) = filter_source.as_object_mut() {
            map.insert("event_types".into(), json!(types));
        }
    }
    let filter = Filter::parse(&filter_source)?;
    let head = app.log.head();
    let since = request.since.map_or(0, |c| c.0);
    let until = request.until.map_or(head, |c| c.0.min(head));
    if app.log.pinned(&id).await?.is_some() {
        return Err(taken(&id));
    }

    let mut attempt = 0;
    let dataset = loop {
        attempt += 1;
        let (seqs, stats) = select(app, &channels, since, until, &filter).await?;
        let dataset = Dataset {
            dataset_id: id.clone(),
            channels: channels.iter().map(|c| c.as_str().to_string()).collect(),
            event_types: request.event_types.clone(),
            since,
            until,
            filters: request.filters.clone().unwrap_or(Value::Null),
            created_at: format_ts(now_ms()),
            data_points_count: stats.count(),
            source_universities: stats.source_universities(),
            quality_score: stats.quality_score(),
        };
        let stored = Stored {
            dataset: dataset.clone(),
            anonymization_key: random_key_hex(),
        };
        let meta = serde_json::to_vec(&stored).expect("dataset metadata serializes");
        match app.log.pin(&id, seqs, meta).await? {
            PinOutcome::Pinned { .. } => break dataset,
            PinOutcome::NameTaken => return Err(taken(&id)),
            PinOutcome::Gone { seq } if attempt < PIN_ATTEMPTS => {
                tracing::debug!(dataset = %id, seq, "retention removed a selected event; selecting again");
            }
            PinOutcome::Gone { .. } => {
                return Err(ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    crate::protocol::ErrorCode::Internal,
                    "retention kept removing selected events; try again",
                ))
            }
        }
    };
    let ready = NewEvent {
        channels: vec![ready_channel],
        event_type: "dataset_ready".into(),
        data: RawValue::from_string(
            json!({
                "dataset_id": dataset.dataset_id,
                "source_universities": dataset.source_universities,
                "data_points_count": dataset.data_points_count,
                "quality_score": dataset.quality_score,
            })
            .to_string(),
        )
        .expect("valid JSON"),
        idempotency_key: None,
    };
    let outcomes = app.publisher.publish(vec![ready]).await?;
    Ok((dataset, outcomes[0].seq))
}

fn taken(id: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::CONFLICT,
        crate::protocol::ErrorCode::InvalidMessage,
        format!("a dataset `{id}` already exists"),
    )
}

fn random_key_hex() -> String {
    use rand::Rng;
    let key: [u8; 32] = rand::rng().random();
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// The seqs of the selection, ascending, and their statistics.
async fn select(
    app: &AppState,
    channels: &[Channel],
    since: u64,
    until: u64,
    filter: &Filter,
) -> Result<(Vec<u64>, DatasetStats), ApiError> {
    let mut seqs = Vec::new();
    let mut stats = DatasetStats::default();
    let mut cursor = since;
    loop {
        let page = app
            .log
            .read(ReadRange {
                channels,
                after: cursor,
                until,
                limit: SELECT_PAGE,
            })
            .await?;
        for event in &page {
            cursor = event.seq;
            if filter.matches(event) {
                stats.add(event);
                seqs.push(event.seq);
            }
        }
        if seqs.len() as u64 > MAX_DATASET_EVENTS {
            return Err(ApiError::unprocessable(format!(
                "a dataset holds at most {MAX_DATASET_EVENTS} events; narrow the selection"
            )));
        }
        if page.len() < SELECT_PAGE {
            return Ok((seqs, stats));
        }
    }
}

async fn stored(app: &AppState, who: &Principal, id: &str) -> Result<Stored, ApiError> {
    let not_found = || {
        ApiError::not_found(format!(
            "no dataset `{}`",
            id.chars().take(128).collect::<String>()
        ))
    };
    let set = app.log.pinned(id).await?.ok_or_else(not_found)?;
    let stored = Stored::decode(&set)?;
    if !may_read(who, &stored.dataset) {
        return Err(ApiError::forbidden(
            "the token does not grant subscribe on every channel of this dataset",
        ));
    }
    Ok(stored)
}

pub async fn get(app: &AppState, who: &Principal, id: &str) -> Result<Dataset, ApiError> {
    Ok(stored(app, who, id).await?.dataset)
}

/// The datasets this principal may read, by id.
pub async fn list(app: &AppState, who: &Principal) -> Result<Vec<Dataset>, ApiError> {
    let mut out = Vec::new();
    for set in app.log.pinned_sets().await? {
        let dataset = Stored::decode(&set)?.dataset;
        if may_read(who, &dataset) {
            out.push(dataset);
        }
    }
    Ok(out)
}

pub async fn delete(app: &AppState, who: &Principal, id: &str) -> Result<(), ApiError> {
    if !who.is_admin() {
        return Err(ApiError::forbidden("deleting a dataset needs admin"));
    }
    if app.log.unpin(id).await? {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "no dataset `{}`",
            id.chars().take(128).collect::<String>()
        )))
    }
}

/// Checks access and prepares an export; the bytes come from [`export::stream`].
pub async fn export_plan(
    app: &AppState,
    who: &Principal,
    id: &str,
    format: export::ExportFormat,
    anonymize: bool,
    gzip: bool,
) -> Result<export::ExportPlan, ApiError> {
    let stored = stored(app, who, id).await?;
    let anonymizer = if anonymize {
        Some(anonymize::Anonymizer::new(stored.key()?))
    } else {
        None
    };
    Ok(export::ExportPlan {
        name: id.to_string(),
        count: stored.dataset.data_points_count,
        format,
        anonymizer,
        gzip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_keys() {
        assert!(valid_id("train-2024.v1:a_b"));
        assert!(!valid_id("") && !valid_id("a/b") && !valid_id(&"x".repeat(129)));
        assert!(valid_id(&new_id()));
        let key = random_key_hex();
        assert_eq!(key.len(), 64);
        let stored = Stored {
            dataset: Dataset {
                dataset_id: "d".into(),
                channels: vec![],
                event_types: None,
                since: 0,
                until: 0,
                filters: Value::Null,
                created_at: String::new(),
                data_points_count: 0,
                source_universities: vec![],
                quality_score: 0.0,
            },
            anonymization_key: key,
        };
        let back: Stored = serde_json::from_slice(&serde_json::to_vec(&stored).unwrap()).unwrap();
        assert_eq!(back.key().unwrap(), stored.key().unwrap());
    }
}
