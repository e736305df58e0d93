//! The `service` fuzz target on stable Rust: the fuzzer's committed corpus and every input it
//! ever crashed on are replayed, then random and structured inputs are run. The interpreter
//! (and every invariant it checks) is the fuzz target's own: `endcall_testkit::fuzz`.

use std::{fs, path::PathBuf, time::Duration};

use endcall_sidecar::proto::v1 as pb;
use endcall_testkit::fuzz::{encode, run, Rpc, Step, Summary};
use proptest::prelude::*;

/// The files in `dir`, or none if it does not exist.
fn files(dir: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn the_fuzz_corpus_and_past_crashes_replay_clean() {
    let corpus = files("fuzz/corpus/service");
    assert!(
        corpus.len() >= 20,
        "only {} corpus files: is it committed?",
        corpus.len()
    );
    // Inputs the fuzzer once crashed on, kept after their fix (none so far).
    let regressions = files("fuzz/regressions/service");
    for file in corpus.iter().chain(&regressions) {
        let data = fs::read(file).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{} fails", file.display());
    }
}

fn end_call(options: Option<pb::SessionOptions>, realtime: bool) -> pb::EndCallRequest {
    pb::EndCallRequest {
        options,
        capabilities: Some(pb::ModelCapabilities {
            realtime: Some(realtime),
            auto_tool_reply: Some(true),
        }),
        ..Default::default()
    }
}

fn done() -> pb::OnSpeechDoneRequest {
    pb::OnSpeechDoneRequest::default()
}

fn close() -> pb::OnSessionCloseRequest {
    close_for(pb::CloseReason::UserInitiated)
}

fn close_for(reason: pb::CloseReason) -> pb::OnSessionCloseRequest {
    pb::OnSessionCloseRequest {
        reason: reason as i32,
        ..Default::default()
    }
}

fn seconds(seconds: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos: 0 })
}

/// A silence timeout of `timeout` s, with `reminders` reminders a second apart.
fn silence(timeout: i64, reminders: u32) -> pb::OpenSessionRequest {
    pb::OpenSessionRequest {
        options: Some(pb::SessionOptions {
            silence_timeout: seconds(timeout),
            silence_reminder_after: seconds(1),
            silence_reminders: Some(reminders),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn user_speech() -> pb::OnUserSpeechRequest {
    pb::OnUserSpeechRequest::default()
}

/// Hand-written calls through the interpreter: the paths the fuzzer starts from. Also the
/// seed corpus: `FUZZ_WRITE_SEEDS=dir cargo test --test fuzz_service` writes them there.
fn scenarios() -> Vec<(&'static str, Vec<Step>)> {
    let s = Duration::from_secs;
    vec![
        (
            "tool turn, then close",
            vec![
                Step::on(Rpc::WatchSession, 0, 0, &pb::WatchSessionRequest::default()),
                Step::on(Rpc::EndCall, 0, 0, &end_call(None, false)),
                Step::on(Rpc::OnSpeechDone, 0, 0, &done()),
                Step::on(Rpc::OnSessionClose, 0, 0, &close()),
                Step::on(Rpc::OnSessionClose, 0, 0, &close()),
                Step::on(Rpc::GetSession, 0, 0, &pb::GetSessionRequest::default()),
            ],
        ),
        (
            "realtime reply played out",
            vec![
                Step::on(Rpc::EndCall, 1, 0, &end_call(None, true)),
                Step::on(Rpc::OnSpeechDone, 1, 0, &done()),
                Step::on(
                    Rpc::OnSpeechCreated,
                    1,
                    1,
                    &pb::OnSpeechCreatedRequest::default(),
                ),
                Step::on(Rpc::WatchSession, 1, 0, &pb::WatchSessionRequest::default()),
                Step::on(Rpc::OnSpeechDone, 1, 1, &done()),
                Step::on(Rpc::OnSessionClose, 1, 0, &close()),
            ],
        ),
        (
            "reply timeout, no room deletion",
            vec![
                Step::on(
                    Rpc::EndCall,
                    2,
                    0,
                    &end_call(
                        Some(pb::SessionOptions {
                            delete_room: Some(false),
                            reply_timeout: Some(prost_types::Duration {
                                seconds: 1,
                                nanos: 0,
                            }),
                            ..Default::default()
                        }),
                        true,
                    ),
                ),
                Step::on(Rpc::OnSpeechDone, 2, 0, &done()),
                Step::advance(s(2)),
                Step::on(Rpc::OnSessionClose, 2, 0, &close()),
            ],
        ),
        (
            "playout guard",
            vec![
                Step::on(Rpc::EndCall, 3, 0, &end_call(None, false)),
                Step::advance(s(4)),
            ],
        ),
        (
            "max duration: wind up, then shut down",
            vec![
                Step::on(
                    Rpc::OpenSession,
                    4,
                    0,
                    &pb::OpenSessionRequest {
                        max_duration: Some(prost_types::Duration {
                            seconds: 5,
                            nanos: 0,
                        }),
                        ..Default::default()
                    },
                ),
                Step::on(Rpc::WatchSession, 4, 0, &pb::WatchSessionRequest::default()),
                Step::advance(s(6)),
                Step::advance(s(3)),
                Step::on(Rpc::OnSessionClose, 4, 0, &close()),
            ],
        ),
        (
            "the session limit, and expiry",
            vec![
                Step::on(
                    Rpc::OnSpeechCreated,
                    0,
                    0,
                    &pb::OnSpeechCreatedRequest::default(),
                ),
                Step::on(
                    Rpc::OnSpeechCreated,
                    1,
                    0,
                    &pb::OnSpeechCreatedRequest::default(),
                ),
                Step::on(
                    Rpc::OnSpeechCreated,
                    2,
                    0,
                    &pb::OnSpeechCreatedRequest::default(),
                ),
                Step::on(
                    Rpc::OnSpeechCreated,
                    3,
                    0,
                    &pb::OnSpeechCreatedRequest::default(),
                ),
                Step::advance(s(61)),
                Step::on(
                    Rpc::OnSpeechCreated,
                    3,
                    0,
                    &pb::OnSpeechCreatedRequest::default(),
                ),
            ],
        ),
        (
            "worker lost: the stream goes and does not come back",
            vec![
                Step::on(
                    Rpc::OpenSession,
                    5,
                    0,
                    &pb::OpenSessionRequest {
                        room: "room-5".into(),
                        ..Default::default()
                    },
                ),
                Step::on(Rpc::WatchSession, 5, 0, &pb::WatchSessionRequest::default()),
                Step::drop_stream(5),
                Step::advance(s(1)),
                Step::on(Rpc::WatchSession, 5, 0, &pb::WatchSessionRequest::default()),
                Step::drop_stream(5),
                Step::advance(s(3)),
                Step::on(Rpc::GetSession, 5, 0, &pb::GetSessionRequest::default()),
            ],
        ),
        (
            "close deadline: shut down, never closed",
            vec![
                Step::on(Rpc::WatchSession, 0, 0, &pb::WatchSessionRequest::default()),
                Step::on(Rpc::EndCall, 0, 0, &end_call(None, false)),
                Step::on(Rpc::OnSpeechDone, 0, 0, &done()),
                Step::advance(s(6)),
                Step::on(Rpc::OnSessionClose, 0, 0, &close()),
            ],
        ),
        (
            "silence: reminded, wound up, shut down",
            vec![
                Step::on(Rpc::OpenSession, 1, 0, &silence(3, 1)),
                Step::on(Rpc::WatchSession, 1, 0, &pb::WatchSessionRequest::default()),
                Step::on(
                    Rpc::OnSpeechCreated,
                    1,
                    0,
                    &pb::OnSpeechCreatedRequest::default(),
                ),
                Step::advance(s(2)),
                Step::on(Rpc::OnSpeechDone, 1, 0, &done()),
                Step::advance(s(1)),
                Step::advance(s(2)),
                Step::advance(s(2)),
                Step::on(
                    Rpc::OnSessionClose,
                    1,
                    0,
                    &close_for(pb::CloseReason::ParticipantDisconnected),
                ),
            ],
        ),
        (
            "silence: the user answers, then the agent ends the call",
            vec![
                Step::on(Rpc::OpenSession, 2, 0, &silence(2, 1)),
                Step::advance(s(1)),
                Step::on(Rpc::OnUserSpeech, 2, 0, &user_speech()),
                Step::advance(s(1)),
                Step::on(Rpc::OnUserSpeech, 2, 0, &user_speech()),
                Step::on(Rpc::EndCall, 2, 1, &end_call(None, false)),
                Step::advance(s(3)),
                Step::on(Rpc::OnSpeechDone, 2, 1, &done()),
                Step::on(Rpc::OnSessionClose, 2, 0, &close()),
            ],
        ),
        (
            "time-limit warnings, then the agent winds up",
            vec![
                Step::on(
                    Rpc::OpenSession,
                    3,
                    0,
                    &pb::OpenSessionRequest {
                        max_duration: seconds(4),
                        max_duration_warnings: vec![
                            pb::TimeLimitWarning {
                                before: seconds(1),
                                instructions: "one second left".into(),
                            },
                            pb::TimeLimitWarning {
                                before: seconds(3),
                                instructions: "three seconds left".into(),
                            },
                        ],
                        ..Default::default()
                    },
                ),
                Step::advance(s(1)),
                Step::advance(s(1)),
                Step::advance(s(1)),
                Step::advance(s(1)),
                Step::on(Rpc::EndCall, 3, 0, &end_call(None, false)),
                Step::on(Rpc::OnSpeechDone, 3, 0, &done()),
                Step::on(
                    Rpc::OnSessionClose,
                    3,
                    0,
                    &close_for(pb::CloseReason::TaskCompleted),
                ),
            ],
        ),
        (
            "every close reason before end_call",
            vec![
                Step::on(
                    Rpc::OnSessionClose,
                    0,
                    0,
                    &close_for(pb::CloseReason::Error),
                ),
                Step::on(
                    Rpc::OnSessionClose,
                    1,
                    0,
                    &close_for(pb::CloseReason::JobShutdown),
                ),
                Step::on(
                    Rpc::OnSessionClose,
                    2,
                    0,
                    &close_for(pb::CloseReason::TaskCompleted),
                ),
                Step::on(
                    Rpc::OnSessionClose,
                    3,
                    0,
                    &close_for(pb::CloseReason::ParticipantDisconnected),
                ),
            ],
        ),
        (
            "bad input",
            vec![
                Step::raw(Rpc::EndCall, &pb::EndCallRequest::default()),
                Step::raw(
                    Rpc::GetSession,
                    &pb::GetSessionRequest {
                        session_id: "\u{200b}".repeat(42),
                    },
                ),
                Step::raw(
                    Rpc::OnSessionClose,
                    &pb::OnSessionCloseRequest {
                        session_id: "x".into(),
                        reason: 99,
                        error_message: Some("e".repeat(5000)),
                    },
                ),
                Step::raw(
                    Rpc::GetTool,
                    &pb::GetToolRequest {
                        extra_description: Some("d".repeat(5000)),
                        ignore_on_enter: Some(true),
                    },
                ),
                Step::on(Rpc::EndCall, 0, 0, &end_call(None, false)),
                Step::on(
                    Rpc::EndCall,
                    0,
                    1,
                    &end_call(
                        Some(pb::SessionOptions {
                            delete_room: Some(false),
                            ..Default::default()
                        }),
                        false,
                    ),
                ),
                Step::on(Rpc::OnSessionClose, 0, 0, &close()),
                Step::on(Rpc::EndCall, 0, 0, &end_call(None, false)),
                Step::on(
                    Rpc::OpenSession,
                    1,
                    0,
                    &pb::OpenSessionRequest {
                        max_duration: seconds(60),
                        max_duration_warnings: vec![pb::TimeLimitWarning {
                            before: seconds(-1),
                            instructions: "later than the limit".into(),
                        }],
                        ..Default::default()
                    },
                ),
                Step::raw(
                    Rpc::OnUserSpeech,
                    &pb::OnUserSpeechRequest {
                        session_id: String::new(),
                    },
                ),
            ],
        ),
    ]
}

#[test]
fn scenarios_reach_every_directive_and_refusal() {
    use pb::{DirectiveKind as K, ShutdownCause as C};
    let mut all = Summary::default();
    for (name, steps) in scenarios() {
        let data = encode(&steps);
        if let Some(dir) = std::env::var_os("FUZZ_WRITE_SEEDS") {
            let file = name.replace([' ', ',', ':'], "-");
            fs::write(PathBuf::from(dir).join(file), &data).unwrap();
        }
        let summary = run(&data);
        assert_eq!(summary.steps, steps.len(), "{name}: {summary:?}");
        assert_eq!(summary.undecodable, 0, "{name}");
        all.directives.extend(summary.directives);
        all.causes.extend(summary.causes);
        all.refused.extend(summary.refused);
        all.watched += summary.watched;
        all.streams_dropped += summary.streams_dropped;
        all.teardowns.extend(summary.teardowns);
        all.reminded.extend(summary.reminded);
        all.ended.extend(summary.ended);
    }
    let kinds = [
        K::ShutdownSession,
        K::DeleteRoom,
        K::ShutdownJob,
        K::WindUp,
        K::Remind,
    ];
    for kind in kinds {
        assert!(all.directives.contains(&(kind as i32)), "{kind:?}: {all:?}");
    }
    let causes = [
        C::ToolTurnDone,
        C::ReplyPlayedOut,
        C::ReplyTimeout,
        C::PlayoutGuard,
        C::MaxDuration,
        C::SilenceTimeout,
    ];
    for cause in causes {
        assert!(all.causes.contains(&(cause as i32)), "{cause:?}: {all:?}");
    }
    for kind in [K::WindUp, K::Remind] {
        for cause in [C::MaxDuration, C::SilenceTimeout] {
            let key = (kind as i32, cause as i32);
            assert!(all.reminded.contains(&key), "{kind:?} {cause:?}: {all:?}");
        }
    }
    for reason in (1..).map_while(|n| pb::EndedReason::try_from(n).ok()) {
        assert!(all.ended.contains(&(reason as i32)), "{reason:?}: {all:?}");
    }
    use tonic::Code;
    for refusal in [
        (Rpc::EndCall, Code::InvalidArgument),
        (Rpc::EndCall, Code::FailedPrecondition),
        (Rpc::OnSpeechCreated, Code::ResourceExhausted),
        (Rpc::OnSessionClose, Code::InvalidArgument),
        (Rpc::OpenSession, Code::InvalidArgument),
        (Rpc::OnUserSpeech, Code::InvalidArgument),
        (Rpc::GetTool, Code::InvalidArgument),
        (Rpc::GetSession, Code::NotFound),
    ] {
        let key = (refusal.0, refusal.1 as i32);
        assert!(all.refused.contains_key(&key), "{refusal:?}: {all:?}");
    }
    assert!(all.watched >= 5, "{all:?}");
    assert!(all.streams_dropped >= 2, "{all:?}");
    for cause in [
        pb::TeardownCause::WorkerLost,
        pb::TeardownCause::CloseDeadline,
    ] {
        assert!(
            all.teardowns.contains(&(cause as i32)),
            "{cause:?}: {all:?}"
        );
    }
}

fn step() -> impl Strategy<Value = Step> {
    let session = 0u8..6;
    let speech = 0u8..3;
    prop_oneof![
        (session.clone(), speech.clone(), any::<bool>()).prop_map(|(s, p, rt)| Step::on(
            Rpc::EndCall,
            s,
            p,
            &end_call(None, rt)
        )),
        (session.clone(), speech.clone()).prop_map(|(s, p)| Step::on(
            Rpc::OnSpeechCreated,
            s,
            p,
            &pb::OnSpeechCreatedRequest::default()
        )),
        (session.clone(), speech.clone(), any::<bool>()).prop_map(|(s, p, i)| Step::on(
            Rpc::OnSpeechDone,
            s,
            p,
            &pb::OnSpeechDoneRequest {
                interrupted: i,
                ..Default::default()
            }
        )),
        (session.clone(), 1i32..6).prop_map(|(s, reason)| Step::on(
            Rpc::OnSessionClose,
            s,
            0,
            &pb::OnSessionCloseRequest {
                reason,
                ..Default::default()
            }
        )),
        (session.clone(), 0u64..4).prop_map(|(s, after_seq)| Step::on(
            Rpc::WatchSession,
            s,
            0,
            &pb::WatchSessionRequest {
                after_seq,
                ..Default::default()
            }
        )),
        (session.clone(), 1i64..8, any::<bool>(), 0i64..8).prop_map(|(s, max, room, before)| {
            Step::on(
                Rpc::OpenSession,
                s,
                0,
                &pb::OpenSessionRequest {
                    max_duration: seconds(max),
                    room: if room {
                        format!("room-{s}")
                    } else {
                        String::new()
                    },
                    // Sometimes a warning later than the limit, or before the call: refused.
                    max_duration_warnings: (before > 0)
                        .then(|| pb::TimeLimitWarning {
                            before: seconds(before),
                            instructions: format!("{before} s left"),
                        })
                        .into_iter()
                        .collect(),
                    ..Default::default()
                },
            )
        }),
        (session.clone(), 1i64..6, 0u32..3).prop_map(|(s, timeout, reminders)| Step::on(
            Rpc::OpenSession,
            s,
            0,
            &silence(timeout, reminders)
        )),
        session
            .clone()
            .prop_map(|s| Step::on(Rpc::OnUserSpeech, s, 0, &user_speech())),
        session.prop_map(Step::drop_stream),
        any::<u8>().prop_map(Step::Advance),
    ]
}

proptest! {
    // Sized to finish in seconds in a debug build on a loaded 2-core machine.
    #![proptest_config(ProptestConfig::with_cases(1500))]

    /// Arbitrary bytes: mostly refusals and undecodable messages, which is the point.
    #[test]
    fn random_bytes_keep_every_invariant(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        run(&data);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Well-formed calls on a few sessions: deep states, timers and watchers.
    #[test]
    fn random_calls_keep_every_invariant(steps in proptest::collection::vec(step(), 1..40)) {
        run(&encode(&steps));
    }
}
