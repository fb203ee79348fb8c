//! Decoding of the contract's `packed-records` (the records of a `handle-packed` batch, packed
//! in one buffer; the layout is documented in `wit/handler.wit`) back into [`KafkaRecord`]s.

use crate::{Header, KafkaRecord, PackedRecords};

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

    /// Reads the next record.
    pub fn read(&mut self) -> Result<KafkaRecord, DecodeError> {
        let offset = i64::from_le_bytes(self.array()?);
        let attempt = u32::from_le_bytes(self.array()?);
        let [flags] = self.array()?;
        if flags & !(HAS_TIMESTAMP | HAS_KEY | HAS_VALUE) != 0 {
            return Err(self.error("unknown flags"));
        }
        let timestamp_ms = if flags & HAS_TIMESTAMP != 0 { Some(i64::from_le_bytes(self.array()?)) } else { None };
        let key = if flags & HAS_KEY != 0 { Some(self.bytes()?.to_vec()) } else { None };
        let value = if flags & HAS_VALUE != 0 { Some(self.bytes()?.to_vec()) } else { None };
        let count = u32::from_le_bytes(self.array()?);
        let mut headers = Vec::with_capacity((count as usize).min(self.data.len() - self.pos));
        for _ in 0..count {
            let at = self.pos;
            let key = std::str::from_utf8(self.bytes()?)
                .map_err(|_| DecodeError { at, what: "a header key that is not UTF-8" })?
                .to_owned();
            let value = self.bytes()?.to_vec();
            headers.push(Header { key, value });
        }
        Ok(KafkaRecord {
            topic: self.topic.clone(),
            partition: self.partition,
            offset,
            timestamp_ms,
            key,
            value,
            headers,
            attempt,
        })
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
