//! What an end-of-call report costs, and on which thread: the RPC thread that queues it, the
//! report thread that formats it, the log writer that writes it. `cargo bench --bench report`
//! (`-- --reports N`; the smoke run uses a few thousand).
//!
//! Each log format runs in a child process of its own (the logger is global, and its lines go
//! to a null stderr). Reports are queued in batches smaller than the report queue and flushed
//! after each, so the RPC thread's figure is queueing alone, never waiting on a full queue.
#![forbid(unsafe_code)]
// A bench is test code: a failed expectation ends the run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    process::{Command, ExitCode, Stdio},
    sync::Arc,
    time::Duration,
};

use endcall_sidecar::{
    contract::{
        domain::{Capabilities, CloseReason, Event, Options, SessionId, SpeechId, Time},
        machine::{Session, Timing},
        report::Report,
    },
    telemetry::{self, LogFormat},
};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Reports queued between two flushes: under the report queue's bound (1,024), so that
/// queueing never waits for room.
const BATCH: usize = 500;

/// A session as the throughput bench leaves it: goodbye, played out, closed by the user.
fn closed_session(n: u64) -> (SessionId, Session) {
    let timing = Timing {
        playout_guard: Duration::from_secs(30),
        wind_up_grace: Duration::from_secs(30),
        worker_lost_after: Duration::from_secs(10),
        close_deadline: Duration::from_secs(60),
    };
    let at = |ms: u64| Time::from_micros(n * 1_000 + ms * 1_000);
    let mut session = Session::new(Arc::new(Options::default()), at(0));
    let speech = || SpeechId::new("goodbye");
    let events = [
        Event::EndCall {
            speech: speech(),
            options: None,
            capabilities: Capabilities::default(),
        },
        Event::SpeechDone {
            speech: speech(),
            interrupted: false,
            capabilities: Capabilities::default(),
            tool_output_given: None,
        },
        Event::SessionClose {
            reason: CloseReason::UserInitiated,
            error: None,
        },
    ];
    for (ms, event) in [1, 1_200, 1_300].into_iter().zip(events) {
        session
            .handle(event, at(ms), &timing)
            .expect("the bench's events are valid");
    }
    (SessionId::new(&format!("bench-1-{n:08}")), session)
}

/// Nanoseconds on CPU so far, per thread name.
fn cpu_by_thread() -> Vec<(String, u64)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let read = |file: &str| std::fs::read_to_string(task.path().join(file)).unwrap_or_default();
        let ns = read("schedstat")
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        threads.push((read("comm").trim().to_owned(), ns));
    }
    threads
}

fn cpu_of(threads: &[(String, u64)], name: &str) -> u64 {
    threads.iter().filter(|(n, _)| n == name).map(|t| t.1).sum()
}

fn child(format: LogFormat, reports: usize) -> Result<(), String> {
    let _guard = telemetry::init(format, "info")?;
    let sessions: Vec<_> = (0..reports as u64).map(closed_session).collect();
    // The main thread's name is the executable's, cut short by the kernel.
    let main = std::fs::read_to_string("/proc/thread-self/comm")
        .map_err(|e| format!("cannot read this thread's name: {e}"))?
        .trim()
        .to_owned();
    let before = cpu_by_thread();
    for batch in sessions.chunks(BATCH) {
        for (id, session) in batch {
            telemetry::session_ended(Report::of(id, session));
        }
        telemetry::flush_reports();
    }
    let after = cpu_by_thread();
    let per_report = |thread: &str| {
        (cpu_of(&after, thread) - cpu_of(&before, thread)) as f64 / reports.max(1) as f64
    };
    let (rpc, formatting, writing) = (
        per_report(&main),
        per_report("endcall-reports"),
        per_report("tracing-appende"),
    );
    println!(
        "| {format:?} | {rpc:.0} ns | {formatting:.0} ns | {writing:.0} ns | {:.2} us |",
        (rpc + formatting + writing) / 1e3
    );
    // The report thread did the formatting: a report logged in place would leave it idle.
    let ok = formatting > 0.0 && formatting > rpc;
    println!("checks: {} passed, {} failed", u8::from(ok), u8::from(!ok));
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
    };
    let reports = match value("--reports").map(|n| n.parse::<usize>()) {
        None => 200_000,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("--reports: expected a positive number of reports");
            return ExitCode::from(2);
        }
    };
    if let Some(format) = value("--child") {
        let format = if format == "json" {
            LogFormat::Json
        } else {
            LogFormat::Text
        };
        return match child(format, reports) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::FAILURE
            }
        };
    }
    println!("end-of-call report cost: {reports} reports per log format, CPU per report on each thread\n");
    println!("| log format | RPC thread (build, queue) | report thread (format) | log writer (write) | total |");
    println!("| --- | --- | --- | --- | --- |");
    let mut failed = false;
    for format in ["text", "json"] {
        let status = std::env::current_exe().and_then(|exe| {
            Command::new(exe)
                .args(["--child", format, "--reports", &reports.to_string()])
                .stderr(Stdio::null())
                .status()
        });
        failed |= !matches!(status, Ok(s) if s.success());
    }
    if failed {
        eprintln!("a run failed");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
