//! `AppError`: the one error type at the HTTP edge. Every failure becomes a status and a JSON body
//! `{"error": "...", "field": "..."}` (field only where one input is at fault).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An HTTP-facing error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 400: the body is not JSON, or a header is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 422: JSON that does not fit (missing, unknown or invalid field).
    #[error("{message}")]
    Unprocessable {
        /// What is wrong.
        message: String,
        /// The field at fault, when one is.
        field: Option<String>,
    },
    /// 413: the body is over the limit.
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 404.
    #[error("no route for {0}")]
    NotFound(String),
    /// 405.
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The path.
        path: String,
    },
    /// 409: a request with the same `Idempotency-Key` is still running.
    #[error("a request with this Idempotency-Key is still in progress")]
    Conflict,
    /// 503: Kafka did not take the record; retry after the given seconds.
    #[error("{message}")]
    Unavailable {
        /// What happened.
        message: String,
        /// Seconds for `Retry-After`.
        retry_after_secs: u32,
    },
}

impl AppError {
    /// A 422 naming `field`.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::Unprocessable { message: message.into(), field: Some(field.to_string()) }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict => StatusCode::CONFLICT,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.to_string() });
        if let Self::Unprocessable { field: Some(field), .. } = &self {
            body["field"] = serde_json::Value::String(field.clone());
        }
        let mut response = (self.status(), axum::Json(body)).into_response();
        if let Self::Unavailable { retry_after_secs, .. } = &self {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        response
    }
}
