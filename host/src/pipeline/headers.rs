//! The headers the host adds to records it sends to `<topic>.retry` and `<topic>.dlq`, and the
//! parsing of retry records back into the record the handler first saw.

use crate::handlers::RETRY_SUFFIX;
use crate::record::{Header, Record};

/// Prefix of every retry bookkeeping header; stripped before a handler sees the record.
pub const RETRY_PREFIX: &str = "x-retry-";
/// Original topic.
pub const RETRY_TOPIC: &str = "x-retry-topic";
/// Original partition.
pub const RETRY_PARTITION: &str = "x-retry-partition";
/// Original offset.
pub const RETRY_OFFSET: &str = "x-retry-offset";
/// Original timestamp (ms), when the record had one.
pub const RETRY_TIMESTAMP: &str = "x-retry-timestamp";
/// The attempt number of the next delivery.
pub const RETRY_ATTEMPT: &str = "x-retry-attempt";
/// Trips through the retry topic so far, this one included.
pub const RETRY_HOPS: &str = "x-retry-hops";
/// Not to be delivered before this time (ms since the Unix epoch).
pub const RETRY_NOT_BEFORE: &str = "x-retry-not-before";
/// The last error.
pub const RETRY_ERROR: &str = "x-retry-error";

/// Prefix of every dead-letter header.
pub const DLQ_PREFIX: &str = "x-dlq-";

/// A record read back from a retry topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryDelivery {
    /// The record as the handler first saw it, with the next attempt number.
    pub record: Record,
    /// Trips through the retry topic so far.
    pub hops: u32,
    /// Earliest delivery time, ms since the Unix epoch.
    pub not_before_ms: i64,
}

fn header<'a>(record: &'a Record, name: &str) -> Result<&'a str, String> {
    let value = record
        .headers
        .iter()
        .rev()
        .find(|h| h.key == name)
        .map(|h| &h.value)
        .ok_or_else(|| format!("missing header {name}"))?;
    std::str::from_utf8(value).map_err(|_| format!("header {name} is not UTF-8"))
}

fn number<T: std::str::FromStr>(record: &Record, name: &str) -> Result<T, String> {
    let text = header(record, name)?;
    text.parse().map_err(|_| format!("header {name}={text:?} is not a number"))
}

/// Reads a record from `<topic>.retry` back into the original record.
pub fn parse_retry(record: Record) -> Result<RetryDelivery, String> {
    let topic = header(&record, RETRY_TOPIC)?.to_string();
    if format!("{topic}{RETRY_SUFFIX}") != record.topic {
        return Err(format!("header {RETRY_TOPIC}={topic:?} does not match the retry topic {:?}", record.topic));
    }
    let partition = number(&record, RETRY_PARTITION)?;
    let offset = number(&record, RETRY_OFFSET)?;
    let attempt: u32 = number(&record, RETRY_ATTEMPT)?;
    if attempt < 2 {
        return Err(format!("header {RETRY_ATTEMPT}={attempt} must be at least 2"));
    }
    let hops = number(&record, RETRY_HOPS)?;
    let not_before_ms = number(&record, RETRY_NOT_BEFORE)?;
    let timestamp_ms = match header(&record, RETRY_TIMESTAMP) {
        Ok(_) => Some(number(&record, RETRY_TIMESTAMP)?),
        Err(_) => None,
    };
    let headers = record.headers.into_iter().filter(|h| !h.key.starts_with(RETRY_PREFIX)).collect();
    Ok(RetryDelivery {
        record: Record {
            topic,
            partition,
            offset,
            timestamp_ms,
            key: record.key,
            value: record.value,
            headers,
            attempt,
        },
        hops,
        not_before_ms,
    })
}

/// The headers of a record sent to the retry topic: the original ones plus bookkeeping.
pub fn retry_headers(record: &Record, next_attempt: u32, hops: u32, not_before_ms: i64, error: &str) -> Vec<Header> {
    let mut headers: Vec<Header> =
        record.headers.iter().filter(|h| !h.key.starts_with(RETRY_PREFIX)).cloned().collect();
    let mut add = |k: &str, v: String| headers.push(Header { key: k.to_string(), value: v.into_bytes() });
    add(RETRY_TOPIC, record.topic.clone());
    add(RETRY_PARTITION, record.partition.to_string());
    add(RETRY_OFFSET, record.offset.to_string());
    if let Some(ts) = record.timestamp_ms {
        add(RETRY_TIMESTAMP, ts.to_string());
    }
    add(RETRY_ATTEMPT, next_attempt.to_string());
    add(RETRY_HOPS, hops.to_string());
    add(RETRY_NOT_BEFORE, not_before_ms.to_string());
    add(RETRY_ERROR, truncate(error));
    headers
}

/// Why a record is dead-lettered.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    /// `reject` (the handler rejected it), `exhausted` (out of attempts), `malformed` (a retry
    /// record without its bookkeeping) or `undeliverable` (its retry copy or its events could
    /// not be written).
    pub cause: &'static str,
    /// The last outcome's label (`reject`, `retry`, `trap`, …).
    pub outcome: &'a str,
    /// The reason text.
    pub reason: &'a str,
    /// Handler calls made.
    pub attempts: u32,
    /// Digest of the handler that made the last call, if one did.
    pub digest: Option<&'a str>,
    /// The record as consumed, when it was a retry topic's copy of the original.
    pub source: Option<&'a Source>,
}

/// Where a record was consumed from: a retry topic's copy of it, whose coordinates differ from
/// the original's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The topic it was read from.
    pub topic: String,
    /// Its partition there.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
}

impl Source {
    /// The coordinates of `record` as consumed.
    pub fn of(record: &Record) -> Self {
        Self { topic: record.topic.clone(), partition: record.partition, offset: record.offset }
    }
}

/// The headers of a dead-lettered record: the original ones plus why, where from, and by whom.
pub fn dlq_headers(record: &Record, dead: &DeadLetter<'_>) -> Vec<Header> {
    let mut headers: Vec<Header> = record
        .headers
        .iter()
        .filter(|h| !h.key.starts_with(RETRY_PREFIX) && !h.key.starts_with(DLQ_PREFIX))
        .cloned()
        .collect();
    let mut add = |k: &str, v: String| headers.push(Header { key: k.to_string(), value: v.into_bytes() });
    add("x-dlq-cause", dead.cause.to_string());
    add("x-dlq-outcome", dead.outcome.to_string());
    add("x-dlq-reason", truncate(dead.reason));
    add("x-dlq-attempts", dead.attempts.to_string());
    add("x-dlq-topic", record.topic.clone());
    add("x-dlq-partition", record.partition.to_string());
    add("x-dlq-offset", record.offset.to_string());
    add("x-dlq-handler-digest", dead.digest.unwrap_or("none").to_string());
    add("x-dlq-at", chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    if let Some(ts) = record.timestamp_ms {
        add(DLQ_TIMESTAMP, ts.to_string());
    }
    if let Some(source) = dead.source {
        add("x-dlq-source-topic", source.topic.clone());
        add("x-dlq-source-partition", source.partition.to_string());
        add("x-dlq-source-offset", source.offset.to_string());
    }
    headers
}

/// The original record's timestamp (ms) on a dead letter: the copy itself carries the time it
/// was written.
pub const DLQ_TIMESTAMP: &str = "x-dlq-timestamp";

/// Longest key a reference dead letter keeps.
const MAX_REFERENCE_KEY_BYTES: usize = 1024;

/// The key and headers of a dead letter that stands for `record` when no copy of it can be
/// written (`why`): the `x-dlq-*` headers of [`dlq_headers`], plus `x-dlq-copy: reference`,
/// `x-dlq-copy-reason` and the sizes left out; the key when it is short. The original headers
/// and value are left out (the record is still on its topic, at `x-dlq-offset`, while retention
/// keeps it).
pub fn dlq_reference_headers<'a>(
    record: &'a Record,
    dead: &DeadLetter<'_>,
    why: &str,
) -> (Option<&'a [u8]>, Vec<Header>) {
    let mut headers: Vec<Header> =
        dlq_headers(record, dead).into_iter().filter(|h| h.key.starts_with(DLQ_PREFIX)).collect();
    let mut add = |k: &str, v: String| headers.push(Header { key: k.to_string(), value: v.into_bytes() });
    add("x-dlq-copy", "reference".into());
    add("x-dlq-copy-reason", truncate(why));
    add("x-dlq-value-bytes", record.value.as_ref().map_or(0, Vec::len).to_string());
    add("x-dlq-header-count", record.headers.len().to_string());
    let key = record.key.as_deref().filter(|k| k.len() <= MAX_REFERENCE_KEY_BYTES);
    if key.is_none() && record.key.is_some() {
        add("x-dlq-key-bytes", record.key.as_ref().map_or(0, Vec::len).to_string());
    }
    (key, headers)
}

/// Header values are kept under 4 KiB.
fn truncate(text: &str) -> String {
    crate::record::truncated(text, 4096).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn original() -> Record {
        Record {
            topic: "orders".into(),
            partition: 2,
            offset: 40,
            timestamp_ms: Some(1_700_000_000_000),
            key: Some(b"k".to_vec()),
            value: Some(b"v".to_vec()),
            headers: vec![Header { key: "trace".into(), value: b"1".to_vec() }],
            attempt: 3,
        }
    }

    #[test]
    fn a_retry_record_reads_back_as_the_original_with_the_next_attempt() {
        let rec = original();
        let on_retry_topic = Record {
            topic: "orders.retry".into(),
            partition: 0,
            offset: 7,
            headers: retry_headers(&rec, 4, 1, 123, "boom"),
            attempt: 1,
            ..rec.clone()
        };
        let back = parse_retry(on_retry_topic).expect("parse");
        assert_eq!(back.record, Record { attempt: 4, ..rec });
        assert_eq!((back.hops, back.not_before_ms), (1, 123));
    }

    #[test]
    fn malformed_retry_records_are_errors_naming_the_header() {
        let mut rec = original();
        rec.topic = "orders.retry".into();
        assert!(parse_retry(rec.clone()).expect_err("no headers").contains(RETRY_TOPIC));
        rec.headers = retry_headers(&original(), 4, 1, 123, "x");
        rec.headers.retain(|h| h.key != RETRY_OFFSET);
        assert!(parse_retry(rec.clone()).expect_err("no offset").contains(RETRY_OFFSET));
        rec.headers = retry_headers(&Record { topic: "other".into(), ..original() }, 4, 1, 123, "x");
        assert!(parse_retry(rec).expect_err("wrong topic").contains("does not match"));
    }

    #[test]
    fn dead_letters_keep_the_original_headers_and_say_why() {
        let rec = original();
        let h = dlq_headers(
            &rec,
            &DeadLetter {
                cause: "reject",
                outcome: "reject",
                reason: "bad",
                attempts: 3,
                digest: Some("sha256:ab"),
                source: Some(&Source { topic: "orders.retry".into(), partition: 0, offset: 9 }),
            },
        );
        let get = |k: &str| h.iter().find(|h| h.key == k).map(|h| String::from_utf8_lossy(&h.value).into_owned());
        assert_eq!(get("trace").as_deref(), Some("1"));
        assert_eq!(get("x-dlq-reason").as_deref(), Some("bad"));
        assert_eq!(get("x-dlq-topic").as_deref(), Some("orders"));
        assert_eq!(get("x-dlq-offset").as_deref(), Some("40"));
        assert_eq!(get("x-dlq-handler-digest").as_deref(), Some("sha256:ab"));
        assert_eq!(truncate(&"x".repeat(10_000)).len(), 4096 + '…'.len_utf8());
        assert_eq!(get(DLQ_TIMESTAMP).as_deref(), Some("1700000000000"), "the original time");
        assert_eq!(get("x-dlq-source-topic").as_deref(), Some("orders.retry"), "where it was consumed");
        assert_eq!(get("x-dlq-source-offset").as_deref(), Some("9"));
    }

    #[test]
    fn a_reference_dead_letter_keeps_the_reason_and_where_the_record_is_but_not_its_contents() {
        let rec = Record { value: Some(vec![b'v'; 2_000_000]), key: Some(vec![b'k'; 5000]), ..original() };
        let dead =
            DeadLetter { cause: "reject", outcome: "reject", reason: "bad", attempts: 1, digest: None, source: None };
        let (key, h) = dlq_reference_headers(&rec, &dead, "cannot write to orders.dlq: message too large");
        let get = |k: &str| h.iter().find(|h| h.key == k).map(|h| String::from_utf8_lossy(&h.value).into_owned());
        assert_eq!(key, None, "a long key is left out");
        assert_eq!(get("x-dlq-key-bytes").as_deref(), Some("5000"));
        assert_eq!(get("x-dlq-reason").as_deref(), Some("bad"));
        assert_eq!(get("x-dlq-offset").as_deref(), Some("40"));
        assert_eq!(get("x-dlq-copy").as_deref(), Some("reference"));
        assert!(get("x-dlq-copy-reason").is_some_and(|r| r.contains("too large")));
        assert_eq!(get("x-dlq-value-bytes").as_deref(), Some("2000000"));
        assert_eq!(get("trace"), None, "the original headers are left out");
        let short = original();
        let (key, _) = dlq_reference_headers(&short, &dead, "refused");
        assert_eq!(key, Some(&b"k"[..]), "a short key is kept");
    }
}
