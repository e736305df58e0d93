//! `timers`: N reply deadlines spread evenly over one second, each session watched by a
//! WatchSession stream; how late SHUTDOWN_SESSION is issued (from the server's own records)
//! and how late it arrives on the streams, and what the window costs each side. Then the same
//! with N silence reminders: sessions whose `REMIND` falls due within one second.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use endcall_sidecar::proto::v1::{self as pb, DirectiveKind, ShutdownCause};
use endcall_testkit::{duration, watch, Client};

use crate::{
    load::{await_reply, connections_for, cpu_both, for_each, run_prefix},
    results::mib,
    Args, Report,
};

/// A directive as a watch stream received it: (session index, arrival time, kind, cause, seq).
type Arrival = (usize, SystemTime, DirectiveKind, ShutdownCause, u64);

/// What GetSession says of a timed session: (the intended deadline in µs since the epoch, when
/// the timed directive was issued if it was, its cause).
type Record = (i64, Option<i64>, ShutdownCause);

/// Which deadline the sessions of a run wait on.
#[derive(Clone, Copy, PartialEq)]
enum Timed {
    /// A realtime reply that never comes: SHUTDOWN_SESSION (REPLY_TIMEOUT), `reply_timeout`
    /// after the goodbye's OnSpeechDone.
    ReplyTimeout,
    /// A silent user: REMIND (SILENCE_TIMEOUT), `silence_reminder_after` after OpenSession.
    Reminder,
}

impl Timed {
    fn directive(self) -> (DirectiveKind, ShutdownCause) {
        match self {
            Timed::ReplyTimeout => (DirectiveKind::ShutdownSession, ShutdownCause::ReplyTimeout),
            Timed::Reminder => (DirectiveKind::Remind, ShutdownCause::SilenceTimeout),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Timed::ReplyTimeout => "SHUTDOWN_SESSION",
            Timed::Reminder => "REMIND",
        }
    }

    /// The timeline event the deadline counts from.
    fn counted_from(self) -> &'static str {
        match self {
            Timed::ReplyTimeout => "speech_done",
            Timed::Reminder => "open",
        }
    }

    /// Sets a session up so that its deadline comes `after` from now.
    async fn set_up(self, api: &mut Client, session: &str, after: Duration) -> Result<(), String> {
        match self {
            Timed::ReplyTimeout => await_reply(api, session, after).await,
            Timed::Reminder => {
                let options = pb::SessionOptions {
                    silence_timeout: Some(duration(Duration::from_secs(3600))),
                    silence_reminder_after: Some(duration(after)),
                    ..Default::default()
                };
                let r = api
                    .open_session(pb::OpenSessionRequest {
                        session_id: session.into(),
                        options: Some(options),
                        ..Default::default()
                    })
                    .await
                    .map_err(|s| format!("OpenSession: {s}"))?
                    .into_inner();
                if r.state() != pb::SessionState::Active {
                    return Err(format!("OpenSession: state {:?}", r.state()));
                }
                Ok(())
            }
        }
    }
}

fn unix_micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn ts_micros(t: &prost_types::Timestamp) -> i64 {
    t.seconds * 1_000_000 + i64::from(t.nanos) / 1000
}

fn lateness_row(report: &mut Report, metric: &str, mut v: Vec<i64>) -> Option<i64> {
    if v.is_empty() {
        report.row("timers", metric, "no samples".to_owned());
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

/// Runs the section: reply timeouts, then silence reminders, each on a server of its own;
/// `rate_estimate` (lifecycle RPC/s, if measured) sizes the set-up's lead.
pub(crate) async fn run(args: &Args, rate_estimate: Option<f64>, report: &mut Report) {
    run_one(Timed::ReplyTimeout, args, rate_estimate, report).await;
    run_one(Timed::Reminder, args, rate_estimate, report).await;
}

async fn run_one(timed: Timed, args: &Args, rate_estimate: Option<f64>, report: &mut Report) {
    let name = timed.name();
    let (expected_kind, expected_cause) = timed.directive();
    let n = args.timer_sessions;
    let watchers = args.timer_watchers.unwrap_or(n).min(n);
    let max = (n + 10_000).to_string();
    let server = args.server.start(
        "127.0.0.1:0",
        &["--max-sessions", &max, "--idle-expiry", "2h"],
    );
    let prefix = run_prefix(match timed {
        Timed::ReplyTimeout => "tm",
        Timed::Reminder => "tr",
    });
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
            let mut api = Client::new(chans[i % chans.len()].clone());
            let tx = tx.clone();
            let session = id(i);
            async move {
                let stream = api
                    .watch_session(watch(&session, 0))
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

    // Phase B: each session set up with its own timeout (a reply timeout: EndCall, realtime and
    // auto reply, then OnSpeechDone; a reminder: OpenSession with the silence ladder on), chosen
    // so that the deadlines spread evenly over one second starting at `window`.
    let channels = server.channels(args.connections()).await;
    let rate = rate_estimate.unwrap_or(5000.0).max(500.0);
    let lead = Duration::from_secs_f64((2.5 * 2.0 * n as f64 / rate).max(3.0));
    let window = SystemTime::now() + lead;
    let chans = Arc::new(channels.clone());
    let late_setups = Arc::new(AtomicU64::new(0));
    let reply_timeouts: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let (ls, rts, id2) = (late_setups.clone(), reply_timeouts.clone(), id.clone());
    let (setup_errors, setup_first) = for_each(n, args.concurrency, move |i| {
        let mut api = Client::new(chans[i % chans.len()].clone());
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
        async move { timed.set_up(&mut api, &session, timeout).await }
    })
    .await;
    let setup_done = SystemTime::now();
    let phase_b = setup_start.elapsed() - phase_a;
    let rss_armed = server.rss();
    report.check(
        &format!("timers {name}: every session was set up"),
        setup_errors == 0,
        format!("{setup_errors} errors {setup_first:?}"),
    );
    report.check(
        &format!("timers {name}: every session was set up before its deadline window"),
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

    // Exact deadlines from the server's own records: the time of the event the deadline counts
    // from (OnSpeechDone, OpenSession) + the session's timeout.
    let records: Arc<Mutex<Vec<Option<Record>>>> = Arc::new(Mutex::new(vec![None; n]));
    let chans = Arc::new(channels.clone());
    let (rec, rts, id3) = (records.clone(), reply_timeouts.clone(), id.clone());
    let (get_errors, get_first) = for_each(n, args.concurrency, move |i| {
        let mut api = Client::new(chans[i % chans.len()].clone());
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
                    matches!(&e.entry, Some(pb::timeline_entry::Entry::Event(t)) if t.starts_with(timed.counted_from()))
                })
                .and_then(|e| e.at.as_ref())
                .map(ts_micros)
                .ok_or("no such event in the timeline")?;
            let deadline = done_at + rts[i].load(Ordering::Relaxed) as i64;
            let shutdown = r
                .directives
                .iter()
                .find(|d| d.kind() == expected_kind);
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
            Some(at) if *cause == expected_cause => issued_late.push(at - deadline),
            _ => wrong += 1,
        }
    }
    let mut arrival_late = Vec::new();
    let mut stream_wrong = 0usize;
    for (i, at, kind, cause, seq) in &arrivals {
        if *kind != expected_kind || *cause != expected_cause || *seq != 1 {
            stream_wrong += 1;
            continue;
        }
        if let Some((deadline, _, _)) = records[*i] {
            arrival_late.push(unix_micros(*at) - deadline);
        }
    }
    report.row("timers", &format!("--- {name}"), String::new());
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
        "set-up time: watch streams / the sessions' set-up",
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
        &format!("{name} issued_at - deadline (all)"),
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
        &format!("timers: every session issued {name} ({expected_cause:?})"),
        get_errors == 0 && wrong == 0 && issued_late.len() == n,
        format!(
            "{} of {n}; {wrong} without; GetSession errors {get_errors} {get_first:?}",
            issued_late.len()
        ),
    );
    report.check(
        &format!("timers {name}: every watch stream received it"),
        stream_wrong == 0 && arrival_late.len() == watchers,
        format!(
            "{} of {watchers} arrived, {stream_wrong} unexpected",
            arrival_late.len()
        ),
    );
    report.check(
        &format!("timers {name}: no directive before its deadline"),
        issued_late.iter().all(|l| *l >= 0),
        format!("min {:?} us", issued_late.iter().min()),
    );
    let worst = p99_arrival
        .into_iter()
        .chain(p99_issued)
        .max()
        .unwrap_or(i64::MAX);
    let target = match timed {
        Timed::ReplyTimeout => {
            "reply-timeout directives <= 10 ms late at p99 (100k deadlines in 1 s)"
        }
        Timed::Reminder => "REMIND <= 10 ms late at p99 (100k reminders in 1 s)",
    };
    report.target(
        target,
        worst <= 10_000 && n >= 100_000,
        format!(
            "p99 issued {:.2} ms, p99 on stream {:.2} ms, {n} deadlines in {:.3} s",
            p99_issued.unwrap_or(0) as f64 / 1000.0,
            p99_arrival.unwrap_or(0) as f64 / 1000.0,
            (last_deadline - first_deadline) as f64 / 1e6
        ),
    );
}
