//! Signed, stateless tokens: HS256 JSON Web Tokens keyed by `TOKEN_SECRET`, so any replica
//! verifies any replica's token.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::time::Duration;

type HmacSha256 = Hmac<Sha256>;

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// A freshly issued token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedToken {
    /// The user the token is for.
    pub user_id: String,
    /// The compact JWT.
    pub token: String,
    /// Issue time, RFC 3339 UTC.
    pub issued_at: String,
    /// Expiry time, RFC 3339 UTC.
    pub expires_at: String,
}

/// A verification verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Signed by us and not expired.
    Valid {
        /// The token's subject.
        user_id: String,
        /// Its expiry, RFC 3339 UTC.
        expires_at: String,
    },
    /// Anything else, with why.
    Invalid(&'static str),
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iat: i64,
    exp: i64,
    jti: String,
}

/// Issues and verifies tokens.
#[derive(Clone)]
pub struct TokenSigner {
    key: Vec<u8>,
    ttl: Duration,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

fn rfc3339(secs: i64) -> String {
    DateTime::<Utc>::from_timestamp(secs, 0).unwrap_or_default().to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl TokenSigner {
    /// A signer with `key` issuing tokens that live `ttl`.
    pub fn new(key: Vec<u8>, ttl: Duration) -> Self {
        Self { key, ttl }
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"))
    }

    /// Issues a token for `user_id` at `now`.
    pub fn issue(&self, user_id: &str, now: DateTime<Utc>) -> IssuedToken {
        let iat = now.timestamp();
        let exp = iat.saturating_add(i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX));
        let claims = Claims { sub: user_id.to_string(), iat, exp, jti: uuid::Uuid::now_v7().to_string() };
        let claims = serde_json::to_vec(&claims).unwrap_or_default();
        let signing_input = format!("{}.{}", URL_SAFE_NO_PAD.encode(HEADER), URL_SAFE_NO_PAD.encode(claims));
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        IssuedToken {
            user_id: user_id.to_string(),
            token: format!("{signing_input}.{signature}"),
            issued_at: rfc3339(iat),
            expires_at: rfc3339(exp),
        }
    }

    /// Verifies `token` at `now`.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Verdict {
        let mut parts = token.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Verdict::Invalid("malformed token");
        };
        let Ok(header_json) = URL_SAFE_NO_PAD.decode(header) else { return Verdict::Invalid("malformed token") };
        let Ok(header_value) = serde_json::from_slice::<serde_json::Value>(&header_json) else {
            return Verdict::Invalid("malformed token");
        };
        if header_value["alg"] != "HS256" {
            return Verdict::Invalid("unsupported algorithm");
        }
        let Ok(signature) = URL_SAFE_NO_PAD.decode(signature) else { return Verdict::Invalid("malformed token") };
        let mut mac = self.mac();
        mac.update(header.as_bytes());
        mac.update(b".");
        mac.update(claims.as_bytes());
        if mac.verify_slice(&signature).is_err() {
            return Verdict::Invalid("bad signature");
        }
        let Some(claims) = URL_SAFE_NO_PAD.decode(claims).ok().and_then(|c| serde_json::from_slice::<Claims>(&c).ok())
        else {
            return Verdict::Invalid("malformed token");
        };
        if claims.exp <= now.timestamp() {
            return Verdict::Invalid("expired");
        }
        Verdict::Valid { user_id: claims.sub, expires_at: rfc3339(claims.exp) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> TokenSigner {
        TokenSigner::new(b"0123456789abcdef0123456789abcdef".to_vec(), Duration::from_secs(60))
    }

    #[test]
    fn issued_tokens_verify_until_they_expire() {
        let now = Utc::now();
        let t = signer().issue("u1", now);
        assert_eq!(
            signer().verify(&t.token, now),
            Verdict::Valid { user_id: "u1".into(), expires_at: t.expires_at.clone() }
        );
        assert_eq!(signer().verify(&t.token, now + chrono::Duration::seconds(61)), Verdict::Invalid("expired"));
        assert!(t.issued_at.ends_with('Z') && t.expires_at.ends_with('Z'));
    }

    #[test]
    fn forged_tampered_and_malformed_tokens_are_invalid() {
        let now = Utc::now();
        let t = signer().issue("u1", now);
        let other = TokenSigner::new(b"another-secret-another-secret-xx".to_vec(), Duration::from_secs(60));
        assert_eq!(other.verify(&t.token, now), Verdict::Invalid("bad signature"));
        let mut parts: Vec<&str> = t.token.split('.').collect();
        let forged_claims = URL_SAFE_NO_PAD.encode(r#"{"sub":"admin","iat":0,"exp":99999999999,"jti":"x"}"#);
        parts[1] = &forged_claims;
        assert_eq!(signer().verify(&parts.join("."), now), Verdict::Invalid("bad signature"));
        let none_alg = format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#), forged_claims);
        assert_eq!(signer().verify(&none_alg, now), Verdict::Invalid("unsupported algorithm"));
        for bad in ["", "a.b", "a.b.c.d", "!!.!!.!!"] {
            assert_eq!(signer().verify(bad, now), Verdict::Invalid("malformed token"), "{bad}");
        }
    }
}
