//! LiveKit access tokens for the server API: a JWT signed HS256 with the API secret.
//!
//! What LiveKit checks (its server's auth middleware, and `livekit.api.TokenVerifier` in the
//! Python `livekit-api` package, which the tests' stand-in runs): the signature with the
//! secret, `iss` equal to the API key, `exp` present and not passed, `nbf` not in the future
//! (both with one minute of leeway), and, for `RoomService.DeleteRoom`, the `video` grant
//! `roomCreate: true`. The token carries nothing else: no identity (`sub`), no room.
//!
//! Each request gets a fresh token that lives [`TOKEN_TTL`], not LiveKit's SDK default of six
//! hours: a token can delete any room, so one that leaks (LiveKit echoes a rejected token in
//! its 401 body, which [`super`] strips before logging) is worth little.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use ring::hmac;

/// How long a token is valid after it is made.
pub(crate) const TOKEN_TTL: Duration = Duration::from_secs(5 * 60);

/// The base64url of `{"alg":"HS256","typ":"JWT"}`, the one header these tokens have.
const HEADER: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// Signs tokens with one API key and secret. Holds the secret only as ring's HMAC key, and
/// its `Debug` shows the API key alone.
pub(crate) struct Signer {
    api_key: String,
    key: hmac::Key,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("api_key", &self.api_key)
            .field("api_secret", &"<redacted>")
            .finish()
    }
}

impl Signer {
    pub(crate) fn new(api_key: &str, api_secret: &[u8]) -> Self {
        Signer {
            api_key: api_key.to_owned(),
            key: hmac::Key::new(hmac::HMAC_SHA256, api_secret),
        }
    }

    /// A token for `RoomService` calls that need `roomCreate` (`CreateRoom`, `DeleteRoom`),
    /// valid from `now` for `ttl`.
    pub(crate) fn room_create_token(&self, now: SystemTime, ttl: Duration) -> String {
        let nbf = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let exp = nbf.saturating_add(ttl.as_secs());
        let claims = serde_json::json!({
            "iss": self.api_key,
            "nbf": nbf,
            "exp": exp,
            "video": { "roomCreate": true },
        });
        let mut token = String::with_capacity(256);
        token.push_str(HEADER);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(claims.to_string(), &mut token);
        let signature = hmac::sign(&self.key, token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
        token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn the_header_constant_is_the_hs256_jwt_header() {
        assert_eq!(
            decode(HEADER),
            serde_json::json!({"alg": "HS256", "typ": "JWT"})
        );
    }

    /// The token as any JWT library reads it: three parts, the claims LiveKit checks, and an
    /// HMAC-SHA256 over the first two parts with the secret.
    #[test]
    fn a_token_carries_the_key_the_times_and_the_grant_and_is_signed_with_the_secret() {
        let signer = Signer::new("APIkey\"1", b"a secret that is long enough, 32+");
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let token = signer.room_create_token(now, TOKEN_TTL);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            decode(parts[1]),
            serde_json::json!({
                "iss": "APIkey\"1",
                "nbf": 1_700_000_000u64,
                "exp": 1_700_000_300u64,
                "video": {"roomCreate": true},
            })
        );
        let signed = format!("{}.{}", parts[0], parts[1]);
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"a secret that is long enough, 32+");
        hmac::verify(&key, signed.as_bytes(), &signature).unwrap();
        let other = hmac::Key::new(hmac::HMAC_SHA256, b"another secret");
        assert!(hmac::verify(&other, signed.as_bytes(), &signature).is_err());
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let signer = Signer::new("APIkey", b"hunter2-hunter2");
        let shown = format!("{signer:?}");
        assert!(shown.contains("APIkey"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
