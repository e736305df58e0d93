//! The worker's lease and the sidecar's own teardown (`docs/contract.md`, "The worker's lease
//! and the sidecar's teardown"), on the real server: a watch stream that goes and does not
//! come back, one that comes back in time, a worker refused a stream that keeps sending
//! events, a shutdown never followed by a close, and a restart that must not count the
//! sidecar's own downtime against a worker. No LiveKit is configured here, so each teardown's
//! result is `NOT_CONFIGURED`; the requests to LiveKit are tested against the stand-in in the
//! Python suite.

use std::time::{Duration, Instant, SystemTime};

use endcall_sidecar::proto::v1 as pb;
use endcall_testkit::{
    process::Sidecar,
    requests::{created, done, end_call, kind, watch, Kind},
    server::{Client, TestServer},
    PATIENCE,
};
use tonic::Code;

fn open_in(session: &str, room: &str) -> pb::OpenSessionRequest {
    pb::OpenSessionRequest {
        session_id: session.into(),
        room: room.into(),
        ..Default::default()
    }
}

async fn report(c: &mut Client, session: &str) -> pb::SessionReport {
    c.get_session(pb::GetSessionRequest {
        session_id: session.into(),
    })
    .await
    .expect("the session exists")
    .into_inner()
}

/// Polls the report until the session is closed and its teardown (if any) has a result.
async fn wait_ended(c: &mut Client, session: &str) -> pb::SessionReport {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let report = report(c, session).await;
        let closed = report.state() == pb::SessionState::Closed;
        let pending = report
            .teardown
            .as_ref()
            .is_some_and(|t| t.result() == pb::TeardownResult::Unspecified);
        if closed && !pending {
            return report;
        }
        assert!(Instant::now() < deadline, "not ended in time: {report:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn micros(t: Option<prost_types::Timestamp>) -> i64 {
    let t = t.expect("a time");
    t.seconds * 1_000_000 + i64::from(t.nanos / 1000)
}

fn now_micros() -> i64 {
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_micros()).unwrap()
}

#[tokio::test]
async fn a_worker_gone_for_the_window_is_lost_and_its_call_torn_down() {
    let server = TestServer::start(&["--worker-lost-after", "300ms"]).await;
    let mut c = server.client().await;
    c.open_session(open_in("lost", "room-lost")).await.unwrap();
    let stream = c.watch_session(watch("lost", 0)).await.unwrap();
    let attended = report(&mut c, "lost").await;
    assert!(attended.attended);
    assert_eq!(attended.room, "room-lost");
    let dropped_at = now_micros();
    drop(stream);
    let ended = wait_ended(&mut c, "lost").await;
    assert_eq!(ended.outcome(), pb::Outcome::WorkerLost);
    assert_eq!(ended.close_reason(), pb::CloseReason::Unspecified);
    let teardown = ended.teardown.expect("a teardown");
    assert_eq!(teardown.cause(), pb::TeardownCause::WorkerLost);
    assert_eq!(teardown.result(), pb::TeardownResult::NotConfigured);
    assert_eq!(teardown.attempts, 0);
    assert!(
        micros(teardown.decided_at) - dropped_at >= 300_000,
        "not before the window ended"
    );
    assert!(ended.timeline.iter().any(|e| e.entry
        == Some(pb::timeline_entry::Entry::Event(
            "torn_down cause=worker_lost".into()
        ))));
    server.stop().await;
}

#[tokio::test]
async fn a_stream_that_comes_back_within_the_window_keeps_the_call() {
    let server = TestServer::start(&["--worker-lost-after", "1s"]).await;
    let mut c = server.client().await;
    c.open_session(open_in("back", "room-back")).await.unwrap();
    let stream = c.watch_session(watch("back", 0)).await.unwrap();
    drop(stream);
    let _back = c.watch_session(watch("back", 0)).await.unwrap();
    // Well past the window, with the stream back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let report = report(&mut c, "back").await;
    assert_eq!(report.state(), pb::SessionState::Active);
    assert!(report.teardown.is_none());
    server.stop().await;
}

#[tokio::test]
async fn a_worker_refused_a_stream_that_keeps_sending_events_keeps_the_call() {
    let server = TestServer::start(&["--worker-lost-after", "1s", "--max-watchers", "1"]).await;
    let mut c = server.client().await;
    c.open_session(open_in("busy", "room-busy")).await.unwrap();
    let first = c.watch_session(watch("busy", 0)).await.unwrap();
    drop(first);
    // Another session takes the only slot before the worker can reconnect.
    let mut other = server.client().await;
    let _held = other.watch_session(watch("other", 0)).await.unwrap();
    let refused = c.watch_session(watch("busy", 0)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    // Events every 150 ms for three windows: each renews the lease.
    for i in 0..20 {
        c.on_speech_created(created("busy", &format!("S{i}")))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let kept = report(&mut c, "busy").await;
    assert_eq!(kept.state(), pb::SessionState::Active, "{kept:?}");
    // Then the worker goes quiet: now it is lost.
    let ended = wait_ended(&mut c, "busy").await;
    assert_eq!(ended.outcome(), pb::Outcome::WorkerLost);
    server.stop().await;
}

#[tokio::test]
async fn a_session_never_watched_expires_idle_and_is_not_torn_down() {
    let server =
        TestServer::start(&["--worker-lost-after", "100ms", "--idle-expiry", "400ms"]).await;
    let mut c = server.client().await;
    c.open_session(open_in("grpcurl", "room-g")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        report(&mut c, "grpcurl").await.state(),
        pb::SessionState::Active
    );
    let ended = wait_ended(&mut c, "grpcurl").await;
    assert_eq!(ended.outcome(), pb::Outcome::Expired);
    assert!(ended.teardown.is_none());
    assert!(!ended.attended);
    server.stop().await;
}

#[tokio::test]
async fn a_shutdown_never_closed_is_torn_down_at_the_close_deadline() {
    let server = TestServer::start(&["--close-deadline", "300ms"]).await;
    let mut c = server.client().await;
    c.open_session(open_in("stuck", "room-stuck"))
        .await
        .unwrap();
    let mut stream = c
        .watch_session(watch("stuck", 0))
        .await
        .unwrap()
        .into_inner();
    c.end_call(end_call("stuck", "S")).await.unwrap();
    c.on_speech_done(done("stuck", "S")).await.unwrap();
    let shutdown = endcall_testkit::requests::next(&mut stream).await;
    assert_eq!(
        kind(&shutdown),
        Kind::Shutdown(pb::ShutdownCause::ToolTurnDone)
    );
    // The worker holds its stream but never closes: its close path hangs.
    endcall_testkit::requests::assert_ends(&mut stream).await;
    let ended = wait_ended(&mut c, "stuck").await;
    assert_eq!(ended.outcome(), pb::Outcome::ToolTurnDone);
    let teardown = ended.teardown.expect("a teardown");
    assert_eq!(teardown.cause(), pb::TeardownCause::CloseDeadline);
    assert!(micros(teardown.decided_at) - micros(ended.shutdown_at) >= 300_000);
    // A close that comes after all changes nothing.
    let late = c
        .on_session_close(endcall_testkit::requests::close(
            "stuck",
            pb::CloseReason::UserInitiated,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(late.duplicate && late.directives.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn delete_room_off_keeps_the_room() {
    let server = TestServer::start(&["--worker-lost-after", "100ms"]).await;
    let mut c = server.client().await;
    let mut open = open_in("kept", "room-kept");
    open.options = Some(pb::SessionOptions {
        delete_room: Some(false),
        ..Default::default()
    });
    c.open_session(open).await.unwrap();
    drop(c.watch_session(watch("kept", 0)).await.unwrap());
    let ended = wait_ended(&mut c, "kept").await;
    let teardown = ended.teardown.expect("a teardown");
    assert_eq!(teardown.result(), pb::TeardownResult::RoomKept);
    server.stop().await;
}

#[tokio::test]
async fn a_room_name_is_checked() {
    let server = TestServer::start(&[]).await;
    let mut c = server.client().await;
    for room in ["r".repeat(257), "a\nb".to_owned()] {
        let status = c.open_session(open_in("r", &room)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with("room: "), "{status:?}");
    }
    server.stop().await;
}

/// With `--state-dir`, the sidecar killed with SIGKILL and down for longer than the window:
/// after the restart each attended worker gets the whole window again, and only then is lost.
#[tokio::test]
async fn a_restart_gives_every_attended_worker_a_whole_window() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--state-dir",
        dir.path().to_str().unwrap(),
        "--worker-lost-after",
        "1s",
    ];
    let mut sidecar = Sidecar::start(&flags);
    {
        let channel = sidecar.channels(1).await.remove(0);
        let mut c = Client::new(channel);
        c.open_session(open_in("r1", "room-r1")).await.unwrap();
        let _stream = c.watch_session(watch("r1", 0)).await.unwrap();
        // The stream's record is on disk once an event after it is acknowledged.
        c.on_speech_created(created("r1", "A")).await.unwrap();
        sidecar.child.kill().unwrap(); // SIGKILL: the stream never closed as far as the journal knows
        sidecar.wait().await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let restarted_at = now_micros();
    let sidecar = Sidecar::start(&flags);
    let mut c = Client::new(sidecar.channels(1).await.remove(0));
    let kept = report(&mut c, "r1").await;
    assert_eq!(kept.state(), pb::SessionState::Active, "{kept:?}");
    let ended = wait_ended(&mut c, "r1").await;
    let teardown = ended.teardown.expect("a teardown");
    assert_eq!(teardown.cause(), pb::TeardownCause::WorkerLost);
    assert!(
        micros(teardown.decided_at) - restarted_at >= 1_000_000,
        "the window counts from the restart"
    );
}
