//! The registry on tokio's paused clock: timers fire at their time, to the millisecond,
//! without the test waiting for them.

use tokio::time::{advance, sleep};

use super::*;
use endcall_core::domain::{
    Capabilities, CloseReason, Directive, Outcome, ShutdownCause, SpeechId,
};

fn settings() -> Settings {
    Settings {
        defaults: Arc::new(Options::default()),
        timing: Timing {
            playout_guard: Duration::from_secs(30),
            wind_up_grace: Duration::from_secs(10),
            worker_lost_after: Duration::from_secs(10),
            close_deadline: Duration::from_secs(60),
        },
        closed_retention: Duration::from_secs(60),
        idle_expiry: Duration::from_secs(600),
        max_sessions: 10,
    }
}

fn realtime_end_call(speech: &str) -> Event {
    Event::EndCall {
        speech: SpeechId::new(speech),
        options: None,
        capabilities: Capabilities {
            realtime: Some(true),
            auto_tool_reply: Some(true),
        },
    }
}

fn done(speech: &str) -> Event {
    Event::SpeechDone {
        speech: SpeechId::new(speech),
        interrupted: false,
        capabilities: Capabilities::default(),
        tool_output_given: None,
    }
}

fn close() -> Event {
    Event::SessionClose {
        reason: CloseReason::UserInitiated,
        error: None,
    }
}

/// Lets the timer task run what is due at the current (paused) time.
async fn settle_timers() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn reply_timeout_fires_at_its_deadline_and_wakes_watchers() {
    let registry = Registry::start(settings(), Wiring::on_current_runtime()).unwrap();
    registry.apply("s", realtime_end_call("S")).unwrap();
    registry.apply("s", done("S")).unwrap();
    let poll = registry.poll_watch("s", 0, 10, false).unwrap();
    assert!(poll.directives.is_empty());
    let mut changed = poll.changed.unwrap();

    advance(Duration::from_millis(4999)).await;
    settle_timers().await;
    assert_eq!(registry.report("s").unwrap().state, State::AwaitingReply);

    advance(Duration::from_millis(1)).await;
    settle_timers().await;
    changed.changed().await.unwrap();
    let poll = registry.poll_watch("s", 0, 10, false).unwrap();
    assert_eq!(
        poll.directives[0].directive,
        Directive::ShutdownSession {
            cause: ShutdownCause::ReplyTimeout
        }
    );
    let report = registry.report("s").unwrap();
    assert_eq!(report.goodbye, Some(Duration::from_secs(5)));
}

/// After a large drop the timer task moves the pending entries into a fresh wheel: the
/// sessions that were waiting keep their deadlines, and their keys keep working.
#[tokio::test(start_paused = true)]
async fn the_wheel_rebuilt_after_a_large_drop_keeps_every_pending_deadline() {
    let settings = Settings {
        max_sessions: 1000,
        ..settings()
    };
    let registry = Registry::start(settings, Wiring::on_current_runtime()).unwrap();
    let active = || Event::SpeechCreated {
        speech: SpeechId::new("A"),
    };
    for i in 0..300 {
        registry.apply(&format!("gone-{i}"), close()).unwrap();
    }
    // Armed after the others, so their keys in the new wheel differ from the old ones.
    for keeper in ["keep-1", "keep-2"] {
        registry.apply(keeper, active()).unwrap();
    }
    settle_timers().await;
    // Past the retention and a housekeeping tick: 300 dropped, 2 left in a wheel with room
    // for 300, which is rebuilt.
    sleep(Duration::from_secs(62)).await;
    settle_timers().await;
    assert!(registry.report("gone-0").is_none());
    // An earlier deadline moves keep-1's entry, by the key it was given in the new wheel.
    registry.apply("keep-1", realtime_end_call("S")).unwrap();
    registry.apply("keep-1", done("S")).unwrap();
    sleep(Duration::from_secs(5)).await;
    settle_timers().await;
    let report = registry.report("keep-1").unwrap();
    assert_eq!(
        report.directives[0].directive,
        Directive::ShutdownSession {
            cause: ShutdownCause::ReplyTimeout
        }
    );
    // keep-2 expires idle at 600 s, then is dropped after its retention: both need its
    // entry to have been found by its key.
    sleep(Duration::from_secs(600 - 67)).await;
    settle_timers().await;
    assert_eq!(
        registry.report("keep-2").unwrap().outcome,
        Some(Outcome::Expired)
    );
    sleep(Duration::from_secs(60)).await;
    settle_timers().await;
    assert!(registry.report("keep-2").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_deadline_leaves_the_next_one_armed() {
    // The reply arrives (cancelling the reply deadline); the playout guard still fires.
    let registry = Registry::start(settings(), Wiring::on_current_runtime()).unwrap();
    registry.apply("s", realtime_end_call("S")).unwrap();
    registry.apply("s", done("S")).unwrap();
    registry
        .apply(
            "s",
            Event::SpeechCreated {
                speech: SpeechId::new("R"),
            },
        )
        .unwrap();
    sleep(Duration::from_secs(29)).await;
    settle_timers().await;
    assert_eq!(registry.report("s").unwrap().state, State::PlayingReply);
    sleep(Duration::from_secs(1)).await;
    settle_timers().await;
    let report = registry.report("s").unwrap();
    assert_eq!(
        report.directives[0].directive,
        Directive::ShutdownSession {
            cause: ShutdownCause::PlayoutGuard
        }
    );
}

#[tokio::test(start_paused = true)]
async fn idle_sessions_expire_and_closed_ones_are_dropped_after_retention() {
    let registry = Registry::start(settings(), Wiring::on_current_runtime()).unwrap();
    registry
        .apply(
            "idle",
            Event::SpeechCreated {
                speech: SpeechId::new("A"),
            },
        )
        .unwrap();
    assert_eq!(registry.live_sessions(), 1);
    // Activity pushes the expiry back.
    sleep(Duration::from_secs(500)).await;
    registry.apply("idle", done("A")).unwrap();
    sleep(Duration::from_secs(500)).await;
    settle_timers().await;
    assert_eq!(registry.report("idle").unwrap().state, State::Active);

    sleep(Duration::from_secs(100)).await;
    settle_timers().await;
    let report = registry.report("idle").unwrap();
    assert_eq!(report.state, State::Closed);
    assert_eq!(report.outcome, Some(endcall_core::domain::Outcome::Expired));
    assert_eq!(registry.live_sessions(), 0);

    sleep(Duration::from_secs(60)).await;
    settle_timers().await;
    assert!(registry.report("idle").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_closed_session_is_dropped_after_an_earlier_stale_timer_fired() {
    // The usual call: the playout guard (30 s) is armed at EndCall; the session ends and
    // closes at once, so the guard comes due as a stale timer before the retention (60 s)
    // ends. The session must still be dropped when its retention ends.
    let registry = Registry::start(settings(), Wiring::on_current_runtime()).unwrap();
    registry
        .apply(
            "s",
            Event::EndCall {
                speech: SpeechId::new("S"),
                options: None,
                capabilities: Capabilities::default(),
            },
        )
        .unwrap();
    registry.apply("s", done("S")).unwrap();
    registry.apply("s", close()).unwrap();
    sleep(Duration::from_secs(31)).await;
    settle_timers().await;
    assert!(registry.report("s").is_some(), "kept during its retention");
    sleep(Duration::from_secs(30)).await;
    settle_timers().await;
    assert!(
        registry.report("s").is_none(),
        "dropped once its retention ended"
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_a_closed_session_ends_its_watchers() {
    let registry = Registry::start(settings(), Wiring::on_current_runtime()).unwrap();
    registry.apply("s", close()).unwrap();
    let poll = registry.poll_watch("s", 0, 10, false).unwrap();
    assert!(poll.finished);
    let mut changed = poll.changed.unwrap();
    sleep(Duration::from_secs(61)).await;
    settle_timers().await;
    assert!(changed.changed().await.is_err());
    let poll = registry.poll_watch("s", 0, 10, false).unwrap();
    assert!(poll.finished && poll.changed.is_none());
}

#[tokio::test(start_paused = true)]
async fn the_cap_counts_live_sessions_only() {
    let mut settings = settings();
    settings.max_sessions = 2;
    let registry = Registry::start(settings, Wiring::on_current_runtime()).unwrap();
    registry.apply("a", done("x")).unwrap();
    registry.apply("b", done("x")).unwrap();
    assert_eq!(
        registry.apply("c", done("x")).unwrap_err(),
        RegistryError::TooManySessions { limit: 2 }
    );
    assert!(registry.report("c").is_none());
    registry.apply("a", close()).unwrap();
    registry.apply("c", done("x")).unwrap();
    assert_eq!(registry.live_sessions(), 2);
    // Events for existing sessions are never refused by the cap.
    registry.apply("b", close()).unwrap();
}

#[tokio::test(start_paused = true)]
async fn watch_polls_are_batched() {
    let registry = Registry::start(settings(), Wiring::on_current_runtime()).unwrap();
    registry.apply("s", realtime_end_call("S")).unwrap();
    registry.apply("s", done("S")).unwrap();
    sleep(Duration::from_secs(6)).await;
    settle_timers().await;
    registry.apply("s", close()).unwrap();
    let poll = registry.poll_watch("s", 0, 2, false).unwrap();
    assert_eq!(poll.directives.len(), 2);
    assert!(!poll.finished);
    let poll = registry.poll_watch("s", 2, 2, false).unwrap();
    assert_eq!(poll.directives.len(), 1);
    assert!(poll.finished);
}

/// Hooks that keep what the registry hands out.
#[derive(Default)]
struct Recording {
    orders: std::sync::Mutex<Vec<TeardownOrder>>,
    reports: std::sync::Mutex<Vec<Report>>,
}

impl Hooks for Recording {
    fn wants_reports(&self) -> bool {
        true
    }
    fn session_ended(&self, report: Report) {
        self.reports.lock().unwrap().push(report);
    }
    fn teardown(&self, order: TeardownOrder) {
        self.orders.lock().unwrap().push(order);
    }
    fn housekeeping(&self) {}
}

#[tokio::test(start_paused = true)]
async fn a_teardown_is_handed_out_once_and_the_session_waits_for_its_result() {
    use endcall_core::domain::{RoomName, TeardownCause, TeardownResult};
    let hooks = Arc::new(Recording::default());
    let wiring = Wiring {
        hooks: Arc::clone(&hooks) as Arc<dyn Hooks>,
        ..Wiring::on_current_runtime()
    };
    let registry = Registry::start(settings(), wiring).unwrap();
    let open = Event::Open {
        options: None,
        max_duration: None,
        room: Some(RoomName::new("room-1")),
        warnings: Vec::new(),
    };
    registry.apply("s", open).unwrap();
    registry.poll_watch("s", 0, 10, true).unwrap();
    registry.stream_closed("s");

    advance(Duration::from_millis(9_999)).await;
    settle_timers().await;
    assert!(hooks.orders.lock().unwrap().is_empty());
    advance(Duration::from_millis(1)).await;
    settle_timers().await;
    let orders = hooks.orders.lock().unwrap().clone();
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0].room, RoomName::new("room-1"));
    assert_eq!(orders[0].cause, TeardownCause::WorkerLost);
    assert_eq!(registry.live_sessions(), 0);
    assert!(hooks.reports.lock().unwrap().is_empty(), "not ended yet");

    // Well past the retention, the session is still there: LiveKit has not answered.
    advance(Duration::from_secs(600)).await;
    settle_timers().await;
    assert!(registry.report("s").is_some());

    let done = TeardownDone {
        result: TeardownResult::RoomDeleted,
        attempts: 2,
        error: None,
    };
    registry.finish_teardown(&SessionId::new("s"), done.clone());
    registry.finish_teardown(&SessionId::new("s"), done);
    let reports = hooks.reports.lock().unwrap().clone();
    assert_eq!(reports.len(), 1, "one report, once the result is known");
    let teardown = reports[0].teardown.clone().unwrap();
    assert_eq!(teardown.result, Some(TeardownResult::RoomDeleted));
    assert_eq!(teardown.attempts, 2);
    assert_eq!(reports[0].outcome, Some(Outcome::WorkerLost));

    // Then the retention, already over, lets it go.
    advance(Duration::from_secs(1)).await;
    settle_timers().await;
    assert!(registry.report("s").is_none());
    assert_eq!(hooks.orders.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_attended_session_with_a_stream_does_not_expire_idle() {
    let registry = Registry::start(settings(), Wiring::on_current_runtime()).unwrap();
    registry.poll_watch("s", 0, 10, true).unwrap();
    advance(Duration::from_secs(3600)).await;
    settle_timers().await;
    assert_eq!(registry.report("s").unwrap().state, State::Active);
    registry.stream_closed("s");
    advance(Duration::from_secs(10)).await;
    settle_timers().await;
    let report = registry.report("s").unwrap();
    assert_eq!(report.outcome, Some(Outcome::WorkerLost));
}

/// Hooks that want the reports of sessions restored already ended, and keep their ids.
#[derive(Default)]
struct RestoredReports(std::sync::Mutex<Vec<String>>);

impl Hooks for RestoredReports {
    fn wants_reports(&self) -> bool {
        false
    }
    fn session_ended(&self, _: Report) {}
    fn teardown(&self, _: TeardownOrder) {}
    fn housekeeping(&self) {}
    fn wants_restored_reports(&self) -> bool {
        true
    }
    fn session_restored_ended(&self, report: Report) {
        self.0.lock().unwrap().push(report.session_id.to_string());
    }
}

/// A restart offers every session the journal gives back ended (the webhook store then queues
/// any whose event it does not know), one past its retention too, and no live one.
#[tokio::test]
async fn a_restart_offers_the_sessions_restored_ended() {
    let dir = tempfile::tempdir().unwrap();
    let journal = || {
        Opened::open(journal::JournalSettings {
            dir: dir.path().to_owned(),
            segment_bytes: 1 << 20,
        })
        .unwrap()
    };
    let mut short = settings();
    short.closed_retention = Duration::from_millis(1);
    {
        let registry =
            Registry::start_durable(settings(), Wiring::on_current_runtime(), journal()).unwrap();
        for (id, event) in [("closed", close()), ("live", realtime_end_call("S"))] {
            if let Some(durable) = registry.apply(id, event).unwrap().durable {
                durable.await.unwrap();
            }
        }
        registry.sync_journal().unwrap().await.unwrap();
    }
    // Past the 1 ms retention on restart: "closed" is offered, then dropped.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let hooks = Arc::new(RestoredReports::default());
    let wiring = Wiring {
        hooks: hooks.clone(),
        ..Wiring::on_current_runtime()
    };
    let registry = Registry::start_durable(short, wiring, journal()).unwrap();
    assert_eq!(*hooks.0.lock().unwrap(), ["closed"]);
    assert!(
        registry.report("closed").is_none(),
        "dropped: its retention is over"
    );
    assert!(registry.report("live").is_some());
}
