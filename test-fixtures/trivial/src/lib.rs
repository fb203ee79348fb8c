//! The benchmarks' trivial handler, a pure one (the `batch-handler` world): a checksum of key and
//! value, `ok` unless the value is empty. `host/benches/runtime.rs` runs the same logic natively
//! for comparison; keep the two identical.

use handler_sdk::pure::{Events, PureGuest};
use handler_sdk::{HandlerError, KafkaRecord};

struct Trivial;

impl PureGuest for Trivial {
    fn handle(record: &KafkaRecord, _events: &mut Events) -> Result<(), HandlerError> {
        let sum =
            record.key.iter().chain(record.value.iter()).flatten().fold(0u32, |acc, b| acc.wrapping_add(u32::from(*b)));
        if record.value.as_ref().is_none_or(Vec::is_empty) {
            return Err(HandlerError::Reject(format!("empty value (checksum {sum})")));
        }
        Ok(())
    }
}

handler_sdk::export_pure!(Trivial);
