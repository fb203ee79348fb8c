//! `POST /producer-svc/users`: creates a user and publishes it to `new-user-created`, keyed by id.

use super::error::AppError;
use super::json::JsonBody;
use super::{AppState, RequestId, TOPIC_NEW_USER, idempotent};
use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// Longest name accepted, in characters.
const MAX_NAME_CHARS: usize = 200;
/// Longest email accepted, in bytes (RFC 5321).
const MAX_EMAIL_BYTES: usize = 254;

/// The request body.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    name: String,
    email: String,
}

/// The user, as answered and published.
#[derive(Debug, Serialize, Deserialize)]
pub struct User {
    id: String,
    name: String,
    email: String,
    created_at: String,
}

impl idempotent::Publish for User {
    const TOPIC: &'static str = TOPIC_NEW_USER;
    fn key(&self) -> &str {
        &self.id
    }
}

/// Checks an email address's syntax: one `@`, a local part, a dotted domain, no spaces.
pub fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else { return false };
    email.len() <= MAX_EMAIL_BYTES
        && !local.is_empty()
        && local.len() <= 64
        && !domain.contains('@')
        && domain.split('.').count() >= 2
        && domain
            .split('.')
            .all(|label| !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        && email.chars().all(|c| c.is_ascii_graphic())
}

pub(super) async fn create(
    State(state): State<AppState>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<CreateUser>,
) -> Result<Response, AppError> {
    let name = req.name.trim();
    if name.is_empty() {
        return Err(AppError::field("name", "name must not be empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(AppError::field(
            "name",
            format!("name must be at most {MAX_NAME_CHARS} characters, without control characters"),
        ));
    }
    if !valid_email(&req.email) {
        return Err(AppError::field("email", format!("{:?} is not a valid email address", req.email)));
    }
    idempotent::run(&state, &headers, &request_id, "users", &req, || User {
        id: uuid::Uuid::now_v7().to_string(),
        name: name.to_string(),
        email: req.email.clone(),
        created_at: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::valid_email;

    #[test]
    fn email_syntax() {
        for ok in ["a@b.co", "first.last+tag@example.com", "x@sub.example-1.org"] {
            assert!(valid_email(ok), "{ok}");
        }
        for bad in ["", "a", "a@", "@b.co", "a@b", "a@b..co", "a b@c.co", "a@b@c.co", "a@-.co\n", "é@b.co"] {
            assert!(!valid_email(bad), "{bad}");
        }
    }
}
