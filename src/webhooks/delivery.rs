//! The delivery task: sends each delivery, retries what fails, and reports how each ended.
//!
//! One tokio task holds every delivery in memory (with a store, at most `--webhook-queue` of
//! them; the intake thread keeps the rest on disk). Its attempts run inside it, as futures in
//! a `FuturesUnordered` (a task spawned per attempt cost a spawn and a cross-task wake more
//! per delivery), at most `--webhook-concurrency` at once, each bounded by `--webhook-timeout`
//! (`HttpClient::post` bounds connect, TLS, request and answer together). A failed attempt
//! waits in a `DelayQueue` for its retry.
//!
//! - Only a 2xx answer counts as delivered.
//! - 410 Gone: the receiver asks for no more of this; the delivery stops (`gone`).
//! - Any other answer, and any failure to get one, is retried after the outbound client's
//!   schedule (`outbound::RetryPolicy`: exponential backoff with full jitter from
//!   `--webhook-backoff`, capped at `--webhook-backoff-max`, `Retry-After` honoured) until
//!   `--webhook-retry-for` has passed since the delivery was queued; then it gives up, with an
//!   `error` line. TLS failures are retried too: over a day, a receiver's expired certificate
//!   is the kind of thing that gets fixed.
//!
//! Every attempt is signed anew: `webhook-timestamp` is the attempt's own time, because
//! receivers refuse timestamps more than a few minutes old, and a retry can come hours later.

use std::{
    collections::{HashMap, VecDeque},
    future::{poll_fn, Future},
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use crossbeam_channel::Sender;
use futures_util::{stream::FuturesUnordered, StreamExt as _};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::{sync::CancellationToken, time::DelayQueue};
use tracing::{debug, error, warn};

use super::{
    event::time_of, intake::Msg, signing::unix_seconds, store::Ending, Delivery, DropLog, Settings,
};
use crate::{
    outbound::{HttpClient, Jitter, Response, RetryPolicy, SendError},
    telemetry::metrics,
};

/// How often the queue's gauges are refreshed.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Failed attempts are logged at `warn` at most this often (with how many failed since):
/// while a receiver is down, every pending delivery fails again and again.
const FAILURE_LINE_EVERY: Duration = Duration::from_secs(10);

/// The longest answer text kept for a log line.
const ANSWER_TEXT: usize = 200;

struct Slot {
    delivery: Delivery,
    attempts: u32,
}

/// One attempt's end.
struct Attempted {
    id: Arc<str>,
    result: Result<Response, SendError>,
    took: Duration,
}

pub(super) struct Task {
    settings: Arc<Settings>,
    client: HttpClient,
    policy: RetryPolicy,
    jitter: Jitter,
    deliveries: UnboundedReceiver<Vec<Delivery>>,
    intake: Sender<Msg>,
    pending: Arc<AtomicUsize>,
    durable: bool,
    drops: Arc<DropLog>,
    failures: FailureLine,
}

impl Task {
    pub(super) fn new(
        settings: Arc<Settings>,
        client: HttpClient,
        deliveries: UnboundedReceiver<Vec<Delivery>>,
        intake: Sender<Msg>,
        pending: Arc<AtomicUsize>,
        durable: bool,
        drops: Arc<DropLog>,
    ) -> Self {
        let policy = RetryPolicy {
            first: settings.backoff,
            cap: settings.backoff_max,
            retry_for: settings.retry_for,
        };
        Task {
            settings,
            client,
            policy,
            jitter: Jitter::from_entropy(),
            deliveries,
            intake,
            pending,
            durable,
            drops,
            failures: FailureLine::default(),
        }
    }

    /// Delivers until `stop`; returns how many deliveries it still held.
    pub(super) async fn run(mut self, stop: CancellationToken) -> usize {
        let mut slots: HashMap<Arc<str>, Slot> = HashMap::new();
        let mut ready: VecDeque<Arc<str>> = VecDeque::new();
        let mut later: DelayQueue<Arc<str>> = DelayQueue::new();
        let mut in_flight: FuturesUnordered<Pin<Box<dyn Future<Output = Attempted> + Send>>> =
            FuturesUnordered::new();
        let mut sample = tokio::time::interval(SAMPLE_EVERY);
        sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut intake_open = true;
        loop {
            while in_flight.len() < self.settings.concurrency {
                let Some(id) = ready.pop_front() else { break };
                if let Some(slot) = slots.get_mut(&id) {
                    slot.attempts = slot.attempts.saturating_add(1);
                    in_flight.push(Box::pin(self.attempt(&slot.delivery)));
                }
            }
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                Some(attempted) = in_flight.next(), if !in_flight.is_empty() => {
                    if let Some((id, wait)) = self.settle(&mut slots, attempted) {
                        later.insert(id, wait);
                    }
                }
                Some(due) = poll_fn(|cx| later.poll_expired(cx)), if !later.is_empty() => {
                    ready.push_back(due.into_inner());
                }
                received = self.deliveries.recv(), if intake_open => match received {
                    Some(batch) => {
                        for delivery in batch {
                            let id = Arc::clone(&delivery.id);
                            if slots.contains_key(&id) {
                                // Already held: it counts once.
                                if !self.durable {
                                    self.pending.fetch_sub(1, Ordering::Relaxed);
                                }
                                continue;
                            }
                            slots.insert(Arc::clone(&id), Slot { delivery, attempts: 0 });
                            ready.push_back(id);
                        }
                    }
                    None => intake_open = false,
                },
                _ = sample.tick() => self.sample(&slots),
            }
        }
        // Attempts in flight are dropped, which abandons their requests.
        drop(in_flight);
        slots.len()
    }

    /// One attempt: signed now, sent, timed.
    fn attempt(&self, delivery: &Delivery) -> impl Future<Output = Attempted> + Send + 'static {
        let timestamp = unix_seconds(time_of(SystemTime::now()));
        let signature = self
            .settings
            .secret
            .sign(&delivery.id, timestamp, &delivery.body);
        let mut headers = HeaderMap::with_capacity(4);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // The id is `msg_` and hex, the timestamp digits, the signature base64: all valid
        // header values; a failure here would be a bug, and the attempt fails visibly.
        let mut values = [
            ("webhook-id", HeaderValue::from_str(&delivery.id)),
            ("webhook-timestamp", Ok(HeaderValue::from(timestamp))),
            ("webhook-signature", HeaderValue::from_str(&signature)),
        ]
        .into_iter();
        let bad_header = values.find_map(|(name, value)| match value {
            Ok(mut value) => {
                value.set_sensitive(name == "webhook-signature");
                headers.insert(name, value);
                None
            }
            Err(_) => Some(name),
        });
        let client = self.client.clone();
        let url = self.settings.url.clone();
        let timeout = self.settings.timeout;
        let body = delivery.body.clone();
        let id = Arc::clone(&delivery.id);
        async move {
            let started = Instant::now();
            let result = match bad_header {
                None => client.post(&url, headers, body, timeout).await,
                Some(name) => Err(SendError::Io(format!("cannot build the {name} header"))),
            };
            Attempted {
                id,
                result,
                took: started.elapsed(),
            }
        }
    }

    /// Accounts for one attempt; returns when to retry it, if it is to be retried.
    fn settle(
        &mut self,
        slots: &mut HashMap<Arc<str>, Slot>,
        attempted: Attempted,
    ) -> Option<(Arc<str>, Duration)> {
        metrics::webhook_attempt(attempted.took);
        let id = attempted.id;
        let slot = slots.get(&id)?;
        let (why, retry_after) = match attempted.result {
            Ok(answer) if answer.is_success() => {
                let waited = time_of(SystemTime::now()).since(slot.delivery.queued_at);
                metrics::webhook_delivered(waited);
                debug!(
                    session_id = %slot.delivery.session_id,
                    webhook_id = %id,
                    attempts = slot.attempts,
                    status = answer.status.as_u16(),
                    "webhook delivered"
                );
                self.finish(slots, &id, Ending::Delivered);
                return None;
            }
            Ok(answer) if answer.status == StatusCode::GONE => {
                warn!(
                    session_id = %slot.delivery.session_id,
                    webhook_id = %id,
                    attempts = slot.attempts,
                    "webhook receiver answered 410 Gone: this delivery is stopped"
                );
                metrics::webhook_deliveries("gone", 1);
                self.finish(slots, &id, Ending::Gone);
                return None;
            }
            Ok(answer) => {
                let text = answer.body_text(ANSWER_TEXT);
                let why = if text.trim().is_empty() {
                    format!("HTTP {}", answer.status.as_u16())
                } else {
                    format!("HTTP {}: {}", answer.status.as_u16(), text.trim())
                };
                (why, answer.retry_after)
            }
            Err(err) => (err.to_string(), None),
        };
        let waited = time_of(SystemTime::now()).since(slot.delivery.queued_at);
        match self
            .policy
            .delay(slot.attempts.max(1), waited, retry_after, &mut self.jitter)
        {
            Some(wait) => {
                metrics::webhook_deliveries("retried", 1);
                self.failures
                    .failed(&slot.delivery, slot.attempts, &why, wait);
                Some((id, wait))
            }
            None => {
                error!(
                    session_id = %slot.delivery.session_id,
                    webhook_id = %id,
                    attempts = slot.attempts,
                    last_error = %why,
                    retry_for = %humantime::format_duration(self.settings.retry_for),
                    "webhook delivery gave up (--webhook-retry-for)"
                );
                metrics::webhook_deliveries("gave_up", 1);
                self.finish(slots, &id, Ending::GaveUp);
                None
            }
        }
    }

    fn finish(&self, slots: &mut HashMap<Arc<str>, Slot>, id: &Arc<str>, ending: Ending) {
        slots.remove(id);
        if self.durable {
            let _ = self.intake.send(Msg::Done {
                id: Arc::clone(id),
                ending,
            });
        } else {
            self.pending.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn sample(&self, slots: &HashMap<Arc<str>, Slot>) {
        let now = time_of(SystemTime::now());
        let oldest = slots
            .values()
            .map(|slot| now.since(slot.delivery.queued_at))
            .max()
            .unwrap_or(Duration::ZERO);
        metrics::webhook_queue(self.pending.load(Ordering::Relaxed), oldest);
        self.drops.line(self.settings.queue);
    }
}

/// The paced `warn` line of failed attempts.
#[derive(Default)]
struct FailureLine {
    last: Option<Instant>,
    since: u64,
}

impl FailureLine {
    fn failed(&mut self, delivery: &Delivery, attempts: u32, why: &str, retry_in: Duration) {
        self.since += 1;
        debug!(
            session_id = %delivery.session_id,
            webhook_id = %delivery.id,
            attempts,
            error = %why,
            retry_in = ?retry_in,
            "webhook attempt failed"
        );
        let now = Instant::now();
        if self
            .last
            .is_none_or(|last| now.duration_since(last) >= FAILURE_LINE_EVERY)
        {
            warn!(
                failed_attempts = self.since,
                session_id = %delivery.session_id,
                webhook_id = %delivery.id,
                attempts,
                error = %why,
                retry_in = ?retry_in,
                "webhook attempts failing; retrying"
            );
            self.last = Some(now);
            self.since = 0;
        }
    }
}
