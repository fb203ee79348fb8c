//! Handles `issued-token`: has the producer verify each issued token and announces verified tokens
//! on the event stream.
//!
//! Dispositions: malformed JSON or missing fields -> `reject`; token invalid, expired, or issued to
//! another user than the record says -> `reject`; producer unreachable, timed out, busy with the
//! same idempotency key (409), 408, 429 or 5xx -> `retry`.

use handler_sdk::{
    HandlerError, KafkaRecord, Method, call_failed, call_json, is_rfc3339_utc, is_uuid, json_value, reject,
    status_failed,
};
use serde::{Deserialize, Serialize};

/// The token as the producer publishes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuedToken {
    user_id: String,
    token: String,
    issued_at: String,
    expires_at: String,
}

#[derive(Serialize)]
struct Verify<'a> {
    token: &'a str,
}

/// The producer's verdict.
#[derive(Debug, Deserialize)]
struct Verdict {
    valid: bool,
    user_id: Option<String>,
    reason: Option<String>,
}

#[derive(Serialize)]
struct TokenVerified<'a> {
    user_id: &'a str,
    expires_at: &'a str,
}

struct IssuedTokenHandler;

impl handler_sdk::Guest for IssuedTokenHandler {
    fn handle(record: &KafkaRecord) -> Result<(), HandlerError> {
        let issued: IssuedToken = json_value(record)?;
        if !is_uuid(&issued.user_id) {
            return Err(reject(format!("user_id {:?} is not a UUID", issued.user_id)));
        }
        if issued.token.is_empty() {
            return Err(reject("token is empty"));
        }
        for (field, value) in [("issued_at", &issued.issued_at), ("expires_at", &issued.expires_at)] {
            if !is_rfc3339_utc(value) {
                return Err(reject(format!("{field} {value:?} is not an RFC 3339 UTC timestamp")));
            }
        }
        let response = call_json(Method::Post, "/producer-svc/tokens/verify", &Verify { token: &issued.token })
            .map_err(|e| call_failed("verifying the token", e))?;
        if response.status != 200 {
            return Err(status_failed("verifying the token", &response));
        }
        let verdict: Verdict = serde_json::from_slice(&response.body)
            .map_err(|e| handler_sdk::retry(format!("verifying the token: unreadable producer answer: {e}")))?;
        if !verdict.valid {
            let reason = verdict.reason.unwrap_or_else(|| "no reason given".into());
            return Err(reject(format!("token is not valid: {reason}")));
        }
        if verdict.user_id.as_deref() != Some(issued.user_id.as_str()) {
            return Err(reject(format!(
                "token belongs to user {:?}, but the record says {:?}",
                verdict.user_id, issued.user_id
            )));
        }
        handler_sdk::publish_json(
            "token-verified",
            &TokenVerified { user_id: &issued.user_id, expires_at: &issued.expires_at },
        );
        Ok(())
    }
}

handler_sdk::export!(IssuedTokenHandler);
