//! Bad input for every RPC: the contract's status code, a message naming the field, and no
//! change to any session.

use endcall_sidecar::proto::v1::{self as pb, CloseReason};
use endcall_testkit::*;
use tonic::{Code, Status};

fn assert_status(result: Result<impl std::fmt::Debug, Status>, code: Code, field: &str) {
    let status = result.expect_err("request must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().starts_with(&format!("{field}:")),
        "message {:?} should name {field}",
        status.message()
    );
}

#[tokio::test]
async fn missing_and_oversized_ids_are_invalid_for_every_rpc() {
    let server = TestServer::start(&[]).await;
    let mut c = server.client().await;
    let long = "x".repeat(129);
    for id in ["", long.as_str(), "line\nbreak"] {
        let field = "session_id";
        let code = Code::InvalidArgument;
        assert_status(c.end_call(end_call(id, "S")).await, code, field);
        assert_status(c.on_speech_created(created(id, "S")).await, code, field);
        assert_status(c.on_speech_done(done(id, "S")).await, code, field);
        assert_status(c.on_user_speech(user_speech(id)).await, code, field);
        assert_status(
            c.on_session_close(close(id, CloseReason::UserInitiated))
                .await,
            code,
            field,
        );
        assert_status(
            c.open_session(pb::OpenSessionRequest {
                session_id: id.into(),
                ..Default::default()
            })
            .await,
            code,
            field,
        );
        assert_status(
            c.get_session(pb::GetSessionRequest {
                session_id: id.into(),
            })
            .await,
            code,
            field,
        );
        assert_status(c.watch_session(watch(id, 0)).await, code, field);

        let field = "speech_id";
        assert_status(c.end_call(end_call("s", id)).await, code, field);
        assert_status(c.on_speech_created(created("s", id)).await, code, field);
        assert_status(c.on_speech_done(done("s", id)).await, code, field);
    }
    // None of it created a session.
    let missing = c
        .get_session(pb::GetSessionRequest {
            session_id: "s".into(),
        })
        .await;
    assert_eq!(missing.unwrap_err().code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn unknown_or_missing_close_reason_is_invalid() {
    let server = TestServer::start(&[]).await;
    let mut c = server.client().await;
    c.end_call(end_call("cr", "S")).await.unwrap();
    for reason in [0, 42] {
        let request = pb::OnSessionCloseRequest {
            session_id: "cr".into(),
            reason,
            error_message: None,
        };
        assert_status(
            c.on_session_close(request).await,
            Code::InvalidArgument,
            "reason",
        );
    }
    let request = pb::OnSessionCloseRequest {
        error_message: Some("e".repeat(5000)),
        ..close("cr", CloseReason::Error)
    };
    assert_status(
        c.on_session_close(request).await,
        Code::InvalidArgument,
        "error_message",
    );
    // The session is still ending: nothing above closed it.
    let reply = c
        .on_speech_done(done("cr", "S"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.directives.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn malformed_options_are_invalid() {
    let server = TestServer::start(&[]).await;
    let mut c = server.client().await;
    let cases = [
        (
            pb::SessionOptions {
                reply_timeout: Some(prost_types::Duration {
                    seconds: -5,
                    nanos: 0,
                }),
                ..Default::default()
            },
            "options.reply_timeout",
        ),
        (
            pb::SessionOptions {
                end_instructions: Some(pb::EndInstructions {
                    value: Some(pb::end_instructions::Value::None(false)),
                }),
                ..Default::default()
            },
            "options.end_instructions.none",
        ),
        (
            pb::SessionOptions {
                end_instructions: Some(pb::EndInstructions {
                    value: Some(pb::end_instructions::Value::Text("y".repeat(5000))),
                }),
                ..Default::default()
            },
            "options.end_instructions.text",
        ),
        (
            pb::SessionOptions {
                silence_timeout: Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                }),
                ..Default::default()
            },
            "options.silence_timeout",
        ),
        (
            pb::SessionOptions {
                silence_timeout: Some(prost_types::Duration {
                    seconds: 3601,
                    nanos: 0,
                }),
                ..Default::default()
            },
            "options.silence_timeout",
        ),
        (
            pb::SessionOptions {
                silence_reminder_after: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 0,
                }),
                ..Default::default()
            },
            "options.silence_reminder_after",
        ),
        (
            pb::SessionOptions {
                silence_reminders: Some(11),
                ..Default::default()
            },
            "options.silence_reminders",
        ),
        (
            pb::SessionOptions {
                silence_reminder_instructions: Some(String::new()),
                ..Default::default()
            },
            "options.silence_reminder_instructions",
        ),
        (
            pb::SessionOptions {
                silence_reminder_instructions: Some("r".repeat(1025)),
                ..Default::default()
            },
            "options.silence_reminder_instructions",
        ),
    ];
    for (options, field) in cases {
        let request = pb::EndCallRequest {
            options: Some(options.clone()),
            ..end_call("mo", "S")
        };
        assert_status(c.end_call(request).await, Code::InvalidArgument, field);
        let request = pb::OpenSessionRequest {
            session_id: "mo".into(),
            options: Some(options),
            max_duration: None,
            ..Default::default()
        };
        assert_status(c.open_session(request).await, Code::InvalidArgument, field);
    }
    let request = pb::OpenSessionRequest {
        session_id: "mo".into(),
        options: None,
        max_duration: Some(prost_types::Duration {
            seconds: 0,
            nanos: 0,
        }),
        ..Default::default()
    };
    assert_status(
        c.open_session(request).await,
        Code::InvalidArgument,
        "max_duration",
    );
    let request = pb::GetToolRequest {
        extra_description: Some("z".repeat(5000)),
        ignore_on_enter: None,
    };
    assert_status(
        c.get_tool(request).await,
        Code::InvalidArgument,
        "extra_description",
    );
    server.stop().await;
}

fn warning(seconds: i64, nanos: i32, text: &str) -> pb::TimeLimitWarning {
    pb::TimeLimitWarning {
        before: Some(prost_types::Duration { seconds, nanos }),
        instructions: text.into(),
    }
}

fn open_warned(
    max_seconds: Option<i64>,
    warnings: Vec<pb::TimeLimitWarning>,
) -> pb::OpenSessionRequest {
    pb::OpenSessionRequest {
        session_id: "warned".into(),
        max_duration: max_seconds.map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
        max_duration_warnings: warnings,
        ..Default::default()
    }
}

/// docs/contract.md, bad input: each warning is before the limit and within the call, with
/// instructions; warnings need the maximum duration; a later OpenSession cannot change them.
#[tokio::test]
async fn time_limit_warnings_are_checked() {
    let server = TestServer::start(&[]).await;
    let mut c = server.client().await;
    let code = Code::InvalidArgument;
    let cases = [
        (
            open_warned(None, vec![warning(10, 0, "soon")]),
            "max_duration_warnings",
        ),
        (
            open_warned(Some(60), vec![warning(10, 0, "soon"); 9]),
            "max_duration_warnings",
        ),
        // Later than the limit: a warning comes before it.
        (
            open_warned(Some(60), vec![warning(10, 0, "a"), warning(-5, 0, "late")]),
            "max_duration_warnings[1].before",
        ),
        (
            open_warned(Some(60), vec![warning(0, 0, "at the limit")]),
            "max_duration_warnings[0].before",
        ),
        (
            open_warned(Some(60), vec![warning(60, 0, "before the call")]),
            "max_duration_warnings[0].before",
        ),
        (
            open_warned(
                Some(60),
                vec![pb::TimeLimitWarning {
                    before: None,
                    instructions: "x".into(),
                }],
            ),
            "max_duration_warnings[0].before",
        ),
        (
            open_warned(Some(60), vec![warning(10, 0, "")]),
            "max_duration_warnings[0].instructions",
        ),
        (
            open_warned(Some(60), vec![warning(10, 0, &"w".repeat(1025))]),
            "max_duration_warnings[0].instructions",
        ),
    ];
    for (request, field) in cases {
        assert_status(c.open_session(request).await, code, field);
    }
    let missing = c.get_session(get("warned")).await;
    assert_eq!(
        missing.unwrap_err().code(),
        Code::NotFound,
        "nothing created"
    );

    let opened = c
        .open_session(open_warned(
            Some(60),
            vec![warning(10, 0, "ten"), warning(30, 0, "thirty")],
        ))
        .await
        .unwrap()
        .into_inner();
    let warnings = opened.options.unwrap().max_duration_warnings;
    assert_eq!(warnings[0].instructions, "thirty", "in time order");
    assert_status(
        c.open_session(open_warned(Some(60), vec![warning(20, 0, "twenty")]))
            .await,
        Code::FailedPrecondition,
        "max_duration_warnings",
    );
    let again = c
        .open_session(open_warned(Some(60), Vec::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.options.unwrap().max_duration_warnings, warnings);
    server.stop().await;
}

fn get(session: &str) -> pb::GetSessionRequest {
    pb::GetSessionRequest {
        session_id: session.into(),
    }
}

#[tokio::test]
async fn end_call_on_a_closed_session_fails_its_precondition() {
    let server = TestServer::start(&[]).await;
    let mut c = server.client().await;
    c.on_session_close(close("closed", CloseReason::UserInitiated))
        .await
        .unwrap();
    assert_status(
        c.end_call(end_call("closed", "S")).await,
        Code::FailedPrecondition,
        "session_id",
    );
    let report = c
        .get_session(pb::GetSessionRequest {
            session_id: "closed".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(report.end_call_at.is_none());
    server.stop().await;
}

#[tokio::test]
async fn different_options_for_a_session_fail_their_precondition_and_change_nothing() {
    let server = TestServer::start(&[]).await;
    let mut c = server.client().await;
    let keep_room = pb::SessionOptions {
        delete_room: Some(false),
        ..Default::default()
    };
    c.end_call(pb::EndCallRequest {
        options: Some(keep_room),
        ..end_call("oc", "S1")
    })
    .await
    .unwrap();
    let delete_room = pb::SessionOptions {
        delete_room: Some(true),
        ..Default::default()
    };
    assert_status(
        c.end_call(pb::EndCallRequest {
            options: Some(delete_room),
            ..end_call("oc", "S2")
        })
        .await,
        Code::FailedPrecondition,
        "options",
    );
    let report = c
        .get_session(pb::GetSessionRequest {
            session_id: "oc".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        report.timeline.len(),
        1,
        "the refused EndCall left no trace"
    );
    assert!(!report.options.unwrap().delete_room);
    server.stop().await;
}

#[tokio::test]
async fn get_session_of_an_unknown_session_is_not_found() {
    let server = TestServer::start(&[]).await;
    let mut c = server.client().await;
    assert_status(
        c.get_session(pb::GetSessionRequest {
            session_id: "nobody".into(),
        })
        .await,
        Code::NotFound,
        "session_id",
    );
    server.stop().await;
}

#[tokio::test]
async fn an_oversized_message_is_resource_exhausted() {
    let server = TestServer::start(&["--max-request-bytes", "1024"]).await;
    let mut c = server.client().await;
    let request = pb::EndCallRequest {
        options: Some(pb::SessionOptions {
            extra_description: Some("x".repeat(2000)),
            ..Default::default()
        }),
        ..end_call("big", "S")
    };
    let status = c.end_call(request).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("1024"), "{status:?}");
    // A normal request on the same connection still works.
    c.end_call(end_call("big", "S")).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn the_live_session_cap_answers_resource_exhausted() {
    let server = TestServer::start(&["--max-sessions", "2"]).await;
    let mut c = server.client().await;
    c.end_call(end_call("cap1", "S")).await.unwrap();
    c.end_call(end_call("cap2", "S")).await.unwrap();
    let status = c.end_call(end_call("cap3", "S")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("--max-sessions"), "{status:?}");
    assert_eq!(
        c.watch_session(watch("cap3", 0)).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    // Existing sessions go on; a closed one frees its place.
    c.on_session_close(close("cap1", CloseReason::UserInitiated))
        .await
        .unwrap();
    c.end_call(end_call("cap3", "S")).await.unwrap();
    c.on_speech_done(done("cap2", "S")).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_request_that_does_not_decode_is_invalid_and_names_its_message() {
    let server = TestServer::start(&[]).await;
    let channel = server.channel().await;

    // An EndCallRequest whose session_id (field 1, length-delimited) is not UTF-8.
    let not_utf8 = vec![0x0a, 0x02, 0xff, 0xfe];
    let status = raw_call(channel.clone(), "EndCall", not_utf8)
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        status.message(),
        "EndCallRequest: the request does not decode as protobuf: \
         EndCallRequest.session_id: invalid string value: data is not UTF-8 encoded"
    );

    // Garbage: a key with wire type 7, which does not exist, sent to every RPC.
    let methods = [
        "OpenSession",
        "EndCall",
        "OnSpeechCreated",
        "OnSpeechDone",
        "OnSessionClose",
        "WatchSession",
        "GetTool",
        "GetSession",
    ];
    for method in methods {
        let status = raw_call(channel.clone(), method, vec![0x0f, 0x01, 0x02])
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{method}: {status:?}");
        assert_eq!(
            status.message(),
            format!(
                "{method}Request: the request does not decode as protobuf: invalid wire type value: 7"
            )
        );
    }

    // The server goes on serving, on the same connection; the raw path itself is sound.
    let mut c = Client::new(channel.clone());
    c.end_call(end_call("after", "S")).await.unwrap();
    let well_formed = prost::Message::encode_to_vec(&created("after", "R"));
    let reply = raw_call(channel, "OnSpeechCreated", well_formed).await;
    let reply: pb::OnSpeechCreatedResponse =
        prost::Message::decode(reply.expect("accepted").as_slice()).unwrap();
    assert_eq!(reply.state(), pb::SessionState::Ending);
    server.stop().await;
}
