//! `memory`: RSS of a server before, with N sessions awaiting a far reply deadline, and after
//! they were closed and their retention passed; then the sessions are gone (NOT_FOUND). With
//! `--memory-silence` the sessions wait on the silence ladder instead: opened with a silence
//! timeout, then the user's speech, which starts the silence again and moves its deadline.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use endcall_sidecar::proto::v1::{self as pb, CloseReason, SessionState};
use endcall_testkit::{close, duration, process::proc_status_kb, user_speech, Client};

use crate::{
    load::{await_reply, closed_loop, for_each, run_prefix, Work},
    results::mib,
    Args, Report,
};

pub(crate) async fn run(args: &Args, report: &mut Report) {
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
    let channels = server.channels(args.connections()).await;
    // Warm-up: connections, runtime, buffers; those sessions are gone after their retention.
    let warm = closed_loop(&channels, args.concurrency, args.warmup, Work::Lifecycle).await;
    closed_loop(&channels, args.concurrency, args.warmup, Work::Health).await;
    tokio::time::sleep(retention + Duration::from_secs(2)).await;
    let before = server.rss();
    let prefix = run_prefix("mem");
    let started = Instant::now();
    let chans = Arc::new(channels.clone());
    let p = prefix.clone();
    let silence = args.memory_silence;
    let (open_errors, open_first) = for_each(n, args.concurrency, move |i| {
        let mut api = Client::new(chans[i % chans.len()].clone());
        let id = format!("{p}-{i:07}");
        async move {
            if silence {
                await_silence(&mut api, &id).await
            } else {
                await_reply(&mut api, &id, Duration::from_secs(600)).await
            }
        }
    })
    .await;
    let open_time = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let open = server.rss();
    let per_session = open.saturating_sub(before) as f64 / n.max(1) as f64;

    let chans = Arc::new(channels.clone());
    let p = prefix.clone();
    let (close_errors, close_first) = for_each(n, args.concurrency, move |i| {
        let mut api = Client::new(chans[i % chans.len()].clone());
        let id = format!("{p}-{i:07}");
        async move {
            let r = api
                .on_session_close(close(&id, CloseReason::UserInitiated))
                .await
                .map_err(|s| format!("OnSessionClose: {s}"))?
                .into_inner();
            // No end_call in a silence session: its close issues nothing.
            let expected = if silence { 0 } else { 2 };
            if r.state() != SessionState::Closed || r.directives.len() != expected {
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
    let mut api = Client::new(channels[0].clone());
    let gone = api
        .get_session(pb::GetSessionRequest {
            session_id: format!("{prefix}-{:07}", 0),
        })
        .await;
    let hwm = proc_status_kb(server.pid(), "VmHWM:") * 1024;

    let (waiting, opening) = if silence {
        (
            "ACTIVE, 600 s silence timeout, a reminder at 300 s",
            "OpenSession+UserSpeech",
        )
    } else {
        ("AWAITING_REPLY, 600 s deadline", "EndCall+Done")
    };
    report.row(
        "memory",
        &format!("sessions opened ({waiting})"),
        n.to_string(),
    );
    report.row(
        "memory",
        &format!("open rate ({opening} per session)"),
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
        "memory: every session opened and waiting",
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

/// Opens a session with the silence ladder on, then the user speaks: it waits in ACTIVE on
/// its silence deadline, 5 minutes off.
async fn await_silence(api: &mut Client, session: &str) -> Result<(), String> {
    let options = pb::SessionOptions {
        silence_timeout: Some(duration(Duration::from_secs(600))),
        silence_reminder_after: Some(duration(Duration::from_secs(300))),
        ..Default::default()
    };
    api.open_session(pb::OpenSessionRequest {
        session_id: session.into(),
        options: Some(options),
        ..Default::default()
    })
    .await
    .map_err(|s| format!("OpenSession: {s}"))?;
    let r = api
        .on_user_speech(user_speech(session))
        .await
        .map_err(|s| format!("OnUserSpeech: {s}"))?
        .into_inner();
    if r.state() != SessionState::Active || !r.directives.is_empty() {
        return Err(format!("OnUserSpeech: unexpected reply {r:?}"));
    }
    Ok(())
}
