//! The load the sections offer: the agents' sessions and health checks, run in a closed loop
//! (as fast as they go) or an open loop (at a fixed rate), and the CPU time each side spends.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use endcall_sidecar::proto::v1::{CloseReason, DirectiveKind, SessionState};
use endcall_testkit::{
    close, done, end_call, process::Sidecar, realtime_end_call_within, user_speech, Client,
};
use tonic::transport::Channel;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

/// The servers of the rate-bound sections: closed sessions are kept for their retention (5 min
/// by default), so at thousands of sessions a second the default limit (100,000) would refuse
/// sessions within a minute. Every session has the silence ladder on (a 30 s silence timeout,
/// a reminder after 10 s, the defaults otherwise), so that each session's `OnUserSpeech`
/// starts its silence again and moves its deadline, as in a call that uses it.
pub(crate) const SESSION_SERVER_FLAGS: [&str; 4] =
    ["--max-sessions", "10000000", "--silence-timeout", "30s"];

/// The RPCs of one session, in order: the names the latency section reports them by.
pub(crate) const SESSION_RPCS: [&str; 4] =
    ["OnUserSpeech", "EndCall", "OnSpeechDone", "OnSessionClose"];

/// Lifecycle and health are measured in alternating slices this long, each kind going first
/// in every other pair, so that both meet the same machine, in the latency section and in the
/// throughput sections. Run one after the other, the second kind meets whatever state the
/// first left behind (timers coming due after an idle wait, a busier or quieter machine), and
/// their ratio measures that as much as the server; docs/performance-log.md has the figures.
const SLICE: Duration = Duration::from_secs(1);

pub(crate) fn connections_for(agents: usize, per_connection: usize) -> usize {
    agents.div_ceil(per_connection.max(1)).max(1)
}

static RUN: AtomicU64 = AtomicU64::new(0);

/// A prefix that keeps session ids distinct across runs against the same server.
pub(crate) fn run_prefix(name: &str) -> String {
    format!("{name}{}", RUN.fetch_add(1, Ordering::Relaxed))
}

/// One whole pipeline session (`SESSION_RPCS`): the user speaks, which creates the session
/// and starts its silence, then the agent ends the call. Returns the latency of each RPC, or
/// what went wrong.
pub(crate) async fn run_session(api: &mut Client, id: &str) -> Result<[Duration; 4], String> {
    let t = Instant::now();
    let r = api
        .on_user_speech(user_speech(id))
        .await
        .map_err(|s| format!("OnUserSpeech: {s}"))?
        .into_inner();
    let speech = t.elapsed();
    if r.state() != SessionState::Active || !r.directives.is_empty() {
        return Err(format!("OnUserSpeech: unexpected reply {r:?}"));
    }
    let t = Instant::now();
    let r = api
        .end_call(end_call(id, "goodbye"))
        .await
        .map_err(|s| format!("EndCall: {s}"))?
        .into_inner();
    let l0 = t.elapsed();
    if r.state() != SessionState::Ending || r.tool_output.is_none() {
        return Err(format!("EndCall: unexpected reply {r:?}"));
    }
    let t = Instant::now();
    let r = api
        .on_speech_done(done(id, "goodbye"))
        .await
        .map_err(|s| format!("OnSpeechDone: {s}"))?
        .into_inner();
    let l1 = t.elapsed();
    if r.state() != SessionState::ShuttingDown
        || r.directives.len() != 1
        || r.directives[0].kind() != DirectiveKind::ShutdownSession
    {
        return Err(format!("OnSpeechDone: unexpected reply {r:?}"));
    }
    let t = Instant::now();
    let r = api
        .on_session_close(close(id, CloseReason::UserInitiated))
        .await
        .map_err(|s| format!("OnSessionClose: {s}"))?
        .into_inner();
    let l2 = t.elapsed();
    if r.state() != SessionState::Closed || r.directives.len() != 2 {
        return Err(format!("OnSessionClose: unexpected reply {r:?}"));
    }
    Ok([speech, l0, l1, l2])
}

/// Opens a realtime session into AWAITING_REPLY: EndCall with this reply timeout, then the
/// goodbye's done, which starts the deadline.
pub(crate) async fn await_reply(
    api: &mut Client,
    session: &str,
    reply_timeout: Duration,
) -> Result<(), String> {
    api.end_call(realtime_end_call_within(session, "goodbye", reply_timeout))
        .await
        .map_err(|s| format!("EndCall: {s}"))?;
    let r = api
        .on_speech_done(done(session, "goodbye"))
        .await
        .map_err(|s| format!("OnSpeechDone: {s}"))?
        .into_inner();
    if r.state() != SessionState::AwaitingReply {
        return Err(format!("OnSpeechDone: state {:?}", r.state()));
    }
    Ok(())
}

/// One `OnUserSpeech` on a session that is not ending: no directive, state ACTIVE.
pub(crate) async fn user_speaks(api: &mut Client, id: &str) -> Result<(), String> {
    let r = api
        .on_user_speech(user_speech(id))
        .await
        .map_err(|s| format!("OnUserSpeech: {s}"))?
        .into_inner();
    if r.state() != SessionState::Active || !r.directives.is_empty() {
        return Err(format!("OnUserSpeech: unexpected reply {r:?}"));
    }
    Ok(())
}

pub(crate) async fn health_check(health: &mut HealthClient<Channel>) -> Result<(), String> {
    let r = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|s| format!("Check: {s}"))?
        .into_inner();
    if r.status != ServingStatus::Serving as i32 {
        return Err(format!("Check: not serving: {r:?}"));
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Work {
    Lifecycle,
    Health,
    /// `OnUserSpeech` alone, over and over, each agent on a session of its own: the event a
    /// call sends most.
    UserSpeech,
}

/// The turns lifecycle and health take for `duration` each: slices of at most `SLICE`, each
/// kind going first in every other pair.
pub(crate) fn turns(duration: Duration) -> Vec<(Work, Duration)> {
    turns_of(duration, Work::Lifecycle, Work::Health)
}

/// The turns `a` and `b` take for `duration` each, as [`turns`] does.
pub(crate) fn turns_of(duration: Duration, a: Work, b: Work) -> Vec<(Work, Duration)> {
    let mut turns = Vec::new();
    let mut left = duration;
    let mut lifecycle_first = true;
    while !left.is_zero() {
        let slice = left.min(SLICE);
        let pair = if lifecycle_first { [a, b] } else { [b, a] };
        turns.extend(pair.map(|work| (work, slice)));
        left -= slice;
        lifecycle_first = !lifecycle_first;
    }
    turns
}

// ---------------------------------------------------------------------------------------------
// Closed loop: N agents as fast as they can for a fixed time.

#[derive(Default)]
pub(crate) struct LoopResult {
    pub(crate) sessions: u64,
    pub(crate) rpcs: u64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    elapsed: Duration,
}

impl LoopResult {
    /// Adds a later slice of the same work.
    pub(crate) fn merge(&mut self, slice: LoopResult) {
        self.sessions += slice.sessions;
        self.rpcs += slice.rpcs;
        self.errors += slice.errors;
        self.first_error = self.first_error.take().or(slice.first_error);
        self.elapsed += slice.elapsed;
    }
    pub(crate) fn rpc_rate(&self) -> f64 {
        self.rpcs as f64 / self.elapsed.as_secs_f64()
    }
    pub(crate) fn session_rate(&self) -> f64 {
        self.sessions as f64 / self.elapsed.as_secs_f64()
    }
}

pub(crate) async fn closed_loop(
    channels: &[Channel],
    concurrency: usize,
    duration: Duration,
    work: Work,
) -> LoopResult {
    let prefix = run_prefix("tp");
    let sessions = Arc::new(AtomicU64::new(0));
    let rpcs = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let start = Instant::now();
    let stop = start + duration;
    let mut tasks = Vec::new();
    for agent in 0..concurrency {
        let channel = channels[agent % channels.len()].clone();
        let (sessions, rpcs, errors, first_error) = (
            sessions.clone(),
            rpcs.clone(),
            errors.clone(),
            first_error.clone(),
        );
        let prefix = prefix.clone();
        tasks.push(tokio::spawn(async move {
            let mut api = Client::new(channel.clone());
            let mut health = HealthClient::new(channel);
            let mut n = 0u64;
            let fail = |e: String| {
                errors.fetch_add(1, Ordering::Relaxed);
                first_error.lock().unwrap().get_or_insert(e);
            };
            while Instant::now() < stop {
                match work {
                    Work::Lifecycle => {
                        let id = format!("{prefix}-{agent}-{n}");
                        n += 1;
                        match run_session(&mut api, &id).await {
                            Ok(_) => {
                                sessions.fetch_add(1, Ordering::Relaxed);
                                rpcs.fetch_add(SESSION_RPCS.len() as u64, Ordering::Relaxed);
                            }
                            Err(e) => fail(e),
                        }
                    }
                    Work::Health => match health_check(&mut health).await {
                        Ok(()) => {
                            rpcs.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => fail(e),
                    },
                    Work::UserSpeech => {
                        let id = format!("{prefix}-{agent}");
                        match user_speaks(&mut api, &id).await {
                            Ok(()) => {
                                rpcs.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => fail(e),
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("agent task");
    }
    let elapsed = start.elapsed();
    let first_error = first_error.lock().unwrap().take();
    LoopResult {
        sessions: sessions.load(Ordering::Relaxed),
        rpcs: rpcs.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        first_error,
        elapsed,
    }
}

// ---------------------------------------------------------------------------------------------
// Open loop: a fixed offered load, latency per RPC.

#[derive(Default)]
pub(crate) struct OpenLoop {
    /// Latencies by RPC name.
    pub(crate) latencies: HashMap<&'static str, Vec<Duration>>,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    /// RPCs answered, and the time they took to send and answer.
    rpcs: usize,
    elapsed: Duration,
}

impl OpenLoop {
    pub(crate) fn achieved_rpc_rate(&self) -> f64 {
        self.rpcs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Adds a later slice of the same work.
    fn merge(&mut self, slice: OpenLoop) {
        for (name, mut l) in slice.latencies {
            let all = self.latencies.entry(name).or_default();
            all.append(&mut l);
            all.sort_unstable();
        }
        self.errors += slice.errors;
        self.first_error = self.first_error.take().or(slice.first_error);
        self.rpcs += slice.rpcs;
        self.elapsed += slice.elapsed;
    }
}

/// Lifecycle and health latencies at `rate`, `duration` of each, in alternating slices.
pub(crate) async fn interleaved(
    channels: &[Channel],
    rate: f64,
    duration: Duration,
) -> (OpenLoop, OpenLoop) {
    let mut lifecycle = OpenLoop::default();
    let mut health = OpenLoop::default();
    for (work, slice) in turns(duration) {
        let r = open_loop(channels, rate, slice, work).await;
        match work {
            Work::Lifecycle | Work::UserSpeech => lifecycle.merge(r),
            Work::Health => health.merge(r),
        }
    }
    (lifecycle, health)
}

/// Offers `rate` RPCs/s for `duration`: health checks, or lifecycle sessions at rate/4 (each
/// session's four RPCs in order). Dispatch is paced by a 1 ms tick; each call's latency is
/// measured from its send.
pub(crate) async fn open_loop(
    channels: &[Channel],
    rate: f64,
    duration: Duration,
    work: Work,
) -> OpenLoop {
    let prefix = run_prefix("ol");
    let units_per_sec = match work {
        Work::Health | Work::UserSpeech => rate,
        Work::Lifecycle => rate / SESSION_RPCS.len() as f64,
    };
    let samples: Arc<Mutex<Vec<(&'static str, Duration)>>> = Arc::default();
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let start = Instant::now();
    let mut sent = 0u64;
    let mut tasks = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let elapsed = start.elapsed().min(duration);
        let due = (elapsed.as_secs_f64() * units_per_sec) as u64;
        while sent < due {
            let channel = channels[sent as usize % channels.len()].clone();
            let (samples, errors, first_error) =
                (samples.clone(), errors.clone(), first_error.clone());
            let id = format!("{prefix}-{sent}");
            tasks.push(tokio::spawn(async move {
                let result = match work {
                    Work::Health => {
                        let mut health = HealthClient::new(channel);
                        let t = Instant::now();
                        health_check(&mut health)
                            .await
                            .map(|()| vec![("health Check", t.elapsed())])
                    }
                    Work::Lifecycle => {
                        let mut api = Client::new(channel);
                        run_session(&mut api, &id)
                            .await
                            .map(|l| SESSION_RPCS.into_iter().zip(l).collect())
                    }
                    Work::UserSpeech => {
                        let mut api = Client::new(channel);
                        let t = Instant::now();
                        user_speaks(&mut api, &id)
                            .await
                            .map(|()| vec![("OnUserSpeech alone", t.elapsed())])
                    }
                };
                match result {
                    Ok(l) => samples.lock().unwrap().extend(l),
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error.lock().unwrap().get_or_insert(e);
                    }
                }
            }));
            sent += 1;
        }
        if elapsed >= duration {
            break;
        }
    }
    for t in tasks {
        t.await.expect("open-loop task");
    }
    let total = start.elapsed();
    let mut latencies: HashMap<&'static str, Vec<Duration>> = HashMap::new();
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    let count = samples.len();
    for (name, l) in samples {
        latencies.entry(name).or_default().push(l);
    }
    for v in latencies.values_mut() {
        v.sort_unstable();
    }
    let first_error = first_error.lock().unwrap().take();
    OpenLoop {
        latencies,
        errors: errors.load(Ordering::Relaxed),
        first_error,
        rpcs: count,
        elapsed: total,
    }
}

// ---------------------------------------------------------------------------------------------
// Bulk set-up: many sessions as fast as a few workers go.

/// Runs `f(i)` for i in 0..n with `concurrency` workers; returns failures and the first error.
pub(crate) async fn for_each<F, Fut>(n: usize, concurrency: usize, f: F) -> (u64, Option<String>)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (f, next, errors, first_error) =
            (f.clone(), next.clone(), errors.clone(), first_error.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    break;
                }
                if let Err(e) = f(i).await {
                    errors.fetch_add(1, Ordering::Relaxed);
                    first_error.lock().unwrap().get_or_insert(e);
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    let first_error = first_error.lock().unwrap().take();
    (errors.load(Ordering::Relaxed), first_error)
}

// ---------------------------------------------------------------------------------------------
// CPU time.

/// A process's CPU time so far (utime + stime from /proc/PID/stat), in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses): state is field 3, utime 14.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    ticks as f64 / 100.0
}

/// CPU seconds so far of (the server, this bench client): they share the cores, so a rate
/// depends on both.
pub(crate) fn cpu_both(server: &Sidecar) -> (f64, f64) {
    (cpu_seconds(server.pid()), cpu_seconds(std::process::id()))
}
