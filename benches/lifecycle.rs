//! Performance benchmark of the sidecar against its release binary, spawned as a child process
//! on loopback (or a Unix socket). Not a test: `scripts/bench` runs it with full sizes,
//! `scripts/bench-smoke` with tiny ones so CI can see that it still works.
//!
//! Sections (`--sections`, comma-separated; default all):
//! - `throughput`: N agents run whole sessions (EndCall, OnSpeechDone, OnSessionClose) for a
//!   fixed time, and the same agents call grpc.health.v1 Check (the ceiling) on the same server
//!   for as long, the two taking turns in one-second slices.
//! - `latency`: open-loop load at a fraction of the measured health ceiling, per-RPC p50/p99/p999
//!   for the lifecycle RPCs and for health, measured in alternating one-second slices.
//! - `h2load`: the same server measured by h2load (nghttp2), if installed: health Check and a
//!   repeated OnSpeechCreated.
//! - `memory`: RSS of the server before, with N sessions awaiting a far reply deadline, and after
//!   they were closed and their retention passed.
//! - `timers`: N reply deadlines spread over one second; how late SHUTDOWN_SESSION is issued and
//!   how late it arrives on the watch streams.
//! - `unix`: the throughput section over a Unix socket.
//! - `quiet`: the throughput section against a server whose end-of-call report lines are off
//!   (`--log-level info,endcall::report=off`): what is left of the gap without them. Not with
//!   `--server-flags` that set `--log-level`.
//! - `durable`: the throughput section with `--state-dir` (every event fsynced before its
//!   reply), and its cost: durable lifecycle RPC/s / in-memory lifecycle RPC/s of this run.
//!
//! Every section also records functional checks (no RPC failed, directives as expected); the run
//! ends with `checks: N passed, M failed` and exits non-zero when one failed. Targets are
//! reported as MET or MISSED and never fail the run.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use clap::Parser;
use endcall_sidecar::proto::v1::{self as pb, DirectiveKind, SessionState, ShutdownCause};
use prost::Message as _;
use tonic::transport::Channel;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

mod support;

use support::{
    close, end_call, proc_status_kb, realtime_end_call, speech_done, Api, Server, ServerArgs,
};

#[derive(Parser, Debug, Clone)]
#[command(about = "endcall-sidecar performance benchmark")]
struct Args {
    /// Sections to run, comma-separated: throughput,echo,latency,h2load,memory,timers,unix,
    /// quiet,durable (or all). `echo` (after throughput) waits for the run's 30 s timers and
    /// measures their cost.
    #[arg(long, default_value = "all")]
    sections: String,
    /// Length of each closed-loop throughput run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Warm-up before each throughput run (not counted).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Concurrent simulated agents.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Agents sharing one HTTP/2 connection.
    #[arg(long, default_value_t = 8)]
    agents_per_connection: usize,
    /// Open-loop offered load, as a fraction of the measured health ceiling.
    #[arg(long, default_value_t = 0.5)]
    latency_load: f64,
    /// Length of each open-loop latency run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    latency_duration: Duration,
    /// Offered load (RPC/s) when the throughput section did not run.
    #[arg(long, default_value_t = 5000.0)]
    latency_rate: f64,
    /// Sessions held open by the memory section.
    #[arg(long, default_value_t = 1_000_000)]
    memory_sessions: usize,
    /// Sessions whose reply deadlines fall within one second (timers section).
    #[arg(long, default_value_t = 100_000)]
    timer_sessions: usize,
    /// How many of the timer sessions get a WatchSession stream (default: all).
    #[arg(long)]
    timer_watchers: Option<usize>,
    /// Watch streams per HTTP/2 connection in the timers section.
    #[arg(long, default_value_t = 1000)]
    watchers_per_connection: usize,
    #[command(flatten)]
    server: ServerArgs,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Args {
    fn runs(&self, section: &str) -> bool {
        self.sections
            .split(',')
            .map(str::trim)
            .any(|s| s == "all" || s == section)
    }
}

// ---------------------------------------------------------------------------------------------
// Results: the table, the target verdicts and the functional checks.

#[derive(Default)]
struct Report {
    rows: Vec<(String, String, String)>,
    targets: Vec<(String, bool, String)>,
    checks: Vec<(String, bool, String)>,
}

impl Report {
    fn row(&mut self, section: &str, metric: &str, value: impl Into<String>) {
        let value = value.into();
        println!("  {section:<12} {metric:<48} {value}");
        self.rows.push((section.into(), metric.into(), value));
    }

    fn target(&mut self, name: &str, met: bool, detail: String) {
        println!(
            "  target {name}: {} ({detail})",
            if met { "MET" } else { "MISSED" }
        );
        self.targets.push((name.into(), met, detail));
    }

    fn check(&mut self, name: &str, ok: bool, detail: impl Into<String>) {
        let detail = detail.into();
        if !ok {
            println!("  CHECK FAILED {name}: {detail}");
        }
        self.checks.push((name.into(), ok, detail));
    }

    fn print(&self, args: &Args) {
        println!();
        println!(
            "endcall-sidecar benchmark: loopback, release server as a child process; client and \
             server share this machine's {} CPU core(s)",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        println!(
            "concurrency {} agents over {} HTTP/2 connection(s); throughput runs {}; latency runs {} \
             at {:.0}% of the health ceiling",
            args.concurrency,
            connections_for(args.concurrency, args.agents_per_connection),
            humantime::format_duration(args.duration),
            humantime::format_duration(args.latency_duration),
            args.latency_load * 100.0
        );
        println!();
        println!("| section | metric | value |");
        println!("| --- | --- | --- |");
        for (section, metric, value) in &self.rows {
            println!("| {section} | {metric} | {value} |");
        }
        if !self.targets.is_empty() {
            println!();
            println!("| target | verdict | measured |");
            println!("| --- | --- | --- |");
            for (name, met, detail) in &self.targets {
                println!(
                    "| {name} | {} | {detail} |",
                    if *met { "MET" } else { "MISSED" }
                );
            }
        }
        println!();
        for (name, ok, detail) in &self.checks {
            println!(
                "check {}: {name} ({detail})",
                if *ok { "ok" } else { "FAILED" }
            );
        }
        let passed = self.checks.iter().filter(|c| c.1).count();
        println!(
            "checks: {passed} passed, {} failed",
            self.checks.len() - passed
        );
    }
}

fn connections_for(agents: usize, per_connection: usize) -> usize {
    agents.div_ceil(per_connection.max(1)).max(1)
}

/// One whole pipeline session; returns the latency of each RPC, or what went wrong.
async fn run_session(api: &mut Api, id: &str) -> Result<[Duration; 3], String> {
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
        .on_speech_done(speech_done(id, "goodbye"))
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
        .on_session_close(close(id))
        .await
        .map_err(|s| format!("OnSessionClose: {s}"))?
        .into_inner();
    let l2 = t.elapsed();
    if r.state() != SessionState::Closed || r.directives.len() != 2 {
        return Err(format!("OnSessionClose: unexpected reply {r:?}"));
    }
    Ok([l0, l1, l2])
}

async fn health_check(health: &mut HealthClient<Channel>) -> Result<(), String> {
    let r = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|s| format!("Check: {s}"))?
        .into_inner();
    if r.status != tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
        return Err(format!("Check: not serving: {r:?}"));
    }
    Ok(())
}

static RUN: AtomicU64 = AtomicU64::new(0);

/// A prefix that keeps session ids distinct across runs against the same server.
fn run_prefix(name: &str) -> String {
    format!("{name}{}", RUN.fetch_add(1, Ordering::Relaxed))
}

// ---------------------------------------------------------------------------------------------
// Closed loop: N agents as fast as they can for a fixed time.

#[derive(Clone, Copy, PartialEq)]
enum Work {
    Lifecycle,
    Health,
}

#[derive(Default)]
struct LoopResult {
    sessions: u64,
    rpcs: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
}

impl LoopResult {
    /// Adds a later slice of the same work.
    fn merge(&mut self, slice: LoopResult) {
        self.sessions += slice.sessions;
        self.rpcs += slice.rpcs;
        self.errors += slice.errors;
        self.first_error = self.first_error.take().or(slice.first_error);
        self.elapsed += slice.elapsed;
    }
    fn rpc_rate(&self) -> f64 {
        self.rpcs as f64 / self.elapsed.as_secs_f64()
    }
    fn session_rate(&self) -> f64 {
        self.sessions as f64 / self.elapsed.as_secs_f64()
    }
}

async fn closed_loop(
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
            let mut api = Api::new(channel.clone());
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
                                rpcs.fetch_add(3, Ordering::Relaxed);
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

struct Throughput {
    lifecycle: LoopResult,
    health: LoopResult,
    started: Instant,
}

/// The server's CPU time so far (utime + stime from /proc/PID/stat), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
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
fn cpu_both(server: &Server) -> (f64, f64) {
    (cpu_seconds(server.pid()), cpu_seconds(std::process::id()))
}

/// With no RPCs at all, the server's CPU while the lifecycle run's 30 s playout-guard timers
/// (armed by every EndCall, never cancelled) come due, against an idle window just before.
async fn timer_echo(args: &Args, server: &Server, t: &Throughput, report: &mut Report) {
    let guard = Duration::from_secs(30);
    let from = t.started + guard - Duration::from_secs(1);
    // Lifecycle sessions start throughout the run, in its slices of both kinds.
    let to = t.started + guard + 2 * args.warmup + 2 * args.duration + Duration::from_secs(2);
    let quiet = from
        .saturating_duration_since(Instant::now())
        .min(Duration::from_secs(3));
    let q0 = cpu_seconds(server.pid());
    tokio::time::sleep(quiet).await;
    let quiet_cpu = cpu_seconds(server.pid()) - q0;
    tokio::time::sleep_until(from.into()).await;
    let c0 = cpu_seconds(server.pid());
    tokio::time::sleep_until(to.into()).await;
    let cpu = cpu_seconds(server.pid()) - c0;
    let window = to - from;
    let sessions = t.lifecycle.sessions.max(1) as f64;
    report.row(
        "tcp",
        "idle server CPU before the guard timers come due",
        format!(
            "{:.1}% of a core",
            quiet_cpu / quiet.as_secs_f64().max(1e-3) * 100.0
        ),
    );
    report.row(
        "tcp",
        "idle server CPU while the 30 s guard timers come due",
        format!(
            "{cpu:.2} s over {:.1} s ({:.0}% of a core), ~{:.1} us per earlier session",
            window.as_secs_f64(),
            cpu / window.as_secs_f64() * 100.0,
            cpu / sessions * 1e6
        ),
    );
}

async fn throughput(args: &Args, server: &Server, label: &str, report: &mut Report) -> Throughput {
    let channels = server
        .channels(connections_for(
            args.concurrency,
            args.agents_per_connection,
        ))
        .await;
    let started = Instant::now();
    // Warm-up: connections, buffers, allocator, both code paths.
    closed_loop(&channels, args.concurrency, args.warmup, Work::Lifecycle).await;
    closed_loop(&channels, args.concurrency, args.warmup, Work::Health).await;
    // CPU time of each side, per run: client and server share the cores, so the RPC rates
    // mix the two, and these tell which side a difference comes from.
    let cpu = || cpu_both(server);
    // Lifecycle and health take turns in slices (see `SLICE`), each kind going first in every
    // other pair: the ratio compares the two on the same machine.
    let (mut lifecycle, mut health) = (LoopResult::default(), LoopResult::default());
    // CPU seconds of (server, bench client) spent on each kind.
    let (mut lifecycle_cpu, mut health_cpu) = ((0.0, 0.0), (0.0, 0.0));
    for (work, slice) in turns(args.duration) {
        let before = cpu();
        let r = closed_loop(&channels, args.concurrency, slice, work).await;
        let after = cpu();
        let (total, spent) = match work {
            Work::Lifecycle => (&mut lifecycle, &mut lifecycle_cpu),
            Work::Health => (&mut health, &mut health_cpu),
        };
        total.merge(r);
        spent.0 += after.0 - before.0;
        spent.1 += after.1 - before.1;
    }
    let per_rpc = |seconds: f64, r: &LoopResult| seconds / r.rpcs.max(1) as f64 * 1e6;
    for (side, lifecycle_us, health_us) in [
        (
            "server",
            per_rpc(lifecycle_cpu.0, &lifecycle),
            per_rpc(health_cpu.0, &health),
        ),
        (
            "bench client",
            per_rpc(lifecycle_cpu.1, &lifecycle),
            per_rpc(health_cpu.1, &health),
        ),
    ] {
        report.row(
            label,
            &format!("{side} CPU per RPC: lifecycle / health"),
            format!(
                "{lifecycle_us:.1} / {health_us:.1} us ({:.2}x)",
                lifecycle_us / health_us.max(1e-9)
            ),
        );
    }
    report.row(
        label,
        "lifecycle sessions/s (EndCall+Done+Close)",
        format!("{:.0}", lifecycle.session_rate()),
    );
    report.row(
        label,
        "lifecycle RPCs/s",
        format!("{:.0}", lifecycle.rpc_rate()),
    );
    report.row(
        label,
        "health Check RPCs/s (ceiling)",
        format!("{:.0}", health.rpc_rate()),
    );
    let ratio = lifecycle.rpc_rate() / health.rpc_rate();
    report.row(
        label,
        "ratio lifecycle RPC/s / health RPC/s",
        format!("{ratio:.3}"),
    );
    report.row(
        label,
        "server RSS after the runs",
        format!("{:.1} MiB", server.rss() as f64 / 1048576.0),
    );
    for (name, r) in [("lifecycle", &lifecycle), ("health", &health)] {
        report.check(
            &format!("{label} {name}: every RPC succeeded"),
            r.errors == 0 && r.rpcs > 0,
            format!(
                "{} RPCs, {} errors{}",
                r.rpcs,
                r.errors,
                r.first_error
                    .as_ref()
                    .map_or(String::new(), |e| format!(", first: {e}"))
            ),
        );
    }
    // The target is for the in-memory sidecar as configured by default: with --state-dir an
    // fsync is on every reply, and `quiet` leaves out the end-of-call report lines.
    if label == "tcp" || label == "unix" {
        report.target(
            &format!("{label}: lifecycle RPC/s >= 0.9 x health RPC/s"),
            ratio >= 0.9,
            format!("ratio {ratio:.3}"),
        );
    }
    Throughput {
        lifecycle,
        health,
        started,
    }
}

// ---------------------------------------------------------------------------------------------
// Open loop: a fixed offered load, latency per RPC.

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn fmt_us(d: Duration) -> String {
    format!("{:.0} us", d.as_secs_f64() * 1e6)
}

#[derive(Default)]
struct OpenLoop {
    /// Latencies by RPC name.
    latencies: HashMap<&'static str, Vec<Duration>>,
    errors: u64,
    first_error: Option<String>,
    /// RPCs answered, and the time they took to send and answer.
    rpcs: usize,
    elapsed: Duration,
}

impl OpenLoop {
    fn achieved_rpc_rate(&self) -> f64 {
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

/// Lifecycle and health are measured in alternating slices this long, each kind going first
/// in every other pair, so that both meet the same machine, in the latency section and in the
/// throughput sections. Measured one after the other (lifecycle first), lifecycle alone met
/// whatever state the machine was in: after the timer-echo section's idle wait its p99 came
/// out at 1.6–2.0x health's in full runs and 9–10x in one run, where runs without that wait
/// gave 0.8–1.3x; interleaved, that same sequence gave 1.4x, with health's own p99 slowed too
/// (11.6 ms). Throughput, run as 10 s of lifecycle then 10 s of health, gave ratios from 0.51
/// to 1.06 for one binary in a noisy hour, the server's CPU per health check moving from 21
/// to 36 µs between runs.
const SLICE: Duration = Duration::from_secs(1);

/// The servers of the rate-bound sections: closed sessions are kept for their retention (5 min
/// by default), so at thousands of sessions a second the default limit (100,000) would refuse
/// sessions within a minute.
const NO_SESSION_LIMIT: [&str; 2] = ["--max-sessions", "10000000"];

/// The turns lifecycle and health take for `duration` each: slices of at most `SLICE`, each
/// kind going first in every other pair.
fn turns(duration: Duration) -> Vec<(Work, Duration)> {
    let mut turns = Vec::new();
    let mut left = duration;
    let mut lifecycle_first = true;
    while !left.is_zero() {
        let slice = left.min(SLICE);
        let pair = if lifecycle_first {
            [Work::Lifecycle, Work::Health]
        } else {
            [Work::Health, Work::Lifecycle]
        };
        turns.extend(pair.map(|work| (work, slice)));
        left -= slice;
        lifecycle_first = !lifecycle_first;
    }
    turns
}

/// Lifecycle and health latencies at `rate`, `duration` of each, in alternating slices.
async fn interleaved(channels: &[Channel], rate: f64, duration: Duration) -> (OpenLoop, OpenLoop) {
    let mut lifecycle = OpenLoop::default();
    let mut health = OpenLoop::default();
    for (work, slice) in turns(duration) {
        let r = open_loop(channels, rate, slice, work).await;
        match work {
            Work::Lifecycle => lifecycle.merge(r),
            Work::Health => health.merge(r),
        }
    }
    (lifecycle, health)
}

/// Offers `rate` RPCs/s for `duration`: health checks, or lifecycle sessions at rate/3 (each
/// session's three RPCs in order). Dispatch is paced by a 1 ms tick; each call's latency is
/// measured from its send.
async fn open_loop(channels: &[Channel], rate: f64, duration: Duration, work: Work) -> OpenLoop {
    let prefix = run_prefix("ol");
    let units_per_sec = match work {
        Work::Health => rate,
        Work::Lifecycle => rate / 3.0,
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
                        let mut api = Api::new(channel);
                        run_session(&mut api, &id).await.map(|l| {
                            vec![
                                ("EndCall", l[0]),
                                ("OnSpeechDone", l[1]),
                                ("OnSessionClose", l[2]),
                            ]
                        })
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

async fn latency(args: &Args, ceiling: f64, report: &mut Report) {
    // A fresh server: no earlier run's sessions, and no earlier run's timers coming due.
    let server = &args.server.start("127.0.0.1:0", &NO_SESSION_LIMIT);
    let channels = server
        .channels(connections_for(
            args.concurrency,
            args.agents_per_connection,
        ))
        .await;
    let rate = (ceiling * args.latency_load).max(1.0);
    report.row(
        "latency",
        "offered load (open loop)",
        format!("{rate:.0} RPC/s"),
    );
    // Warm-up at the same load.
    let warm = args.warmup.min(args.latency_duration);
    open_loop(&channels, rate, warm, Work::Health).await;
    open_loop(&channels, rate, warm, Work::Lifecycle).await;
    let (lifecycle, health) = interleaved(&channels, rate, args.latency_duration).await;
    for (name, r) in [("lifecycle", &lifecycle), ("health", &health)] {
        report.row(
            "latency",
            &format!("{name}: achieved RPC/s"),
            format!("{:.0}", r.achieved_rpc_rate()),
        );
        report.check(
            &format!("latency {name}: every RPC succeeded"),
            r.errors == 0 && !r.latencies.is_empty(),
            format!(
                "{} errors{}",
                r.errors,
                r.first_error
                    .as_ref()
                    .map_or(String::new(), |e| format!(", first: {e}"))
            ),
        );
    }
    let empty = Vec::new();
    let h = health.latencies.get("health Check").unwrap_or(&empty);
    let hp = [50.0, 99.0, 99.9].map(|p| percentile(h, p));
    report.row(
        "latency",
        "health Check p50 / p99 / p999",
        format!("{} / {} / {}", fmt_us(hp[0]), fmt_us(hp[1]), fmt_us(hp[2])),
    );
    for rpc in ["EndCall", "OnSpeechDone", "OnSessionClose"] {
        let l = lifecycle.latencies.get(rpc).unwrap_or(&empty);
        let lp = [50.0, 99.0, 99.9].map(|p| percentile(l, p));
        let ratio = |i: usize| lp[i].as_secs_f64() / hp[i].as_secs_f64().max(1e-9);
        report.row(
            "latency",
            &format!("{rpc} p50 / p99 / p999"),
            format!("{} / {} / {}", fmt_us(lp[0]), fmt_us(lp[1]), fmt_us(lp[2])),
        );
        report.row(
            "latency",
            &format!("{rpc} / health ratio at p50 / p99 / p999"),
            format!("{:.2} / {:.2} / {:.2}", ratio(0), ratio(1), ratio(2)),
        );
        report.target(
            &format!("{rpc} p99 <= 1.2 x health p99"),
            ratio(1) <= 1.2,
            format!("{} vs {} ({:.2}x)", fmt_us(lp[1]), fmt_us(hp[1]), ratio(1)),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// h2load cross-check.

/// A reply's outcome for a check's detail: "OK", or the status.
fn status_text<T>(reply: &Result<T, tonic::Status>) -> String {
    reply
        .as_ref()
        .map_or_else(|s| s.to_string(), |_| "OK".into())
}

fn h2load_installed() -> bool {
    Command::new("h2load")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    body
}

struct H2loadResult {
    rps: f64,
    succeeded: u64,
    ok_2xx: u64,
    /// Responses with a 3xx, 4xx or 5xx status.
    not_2xx: u64,
    /// Streams open at once (connections × streams each): at the time limit, up to this many
    /// responses can have their 200 headers counted without having completed.
    in_flight: u64,
    line: String,
}

fn run_h2load(
    url: &str,
    body: &std::path::Path,
    args: &Args,
    clients: usize,
) -> Result<H2loadResult, String> {
    let streams = args.concurrency.div_ceil(clients).max(1);
    let secs = args.duration.as_secs().max(1);
    let out = Command::new("h2load")
        .args([
            "-t",
            "1",
            "-c",
            &clients.to_string(),
            "-m",
            &streams.to_string(),
        ])
        .args(["-D", &secs.to_string()])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg("-d")
        .arg(body)
        .arg(url)
        .output()
        .map_err(|e| format!("h2load: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "h2load failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let finished = text
        .lines()
        .find(|l| l.starts_with("finished in"))
        .ok_or_else(|| format!("no 'finished in' line: {text}"))?;
    // "finished in 10.00s, 12345.60 req/s, 1.23MB/s"
    let rps = finished
        .split(',')
        .nth(1)
        .and_then(|s| s.trim().strip_suffix(" req/s"))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("cannot parse {finished:?}"))?;
    // "requests: 100 total, 100 started, 100 done, 100 succeeded, 0 failed, 0 errored, 0 timeout"
    let succeeded = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .and_then(|l| l.split(',').find(|p| p.contains("succeeded")))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // "status codes: 100 2xx, 0 3xx, 0 4xx, 0 5xx"
    let statuses: Vec<u64> = text
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .map(|l| {
            l.trim_start_matches("status codes:")
                .split(',')
                .filter_map(|p| p.split_whitespace().next())
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let ok_2xx = statuses.first().copied().unwrap_or(0);
    let not_2xx = statuses.iter().skip(1).sum();
    Ok(H2loadResult {
        rps,
        succeeded,
        ok_2xx,
        not_2xx,
        in_flight: (clients * streams) as u64,
        line: finished.to_owned(),
    })
}

async fn h2load(args: &Args, tonic_health_rps: Option<f64>, report: &mut Report) {
    if !h2load_installed() {
        report.row(
            "h2load",
            "h2load",
            "not installed: skipped (apt-get install nghttp2-client)",
        );
        return;
    }
    // A fresh server, as for the latency runs.
    let server = &args.server.start("127.0.0.1:0", &NO_SESSION_LIMIT);
    let Some(url) = server.url() else { return };
    let dir = std::env::temp_dir().join(format!("endcall-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let health_body = dir.join("health.bin");
    std::fs::write(
        &health_body,
        grpc_frame(&HealthCheckRequest::default().encode_to_vec()),
    )
    .expect("write body");
    let created = pb::OnSpeechCreatedRequest {
        session_id: "h2load-session".into(),
        speech_id: "reply-1".into(),
    };
    let created_body = dir.join("created.bin");
    std::fs::write(&created_body, grpc_frame(&created.encode_to_vec())).expect("write body");

    // The same messages through a real client first: h2load only sees HTTP 200, not the
    // gRPC status. h2load repeats OnSpeechCreated on a session that already had it, so the
    // real client sends it twice, and once more after the runs (below).
    let channel = server.channels(1).await.remove(0);
    let health_ok = health_check(&mut HealthClient::new(channel.clone())).await;
    let mut api = Api::new(channel);
    let created_ok = match api.on_speech_created(created.clone()).await {
        Ok(_) => api.on_speech_created(created.clone()).await,
        first => first,
    };
    report.check(
        "h2load bodies: the health request succeeds with a real client",
        health_ok.is_ok(),
        format!("{health_ok:?}"),
    );
    report.check(
        "h2load bodies: the OnSpeechCreated request succeeds with a real client, first and repeated",
        created_ok.is_ok(),
        status_text(&created_ok),
    );
    let clients = connections_for(args.concurrency, args.agents_per_connection);
    let mut results = Vec::new();
    for (name, path, body) in [
        ("health Check", "/grpc.health.v1.Health/Check", &health_body),
        (
            "OnSpeechCreated (one session, repeated)",
            "/endcall.v1.EndCallService/OnSpeechCreated",
            &created_body,
        ),
    ] {
        let result = tokio::task::block_in_place(|| {
            run_h2load(&format!("{url}{path}"), body, args, clients)
        });
        match result {
            Ok(r) => {
                report.row("h2load", &format!("{name} req/s"), format!("{:.0}", r.rps));
                report.check(
                    &format!("h2load {name}: requests succeeded with HTTP 200"),
                    r.succeeded > 0
                        && r.not_2xx == 0
                        && r.ok_2xx >= r.succeeded
                        && r.ok_2xx - r.succeeded <= r.in_flight,
                    format!(
                        "{} succeeded, {} 2xx, {} other statuses, {} streams in flight; {}",
                        r.succeeded, r.ok_2xx, r.not_2xx, r.in_flight, r.line
                    ),
                );
                results.push(r.rps);
            }
            Err(e) => report.check(&format!("h2load {name}"), false, e),
        }
    }
    let repeated_ok = api.on_speech_created(created).await;
    report.check(
        "h2load bodies: after the runs, OnSpeechCreated still succeeds with a real client",
        repeated_ok.is_ok(),
        status_text(&repeated_ok),
    );
    if let [health, created] = results[..] {
        report.row(
            "h2load",
            "ratio OnSpeechCreated / health",
            format!("{:.3}", created / health),
        );
        if let Some(tonic) = tonic_health_rps {
            report.row(
                "h2load",
                "h2load health / tonic-client health",
                format!("{:.2}", health / tonic),
            );
        }
    }
    report.row(
        "h2load",
        "settings",
        format!(
            "-t 1 -c {clients} -m {} -D {}s, gRPC body files",
            args.concurrency.div_ceil(clients),
            args.duration.as_secs().max(1)
        ),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// Memory per session.

/// Runs `f(i)` for i in 0..n with `concurrency` workers; returns failures and the first error.
async fn for_each<F, Fut>(n: usize, concurrency: usize, f: F) -> (u64, Option<String>)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
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

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

async fn memory(args: &Args, report: &mut Report) {
    let n = args.memory_sessions;
    let retention = Duration::from_secs(2);
    let max = (n + 10_000).to_string();
    let server = args.server.start(
        "127.0.0.1:0",
        &[
            "--max-sessions",
            &max,
            "--idle-expiry",
            "2h",
            "--closed-retention",
            "2s",
        ],
    );
    let channels = server
        .channels(connections_for(
            args.concurrency,
            args.agents_per_connection,
        ))
        .await;
    // Warm-up: connections, runtime, buffers; those sessions are gone after their retention.
    let warm = closed_loop(&channels, args.concurrency, args.warmup, Work::Lifecycle).await;
    closed_loop(&channels, args.concurrency, args.warmup, Work::Health).await;
    tokio::time::sleep(retention + Duration::from_secs(2)).await;
    let before = server.rss();
    let prefix = run_prefix("mem");
    let started = Instant::now();
    let chans = Arc::new(channels.clone());
    let p = prefix.clone();
    let (open_errors, open_first) = for_each(n, args.concurrency, move |i| {
        let mut api = Api::new(chans[i % chans.len()].clone());
        let id = format!("{p}-{i:07}");
        async move { await_reply(&mut api, &id, Duration::from_secs(600)).await }
    })
    .await;
    let open_time = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let open = server.rss();
    let per_session = open.saturating_sub(before) as f64 / n.max(1) as f64;

    let chans = Arc::new(channels.clone());
    let p = prefix.clone();
    let (close_errors, close_first) = for_each(n, args.concurrency, move |i| {
        let mut api = Api::new(chans[i % chans.len()].clone());
        let id = format!("{p}-{i:07}");
        async move {
            let r = api
                .on_session_close(close(&id))
                .await
                .map_err(|s| format!("OnSessionClose: {s}"))?
                .into_inner();
            if r.state() != SessionState::Closed || r.directives.len() != 2 {
                return Err(format!("OnSessionClose: unexpected {r:?}"));
            }
            Ok(())
        }
    })
    .await;
    let closed = server.rss();
    tokio::time::sleep(retention + Duration::from_secs(1)).await;
    // The allocator and the tables give memory back over a few seconds: sample until RSS is
    // within 10% of its start, or 10 s have passed.
    let settle_started = Instant::now();
    let mut after = server.rss();
    while after as f64 > before as f64 * 1.1 && settle_started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = server.rss();
    }
    let settled_in = settle_started.elapsed();
    // Gone for good: NOT_FOUND after the retention.
    let mut api = Api::new(channels[0].clone());
    let gone = api
        .get_session(pb::GetSessionRequest {
            session_id: format!("{prefix}-{:07}", 0),
        })
        .await;
    let hwm = proc_status_kb(server.pid(), "VmHWM:") * 1024;

    report.row(
        "memory",
        "sessions opened (AWAITING_REPLY, 600 s deadline)",
        n.to_string(),
    );
    report.row(
        "memory",
        "open rate (EndCall+Done per session)",
        format!("{:.0} sessions/s", n as f64 / open_time.as_secs_f64()),
    );
    report.row("memory", "RSS before", mib(before));
    report.row("memory", "RSS with the sessions open", mib(open));
    report.row(
        "memory",
        "bytes of RSS per open session",
        format!("{per_session:.0}"),
    );
    report.row("memory", "RSS right after closing them all", mib(closed));
    report.row(
        "memory",
        "RSS after the 2 s closed retention (+1 s, then up to 10 s)",
        format!(
            "{} ({:+.1}% vs before, {:.1} s after the retention)",
            mib(after),
            (after as f64 / before as f64 - 1.0) * 100.0,
            (settled_in + Duration::from_secs(1)).as_secs_f64()
        ),
    );
    report.row("memory", "peak RSS (VmHWM)", mib(hwm));
    report.check(
        "memory: every session opened into AWAITING_REPLY",
        open_errors == 0 && warm.errors == 0,
        format!("{open_errors} errors {open_first:?}"),
    );
    report.check(
        "memory: every session closed",
        close_errors == 0,
        format!("{close_errors} errors {close_first:?}"),
    );
    report.check(
        "memory: closed sessions are gone after their retention",
        gone.as_ref()
            .is_err_and(|s| s.code() == tonic::Code::NotFound),
        format!(
            "GetSession: {:?}",
            gone.map(|_| "found").map_err(|s| s.code())
        ),
    );
    report.target(
        "<= 512 bytes RSS per open session",
        per_session <= 512.0,
        format!("{per_session:.0} bytes with {n} sessions"),
    );
    let returned = after as f64 <= before as f64 * 1.10;
    report.target(
        "RSS returns to within 10% of its start",
        returned,
        format!("{} -> {} -> {}", mib(before), mib(open), mib(after)),
    );
}

// ---------------------------------------------------------------------------------------------
// Timer accuracy at scale.

fn unix_micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn ts_micros(t: &prost_types::Timestamp) -> i64 {
    t.seconds * 1_000_000 + i64::from(t.nanos) / 1000
}

fn lateness_row(report: &mut Report, metric: &str, mut v: Vec<i64>) -> Option<i64> {
    if v.is_empty() {
        report.row("timers", metric, "no samples");
        return None;
    }
    v.sort_unstable();
    let p = |q: f64| {
        let rank = ((q / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    };
    let ms = |us: i64| format!("{:.2} ms", us as f64 / 1000.0);
    report.row(
        "timers",
        metric,
        format!(
            "p50 {} / p99 {} / max {} (min {}, n={})",
            ms(p(50.0)),
            ms(p(99.0)),
            ms(*v.last().unwrap()),
            ms(v[0]),
            v.len()
        ),
    );
    Some(p(99.0))
}

async fn timers(args: &Args, rate_estimate: Option<f64>, report: &mut Report) {
    let n = args.timer_sessions;
    let watchers = args.timer_watchers.unwrap_or(n).min(n);
    let max = (n + 10_000).to_string();
    let server = args.server.start(
        "127.0.0.1:0",
        &["--max-sessions", &max, "--idle-expiry", "2h"],
    );
    let prefix = run_prefix("tm");
    let id = move |i: usize| format!("{prefix}-{i:07}");

    // Phase A: one watch stream per watched session (this creates the session).
    let watch_channels = server
        .channels(connections_for(watchers, args.watchers_per_connection))
        .await;
    let rss_before = server.rss();
    let arrivals: Arc<Mutex<Vec<Arrival>>> = Arc::default();
    let setup_start = Instant::now();
    let mut readers = Vec::new();
    {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let chans = Arc::new(watch_channels.clone());
        let id = id.clone();
        let (errors, first) = for_each(watchers, args.concurrency, move |i| {
            let mut api = Api::new(chans[i % chans.len()].clone());
            let tx = tx.clone();
            let session = id(i);
            async move {
                let stream = api
                    .watch_session(pb::WatchSessionRequest {
                        session_id: session,
                        after_seq: 0,
                    })
                    .await
                    .map_err(|s| format!("WatchSession: {s}"))?
                    .into_inner();
                let _ = tx.send((i, stream));
                Ok(())
            }
        })
        .await;
        report.check(
            "timers: every watch stream opened",
            errors == 0,
            format!("{errors} errors {first:?}"),
        );
        while let Ok((i, mut stream)) = rx.try_recv() {
            let arrivals = arrivals.clone();
            readers.push(tokio::spawn(async move {
                while let Ok(Some(d)) = stream.message().await {
                    let now = SystemTime::now();
                    arrivals
                        .lock()
                        .unwrap()
                        .push((i, now, d.kind(), d.cause(), d.seq));
                }
            }));
        }
    }
    let phase_a = setup_start.elapsed();

    // Phase B: EndCall (realtime, auto reply) with a per-session reply timeout chosen so that
    // the deadlines spread evenly over one second starting at `window`, then OnSpeechDone.
    let channels = server
        .channels(connections_for(
            args.concurrency,
            args.agents_per_connection,
        ))
        .await;
    let rate = rate_estimate.unwrap_or(5000.0).max(500.0);
    let lead = Duration::from_secs_f64((2.5 * 2.0 * n as f64 / rate).max(3.0));
    let window = SystemTime::now() + lead;
    let chans = Arc::new(channels.clone());
    let late_setups = Arc::new(AtomicU64::new(0));
    let reply_timeouts: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let (ls, rts, id2) = (late_setups.clone(), reply_timeouts.clone(), id.clone());
    let (setup_errors, setup_first) = for_each(n, args.concurrency, move |i| {
        let mut api = Api::new(chans[i % chans.len()].clone());
        let session = id2(i);
        let target = window + Duration::from_secs_f64(i as f64 / n as f64);
        let timeout = target
            .duration_since(SystemTime::now())
            .unwrap_or_else(|_| {
                ls.fetch_add(1, Ordering::Relaxed);
                Duration::from_millis(1)
            });
        let timeout = Duration::from_micros(timeout.as_micros() as u64);
        rts[i].store(timeout.as_micros() as u64, Ordering::Relaxed);
        async move { await_reply(&mut api, &session, timeout).await }
    })
    .await;
    let setup_done = SystemTime::now();
    let phase_b = setup_start.elapsed() - phase_a;
    let rss_armed = server.rss();
    report.check(
        "timers: every session reached AWAITING_REPLY",
        setup_errors == 0,
        format!("{setup_errors} errors {setup_first:?}"),
    );
    report.check(
        "timers: every session was set up before its deadline window",
        late_setups.load(Ordering::Relaxed) == 0 && setup_done < window,
        format!(
            "{} late; setup ended {:.1}s {} the window",
            late_setups.load(Ordering::Relaxed),
            window
                .duration_since(setup_done)
                .or_else(|e| Ok::<_, ()>(e.duration()))
                .unwrap()
                .as_secs_f64(),
            if setup_done < window {
                "before"
            } else {
                "after"
            }
        ),
    );

    // What the window costs each side: from its start to the last arrival.
    let to_window = window.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(to_window).await;
    let cpu_at_window = cpu_both(&server);

    // Wait for the window to pass, then for the stragglers.
    let until_end = (window + Duration::from_secs(1))
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(until_end).await;
    let wait_start = Instant::now();
    loop {
        let got = arrivals.lock().unwrap().len();
        if got >= watchers || wait_start.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu_after_window = cpu_both(&server);
    let window_cpu = (
        cpu_after_window.0 - cpu_at_window.0,
        cpu_after_window.1 - cpu_at_window.1,
    );
    let rss_fired = server.rss();

    // Exact deadlines from the server's own records: the OnSpeechDone's time + reply timeout.
    let records: Arc<Mutex<Vec<Option<Record>>>> = Arc::new(Mutex::new(vec![None; n]));
    let chans = Arc::new(channels.clone());
    let (rec, rts, id3) = (records.clone(), reply_timeouts.clone(), id.clone());
    let (get_errors, get_first) = for_each(n, args.concurrency, move |i| {
        let mut api = Api::new(chans[i % chans.len()].clone());
        let session = id3(i);
        let (rec, rts) = (rec.clone(), rts.clone());
        async move {
            let r = api
                .get_session(pb::GetSessionRequest {
                    session_id: session,
                })
                .await
                .map_err(|s| format!("GetSession: {s}"))?
                .into_inner();
            let done_at = r
                .timeline
                .iter()
                .find(|e| {
                    matches!(&e.entry, Some(pb::timeline_entry::Entry::Event(t)) if t.starts_with("speech_done"))
                })
                .and_then(|e| e.at.as_ref())
                .map(ts_micros)
                .ok_or("no speech_done in the timeline")?;
            let deadline = done_at + rts[i].load(Ordering::Relaxed) as i64;
            let shutdown = r
                .directives
                .iter()
                .find(|d| d.kind() == DirectiveKind::ShutdownSession);
            let issued = shutdown.and_then(|d| d.issued_at.as_ref()).map(ts_micros);
            let cause = shutdown.map_or(ShutdownCause::Unspecified, |d| d.cause());
            rec.lock().unwrap()[i] = Some((deadline, issued, cause));
            Ok(())
        }
    })
    .await;
    let records = std::mem::take(&mut *records.lock().unwrap());
    let arrivals = std::mem::take(&mut *arrivals.lock().unwrap());
    for r in &readers {
        r.abort();
    }

    let mut issued_late = Vec::new();
    let mut wrong = 0usize;
    let (mut first_deadline, mut last_deadline) = (i64::MAX, i64::MIN);
    for (deadline, issued, cause) in records.iter().flatten() {
        first_deadline = first_deadline.min(*deadline);
        last_deadline = last_deadline.max(*deadline);
        match issued {
            Some(at) if *cause == ShutdownCause::ReplyTimeout => issued_late.push(at - deadline),
            _ => wrong += 1,
        }
    }
    let mut arrival_late = Vec::new();
    let mut stream_wrong = 0usize;
    for (i, at, kind, cause, seq) in &arrivals {
        if *kind != DirectiveKind::ShutdownSession
            || *cause != ShutdownCause::ReplyTimeout
            || *seq != 1
        {
            stream_wrong += 1;
            continue;
        }
        if let Some((deadline, _, _)) = records[*i] {
            arrival_late.push(unix_micros(*at) - deadline);
        }
    }
    report.row(
        "timers",
        "sessions / watch streams",
        format!(
            "{n} / {watchers} (over {} connections)",
            watch_channels.len()
        ),
    );
    report.row(
        "timers",
        "set-up time: watch streams / EndCall+Done",
        format!(
            "{:.1} s / {:.1} s",
            phase_a.as_secs_f64(),
            phase_b.as_secs_f64()
        ),
    );
    report.row(
        "timers",
        "spread of the actual deadlines",
        format!("{:.3} s", (last_deadline - first_deadline) as f64 / 1e6),
    );
    let p99_issued = lateness_row(
        report,
        "SHUTDOWN_SESSION issued_at - deadline (all)",
        issued_late.clone(),
    );
    let p99_arrival = lateness_row(
        report,
        "arrival on the stream - deadline (watched)",
        arrival_late.clone(),
    );
    let per_directive = |seconds: f64| seconds * 1e6 / watchers.max(1) as f64;
    report.row(
        "timers",
        "CPU from the window's start to the last arrival: server / bench client",
        format!(
            "{:.2} s / {:.2} s ({:.1} / {:.1} us per watched directive)",
            window_cpu.0,
            window_cpu.1,
            per_directive(window_cpu.0),
            per_directive(window_cpu.1)
        ),
    );
    report.row(
        "timers",
        "server RSS before / armed / after firing",
        format!(
            "{} / {} / {}",
            mib(rss_before),
            mib(rss_armed),
            mib(rss_fired)
        ),
    );
    // Each session here also has its watch stream open: HTTP/2 stream state and the stream's
    // own, on top of the session (the memory section measures a session alone).
    report.row(
        "timers",
        "bytes of RSS per armed session, with the watch streams",
        format!(
            "{:.0} ({watchers} of the {n} sessions watched)",
            rss_armed.saturating_sub(rss_before) as f64 / n.max(1) as f64
        ),
    );
    report.check(
        "timers: every session issued SHUTDOWN_SESSION (REPLY_TIMEOUT)",
        get_errors == 0 && wrong == 0 && issued_late.len() == n,
        format!(
            "{} of {n}; {wrong} without; GetSession errors {get_errors} {get_first:?}",
            issued_late.len()
        ),
    );
    report.check(
        "timers: every watch stream received it",
        stream_wrong == 0 && arrival_late.len() == watchers,
        format!(
            "{} of {watchers} arrived, {stream_wrong} unexpected",
            arrival_late.len()
        ),
    );
    report.check(
        "timers: no directive before its deadline",
        issued_late.iter().all(|l| *l >= 0),
        format!("min {:?} us", issued_late.iter().min()),
    );
    let worst = p99_arrival
        .into_iter()
        .chain(p99_issued)
        .max()
        .unwrap_or(i64::MAX);
    report.target(
        "reply-timeout directives <= 10 ms late at p99 (100k deadlines in 1 s)",
        worst <= 10_000 && n >= 100_000,
        format!(
            "p99 issued {:.2} ms, p99 on stream {:.2} ms, {n} deadlines in {:.3} s",
            p99_issued.unwrap_or(0) as f64 / 1000.0,
            p99_arrival.unwrap_or(0) as f64 / 1000.0,
            (last_deadline - first_deadline) as f64 / 1e6
        ),
    );
}

// ---------------------------------------------------------------------------------------------

fn print_sizes(report: &mut Report) {
    use endcall_sidecar::{domain, machine};
    report.row(
        "sizes",
        "size_of Session / IssuedDirective / TimelineEntry",
        format!(
            "{} / {} / {} bytes",
            std::mem::size_of::<machine::Session>(),
            std::mem::size_of::<domain::IssuedDirective>(),
            std::mem::size_of::<machine::TimelineEntry>()
        ),
    );
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut report = Report::default();
    println!(
        "server binary: {} (pid of each server in its section)",
        args.server.bin().display()
    );
    runtime.block_on(async {
        print_sizes(&mut report);
        let mut lifecycle_rate = None;
        let mut health_rate = None;
        if args.runs("throughput") {
            let server = args.server.start("127.0.0.1:0", &NO_SESSION_LIMIT);
            println!("TCP server pid {} at {:?}", server.pid(), server.addr);
            let t = throughput(&args, &server, "tcp", &mut report).await;
            lifecycle_rate = Some(t.lifecycle.rpc_rate());
            health_rate = Some(t.health.rpc_rate());
            if args.runs("echo") {
                timer_echo(&args, &server, &t, &mut report).await;
            }
        }
        if args.runs("latency") {
            latency(&args, health_rate.unwrap_or(args.latency_rate), &mut report).await;
        }
        if args.runs("h2load") {
            h2load(&args, health_rate, &mut report).await;
        }
        if args.runs("unix") {
            let path =
                std::env::temp_dir().join(format!("endcall-bench-{}.sock", std::process::id()));
            let server = args
                .server
                .start(&format!("unix:{}", path.display()), &NO_SESSION_LIMIT);
            throughput(&args, &server, "unix", &mut report).await;
        }
        if args.runs("quiet") {
            let server = args.server.start(
                "127.0.0.1:0",
                &[
                    &NO_SESSION_LIMIT[..],
                    &["--log-level", "info,endcall::report=off"],
                ]
                .concat(),
            );
            throughput(&args, &server, "quiet", &mut report).await;
        }
        if args.runs("durable") {
            durable(&args, lifecycle_rate, &mut report).await;
        }
        if args.runs("memory") {
            memory(&args, &mut report).await;
        }
        if args.runs("timers") {
            timers(&args, lifecycle_rate, &mut report).await;
        }
    });
    report.print(&args);
    let failed = report.checks.iter().any(|c| !c.1);
    runtime.shutdown_timeout(Duration::from_secs(1));
    std::process::exit(if failed { 1 } else { 0 });
}

/// The throughput section with every event journaled and fsynced before its reply, on the
/// build directory's disk (not a tmpfs, which would make fsync free).
async fn durable(args: &Args, in_memory: Option<f64>, report: &mut Report) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("endcall-bench-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let state_dir = dir.display().to_string();
    let server = args.server.start(
        "127.0.0.1:0",
        &[&NO_SESSION_LIMIT[..], &["--state-dir", &state_dir]].concat(),
    );
    println!(
        "durable server pid {} with --state-dir {state_dir}",
        server.pid()
    );
    let t = throughput(args, &server, "durable", report).await;
    if let Some(in_memory) = in_memory {
        report.row(
            "durable",
            "durable / in-memory lifecycle RPC/s (this run)",
            format!("{:.3}", t.lifecycle.rpc_rate() / in_memory),
        );
    }
    let on_disk: u64 = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    report.row("durable", "journal on disk after the runs", mib(on_disk));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A directive as a watch stream received it: (session index, arrival time, kind, cause, seq).
type Arrival = (usize, SystemTime, DirectiveKind, ShutdownCause, u64);

/// What GetSession says of a timed session: (the intended deadline in µs since the epoch, when
/// SHUTDOWN_SESSION was issued if it was, its cause).
type Record = (i64, Option<i64>, ShutdownCause);

/// Opens a realtime session into AWAITING_REPLY: EndCall with this reply timeout, then the
/// goodbye's done, which starts the deadline.
async fn await_reply(api: &mut Api, session: &str, reply_timeout: Duration) -> Result<(), String> {
    api.end_call(realtime_end_call(session, "goodbye", reply_timeout))
        .await
        .map_err(|s| format!("EndCall: {s}"))?;
    let r = api
        .on_speech_done(speech_done(session, "goodbye"))
        .await
        .map_err(|s| format!("OnSpeechDone: {s}"))?
        .into_inner();
    if r.state() != SessionState::AwaitingReply {
        return Err(format!("OnSpeechDone: state {:?}", r.state()));
    }
    Ok(())
}
