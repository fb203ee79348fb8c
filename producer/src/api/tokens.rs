//! `POST /producer-svc/tokens` issues a signed token for a user and publishes it to
//! `issued-token`, keyed by user id; `POST /producer-svc/tokens/verify` checks one, statelessly.

use super::error::AppError;
use super::json::JsonBody;
use super::{AppState, RequestId, TOPIC_ISSUED_TOKEN, idempotent};
use crate::token::{IssuedToken, Verdict};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use serde::{Deserialize, Serialize};

/// `POST /tokens` body.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IssueToken {
    user_id: String,
}

/// `POST /tokens/verify` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyToken {
    token: String,
}

pub(super) async fn issue(
    State(state): State<AppState>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<IssueToken>,
) -> Result<Response, AppError> {
    let user_id = uuid::Uuid::parse_str(&req.user_id)
        .map_err(|_| AppError::field("user_id", format!("{:?} is not a UUID", req.user_id)))?
        .hyphenated()
        .to_string();
    idempotent::run(&state, &headers, &request_id, "tokens", &req, || state.tokens.issue(&user_id, Utc::now())).await
}

impl idempotent::Publish for IssuedToken {
    const TOPIC: &'static str = TOPIC_ISSUED_TOKEN;
    fn key(&self) -> &str {
        &self.user_id
    }
}

pub(super) async fn verify(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<VerifyToken>,
) -> Result<Response, AppError> {
    if req.token.is_empty() {
        return Err(AppError::field("token", "token must not be empty"));
    }
    let body = match state.tokens.verify(&req.token, Utc::now()) {
        Verdict::Valid { user_id, expires_at } => {
            serde_json::json!({"valid": true, "user_id": user_id, "expires_at": expires_at})
        }
        Verdict::Invalid(reason) => serde_json::json!({"valid": false, "reason": reason}),
    };
    Ok(Json(body).into_response())
}
