//! Decoding of the contract's `packed-records` (the records of a `handle-packed` batch, packed
//! in one buffer; the layout is documented in `wit/handler.wit`) back into [`KafkaRecord`]s.

use crate::{Header, KafkaRecord, PackedRecords};

/// The fewest bytes a record takes: offset, attempt, flags and the header count.
pub const MIN_RECORD_BYTES: usize = 8 + 4 + 1 + 4;

/// Flag bit: a timestamp follows.
const HAS_TIMESTAMP: u8 = 1;
/// Flag bit: a key follows.
const HAS_KEY: u8 = 2;
/// Flag bit: a value follows.
const HAS_VALUE: u8 = 4;

/// Reads the records of a [`PackedRecords`] one at a time.
#[derive(Debug)]
pub struct Decoder {
    topic: String,
    partition: i32,
    data: Vec<u8>,
    pos: usize,
}

/// Why packed records did not decode: the byte position and what was wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The position in the buffer.
    pub at: usize,
    /// What was wrong.
    pub what: &'static str,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

impl std::error::Error for DecodeError {}

impl Decoder {
    /// A decoder at the first record of `records`.
    pub fn new(records: PackedRecords) -> Self {
        Self { topic: records.topic, partition: records.partition, data: records.data, pos: 0 }
    }

    /// A record of this batch's topic and partition with nothing else set, to decode into.
    pub fn blank(&self) -> KafkaRecord {
        KafkaRecord {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: 0,
            timestamp_ms: None,
            key: None,
            value: None,
            headers: Vec::new(),
            attempt: 0,
        }
    }

    /// Decodes the next record into `record` (one from [`Decoder::blank`]), reusing its
    /// buffers: a batch of records with the same fields allocates only for its first.
    pub fn read_into(&mut self, record: &mut KafkaRecord) -> Result<(), DecodeError> {
        record.offset = i64::from_le_bytes(self.array()?);
        record.attempt = u32::from_le_bytes(self.array()?);
        let [flags] = self.array()?;
        if flags & !(HAS_TIMESTAMP | HAS_KEY | HAS_VALUE) != 0 {
            return Err(self.error("unknown flags"));
        }
        record.timestamp_ms = if flags & HAS_TIMESTAMP != 0 { Some(i64::from_le_bytes(self.array()?)) } else { None };
        self.optional_bytes(flags & HAS_KEY != 0, &mut record.key)?;
        self.optional_bytes(flags & HAS_VALUE != 0, &mut record.value)?;
        let count = u32::from_le_bytes(self.array()?) as usize;
        record.headers.truncate(count);
        for i in 0..count {
            let at = self.pos;
            let key = std::str::from_utf8(self.bytes()?)
                .map_err(|_| DecodeError { at, what: "a header key that is not UTF-8" })?;
            if i == record.headers.len() {
                record.headers.push(Header { key: String::new(), value: Vec::new() });
            }
            let header = &mut record.headers[i];
            header.key.clear();
            header.key.push_str(key);
            self.bytes_into(&mut header.value)?;
        }
        Ok(())
    }

    /// Checks that the buffer held nothing after the last record.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.pos == self.data.len() { Ok(()) } else { Err(self.error("bytes after the last record")) }
    }

    fn error(&self, what: &'static str) -> DecodeError {
        DecodeError { at: self.pos, what }
    }

    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|end| *end <= self.data.len());
        let Some(end) = end else { return Err(self.error("the buffer ends inside a record")) };
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    /// Reads a length-prefixed field into `into` when `present` (reusing its buffer), else
    /// sets it to `None`.
    fn optional_bytes(&mut self, present: bool, into: &mut Option<Vec<u8>>) -> Result<(), DecodeError> {
        if !present {
            *into = None;
            return Ok(());
        }
        self.bytes_into(into.get_or_insert_default())
    }

    /// Reads a length-prefixed field into `into`, replacing what it held (its buffer is reused).
    fn bytes_into(&mut self, into: &mut Vec<u8>) -> Result<(), DecodeError> {
        let bytes = self.bytes()?;
        into.clear();
        into.extend_from_slice(bytes);
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn bytes(&mut self) -> Result<&[u8], DecodeError> {
        let len = u32::from_le_bytes(self.array()?);
        self.take(len as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes one record the way the contract documents (see `wit/handler.wit`).
    fn encode(
        out: &mut Vec<u8>,
        offset: i64,
        attempt: u32,
        ts: Option<i64>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, &[u8])],
    ) {
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&attempt.to_le_bytes());
        let flags = u8::from(ts.is_some()) | u8::from(key.is_some()) << 1 | u8::from(value.is_some()) << 2;
        out.push(flags);
        if let Some(ts) = ts {
            out.extend_from_slice(&ts.to_le_bytes());
        }
        for bytes in [key, value].into_iter().flatten() {
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
        for (k, v) in headers {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v);
        }
    }

    fn decoder(data: Vec<u8>, count: u32) -> Decoder {
        Decoder::new(PackedRecords { topic: "orders".into(), partition: 2, count, data })
    }

    #[test]
    fn a_record_decoded_into_the_buffers_of_a_fuller_one_keeps_nothing_of_it() {
        let mut data = Vec::new();
        encode(&mut data, 7, 3, Some(-1), Some(b"k"), Some(b"value"), &[("a", b"1"), ("b", b"")]);
        encode(&mut data, 8, 1, None, None, None, &[]);
        encode(&mut data, 9, 2, None, Some(b""), Some(b"v"), &[("c", &[0xff])]);
        let mut decoder = decoder(data, 3);
        let mut record = decoder.blank();
        decoder.read_into(&mut record).expect("first");
        assert_eq!((record.offset, record.attempt, record.timestamp_ms), (7, 3, Some(-1)));
        assert_eq!((record.key.as_deref(), record.value.as_deref()), (Some(&b"k"[..]), Some(&b"value"[..])));
        assert_eq!(record.headers.len(), 2);
        decoder.read_into(&mut record).expect("second");
        assert_eq!((record.offset, record.attempt, record.timestamp_ms), (8, 1, None));
        assert_eq!((record.key.as_deref(), record.value.as_deref(), record.headers.len()), (None, None, 0));
        decoder.read_into(&mut record).expect("third");
        assert_eq!((record.key.as_deref(), record.value.as_deref()), (Some(&b""[..]), Some(&b"v"[..])));
        assert_eq!(record.headers.len(), 1);
        assert_eq!((record.headers[0].key.as_str(), record.headers[0].value.as_slice()), ("c", &[0xff][..]));
        assert_eq!((record.topic.as_str(), record.partition), ("orders", 2));
        decoder.finish().expect("nothing left over");
    }

    #[test]
    fn malformed_buffers_are_errors_that_say_where() {
        let mut one = Vec::new();
        encode(&mut one, 1, 1, None, Some(b"key"), None, &[("h", b"v")]);
        let read = |data: Vec<u8>| {
            let mut decoder = decoder(data, 1);
            let mut record = decoder.blank();
            decoder.read_into(&mut record).and_then(|()| decoder.finish())
        };
        assert_eq!(read(one.clone()), Ok(()));
        // Cut anywhere, the buffer ends inside the record.
        for cut in 0..one.len() {
            let error = read(one[..cut].to_vec()).expect_err("a short buffer");
            assert_eq!(error.what, "the buffer ends inside a record", "cut at {cut}");
        }
        let mut flags = one.clone();
        flags[12] |= 8;
        assert_eq!(read(flags).map_err(|e| (e.what, e.at)), Err(("unknown flags", 13)));
        let mut left_over = one.clone();
        left_over.push(0);
        assert_eq!(read(left_over).map_err(|e| e.what), Err("bytes after the last record"));
        let mut not_utf8 = Vec::new();
        encode(&mut not_utf8, 1, 1, None, None, None, &[]);
        not_utf8.truncate(not_utf8.len() - 4);
        not_utf8.extend_from_slice(&1u32.to_le_bytes());
        not_utf8.extend_from_slice(&1u32.to_le_bytes());
        not_utf8.push(0xff);
        not_utf8.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(read(not_utf8).map_err(|e| e.what), Err("a header key that is not UTF-8"));
    }
}
