//! The operator credential. `OPERATOR_TOKEN` is a shared secret that guards the operator routes of
//! both services (metrics, handler status, the event stream): a request to a route wrapped by
//! [`require_operator`] (or [`protect`]) must carry `Authorization: Bearer <OPERATOR_TOKEN>`, or it
//! gets a 401 with a JSON body and `WWW-Authenticate: Bearer`. The token is at least 32 bytes of
//! visible ASCII. Only its SHA-256 digest is kept, so nothing can print it, and a presented token
//! is compared digest to digest in constant time. In production the token is required; in
//! development it may be left unset, and then the wrapped routes are open.

use crate::env::{Env, Problems};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// The variable both services read the token from.
pub const VARIABLE: &str = "OPERATOR_TOKEN";
/// Shortest token accepted.
pub const MIN_TOKEN_BYTES: usize = 32;

/// A validated operator token. Holds only the token's SHA-256 digest; `Debug` prints neither.
#[derive(Clone)]
pub struct OperatorToken {
    digest: [u8; 32],
}

/// Why a value is not a usable operator token. The messages never quote the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Fewer than [`MIN_TOKEN_BYTES`] bytes.
    #[error("must be at least {MIN_TOKEN_BYTES} bytes (it has {0})")]
    TooShort(usize),
    /// A space, a control character or a non-ASCII character.
    #[error("must be visible ASCII only (no spaces, control or non-ASCII characters)")]
    NotVisibleAscii,
}

impl OperatorToken {
    /// Checks `secret` and keeps its digest.
    pub fn new(secret: &str) -> Result<Self, TokenError> {
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::NotVisibleAscii);
        }
        if secret.len() < MIN_TOKEN_BYTES {
            return Err(TokenError::TooShort(secret.len()));
        }
        Ok(Self { digest: Sha256::digest(secret.as_bytes()).into() })
    }

    /// Whether `presented` is the token. Compares the two digests with an XOR fold over every
    /// byte (no early exit), so the time taken does not depend on where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let difference = digest.iter().zip(self.digest.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(difference) == 0
    }
}

impl std::fmt::Debug for OperatorToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OperatorToken(<redacted>)")
    }
}

impl std::str::FromStr for OperatorToken {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, TokenError> {
        Self::new(s)
    }
}

/// Reads `OPERATOR_TOKEN`. When `production`, a missing token is a problem; otherwise it may be
/// unset (`None`: the operator routes are open). A bad value is always a problem, named without
/// its value.
pub fn operator_token(env: &Env, production: bool, problems: &mut Problems) -> Option<OperatorToken> {
    match env.get(VARIABLE) {
        Some(raw) => OperatorToken::new(raw).map_err(|e| problems.push(format!("{VARIABLE} {e}"))).ok(),
        None if production => {
            problems.push(format!(
                "{VARIABLE} is required in production (set APP_ENV=development to leave operator routes open)"
            ));
            None
        }
        None => None,
    }
}

/// Why an operator route refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A bearer token that is not the operator token.
    Invalid,
}

/// Whether `headers` may use an operator route guarded by `token` (`None`: open).
pub fn check(token: Option<&OperatorToken>, headers: &HeaderMap) -> Result<(), Refusal> {
    let Some(token) = token else { return Ok(()) };
    let presented = headers.get(header::AUTHORIZATION).and_then(|v| bearer(v.as_bytes())).ok_or(Refusal::Missing)?;
    if token.matches(presented) { Ok(()) } else { Err(Refusal::Invalid) }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme in any case).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    let token = rest.trim_ascii();
    (scheme.eq_ignore_ascii_case(b"bearer") && !token.is_empty()).then_some(token)
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (message, challenge) = match self {
            Self::Missing => ("this route needs Authorization: Bearer <OPERATOR_TOKEN>", "Bearer"),
            Self::Invalid => ("the bearer token is not the operator token", r#"Bearer error="invalid_token""#),
        };
        let mut response =
            (StatusCode::UNAUTHORIZED, axum::Json(serde_json::json!({ "error": message }))).into_response();
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        response
    }
}

/// Middleware for `axum::middleware::from_fn_with_state(token, require_operator)`: passes a
/// request with the right bearer token (any request when `token` is `None`), answers 401 otherwise.
pub async fn require_operator(State(token): State<Option<OperatorToken>>, request: Request, next: Next) -> Response {
    match check(token.as_ref(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            let path = request.uri().path();
            match refusal {
                Refusal::Missing => tracing::debug!(path, "operator route refused: no bearer token"),
                Refusal::Invalid => tracing::warn!(path, "operator route refused: wrong bearer token"),
            }
            refusal.into_response()
        }
    }
}

/// `router` with every route it holds so far behind [`require_operator`] (a route it does not
/// hold still gets the router's own 404).
pub fn protect<S: Clone + Send + Sync + 'static>(
    router: axum::Router<S>,
    token: Option<OperatorToken>,
) -> axum::Router<S> {
    router.route_layer(axum::middleware::from_fn_with_state(token, require_operator))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    const SECRET: &str = "0123456789abcdefghijklmnopqrstuvwxyz!#$%";

    fn token() -> OperatorToken {
        OperatorToken::new(SECRET).expect("a valid token")
    }

    fn headers(authorization: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(authorization).expect("header"));
        h
    }

    #[test]
    fn a_token_is_at_least_32_bytes_of_visible_ascii() {
        assert_eq!(OperatorToken::new(&"x".repeat(31)).err(), Some(TokenError::TooShort(31)));
        assert!(OperatorToken::new(&"x".repeat(32)).is_ok());
        for bad in [format!("{} x", "y".repeat(32)), format!("{}\t", "y".repeat(32)), format!("{}é", "y".repeat(32))] {
            assert_eq!(OperatorToken::new(&bad).err(), Some(TokenError::NotVisibleAscii), "{bad:?}");
        }
    }

    #[test]
    fn debug_never_prints_the_token() {
        let printed = format!("{:?} {:?}", token(), Some(token()));
        assert!(!printed.contains("0123456789"), "{printed}");
        assert!(printed.contains("redacted"));
    }

    #[test]
    fn production_requires_the_token_and_development_may_leave_it_out() {
        let mut p = Problems::default();
        assert!(operator_token(&Env::default(), true, &mut p).is_none());
        let err = p.finish(()).expect_err("required");
        assert!(err.to_string().contains("OPERATOR_TOKEN is required in production"), "{err}");

        let mut p = Problems::default();
        assert!(operator_token(&Env::default(), false, &mut p).is_none());
        assert!(p.finish(()).is_ok(), "optional in development");

        let mut p = Problems::default();
        let env = Env::from_pairs([(VARIABLE, SECRET)]);
        assert!(operator_token(&env, true, &mut p).expect("valid").matches(SECRET.as_bytes()));
        assert!(p.finish(()).is_ok());
    }

    #[test]
    fn a_bad_token_is_reported_in_any_environment_without_its_value() {
        for production in [true, false] {
            let mut p = Problems::default();
            assert!(operator_token(&Env::from_pairs([(VARIABLE, "hunter2")]), production, &mut p).is_none());
            let text = p.finish(()).expect_err("too short").to_string();
            assert!(text.contains("OPERATOR_TOKEN must be at least 32 bytes (it has 7)"), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[test]
    fn only_the_operator_token_as_a_bearer_token_passes() {
        let t = token();
        assert_eq!(check(Some(&t), &HeaderMap::new()), Err(Refusal::Missing));
        assert_eq!(check(Some(&t), &headers(&format!("Basic {SECRET}"))), Err(Refusal::Missing));
        assert_eq!(check(Some(&t), &headers("Bearer")), Err(Refusal::Missing));
        assert_eq!(check(Some(&t), &headers("Bearer ")), Err(Refusal::Missing));
        assert_eq!(
            check(Some(&t), &headers(&format!("Bearer {}", &SECRET[..SECRET.len() - 1]))),
            Err(Refusal::Invalid)
        );
        assert_eq!(check(Some(&t), &headers(&format!("Bearer {SECRET}x"))), Err(Refusal::Invalid));
        assert_eq!(check(Some(&t), &headers(&format!("Bearer {SECRET}"))), Ok(()));
        assert_eq!(check(Some(&t), &headers(&format!("bearer  {SECRET}"))), Ok(()), "the scheme in any case");
        assert_eq!(check(None, &HeaderMap::new()), Ok(()), "no token configured: open");
    }

    async fn call(app: &axum::Router, path: &str, authorization: Option<&str>) -> (StatusCode, HeaderMap, String) {
        let mut request = Request::builder().uri(path);
        if let Some(a) = authorization {
            request = request.header(header::AUTHORIZATION, a);
        }
        let response = app.clone().oneshot(request.body(Body::empty()).expect("request")).await.expect("response");
        let (status, headers) = (response.status(), response.headers().clone());
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.expect("body");
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    fn app(token: Option<OperatorToken>) -> axum::Router {
        let operator = protect(axum::Router::new().route("/metrics", get(|| async { "secret figures" })), token);
        axum::Router::new().route("/ping", get(|| async { "pong" })).merge(operator)
    }

    #[tokio::test]
    async fn a_wrapped_route_answers_401_json_with_a_bearer_challenge_unless_the_token_is_right() {
        let app = app(Some(token()));
        for (authorization, challenge) in [(None, "Bearer"), (Some("Bearer wrong"), r#"Bearer error="invalid_token""#)]
        {
            let (status, headers, body) = call(&app, "/metrics", authorization).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{authorization:?}");
            assert_eq!(headers[header::WWW_AUTHENTICATE], challenge);
            assert_eq!(headers[header::CONTENT_TYPE], "application/json");
            let json: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
            assert!(json["error"].as_str().is_some_and(|e| !e.is_empty()), "{json}");
            assert!(!body.contains("secret figures"));
        }
        let (status, _, body) = call(&app, "/metrics", Some(&format!("Bearer {SECRET}"))).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "secret figures"));
        let (status, _, _) = call(&app, "/ping", None).await;
        assert_eq!(status, StatusCode::OK, "routes outside the wrap stay open");
        let (status, _, _) = call(&app, "/elsewhere", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "an unknown route is still a 404, not a 401");
    }

    #[tokio::test]
    async fn without_a_token_the_wrapped_routes_are_open() {
        let (status, _, body) = call(&app(None), "/metrics", None).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "secret figures"));
    }
}
