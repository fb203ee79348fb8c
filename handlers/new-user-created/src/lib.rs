//! Handles `new-user-created`: checks the user the producer published, asks the producer to issue
//! the user's first token, and announces the user on the event stream.
//!
//! Dispositions: malformed JSON, missing or invalid fields -> `reject`; producer unreachable, timed
//! out, busy with the same idempotency key (409), 408, 429 or 5xx -> `retry`; any other non-201
//! answer -> `reject`.

use handler_sdk::{
    HandlerError, KafkaRecord, Method, call_failed, call_json, is_rfc3339_utc, is_uuid, json_value, reject,
    status_failed,
};
use serde::{Deserialize, Serialize};

/// The user as the producer publishes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct User {
    id: String,
    name: String,
    email: String,
    created_at: String,
}

#[derive(Serialize)]
struct IssueToken<'a> {
    user_id: &'a str,
}

#[derive(Serialize)]
struct UserCreated<'a> {
    id: &'a str,
    name: &'a str,
    email: &'a str,
    created_at: &'a str,
}

struct NewUserCreated;

impl handler_sdk::Guest for NewUserCreated {
    fn handle(record: &KafkaRecord) -> Result<(), HandlerError> {
        let user: User = json_value(record)?;
        if !is_uuid(&user.id) {
            return Err(reject(format!("id {:?} is not a UUID", user.id)));
        }
        if user.name.trim().is_empty() {
            return Err(reject("name is empty"));
        }
        if !user.email.contains('@') {
            return Err(reject(format!("email {:?} is not an address", user.email)));
        }
        if !is_rfc3339_utc(&user.created_at) {
            return Err(reject(format!("created_at {:?} is not an RFC 3339 UTC timestamp", user.created_at)));
        }
        let response = call_json(Method::Post, "/producer-svc/tokens", &IssueToken { user_id: &user.id })
            .map_err(|e| call_failed("issuing the first token", e))?;
        if response.status != 201 {
            return Err(status_failed("issuing the first token", &response));
        }
        handler_sdk::publish_json(
            "user-created",
            &UserCreated { id: &user.id, name: &user.name, email: &user.email, created_at: &user.created_at },
        );
        Ok(())
    }
}

handler_sdk::export!(NewUserCreated);
