//! The contract's flows against the real server over loopback TCP, with a tonic client.

use std::time::{Duration, Instant};

use endcall_sidecar::proto::v1::{self as pb, CloseReason, Outcome, SessionState, ShutdownCause};
use endcall_testkit::*;

#[tokio::test]
async fn pipeline_flow() {
    let server = TestServer::start(&[]).await;
    let mut c = server.client().await;

    let reply = c.end_call(end_call("p1", "S")).await.unwrap().into_inner();
    assert_eq!(
        reply.tool_output.as_deref(),
        Some("say goodbye to the user")
    );
    assert!(reply.directives.is_empty());
    assert_eq!(reply.state(), SessionState::Ending);

    let reply = c
        .on_speech_done(done("p1", "S"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        kinds(&reply.directives),
        [Kind::Shutdown(ShutdownCause::ToolTurnDone)]
    );
    assert_eq!(reply.directives[0].seq, 1);
    assert_eq!(reply.directives[0].session_id, "p1");
    assert!(reply.directives[0].issued_at.is_some());
    assert_eq!(reply.state(), SessionState::ShuttingDown);

    let reply = c
        .on_session_close(close("p1", CloseReason::UserInitiated))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        kinds(&reply.directives),
        [Kind::DeleteRoom, Kind::ShutdownJob("user_initiated".into())]
    );
    assert_eq!(reply.state(), SessionState::Closed);

    // The stream replays all three, in order, then ends.
    let mut stream = c.watch_session(watch("p1", 0)).await.unwrap().into_inner();
    for seq in 1..=3 {
        assert_eq!(next(&mut stream).await.seq, seq);
    }
    assert_ends(&mut stream).await;
    server.stop().await;
}

#[tokio::test]
async fn realtime_flow_with_reply() {
    let server = TestServer::start(&[]).await;
    let mut c = server.client().await;
    c.end_call(realtime_end_call("r1", "S")).await.unwrap();
    let reply = c
        .on_speech_done(done("r1", "S"))
        .await
        .unwrap()
        .into_inner();
    assert!(reply.directives.is_empty());
    assert_eq!(reply.state(), SessionState::AwaitingReply);
    let reply = c
        .on_speech_created(created("r1", "R"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.state(), SessionState::PlayingReply);
    let reply = c
        .on_speech_done(done("r1", "R"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        kinds(&reply.directives),
        [Kind::Shutdown(ShutdownCause::ReplyPlayedOut)]
    );
    server.stop().await;
}

#[tokio::test]
async fn realtime_reply_timeout_arrives_on_the_watch_stream() {
    let server = TestServer::start(&["--reply-timeout", "200ms"]).await;
    let mut c = server.client().await;
    // The watcher connects before the session exists.
    let mut stream = c.watch_session(watch("t1", 0)).await.unwrap().into_inner();
    c.end_call(realtime_end_call("t1", "S")).await.unwrap();
    // Taken before the request: the server starts the timeout when it handles it, so the
    // directive comes at least 200 ms after this, however long the reply took to get back.
    let started = Instant::now();
    c.on_speech_done(done("t1", "S")).await.unwrap();

    let d = next(&mut stream).await;
    assert!(
        started.elapsed() >= Duration::from_millis(190),
        "fired early"
    );
    assert_eq!(kind(&d), Kind::Shutdown(ShutdownCause::ReplyTimeout));
    assert_eq!(d.seq, 1);

    let state = c.get_session(get("t1")).await.unwrap().into_inner().state();
    assert_eq!(state, SessionState::ShuttingDown);

    c.on_session_close(close("t1", CloseReason::UserInitiated))
        .await
        .unwrap();
    assert_eq!(kind(&next(&mut stream).await), Kind::DeleteRoom);
    assert_eq!(
        kind(&next(&mut stream).await),
        Kind::ShutdownJob("user_initiated".into())
    );
    assert_ends(&mut stream).await;
    server.stop().await;
}

#[tokio::test]
async fn close_before_the_goodbye_finished() {
    let server = TestServer::start(&[]).await;
    let mut c = server.client().await;
    c.end_call(end_call("c1", "S")).await.unwrap();
    let reply = c
        .on_session_close(close("c1", CloseReason::ParticipantDisconnected))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        kinds(&reply.directives),
        [
            Kind::DeleteRoom,
            Kind::ShutdownJob("participant_disconnected".into())
        ]
    );
    let reply = c
        .on_speech_done(done("c1", "S"))
        .await
        .unwrap()
        .into_inner();
    assert!(reply.directives.is_empty());
    assert_eq!(reply.state(), SessionState::Closed);
    let report = c.get_session(get("c1")).await.unwrap().into_inner();
    assert_eq!(report.outcome(), Outcome::ClosedDuringEndCall);
    server.stop().await;
}

#[tokio::test]
async fn close_without_end_call() {
    let server = TestServer::start(&[]).await;
    let mut c = server.client().await;
    let mut stream = c.watch_session(watch("n1", 0)).await.unwrap().into_inner();
    c.on_speech_created(created("n1", "greeting"))
        .await
        .unwrap();
    c.on_speech_done(done("n1", "greeting")).await.unwrap();
    let reply = c
        .on_session_close(pb::OnSessionCloseRequest {
            error_message: Some("llm failed".into()),
            ..close("n1", CloseReason::Error)
        })
        .await
        .unwrap()
        .into_inner();
    assert!(reply.directives.is_empty());
    assert_eq!(reply.state(), SessionState::Closed);
    // Closing issues nothing, and still ends the stream.
    assert_ends(&mut stream).await;
    let report = c.get_session(get("n1")).await.unwrap().into_inner();
    assert_eq!(report.outcome(), Outcome::ClosedWithoutEndCall);
    assert_eq!(report.close_reason(), CloseReason::Error);
    assert_eq!(report.error_message.as_deref(), Some("llm failed"));
    server.stop().await;
}

#[tokio::test]
async fn every_close_reason_reaches_shutdown_job_as_its_string() {
    let server = TestServer::start(&[]).await;
    let mut c = server.client().await;
    let reasons = [
        (CloseReason::Error, "error"),
        (CloseReason::JobShutdown, "job_shutdown"),
        (
            CloseReason::ParticipantDisconnected,
            "participant_disconnected",
        ),
        (CloseReason::UserInitiated, "user_initiated"),
        (CloseReason::TaskCompleted, "task_completed"),
    ];
    for (reason, text) in reasons {
        let id = format!("reason-{text}");
        c.end_call(end_call(&id, "S")).await.unwrap();
        let reply = c
            .on_session_close(close(&id, reason))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            kinds(&reply.directives).last(),
            Some(&Kind::ShutdownJob(text.into()))
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn duplicate_events_never_produce_a_directive_twice() {
    let server = TestServer::start(&[]).await;
    let mut c = server.client().await;
    c.end_call(end_call("d1", "S")).await.unwrap();
    let again = c.end_call(end_call("d1", "S")).await.unwrap().into_inner();
    assert!(again.duplicate);
    assert_eq!(
        again.tool_output.as_deref(),
        Some("say goodbye to the user")
    );

    let first = c
        .on_speech_done(done("d1", "S"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.directives.len(), 1);
    let again = c
        .on_speech_done(done("d1", "S"))
        .await
        .unwrap()
        .into_inner();
    assert!(again.duplicate);
    assert!(again.directives.is_empty());

    let first = c
        .on_session_close(close("d1", CloseReason::UserInitiated))
        .await
        .unwrap()
        .into_inner();
    let again = c
        .on_session_close(close("d1", CloseReason::UserInitiated))
        .await
        .unwrap()
        .into_inner();
    assert!(again.duplicate);
    assert_eq!(first.directives, again.directives);

    let report = c.get_session(get("d1")).await.unwrap().into_inner();
    assert_eq!(
        report.directives.iter().map(|d| d.seq).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    server.stop().await;
}

#[tokio::test]
async fn watcher_reconnects_with_after_seq() {
    let server = TestServer::start(&[]).await;
    let mut c = server.client().await;
    c.end_call(end_call("w1", "S")).await.unwrap();
    c.on_speech_done(done("w1", "S")).await.unwrap();

    // A live stream gets seq 1, then drops.
    let mut stream = c.watch_session(watch("w1", 0)).await.unwrap().into_inner();
    assert_eq!(next(&mut stream).await.seq, 1);
    drop(stream);

    // Reconnecting after 1 sees nothing old, then what comes next.
    let mut stream = c.watch_session(watch("w1", 1)).await.unwrap().into_inner();
    c.on_session_close(close("w1", CloseReason::UserInitiated))
        .await
        .unwrap();
    assert_eq!(next(&mut stream).await.seq, 2);
    assert_eq!(next(&mut stream).await.seq, 3);
    assert_ends(&mut stream).await;

    // After everything was seen, a reconnect ends at once; one from the middle replays.
    let mut stream = c.watch_session(watch("w1", 3)).await.unwrap().into_inner();
    assert_ends(&mut stream).await;
    let mut stream = c.watch_session(watch("w1", 2)).await.unwrap().into_inner();
    assert_eq!(next(&mut stream).await.seq, 3);
    assert_ends(&mut stream).await;
    server.stop().await;
}

#[tokio::test]
async fn late_end_call_after_its_speech_is_done() {
    let server = TestServer::start(&[]).await;
    let mut c = server.client().await;
    c.on_speech_done(done("l1", "S")).await.unwrap();
    let reply = c.end_call(end_call("l1", "S")).await.unwrap().into_inner();
    assert_eq!(
        kinds(&reply.directives),
        [Kind::Shutdown(ShutdownCause::ToolTurnDone)]
    );
    server.stop().await;
}

#[tokio::test]
async fn session_options_change_the_flow() {
    let server = TestServer::start(&[]).await;
    let mut c = server.client().await;
    let options = pb::SessionOptions {
        delete_room: Some(false),
        end_instructions: Some(pb::EndInstructions {
            value: Some(pb::end_instructions::Value::None(true)),
        }),
        ..Default::default()
    };
    let reply = c
        .end_call(pb::EndCallRequest {
            options: Some(options),
            ..realtime_end_call("o1", "S")
        })
        .await
        .unwrap()
        .into_inner();
    // No output: the LLM is asked for no reply, so even a realtime model is not waited for.
    assert_eq!(reply.tool_output, None);
    let reply = c
        .on_speech_done(done("o1", "S"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        kinds(&reply.directives),
        [Kind::Shutdown(ShutdownCause::ToolTurnDone)]
    );
    let reply = c
        .on_session_close(close("o1", CloseReason::UserInitiated))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        kinds(&reply.directives),
        [Kind::ShutdownJob("user_initiated".into())]
    );
    server.stop().await;
}

#[tokio::test]
async fn server_defaults_come_from_flags() {
    let server = TestServer::start(&[
        "--no-end-instructions",
        "--delete-room",
        "false",
        "--extra-description",
        "Only when the user asks.",
        "--ignore-on-enter",
        "true",
    ])
    .await;
    let mut c = server.client().await;
    let reply = c.end_call(end_call("f1", "S")).await.unwrap().into_inner();
    assert_eq!(reply.tool_output, None);
    let tool = c
        .get_tool(pb::GetToolRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(tool.description.ends_with("\nOnly when the user asks."));
    assert!(tool.ignore_on_enter);
    server.stop().await;
}

#[tokio::test]
async fn get_tool_describes_the_end_call_tool() {
    let server = TestServer::start(&[]).await;
    let mut c = server.client().await;
    let tool = c
        .get_tool(pb::GetToolRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tool.name, "end_call");
    assert!(tool.description.starts_with("End the call"));
    assert!(!tool.ignore_on_enter);
    let schema: serde_json::Value = serde_json::from_str(&tool.parameters_json_schema).unwrap();
    assert_eq!(schema["type"], "object");

    let tool = c
        .get_tool(pb::GetToolRequest {
            extra_description: Some("Never during billing.".into()),
            ignore_on_enter: Some(true),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(tool.description.ends_with("\nNever during billing."));
    assert!(tool.ignore_on_enter);
    server.stop().await;
}

#[tokio::test]
async fn get_session_reports_the_call() {
    let server = TestServer::start(&[]).await;
    let mut c = server.client().await;
    c.on_speech_created(created("g1", "greeting"))
        .await
        .unwrap();
    c.end_call(realtime_end_call("g1", "S")).await.unwrap();
    c.on_speech_done(pb::OnSpeechDoneRequest {
        interrupted: true,
        ..done("g1", "S")
    })
    .await
    .unwrap();
    c.on_speech_created(created("g1", "R")).await.unwrap();
    c.on_speech_done(done("g1", "R")).await.unwrap();
    c.on_session_close(close("g1", CloseReason::UserInitiated))
        .await
        .unwrap();

    let report = c.get_session(get("g1")).await.unwrap().into_inner();
    assert_eq!(report.state(), SessionState::Closed);
    assert_eq!(report.outcome(), Outcome::ReplyPlayedOut);
    assert_eq!(report.close_reason(), CloseReason::UserInitiated);
    assert_eq!(report.capabilities.unwrap().realtime, Some(true));
    assert!(report.options.unwrap().delete_room);
    assert!(report.goodbye_duration.is_some());
    let events: Vec<String> = report
        .timeline
        .iter()
        .filter_map(|e| match &e.entry {
            Some(pb::timeline_entry::Entry::Event(text)) => Some(text.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        events,
        [
            "speech_created speech=greeting",
            "end_call speech=S",
            "speech_done speech=S interrupted",
            "speech_created speech=R",
            "speech_done speech=R",
            "session_close reason=user_initiated",
        ]
    );
    assert_eq!(report.timeline.len(), 9);
    assert_eq!(report.directives.len(), 3);
    server.stop().await;
}

#[tokio::test]
async fn playout_guard_ends_a_hung_goodbye() {
    let server = TestServer::start(&["--playout-guard", "200ms"]).await;
    let mut c = server.client().await;
    let mut stream = c.watch_session(watch("pg1", 0)).await.unwrap().into_inner();
    c.end_call(end_call("pg1", "S")).await.unwrap();
    assert_eq!(
        kind(&next(&mut stream).await),
        Kind::Shutdown(ShutdownCause::PlayoutGuard)
    );
    server.stop().await;
}

#[tokio::test]
async fn max_call_duration_winds_up_then_shuts_down() {
    let server = TestServer::start(&["--wind-up-grace", "200ms"]).await;
    let mut c = server.client().await;
    let opened = c
        .open_session(pb::OpenSessionRequest {
            session_id: "m1".into(),
            options: None,
            max_duration: Some(prost_types::Duration {
                seconds: 0,
                nanos: 200_000_000,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(opened.state(), SessionState::Active);
    assert!(opened.options.unwrap().max_duration.is_some());
    let mut stream = c.watch_session(watch("m1", 0)).await.unwrap().into_inner();
    let wind_up = next(&mut stream).await;
    assert_eq!(kind(&wind_up), Kind::WindUp(ShutdownCause::MaxDuration));
    assert!(!wind_up.instructions.is_empty());
    assert_eq!(
        kind(&next(&mut stream).await),
        Kind::Shutdown(ShutdownCause::MaxDuration)
    );
    server.stop().await;
}

#[tokio::test]
async fn concurrent_sessions_do_not_interfere() {
    let server = TestServer::start(&[]).await;
    let channel = server.channel().await;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let mut c = endcall_sidecar::proto::v1::end_call_service_client::EndCallServiceClient::new(
            channel.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let id = format!("many-{i}");
            c.end_call(end_call(&id, "S")).await.unwrap();
            let reply = c.on_speech_done(done(&id, "S")).await.unwrap().into_inner();
            assert_eq!(reply.directives.len(), 1);
            assert_eq!(reply.directives[0].seq, 1);
            assert_eq!(reply.directives[0].session_id, id);
            let reply = c
                .on_session_close(close(&id, CloseReason::UserInitiated))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                reply.directives.iter().map(|d| d.seq).collect::<Vec<_>>(),
                [2, 3]
            );
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    server.stop().await;
}

fn get(session: &str) -> pb::GetSessionRequest {
    pb::GetSessionRequest {
        session_id: session.into(),
    }
}
