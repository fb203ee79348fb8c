//! A handler that misbehaves on request: the record's key names the misdeed, the value carries
//! its argument. Escape attempts report what happened as a `probe` event
//! (`{"escaped":bool,"detail":...}`) and return `ok`, so a test can assert they were contained.

use handler_sdk::{HandlerError, KafkaRecord, Level, Method, Request, log, producer_api, publish_event};
use std::io::Read;

struct Hostile;

fn probe(escaped: bool, detail: impl std::fmt::Display) {
    publish_event("probe", &serde_json::json!({ "escaped": escaped, "detail": detail.to_string() }).to_string());
}

fn value_str(record: &KafkaRecord) -> String {
    String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).into_owned()
}

/// Recurses until the stack runs out (the depth keeps it from being a loop the optimiser could
/// turn into one).
fn recurse(depth: u64, pad: &mut [u8; 256]) -> u64 {
    pad[0] = pad[0].wrapping_add(1);
    if depth == u64::MAX {
        return depth;
    }
    recurse(depth + 1, &mut [pad[0]; 256]) + u64::from(pad[1])
}

fn call(path: &str) -> Result<producer_api::Response, producer_api::CallError> {
    producer_api::call(&Request { method: Method::Get, path: path.to_string(), headers: vec![], body: vec![] })
}

/// Publishes every field of the record, bytes as arrays of numbers, as a `described` event.
fn describe(record: &KafkaRecord) {
    publish_event(
        "described",
        &serde_json::json!({
            "topic": record.topic, "partition": record.partition, "offset": record.offset,
            "timestamp_ms": record.timestamp_ms, "key": record.key, "value": record.value,
            "headers": record.headers.iter().map(|h| (h.key.clone(), h.value.clone())).collect::<Vec<_>>(),
            "attempt": record.attempt,
        })
        .to_string(),
    );
}

impl handler_sdk::Guest for Hostile {
    fn handle(record: &KafkaRecord) -> Result<(), HandlerError> {
        let full_key = String::from_utf8_lossy(record.key.as_deref().unwrap_or_default()).into_owned();
        // The misdeed is the key up to a `/`; what follows only tells keys apart (ordering tests
        // run one misdeed under many keys).
        let key = full_key.split_once('/').map_or(full_key.as_str(), |(misdeed, _)| misdeed).to_string();
        match key.as_str() {
            "ok" => Ok(()),
            // A record with no key or an empty one is described too, as is any key that starts
            // with `describe` (a key is how the other misdeeds are named).
            k if record.key.as_ref().is_none_or(Vec::is_empty) || k.starts_with("describe") => {
                describe(record);
                Ok(())
            }
            "echo" => {
                publish_event(
                    "record",
                    &serde_json::json!({
                        "topic": record.topic, "partition": record.partition, "offset": record.offset,
                        "attempt": record.attempt, "value": value_str(record),
                        "headers": record.headers.iter().map(|h| h.key.clone()).collect::<Vec<_>>(),
                        "tombstone": record.value.is_none(),
                    })
                    .to_string(),
                );
                Ok(())
            }
            "sleep" => {
                // Sleeps the value's milliseconds (a slow handler), then echoes like "echo".
                let ms: u64 = value_str(record).parse().unwrap_or(10);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                publish_event(
                    "record",
                    &serde_json::json!({
                        "topic": record.topic, "partition": record.partition, "offset": record.offset,
                        "attempt": record.attempt, "value": value_str(record),
                    })
                    .to_string(),
                );
                Ok(())
            }
            // Waits in WASI, where no epoch interrupt reaches it, for the value's milliseconds
            // (forever without a number): on a clock pollable's `block`, or in `poll`.
            "block" | "poll" => {
                let ns = value_str(record).parse::<u64>().map_or(u64::MAX, |ms| ms.saturating_mul(1_000_000));
                let timer = wasip2::clocks::monotonic_clock::subscribe_duration(ns);
                if key == "block" {
                    timer.block();
                } else {
                    wasip2::io::poll::poll(&[&timer]);
                }
                Ok(())
            }
            // One import call whose arguments are as large as the value says: a call with that
            // many (empty) headers, one log line or one event payload of that many bytes. The
            // result of the call, if any, becomes an event.
            "header-flood" | "log-line" | "big-event" => {
                let n: usize = value_str(record).parse().unwrap_or(0);
                match key.as_str() {
                    "header-flood" => {
                        let result = producer_api::call(&Request {
                            method: Method::Get,
                            path: "/producer-svc/ping-what".into(),
                            headers: vec![(String::new(), String::new()); n],
                            body: vec![],
                        });
                        publish_event(
                            "call",
                            &serde_json::json!({ "error": result.err().map(|e| format!("{e:?}")) }).to_string(),
                        );
                    }
                    "log-line" => log(Level::Info, &"x".repeat(n)),
                    _ => publish_event("big", &"x".repeat(n)),
                }
                Ok(())
            }
            // Keeps the value's number of WASI handles (timers) alive at once.
            "handle-flood" => {
                let n: usize = value_str(record).parse().unwrap_or(0);
                let kept: Vec<_> =
                    (0..n).map(|_| wasip2::clocks::monotonic_clock::subscribe_duration(1_000_000_000)).collect();
                publish_event("kept", &kept.len().to_string());
                Ok(())
            }
            // Asks the host for the value's number of random bytes in one call.
            "random" => {
                let n: u64 = value_str(record).parse().unwrap_or(0);
                let bytes = wasip2::random::random::get_random_bytes(n);
                publish_event("random", &bytes.len().to_string());
                Ok(())
            }
            // An outgoing request through wasi:http (to the value's authority), as a default
            // ComponentizeJS build could make: the host must refuse it.
            "http" => {
                use wasip2::http::{outgoing_handler, types};
                let request = types::OutgoingRequest::new(types::Fields::new());
                let _ = request.set_scheme(Some(&types::Scheme::Http));
                let _ = request.set_authority(Some(&value_str(record)));
                let _ = request.set_path_with_query(Some("/"));
                let answer = match outgoing_handler::handle(request, None) {
                    Err(code) => format!("refused at once: {code:?}"),
                    Ok(future) => {
                        future.subscribe().block();
                        match future.get() {
                            Some(Ok(Ok(response))) => format!("answered {}", response.status()),
                            other => format!("refused: {other:?}"),
                        }
                    }
                };
                probe(answer.starts_with("answered"), answer);
                Ok(())
            }
            // Writes to standard error (a first line, then the value's number of bytes), then
            // panics, whose message goes to standard error too.
            "stderr" => {
                eprintln!("Traceback (most recent call last): the handler failed on purpose");
                eprint!("{}", "x".repeat(value_str(record).parse().unwrap_or(0)));
                panic!("after writing to stderr");
            }
            // Text meant to pass for the host's own log lines: logged, then given as a reason.
            "forge" => {
                log(Level::Warn, &value_str(record));
                Err(HandlerError::Reject(value_str(record)))
            }
            "retry" => Err(HandlerError::Retry(value_str(record))),
            "reject" => Err(HandlerError::Reject(value_str(record))),
            "loop" => loop {
                std::hint::black_box(0u8);
            },
            "recurse" => {
                let n = recurse(0, &mut [0; 256]);
                Err(HandlerError::Reject(format!("recursion returned {n}")))
            }
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1024 * 1024]);
                    std::hint::black_box(&hoard);
                }
            }
            // Keeps the value's number of bytes (written, so they are really taken) for as long
            // as the instance lives: a guest that leaks with every record.
            "leak" => {
                static KEPT: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
                let n: usize = value_str(record).parse().unwrap_or(0);
                KEPT.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(vec![1u8; n]);
                Ok(())
            }
            // Asks for the value's number of bytes and, refused, rejects the record, as a runtime
            // that survives a refused `memory.grow` may (SpiderMonkey throws). Granted, it uses
            // them and returns ok.
            "oom-reject" => {
                let n: usize = value_str(record).parse().unwrap_or(0);
                let mut bytes: Vec<u8> = Vec::new();
                match bytes.try_reserve_exact(n) {
                    Ok(()) => {
                        bytes.resize(n, 1);
                        std::hint::black_box(&bytes);
                        Ok(())
                    }
                    Err(e) => Err(HandlerError::Reject(format!("cannot take {n} bytes: {e}"))),
                }
            }
            "panic" => panic!("the hostile handler panicked on purpose"),
            "trap" => core::arch::wasm32::unreachable(),
            "fs" => {
                let mut found = Vec::new();
                for path in ["/etc/passwd", "/", ".", "/proc/self/environ"] {
                    if let Ok(data) = std::fs::read(path) {
                        found.push(format!("read {path}: {} bytes", data.len()));
                    }
                    if let Ok(dir) = std::fs::read_dir(path) {
                        found.push(format!("listed {path}: {} entries", dir.count()));
                    }
                }
                let created = std::fs::write("escape.txt", b"x").is_ok();
                probe(!found.is_empty() || created, format!("{found:?} created={created}"));
                Ok(())
            }
            "env" => {
                let vars: Vec<_> = std::env::vars().map(|(k, _)| k).collect();
                let args: Vec<_> = std::env::args().collect();
                // wasi-libc reports "/" as the working directory when nothing is preopened; it
                // names no directory the guest can open.
                let cwd = std::env::current_dir().ok();
                probe(!vars.is_empty() || !args.is_empty(), format!("vars={vars:?} args={args:?} cwd={cwd:?}"));
                Ok(())
            }
            "net" => {
                let target = value_str(record);
                let tcp = std::net::TcpStream::connect(&target);
                let udp = std::net::UdpSocket::bind("0.0.0.0:0");
                let dns = std::net::ToSocketAddrs::to_socket_addrs(&("localhost", 80));
                probe(
                    tcp.is_ok() || udp.is_ok() || dns.is_ok(),
                    format!("tcp={:?} udp={:?} dns={:?}", tcp.err(), udp.err(), dns.err()),
                );
                Ok(())
            }
            "stdin" => {
                let mut buf = Vec::new();
                let read = std::io::stdin().read_to_end(&mut buf);
                probe(!buf.is_empty(), format!("read={read:?} bytes={}", buf.len()));
                Ok(())
            }
            "log-flood" => {
                for i in 0..100_000 {
                    log(Level::Info, &format!("flood line {i} {}", "x".repeat(10_000)));
                }
                Ok(())
            }
            "event-flood" => {
                for i in 0..100_000 {
                    publish_event("flood", &i.to_string());
                }
                publish_event("flood", &"x".repeat(10 * 1024 * 1024));
                Ok(())
            }
            "call-flood" => {
                let mut denied = 0;
                for _ in 0..1000 {
                    if let Err(producer_api::CallError::Denied(_)) = call("/producer-svc/ping-what") {
                        denied += 1;
                    }
                }
                publish_event("calls", &denied.to_string());
                Ok(())
            }
            "call" => {
                // The value is a JSON array of paths; each result becomes an event.
                let paths: Vec<String> =
                    serde_json::from_str(&value_str(record)).map_err(|e| HandlerError::Reject(e.to_string()))?;
                for path in paths {
                    let result = match call(&path) {
                        Ok(r) => {
                            serde_json::json!({"path": path, "status": r.status, "body": String::from_utf8_lossy(&r.body)})
                        }
                        Err(e) => serde_json::json!({"path": path, "error": format!("{e:?}")}),
                    };
                    publish_event("call", &result.to_string());
                }
                Ok(())
            }
            "big-body" => {
                // POSTs a body of the value's number of bytes; the result becomes an event.
                let size: usize = value_str(record).parse().unwrap_or(0);
                let result = producer_api::call(&Request {
                    method: Method::Post,
                    path: "/producer-svc/tokens".into(),
                    headers: vec![],
                    body: vec![b'x'; size],
                });
                let result = match result {
                    Ok(r) => serde_json::json!({"status": r.status}),
                    Err(e) => serde_json::json!({"error": format!("{e:?}")}),
                };
                publish_event("call", &result.to_string());
                Ok(())
            }
            "call-headers" => {
                // The value is a JSON array of [name, value] pairs to send on one call.
                let headers: Vec<(String, String)> =
                    serde_json::from_str(&value_str(record)).map_err(|e| HandlerError::Reject(e.to_string()))?;
                let result = producer_api::call(&Request {
                    method: Method::Post,
                    path: "/echo".into(),
                    headers,
                    body: b"{}".to_vec(),
                });
                let result = match result {
                    Ok(r) => serde_json::json!({"status": r.status, "body": String::from_utf8_lossy(&r.body)}),
                    Err(e) => serde_json::json!({"error": format!("{e:?}")}),
                };
                publish_event("call", &result.to_string());
                Ok(())
            }
            other => Err(HandlerError::Reject(format!("unknown misdeed {other:?}"))),
        }
    }
}

handler_sdk::export!(Hostile);
