//! Standard Webhooks v1 signatures, and the id each event is delivered under.
//!
//! The secret is `whsec_` followed by the base64 of the key. A delivery carries
//! `webhook-id`, `webhook-timestamp` (Unix seconds, the time of that attempt) and
//! `webhook-signature`: `v1,` and the base64 of HMAC-SHA256(key, `{id}.{timestamp}.{body}`).
//!
//! HMAC-SHA256 comes from ring, which is already in the build as rustls' crypto provider (and
//! signs nothing else here): no crate is added for it. base64 is the version tonic already
//! depends on.

use std::fmt;

use base64::{
    alphabet,
    engine::{general_purpose::STANDARD, DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
    Engine as _,
};
use ring::{digest, hmac};

use endcall_core::{domain::Time, report::Report};

const PREFIX: &str = "whsec_";

/// The key length the specification asks for, at least: shorter keys are refused, because a
/// receiver's verification is only as strong as the key.
pub(crate) const MIN_KEY_BYTES: usize = 24;

/// Standard base64, with or without its `=` padding (secrets are copied from dashboards and
/// documents; the padding is what gets lost).
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a secret was refused. The messages never quote the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error(
        "not a Standard Webhooks secret: it must start with whsec_ (whsec_ followed by base64)"
    )]
    NoPrefix,
    #[error("not a Standard Webhooks secret: what follows whsec_ is not base64")]
    NotBase64,
    #[error(
        "the key is {0} bytes; Standard Webhooks asks for {MIN_KEY_BYTES} to 64 \
         (e.g. whsec_ followed by the base64 of 32 random bytes)"
    )]
    TooShort(usize),
}

/// The signing key. Its `Debug` never shows it, so it cannot reach a log line.
#[derive(Clone)]
pub(crate) struct Secret(hmac::Key);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// Reads `whsec_<base64>` (surrounding whitespace, such as a file's last newline, ignored).
    pub(crate) fn parse(text: &str) -> Result<Secret, SecretError> {
        let encoded = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(SecretError::NoPrefix)?;
        if encoded.is_empty() {
            return Err(SecretError::NotBase64);
        }
        // The decoder's own error names the offending byte: it is not passed on.
        let key = LENIENT
            .decode(encoded)
            .map_err(|_| SecretError::NotBase64)?;
        if key.len() < MIN_KEY_BYTES {
            return Err(SecretError::TooShort(key.len()));
        }
        Ok(Secret(hmac::Key::new(hmac::HMAC_SHA256, &key)))
    }

    /// The `webhook-signature` header of one attempt: `v1,<base64>`.
    pub(crate) fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut context = hmac::Context::with_key(&self.0);
        context.update(id.as_bytes());
        context.update(b".");
        context.update(itoa::Buffer::new().format(timestamp).as_bytes());
        context.update(b".");
        context.update(body);
        let tag = context.sign();
        let mut header = String::with_capacity(3 + 44);
        header.push_str("v1,");
        STANDARD.encode_string(tag.as_ref(), &mut header);
        header
    }
}

/// The `webhook-id` of a session's `call.ended` event: the same for every attempt and after
/// any restart, so a receiver can deduplicate retries by it. Derived from what names the
/// session's one life: its id and its creation time (an id may be used again once a session
/// is dropped, and gets a new creation time). A digest, so that any session id (up to 128
/// bytes of any text) gives a short id that an HTTP header can carry: `msg_` and 32 hex digits.
pub(crate) fn event_id(event: &str, report: &Report) -> String {
    let mut context = digest::Context::new(&digest::SHA256);
    for part in [
        event.as_bytes(),
        report.session_id.as_str().as_bytes(),
        &report.created_at.as_micros().to_be_bytes(),
    ] {
        // Each part with its length, so that no two different triples hash the same bytes.
        context.update(&(part.len() as u64).to_be_bytes());
        context.update(part);
    }
    let digest = context.finish();
    let mut id = String::with_capacity(4 + 32);
    id.push_str("msg_");
    for byte in &digest.as_ref()[..16] {
        id.push(char::from(HEX[usize::from(byte >> 4)]));
        id.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    id
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Unix seconds of `at`, for `webhook-timestamp`.
pub(crate) fn unix_seconds(at: Time) -> u64 {
    at.as_micros() / 1_000_000
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use endcall_core::{
        domain::{Options, SessionId},
        machine::Session,
    };

    /// The specification's own example (its reference libraries test the same vector).
    #[test]
    fn signs_the_reference_vector() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            secret.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn padding_and_whitespace_do_not_matter() {
        let padded =
            Secret::parse("  whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n").unwrap();
        let bare = Secret::parse("whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").unwrap();
        assert_eq!(padded.sign("a", 1, b"b"), bare.sign("a", 1, b"b"));
    }

    #[test]
    fn malformed_secrets_are_refused() {
        assert_eq!(
            Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err(),
            SecretError::NoPrefix
        );
        assert_eq!(Secret::parse("whsec_").unwrap_err(), SecretError::NotBase64);
        assert_eq!(
            Secret::parse("whsec_abc$def").unwrap_err(),
            SecretError::NotBase64
        );
        assert_eq!(
            Secret::parse("whsec_c2hvcnQ=").unwrap_err(),
            SecretError::TooShort(5)
        );
    }

    fn report(id: &str, created: u64) -> Report {
        let session = Session::new(Arc::new(Options::default()), Time::from_micros(created));
        Report::of(&SessionId::new(id), &session)
    }

    #[test]
    fn the_event_id_names_one_life_of_one_session() {
        let id = event_id("call.ended", &report("call-1", 5));
        assert_eq!(id, event_id("call.ended", &report("call-1", 5)));
        assert!(id.starts_with("msg_") && id.len() == 36, "{id}");
        assert!(id[4..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, event_id("call.ended", &report("call-1", 6)));
        assert_ne!(id, event_id("call.ended", &report("call-2", 5)));
        assert_ne!(id, event_id("call.started", &report("call-1", 5)));
    }
}
