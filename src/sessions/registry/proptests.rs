//! The registry under random events and time advances on tokio's paused clock: the timer
//! wheel must deliver every deadline, so the same liveness bound as the pure machine holds.

use proptest::prelude::*;
use tokio::time::sleep;

use super::*;
use endcall_core::domain::{Capabilities, CloseReason, Directive, SpeechId, Warning};

const GUARD: Duration = Duration::from_millis(3000);
const REPLY_TIMEOUT: Duration = Duration::from_millis(1000);

#[derive(Clone, Debug)]
enum Op {
    EndCall(u8, bool),
    Created(u8),
    Done(u8),
    Close,
    Sleep(u64),
    /// The user spoke.
    UserSpeech,
    /// Opens with the silence ladder on and a maximum duration with a warning.
    OpenLimited,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..3, any::<bool>()).prop_map(|(s, rt)| Op::EndCall(s, rt)),
        (0u8..3).prop_map(Op::Created),
        (0u8..3).prop_map(Op::Done),
        Just(Op::Close),
        (0u64..5000).prop_map(Op::Sleep),
        Just(Op::UserSpeech),
        Just(Op::OpenLimited),
    ]
}

fn event(op: &Op) -> Option<Event> {
    let speech = |s: &u8| SpeechId::new(&format!("S{s}"));
    Some(match op {
        Op::EndCall(s, realtime) => Event::EndCall {
            speech: speech(s),
            options: None,
            capabilities: Capabilities {
                realtime: Some(*realtime),
                auto_tool_reply: Some(true),
            },
        },
        Op::Created(s) => Event::SpeechCreated { speech: speech(s) },
        Op::Done(s) => Event::SpeechDone {
            speech: speech(s),
            interrupted: false,
            capabilities: Capabilities::default(),
            tool_output_given: None,
        },
        Op::Close => Event::SessionClose {
            reason: CloseReason::UserInitiated,
            error: None,
        },
        Op::UserSpeech => Event::UserSpeech,
        Op::OpenLimited => Event::Open {
            options: Some(Arc::new(Options {
                reply_timeout: REPLY_TIMEOUT,
                silence_timeout: Some(Duration::from_millis(2500)),
                silence_reminder_after: Duration::from_millis(700),
                silence_reminders: 2,
                ..Options::default()
            })),
            max_duration: Some(Duration::from_secs(8)),
            room: None,
            warnings: vec![Warning {
                before: Duration::from_secs(3),
                instructions: arcstr::ArcStr::from("three seconds left"),
            }],
        },
        Op::Sleep(_) => return None,
    })
}

/// Short deadlines, and expiry and retention far beyond every run.
fn property_settings() -> Settings {
    Settings {
        defaults: Arc::new(Options {
            reply_timeout: REPLY_TIMEOUT,
            ..Options::default()
        }),
        timing: Timing {
            playout_guard: GUARD,
            wind_up_grace: Duration::from_secs(10),
            worker_lost_after: Duration::from_secs(10),
            close_deadline: Duration::from_secs(3600),
        },
        closed_retention: Duration::from_secs(3600),
        idle_expiry: Duration::from_secs(3600),
        max_sessions: 10,
    }
}

/// A directory for journals under test: in memory where there is one (fsync is then free,
/// and what is under test is the format and the replay, not the disk).
fn journal_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().unwrap()
}

fn open_journal(dir: &std::path::Path) -> Opened {
    Opened::open(journal::JournalSettings {
        dir: dir.to_owned(),
        segment_bytes: 1 << 20,
    })
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn after_a_failed_journal_write_events_are_refused_not_lost() {
    let dir = journal_dir();
    let opened = Opened::open(journal::JournalSettings {
        dir: dir.path().to_owned(),
        segment_bytes: 4096,
    })
    .unwrap();
    let registry =
        Registry::start_durable(property_settings(), Wiring::on_current_runtime(), opened).unwrap();
    // The next segment's name is taken: sealing the first one fails, as a full disk would.
    std::fs::create_dir(dir.path().join("00000000000000000002.journal")).unwrap();
    let mut acknowledged = 0;
    let refused = loop {
        let event = Event::SpeechCreated {
            speech: SpeechId::new(&format!("speech-{acknowledged}")),
        };
        match registry.apply("s", event) {
            Ok(applied) => match applied.durable.unwrap().await {
                Ok(()) => acknowledged += 1,
                // In flight when the write failed: never acknowledged.
                Err(_) => continue,
            },
            Err(err) => break err,
        }
        assert!(acknowledged < 1000, "the segment never filled");
    };
    assert_eq!(refused, RegistryError::JournalFailed);
    assert!(registry.journal_failed().unwrap().is_cancelled());
    assert!(acknowledged > 10, "{acknowledged}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Replaying the journal rebuilds every session exactly as it was: same state,
    /// timeline, directives and sequence numbers, whatever the events and timer ticks were.
    #[test]
    fn replaying_the_journal_rebuilds_every_session_exactly(
        ops in proptest::collection::vec((0u8..3, op()), 1..30)
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let dir = journal_dir();
        runtime.block_on(async {
            let settings = property_settings();
            let ids = ["a", "b", "c"];
            let registry = Registry::start_durable(
                settings.clone(),
                Wiring::on_current_runtime(),
                open_journal(dir.path()),
            )
            .unwrap();
            for (session, op) in &ops {
                match event(op) {
                    Some(event) => {
                        if let Ok(applied) = registry.apply(ids[usize::from(*session)], event) {
                            if let Some(durable) = applied.durable {
                                durable.await.unwrap();
                            }
                        }
                    }
                    None => {
                        if let Op::Sleep(ms) = op {
                            sleep(Duration::from_millis(*ms)).await;
                        }
                    }
                }
            }
            // Everything the registry did is on disk once a sync changes nothing more. Each sync
            // is waited for on a blocking thread, which keeps the paused clock where it is (an
            // await would let it jump to the next deadline); the timer task may still run
            // meanwhile, for a deadline already due, and what it did needs a sync of its own.
            let reports = |registry: &Registry| -> Vec<_> {
                ids.iter().map(|id| registry.report(id)).collect()
            };
            let mut before = reports(&registry);
            loop {
                let synced = registry.sync_journal().unwrap();
                tokio::task::spawn_blocking(move || synced.blocking_recv())
                    .await
                    .unwrap()
                    .unwrap();
                let again = reports(&registry);
                if again == before {
                    break;
                }
                before = again;
            }
            drop(registry);

            let restored = Registry::start_durable(
                settings,
                Wiring::on_current_runtime(),
                open_journal(dir.path()),
            )
            .unwrap();
            let after: Vec<_> = ids.iter().map(|id| restored.report(id)).collect();
            assert_eq!(after, before);
        });
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn every_end_call_ends_in_time_through_the_timer_wheel(ops in proptest::collection::vec(op(), 1..25)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let settings = property_settings();
            let registry = Registry::start(settings, Wiring::on_current_runtime()).unwrap();
            let mut first_end_call = None;
            let mut closed = false;
            let mut limited = false;
            for op in &ops {
                match event(op) {
                    Some(event) => {
                        let is_end_call = matches!(op, Op::EndCall(..));
                        match registry.apply("p", event) {
                            Ok(_) => {
                                if is_end_call {
                                    first_end_call.get_or_insert(registry.clock().now());
                                }
                                closed |= matches!(op, Op::Close);
                                limited |= matches!(op, Op::OpenLimited);
                            }
                            Err(RegistryError::Rejected(Rejection::Closed)) => assert!(closed),
                            Err(other) => panic!("{other:?}"),
                        }
                    }
                    None => {
                        if let Op::Sleep(ms) = op {
                            sleep(Duration::from_millis(*ms)).await;
                        }
                    }
                }
            }
            // Quiet long enough for every deadline; the paused clock jumps there at once.
            sleep(GUARD * 2 + REPLY_TIMEOUT + Duration::from_millis(10)).await;
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            let Some(report) = registry.report("p") else {
                // Only sleeps: no session was ever created.
                assert!(ops.iter().all(|op| matches!(op, Op::Sleep(_))));
                return;
            };
            let seqs: Vec<u64> = report.directives.iter().map(|d| d.seq).collect();
            assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
            let shutdowns: Vec<_> = report
                .directives
                .iter()
                .filter(|d| matches!(d.directive, Directive::ShutdownSession { .. }))
                .collect();
            assert!(shutdowns.len() <= 1);
            if let Some(called) = first_end_call {
                match shutdowns.first() {
                    Some(d) => {
                        // The wheel fires on millisecond ticks: allow one.
                        let bound = called + GUARD * 2 + REPLY_TIMEOUT + Duration::from_millis(1);
                        assert!(d.at <= bound, "shutdown at {:?} after bound {:?}", d.at, bound);
                    }
                    None => assert!(report.state == State::Closed, "end_call never ended: {report:?}"),
                }
            } else if !limited {
                assert!(report.directives.is_empty());
            }
        });
    }
}
