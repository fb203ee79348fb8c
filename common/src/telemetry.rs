//! Logging set-up (human-readable lines on a terminal, one JSON object per line when
//! `LOG_FORMAT=json`, for CloudWatch and other collectors; `RUST_LOG` filters, default `info`)
//! and the Prometheus text rendering both services serve.
//!
//! Log lines carry text others chose (a handler's log lines and reasons, a record's coordinates,
//! a client's request id): in text lines every control character of a field is escaped
//! ([`escape_controls`]), so no field can end the line and start one that looks like the
//! service's own; JSON lines escape them by construction.

use std::fmt::Write as _;
use std::io::IsTerminal;
use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "text" | "pretty" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err("expected text or json".into()),
        }
    }
}

/// Installs the global subscriber. Logs go to stderr.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).fmt_fields(EscapedFields).try_init(),
    };
    if let Err(e) = result {
        eprintln!("logging already set up: {e}");
    }
}

/// Whether `c` is escaped in a text log line: a control character (C0 but the tab, DEL, C1), a
/// line or paragraph separator, or an invisible format character that reorders or hides text
/// (bidirectional overrides and isolates, zero-width characters, the byte-order mark).
fn escaped(c: char) -> bool {
    (c.is_control() && c != '\t')
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

/// Writes `text` to `out` with every character [`escaped`] picks written as `\n`, `\r` or
/// `\u{..}`.
pub fn escape_controls(out: &mut impl std::fmt::Write, text: &str) -> std::fmt::Result {
    let mut rest = text;
    while let Some(at) = rest.find(escaped) {
        out.write_str(&rest[..at])?;
        let c = rest[at..].chars().next().unwrap_or_default();
        match c {
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            c => write!(out, "\\u{{{:x}}}", u32::from(c))?,
        }
        rest = &rest[at + c.len_utf8()..];
    }
    out.write_str(rest)
}

/// A `fmt::Write` that escapes control characters on the way through.
struct Escaping<'a, W>(&'a mut W);

impl<W: std::fmt::Write> std::fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        escape_controls(self.0, s)
    }
}

/// The text format's fields (`message`, then `name=value` pairs), each escaped with
/// [`escape_controls`].
#[derive(Debug, Default, Clone, Copy)]
pub struct EscapedFields;

impl<'w> FormatFields<'w> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> std::fmt::Result {
        let mut visitor = FieldWriter { writer, result: Ok(()), first: true };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct FieldWriter<'w> {
    writer: Writer<'w>,
    result: std::fmt::Result,
    first: bool,
}

impl Visit for FieldWriter<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // The `log` crate's own fields (tracing-log adds them to records it forwards), as the
        // default formatter leaves them out.
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        if !std::mem::take(&mut self.first) {
            self.result = self.writer.write_char(' ');
        }
        let mut out = Escaping(&mut self.writer);
        self.result = self.result.and_then(|()| match field.name() {
            "message" => write!(out, "{value:?}"),
            name => write!(out, "{}={value:?}", name.trim_start_matches("r#")),
        });
    }
}

/// A metrics registry in the Prometheus text exposition format.
pub fn render_metrics(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!("cannot encode metrics: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        let mut out = String::new();
        escape_controls(&mut out, "a\nb\r\nc\u{1b}[31m\td\u{85}é\u{2028}\u{202e}x\u{200b}").expect("write");
        assert_eq!(out, "a\\nb\\r\\nc\\u{1b}[31m\td\\u{85}é\\u{2028}\\u{202e}x\\u{200b}");
    }

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_text_log_line_cannot_be_split_by_its_fields() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .fmt_fields(EscapedFields)
            .finish();
        let forged = "done\n2026-11-30T00:00:00.000000Z  INFO host::service: all partitions revoked\r";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(reason = %forged, "rejected: {forged}");
        });
        let text = String::from_utf8(buffer.0.lock().expect("lock").clone()).expect("utf-8");
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("rejected: done\\n2026") && text.contains("reason=done\\n2026"), "{text}");
    }
}
