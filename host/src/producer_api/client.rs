//! The HTTP client behind the `producer-api` import: one base URL, no redirects, no proxies,
//! bounded time and bounded response size.

use super::validate::{check_headers, check_path};
use std::sync::Arc;
use std::time::Duration;

/// The HTTP methods a handler may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// POST
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
}

impl Method {
    /// The method's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// A request as the handler gave it.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Path (and query) on the producer service.
    pub path: String,
    /// Handler-chosen headers.
    pub headers: Vec<(String, String)>,
    /// Body; empty for none.
    pub body: Vec<u8>,
}

/// The producer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Headers whose values are UTF-8.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// Why a call produced no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Could not connect, or no producer URL is configured.
    #[error("producer unreachable: {0}")]
    Unreachable(String),
    /// No answer within the time limit.
    #[error("producer call timed out")]
    Timeout,
    /// The host refused to send the request.
    #[error("producer call denied: {0}")]
    Denied(String),
    /// The response body was larger than the limit (given in bytes).
    #[error("producer response larger than {0} bytes")]
    TooLarge(u64),
}

/// Size and time bounds for one call.
#[derive(Debug, Clone, Copy)]
pub struct CallBounds {
    /// Whole-call time limit (connect, send, read the body).
    pub timeout: Duration,
    /// Largest request body.
    pub max_request_bytes: u64,
    /// Largest response body.
    pub max_response_bytes: u64,
}

/// A `PRODUCER_URL` that cannot serve as a base URL.
#[derive(Debug, thiserror::Error)]
#[error("invalid producer URL {url:?}: {reason}")]
pub struct InvalidProducerUrl {
    url: String,
    reason: String,
}

/// Client for the producer service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ProducerClient {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    /// Scheme, host, port and path prefix without a trailing slash.
    base: String,
    http: reqwest::Client,
}

impl ProducerClient {
    /// A client for `base_url` (`http://` or `https://`, no query, fragment or credentials).
    pub fn new(base_url: &str) -> Result<Self, InvalidProducerUrl> {
        let invalid = |reason: &str| InvalidProducerUrl { url: base_url.to_string(), reason: reason.to_string() };
        let url = reqwest::Url::parse(base_url).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("scheme must be http or https"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("a host is required"));
        }
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
            return Err(invalid("query, fragment and credentials are not allowed"));
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| invalid(&e.to_string()))?;
        let base = url.as_str().trim_end_matches('/').to_string();
        Ok(Self { inner: Some(Arc::new(Inner { base, http })) })
    }

    /// A client with no producer: every call fails as unreachable.
    pub fn unconfigured() -> Self {
        Self { inner: None }
    }

    /// The base URL, if configured.
    pub fn base_url(&self) -> Option<&str> {
        self.inner.as_deref().map(|i| i.base.as_str())
    }

    /// Sends one request. `idempotency_key`, when given, is sent as `Idempotency-Key`.
    pub async fn call(
        &self,
        request: &Request,
        idempotency_key: Option<&str>,
        bounds: CallBounds,
    ) -> Result<Response, CallError> {
        let path = check_path(&request.path).map_err(CallError::Denied)?;
        check_headers(&request.headers).map_err(CallError::Denied)?;
        if request.body.len() as u64 > bounds.max_request_bytes {
            return Err(CallError::Denied(format!(
                "request body of {} bytes exceeds the limit of {} bytes",
                request.body.len(),
                bounds.max_request_bytes
            )));
        }
        let Some(inner) = &self.inner else {
            return Err(CallError::Unreachable("no producer URL is configured".into()));
        };
        let url = format!("{}{}", inner.base, path);
        let method = reqwest::Method::from_bytes(request.method.as_str().as_bytes())
            .map_err(|e| CallError::Denied(e.to_string()))?;
        let mut builder = inner.http.request(method, &url);
        for (k, v) in &request.headers {
            builder = builder.header(k, v);
        }
        if let Some(key) = idempotency_key {
            builder = builder.header("idempotency-key", key);
        }
        if !request.body.is_empty() {
            builder = builder.body(request.body.clone());
        }
        let exchange = async {
            let mut response = builder.send().await.map_err(classify)?;
            if let Some(len) = response.content_length()
                && len > bounds.max_response_bytes
            {
                return Err(CallError::TooLarge(bounds.max_response_bytes));
            }
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
                .collect();
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(classify)? {
                if (body.len() + chunk.len()) as u64 > bounds.max_response_bytes {
                    return Err(CallError::TooLarge(bounds.max_response_bytes));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Response { status, headers, body })
        };
        tokio::time::timeout(bounds.timeout, exchange).await.map_err(|_| CallError::Timeout)?
    }
}

fn classify(e: reqwest::Error) -> CallError {
    if e.is_timeout() {
        CallError::Timeout
    } else if e.is_builder() {
        CallError::Denied(e.to_string())
    } else {
        // Include the source chain: reqwest's top-level message alone ("error sending request")
        // does not say what went wrong.
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        CallError::Unreachable(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_checked() {
        assert!(ProducerClient::new("http://127.0.0.1:9001").is_ok());
        assert!(ProducerClient::new("http://producer.test.app.local:9001/").is_ok());
        for bad in ["ftp://x", "not a url", "http://user:pw@x", "http://x/?q=1", "file:///etc/passwd"] {
            assert!(ProducerClient::new(bad).is_err(), "{bad}");
        }
        assert_eq!(ProducerClient::new("http://x:1/prefix/").expect("valid").base_url(), Some("http://x:1/prefix"));
    }
}
