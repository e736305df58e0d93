//! Performance benchmark of the sidecar against its release binary, spawned as a child process
//! on loopback (or a Unix socket). Not a test: `scripts/bench` runs it with full sizes,
//! `scripts/bench-smoke` with tiny ones so CI can see that it still works.
//!
//! Sections (`--sections`, comma-separated; default all), one module each:
//! - `throughput`: N agents run whole sessions (OnUserSpeech, EndCall, OnSpeechDone,
//!   OnSessionClose), each with the silence ladder on, for a fixed time, and the same agents call grpc.health.v1 Check (the ceiling) on the same server
//!   for as long, the two taking turns in one-second slices.
//! - `echo` (after `throughput`): the server's CPU while that run's 30 s playout-guard timers
//!   come due.
//! - `latency`: open-loop load at a fraction of the measured health ceiling, per-RPC p50/p99/p999
//!   for the lifecycle RPCs and for health, measured in alternating one-second slices.
//! - `h2load`: the same server measured by h2load (nghttp2), if installed: health Check and a
//!   repeated OnSpeechCreated.
//! - `memory`: RSS of the server before, with N sessions awaiting a far reply deadline (or,
//!   with `--memory-silence`, a far silence deadline), and after they were closed and their
//!   retention passed.
//! - `timers`: N reply deadlines spread over one second; how late SHUTDOWN_SESSION is issued and
//!   how late it arrives on the watch streams.
//! - `unix`: the throughput section over a Unix socket.
//! - `quiet`: the throughput section against a server whose end-of-call report lines are off
//!   (`--log-level info,endcall::report=off`): what is left of the gap without them. Not with
//!   `--server-flags` that set `--log-level`.
//! - `teardown`: N attended sessions whose watch streams all end at once; how late each room's
//!   DeleteRoom reaches a local receiver after the worker-lost window, and RSS per attended
//!   session.
//! - `durable`: the throughput section with `--state-dir` (every event fsynced before its
//!   reply), and its cost: durable lifecycle RPC/s / in-memory lifecycle RPC/s of this run.
//! - `webhook`: calls ending as fast as the agents go on a server that delivers each report to
//!   a local receiver verifying every signature, in slices alternating with a server without
//!   webhooks: deliveries/s, close-to-delivery p50/p99, and the lifecycle RPC/s ratio.
//! - `slow-webhook`: the latency section against a server whose webhook receiver takes 30 s
//!   per request; with `latency` in the same run, the two tables compare.
//!
//! The machinery they share: `load` (the agents' sessions, the closed and open loops, CPU
//! time) and `results` (the table, the targets and the checks); `sizes` adds the sizes of the
//! state machine's types.
//!
//! Every section also records functional checks (no RPC failed, directives as expected); the run
//! ends with `checks: N passed, M failed` and exits non-zero when one failed. Targets are
//! reported as MET or MISSED and never fail the run.
#![forbid(unsafe_code)]
// A bench is test code: a failed expectation (a lock, a task, the runtime) ends the run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use clap::Parser;

#[path = "../support/mod.rs"]
mod support;

mod durable;
mod echo;
mod h2load;
mod latency;
mod load;
mod memory;
mod quiet;
mod results;
mod sizes;
mod slow_webhook;
mod teardown;
mod throughput;
mod timers;
mod unix;
mod webhook;

use load::SESSION_SERVER_FLAGS;
use results::Report;
use support::ServerArgs;

#[derive(Parser, Debug, Clone)]
#[command(about = "endcall-sidecar performance benchmark")]
struct Args {
    /// Sections to run, comma-separated: throughput,echo,latency,h2load,memory,timers,unix,
    /// quiet,durable,webhook,slow-webhook,teardown (or all). `echo` (after throughput) waits
    /// for the run's 30 s timers and
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
    /// The memory section's sessions have the silence ladder on (a 10-minute silence timeout,
    /// a reminder after 5 minutes) and wait in ACTIVE after the user spoke, instead of waiting
    /// in AWAITING_REPLY.
    #[arg(long)]
    memory_silence: bool,
    /// Sessions whose reply deadlines fall within one second (timers section).
    #[arg(long, default_value_t = 100_000)]
    timer_sessions: usize,
    /// How many of the timer sessions get a WatchSession stream (default: all).
    #[arg(long)]
    timer_watchers: Option<usize>,
    /// Attended sessions whose streams all end at once (teardown section).
    #[arg(long, default_value_t = 10_000)]
    teardown_sessions: usize,
    /// Watch streams per HTTP/2 connection in the timers and teardown sections.
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

    /// The connections the agents share.
    fn connections(&self) -> usize {
        load::connections_for(self.concurrency, self.agents_per_connection)
    }
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
        sizes::run(&mut report);
        let mut lifecycle_rate = None;
        let mut health_rate = None;
        if args.runs("throughput") {
            let server = args.server.start("127.0.0.1:0", &SESSION_SERVER_FLAGS);
            println!("TCP server pid {} at {:?}", server.pid(), server.addr);
            let t = throughput::run(&args, &server, "tcp", &mut report).await;
            lifecycle_rate = Some(t.lifecycle.rpc_rate());
            health_rate = Some(t.health.rpc_rate());
            if args.runs("echo") {
                echo::run(&args, &server, &t, &mut report).await;
            }
        }
        if args.runs("latency") {
            latency::run(&args, health_rate.unwrap_or(args.latency_rate), &mut report).await;
        }
        if args.runs("slow-webhook") {
            slow_webhook::run(&args, health_rate.unwrap_or(args.latency_rate), &mut report).await;
        }
        if args.runs("h2load") {
            h2load::run(&args, health_rate, &mut report).await;
        }
        if args.runs("unix") {
            unix::run(&args, &mut report).await;
        }
        if args.runs("quiet") {
            quiet::run(&args, &mut report).await;
        }
        if args.runs("durable") {
            durable::run(&args, lifecycle_rate, &mut report).await;
        }
        if args.runs("webhook") {
            webhook::run(&args, &mut report).await;
        }
        if args.runs("memory") {
            memory::run(&args, &mut report).await;
        }
        if args.runs("timers") {
            timers::run(&args, lifecycle_rate, &mut report).await;
        }
        if args.runs("teardown") {
            teardown::run(&args, &mut report).await;
        }
    });
    report.print(&args);
    runtime.shutdown_timeout(Duration::from_secs(1));
    std::process::exit(if report.failed() { 1 } else { 0 });
}
