//! Checks on what a handler asks the producer API to send: the path and the headers.
//!
//! The handler names a path; the host joins it to its own base URL. Anything that could make the
//! joined URL leave that origin, or smuggle a header, is denied here before a byte is sent.

/// Longest path accepted, query included.
pub const MAX_PATH_LEN: usize = 2048;
/// Most headers a handler may set on one call.
pub const MAX_HEADERS: usize = 32;
/// Largest total size of the handler's header names and values.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// Headers the host owns or that change how the connection behaves.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "idempotency-key",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "expect",
    "proxy-authorization",
    "proxy-connection",
    "forwarded",
];

/// Headers that proxies and frameworks read as the client's address, the original URL or method,
/// or the real host: a handler could use them to pass for someone else or to reach another route.
const SPOOFING_HEADERS: &[&str] = &[
    "x-real-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-original-host",
    "x-host",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    "x-original-forwarded-for",
    "x-originating-ip",
    "x-proxyuser-ip",
    "x-request-id",
    "via",
];

/// Prefixes of header names a handler may not use (after the same normalisation).
const RESERVED_PREFIXES: &[&str] = &["proxy-", "x-forwarded", "x-amzn-", "x-envoy-", "x-remote-", "x-auth-request-"];

/// Headers besides `x-*` ones that a handler may set: what describes a request's body and what
/// it accepts back. Anything else (credentials, identities, routing) is not a handler's to set.
const ALLOWED_HEADERS: &[&str] = &[
    "content-type",
    "content-language",
    "content-encoding",
    "accept",
    "accept-language",
    "accept-encoding",
    "cache-control",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "prefer",
    "user-agent",
];

/// Percent-encodings that could turn into path separators, dots, or further encodings when a
/// server decodes the path; denied anywhere in the path or query.
const FORBIDDEN_ENCODINGS: &[&str] = &["%2e", "%2f", "%5c", "%25", "%00"];

/// Percent-encodings denied before the query: delimiters a server that decodes the path would
/// read as path parameters, the query or a fragment.
const ROUTE_FORBIDDEN_ENCODINGS: &[&str] = &["%3b", "%3f", "%23"];

/// Checks a handler-given path and returns it unchanged when it is safe to append to the base URL.
///
/// Beyond the shape of the path (absolute, not `//`, visible ASCII, no `\`, `#` or `@`, no `.`
/// or `..` segments), every `%` must start a well-formed escape (two hex digits: `%%32%65` and
/// `%u002e` are denied, since a second decoding would make them `%2e` or a dot); no escape may
/// decode to a control character, and none to a separator, a dot or another escape
/// ([`FORBIDDEN_ENCODINGS`]). The route (before `?`) must not contain `;` (servers that take
/// `;` for path parameters would route it elsewhere), escapes of `;`, `?` or `#`, escapes of
/// non-ASCII bytes (overlong UTF-8 forms, and characters some servers fold into `.` or `/`), nor
/// segments of only dots and spaces; in the query, escaped bytes must form valid UTF-8.
pub fn check_path(path: &str) -> Result<&str, String> {
    if path.len() > MAX_PATH_LEN {
        return Err(format!("path is longer than {MAX_PATH_LEN} bytes"));
    }
    if !path.starts_with('/') {
        return Err("path must start with '/' (a path on the producer service, not a URL)".into());
    }
    if path.starts_with("//") {
        return Err("path must not start with '//' (a network-path reference names another host)".into());
    }
    if let Some(c) = path.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!("path contains a forbidden character {c:?} (only visible ASCII is allowed)"));
    }
    if let Some(c) = path.chars().find(|c| matches!(c, '\\' | '#' | '@')) {
        return Err(format!("path contains a forbidden character {c:?}"));
    }
    let lower = path.to_ascii_lowercase();
    if let Some(enc) = FORBIDDEN_ENCODINGS.iter().find(|e| lower.contains(*e)) {
        return Err(format!("path contains the encoded sequence {enc}, which is not allowed"));
    }
    let (route, query) = path.split_once('?').unwrap_or((path, ""));
    if route.contains(';') {
        return Err("path must not contain ';' before the query (path parameters)".into());
    }
    if route.split('/').any(|segment| segment == "." || segment == "..") {
        return Err("path must not contain '.' or '..' segments".into());
    }
    let route_lower = route.to_ascii_lowercase();
    if let Some(enc) = ROUTE_FORBIDDEN_ENCODINGS.iter().find(|e| route_lower.contains(*e)) {
        return Err(format!("path contains the encoded delimiter {enc} before the query"));
    }
    let route_bytes = decode_escapes(route)?;
    if route_bytes.iter().any(|b| !b.is_ascii()) {
        return Err("path must not percent-encode non-ASCII bytes before the query".into());
    }
    // Some servers strip trailing dots and spaces from a segment: `.. ` or `...` would become `..`.
    let dots_only = |segment: &&[u8]| segment.contains(&b'.') && segment.iter().all(|b| matches!(b, b'.' | b' '));
    if route_bytes.split(|b| *b == b'/').any(|segment| dots_only(&segment)) {
        return Err("path must not contain segments of only dots and spaces".into());
    }
    if std::str::from_utf8(&decode_escapes(query)?).is_err() {
        return Err("the query's percent-encoded bytes are not valid UTF-8".into());
    }
    Ok(path)
}

/// The bytes `text` stands for once its percent-escapes are decoded; an error for a `%` without
/// two hex digits after it, or an escape of a control character.
fn decode_escapes(text: &str) -> Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        let Some(byte) =
            hex.filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit())).and_then(|h| u8::from_str_radix(h, 16).ok())
        else {
            return Err("path contains a '%' that is not followed by two hex digits".into());
        };
        if byte.is_ascii_control() {
            return Err(format!("path contains the encoded control character %{byte:02x}"));
        }
        out.push(byte);
        i += 3;
    }
    Ok(out)
}

/// Checks one handler-given header: an `x-*` header or one of [`ALLOWED_HEADERS`], none that the
/// host owns or that proxies read as the client's identity or the original request. Names are
/// compared as servers may read them: case-insensitively and with `_` taken for `-` (some
/// servers and gateways fold one into the other).
pub fn check_header(name: &str, value: &str) -> Result<(), String> {
    let is_token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(is_token) {
        return Err(format!("header name {name:?} is not a valid HTTP token"));
    }
    let normalised = name.to_ascii_lowercase().replace('_', "-");
    if RESERVED_HEADERS.contains(&normalised.as_str())
        || SPOOFING_HEADERS.contains(&normalised.as_str())
        || RESERVED_PREFIXES.iter().any(|p| normalised.starts_with(p))
    {
        return Err(format!("header {name:?} is set by the host or its proxies and cannot be set by a handler"));
    }
    if !normalised.starts_with("x-") && !ALLOWED_HEADERS.contains(&normalised.as_str()) {
        return Err(format!(
            "header {name:?} is not one a handler may set (x-* headers and {})",
            ALLOWED_HEADERS.join(", ")
        ));
    }
    if let Some(c) = value.chars().find(|&c| !(c == ' ' || c == '\t' || c.is_ascii_graphic())) {
        return Err(format!("header {name:?} has a forbidden character {c:?} in its value"));
    }
    Ok(())
}

/// Checks all of a call's headers, their count and total size.
pub fn check_headers(headers: &[(String, String)]) -> Result<(), String> {
    if headers.len() > MAX_HEADERS {
        return Err(format!("more than {MAX_HEADERS} headers"));
    }
    let total: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_HEADER_BYTES {
        return Err(format!("headers exceed {MAX_HEADER_BYTES} bytes"));
    }
    headers.iter().try_for_each(|(k, v)| check_header(k, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_paths_pass() {
        for p in [
            "/producer-svc/tokens",
            "/producer-svc/tokens/verify",
            "/a?b=c&d=%20e",
            "/",
            "/a?name=Jos%C3%A9",
            "/a?x=1;y=2",
            "/users/%41b",
            "/a.b/c./.d",
            "/a?x=%3F%23",
        ] {
            assert_eq!(check_path(p), Ok(p));
        }
    }

    #[test]
    fn escaping_paths_are_denied() {
        for p in [
            "http://evil.example/x",
            "evil.example/x",
            "//evil.example/x",
            "/../admin",
            "/a/./b",
            "/a/..",
            "/%2e%2e/admin",
            "/%2E%2E/admin",
            "/a%2fb",
            "/a%252e%252e/",
            "/a\\..\\b",
            "/a@evil.example",
            "/a#frag",
            "/a\r\nHost: evil",
            "/a b",
            "/caf\u{e9}",
            "",
            "/%%32%65%%32%65/admin",
            "/%u002e%u002e/admin",
            "/a%2",
            "/a%zz",
            "/a%",
            "/%c0%ae%c0%ae/admin",
            "/%ef%bc%8f",
            "/a?x=%c0%ae",
            "/a%0a",
            "/a?x=%0d%0a",
            "/a%7f",
            "/producer-svc/tokens;x=1",
            "/admin;/producer-svc",
            "/producer-svc/tokens%3bx=1",
            "/a%3Fb",
            "/a%23b",
            "/x/..%20/admin",
            "/x/.%20/admin",
            "/x/.../admin",
            "/x/%20../admin",
        ] {
            assert!(check_path(p).is_err(), "{p:?} should be denied");
        }
        assert!(check_path(&format!("/{}", "a".repeat(MAX_PATH_LEN))).is_err());
    }

    #[test]
    fn reserved_and_malformed_headers_are_denied() {
        assert!(check_header("content-type", "application/json").is_ok());
        for (k, v) in [
            ("Host", "evil.example"),
            ("IDEMPOTENCY-KEY", "x"),
            ("content-length", "1"),
            ("Transfer-Encoding", "chunked"),
            ("x-forwarded-for", "1.2.3.4"),
            ("X-Forwarded", "for=1.2.3.4"),
            ("x_forwarded_for", "1.2.3.4"),
            ("idempotency_key", "x"),
            ("Content_Length", "1"),
            ("X-Real-IP", "1.2.3.4"),
            ("x_real_ip", "1.2.3.4"),
            ("X-Original-URL", "/admin"),
            ("x-rewrite-url", "/admin"),
            ("X-HTTP-Method-Override", "DELETE"),
            ("x-amzn-trace-id", "Root=1"),
            ("Authorization", "Bearer stolen"),
            ("cookie", "a=b"),
            ("X-Request-Id", "spoofed"),
            ("Via", "1.1 evil"),
            ("X-Remote-User", "admin"),
            ("proxy-anything", "x"),
            ("x-a", "b\r\nHost: evil"),
            ("x a", "b"),
            ("", "b"),
            ("x-a\n", "b"),
        ] {
            assert!(check_header(k, v).is_err(), "{k:?}: {v:?} should be denied");
        }
        let many: Vec<_> = (0..=MAX_HEADERS).map(|i| (format!("x-{i}"), "v".to_string())).collect();
        assert!(check_headers(&many).is_err());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};

        /// Paths built from the pieces escape attempts are made of, and (a quarter of the time)
        /// ordinary paths of ordinary segments, so accepted paths are common enough to check.
        fn tricky_path() -> impl Strategy<Value = String> {
            let piece = prop::sample::select(vec![
                "/",
                "//",
                ".",
                "..",
                "%2e",
                "%2E",
                "%2f",
                "%5c",
                "%25",
                "%00",
                "\\",
                "@",
                ":",
                "?",
                "#",
                "a",
                "b",
                "tokens",
                "producer-svc",
                "evil.example",
                "http:",
                "%",
                "2e",
                ";",
                "\r\n",
                "\u{0}",
                "é",
                " ",
                "\t",
                "~",
                "=",
            ]);
            let segment = prop::sample::select(vec![
                "a",
                "b",
                "tokens",
                "producer-svc",
                "verify",
                "x-1",
                "~",
                "=",
                ":",
                "%20",
                "v1.2",
                "a.",
                ".b",
            ]);
            let ordinary = (prop::collection::vec(segment, 1..6), prop::option::of("[a-z]{1,5}=[a-z0-9]{0,5}"))
                .prop_map(|(segments, query)| {
                    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
                    format!("/{}{query}", segments.join("/"))
                });
            prop_oneof![
                3 => prop::collection::vec(piece, 0..12).prop_map(|p| p.concat()),
                1 => "\\PC{0,40}",
                1 => "/[ -~]{0,60}",
                2 => ordinary,
            ]
        }

        fn runner(cases: u32) -> TestRunner {
            TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() })
        }

        /// Whatever a handler passes, an accepted path joined to the base URL stays on the
        /// producer's scheme, host and port, under the base path, with every segment it had (a
        /// client that resolved `..` or turned `\\` into `/` would change the count).
        #[test]
        fn an_accepted_path_never_leaves_the_producer() {
            const CASES: u32 = 4000;
            let accepted = std::cell::Cell::new(0u32);
            runner(CASES)
                .run(&tricky_path(), |path| {
                    let Ok(path) = check_path(&path) else { return Ok(()) };
                    accepted.set(accepted.get() + 1);
                    let base = "http://producer.internal:8080/api";
                    let url = reqwest::Url::parse(&format!("{base}{path}"))
                        .map_err(|e| TestCaseError::fail(format!("{path:?} accepted but does not parse: {e}")))?;
                    prop_assert_eq!(url.scheme(), "http");
                    prop_assert_eq!(url.host_str(), Some("producer.internal"));
                    prop_assert_eq!(url.port(), Some(8080));
                    prop_assert!(url.username().is_empty() && url.password().is_none());
                    prop_assert!(url.fragment().is_none());
                    prop_assert!(url.path().starts_with("/api/"), "{:?} resolved to {}", path, url);
                    let route = path.split('?').next().unwrap_or_default();
                    let segments = url.path_segments().map_or(0, Iterator::count);
                    prop_assert_eq!(segments, route.split('/').count(), "{:?} resolved to {}", path, url);
                    Ok(())
                })
                .unwrap_or_else(|e| panic!("{e}"));
            // The ordinary arm alone is a quarter of the cases; fewer accepted means the generator
            // stopped reaching the accepting side and the assertions above went idle.
            assert!(accepted.get() >= CASES / 5, "only {} of {CASES} generated paths were accepted", accepted.get());
        }

        /// An accepted header is a valid HTTP header that the host does not own, and its value
        /// cannot end the header line.
        #[test]
        fn an_accepted_header_is_valid_and_not_host_owned() {
            const CASES: u32 = 4000;
            let accepted = std::cell::Cell::new(0u32);
            let name = prop_oneof![
                "[ -~]{0,20}",
                "host|Host|idempotency-key|Proxy-x|x-forwarded-for",
                "[a-zA-Z-]{1,12}",
                "[xX]-[a-zA-Z_-]{1,10}|content-type|Accept|accept-language",
            ];
            let value = prop_oneof!["\\PC{0,30}", "[ -~]{0,30}", ".*\r\n.*", "[a-z0-9 ]{0,20}"];
            runner(CASES)
                .run(&(name, value), |(name, value)| {
                    if check_header(&name, &value).is_err() {
                        return Ok(());
                    }
                    accepted.set(accepted.get() + 1);
                    prop_assert!(reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok());
                    prop_assert!(reqwest::header::HeaderValue::from_str(&value).is_ok());
                    prop_assert!(!value.contains(['\r', '\n', '\0']));
                    let lower = name.to_ascii_lowercase().replace('_', "-");
                    prop_assert!(!RESERVED_HEADERS.contains(&lower.as_str()));
                    prop_assert!(lower.starts_with("x-") || ALLOWED_HEADERS.contains(&lower.as_str()));
                    Ok(())
                })
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(accepted.get() >= CASES / 10, "only {} of {CASES} generated headers were accepted", accepted.get());
        }
    }
}
