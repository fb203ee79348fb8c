//! `JsonBody<T>`: a JSON request body with the project's error contract: not JSON -> 400, JSON of
//! the wrong shape -> 422 naming the field, over the size limit -> 413.

use super::error::AppError;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A deserialised JSON body.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
                AppError::PayloadTooLarge(MAX_BODY_BYTES)
            } else {
                AppError::BadRequest(rejection.body_text())
            }
        })?;
        parse(&bytes).map(JsonBody)
    }
}

/// Parses `bytes` as `T` with the error contract above.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    // First: is it JSON at all?
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| AppError::BadRequest(format!("the body is not valid JSON: {e}")))?;
    // Then: does it have the right shape? Report the path of the field at fault.
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let field = if path == "." { field_in_message(&inner) } else { Some(path) };
        AppError::Unprocessable { message: inner, field }
    })
}

/// Missing and unknown fields are reported at the parent; their name is in the message.
fn field_in_message(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct User {
        name: String,
        email: String,
    }

    fn field_of(body: &str) -> Option<String> {
        match parse::<User>(body.as_bytes()) {
            Err(AppError::Unprocessable { field, .. }) => field,
            other => panic!("expected 422, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(field_of(r#"{"name":"a"}"#).as_deref(), Some("email"));
        assert_eq!(field_of(r#"{"name":"a","email":"b","admin":true}"#).as_deref(), Some("admin"));
        assert_eq!(field_of(r#"{"name":1,"email":"b"}"#).as_deref(), Some("name"));
        assert!(matches!(parse::<User>(b"{oops"), Err(AppError::BadRequest(_))));
    }
}
