//! Prometheus metrics: every name, label and meaning in one place (the table in
//! `docs/operations.md` mirrors this file), recorded through the `metrics` facade so that
//! without `--metrics-listen` each call is a no-op.

use std::{net::SocketAddr, sync::OnceLock, time::Duration};

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, Unit,
};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};
use tonic::Code;

use endcall_core::domain::{
    CloseReason, Directive, EndedReason, Outcome, State, TeardownCause, TeardownResult,
};

pub const RPC_REQUESTS: &str = "endcall_rpc_requests_total";
pub const RPC_DURATION: &str = "endcall_rpc_duration_seconds";
pub const REQUESTS_REJECTED: &str = "endcall_requests_rejected_total";
pub const SESSIONS: &str = "endcall_sessions";
pub const SESSIONS_ENDED: &str = "endcall_sessions_ended_total";
pub const SESSIONS_CLOSED: &str = "endcall_sessions_closed_total";
pub const SESSIONS_ENDED_BY_REASON: &str = "endcall_sessions_ended_by_reason_total";
pub const END_CALL_TO_SHUTDOWN: &str = "endcall_end_call_to_shutdown_seconds";
pub const DIRECTIVES: &str = "endcall_directives_total";
pub const TIMERS_PENDING: &str = "endcall_timers_pending";
pub const WATCHERS: &str = "endcall_watchers";
pub const ALIVE_TASKS: &str = "endcall_runtime_alive_tasks";
pub const LIVEKIT_REQUESTS: &str = "endcall_livekit_requests_total";
pub const LIVEKIT_DURATION: &str = "endcall_livekit_request_duration_seconds";

/// How LiveKit server API requests end (`result` label): an answer's class, or why none came.
pub const LIVEKIT_RESULTS: [&str; 12] = [
    "deleted",           // 2xx
    "not_found",         // 404 `not_found`: the room was already gone
    "unauthenticated",   // 401
    "permission_denied", // 403
    "rate_limited",      // 429
    "server_error",      // 5xx, 408
    "client_error",      // any other status (400, a 404 that is not `not_found`, 3xx)
    "timeout",
    "connect",
    "tls",
    "io",
    "invalid_url",
];

/// How often the runtime gauges are sampled: a scrape every 15 s or so sees fresh values.
const RUNTIME_SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// RPC latencies: tens of microseconds to a second.
const RPC_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 1.0,
];
/// Webhook deliveries, from queued to delivered: milliseconds when the receiver is up, up to
/// the default retry window (a day) when it was not.
const WEBHOOK_DELIVERY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
    21_600.0, 86_400.0,
];
/// One webhook request: a local receiver's milliseconds up to the default timeout (15 s).
const WEBHOOK_ATTEMPT_BUCKETS: &[f64] = &[
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0,
];
/// Goodbyes: from an instant pipeline shutdown to the playout guard and beyond.
const GOODBYE_BUCKETS: &[f64] = &[0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0];
/// LiveKit API requests: a nearby server in milliseconds, a distant one in a few hundred, up
/// to the 10 s default request timeout and beyond.
const LIVEKIT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Serves `/metrics` on `addr` and installs the global recorder. Must run inside the runtime.
pub fn install(addr: SocketAddr) -> Result<(), BuildError> {
    let (recorder, exporter) = PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Full(RPC_DURATION.into()), RPC_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(END_CALL_TO_SHUTDOWN.into()), GOODBYE_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(JOURNAL_SYNC.into()), RPC_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(LIVEKIT_DURATION.into()), LIVEKIT_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(WEBHOOK_DELIVERY.into()),
            WEBHOOK_DELIVERY_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(WEBHOOK_ATTEMPT.into()),
            WEBHOOK_ATTEMPT_BUCKETS,
        )?
        .build()?;
    metrics::set_global_recorder(recorder).map_err(BuildError::FailedToSetGlobalRecorder)?;
    tokio::spawn(exporter);
    describe();
    zero();
    let _ = HANDLES.set(Handles::register());
    tokio::spawn(sample_runtime());
    Ok(())
}

/// The EndCallService methods, whose series are registered once at install.
const METHODS: [&str; 9] = [
    "OpenSession",
    "EndCall",
    "OnSpeechCreated",
    "OnSpeechDone",
    "OnUserSpeech",
    "OnSessionClose",
    "WatchSession",
    "GetTool",
    "GetSession",
];

/// Directive kinds, as labelled.
const DIRECTIVE_KINDS: [&str; 5] = Directive::KINDS;

/// The series on every RPC's path, registered once. A labelled macro call builds its label
/// list and looks the series up in the recorder each time; these are looked up by index. Set
/// only by `install`: without `--metrics-listen` recording is skipped altogether.
static HANDLES: OnceLock<Handles> = OnceLock::new();

struct Handles {
    /// Per method: its OK count and its latency.
    rpcs: [(Counter, Histogram); METHODS.len()],
    sessions: [Gauge; State::ALL.len()],
    directives: [Counter; DIRECTIVE_KINDS.len()],
    end_call_to_shutdown: Histogram,
}

impl Handles {
    fn register() -> Self {
        Handles {
            rpcs: METHODS.map(|method| {
                (
                    counter!(RPC_REQUESTS, "method" => method, "code" => code_name(Code::Ok)),
                    histogram!(RPC_DURATION, "method" => method),
                )
            }),
            sessions: State::ALL.map(|state| gauge!(SESSIONS, "state" => state.as_str())),
            directives: DIRECTIVE_KINDS.map(|kind| counter!(DIRECTIVES, "kind" => kind)),
            end_call_to_shutdown: histogram!(END_CALL_TO_SHUTDOWN),
        }
    }

    fn session_gauge(&self, state: State) -> &Gauge {
        let index = State::ALL.iter().position(|s| *s == state).unwrap_or(0);
        &self.sessions[index]
    }
}

/// Samples the runtime's live task count: a task leaked per session or stream shows as a
/// gauge that climbs with load and never comes back (the soak test checks it does).
async fn sample_runtime() {
    let runtime = tokio::runtime::Handle::current();
    let mut every = tokio::time::interval(RUNTIME_SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        gauge!(ALIVE_TASKS).set(runtime.metrics().num_alive_tasks() as f64);
    }
}

/// Publishes every gauge and the outcome counters at 0, so a dashboard shows 0 rather than no
/// data before the first call.
fn zero() {
    for state in State::ALL {
        gauge!(SESSIONS, "state" => state.as_str()).set(0.0);
    }
    gauge!(WATCHERS).set(0.0);
    gauge!(TIMERS_PENDING).set(0.0);
    for outcome in Outcome::ALL {
        counter!(SESSIONS_ENDED, "outcome" => outcome.as_str()).absolute(0);
    }
    for reason in EndedReason::ALL {
        counter!(SESSIONS_ENDED_BY_REASON, "ended_reason" => reason.as_str()).absolute(0);
    }
    gauge!(SESSIONS_UNATTENDED).set(0.0);
    for cause in TeardownCause::ALL {
        for result in TeardownResult::ALL {
            counter!(TEARDOWNS, "cause" => cause.as_str(), "result" => result.as_str()).absolute(0);
        }
    }
    for result in LIVEKIT_RESULTS {
        counter!(LIVEKIT_REQUESTS, "method" => "DeleteRoom", "result" => result).absolute(0);
    }
}

fn describe() {
    describe_counter!(
        RPC_REQUESTS,
        "EndCallService RPCs by method and gRPC status code."
    );
    describe_histogram!(
        RPC_DURATION,
        Unit::Seconds,
        "EndCallService RPC latency by method."
    );
    describe_counter!(
        REQUESTS_REJECTED,
        "Refused requests by reason: validation, precondition, not_found, session_limit, size_limit, concurrency_limit, rate_limit, watcher_limit, journal, unauthenticated."
    );
    describe_gauge!(
        SESSIONS,
        "Sessions held, by state (closed ones until their retention ends)."
    );
    describe_counter!(
        SESSIONS_ENDED,
        "Sessions ended, by outcome (the SHUTDOWN_SESSION cause, or how a session closed without one)."
    );
    describe_counter!(
        SESSIONS_CLOSED,
        "Sessions closed by the worker, by close reason."
    );
    describe_counter!(
        SESSIONS_ENDED_BY_REASON,
        "Sessions closed, by why the call ended (ended_reason: agent_end_call, agent_wind_up, agent_closed, user_hangup, silence_timeout, max_duration, error, job_shutdown, expired, worker_lost)."
    );
    describe_histogram!(
        END_CALL_TO_SHUTDOWN,
        Unit::Seconds,
        "Time from a session's first EndCall to its SHUTDOWN_SESSION."
    );
    describe_counter!(DIRECTIVES, "Directives issued, by kind.");
    describe_gauge!(
        TIMERS_PENDING,
        "Entries in the timer wheel (deadlines, expiries, retention ends)."
    );
    describe_gauge!(WATCHERS, "Open WatchSession streams.");
    describe_histogram!(
        JOURNAL_SYNC,
        Unit::Seconds,
        "State journal (--state-dir): time to write and fsync one batch of records."
    );
    describe_counter!(
        JOURNAL_RECORDS,
        "State journal (--state-dir): records made durable."
    );
    describe_counter!(
        LIVEKIT_REQUESTS,
        "LiveKit server API requests (teardown), by method and result: deleted, not_found, unauthenticated, permission_denied, rate_limited, server_error, client_error, timeout, connect, tls, io, invalid_url."
    );
    describe_histogram!(
        LIVEKIT_DURATION,
        Unit::Seconds,
        "LiveKit server API request latency by method, every attempt (a timed-out one counts its timeout)."
    );
    describe_gauge!(
        SESSIONS_UNATTENDED,
        "Attended sessions (their worker held a WatchSession stream) whose worker holds none now: each is torn down unless its worker comes back within --worker-lost-after."
    );
    describe_counter!(
        TEARDOWNS,
        "Calls the sidecar ended itself, by cause (worker_lost, close_deadline) and result."
    );
    describe_counter!(
        WEBHOOK_DELIVERIES,
        "Webhook deliveries by result: delivered, retried (an attempt failed and is retried), gave_up (--webhook-retry-for passed), gone (the receiver answered 410), dropped (--webhook-queue full, memory mode), lost (pending at the end of the drain, memory mode)."
    );
    describe_histogram!(
        WEBHOOK_DELIVERY,
        Unit::Seconds,
        "Webhook deliveries: time from the event being queued (the session's end) to its 2xx answer."
    );
    describe_histogram!(
        WEBHOOK_ATTEMPT,
        Unit::Seconds,
        "Webhook attempts: time of one request, from sending to the answer or the failure."
    );
    describe_gauge!(
        WEBHOOK_QUEUE,
        "Webhook deliveries pending: queued and not yet delivered, given up, gone or dropped."
    );
    describe_gauge!(
        WEBHOOK_OLDEST,
        "Age of the oldest webhook delivery pending, sampled every second."
    );
    describe_gauge!(
        ALIVE_TASKS,
        "Tasks alive in the async runtime (connections, streams, timers), sampled every second."
    );
}

pub fn rpc(method: &'static str, code: Code, elapsed: Duration) {
    let Some(handles) = HANDLES.get() else { return };
    let known = METHODS.iter().position(|m| *m == method);
    match known.map(|index| &handles.rpcs[index]) {
        Some((ok, latency)) => {
            if code == Code::Ok {
                ok.increment(1);
            } else {
                counter!(RPC_REQUESTS, "method" => method, "code" => code_name(code)).increment(1);
            }
            latency.record(elapsed.as_secs_f64());
        }
        None => {
            counter!(RPC_REQUESTS, "method" => method, "code" => code_name(code)).increment(1);
            histogram!(RPC_DURATION, "method" => method).record(elapsed.as_secs_f64());
        }
    }
}

pub fn rejected(reason: &'static str) {
    counter!(REQUESTS_REJECTED, "reason" => reason).increment(1);
}

/// A session moved from one state to another; `None` is "not held".
pub fn session_state(from: Option<State>, to: Option<State>) {
    if from == to {
        return;
    }
    let Some(handles) = HANDLES.get() else { return };
    if let Some(from) = from {
        handles.session_gauge(from).decrement(1.0);
    }
    if let Some(to) = to {
        handles.session_gauge(to).increment(1.0);
    }
}

pub fn session_ended(
    outcome: Outcome,
    reason: Option<CloseReason>,
    ended_reason: Option<EndedReason>,
) {
    counter!(SESSIONS_ENDED, "outcome" => outcome.as_str()).increment(1);
    if let Some(reason) = reason {
        counter!(SESSIONS_CLOSED, "reason" => reason.as_str()).increment(1);
    }
    if let Some(ended) = ended_reason {
        counter!(SESSIONS_ENDED_BY_REASON, "ended_reason" => ended.as_str()).increment(1);
    }
}

pub fn end_call_to_shutdown(elapsed: Duration) {
    if let Some(handles) = HANDLES.get() {
        handles.end_call_to_shutdown.record(elapsed.as_secs_f64());
    }
}

pub fn directive(directive: &Directive) {
    let Some(handles) = HANDLES.get() else { return };
    let kind = directive.kind();
    match DIRECTIVE_KINDS.iter().position(|k| *k == kind) {
        Some(index) => handles.directives[index].increment(1),
        None => counter!(DIRECTIVES, "kind" => kind).increment(1),
    }
}

pub fn timers_pending(n: usize) {
    gauge!(TIMERS_PENDING).set(n as f64);
}

/// Counts an open watch stream for as long as it lives.
pub struct WatcherGuard(());

impl WatcherGuard {
    pub fn new() -> Self {
        gauge!(WATCHERS).increment(1.0);
        WatcherGuard(())
    }
}

impl Default for WatcherGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        gauge!(WATCHERS).decrement(1.0);
    }
}

/// gRPC's canonical names, as grpcurl prints them.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// One LiveKit server API request (one attempt), its result label from [`LIVEKIT_RESULTS`].
pub fn livekit_request(method: &'static str, result: &'static str, elapsed: Duration) {
    counter!(LIVEKIT_REQUESTS, "method" => method, "result" => result).increment(1);
    histogram!(LIVEKIT_DURATION, "method" => method).record(elapsed.as_secs_f64());
}

pub const JOURNAL_SYNC: &str = "endcall_journal_sync_seconds";
pub const JOURNAL_RECORDS: &str = "endcall_journal_records_total";

/// One journal batch written and fsynced (`--state-dir` only).
pub fn journal_sync(elapsed: Duration, records: usize) {
    histogram!(JOURNAL_SYNC).record(elapsed.as_secs_f64());
    counter!(JOURNAL_RECORDS).increment(records as u64);
}

pub const SESSIONS_UNATTENDED: &str = "endcall_sessions_unattended";
pub const TEARDOWNS: &str = "endcall_teardowns_total";

/// An attended session's worker let go of its last stream (`+1`), or came back or the
/// session ended (`-1`).
pub fn unattended(delta: f64) {
    gauge!(SESSIONS_UNATTENDED).increment(delta);
}

/// A teardown's result is known.
pub fn teardown(cause: TeardownCause, result: TeardownResult) {
    counter!(TEARDOWNS, "cause" => cause.as_str(), "result" => result.as_str()).increment(1);
}

pub const WEBHOOK_DELIVERIES: &str = "endcall_webhook_deliveries_total";
pub const WEBHOOK_DELIVERY: &str = "endcall_webhook_delivery_seconds";
pub const WEBHOOK_ATTEMPT: &str = "endcall_webhook_attempt_seconds";
pub const WEBHOOK_QUEUE: &str = "endcall_webhook_queue_depth";
pub const WEBHOOK_OLDEST: &str = "endcall_webhook_oldest_pending_seconds";

/// The results of `endcall_webhook_deliveries_total`.
const WEBHOOK_RESULTS: [&str; 6] = ["delivered", "retried", "gave_up", "gone", "dropped", "lost"];

/// The webhook series, registered once when webhooks start (as `HANDLES` are for the RPCs'),
/// so that recording one per delivery is an index, not a lookup by labels.
static WEBHOOK_HANDLES: OnceLock<WebhookHandles> = OnceLock::new();

struct WebhookHandles {
    results: [Counter; WEBHOOK_RESULTS.len()],
    delivery: Histogram,
    attempt: Histogram,
    queue: Gauge,
    oldest: Gauge,
}

/// Registers the webhook series and publishes them at 0: called when webhooks are turned on
/// (a sidecar without them shows none).
pub fn webhooks_zero() {
    let handles = WEBHOOK_HANDLES.get_or_init(|| WebhookHandles {
        results: WEBHOOK_RESULTS.map(|result| counter!(WEBHOOK_DELIVERIES, "result" => result)),
        delivery: histogram!(WEBHOOK_DELIVERY),
        attempt: histogram!(WEBHOOK_ATTEMPT),
        queue: gauge!(WEBHOOK_QUEUE),
        oldest: gauge!(WEBHOOK_OLDEST),
    });
    for counter in &handles.results {
        counter.absolute(0);
    }
    handles.queue.set(0.0);
    handles.oldest.set(0.0);
}

/// `n` deliveries ended (or attempts were retried) with `result`, one of `WEBHOOK_RESULTS`.
pub fn webhook_deliveries(result: &'static str, n: u64) {
    let Some(handles) = WEBHOOK_HANDLES.get() else {
        return;
    };
    match WEBHOOK_RESULTS.iter().position(|r| *r == result) {
        Some(index) => handles.results[index].increment(n),
        None => counter!(WEBHOOK_DELIVERIES, "result" => result).increment(n),
    }
}

/// A delivery got its 2xx answer, `waited` after it was queued.
pub fn webhook_delivered(waited: Duration) {
    if let Some(handles) = WEBHOOK_HANDLES.get() {
        handles.results[0].increment(1);
        handles.delivery.record(waited.as_secs_f64());
    }
}

/// One request, answered or not.
pub fn webhook_attempt(took: Duration) {
    if let Some(handles) = WEBHOOK_HANDLES.get() {
        handles.attempt.record(took.as_secs_f64());
    }
}

/// The queue's gauges: pending deliveries, and the age of the oldest.
pub fn webhook_queue(pending: usize, oldest: Duration) {
    if let Some(handles) = WEBHOOK_HANDLES.get() {
        handles.queue.set(pending as f64);
        handles.oldest.set(oldest.as_secs_f64());
    }
}
