//! LiveKit's server API, for the one call the sidecar makes: `RoomService.DeleteRoom`, which
//! ends a call for everyone in its room and hangs up SIP callers.
//!
//! Written by hand over the process's [`HttpClient`] rather than with the `livekit-api`
//! crate: one Twirp POST and one HS256 token need no more, and the crate would add about 60
//! crates to the build (the numbers are in docs/development.md, "Dependencies").
//!
//! The request, as LiveKit's server expects it: `POST {url}/twirp/livekit.RoomService/DeleteRoom`
//! with `Content-Type: application/json`, the body `{"room": NAME}` and
//! `Authorization: Bearer <token>` ([`token`]). The answer is classified
//! ([`RoomService::delete_room`]):
//! - 2xx: deleted.
//! - 404 with the Twirp code `not_found` ("requested room does not exist"): the room is
//!   already gone, which is what teardown wanted; done. A 404 with any other code (Twirp's
//!   `bad_route`, a proxy's page) means the URL is wrong, and is fatal.
//! - 401 and 403 (`unauthenticated`, `permission_denied`: a wrong key or secret, or a token
//!   without `roomCreate`): fatal; retrying cannot fix the configuration.
//! - 408, 429 and 5xx, timeouts, refused or reset connections: retried with backoff and
//!   jitter, honouring `Retry-After`, for at most `--livekit-retry-for`.
//! - Anything else (400, other 4xx, a redirect), a TLS failure: fatal.

pub(crate) mod config;
#[cfg(test)]
mod tests;
pub(crate) mod token;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use tracing::{debug, warn};

use crate::{
    outbound::{Backoff, HttpClient, Jitter, Response, RetryPolicy},
    telemetry::metrics,
};

pub(crate) use config::{LiveKitArgs, LiveKitConfigError, Settings};
use token::{Signer, TOKEN_TTL};

/// LiveKit's SDKs send one id per call, the same on every retry of it, so the server can
/// tell a retry from a new call.
const REQUEST_ID: HeaderName = HeaderName::from_static("x-livekit-request-id");

/// The ceiling of the first retry's wait, and the largest: doubling from 500 ms reaches the
/// cap after six attempts; with the default `--livekit-retry-for` of 5 min, a LiveKit that
/// stays down gets about 15 attempts.
const FIRST_WAIT: Duration = Duration::from_millis(500);
const MAX_WAIT: Duration = Duration::from_secs(30);

/// How much of an error answer's body goes into the error text.
const ERROR_BODY_CHARS: usize = 200;

/// The result of tearing a room down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TeardownResult {
    /// LiveKit deleted the room: everyone in it, SIP callers included, was disconnected.
    Deleted,
    /// LiveKit had no such room (it ended already, or never existed): nothing left to hang up.
    AlreadyGone,
    /// The room may still be up. `fatal`: retrying cannot help (credentials, URL, TLS);
    /// otherwise the retries ran out (`--livekit-retry-for`).
    Failed { error: String, fatal: bool },
}

/// What [`RoomService::delete_room`] did: its result after `attempts` requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TeardownAttempt {
    pub(crate) result: TeardownResult,
    pub(crate) attempts: u32,
}

/// LiveKit's `RoomService`, as configured. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct RoomService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: HttpClient,
    delete_room_url: Uri,
    signer: Signer,
    request_timeout: Duration,
    policy: RetryPolicy,
}

/// How one attempt ended.
#[derive(Debug)]
enum Verdict {
    Done(TeardownResult),
    Retry {
        error: String,
        retry_after: Option<Duration>,
    },
    Fatal(String),
}

impl RoomService {
    /// The service the settings name, sending through `http`; `None` without settings (the
    /// sidecar then only records teardowns, see [`Settings::load`]).
    pub(crate) fn from_config(settings: Option<&Settings>, http: &HttpClient) -> Option<Self> {
        settings.map(|settings| Self::new(settings, http.clone()))
    }

    pub(crate) fn new(settings: &Settings, http: HttpClient) -> Self {
        RoomService {
            inner: Arc::new(Inner {
                http,
                delete_room_url: settings.delete_room_url.clone(),
                signer: Signer::new(&settings.api_key, &settings.api_secret),
                request_timeout: settings.request_timeout,
                policy: RetryPolicy {
                    first: FIRST_WAIT,
                    cap: MAX_WAIT,
                    retry_for: settings.retry_for,
                },
            }),
        }
    }

    /// The URL `DeleteRoom` is posted to.
    #[cfg(test)]
    pub(crate) fn delete_room_url(&self) -> &Uri {
        &self.inner.delete_room_url
    }

    /// Deletes `room`, retrying as the settings say. Returns when the room is deleted or gone,
    /// on a fatal answer, or when `--livekit-retry-for` is spent: never on an RPC's path.
    /// Dropping the future stops it between or during attempts.
    pub(crate) async fn delete_room(&self, room: &str) -> TeardownAttempt {
        self.delete_room_with(room, self.inner.policy, Jitter::from_entropy())
            .await
    }

    /// [`delete_room`](Self::delete_room) with a given schedule and jitter (tests pin both).
    pub(crate) async fn delete_room_with(
        &self,
        room: &str,
        policy: RetryPolicy,
        mut jitter: Jitter,
    ) -> TeardownAttempt {
        if room.is_empty() {
            return TeardownAttempt {
                result: TeardownResult::Failed {
                    error: "no room name: nothing to delete".into(),
                    fatal: true,
                },
                attempts: 0,
            };
        }
        let request_id = request_id(&mut jitter);
        let body = Bytes::from(serde_json::json!({ "room": room }).to_string());
        let mut backoff = Backoff::new(policy, jitter);
        loop {
            let attempt = backoff.attempt();
            let verdict = self.attempt(body.clone(), &request_id).await;
            let (error, retry_after) = match verdict {
                Verdict::Done(result) => {
                    debug!(room, attempt, ?result, "LiveKit DeleteRoom done");
                    return TeardownAttempt {
                        result,
                        attempts: attempt,
                    };
                }
                Verdict::Fatal(error) => {
                    warn!(room, attempt, %error, "LiveKit DeleteRoom failed; not retried");
                    return TeardownAttempt {
                        result: TeardownResult::Failed { error, fatal: true },
                        attempts: attempt,
                    };
                }
                Verdict::Retry { error, retry_after } => (error, retry_after),
            };
            let Some(wait) = backoff.next_delay(retry_after) else {
                warn!(room, attempt, %error, "LiveKit DeleteRoom failed; giving up (--livekit-retry-for)");
                return TeardownAttempt {
                    result: TeardownResult::Failed {
                        error: format!(
                            "{error} (gave up after {attempt} attempts, --livekit-retry-for {})",
                            humantime::format_duration(policy.retry_for)
                        ),
                        fatal: false,
                    },
                    attempts: attempt,
                };
            };
            warn!(
                room,
                attempt,
                %error,
                retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                "LiveKit DeleteRoom failed; retrying"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// One request, timed and counted.
    async fn attempt(&self, body: Bytes, request_id: &HeaderValue) -> Verdict {
        let inner = &*self.inner;
        let token = inner.signer.room_create_token(SystemTime::now(), TOKEN_TTL);
        let mut headers = HeaderMap::with_capacity(4);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(REQUEST_ID, request_id.clone());
        match HeaderValue::try_from(format!("Bearer {token}")) {
            Ok(mut value) => {
                value.set_sensitive(true);
                headers.insert(header::AUTHORIZATION, value);
            }
            // A JWT is base64url and dots: always a valid header value.
            Err(_) => return Verdict::Fatal("the access token is not a header value".into()),
        }
        let started = tokio::time::Instant::now();
        let sent = inner
            .http
            .post(&inner.delete_room_url, headers, body, inner.request_timeout)
            .await;
        let (verdict, label) = match sent {
            Ok(response) => classify(&response, &token),
            Err(err) => (
                if err.is_retryable() {
                    Verdict::Retry {
                        error: format!("LiveKit DeleteRoom: {err}"),
                        retry_after: None,
                    }
                } else {
                    Verdict::Fatal(format!("LiveKit DeleteRoom: {err}"))
                },
                err.kind(),
            ),
        };
        metrics::livekit_request("DeleteRoom", label, started.elapsed());
        verdict
    }
}

/// An answer's verdict and its metrics label.
fn classify(response: &Response, token: &str) -> (Verdict, &'static str) {
    let status = response.status;
    if status.is_success() {
        return (Verdict::Done(TeardownResult::Deleted), "deleted");
    }
    let twirp = TwirpError::read(response, token);
    let error = format!("LiveKit DeleteRoom: HTTP {}{twirp}", status.as_u16());
    match status {
        StatusCode::NOT_FOUND if twirp.code.as_deref() == Some("not_found") => {
            (Verdict::Done(TeardownResult::AlreadyGone), "not_found")
        }
        StatusCode::NOT_FOUND => (
            Verdict::Fatal(format!(
                "{error} (is --livekit-url the LiveKit server's URL?)"
            )),
            "client_error",
        ),
        StatusCode::UNAUTHORIZED => (
            Verdict::Fatal(format!(
                "{error} (check LIVEKIT_API_KEY and LIVEKIT_API_SECRET: they must be a key \
                 pair of this LiveKit server)"
            )),
            "unauthenticated",
        ),
        StatusCode::FORBIDDEN => (Verdict::Fatal(error), "permission_denied"),
        StatusCode::TOO_MANY_REQUESTS => (
            Verdict::Retry {
                error,
                retry_after: response.retry_after,
            },
            "rate_limited",
        ),
        StatusCode::REQUEST_TIMEOUT => (
            Verdict::Retry {
                error,
                retry_after: response.retry_after,
            },
            "server_error",
        ),
        s if s.is_server_error() => (
            Verdict::Retry {
                error,
                retry_after: response.retry_after,
            },
            "server_error",
        ),
        _ => (Verdict::Fatal(error), "client_error"),
    }
}

/// A Twirp error body, `{"code": "...", "msg": "..."}`, or the start of whatever else came,
/// with the token we sent removed (LiveKit's 401 answer repeats the token it refused).
#[derive(Debug, Default)]
struct TwirpError {
    code: Option<String>,
    text: String,
}

impl TwirpError {
    fn read(response: &Response, token: &str) -> Self {
        let redact = |text: &str| text.replace(token, "<token>");
        let json = serde_json::from_slice::<serde_json::Value>(&response.body).ok();
        let field = |name| {
            json.as_ref()
                .and_then(|body| body.get(name))
                .and_then(serde_json::Value::as_str)
        };
        match field("code") {
            Some(code) => TwirpError {
                code: Some(printable(code, 40)),
                text: printable(&redact(field("msg").unwrap_or("")), ERROR_BODY_CHARS),
            },
            None => TwirpError {
                code: None,
                text: printable(
                    &redact(&String::from_utf8_lossy(&response.body)),
                    ERROR_BODY_CHARS,
                ),
            },
        }
    }
}

impl std::fmt::Display for TwirpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(code) = &self.code {
            write!(f, " {code}")?;
        }
        if !self.text.is_empty() {
            write!(f, ": {}", self.text)?;
        }
        Ok(())
    }
}

fn printable(text: &str, max: usize) -> String {
    text.trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect()
}

/// A random UUID (version 4), as LiveKit's SDKs send in `X-Livekit-Request-Id`.
fn request_id(jitter: &mut Jitter) -> HeaderValue {
    let mut bytes = [0u8; 16];
    for chunk in bytes.chunks_mut(8) {
        chunk.copy_from_slice(&jitter.next_u64().to_be_bytes()[..chunk.len()]);
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let id = format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    );
    HeaderValue::try_from(id).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}
