//! `/api/v1/datasets`: create (seal), list, get, delete, export.

use std::collections::HashMap;

use axum::{
    body::Body,
    extract::{Path, Query, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

use super::{accepts_gzip, principal, read_body};
use crate::{
    app::AppState,
    datasets::{self, export::ExportFormat, CreateRequest},
    error::ApiError,
};

pub async fn create(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let who = principal(&app, &headers)?;
    let body = read_body(&app, body).await?;
    let request: CreateRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("dataset request: {e}")))?;
    let (dataset, ready_seq) = datasets::create(&app, &who, request).await?;
    let mut answer = serde_json::to_value(&dataset).expect("dataset serializes");
    answer["dataset_ready_seq"] = json!(ready_seq);
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

pub async fn list(State(app): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let who = principal(&app, &headers)?;
    let datasets = datasets::list(&app, &who).await?;
    Ok(Json(json!({ "datasets": datasets })).into_response())
}

pub async fn get(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = principal(&app, &headers)?;
    Ok(Json(datasets::get(&app, &who, &id).await?).into_response())
}

pub async fn delete(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = principal(&app, &headers)?;
    datasets::delete(&app, &who, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn export(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = principal(&app, &headers)?;
    let format = match query.get("format") {
        None => ExportFormat::Jsonl,
        Some(name) => ExportFormat::parse(name).ok_or_else(|| {
            ApiError::bad_request(format!("format `{name}` is not one of jsonl, msgpack"))
        })?,
    };
    let anonymize = match query.get("anonymize").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "anonymize `{other}` is not true or false"
            )))
        }
    };
    let gzip = accepts_gzip(&headers);
    let plan = datasets::export_plan(&app, &who, &id, format, anonymize, gzip).await?;
    let body = Body::from_stream(datasets::export::stream(app.log.clone(), plan));
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    Ok(response)
}
