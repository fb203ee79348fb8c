//! Amazon MSK IAM authentication: SASL/OAUTHBEARER tokens that are SigV4-presigned
//! `kafka-cluster:Connect` URLs, as AWS's `aws-msk-iam-sasl-signer` libraries make them, signed
//! with the task's credentials (environment variables, or the ECS container credentials endpoint).
//!
//! Enable with `KAFKA_SECURITY_PROTOCOL=sasl_ssl` and `KAFKA_SASL_MECHANISM=AWS_MSK_IAM`; the region
//! comes from `AWS_REGION` (set by ECS). librdkafka asks for a new token before the old expires.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// How long a token is valid (the signers' default).
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(900);
/// The SHA-256 of an empty payload, as the MSK signers sign it.
const EMPTY_PAYLOAD_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const USER_AGENT: &str = concat!("kafka-wasm-msk-iam/", env!("CARGO_PKG_VERSION"));

/// AWS credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key (never printed).
    pub secret_access_key: String,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("access_key_id", &self.access_key_id).finish_non_exhaustive()
    }
}

/// Why no token could be made.
#[derive(Debug, thiserror::Error)]
pub enum IamError {
    /// No credentials in the environment or from the container endpoint.
    #[error("no AWS credentials: {0}")]
    NoCredentials(String),
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Percent-encodes as SigV4 requires (unreserved characters kept).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A SigV4 query-string presign of `GET https://{host}{path}?{query}`: returns the full query
/// string, signature included.
#[allow(clippy::too_many_arguments)]
pub fn presign(
    host: &str,
    path: &str,
    query: &[(&str, &str)],
    service: &str,
    region: &str,
    credentials: &Credentials,
    now: DateTime<Utc>,
    expires: Duration,
    payload_hash: &str,
) -> String {
    let date = now.format("%Y%m%d").to_string();
    let timestamp = now.format("%Y%m%dT%H%M%SZ").to_string();
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let mut params: Vec<(String, String)> = query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    params.push(("X-Amz-Algorithm".into(), "AWS4-HMAC-SHA256".into()));
    params.push(("X-Amz-Credential".into(), format!("{}/{scope}", credentials.access_key_id)));
    params.push(("X-Amz-Date".into(), timestamp.clone()));
    params.push(("X-Amz-Expires".into(), expires.as_secs().to_string()));
    if let Some(token) = &credentials.session_token {
        params.push(("X-Amz-Security-Token".into(), token.clone()));
    }
    params.push(("X-Amz-SignedHeaders".into(), "host".into()));
    let mut encoded: Vec<(String, String)> = params.iter().map(|(k, v)| (encode(k), encode(v))).collect();
    encoded.sort();
    let canonical_query = encoded.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
    let canonical_request = format!("GET\n{path}\n{canonical_query}\nhost:{host}\n\nhost\n{payload_hash}");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{timestamp}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let k_date = hmac(format!("AWS4{}", credentials.secret_access_key).as_bytes(), &date);
    let k_region = hmac(&k_date, region);
    let k_service = hmac(&k_region, service);
    let k_signing = hmac(&k_service, "aws4_request");
    let signature = hex::encode(hmac(&k_signing, &string_to_sign));
    format!("{canonical_query}&X-Amz-Signature={signature}")
}

/// An MSK IAM token for `region` signed at `now`, and when it expires (ms since the epoch).
pub fn token(credentials: &Credentials, region: &str, now: DateTime<Utc>) -> (String, i64) {
    let host = format!("kafka.{region}.amazonaws.com");
    let query = presign(
        &host,
        "/",
        &[("Action", "kafka-cluster:Connect")],
        "kafka-cluster",
        region,
        credentials,
        now,
        TOKEN_LIFETIME,
        EMPTY_PAYLOAD_SHA256,
    );
    let url = format!("https://{host}/?{query}&User-Agent={}", encode(USER_AGENT));
    let expires_ms = now.timestamp_millis() + TOKEN_LIFETIME.as_millis() as i64;
    (URL_SAFE_NO_PAD.encode(url), expires_ms)
}

/// Credentials from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, else from
/// the ECS container credentials endpoint (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` or
/// `AWS_CONTAINER_CREDENTIALS_FULL_URI` with `AWS_CONTAINER_AUTHORIZATION_TOKEN`).
pub fn credentials() -> Result<Credentials, IamError> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let (Some(access_key_id), Some(secret_access_key)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        return Ok(Credentials { access_key_id, secret_access_key, session_token: var("AWS_SESSION_TOKEN") });
    }
    let url = match (var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"), var("AWS_CONTAINER_CREDENTIALS_FULL_URI")) {
        (Some(relative), _) => format!("http://169.254.170.2{relative}"),
        (None, Some(full)) => full,
        (None, None) => {
            return Err(IamError::NoCredentials(
                "neither AWS_ACCESS_KEY_ID nor a container credentials endpoint is set".into(),
            ));
        }
    };
    let mut request = ureq::get(&url).timeout(Duration::from_secs(5));
    if let Some(token) = var("AWS_CONTAINER_AUTHORIZATION_TOKEN") {
        request = request.set("Authorization", &token);
    }
    let body: serde_json::Value = request
        .call()
        .map_err(|e| IamError::NoCredentials(format!("{url}: {e}")))?
        .into_json()
        .map_err(|e| IamError::NoCredentials(format!("{url}: {e}")))?;
    let field = |name: &str| body[name].as_str().map(str::to_string);
    match (field("AccessKeyId"), field("SecretAccessKey")) {
        (Some(access_key_id), Some(secret_access_key)) => {
            Ok(Credentials { access_key_id, secret_access_key, session_token: field("Token") })
        }
        _ => Err(IamError::NoCredentials(format!("{url} answered without AccessKeyId/SecretAccessKey"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn example_credentials() -> Credentials {
        Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }
    }

    #[test]
    fn presign_matches_the_aws_documentation_example() {
        // "Authenticating Requests: Using Query Parameters (AWS Signature Version 4)", the
        // presigned GET of examplebucket/test.txt.
        let now = Utc.with_ymd_and_hms(2013, 5, 24, 0, 0, 0).single().expect("date");
        let query = presign(
            "examplebucket.s3.amazonaws.com",
            "/test.txt",
            &[],
            "s3",
            "us-east-1",
            &example_credentials(),
            now,
            Duration::from_secs(86_400),
            "UNSIGNED-PAYLOAD",
        );
        assert!(
            query.ends_with("X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"),
            "{query}"
        );
        assert!(query.starts_with("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"));
    }

    #[test]
    fn a_token_is_a_presigned_connect_url_in_base64url() {
        let now = Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).single().expect("date");
        let credentials = Credentials { session_token: Some("session/token+=".into()), ..example_credentials() };
        let (token, expires_ms) = token(&credentials, "eu-west-1", now);
        assert_eq!(expires_ms, now.timestamp_millis() + 900_000);
        let url = String::from_utf8(URL_SAFE_NO_PAD.decode(&token).expect("base64url")).expect("utf8");
        assert!(
            url.starts_with(
                "https://kafka.eu-west-1.amazonaws.com/?Action=kafka-cluster%3AConnect&X-Amz-Algorithm=AWS4-HMAC-SHA256"
            ),
            "{url}"
        );
        for part in [
            "X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20261126%2Feu-west-1%2Fkafka-cluster%2Faws4_request",
            "X-Amz-Date=20261126T120000Z",
            "X-Amz-Expires=900",
            "X-Amz-Security-Token=session%2Ftoken%2B%3D",
            "X-Amz-SignedHeaders=host",
            "&User-Agent=kafka-wasm-msk-iam",
        ] {
            assert!(url.contains(part), "{part} missing from {url}");
        }
        assert!(!token.contains('=') && !token.contains('+') && !token.contains('/'), "unpadded base64url");
    }

    #[test]
    fn credentials_are_never_printed() {
        assert!(!format!("{:?}", example_credentials()).contains("wJalr"));
    }
}
