//! The codec of the contract's `packed-records` (`wit/handler.wit`): the records of a batch, one
//! after the other in one byte buffer, so that a batch enters a guest in one copy instead of
//! field by field. The host encodes ([`encode`]); the handler SDKs decode ([`Decoder`]), into
//! records of their own through [`RecordSink`], reusing their buffers from record to record.
//!
//! Each record is encoded as follows (integers little-endian; `len` is a u32 byte count):
//!
//! | field | encoding |
//! |---|---|
//! | offset | i64 |
//! | attempt | u32 |
//! | flags | u8: bit 0 when a timestamp follows, bit 1 when a key, bit 2 when a value; the others 0 |
//! | timestamp-ms | i64, only with flag bit 0 |
//! | key | len, then the bytes; only with flag bit 1 |
//! | value | len, then the bytes; only with flag bit 2 |
//! | headers | u32 count, then per header: len and the key's bytes (UTF-8), len and the value's bytes |
//!
//! The buffer ends right after the last record.

#![no_std]
extern crate alloc;

use alloc::vec::Vec;

/// Flag bit: a timestamp follows.
const HAS_TIMESTAMP: u8 = 1;
/// Flag bit: a key follows.
const HAS_KEY: u8 = 2;
/// Flag bit: a value follows.
const HAS_VALUE: u8 = 4;

/// The fewest bytes a record takes: offset, attempt, flags and the header count.
pub const MIN_RECORD_BYTES: usize = 8 + 4 + 1 + 4;

/// A record's fields besides its topic, partition (a batch's own) and headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fields<'a> {
    /// The record's offset.
    pub offset: i64,
    /// Which delivery this is (1 on the first).
    pub attempt: u32,
    /// Milliseconds since the Unix epoch, when the broker has a timestamp.
    pub timestamp_ms: Option<i64>,
    /// The key; `None` when the record has none.
    pub key: Option<&'a [u8]>,
    /// The value; `None` for a tombstone.
    pub value: Option<&'a [u8]>,
}

/// A key, value, header or header count that does not fit the format's u32 lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong;

impl core::fmt::Display for TooLong {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("a length does not fit in 32 bits")
    }
}

impl core::error::Error for TooLong {}

/// Appends one record to `out`.
pub fn encode<'a>(
    out: &mut Vec<u8>,
    fields: Fields<'_>,
    headers: impl ExactSizeIterator<Item = (&'a str, &'a [u8])>,
) -> Result<(), TooLong> {
    out.extend_from_slice(&fields.offset.to_le_bytes());
    out.extend_from_slice(&fields.attempt.to_le_bytes());
    let flag = |present: bool, bit: u8| if present { bit } else { 0 };
    out.push(
        flag(fields.timestamp_ms.is_some(), HAS_TIMESTAMP)
            | flag(fields.key.is_some(), HAS_KEY)
            | flag(fields.value.is_some(), HAS_VALUE),
    );
    if let Some(timestamp) = fields.timestamp_ms {
        out.extend_from_slice(&timestamp.to_le_bytes());
    }
    for bytes in [fields.key, fields.value].into_iter().flatten() {
        put_bytes(out, bytes)?;
    }
    put_len(out, headers.len())?;
    for (key, value) in headers {
        put_bytes(out, key.as_bytes())?;
        put_bytes(out, value)?;
    }
    Ok(())
}

/// The bytes a record takes once encoded: what batch size limits are measured in.
pub fn encoded_len<'a>(fields: Fields<'_>, headers: impl Iterator<Item = (&'a str, &'a [u8])>) -> u64 {
    let headers: usize = headers.map(|(k, v)| 8 + k.len() + v.len()).sum();
    let key = fields.key.map_or(0, |k| 4 + k.len());
    let value = fields.value.map_or(0, |v| 4 + v.len());
    let timestamp = if fields.timestamp_ms.is_some() { 8 } else { 0 };
    (MIN_RECORD_BYTES + timestamp + key + value + headers) as u64
}

fn put_len(out: &mut Vec<u8>, len: usize) -> Result<(), TooLong> {
    out.extend_from_slice(&u32::try_from(len).map_err(|_| TooLong)?.to_le_bytes());
    Ok(())
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), TooLong> {
    put_len(out, bytes.len())?;
    out.extend_from_slice(bytes);
    Ok(())
}

/// What a decoded record goes into. A sink may keep its buffers from record to record: each
/// call replaces what the record before set.
pub trait RecordSink {
    /// The record's fields.
    fn fields(&mut self, fields: Fields<'_>);
    /// The record has `count` headers, which follow.
    fn header_count(&mut self, count: usize);
    /// Header number `index` (from 0, in order).
    fn header(&mut self, index: usize, key: &str, value: &[u8]);
}

/// Why packed records did not decode: the byte position and what was wrong there. A host only
/// ever sends well-formed buffers, so this is a host bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError {
    /// The position in the buffer.
    pub at: usize,
    /// What was wrong.
    pub what: &'static str,
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

impl core::error::Error for DecodeError {}

/// Reads packed records one at a time.
#[derive(Debug)]
pub struct Decoder<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    /// A decoder at the first record of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    /// Whether every record was read (nothing is left in the buffer).
    pub fn is_done(&self) -> bool {
        self.pos == self.data.len()
    }

    /// Decodes the next record into `sink`.
    pub fn read_into(&mut self, sink: &mut impl RecordSink) -> Result<(), DecodeError> {
        let offset = i64::from_le_bytes(self.array()?);
        let attempt = u32::from_le_bytes(self.array()?);
        let [flags] = self.array()?;
        if flags & !(HAS_TIMESTAMP | HAS_KEY | HAS_VALUE) != 0 {
            return Err(self.error("unknown flags"));
        }
        let timestamp_ms = if flags & HAS_TIMESTAMP != 0 { Some(i64::from_le_bytes(self.array()?)) } else { None };
        let key = if flags & HAS_KEY != 0 { Some(self.bytes()?) } else { None };
        let value = if flags & HAS_VALUE != 0 { Some(self.bytes()?) } else { None };
        sink.fields(Fields { offset, attempt, timestamp_ms, key, value });
        let count = u32::from_le_bytes(self.array()?) as usize;
        // Each header takes 8 bytes at least: a count the buffer cannot hold is refused before
        // a sink reserves room for it.
        if count > (self.data.len() - self.pos) / 8 {
            return Err(self.error("more headers than the buffer holds"));
        }
        sink.header_count(count);
        for index in 0..count {
            let at = self.pos;
            let key = core::str::from_utf8(self.bytes()?)
                .map_err(|_| DecodeError { at, what: "a header key that is not UTF-8" })?;
            let value = self.bytes()?;
            sink.header(index, key, value);
        }
        Ok(())
    }

    /// Checks that the buffer held nothing after the last record.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.is_done() { Ok(()) } else { Err(self.error("bytes after the last record")) }
    }

    fn error(&self, what: &'static str) -> DecodeError {
        DecodeError { at: self.pos, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|end| *end <= self.data.len());
        let Some(end) = end else { return Err(self.error("the buffer ends inside a record")) };
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = u32::from_le_bytes(self.array()?);
        self.take(len as usize)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use alloc::string::{String, ToString};
    use alloc::vec;
    use proptest::prelude::*;

    /// A record as a test keeps it.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    struct Owned {
        offset: i64,
        attempt: u32,
        timestamp_ms: Option<i64>,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        headers: Vec<(String, Vec<u8>)>,
    }

    impl Owned {
        fn encode(&self, out: &mut Vec<u8>) {
            let fields = Fields {
                offset: self.offset,
                attempt: self.attempt,
                timestamp_ms: self.timestamp_ms,
                key: self.key.as_deref(),
                value: self.value.as_deref(),
            };
            encode(out, fields, self.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).expect("encode");
        }
    }

    /// A sink that reuses its buffers, as the SDKs do.
    impl RecordSink for Owned {
        fn fields(&mut self, f: Fields<'_>) {
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
                self.headers.push(Default::default());
            }
            let (k, v) = &mut self.headers[index];
            k.clear();
            k.push_str(key);
            v.clear();
            v.extend_from_slice(value);
        }
    }

    #[test]
    fn the_layout_is_the_one_the_contract_documents() {
        let full = Owned {
            offset: 7,
            attempt: 2,
            timestamp_ms: Some(0x0102),
            key: Some(b"k".to_vec()),
            value: Some(b"vv".to_vec()),
            headers: vec![("h".to_string(), vec![9])],
        };
        let tombstone = Owned { offset: 8, attempt: 1, ..Owned::default() };
        let mut data = Vec::new();
        full.encode(&mut data);
        tombstone.encode(&mut data);
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
        assert_eq!(data, expected);
        let len = |r: &Owned| {
            let fields = Fields {
                offset: 0,
                attempt: 0,
                timestamp_ms: r.timestamp_ms,
                key: r.key.as_deref(),
                value: r.value.as_deref(),
            };
            encoded_len(fields, r.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
        };
        assert_eq!(data.len() as u64, len(&full) + len(&tombstone));
    }

    #[test]
    fn malformed_buffers_are_errors_that_say_where() {
        let mut one = Vec::new();
        Owned {
            offset: 1,
            attempt: 1,
            key: Some(b"key".to_vec()),
            headers: vec![("h".into(), b"v".to_vec())],
            ..Owned::default()
        }
        .encode(&mut one);
        let read = |data: &[u8]| {
            let mut decoder = Decoder::new(data);
            decoder.read_into(&mut Owned::default()).and_then(|()| decoder.finish())
        };
        assert_eq!(read(&one), Ok(()));
        for cut in 0..one.len() {
            let error = read(&one[..cut]).expect_err("a short buffer");
            assert!(
                matches!(error.what, "the buffer ends inside a record" | "more headers than the buffer holds"),
                "cut at {cut}: {error}"
            );
        }
        let mut flags = one.clone();
        flags[12] |= 8;
        assert_eq!(read(&flags).map_err(|e| (e.what, e.at)), Err(("unknown flags", 13)));
        let mut left_over = one.clone();
        left_over.push(0);
        assert_eq!(read(&left_over).map_err(|e| e.what), Err("bytes after the last record"));
        let mut not_utf8 = Vec::new();
        Owned { offset: 1, attempt: 1, headers: vec![("x".into(), Vec::new())], ..Owned::default() }
            .encode(&mut not_utf8);
        let at = not_utf8.len() - 5;
        not_utf8[at] = 0xff;
        assert_eq!(read(&not_utf8).map_err(|e| e.what), Err("a header key that is not UTF-8"));
        let mut huge_count = Vec::new();
        Owned { offset: 1, attempt: 1, ..Owned::default() }.encode(&mut huge_count);
        let at = huge_count.len() - 4;
        huge_count[at..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(read(&huge_count).map_err(|e| e.what), Err("more headers than the buffer holds"));
    }

    fn record() -> impl Strategy<Value = Owned> {
        let bytes = || prop::option::of(prop::collection::vec(any::<u8>(), 0..40));
        (
            any::<i64>(),
            any::<u32>(),
            prop::option::of(any::<i64>()),
            bytes(),
            bytes(),
            prop::collection::vec(("\\PC{0,8}", prop::collection::vec(any::<u8>(), 0..8)), 0..5),
        )
            .prop_map(|(offset, attempt, timestamp_ms, key, value, headers)| Owned {
                offset,
                attempt,
                timestamp_ms,
                key,
                value,
                headers,
            })
    }

    proptest! {
        /// Any records, decoded one after the other into one reused sink, come back whole, with
        /// nothing kept from a fuller record before.
        #[test]
        fn every_record_comes_back_as_it_was_encoded(records in prop::collection::vec(record(), 1..20)) {
            let mut data = Vec::new();
            for r in &records {
                r.encode(&mut data);
            }
            let mut decoder = Decoder::new(&data);
            let mut sink = Owned::default();
            for r in &records {
                decoder.read_into(&mut sink).expect("decode");
                prop_assert_eq!(&sink, r);
            }
            prop_assert!(decoder.finish().is_ok());
        }
    }
}
