//! `host invoke`: runs one record through a handler with the real runtime and limits and prints
//! one JSON line describing what happened.

use crate::producer_api::ProducerClient;
use crate::record::{Invocation, Record};
use crate::runtime::{HandlerModule, Worker};
use serde::Serialize;

/// The JSON line `host invoke` prints.
#[derive(Debug, Serialize)]
pub struct InvokeReport<'a> {
    /// `ok`, `retry`, `reject`, `trap`, `timeout` or `memory`.
    pub outcome: &'static str,
    /// The reason given with the outcome, `null` for `ok`.
    pub reason: Option<&'a str>,
    /// Events the handler published.
    pub events: Vec<EventLine<'a>>,
    /// Producer calls the handler made.
    pub calls: &'a [crate::record::CallSummary],
    /// Log lines and events dropped at a cap.
    pub dropped: u32,
    /// Wall time of the call, instantiation included.
    pub duration_us: u128,
    /// What the handler wrote to its standard error (a traceback, an exception), when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<&'a str>,
}

/// One event in the report; the payload is embedded as JSON when it parses as JSON.
#[derive(Debug, Serialize)]
pub struct EventLine<'a> {
    /// Event kind.
    pub kind: &'a str,
    /// Event payload.
    pub payload: serde_json::Value,
}

impl<'a> InvokeReport<'a> {
    /// The report of `invocation`.
    pub fn new(invocation: &'a Invocation) -> Self {
        Self {
            outcome: invocation.outcome.label(),
            reason: invocation.outcome.reason(),
            events: invocation
                .events
                .iter()
                .map(|e| EventLine {
                    kind: &e.kind,
                    payload: serde_json::from_str(&e.payload)
                        .unwrap_or_else(|_| serde_json::Value::String(e.payload.clone())),
                })
                .collect(),
            calls: &invocation.calls,
            dropped: invocation.dropped,
            duration_us: invocation.duration.as_micros(),
            stderr: invocation.stderr.as_deref(),
        }
    }
}

/// Runs `record` through `module` once.
pub async fn invoke(module: HandlerModule, producer: ProducerClient, record: &Record) -> Invocation {
    Worker::new(module, producer).invoke(record).await
}
