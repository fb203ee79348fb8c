//! A batch's records as the contract's `packed-records` (the argument of `batch.handle-batch`;
//! the layout is documented in `wit/handler.wit`, the codec is the `packed-records` crate the
//! SDKs share): one byte buffer that enters the guest in a single copy, where a
//! `list<kafka-record>` would be copied field by field.

use crate::bindings::batch::PackedRecords;
use crate::record::Record;
use packed_records::Fields;

/// Why records cannot go in one `packed-records`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    /// No records.
    #[error("no records to pack")]
    Empty,
    /// The records are not all of one topic and partition.
    #[error("the records are not all of {topic}/{partition}")]
    Mixed {
        /// The first record's topic.
        topic: String,
        /// The first record's partition.
        partition: i32,
    },
    /// A key, value, header or count does not fit the format's u32 lengths.
    #[error("a length does not fit in 32 bits")]
    TooLong,
}

/// Packs `records` (of one topic and partition) into `buffer` (cleared first, so its capacity
/// is reused from batch to batch) and returns the `packed-records` that carries them; the
/// buffer is moved into it (take it back from `data`).
pub fn pack(records: &[Record], mut buffer: Vec<u8>) -> Result<PackedRecords, PackError> {
    let first = records.first().ok_or(PackError::Empty)?;
    buffer.clear();
    for record in records {
        if record.topic != first.topic || record.partition != first.partition {
            return Err(PackError::Mixed { topic: first.topic.clone(), partition: first.partition });
        }
        encode(record, &mut buffer)?;
    }
    Ok(PackedRecords {
        topic: first.topic.clone(),
        partition: first.partition,
        count: u32::try_from(records.len()).map_err(|_| PackError::TooLong)?,
        data: buffer,
    })
}

/// The bytes `record` takes in `packed-records`: its key, value and headers plus the format's
/// fixed fields and lengths (the measure batch limits are applied to).
pub fn encoded_len(record: &Record) -> u64 {
    packed_records::encoded_len(fields(record), headers(record))
}

fn encode(record: &Record, out: &mut Vec<u8>) -> Result<(), PackError> {
    packed_records::encode(out, fields(record), headers(record)).map_err(|_| PackError::TooLong)
}

fn fields(record: &Record) -> Fields<'_> {
    Fields {
        offset: record.offset,
        attempt: record.attempt,
        timestamp_ms: record.timestamp_ms,
        key: record.key.as_deref(),
        value: record.value.as_deref(),
    }
}

fn headers(record: &Record) -> impl ExactSizeIterator<Item = (&str, &[u8])> {
    record.headers.iter().map(|h| (h.key.as_str(), h.value.as_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: i64) -> Record {
        Record {
            topic: "orders".into(),
            partition: 3,
            offset,
            timestamp_ms: None,
            key: None,
            value: None,
            headers: Vec::new(),
            attempt: 1,
        }
    }

    #[test]
    fn records_of_two_partitions_or_none_do_not_pack() {
        let other = Record { partition: 4, ..record(2) };
        assert_eq!(
            pack(&[record(1), other], Vec::new()),
            Err(PackError::Mixed { topic: "orders".into(), partition: 3 })
        );
        assert_eq!(pack(&[], Vec::new()), Err(PackError::Empty));
    }
}
