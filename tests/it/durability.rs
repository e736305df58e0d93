//! `--state-dir`: the built binary is killed with SIGKILL at random points under a load of
//! sessions, restarted on the same directory, and must have lost nothing it acknowledged:
//! every acknowledged event and every directive a client saw is still there, sequence numbers
//! resume without a gap, and every pending deadline still fires.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use endcall_sidecar::{
    probe,
    proto::v1::{
        self as pb, timeline_entry::Entry, CloseReason, Directive, SessionState, ShutdownCause,
    },
};
use endcall_testkit::{process::Sidecar, *};
use tokio::task::JoinSet;
use tonic::Code;

/// What the load saw of one session before the kill.
#[derive(Debug, Default, Clone)]
struct Seen {
    /// Events whose reply came back (acknowledged), in order.
    acked: Vec<&'static str>,
    /// Directives from replies and watch streams, by sequence number.
    directives: HashMap<u64, Directive>,
    realtime: bool,
}

type Ledger = Arc<Mutex<HashMap<String, Seen>>>;

fn record(ledger: &Ledger, session: &str, update: impl FnOnce(&mut Seen)) {
    update(
        ledger
            .lock()
            .unwrap()
            .entry(session.to_owned())
            .or_default(),
    );
}

/// One agent: runs whole sessions back to back until the sidecar goes away. Even agents run
/// pipeline calls, odd ones realtime calls whose reply never comes (the reply timeout ends them).
async fn agent(addr: endcall_sidecar::ListenAddr, round: u32, n: u32, ledger: Ledger) {
    let Ok(channel) = probe::connect(&addr, PATIENCE).await else {
        return;
    };
    let mut c = pb::end_call_service_client::EndCallServiceClient::new(channel);
    let realtime = n % 2 == 1;
    for call in 0.. {
        let id = format!("r{round}-a{n}-c{call}");
        record(&ledger, &id, |seen| seen.realtime = realtime);
        // A watcher per session, recording what it is shown.
        if let Ok(stream) = c.watch_session(watch(&id, 0)).await {
            let (ledger, id) = (ledger.clone(), id.clone());
            tokio::spawn(async move {
                let mut stream = stream.into_inner();
                while let Ok(Some(d)) = stream.message().await {
                    record(&ledger, &id, |seen| {
                        seen.directives.insert(d.seq, d);
                    });
                }
            });
        } else {
            return;
        }
        let request = if realtime {
            realtime_end_call(&id, "S")
        } else {
            end_call(&id, "S")
        };
        let Ok(reply) = c.end_call(request).await else {
            return;
        };
        acked(&ledger, &id, "end_call", reply.into_inner().directives);
        let Ok(reply) = c.on_speech_done(done(&id, "S")).await else {
            return;
        };
        acked(&ledger, &id, "speech_done", reply.into_inner().directives);
        if realtime {
            // Leave every fourth realtime call waiting on its reply timeout, unclosed.
            if call % 4 == 3 {
                continue;
            }
        }
        let Ok(reply) = c
            .on_session_close(close(&id, CloseReason::UserInitiated))
            .await
        else {
            return;
        };
        acked(&ledger, &id, "close", reply.into_inner().directives);
    }
}

fn acked(ledger: &Ledger, id: &str, event: &'static str, directives: Vec<Directive>) {
    record(ledger, id, |seen| {
        seen.acked.push(event);
        for d in directives {
            seen.directives.insert(d.seq, d);
        }
    });
}

/// A small deterministic generator: the kill points vary by round, the same in every run.
fn kill_delay(round: u32) -> Duration {
    let mut x = u64::from(round).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    x ^= x >> 29;
    Duration::from_millis(150 + x % 450)
}

const FLAGS: &[&str] = &[
    "--reply-timeout",
    "400ms",
    "--closed-retention",
    "10m",
    // Small segments: the rounds also seal, compact and replay compacted segments.
    "--state-segment-bytes",
    "16384",
];

fn start(dir: &std::path::Path) -> Sidecar {
    let mut flags = vec!["--state-dir", dir.to_str().unwrap()];
    flags.extend_from_slice(FLAGS);
    Sidecar::start(&flags)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_event_or_directive() {
    let dir = tempfile::tempdir().unwrap();
    let ledger: Ledger = Ledger::default();
    let mut sidecar = start(dir.path());
    for round in 0..5 {
        let mut agents = JoinSet::new();
        for n in 0..8 {
            agents.spawn(agent(sidecar.addr.clone(), round, n, ledger.clone()));
        }
        tokio::time::sleep(kill_delay(round)).await;
        sidecar.child.kill().unwrap(); // SIGKILL
        sidecar.child.wait().unwrap();
        while agents.join_next().await.is_some() {}
        // Watch tasks still draining what the dead connection delivered must finish first.
        tokio::time::sleep(Duration::from_millis(50)).await;

        sidecar = start(dir.path());
        let seen = ledger.lock().unwrap().clone();
        check(&sidecar, &seen).await;
    }
    let sessions = ledger.lock().unwrap().len();
    assert!(
        sessions > 40,
        "the load ran too little to mean anything: {sessions} sessions"
    );
}

/// Everything the ledger saw is in the restarted sidecar, and every session that was left
/// waiting on a deadline gets its directive.
async fn check(sidecar: &Sidecar, ledger: &HashMap<String, Seen>) {
    let mut c = pb::end_call_service_client::EndCallServiceClient::new(
        probe::connect(&sidecar.addr, PATIENCE).await.unwrap(),
    );
    for (id, seen) in ledger {
        let report = match c.get_session(get(id)).await {
            Ok(report) => report.into_inner(),
            // Only a session that never had an event acknowledged may be unknown (its only
            // request may have been a watch, which keeps no state worth keeping).
            Err(status) if status.code() == Code::NotFound => {
                assert!(seen.acked.is_empty(), "{id}: lost entirely: {seen:?}");
                continue;
            }
            Err(status) => panic!("{id}: {status:?}"),
        };
        let events: Vec<_> = report
            .timeline
            .iter()
            .filter(|entry| matches!(entry.entry, Some(Entry::Event(_))))
            .collect();
        assert!(
            events.len() >= seen.acked.len(),
            "{id}: {} events acknowledged, {} kept: {report:?}",
            seen.acked.len(),
            events.len()
        );
        let seqs: Vec<u64> = report.directives.iter().map(|d| d.seq).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{id}: sequence numbers have a gap"
        );
        for (seq, d) in &seen.directives {
            let kept = report
                .directives
                .iter()
                .find(|k| k.seq == *seq)
                .unwrap_or_else(|| panic!("{id}: directive #{seq} was seen, then lost"));
            assert_eq!(kind(kept), kind(d), "{id}: directive #{seq} changed");
        }
        // A realtime call whose goodbye was acknowledged and that is not closed is waiting on
        // its reply timeout (or past it): its SHUTDOWN_SESSION must come, from the restarted
        // sidecar's timers.
        let goodbye_done = seen.acked.contains(&"speech_done");
        if seen.realtime && goodbye_done && report.state() != SessionState::Closed {
            let shutdown = wait_for_shutdown(&mut c, id, &report).await;
            assert_eq!(
                kind(&shutdown),
                Kind::Shutdown(ShutdownCause::ReplyTimeout),
                "{id}"
            );
        }
        if !seen.realtime && goodbye_done {
            assert!(
                report
                    .directives
                    .iter()
                    .any(|d| kind(d) == Kind::Shutdown(ShutdownCause::ToolTurnDone)),
                "{id}: {report:?}"
            );
        }
        if seen.acked.contains(&"close") {
            assert_eq!(report.state(), SessionState::Closed, "{id}");
        }
    }
}

/// The session's SHUTDOWN_SESSION, from its report or, resuming after the last directive the
/// report holds, from a watch stream: which also shows the sequence resumes with no gap.
async fn wait_for_shutdown(c: &mut Client, id: &str, report: &pb::SessionReport) -> Directive {
    let is_shutdown = |d: &&Directive| matches!(kind(d), Kind::Shutdown(_));
    if let Some(d) = report.directives.iter().find(is_shutdown) {
        return d.clone();
    }
    let last = report.directives.last().map_or(0, |d| d.seq);
    let mut stream = c.watch_session(watch(id, last)).await.unwrap().into_inner();
    let d = next(&mut stream).await;
    assert_eq!(
        d.seq,
        last + 1,
        "{id}: the resumed stream skipped a sequence number"
    );
    d
}

fn get(id: &str) -> pb::GetSessionRequest {
    pb::GetSessionRequest {
        session_id: id.into(),
    }
}

/// The journal's files on disk, in bytes. Compaction may remove a file between the listing and
/// its size: such a file counts as gone.
fn journal_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "journal"))
        .filter_map(|entry| entry.metadata().ok())
        .map(|metadata| metadata.len())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_the_journal_to_the_sessions_held() {
    const SEGMENT: u64 = 4096;
    const CALLS: usize = 600;
    let dir = tempfile::tempdir().unwrap();
    let segment = SEGMENT.to_string();
    let flags = [
        "--state-dir",
        dir.path().to_str().unwrap(),
        "--state-segment-bytes",
        &segment,
        "--closed-retention",
        "20ms",
    ];
    let sidecar = Sidecar::start(&flags);
    let mut c = pb::end_call_service_client::EndCallServiceClient::new(
        probe::connect(&sidecar.addr, PATIENCE).await.unwrap(),
    );
    for live in 0..3 {
        c.end_call(end_call(&format!("live-{live}"), "S"))
            .await
            .unwrap();
    }
    let mut written = 0;
    for call in 0..CALLS {
        let id = format!("call-{call}");
        let before = journal_bytes(dir.path());
        c.end_call(end_call(&id, "S")).await.unwrap();
        c.on_speech_done(done(&id, "S")).await.unwrap();
        c.on_session_close(close(&id, CloseReason::UserInitiated))
            .await
            .unwrap();
        written += journal_bytes(dir.path()).saturating_sub(before);
    }
    // Every closed session is dropped 20 ms after its close; the compactor runs at each
    // segment's end. What stays: the live sessions, the active segment and at most one sealed
    // segment's worth of sessions dropped after it was compacted.
    let bound = 3 * SEGMENT;
    let deadline = std::time::Instant::now() + PATIENCE;
    while journal_bytes(dir.path()) > bound {
        assert!(
            std::time::Instant::now() < deadline,
            "journal holds {} bytes after {CALLS} calls (bound {bound})",
            journal_bytes(dir.path())
        );
        c.on_speech_created(created("live-0", "keepalive"))
            .await
            .unwrap();
    }
    assert!(
        written > 5 * bound,
        "the load wrote too little: {written} bytes"
    );
    drop(sidecar);

    // A restart restores the live sessions only.
    let sidecar = Sidecar::start(&flags);
    let mut c = pb::end_call_service_client::EndCallServiceClient::new(
        probe::connect(&sidecar.addr, PATIENCE).await.unwrap(),
    );
    for live in 0..3 {
        let report = c.get_session(get(&format!("live-{live}"))).await.unwrap();
        assert_eq!(report.into_inner().state(), SessionState::Ending);
    }
    let gone = c.get_session(get("call-0")).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_journal_write_refuses_events_and_stops_the_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--state-dir",
        dir.path().to_str().unwrap(),
        "--state-segment-bytes",
        "4096",
    ];
    let mut sidecar = Sidecar::start(&flags);
    let mut c = pb::end_call_service_client::EndCallServiceClient::new(
        probe::connect(&sidecar.addr, PATIENCE).await.unwrap(),
    );
    c.end_call(end_call("first", "S")).await.unwrap();
    // The next segment's name is taken, so sealing the first one fails: the write error a full
    // disk would give, without needing one.
    std::fs::create_dir(dir.path().join("00000000000000000002.journal")).unwrap();
    let mut acknowledged = vec!["first".to_owned()];
    let refusal = loop {
        let id = format!("call-{}", acknowledged.len());
        match c.end_call(end_call(&id, "S")).await {
            Ok(_) => acknowledged.push(id),
            Err(status) => break status,
        }
        assert!(
            acknowledged.len() < 1000,
            "the journal never filled its segment"
        );
    };
    // The journal's refusal, or, if the request raced the drain that the failure starts, the
    // closed connection's: UNAVAILABLE, which a client retries against the restart. One race
    // is the client's own: a request still queued in hyper's client when the drained connection
    // closes never reaches the server, and tonic reports that as CANCELLED with the transport's
    // "connection closed" as its source. Either way the event was not acknowledged, and the
    // restart below checks that every acknowledged one survived.
    let unsent =
        refusal.code() == Code::Cancelled && format!("{refusal:?}").contains("connection closed");
    assert!(refusal.code() == Code::Unavailable || unsent, "{refusal:?}");
    let exit = sidecar.wait().await;
    assert_eq!(exit.code(), Some(1), "the sidecar stops with an error");
    let logs = sidecar.stderr();
    assert!(logs.contains("state journal write failed"), "{logs}");

    // Once the fault is gone, a restart has every acknowledged event.
    std::fs::remove_dir(dir.path().join("00000000000000000002.journal")).unwrap();
    let sidecar = Sidecar::start(&flags);
    let mut c = pb::end_call_service_client::EndCallServiceClient::new(
        probe::connect(&sidecar.addr, PATIENCE).await.unwrap(),
    );
    for id in &acknowledged {
        let report = c.get_session(get(id)).await.unwrap().into_inner();
        assert_eq!(report.state(), SessionState::Ending, "{id}");
    }
}

/// The silence ladder and the time-limit warnings survive a SIGKILL: the user's speech, the
/// agent's speeches and the warnings are journaled, so the restarted sidecar winds the call up
/// exactly when the one that died would have (counted from the journaled user speech), and
/// issues the warning it still owes.
#[tokio::test]
async fn the_silence_ladder_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--state-dir", dir.path().to_str().unwrap()];
    let mut sidecar = Sidecar::start(&flags);
    let mut c = pb::end_call_service_client::EndCallServiceClient::new(
        probe::connect(&sidecar.addr, PATIENCE).await.unwrap(),
    );
    let silence = Duration::from_millis(1500);
    c.open_session(pb::OpenSessionRequest {
        session_id: "quiet".into(),
        options: Some(pb::SessionOptions {
            silence_timeout: Some(duration(silence)),
            silence_reminders: Some(0),
            ..Default::default()
        }),
        max_duration: Some(duration(Duration::from_secs(60))),
        max_duration_warnings: vec![pb::TimeLimitWarning {
            before: Some(duration(Duration::from_millis(59_000))),
            instructions: "a minute, give or take".into(),
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    c.on_speech_created(created("quiet", "greeting"))
        .await
        .unwrap();
    c.on_speech_done(done("quiet", "greeting")).await.unwrap();
    c.on_user_speech(user_speech("quiet")).await.unwrap();
    let before = c.get_session(get("quiet")).await.unwrap().into_inner();
    sidecar.child.kill().unwrap(); // SIGKILL
    sidecar.child.wait().unwrap();

    sidecar = Sidecar::start(&flags);
    let mut c = pb::end_call_service_client::EndCallServiceClient::new(
        probe::connect(&sidecar.addr, PATIENCE).await.unwrap(),
    );
    let mut stream = c
        .watch_session(watch("quiet", 0))
        .await
        .unwrap()
        .into_inner();
    let warning = next(&mut stream).await;
    assert_eq!(
        kind(&warning),
        Kind::Remind(ShutdownCause::MaxDuration, "a minute, give or take".into())
    );
    let wind_up = next(&mut stream).await;
    assert_eq!(kind(&wind_up), Kind::WindUp(ShutdownCause::SilenceTimeout));
    let after = c.get_session(get("quiet")).await.unwrap().into_inner();
    assert_eq!(
        after.timeline[..before.timeline.len()],
        before.timeline[..],
        "the timeline came back as it was"
    );
    let spoke = before
        .timeline
        .iter()
        .find(|e| matches!(&e.entry, Some(Entry::Event(t)) if t == "user_speech"))
        .and_then(|e| e.at)
        .unwrap();
    let micros = |t: prost_types::Timestamp| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000;
    let late = micros(wind_up.issued_at.unwrap()) - micros(spoke);
    assert!(
        late >= silence.as_micros() as i64,
        "the silence counts from the journaled user speech: {late} us"
    );
}
