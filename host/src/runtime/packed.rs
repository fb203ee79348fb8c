//! Encoding of a batch's records as the contract's `packed-records` (the argument of
//! `handle-packed`; the layout is documented in `wit/handler.wit`): one byte buffer that enters
//! the guest in a single copy, where a `list<kafka-record>` is copied field by field.

use crate::bindings::types::PackedRecords;
use crate::record::Record;

/// Flag bit: a timestamp follows.
const HAS_TIMESTAMP: u8 = 1;
/// Flag bit: a key follows.
const HAS_KEY: u8 = 2;
/// Flag bit: a value follows.
const HAS_VALUE: u8 = 4;

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
    let headers: usize = record.headers.iter().map(|h| 8 + h.key.len() + h.value.len()).sum();
    let key = record.key.as_ref().map_or(0, |k| 4 + k.len());
    let value = record.value.as_ref().map_or(0, |v| 4 + v.len());
    let timestamp = if record.timestamp_ms.is_some() { 8 } else { 0 };
    (8 + 4 + 1 + timestamp + key + value + 4 + headers) as u64
}

fn encode(record: &Record, out: &mut Vec<u8>) -> Result<(), PackError> {
    out.extend_from_slice(&record.offset.to_le_bytes());
    out.extend_from_slice(&record.attempt.to_le_bytes());
    let flag = |present: bool, bit: u8| if present { bit } else { 0 };
    out.push(
        flag(record.timestamp_ms.is_some(), HAS_TIMESTAMP)
            | flag(record.key.is_some(), HAS_KEY)
            | flag(record.value.is_some(), HAS_VALUE),
    );
    if let Some(timestamp) = record.timestamp_ms {
        out.extend_from_slice(&timestamp.to_le_bytes());
    }
    for bytes in [&record.key, &record.value].into_iter().flatten() {
        put_bytes(out, bytes)?;
    }
    put_len(out, record.headers.len())?;
    for header in &record.headers {
        put_bytes(out, header.key.as_bytes())?;
        put_bytes(out, &header.value)?;
    }
    Ok(())
}

fn put_len(out: &mut Vec<u8>, len: usize) -> Result<(), PackError> {
    out.extend_from_slice(&u32::try_from(len).map_err(|_| PackError::TooLong)?.to_le_bytes());
    Ok(())
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), PackError> {
    put_len(out, bytes.len())?;
    out.extend_from_slice(bytes);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Header;

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
    fn the_layout_is_the_one_the_contract_documents() {
        let full = Record {
            timestamp_ms: Some(0x0102),
            key: Some(b"k".to_vec()),
            value: Some(b"vv".to_vec()),
            headers: vec![Header { key: "h".into(), value: vec![9] }],
            attempt: 2,
            ..record(7)
        };
        let records = [full, record(8)];
        let packed = pack(&records, Vec::new()).expect("pack");
        assert_eq!(packed.data.len() as u64, records.iter().map(encoded_len).sum::<u64>());
        assert_eq!((packed.topic.as_str(), packed.partition, packed.count), ("orders", 3, 2));
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            &7i64.to_le_bytes()[..], &2u32.to_le_bytes(), &[0b111],
            &0x0102i64.to_le_bytes(),
            &1u32.to_le_bytes(), b"k",
            &2u32.to_le_bytes(), b"vv",
            &1u32.to_le_bytes(), &1u32.to_le_bytes(), b"h", &1u32.to_le_bytes(), &[9],
            // A tombstone with no key, no timestamp and no headers.
            &8i64.to_le_bytes(), &1u32.to_le_bytes(), &[0], &0u32.to_le_bytes(),
        ]
        .concat();
        assert_eq!(packed.data, expected);
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
