//! The host's own view of a Kafka record and of what a handler made of it.
//!
//! [`Record`] is what the pipeline hands to a handler; [`Outcome`] is the handler's verdict as the
//! host classifies it (the handler's own disposition, or what the sandbox saw: a trap, a timeout, a
//! memory cap); [`Invocation`] is one call's full report (outcome, events, producer calls, time).

use rdkafka::message::{Headers as _, Message as _};
use serde::Serialize;
use std::time::Duration;

/// One Kafka record as delivered to a handler: the contract's own `kafka-record` type, so the
/// host hands it to a guest without converting or copying it first.
pub type Record = crate::bindings::types::KafkaRecord;

/// One record header (the contract's `header`).
pub type Header = crate::bindings::types::Header;

/// An owned copy of a polled message.
pub fn from_message(m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    Record {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        headers: m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| Header { key: h.key.to_string(), value: h.value.map(<[u8]>::to_vec).unwrap_or_default() })
                    .collect()
            })
            .unwrap_or_default(),
        attempt: 1,
    }
}

/// What became of one handler call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", content = "reason", rename_all = "snake_case")]
pub enum Outcome {
    /// The handler finished the record.
    Ok,
    /// The handler asked for a later redelivery.
    Retry(String),
    /// The handler rejected the record for good.
    Reject(String),
    /// The guest trapped (a panic, `unreachable`, a stack overflow, an out-of-bounds access).
    Trap(String),
    /// The call ran past its time limit.
    Timeout(String),
    /// The guest tried to grow its memory past its cap.
    Memory(String),
}

/// The longest reason kept of a handler's `retry` or `reject` (longer ones are cut, marked with
/// `…`): reasons go to log lines and dead-letter headers.
pub const MAX_REASON_BYTES: usize = 4096;

/// `text` cut to at most `max` bytes at a character boundary, marked with `…` when cut.
pub fn truncated(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let cut = (0..=max).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    std::borrow::Cow::Owned(format!("{}…", &text[..cut]))
}

impl From<crate::bindings::types::HandlerError> for Outcome {
    /// A handler's own `retry` or `reject`, its reason cut to [`MAX_REASON_BYTES`].
    fn from(error: crate::bindings::types::HandlerError) -> Self {
        use crate::bindings::types::HandlerError;
        let cut = |reason: String| match truncated(&reason, MAX_REASON_BYTES) {
            std::borrow::Cow::Borrowed(_) => reason,
            std::borrow::Cow::Owned(cut) => cut,
        };
        match error {
            HandlerError::Retry(reason) => Outcome::Retry(cut(reason)),
            HandlerError::Reject(reason) => Outcome::Reject(cut(reason)),
        }
    }
}

impl Outcome {
    /// Every outcome's label, in [`Outcome::index`] order.
    pub const LABELS: [&'static str; 6] = ["ok", "retry", "reject", "trap", "timeout", "memory"];

    /// The position of this outcome's label in [`Outcome::LABELS`].
    pub fn index(&self) -> usize {
        match self {
            Outcome::Ok => 0,
            Outcome::Retry(_) => 1,
            Outcome::Reject(_) => 2,
            Outcome::Trap(_) => 3,
            Outcome::Timeout(_) => 4,
            Outcome::Memory(_) => 5,
        }
    }

    /// The outcome's short name, as used in metrics and the CLI output.
    pub fn label(&self) -> &'static str {
        Self::LABELS[self.index()]
    }

    /// The reason given with the outcome, if any.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Ok => None,
            Outcome::Retry(r) | Outcome::Reject(r) | Outcome::Trap(r) | Outcome::Timeout(r) | Outcome::Memory(r) => {
                Some(r)
            }
        }
    }

    /// Whether the sandbox (not the handler's own answer) ended the call. The instance that ran
    /// such a call is never reused.
    pub fn is_sandbox_fault(&self) -> bool {
        matches!(self, Outcome::Trap(_) | Outcome::Timeout(_) | Outcome::Memory(_))
    }
}

/// An event a handler published through `publish-event`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// The event's kind, e.g. `user-created`.
    pub kind: String,
    /// The event's payload, JSON by convention.
    pub payload: String,
    /// Topic of the record whose handling published it.
    pub topic: String,
    /// Partition of that record.
    pub partition: i32,
    /// Offset of that record.
    pub offset: i64,
}

impl Event {
    /// The event as JSON, as both `GET /events` and the events topic carry it: `kind`, `payload`
    /// (parsed when it is JSON, else a string), and the source record's `topic`, `partition` and
    /// `offset`.
    pub fn to_json(&self) -> serde_json::Value {
        let payload = serde_json::from_str::<serde_json::Value>(&self.payload)
            .unwrap_or_else(|_| serde_json::Value::String(self.payload.clone()));
        serde_json::json!({
            "kind": self.kind, "payload": payload,
            "topic": self.topic, "partition": self.partition, "offset": self.offset,
        })
    }
}

/// One producer-API call a handler made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallSummary {
    /// HTTP method.
    pub method: String,
    /// Path as the handler gave it.
    pub path: String,
    /// HTTP status, when a response came back.
    pub status: Option<u16>,
    /// Why no response came back, when none did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Invocation {
    /// The report of a call that came to `outcome`, with what its record's scope collected.
    pub fn of(outcome: Outcome, scope: crate::runtime::state::RecordScope, duration: Duration) -> Self {
        Self {
            outcome,
            events: scope.events,
            calls: scope.calls,
            dropped: scope.dropped,
            duration,
            stderr: scope.stderr,
        }
    }
}

/// The full report of one handler call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The verdict.
    pub outcome: Outcome,
    /// Events the handler published during the call, in order.
    pub events: Vec<Event>,
    /// Producer-API calls the handler made, in order.
    pub calls: Vec<CallSummary>,
    /// Log lines and events dropped because a per-record cap was reached.
    pub dropped: u32,
    /// Wall time of the call, instantiation included.
    pub duration: Duration,
    /// What the guest wrote to its standard error while handling the record (bounded).
    pub stderr: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::types::HandlerError;

    #[test]
    fn a_handlers_reason_is_cut_at_a_character_boundary() {
        assert_eq!(truncated("héllo", 2), "h…");
        assert_eq!(truncated("hello", 5), "hello");
        let long = "é".repeat(MAX_REASON_BYTES);
        match Outcome::from(HandlerError::Reject(long)) {
            Outcome::Reject(reason) => assert!(reason.len() <= MAX_REASON_BYTES + '…'.len_utf8()),
            other => panic!("{other:?}"),
        }
        assert_eq!(Outcome::from(HandlerError::Retry("later".into())), Outcome::Retry("later".into()));
    }
}
