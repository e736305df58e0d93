//! A webhook receiver for the benches: a hyper server on 127.0.0.1 that checks every
//! delivery's Standard Webhooks signature (HMAC-SHA256 with ring, over `{id}.{timestamp}.{body}`)
//! and records how long after its session closed each event arrived. The Python suite checks
//! deliveries with the specification's own library; this one is for load, where a Python
//! server would be the bottleneck.

use std::{
    collections::HashSet,
    convert::Infallible,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use ring::hmac;
use tokio::net::TcpListener;

/// The secret the benches give the sidecar (ENDCALL_WEBHOOK_SECRET) and check with.
pub(crate) const SECRET: &str = "whsec_QkNERUZHSElKS0xNTk9QUVJTVFVWV1hZWjAxMjM0NTY=";

/// Writes [`SECRET`] to a file of its own for `--webhook-secret-file` (the benches start the
/// server without extra variables).
pub(crate) fn secret_file() -> std::path::PathBuf {
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "endcall-bench-webhook-secret-{}",
        std::process::id()
    ));
    std::fs::write(&path, SECRET).expect("write the webhook secret file");
    path
}

/// What the receiver saw.
#[derive(Default)]
pub(crate) struct Seen {
    /// Requests whose signature checked out, answered 2xx.
    pub(crate) verified: AtomicU64,
    /// Requests whose signature or headers did not check out (answered 400).
    pub(crate) refused: AtomicU64,
    /// Requests that came in, whatever their answer.
    pub(crate) arrived: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    ids: HashSet<String>,
    /// Per distinct event: from its session's close (the report's `closed_at`) to its arrival.
    close_to_delivery: Vec<Duration>,
    /// Per distinct event: when it arrived.
    arrivals: Vec<Instant>,
}

impl Seen {
    /// Distinct events verified.
    pub(crate) fn events(&self) -> usize {
        self.inner.lock().unwrap().ids.len()
    }

    /// Close-to-delivery times of the distinct events, sorted.
    pub(crate) fn close_to_delivery(&self) -> Vec<Duration> {
        let mut all = self.inner.lock().unwrap().close_to_delivery.clone();
        all.sort_unstable();
        all
    }

    /// Distinct events that arrived within `[from, to)`.
    #[allow(dead_code)] // the lifecycle bench's; the soak has no slices
    pub(crate) fn arrived_between(&self, from: Instant, to: Instant) -> usize {
        let inner = self.inner.lock().unwrap();
        inner
            .arrivals
            .iter()
            .filter(|at| **at >= from && **at < to)
            .count()
    }
}

/// How the receiver answers.
#[derive(Clone, Copy)]
pub(crate) struct Behaviour {
    /// Held before answering (the slow receiver).
    pub(crate) delay: Duration,
    /// Close a kept-alive connection idle this long (as load balancers do), so that the
    /// sidecar's pooled connections do not outlive the load for long.
    pub(crate) idle_close: Duration,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            delay: Duration::ZERO,
            idle_close: Duration::from_secs(2),
        }
    }
}

pub(crate) struct Receiver {
    pub(crate) url: String,
    pub(crate) seen: Arc<Seen>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Receiver {
    /// Starts serving `POST /hook` on 127.0.0.1 (any port), on the current runtime.
    pub(crate) async fn start(behaviour: Behaviour) -> Receiver {
        let key = STANDARD
            .decode(SECRET.trim_start_matches("whsec_"))
            .expect("the bench's secret");
        let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let seen = Arc::new(Seen::default());
        let record = Arc::clone(&seen);
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let key = key.clone();
                let seen = Arc::clone(&record);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        handle(request, key.clone(), Arc::clone(&seen), behaviour)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(behaviour.idle_close)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { url, seen, server }
    }
}

async fn handle(
    request: Request<Incoming>,
    key: hmac::Key,
    seen: Arc<Seen>,
    behaviour: Behaviour,
) -> Result<Response<Full<Bytes>>, Infallible> {
    seen.arrived.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if !behaviour.delay.is_zero() {
        tokio::time::sleep(behaviour.delay).await;
    }
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (id, timestamp, signature) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let mut signed = Vec::with_capacity(id.len() + timestamp.len() + body.len() + 2);
    signed.extend_from_slice(id.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(timestamp.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(&body);
    let valid = signature.split(' ').any(|candidate| {
        candidate
            .strip_prefix("v1,")
            .and_then(|tag| STANDARD.decode(tag).ok())
            .is_some_and(|tag| hmac::verify(&key, &signed, &tag).is_ok())
    });
    let fresh = timestamp.parse::<u64>().is_ok_and(|at| {
        now_micros() / 1_000_000 <= at + 300 && at <= now_micros() / 1_000_000 + 300
    });
    if !(valid && fresh && !id.is_empty()) {
        seen.refused.fetch_add(1, Ordering::Relaxed);
        return Ok(answer(400));
    }
    seen.verified.fetch_add(1, Ordering::Relaxed);
    let now = Instant::now();
    let closed_at = closed_at(&body);
    let mut inner = seen.inner.lock().unwrap();
    if inner.ids.insert(id) {
        if let Some(closed_at) = closed_at {
            inner.close_to_delivery.push(Duration::from_micros(
                now_micros().saturating_sub(closed_at),
            ));
        }
        inner.arrivals.push(now);
    }
    Ok(answer(204))
}

fn answer(status: u16) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = hyper::StatusCode::from_u16(status).expect("a status");
    response
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The report's `closed_at` (microseconds since the epoch), read from the event's body.
fn closed_at(body: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?;
    let rest = &text[text.find("\"closed_at\":")? + "\"closed_at\":".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}
