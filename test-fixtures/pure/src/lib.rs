//! A pure handler (the `batch-handler` world) that misbehaves on request, as `hostile` does for
//! the `handler` world: the record's key names what to do, the value carries its argument.
//! `describe` (and a missing or empty key) publishes every field of the record as a `described`
//! event, in the JSON shape `hostile` uses, so tests can compare the two.

use handler_sdk::pure::bindings::exports::kafka_wasm::handler::batch::Guest;
use handler_sdk::pure::{Events, PackedRecords, PureGuest, RecordResult};
use handler_sdk::{HandlerError, KafkaRecord};
use std::cell::Cell;

thread_local! {
    /// Set by a `drop-result` record: the batch then returns one result fewer than it was given.
    static DROP_RESULT: Cell<bool> = const { Cell::new(false) };
}

struct Pure;

fn value_str(record: &KafkaRecord) -> String {
    String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).into_owned()
}

impl PureGuest for Pure {
    fn handle(record: &KafkaRecord, events: &mut Events) -> Result<(), HandlerError> {
        let key = String::from_utf8_lossy(record.key.as_deref().unwrap_or_default()).into_owned();
        match key.as_str() {
            "ok" => Ok(()),
            k if record.key.as_ref().is_none_or(Vec::is_empty) || k.starts_with("describe") => {
                events.publish_json(
                    "described",
                    &serde_json::json!({
                        "topic": record.topic, "partition": record.partition, "offset": record.offset,
                        "timestamp_ms": record.timestamp_ms, "key": record.key, "value": record.value,
                        "headers": record.headers.iter().map(|h| (h.key.clone(), h.value.clone())).collect::<Vec<_>>(),
                        "attempt": record.attempt,
                    }),
                );
                Ok(())
            }
            "echo" => {
                events
                    .publish_json("record", &serde_json::json!({"offset": record.offset, "value": value_str(record)}));
                Ok(())
            }
            "events" => {
                for i in 0..value_str(record).parse::<u32>().unwrap_or(0) {
                    events.publish("n", &i.to_string());
                }
                Ok(())
            }
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_millis(value_str(record).parse().unwrap_or(10)));
                Ok(())
            }
            "retry" => Err(HandlerError::Retry(value_str(record))),
            "reject" => Err(HandlerError::Reject(value_str(record))),
            "panic" => panic!("the pure handler panicked on purpose"),
            "loop" => loop {
                std::hint::black_box(0u8);
            },
            "drop-result" => {
                DROP_RESULT.set(true);
                Ok(())
            }
            other => Err(HandlerError::Reject(format!("unknown misdeed {other:?}"))),
        }
    }
}

/// The SDK's batch, then one result fewer when a record asked for it.
struct Export;

impl Guest for Export {
    fn handle_batch(records: PackedRecords) -> Vec<RecordResult> {
        DROP_RESULT.set(false);
        let mut results = handler_sdk::pure::handle_batch::<Pure>(records);
        if DROP_RESULT.get() {
            results.pop();
        }
        results
    }
}

handler_sdk::pure::bindings::export_batch_bindings!(Export with_types_in handler_sdk::pure::bindings);
