//! The one place where failures become answers: `ApiError` is what an HTTP handler returns
//! and what a WebSocket session turns into an `error` message. Internal details (storage
//! errors) are logged, never sent.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde_json::{json, Value};

use crate::{event::InvalidChannel, filter::FilterError, log::LogError, protocol::ErrorCode};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    /// Malformed input: not JSON, wrong shape, missing field.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidMessage, message)
    }

    /// Well-formed input with a value that is not acceptable.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidMessage,
            message,
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::MessageTooLarge,
            message,
        )
    }

    /// Over a rate limit: `details` say the limit and when to try again.
    pub fn rate_limited(message: impl Into<String>, limit: u32, retry_after_ms: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimitExceeded,
            message,
        )
        .with_details(json!({ "limit": limit, "retry_after_ms": retry_after_ms }))
    }

    /// Over a rate limit, answered over HTTP: the 429 with `Retry-After` (whole seconds,
    /// rounded up) beside the error body.
    pub fn rate_limited_response(
        message: impl Into<String>,
        limit: u32,
        wait: std::time::Duration,
    ) -> Response {
        let retry_after_ms = wait.as_millis().max(1) as u64;
        let mut response = Self::rate_limited(message, limit, retry_after_ms).into_response();
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(retry_after_ms.div_ceil(1000)),
        );
        response
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "internal error; the server log has the details",
        )
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Prefixes the message with the position of the offending item in a batch.
    pub fn in_batch_item(mut self, index: usize) -> Self {
        self.message = format!("event {index}: {}", self.message);
        self.details = Some(json!({ "index": index }));
        self
    }
}

impl From<InvalidChannel> for ApiError {
    fn from(e: InvalidChannel) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidChannel,
            e.to_string(),
        )
    }
}

impl From<FilterError> for ApiError {
    fn from(e: FilterError) -> Self {
        Self::bad_request(e.to_string())
    }
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> Self {
        tracing::error!(error = %e, "log failure");
        Self::internal()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        crate::metrics::METRICS.error(self.code);
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(details) = self.details {
            error["details"] = details;
        }
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6750: a 401 names the scheme it wants.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"streamlog\""),
            );
        }
        response
    }
}
