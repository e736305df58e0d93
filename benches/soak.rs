//! Soak test of the release binary (a child process, on loopback): thousands of simulated
//! agents run whole sessions, each with a watch stream, for `--duration`, while the server's
//! RSS (`/proc/PID/status`) and its live tokio tasks, open watchers and live sessions (scraped
//! from `--metrics-listen`) are sampled. `scripts/soak` runs it.
//!
//! Each agent cycles through five kinds of session:
//! - `pipeline`: EndCall, the goodbye's done (SHUTDOWN_SESSION, tool turn done), close.
//! - `reply_timeout`: a realtime EndCall whose reply never comes: SHUTDOWN_SESSION arrives on the
//!   stream after `--reply-timeout`, then close.
//! - `reply_played`: a realtime EndCall whose reply is created and plays out, then close.
//! - `reconnect`: like `reply_timeout`, but the watcher drops its stream after the first
//!   directive and reconnects with `after_seq` for the rest.
//! - `stuck`: a pipeline session whose watcher never reads its stream, then drops it.
//!
//! Checks, printed as `checks: N passed, M failed` (non-zero exit on a failure):
//! - every session reached its expected outcome (directives, causes, sequence numbers, the stream's
//!   end), and no RPC failed;
//! - thousands of watchers were open at once;
//! - memory is flat after warm-up: the load is split in thirds, the first being warm-up; the
//!   median RSS of the last third is at most `--rss-growth` (1.20) times the median RSS of the
//!   first third's second half, and over the last two thirds RSS rises, at its Theil–Sen slope
//!   (robust to a transient spike, not to a steady leak), by at most `--rss-per-session` (384)
//!   bytes per session served. A leaked session costs about 850 bytes (a session, its map slot
//!   and its timer entry: the benchmark's memory section), so it shows; the allocator's own
//!   warm-up, which commits memory in chunks of a few MiB during the first minute and then
//!   levels off (docs/performance.md has the long runs), stays under both bounds;
//! - after the load stops, open watchers and live sessions return to 0 and live tasks to the
//!   baseline taken before the load (with the same connections open), within 15 s;
//! - a webhook receiver is attached (`support::receiver`, verifying every signature; it closes
//!   connections idle for 2 s, so the sidecar's pooled connections to it end after the load):
//!   every session that ended was delivered, verified, within the same 15 s.

// A bench is test code: a failed expectation (the runtime, a free port) ends the run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use clap::Parser;
use endcall_sidecar::proto::v1::{
    self as pb, CloseReason, DirectiveKind, SessionState, ShutdownCause,
};
use endcall_testkit::{
    close, created, done, end_call, process::Sidecar, realtime_end_call_within, requests, Client,
};
use support::{
    free_port, metric,
    receiver::{secret_file, Behaviour, Receiver},
    scrape, ServerArgs,
};
use tonic::Streaming;

#[derive(Parser, Debug, Clone)]
#[command(about = "endcall-sidecar soak test")]
struct Args {
    /// How long the load runs (then the agents finish their current session). The default
    /// keeps the test command's run under 2 minutes with the build.
    #[arg(long, default_value = "45s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrent simulated agents, each with one session (and its watch stream) at a time.
    #[arg(long, default_value_t = 2000)]
    agents: usize,
    /// Agents sharing one HTTP/2 connection.
    #[arg(long, default_value_t = 50)]
    agents_per_connection: usize,
    /// Pause between a session's events (a call, shortened).
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    think: Duration,
    /// The server's --reply-timeout, which the realtime sessions wait out.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    reply_timeout: Duration,
    /// How often RSS and the metrics are sampled.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    sample_every: Duration,
    /// Median RSS of the last third over that of the first third's second half, at most.
    #[arg(long, default_value_t = 1.20)]
    rss_growth: f64,
    /// RSS rise over the last two thirds (at the Theil–Sen slope), at most, in bytes per
    /// session served in them.
    #[arg(long, default_value_t = 384.0)]
    rss_per_session: f64,
    /// Also write every sample to this CSV file (t_s, rss_bytes, alive_tasks, watchers,
    /// live_sessions, sessions_completed).
    #[arg(long)]
    csv: Option<PathBuf>,
    #[command(flatten)]
    server: ServerArgs,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Longest wait for a directive or a stream's end; only reached when something is wrong.
const PATIENCE: Duration = Duration::from_secs(15);
/// The reply timeout of sessions whose reply does come.
const REPLY_COMES_WITHIN: Duration = Duration::from_secs(60);
/// How long after the load the server has to return to its baseline.
const SETTLE: Duration = Duration::from_secs(15);
/// Live tasks allowed over the baseline after the load: the metrics scrape's own connection
/// task may be alive when the gauge is sampled.
const TASK_SLACK: f64 = 2.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Scenario {
    Pipeline,
    ReplyTimeout,
    ReplyPlayed,
    Reconnect,
    Stuck,
}

impl Scenario {
    const ALL: [Scenario; 5] = [
        Scenario::Pipeline,
        Scenario::ReplyTimeout,
        Scenario::ReplyPlayed,
        Scenario::Reconnect,
        Scenario::Stuck,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Pipeline => "pipeline",
            Scenario::ReplyTimeout => "reply_timeout",
            Scenario::ReplyPlayed => "reply_played",
            Scenario::Reconnect => "reconnect",
            Scenario::Stuck => "stuck",
        }
    }
}

#[derive(Default)]
struct Tally {
    ok: [AtomicU64; 5],
    failed: [AtomicU64; 5],
    first_error: Mutex<Option<String>>,
}

impl Tally {
    fn completed(&self) -> u64 {
        self.ok.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }

    fn record(&self, scenario: Scenario, result: Result<(), String>) {
        let i = scenario as usize;
        match result {
            Ok(()) => self.ok[i].fetch_add(1, Ordering::Relaxed),
            Err(err) => {
                let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
                first.get_or_insert_with(|| format!("{}: {err}", scenario.name()));
                self.failed[i].fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

fn rpc<T>(what: &str, r: Result<tonic::Response<T>, tonic::Status>) -> Result<T, String> {
    r.map(tonic::Response::into_inner)
        .map_err(|s| format!("{what}: {:?} {}", s.code(), s.message()))
}

async fn watch(
    api: &mut Client,
    id: &str,
    after_seq: u64,
) -> Result<Streaming<pb::Directive>, String> {
    rpc(
        "WatchSession",
        api.watch_session(requests::watch(id, after_seq)).await,
    )
}

/// The next `n` directives on a stream, as (seq, kind, cause).
async fn read(
    stream: &mut Streaming<pb::Directive>,
    n: usize,
) -> Result<Vec<(u64, DirectiveKind, ShutdownCause)>, String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let d = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .map_err(|_| format!("no directive within {PATIENCE:?} (got {out:?})"))?
            .map_err(|s| format!("stream: {:?} {}", s.code(), s.message()))?
            .ok_or_else(|| format!("stream ended early (got {out:?})"))?;
        out.push((d.seq, d.kind(), d.cause()));
    }
    Ok(out)
}

async fn ends(stream: &mut Streaming<pb::Directive>) -> Result<(), String> {
    match tokio::time::timeout(PATIENCE, stream.message()).await {
        Err(_) => Err("the stream did not end after the close".into()),
        Ok(Ok(None)) => Ok(()),
        Ok(Ok(Some(d))) => Err(format!("unexpected directive {d:?}")),
        Ok(Err(s)) => Err(format!("stream ended with {:?} {}", s.code(), s.message())),
    }
}

fn expect_close_tail(
    got: &[(u64, DirectiveKind, ShutdownCause)],
    first_seq: u64,
) -> Result<(), String> {
    let kinds: Vec<_> = got.iter().map(|d| (d.0, d.1)).collect();
    let want = vec![
        (first_seq, DirectiveKind::DeleteRoom),
        (first_seq + 1, DirectiveKind::ShutdownJob),
    ];
    (kinds == want)
        .then_some(())
        .ok_or_else(|| format!("close directives {got:?}"))
}

fn expect_shutdown(
    got: &[(u64, DirectiveKind, ShutdownCause)],
    cause: ShutdownCause,
) -> Result<(), String> {
    match got.first() {
        Some(&(1, DirectiveKind::ShutdownSession, c)) if c == cause => Ok(()),
        _ => Err(format!(
            "expected SHUTDOWN_SESSION {cause:?} as seq 1, got {got:?}"
        )),
    }
}

/// The worker's side of one session: its events, with `think` between them.
async fn session(
    api: &mut Client,
    args: &Args,
    id: &str,
    scenario: Scenario,
) -> Result<(), String> {
    let think = || tokio::time::sleep(args.think);
    let mut stream = watch(api, id, 0).await?;
    think().await;
    let realtime = matches!(
        scenario,
        Scenario::ReplyTimeout | Scenario::ReplyPlayed | Scenario::Reconnect
    );
    let request = if scenario == Scenario::ReplyPlayed {
        // Its reply comes: a timeout far enough that a loaded machine cannot make it race.
        realtime_end_call_within(id, "bye", REPLY_COMES_WITHIN)
    } else if realtime {
        realtime_end_call_within(id, "bye", args.reply_timeout)
    } else {
        end_call(id, "bye")
    };
    rpc("EndCall", api.end_call(request).await)?;
    think().await;
    let goodbye_done = rpc("OnSpeechDone", api.on_speech_done(done(id, "bye")).await)?;
    let expected_state = if realtime {
        SessionState::AwaitingReply
    } else {
        SessionState::ShuttingDown
    };
    if goodbye_done.state() != expected_state {
        return Err(format!("OnSpeechDone: state {:?}", goodbye_done.state()));
    }
    match scenario {
        Scenario::Pipeline | Scenario::Stuck => {}
        Scenario::ReplyTimeout => {
            expect_shutdown(&read(&mut stream, 1).await?, ShutdownCause::ReplyTimeout)?;
        }
        Scenario::Reconnect => {
            expect_shutdown(&read(&mut stream, 1).await?, ShutdownCause::ReplyTimeout)?;
            // The stream drops; the watcher reconnects after the last seq it received.
            drop(stream);
            stream = watch(api, id, 1).await?;
        }
        Scenario::ReplyPlayed => {
            rpc(
                "OnSpeechCreated",
                api.on_speech_created(created(id, "reply")).await,
            )?;
            think().await;
            let r = rpc("OnSpeechDone", api.on_speech_done(done(id, "reply")).await)?;
            if r.directives.len() != 1 || r.directives[0].cause() != ShutdownCause::ReplyPlayedOut {
                return Err(format!("reply done: {r:?}"));
            }
        }
    }
    let closed = rpc(
        "OnSessionClose",
        api.on_session_close(close(id, CloseReason::UserInitiated))
            .await,
    )?;
    if closed.state() != SessionState::Closed || closed.directives.len() != 2 {
        return Err(format!("OnSessionClose: {closed:?}"));
    }
    match scenario {
        Scenario::Pipeline => {
            let got = read(&mut stream, 3).await?;
            expect_shutdown(&got, ShutdownCause::ToolTurnDone)?;
            expect_close_tail(&got[1..], 2)?;
        }
        Scenario::ReplyPlayed => {
            let got = read(&mut stream, 3).await?;
            expect_shutdown(&got, ShutdownCause::ReplyPlayedOut)?;
            expect_close_tail(&got[1..], 2)?;
        }
        Scenario::ReplyTimeout | Scenario::Reconnect => {
            expect_close_tail(&read(&mut stream, 2).await?, 2)?;
        }
        Scenario::Stuck => {
            // Never read: the directives sit unread until the client gives up.
            if goodbye_done.directives.len() != 1 {
                return Err(format!("OnSpeechDone: {goodbye_done:?}"));
            }
            think().await;
            return Ok(());
        }
    }
    ends(&mut stream).await
}

// ---------------------------------------------------------------------------------------------
// Sampling.

#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    at: Duration,
    rss: u64,
    alive_tasks: f64,
    watchers: f64,
    live_sessions: f64,
    /// Sessions the server had ended by then (`endcall_sessions_ended_total`).
    ended: f64,
    /// Sessions the agents had completed by then.
    sessions: u64,
}

async fn sample(server: &Sidecar, metrics: &str, started: Instant) -> Result<Sample, String> {
    let text = scrape(metrics).await?;
    Ok(Sample {
        at: started.elapsed(),
        rss: server.rss(),
        alive_tasks: metric(&text, "endcall_runtime_alive_tasks", None),
        watchers: metric(&text, "endcall_watchers", None),
        live_sessions: metric(&text, "endcall_sessions", Some("state=\"closed\"")),
        ended: metric(&text, "endcall_sessions_ended_total", None),
        sessions: 0,
    })
}

/// The Theil–Sen slope of RSS over time (the median of the slopes between every two samples),
/// in bytes per second: a leak's steady rise shows, one transient spike does not.
fn slope(samples: &[Sample]) -> f64 {
    let mut slopes = Vec::new();
    for (i, a) in samples.iter().enumerate() {
        for b in &samples[i + 1..] {
            let dt = b.at.as_secs_f64() - a.at.as_secs_f64();
            if dt > 0.0 {
                slopes.push((b.rss as f64 - a.rss as f64) / dt);
            }
        }
    }
    median(&mut slopes)
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn median_rss(samples: &[Sample]) -> f64 {
    median(&mut samples.iter().map(|s| s.rss as f64).collect::<Vec<_>>())
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

struct Checks(Vec<(String, bool, String)>);

impl Checks {
    fn check(&mut self, name: &str, ok: bool, detail: String) {
        println!("{} {name}: {detail}", if ok { "ok:" } else { "FAILED:" });
        self.0.push((name.to_owned(), ok, detail));
    }
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ok = runtime.block_on(soak(args));
    runtime.shutdown_timeout(Duration::from_secs(1));
    std::process::exit(if ok { 0 } else { 1 });
}

async fn soak(args: Args) -> bool {
    let metrics = format!("127.0.0.1:{}", free_port());
    let reply_timeout = humantime::format_duration(args.reply_timeout).to_string();
    let receiver = Receiver::start(Behaviour::default()).await;
    let secret = secret_file().display().to_string();
    let server = args.server.start(
        "127.0.0.1:0",
        &[
            "--reply-timeout",
            &reply_timeout,
            "--closed-retention",
            "2s",
            "--metrics-listen",
            &metrics,
            "--log-level",
            "warn",
            "--webhook-url",
            &receiver.url,
            "--webhook-secret-file",
            &secret,
        ],
    );
    println!("server binary: {}", args.server.bin().display());
    println!(
        "soak: {} agents over {} connections, {} between a session's events, reply timeout {}, for {}; server pid {}",
        args.agents,
        args.agents.div_ceil(args.agents_per_connection.max(1)),
        humantime::format_duration(args.think),
        reply_timeout,
        humantime::format_duration(args.duration),
        server.pid()
    );
    let connections = args.agents.div_ceil(args.agents_per_connection.max(1));
    let channels = server.channels(connections).await;
    let started = Instant::now();
    let mut checks = Checks(Vec::new());

    // The baseline: connections open, no load, the task gauge sampled since they opened.
    tokio::time::sleep(args.sample_every * 2 + Duration::from_millis(200)).await;
    let baseline = match sample(&server, &metrics, started).await {
        Ok(s) => s,
        Err(err) => {
            checks.check("metrics are served", false, err);
            return false;
        }
    };

    let tally = Arc::new(Tally::default());
    let deadline = Instant::now() + args.duration;
    let mut agents = tokio::task::JoinSet::new();
    for agent in 0..args.agents {
        let mut api = Client::new(channels[agent % channels.len()].clone());
        let tally = tally.clone();
        let args = args.clone();
        agents.spawn(async move {
            // Agents start spread over one step, not all at once.
            tokio::time::sleep(args.think.mul_f64(agent as f64 / args.agents as f64)).await;
            let mut i = 0usize;
            while Instant::now() < deadline {
                let scenario = Scenario::ALL[(agent + i) % Scenario::ALL.len()];
                let id = format!("soak-{agent}-{i}");
                let result = session(&mut api, &args, &id, scenario).await;
                tally.record(scenario, result);
                i += 1;
            }
        });
    }

    let load_started = Instant::now();
    let mut load = Vec::new();
    let mut scrape_errors = 0u64;
    while Instant::now() < deadline {
        tokio::time::sleep(args.sample_every).await;
        match sample(&server, &metrics, load_started).await {
            Ok(s) => load.push(Sample {
                sessions: tally.completed(),
                ..s
            }),
            Err(_) => scrape_errors += 1,
        }
    }
    while agents.join_next().await.is_some() {}
    let load_ended = Instant::now();

    // After the load: watchers, live sessions and tasks come back to the baseline.
    let mut after = Vec::new();
    let settled = loop {
        tokio::time::sleep(args.sample_every).await;
        if let Ok(s) = sample(&server, &metrics, load_started).await {
            after.push(s);
            if s.watchers == 0.0
                && s.live_sessions == 0.0
                && s.alive_tasks <= baseline.alive_tasks + TASK_SLACK
                && receiver.seen.events() as f64 >= s.ended
            {
                break Some(load_ended.elapsed());
            }
        }
        if load_ended.elapsed() > SETTLE {
            break None;
        }
    };
    let last = after.last().copied().unwrap_or_default();
    if let Some(path) = &args.csv {
        let mut csv =
            String::from("t_s,rss_bytes,alive_tasks,watchers,live_sessions,sessions_completed\n");
        for s in load.iter().chain(&after) {
            csv += &format!(
                "{:.1},{},{},{},{},{}\n",
                s.at.as_secs_f64(),
                s.rss,
                s.alive_tasks,
                s.watchers,
                s.live_sessions,
                s.sessions
            );
        }
        if let Err(err) = std::fs::write(path, csv) {
            eprintln!("--csv {}: {err}", path.display());
        }
    }

    // The table.
    println!();
    println!(
        "  {:<16} {:>10} {:>8}",
        "session kind", "completed", "failed"
    );
    let (mut total_ok, mut total_failed) = (0, 0);
    for scenario in Scenario::ALL {
        let ok = tally.ok[scenario as usize].load(Ordering::Relaxed);
        let failed = tally.failed[scenario as usize].load(Ordering::Relaxed);
        total_ok += ok;
        total_failed += failed;
        println!("  {:<16} {:>10} {:>8}", scenario.name(), ok, failed);
    }
    println!("  {:<16} {:>10} {:>8}", "all", total_ok, total_failed);
    println!();
    println!(
        "  {:>7} {:>12} {:>11} {:>9} {:>14}",
        "t", "RSS", "live tasks", "watchers", "live sessions"
    );
    let row = |label: String, s: &Sample| {
        println!(
            "  {:>7} {:>12} {:>11} {:>9} {:>14}",
            label,
            mib(s.rss as f64),
            s.alive_tasks,
            s.watchers,
            s.live_sessions
        );
    };
    row("before".into(), &baseline);
    let step = (load.len() / 10).max(1);
    for s in load.iter().step_by(step) {
        row(format!("{:.0}s", s.at.as_secs_f64()), s);
    }
    row("after".into(), &last);
    println!();

    // The checks.
    let mut by_kind = BTreeMap::new();
    for scenario in Scenario::ALL {
        by_kind.insert(
            scenario.name(),
            tally.ok[scenario as usize].load(Ordering::Relaxed),
        );
    }
    let first_error = tally
        .first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    checks.check(
        "every session reached its expected outcome",
        total_failed == 0,
        format!(
            "{total_ok} completed, {total_failed} failed{}",
            first_error
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        ),
    );
    checks.check(
        "every kind of session ran",
        by_kind.values().all(|&n| n > 0),
        format!("{by_kind:?}"),
    );
    let peak_watchers = load.iter().map(|s| s.watchers).fold(0.0, f64::max);
    checks.check(
        "thousands of watchers open at once",
        peak_watchers >= 1000.0_f64.min(args.agents as f64 / 2.0),
        format!("peak {peak_watchers}"),
    );
    checks.check(
        "the metrics endpoint answered every sample",
        scrape_errors == 0 && !load.is_empty(),
        format!("{} samples, {scrape_errors} failed", load.len()),
    );
    let third = load.len() / 3;
    if third >= 2 {
        // Warm-up is the first third; its second half is the reference.
        let reference = median_rss(&load[third / 2..third]);
        let late = median_rss(&load[load.len() - third..]);
        let peak = load.iter().map(|s| s.rss).max().unwrap_or(0) as f64;
        checks.check(
            "memory flat after warm-up: median RSS of the last third within bound",
            late <= args.rss_growth * reference,
            format!(
                "{} ≤ {:.2} × {} (median of the first third's second half); peak {}",
                mib(late),
                args.rss_growth,
                mib(reference),
                mib(peak)
            ),
        );
        let tail = &load[third..];
        let span = tail[tail.len() - 1].at.as_secs_f64() - tail[0].at.as_secs_f64();
        let rise = slope(tail) * span;
        let sessions = tail[tail.len() - 1].sessions - tail[0].sessions;
        checks.check(
            "memory flat after warm-up: RSS trend over the last two thirds",
            rise <= args.rss_per_session * sessions as f64,
            format!(
                "rise {} over {span:.0} s at the Theil–Sen slope {:.1} KiB/s: {:.1} bytes per \
                 session over {sessions} sessions (≤ {:.0})",
                mib(rise),
                slope(tail) / 1024.0,
                rise / sessions.max(1) as f64,
                args.rss_per_session
            ),
        );
    } else {
        checks.check(
            "memory flat after warm-up",
            false,
            format!("only {} samples: run longer", load.len()),
        );
    }
    checks.check(
        "after the load: watchers, live sessions and live tasks back to the baseline",
        settled.is_some(),
        format!(
            "{} (watchers {}, live sessions {}, tasks {} against {} before)",
            settled.map_or_else(
                || format!("not within {SETTLE:?}"),
                |d| format!("within {:.1} s", d.as_secs_f64())
            ),
            last.watchers,
            last.live_sessions,
            last.alive_tasks,
            baseline.alive_tasks
        ),
    );
    let (delivered, refused) = (
        receiver.seen.events(),
        receiver.seen.refused.load(Ordering::Relaxed),
    );
    checks.check(
        "every ended session's call.ended delivered, every signature verified",
        delivered as f64 == last.ended && delivered > 0 && refused == 0,
        format!(
            "{delivered} delivered of {} sessions ended, {refused} refused",
            last.ended
        ),
    );
    let waits = receiver.seen.close_to_delivery();
    let at = |p: f64| waits[((waits.len() as f64 * p) as usize).min(waits.len().saturating_sub(1))];
    if !waits.is_empty() {
        println!(
            "webhooks: close to delivery p50 {:?}, p99 {:?}, max {:?}",
            at(0.5),
            at(0.99),
            waits[waits.len() - 1]
        );
    }
    let failed = checks.0.iter().filter(|c| !c.1).count();
    println!(
        "checks: {} passed, {} failed",
        checks.0.len() - failed,
        failed
    );
    drop(channels);
    drop(server);
    failed == 0
}
