//! The contract's imports whose arguments a guest sizes (`producer-api.call`, `runtime.log`,
//! `runtime.publish-event`), defined on the linker by hand rather than through `bindgen!`.
//!
//! Generated bindings lift every argument into host memory before the host function runs: a
//! guest could pass a call with millions of one-byte headers (tens of MiB of its own memory, under
//! its cap) and make the host allocate many times that. Here the arguments stay in guest memory
//! ([`WasmStr`], [`WasmList`]) until the host has checked each length against the handler's
//! limits (the per-record caps first, then the header count and size, the path and body limits,
//! the log line and event sizes), so a hostile call fails before a byte of it is copied, and
//! what is copied is bounded by those limits. Strings are read in place when the guest encodes
//! them as UTF-8 (Rust, Python, JavaScript builds do); another encoding is transcoded once.

use super::state::{HostState, valid_event_kind};
use crate::bindings::host_runtime::Level;
use crate::bindings::producer_api::{CallError as WitCallError, Method as WitMethod, Response as WitResponse};
use crate::producer_api::validate::{MAX_HEADER_BYTES, MAX_HEADERS, MAX_PATH_LEN};
use crate::producer_api::{CallError, Method, Request};
use crate::record::truncated;
use wasmtime::StoreContextMut;
use wasmtime::component::{ComponentType, Lift, Linker, WasmList, WasmStr};

/// The contract versions whose interface names the imports are defined under. The linker matches
/// a guest's import of any semver-compatible version (every 0.1.x, every 0.2.x) to these; the
/// types are the same in both.
const CONTRACT_VERSIONS: [&str; 2] = ["0.2.0", "0.1.3"];

/// `producer-api.request`, left in guest memory.
#[derive(ComponentType, Lift)]
#[component(record)]
struct GuestRequest {
    method: WitMethod,
    path: WasmStr,
    headers: WasmList<(WasmStr, WasmStr)>,
    body: WasmList<u8>,
}

impl GuestRequest {
    /// Copies the request out of guest memory within `max_body` bytes of body and the header and
    /// path limits; denied, with nothing copied past the first limit found, otherwise.
    fn read(&self, store: &mut StoreContextMut<'_, HostState>, max_body: u64) -> Result<Request, CallError> {
        let denied = |reason: String| Err(CallError::Denied(reason));
        if self.headers.len() > MAX_HEADERS {
            return denied(format!("more than {MAX_HEADERS} headers ({})", self.headers.len()));
        }
        if self.body.len() as u64 > max_body {
            return denied(format!("request body of {} bytes exceeds the limit of {max_body} bytes", self.body.len()));
        }
        let path = text(&self.path, &*store).map_err(CallError::Denied)?;
        if path.len() > MAX_PATH_LEN {
            return denied(format!("path is longer than {MAX_PATH_LEN} bytes"));
        }
        let path = path.into_owned();
        let mut headers = Vec::with_capacity(self.headers.len());
        let mut total = 0usize;
        for index in 0..self.headers.len() {
            let Some(Ok((name, value))) = self.headers.get(&mut *store, index) else {
                return denied("a header could not be read from guest memory".into());
            };
            let name = text(&name, &*store).map_err(CallError::Denied)?;
            total += name.len();
            let name = name.into_owned();
            let value = text(&value, &*store).map_err(CallError::Denied)?;
            total += value.len();
            if total > MAX_HEADER_BYTES {
                return denied(format!("headers exceed {MAX_HEADER_BYTES} bytes"));
            }
            headers.push((name, value.into_owned()));
        }
        Ok(Request { method: self.method.into(), path, headers, body: self.body.as_le_slice(&*store).to_vec() })
    }
}

/// A guest string, read in place (or transcoded once, for a guest that does not use UTF-8).
fn text<'a>(s: &WasmStr, store: &'a StoreContextMut<'_, HostState>) -> Result<std::borrow::Cow<'a, str>, String> {
    s.to_str(store).map_err(|e| format!("invalid string: {e:#}"))
}

impl From<WitMethod> for Method {
    fn from(m: WitMethod) -> Self {
        match m {
            WitMethod::Get => Method::Get,
            WitMethod::Post => Method::Post,
            WitMethod::Put => Method::Put,
            WitMethod::Patch => Method::Patch,
            WitMethod::Delete => Method::Delete,
        }
    }
}

impl From<CallError> for WitCallError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Unreachable(m) => WitCallError::Unreachable(m),
            CallError::Timeout => WitCallError::Timeout,
            CallError::Denied(m) => WitCallError::Denied(m),
            CallError::TooLarge(n) => WitCallError::TooLarge(n),
        }
    }
}

/// Defines `producer-api.call`, `runtime.log` and `runtime.publish-event` on `linker`, for every
/// contract version the host runs.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    for version in CONTRACT_VERSIONS {
        add_version_to_linker(linker, version)?;
    }
    // Components of the 0.1.1-0.1.3 batch worlds import `batch` too; the host runs them through
    // `handle` alone and never calls what would call these.
    let mut batch = linker.instance("kafka-wasm:handler/batch@0.1.3")?;
    batch.func_wrap("next-record", |_store, (): ()| -> wasmtime::Result<(bool,)> {
        wasmtime::bail!("batch.next-record is a 0.1.x batch import this host no longer serves")
    })?;
    batch.func_wrap("advance", |_store, (_index,): (u32,)| -> wasmtime::Result<(u32,)> {
        wasmtime::bail!("batch.advance is a 0.1.x batch import this host no longer serves")
    })?;
    Ok(())
}

/// Defines the imports under the interface names of contract `version`.
fn add_version_to_linker(linker: &mut Linker<HostState>, version: &str) -> wasmtime::Result<()> {
    let mut api = linker.instance(&format!("kafka-wasm:handler/producer-api@{version}"))?;
    api.func_wrap_async("call", |mut store, (request,): (GuestRequest,)| {
        Box::new(async move {
            let result = match store.data_mut().producer_call_allowed() {
                Err(denied) => Err(denied),
                Ok(()) => {
                    let max_body = store.data().limits().max_producer_request_bytes;
                    match request.read(&mut store, max_body) {
                        Ok(request) => store.data_mut().call_producer(request).await,
                        Err(denied) => Err(store.data_mut().refuse_call(denied)),
                    }
                }
            };
            Ok((result
                .map(|r| WitResponse { status: r.status, headers: r.headers, body: r.body })
                .map_err(WitCallError::from),))
        })
    })?;

    let mut runtime = linker.instance(&format!("kafka-wasm:handler/runtime@{version}"))?;
    runtime.func_wrap("log", |mut store, (level, message): (Level, WasmStr)| {
        let Some(max) = store.data_mut().log_line_allowed() else { return Ok(()) };
        let message = text(&message, &store).map(|m| truncated(&m, max).into_owned()).unwrap_or_else(|e| e);
        store.data_mut().write_log(level, message);
        Ok(())
    })?;
    runtime.func_wrap("publish-event", |mut store, (kind, payload): (WasmStr, WasmStr)| {
        let Some(max) = store.data_mut().event_allowed() else { return Ok(()) };
        let event = {
            match (text(&kind, &store), text(&payload, &store)) {
                (Ok(kind), Ok(payload)) if payload.len() <= max && valid_event_kind(&kind) => {
                    Some((kind.into_owned(), payload.into_owned()))
                }
                _ => None,
            }
        };
        store.data_mut().push_event(event);
        Ok(())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_are_short_and_printable() {
        assert!(valid_event_kind("user-created"));
        for bad in ["", "a\nb", &"k".repeat(129)] {
            assert!(!valid_event_kind(bad), "{bad:?}");
        }
    }
}
