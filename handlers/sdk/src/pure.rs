//! Pure handlers: the contract's `batch-handler` world. A pure handler imports nothing; it turns
//! records into outcomes and events. The host hands it consecutive records of a partition in one
//! call (packed into one buffer), which [`handle_batch`] decodes one at a time, each into the
//! buffers of the record before, and hands to [`PureGuest::handle`].
//!
//! ```ignore
//! struct Checksum;
//! impl handler_sdk::pure::PureGuest for Checksum {
//!     fn handle(record: &handler_sdk::KafkaRecord, events: &mut handler_sdk::pure::Events)
//!         -> Result<(), handler_sdk::HandlerError> {
//!         events.publish("seen", "{}");
//!         Ok(())
//!     }
//! }
//! handler_sdk::export_pure!(Checksum);
//! ```

use crate::{HandlerError, Header, KafkaRecord};

/// The generated bindings of the `batch-handler` world; its types are the `handler` world's.
#[allow(unsafe_code, missing_docs, clippy::too_many_arguments)] // generated FFI glue
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "batch-handler",
        pub_export_macro: true,
        export_macro_name: "export_batch_bindings",
        default_bindings_module: "handler_sdk::pure::bindings",
        with: {
            "kafka-wasm:handler/types@0.2.0": crate::bindings::kafka_wasm::handler::types,
        },
    });
}

pub use bindings::exports::kafka_wasm::handler::batch::{Event, PackedRecords, RecordResult};

/// A pure record handler: what a component exported with [`export_pure!`](crate::export_pure)
/// implements.
pub trait PureGuest {
    /// Handles one record: its outcome, as [`crate::Guest::handle`]'s; the events it publishes go
    /// in `events` (published only when the outcome is `ok`).
    fn handle(record: &KafkaRecord, events: &mut Events) -> Result<(), HandlerError>;
}

/// The events one record publishes.
#[derive(Debug, Default)]
pub struct Events(Vec<Event>);

impl Events {
    /// Publishes an event of `kind` with `payload` (JSON by convention).
    pub fn publish(&mut self, kind: &str, payload: &str) {
        self.0.push(Event { kind: kind.to_string(), payload: payload.to_string() });
    }

    /// Publishes an event whose payload is `payload` as JSON.
    pub fn publish_json<P: serde::Serialize>(&mut self, kind: &str, payload: &P) {
        if let Ok(text) = serde_json::to_string(payload) {
            self.publish(kind, &text);
        }
    }
}

/// A record decoded from packed records, into the buffers of the one before.
impl packed_records::RecordSink for KafkaRecord {
    fn fields(&mut self, f: packed_records::Fields<'_>) {
        (self.offset, self.attempt, self.timestamp_ms) = (f.offset, f.attempt, f.timestamp_ms);
        for (into, from) in [(&mut self.key, f.key), (&mut self.value, f.value)] {
            match from {
                Some(bytes) => {
                    let buffer = into.get_or_insert_default();
                    buffer.clear();
                    buffer.extend_from_slice(bytes);
                }
                None => *into = None,
            }
        }
    }

    fn header_count(&mut self, count: usize) {
        self.headers.truncate(count);
    }

    fn header(&mut self, index: usize, key: &str, value: &[u8]) {
        if index == self.headers.len() {
            self.headers.push(Header { key: String::new(), value: Vec::new() });
        }
        let header = &mut self.headers[index];
        header.key.clear();
        header.key.push_str(key);
        header.value.clear();
        header.value.extend_from_slice(value);
    }
}

/// Handles `records` with `G`: one result per record, in order. Records that do not decode are
/// the host's bug: this panics (the call traps, and the host handles the records one by one).
pub fn handle_batch<G: PureGuest>(records: PackedRecords) -> Vec<RecordResult> {
    let count = records.count as usize;
    // Never trust the count with an allocation: no record takes fewer bytes than this.
    let mut results = Vec::with_capacity(count.min(records.data.len() / packed_records::MIN_RECORD_BYTES));
    let mut decoder = packed_records::Decoder::new(&records.data);
    let mut record = KafkaRecord {
        topic: records.topic.clone(),
        partition: records.partition,
        offset: 0,
        timestamp_ms: None,
        key: None,
        value: None,
        headers: Vec::new(),
        attempt: 0,
    };
    for _ in 0..count {
        if let Err(e) = decoder.read_into(&mut record) {
            panic!("undecodable packed records: {e}");
        }
        let mut events = Events::default();
        let outcome = G::handle(&record, &mut events);
        results.push(RecordResult { outcome, events: events.0 });
    }
    if let Err(e) = decoder.finish() {
        panic!("undecodable packed records: {e}");
    }
    results
}

/// Exports a [`PureGuest`] as the component's handler (the contract's `batch-handler` world).
#[macro_export]
macro_rules! export_pure {
    ($guest:ty) => {
        #[doc(hidden)]
        pub struct __HandlerSdkPureExport;

        impl $crate::pure::bindings::exports::kafka_wasm::handler::batch::Guest for __HandlerSdkPureExport {
            fn handle_batch(records: $crate::pure::PackedRecords) -> ::std::vec::Vec<$crate::pure::RecordResult> {
                $crate::pure::handle_batch::<$guest>(records)
            }
        }

        $crate::pure::bindings::export_batch_bindings!(__HandlerSdkPureExport with_types_in $crate::pure::bindings);
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;

    impl PureGuest for Echo {
        fn handle(record: &KafkaRecord, events: &mut Events) -> Result<(), HandlerError> {
            let headers: Vec<_> = record.headers.iter().map(|h| (h.key.clone(), h.value.clone())).collect();
            events.publish_json("record", &(record.offset, &record.key, &record.value, headers, record.attempt));
            if record.value.is_none() { Err(HandlerError::Reject("tombstone".into())) } else { Ok(()) }
        }
    }

    #[test]
    fn a_batch_is_decoded_record_by_record_with_nothing_kept_from_the_one_before() {
        let mut data = Vec::new();
        let full =
            packed_records::Fields { offset: 7, attempt: 2, timestamp_ms: Some(1), key: Some(b"k"), value: Some(b"v") };
        packed_records::encode(&mut data, full, [("a", &b"1"[..]), ("b", &b""[..])].into_iter()).expect("encode");
        let bare = packed_records::Fields { offset: 8, attempt: 1, timestamp_ms: None, key: None, value: None };
        packed_records::encode(&mut data, bare, std::iter::empty()).expect("encode");
        let results = handle_batch::<Echo>(PackedRecords { topic: "t".into(), partition: 0, count: 2, data });
        assert_eq!(results.len(), 2);
        assert!(results[0].outcome.is_ok());
        assert_eq!(results[0].events[0].payload, r#"[7,[107],[118],[["a",[49]],["b",[]]],2]"#);
        assert!(matches!(&results[1].outcome, Err(HandlerError::Reject(r)) if r == "tombstone"));
        assert_eq!(results[1].events[0].payload, "[8,null,null,[],1]", "nothing of the record before");
    }
}
