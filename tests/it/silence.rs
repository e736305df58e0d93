//! The silence ladder, staged time limits and `ended_reason` on the real server
//! (`docs/contract.md`: the silence ladder, staged time limits, ended reason): what arrives on
//! the watch stream and in each reply, in order, and what `GetSession` reports.

use std::time::Duration;

use endcall_sidecar::proto::v1::{self as pb, CloseReason, EndedReason, Outcome, ShutdownCause};
use endcall_testkit::*;

const REMINDER: &str = "Ask whether they are still there.";
const GOODBYE: &str = "Nobody is there: say goodbye.";

fn get(session: &str) -> pb::GetSessionRequest {
    pb::GetSessionRequest {
        session_id: session.into(),
    }
}

/// Silence timeout `timeout`, one reminder after `after`.
fn silence(timeout: Duration, after: Duration) -> pb::SessionOptions {
    pb::SessionOptions {
        silence_timeout: Some(duration(timeout)),
        silence_reminder_after: Some(duration(after)),
        silence_reminders: Some(1),
        silence_reminder_instructions: Some(REMINDER.into()),
        ..Default::default()
    }
}

fn open(session: &str, options: pb::SessionOptions) -> pb::OpenSessionRequest {
    pb::OpenSessionRequest {
        session_id: session.into(),
        options: Some(options),
        room: format!("room-{session}"),
        ..Default::default()
    }
}

async fn server() -> TestServer {
    TestServer::start(&[
        "--wind-up-grace",
        "300ms",
        "--silence-wind-up-instructions",
        GOODBYE,
    ])
    .await
}

/// A silent user: the reminder, then WIND_UP with the silence's own goodbye, then
/// SHUTDOWN_SESSION (SILENCE_TIMEOUT) after the grace, and the close's DELETE_ROOM and
/// SHUTDOWN_JOB; the report says why it ended.
#[tokio::test]
async fn a_silent_user_is_reminded_then_the_call_is_wound_up_and_shut_down() {
    let server = server().await;
    let mut c = server.client().await;
    let ms = Duration::from_millis;
    let opened = c
        .open_session(open("s1", silence(ms(400), ms(150))))
        .await
        .unwrap()
        .into_inner();
    let options = opened.options.unwrap();
    assert_eq!(options.silence_timeout, Some(duration(ms(400))));
    assert_eq!(options.silence_reminders, 1);
    let mut stream = c.watch_session(watch("s1", 0)).await.unwrap().into_inner();
    assert_eq!(
        kind(&next(&mut stream).await),
        Kind::Remind(ShutdownCause::SilenceTimeout, REMINDER.into())
    );
    let wind_up = next(&mut stream).await;
    assert_eq!(kind(&wind_up), Kind::WindUp(ShutdownCause::SilenceTimeout));
    assert_eq!(wind_up.instructions, GOODBYE);
    let shutdown = next(&mut stream).await;
    assert_eq!(
        kind(&shutdown),
        Kind::Shutdown(ShutdownCause::SilenceTimeout)
    );
    let close = c
        .on_session_close(close("s1", CloseReason::UserInitiated))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        kinds(&close.directives),
        [Kind::DeleteRoom, Kind::ShutdownJob("user_initiated".into())]
    );
    let report = c.get_session(get("s1")).await.unwrap().into_inner();
    assert_eq!(report.outcome(), Outcome::SilenceTimeout);
    assert_eq!(report.ended_reason(), EndedReason::SilenceTimeout);
    // The server's own times: the reminder at 150 ms of silence, the wind-up at 400 ms, the
    // shutdown 300 ms of grace after the silence reached the timeout (a late timer issues the
    // wind-up late, not the shutdown).
    let at = |d: &pb::Directive| {
        let t = d.issued_at.unwrap();
        Duration::new(t.seconds as u64, t.nanos as u32)
    };
    let created = report.created_at.unwrap();
    let created = Duration::new(created.seconds as u64, created.nanos as u32);
    let [remind, wind_up, shutdown, ..] = &report.directives[..] else {
        panic!("{:?}", report.directives)
    };
    assert!(at(remind) >= created + ms(150));
    assert!(at(wind_up) >= created + ms(400));
    assert!(at(shutdown) >= created + ms(700));
    server.stop().await;
}

/// The user answering (OnUserSpeech) starts the silence again, and the agent speaking pauses
/// it: a call where someone is talking is never wound up for silence.
#[tokio::test]
async fn a_user_who_answers_keeps_the_call_going() {
    let server = server().await;
    let mut c = server.client().await;
    let ms = Duration::from_millis;
    c.open_session(open("s2", silence(ms(1500), ms(300))))
        .await
        .unwrap();
    let mut stream = c.watch_session(watch("s2", 0)).await.unwrap().into_inner();
    assert_eq!(
        kind(&next(&mut stream).await),
        Kind::Remind(ShutdownCause::SilenceTimeout, REMINDER.into())
    );
    // The reminder is spoken, the user answers; for a while the agent and the user take turns.
    for turn in 0..2 {
        let speech = format!("reply-{turn}");
        let reply = c.on_speech_created(created("s2", &speech)).await.unwrap();
        assert!(reply.into_inner().directives.is_empty());
        // A long agent turn, longer than the timeout: paused, so nothing comes.
        tokio::time::sleep(ms(1600)).await;
        c.on_speech_done(done("s2", &speech)).await.unwrap();
        let reply = c
            .on_user_speech(user_speech("s2"))
            .await
            .unwrap()
            .into_inner();
        assert!(reply.directives.is_empty(), "{:?}", reply.directives);
        assert_eq!(reply.state(), pb::SessionState::Active);
        tokio::time::sleep(ms(50)).await;
    }
    let report = c.get_session(get("s2")).await.unwrap().into_inner();
    assert_eq!(report.directives.len(), 1, "{:?}", report.directives);
    assert!(report.timeline.iter().any(
        |e| matches!(&e.entry, Some(pb::timeline_entry::Entry::Event(t)) if t == "user_speech")
    ));
    // The agent ends the call itself: no silence directive comes after end_call.
    c.end_call(end_call("s2", "bye")).await.unwrap();
    let shutdown = c
        .on_speech_done(done("s2", "bye"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        kinds(&shutdown.directives),
        [Kind::Shutdown(ShutdownCause::ToolTurnDone)]
    );
    c.on_session_close(close("s2", CloseReason::UserInitiated))
        .await
        .unwrap();
    let report = c.get_session(get("s2")).await.unwrap().into_inner();
    assert_eq!(report.ended_reason(), EndedReason::AgentEndCall);
    server.stop().await;
}

/// The server's defaults (`--silence-timeout` and the rest) apply to a session that gives no
/// options, and a session turns the ladder off with a zero `silence_timeout`.
#[tokio::test]
async fn the_flags_set_the_defaults_and_zero_turns_it_off() {
    let server = TestServer::start(&[
        "--silence-timeout",
        "300ms",
        "--silence-reminders",
        "0",
        "--wind-up-grace",
        "100ms",
    ])
    .await;
    let mut c = server.client().await;
    let mut stream = c.watch_session(watch("d1", 0)).await.unwrap().into_inner();
    let wind_up = next(&mut stream).await;
    assert_eq!(kind(&wind_up), Kind::WindUp(ShutdownCause::SilenceTimeout));
    assert_eq!(
        wind_up.instructions,
        "The user is not responding. Say goodbye and end the call."
    );
    let off = pb::SessionOptions {
        silence_timeout: Some(duration(Duration::ZERO)),
        ..Default::default()
    };
    let opened = c.open_session(open("d2", off)).await.unwrap().into_inner();
    assert_eq!(opened.options.unwrap().silence_timeout, None);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let report = c.get_session(get("d2")).await.unwrap().into_inner();
    assert!(report.directives.is_empty(), "{:?}", report.directives);
    server.stop().await;
}

/// Staged time limits: each warning once, as REMIND (MAX_DURATION), in time order, then
/// WIND_UP and SHUTDOWN_SESSION (MAX_DURATION) as before.
#[tokio::test]
async fn time_limit_warnings_come_before_the_wind_up() {
    let server = server().await;
    let mut c = server.client().await;
    let ms = Duration::from_millis;
    let warning = |before, text: &str| pb::TimeLimitWarning {
        before: Some(duration(before)),
        instructions: text.into(),
    };
    c.open_session(pb::OpenSessionRequest {
        session_id: "w1".into(),
        max_duration: Some(duration(ms(900))),
        max_duration_warnings: vec![
            warning(ms(200), "almost out of time"),
            warning(ms(500), "half a second left"),
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = c.watch_session(watch("w1", 0)).await.unwrap().into_inner();
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(kind(&next(&mut stream).await));
    }
    assert_eq!(
        got,
        [
            Kind::Remind(ShutdownCause::MaxDuration, "half a second left".into()),
            Kind::Remind(ShutdownCause::MaxDuration, "almost out of time".into()),
            Kind::WindUp(ShutdownCause::MaxDuration),
            Kind::Shutdown(ShutdownCause::MaxDuration),
        ]
    );
    c.on_session_close(close("w1", CloseReason::ParticipantDisconnected))
        .await
        .unwrap();
    let report = c.get_session(get("w1")).await.unwrap().into_inner();
    assert_eq!(report.ended_reason(), EndedReason::MaxDuration);
    server.stop().await;
}

/// ended reason: how each ordinary call ends, as GetSession reports it.
#[tokio::test]
async fn get_session_reports_why_each_call_ended() {
    let server = server().await;
    let mut c = server.client().await;
    let reader = c.clone();
    let ended = |id: &'static str| {
        let mut c = reader.clone();
        async move {
            c.get_session(get(id))
                .await
                .unwrap()
                .into_inner()
                .ended_reason()
        }
    };
    c.end_call(end_call("e1", "S")).await.unwrap();
    assert_eq!(ended("e1").await, EndedReason::Unspecified, "not ended");
    c.on_speech_done(done("e1", "S")).await.unwrap();
    c.on_session_close(close("e1", CloseReason::UserInitiated))
        .await
        .unwrap();
    assert_eq!(ended("e1").await, EndedReason::AgentEndCall);
    for (id, reason, expected) in [
        (
            "e2",
            CloseReason::ParticipantDisconnected,
            EndedReason::UserHangup,
        ),
        ("e3", CloseReason::Error, EndedReason::Error),
        ("e4", CloseReason::JobShutdown, EndedReason::JobShutdown),
        ("e5", CloseReason::TaskCompleted, EndedReason::AgentClosed),
    ] {
        c.on_user_speech(user_speech(id)).await.unwrap();
        c.on_session_close(close(id, reason)).await.unwrap();
        assert_eq!(ended(id).await, expected, "{id}");
    }
    server.stop().await;
}
