//! One test (at least) per row of the state table in `docs/contract.md` and per extension, with
//! explicit times; "Row N" below is that document's row N. `t(ms)` is a time in milliseconds;
//! the reply timeout is the reference's 5 s.

use super::*;
use crate::domain::{
    Capabilities, CloseReason, Directive, EndedReason, Event, Options, RoomName, SessionId,
    ShutdownCause, State, TeardownCause, TeardownDone, TeardownOrder, TeardownResult, Warning,
};

const TIMING: Timing = Timing {
    playout_guard: Duration::from_secs(30),
    wind_up_grace: Duration::from_secs(10),
    worker_lost_after: Duration::from_secs(10),
    close_deadline: Duration::from_secs(60),
};

fn t(ms: u64) -> Time {
    Time::from_micros(1_700_000_000_000_000 + ms * 1000)
}

fn sp(id: &str) -> SpeechId {
    SpeechId::new(id)
}

fn new_session() -> Session {
    Session::new(Arc::new(Options::default()), t(0))
}

fn pipeline() -> Capabilities {
    Capabilities {
        realtime: Some(false),
        auto_tool_reply: Some(false),
    }
}

fn realtime(auto_tool_reply: bool) -> Capabilities {
    Capabilities {
        realtime: Some(true),
        auto_tool_reply: Some(auto_tool_reply),
    }
}

fn end_call(speech: &str, capabilities: Capabilities) -> Event {
    Event::EndCall {
        speech: sp(speech),
        options: None,
        capabilities,
    }
}

fn end_call_with(speech: &str, capabilities: Capabilities, options: Options) -> Event {
    Event::EndCall {
        speech: sp(speech),
        options: Some(Arc::new(options)),
        capabilities,
    }
}

fn created(speech: &str) -> Event {
    Event::SpeechCreated { speech: sp(speech) }
}

fn done(speech: &str) -> Event {
    Event::SpeechDone {
        speech: sp(speech),
        interrupted: false,
        capabilities: Capabilities::default(),
        tool_output_given: None,
    }
}

fn interrupted(speech: &str) -> Event {
    Event::SpeechDone {
        speech: sp(speech),
        interrupted: true,
        capabilities: Capabilities::default(),
        tool_output_given: None,
    }
}

fn close(reason: CloseReason) -> Event {
    Event::SessionClose {
        reason,
        error: None,
    }
}

/// Applies an event and returns the directives it produced, without sequence and time.
fn apply(s: &mut Session, event: Event, now: Time) -> Vec<Directive> {
    kinds(
        &s.handle(event, now, &TIMING)
            .expect("event accepted")
            .directives,
    )
}

fn tick(s: &mut Session, now: Time) -> Vec<Directive> {
    kinds(&s.on_time(now, &TIMING))
}

fn kinds(directives: &[IssuedDirective]) -> Vec<Directive> {
    directives.iter().map(|d| d.directive.clone()).collect()
}

fn shutdown(cause: ShutdownCause) -> Directive {
    Directive::ShutdownSession { cause }
}

fn wind_up(cause: ShutdownCause) -> Directive {
    Directive::WindUp { cause }
}

/// A realtime session that reached AWAITING_REPLY at t(2000).
fn awaiting_reply() -> Session {
    let mut s = new_session();
    apply(&mut s, end_call("S", realtime(true)), t(1000));
    assert!(apply(&mut s, done("S"), t(2000)).is_empty());
    assert_eq!(s.state(), State::AwaitingReply);
    s
}

// ---- Row 1 ----

#[test]
fn row1_end_call_enters_ending_and_returns_the_tool_output() {
    let mut s = new_session();
    let step = s.handle(end_call("S", pipeline()), t(1), &TIMING).unwrap();
    assert!(step.directives.is_empty());
    assert!(!step.duplicate);
    assert_eq!(s.state(), State::Ending);
    assert_eq!(s.tool_output(), Some("say goodbye to the user"));
}

#[test]
fn row1_end_instructions_none_is_a_distinct_output() {
    let mut s = new_session();
    let options = Options {
        end_instructions: None,
        ..Options::default()
    };
    apply(&mut s, end_call_with("S", pipeline(), options), t(1));
    assert_eq!(s.tool_output(), None);
    let options = Options {
        end_instructions: Some(Arc::from("")),
        ..Options::default()
    };
    let mut s = new_session();
    apply(&mut s, end_call_with("S", pipeline(), options), t(1));
    assert_eq!(s.tool_output(), Some(""));
}

// ---- Row 2 ----

#[test]
fn row2_pipeline_model_shuts_down_when_the_tool_turn_is_done() {
    let mut s = new_session();
    apply(&mut s, end_call("S", pipeline()), t(1));
    let step = s.handle(done("S"), t(2), &TIMING).unwrap();
    assert_eq!(
        kinds(&step.directives),
        [shutdown(ShutdownCause::ToolTurnDone)]
    );
    assert_eq!(step.directives[0].seq, 1);
    assert_eq!(step.directives[0].at, t(2));
    assert_eq!(s.state(), State::ShuttingDown);
}

#[test]
fn row2_realtime_model_that_does_not_auto_reply() {
    let mut s = new_session();
    apply(&mut s, end_call("S", realtime(false)), t(1));
    assert_eq!(
        apply(&mut s, done("S"), t(2)),
        [shutdown(ShutdownCause::ToolTurnDone)]
    );
}

#[test]
fn row2_realtime_auto_reply_but_no_output_asked() {
    let mut s = new_session();
    let options = Options {
        end_instructions: None,
        ..Options::default()
    };
    apply(&mut s, end_call_with("S", realtime(true), options), t(1));
    assert_eq!(
        apply(&mut s, done("S"), t(2)),
        [shutdown(ShutdownCause::ToolTurnDone)]
    );
}

#[test]
fn row2_untold_capabilities_mean_a_pipeline_model() {
    let mut s = new_session();
    apply(&mut s, end_call("S", Capabilities::default()), t(1));
    assert_eq!(
        apply(&mut s, done("S"), t(2)),
        [shutdown(ShutdownCause::ToolTurnDone)]
    );
}

#[test]
fn row2_an_interrupted_goodbye_counts_as_done() {
    let mut s = new_session();
    apply(&mut s, end_call("S", pipeline()), t(1));
    assert_eq!(
        apply(&mut s, interrupted("S"), t(2)),
        [shutdown(ShutdownCause::ToolTurnDone)]
    );
}

#[test]
fn row2_capabilities_at_done_time_override_those_of_end_call() {
    // EndCall said auto-reply; the realtime session in use when the speech is done does not.
    let mut s = new_session();
    apply(&mut s, end_call("S", realtime(true)), t(1));
    let done_without_auto_reply = Event::SpeechDone {
        speech: sp("S"),
        interrupted: false,
        capabilities: Capabilities {
            realtime: None,
            auto_tool_reply: Some(false),
        },
        tool_output_given: None,
    };
    assert_eq!(
        apply(&mut s, done_without_auto_reply, t(2)),
        [shutdown(ShutdownCause::ToolTurnDone)]
    );
}

#[test]
fn row2_output_withdrawn_after_end_call_skips_the_reply_wait() {
    // The worker's on_tool_completed hook replaced the output with none.
    let mut s = new_session();
    apply(&mut s, end_call("S", realtime(true)), t(1));
    let done_no_output = Event::SpeechDone {
        speech: sp("S"),
        interrupted: false,
        capabilities: Capabilities::default(),
        tool_output_given: Some(false),
    };
    assert_eq!(
        apply(&mut s, done_no_output, t(2)),
        [shutdown(ShutdownCause::ToolTurnDone)]
    );
}

// ---- Row 3 ----

#[test]
fn row3_realtime_auto_reply_waits_for_the_reply_with_a_deadline() {
    let s = awaiting_reply();
    assert_eq!(s.next_deadline(&TIMING), Some(t(7000)));
}

#[test]
fn row3_capabilities_given_only_at_done_time() {
    let mut s = new_session();
    apply(&mut s, end_call("S", Capabilities::default()), t(1));
    let done_realtime = Event::SpeechDone {
        speech: sp("S"),
        interrupted: false,
        capabilities: realtime(true),
        tool_output_given: None,
    };
    assert!(apply(&mut s, done_realtime, t(2)).is_empty());
    assert_eq!(s.state(), State::AwaitingReply);
}

#[test]
fn row3_uses_the_session_reply_timeout() {
    let mut s = new_session();
    let options = Options {
        reply_timeout: Duration::from_millis(200),
        ..Options::default()
    };
    apply(&mut s, end_call_with("S", realtime(true), options), t(0));
    apply(&mut s, done("S"), t(100));
    assert_eq!(s.next_deadline(&TIMING), Some(t(300)));
}

// ---- Row 4 ----

#[test]
fn row4_the_first_speech_created_becomes_the_reply() {
    let mut s = awaiting_reply();
    assert!(apply(&mut s, created("R"), t(2500)).is_empty());
    assert_eq!(s.state(), State::PlayingReply);
    // The reply deadline is cancelled: only the playout guard is left.
    assert_eq!(s.next_deadline(&TIMING), Some(t(32_500)));
    assert!(tick(&mut s, t(7000)).is_empty());
    // A second speech created does not replace the reply.
    assert!(apply(&mut s, created("R2"), t(2600)).is_empty());
    assert!(apply(&mut s, done("R2"), t(2700)).is_empty());
    assert_eq!(s.state(), State::PlayingReply);
}

// ---- Row 5 ----

#[test]
fn row5_reply_timeout_shuts_down() {
    let mut s = awaiting_reply();
    assert!(tick(&mut s, t(6999)).is_empty());
    assert_eq!(
        tick(&mut s, t(7000)),
        [shutdown(ShutdownCause::ReplyTimeout)]
    );
    assert_eq!(s.state(), State::ShuttingDown);
    // Only the close deadline is left.
    assert_eq!(s.next_deadline(&TIMING), Some(t(67_000)));
}

#[test]
fn row5_a_late_event_applies_a_passed_deadline_first() {
    // The timer has not fired yet when the reply shows up after the deadline.
    let mut s = awaiting_reply();
    assert_eq!(
        apply(&mut s, created("R"), t(7001)),
        [shutdown(ShutdownCause::ReplyTimeout)]
    );
}

// ---- Row 6 ----

#[test]
fn row6_reply_played_out_shuts_down() {
    let mut s = awaiting_reply();
    apply(&mut s, created("R"), t(2500));
    assert_eq!(
        apply(&mut s, done("R"), t(4000)),
        [shutdown(ShutdownCause::ReplyPlayedOut)]
    );
    assert_eq!(s.state(), State::ShuttingDown);
}

#[test]
fn row6_interrupted_reply_counts_as_played_out() {
    let mut s = awaiting_reply();
    apply(&mut s, created("R"), t(2500));
    assert_eq!(
        apply(&mut s, interrupted("R"), t(3000)),
        [shutdown(ShutdownCause::ReplyPlayedOut)]
    );
}

// ---- Row 7 ----

#[test]
fn row7_close_after_end_call_deletes_the_room_then_shuts_the_job_down() {
    for reason in CloseReason::ALL {
        let mut s = new_session();
        apply(&mut s, end_call("S", pipeline()), t(1));
        apply(&mut s, done("S"), t(2));
        let step = s.handle(close(reason), t(3), &TIMING).unwrap();
        assert_eq!(
            kinds(&step.directives),
            [Directive::DeleteRoom, Directive::ShutdownJob { reason }]
        );
        assert_eq!(
            step.directives.iter().map(|d| d.seq).collect::<Vec<_>>(),
            [2, 3]
        );
        assert_eq!(s.state(), State::Closed);
    }
}

#[test]
fn row7_without_delete_room_only_the_job_shuts_down() {
    let mut s = new_session();
    let options = Options {
        delete_room: false,
        ..Options::default()
    };
    apply(&mut s, end_call_with("S", pipeline(), options), t(1));
    assert_eq!(
        apply(&mut s, close(CloseReason::UserInitiated), t(2)),
        [Directive::ShutdownJob {
            reason: CloseReason::UserInitiated
        }]
    );
}

#[test]
fn row7_close_before_the_goodbye_finished() {
    let mut s = new_session();
    apply(&mut s, end_call("S", pipeline()), t(1));
    assert_eq!(
        apply(&mut s, close(CloseReason::ParticipantDisconnected), t(2)),
        [
            Directive::DeleteRoom,
            Directive::ShutdownJob {
                reason: CloseReason::ParticipantDisconnected
            }
        ]
    );
    assert_eq!(s.outcome(), Some(Outcome::ClosedDuringEndCall));
    // The goodbye finishing afterwards changes nothing.
    assert!(apply(&mut s, done("S"), t(3)).is_empty());
}

#[test]
fn row7_close_cancels_a_pending_reply_wait_and_issues_nothing_for_it() {
    let mut s = awaiting_reply();
    assert_eq!(
        apply(&mut s, close(CloseReason::Error), t(3000)),
        [
            Directive::DeleteRoom,
            Directive::ShutdownJob {
                reason: CloseReason::Error
            }
        ]
    );
    assert_eq!(s.next_deadline(&TIMING), None);
    assert!(tick(&mut s, t(60_000)).is_empty());
}

// ---- Row 8 ----

#[test]
fn row8_close_without_end_call_issues_nothing() {
    for reason in CloseReason::ALL {
        let mut s = new_session();
        apply(&mut s, created("greeting"), t(1));
        assert!(apply(&mut s, close(reason), t(2)).is_empty());
        assert_eq!(s.state(), State::Closed);
        assert_eq!(s.outcome(), Some(Outcome::ClosedWithoutEndCall));
    }
}

// ---- Row 9 ----

#[test]
fn row9_other_speeches_change_nothing() {
    let mut s = new_session();
    assert!(apply(&mut s, created("A"), t(1)).is_empty());
    assert!(apply(&mut s, done("A"), t(2)).is_empty());
    assert_eq!(s.state(), State::Active);
    apply(&mut s, end_call("S", pipeline()), t(3));
    assert!(apply(&mut s, created("B"), t(4)).is_empty());
    assert!(apply(&mut s, done("B"), t(5)).is_empty());
    assert_eq!(s.state(), State::Ending);
}

// ---- Notes of the contract ----

#[test]
fn after_shutdown_only_a_close_produces_directives() {
    let mut s = new_session();
    apply(&mut s, end_call("S", pipeline()), t(1));
    apply(&mut s, done("S"), t(2));
    assert!(apply(&mut s, end_call("S2", pipeline()), t(3)).is_empty());
    assert!(apply(&mut s, done("S2"), t(4)).is_empty());
    // Up to the close deadline, 60 s after the shutdown at t(2).
    assert!(tick(&mut s, t(60_001)).is_empty());
    assert_eq!(
        apply(&mut s, close(CloseReason::UserInitiated), t(60_001)).len(),
        2
    );
}

#[test]
fn several_end_calls_each_get_their_own_waiter() {
    // S1 and S2 both end_call on a realtime model; S1's waiter takes R1, S2's waiter starts
    // later with its own deadline.
    let mut s = new_session();
    apply(&mut s, end_call("S1", realtime(true)), t(0));
    apply(&mut s, done("S1"), t(1000));
    apply(&mut s, end_call("S2", realtime(true)), t(1500));
    apply(&mut s, created("R1"), t(2000));
    assert_eq!(s.state(), State::PlayingReply);
    apply(&mut s, done("S2"), t(3000));
    // S2's waiter deadline is 8000; R1 playing out first ends the call.
    assert_eq!(
        apply(&mut s, done("R1"), t(4000)),
        [shutdown(ShutdownCause::ReplyPlayedOut)]
    );
}

#[test]
fn several_end_calls_first_deadline_wins() {
    let mut s = new_session();
    apply(&mut s, end_call("S1", realtime(true)), t(0));
    apply(&mut s, done("S1"), t(1000));
    apply(&mut s, end_call("S2", realtime(true)), t(1500));
    apply(&mut s, done("S2"), t(2000));
    assert_eq!(s.next_deadline(&TIMING), Some(t(6000)));
    assert_eq!(
        tick(&mut s, t(6000)),
        [shutdown(ShutdownCause::ReplyTimeout)]
    );
    assert!(tick(&mut s, t(7000)).is_empty());
}

#[test]
fn a_later_pipeline_end_call_ends_the_call_while_a_reply_is_awaited() {
    let mut s = awaiting_reply();
    apply(&mut s, end_call("S2", realtime(false)), t(3000));
    assert_eq!(
        apply(&mut s, done("S2"), t(3500)),
        [shutdown(ShutdownCause::ToolTurnDone)]
    );
}

// ---- Extension: idempotency ----

#[test]
fn idempotency_duplicate_end_call_is_flagged_and_changes_nothing() {
    let mut s = new_session();
    apply(&mut s, end_call("S", pipeline()), t(1));
    let step = s.handle(end_call("S", pipeline()), t(2), &TIMING).unwrap();
    assert!(step.duplicate);
    assert!(step.directives.is_empty());
    assert_eq!(s.state(), State::Ending);
}

#[test]
fn idempotency_a_speech_done_twice_counts_once() {
    let mut s = new_session();
    apply(&mut s, end_call("S", pipeline()), t(1));
    assert_eq!(apply(&mut s, done("S"), t(2)).len(), 1);
    let step = s.handle(done("S"), t(3), &TIMING).unwrap();
    assert!(step.duplicate);
    assert!(step.directives.is_empty());
}

#[test]
fn idempotency_a_speech_created_twice_is_not_captured_twice() {
    // R is captured by the first waiter; its retry must not be taken as the reply of a
    // waiter that started after R was created.
    let mut s = new_session();
    apply(&mut s, end_call("S1", realtime(true)), t(0));
    apply(&mut s, done("S1"), t(100));
    apply(&mut s, created("R"), t(200));
    apply(&mut s, end_call("S2", realtime(true)), t(300));
    apply(&mut s, done("S2"), t(400));
    let step = s.handle(created("R"), t(500), &TIMING).unwrap();
    assert!(step.duplicate);
    // S2's waiter is still waiting for its own reply (deadline 5400), not playing R.
    assert_eq!(s.next_deadline(&TIMING), Some(t(5400)));
    assert_eq!(
        apply(&mut s, done("R"), t(600)),
        [shutdown(ShutdownCause::ReplyPlayedOut)]
    );
}

#[test]
fn idempotency_repeated_close_returns_the_first_close_directives() {
    let mut s = new_session();
    apply(&mut s, end_call("S", pipeline()), t(1));
    let first = s
        .handle(close(CloseReason::UserInitiated), t(2), &TIMING)
        .unwrap();
    let again = s.handle(close(CloseReason::Error), t(3), &TIMING).unwrap();
    assert!(again.duplicate);
    assert_eq!(first.directives, again.directives);
    assert_eq!(s.directives().len(), 2);
    assert_eq!(s.close_reason(), Some(CloseReason::UserInitiated));
}

#[test]
fn end_call_on_a_closed_session_is_rejected_and_changes_nothing() {
    let mut s = new_session();
    apply(&mut s, close(CloseReason::UserInitiated), t(1));
    let timeline_len = s.timeline().count();
    assert_eq!(
        s.handle(end_call("S", pipeline()), t(2), &TIMING),
        Err(Rejection::Closed)
    );
    assert_eq!(s.timeline().count(), timeline_len);
    assert_eq!(s.outcome(), Some(Outcome::ClosedWithoutEndCall));
}

#[test]
fn speech_events_after_close_change_nothing() {
    let mut s = new_session();
    apply(&mut s, end_call("S", pipeline()), t(1));
    apply(&mut s, close(CloseReason::UserInitiated), t(2));
    assert!(apply(&mut s, done("S"), t(3)).is_empty());
    assert!(apply(&mut s, created("X"), t(4)).is_empty());
    assert_eq!(s.state(), State::Closed);
    assert_eq!(s.last_seq(), 2);
}

// ---- Extension: late EndCall ----

#[test]
fn late_end_call_after_its_speech_is_done_pipeline() {
    let mut s = new_session();
    apply(&mut s, created("S"), t(1));
    assert!(apply(&mut s, done("S"), t(2)).is_empty());
    assert_eq!(
        apply(&mut s, end_call("S", pipeline()), t(3)),
        [shutdown(ShutdownCause::ToolTurnDone)]
    );
}

#[test]
fn late_end_call_after_its_speech_is_done_realtime() {
    let mut s = new_session();
    apply(&mut s, done("S"), t(2));
    assert!(apply(&mut s, end_call("S", realtime(true)), t(3)).is_empty());
    assert_eq!(s.state(), State::AwaitingReply);
    assert_eq!(s.next_deadline(&TIMING), Some(t(5003)));
}

#[test]
fn late_end_call_is_forgotten_after_many_other_speeches() {
    let mut s = new_session();
    apply(&mut s, done("S"), t(1));
    for i in 0..RECENT_SPEECHES {
        apply(&mut s, done(&format!("other-{i}")), t(2));
    }
    assert!(apply(&mut s, end_call("S", pipeline()), t(3)).is_empty());
    assert_eq!(s.state(), State::Ending);
}

// ---- Extension: ordering ----

#[test]
fn sequence_numbers_have_no_gaps_and_replay_by_seq() {
    let mut s = awaiting_reply();
    tick(&mut s, t(7000));
    apply(&mut s, close(CloseReason::UserInitiated), t(8000));
    let seqs: Vec<u64> = s.directives().iter().map(|d| d.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(s.directives_after(0).len(), 3);
    assert_eq!(s.directives_after(1)[0].seq, 2);
    assert!(s.directives_after(3).is_empty());
    assert!(s.directives_after(u64::MAX).is_empty());
}

// ---- Extension: playout guard ----

#[test]
fn playout_guard_ends_a_goodbye_whose_done_never_comes() {
    let mut s = new_session();
    apply(&mut s, end_call("S", pipeline()), t(1000));
    assert_eq!(s.next_deadline(&TIMING), Some(t(31_000)));
    assert!(tick(&mut s, t(30_999)).is_empty());
    assert_eq!(
        tick(&mut s, t(31_000)),
        [shutdown(ShutdownCause::PlayoutGuard)]
    );
    assert_eq!(
        s.outcome(),
        Some(Outcome::Shutdown(ShutdownCause::PlayoutGuard))
    );
}

#[test]
fn playout_guard_ends_a_reply_whose_playout_hangs() {
    let mut s = awaiting_reply();
    apply(&mut s, created("R"), t(3000));
    assert!(tick(&mut s, t(32_999)).is_empty());
    assert_eq!(
        tick(&mut s, t(33_000)),
        [shutdown(ShutdownCause::PlayoutGuard)]
    );
}

#[test]
fn playout_guard_does_not_apply_while_awaiting_the_reply() {
    // AWAITING_REPLY has its own deadline; a reply timeout longer than the guard still waits.
    let mut s = new_session();
    let options = Options {
        reply_timeout: Duration::from_secs(40),
        ..Options::default()
    };
    apply(&mut s, end_call_with("S", realtime(true), options), t(0));
    apply(&mut s, done("S"), t(1000));
    assert!(tick(&mut s, t(35_000)).is_empty());
    assert_eq!(
        tick(&mut s, t(41_000)),
        [shutdown(ShutdownCause::ReplyTimeout)]
    );
}

// ---- Extension: early reply capture ----

fn early_capture() -> Options {
    Options {
        early_reply_capture: true,
        ..Options::default()
    }
}

#[test]
fn early_reply_capture_takes_a_reply_created_before_the_tool_speech_is_done() {
    let mut s = new_session();
    apply(
        &mut s,
        end_call_with("S", realtime(true), early_capture()),
        t(0),
    );
    apply(&mut s, created("R"), t(500));
    assert!(apply(&mut s, done("S"), t(1000)).is_empty());
    assert_eq!(s.state(), State::PlayingReply);
    assert_eq!(
        apply(&mut s, done("R"), t(2000)),
        [shutdown(ShutdownCause::ReplyPlayedOut)]
    );
}

#[test]
fn early_reply_capture_with_the_reply_already_played_out() {
    let mut s = new_session();
    apply(
        &mut s,
        end_call_with("S", realtime(true), early_capture()),
        t(0),
    );
    apply(&mut s, created("R"), t(500));
    apply(&mut s, done("R"), t(800));
    assert_eq!(
        apply(&mut s, done("S"), t(1000)),
        [shutdown(ShutdownCause::ReplyPlayedOut)]
    );
}

#[test]
fn early_reply_capture_is_off_by_default_like_the_reference() {
    // The reference only listens for a reply after the tool speech is done: the early speech
    // is missed and the wait times out.
    let mut s = new_session();
    apply(&mut s, end_call("S", realtime(true)), t(0));
    apply(&mut s, created("R"), t(500));
    apply(&mut s, done("S"), t(1000));
    assert_eq!(s.state(), State::AwaitingReply);
    assert!(apply(&mut s, done("R"), t(2000)).is_empty());
    assert_eq!(
        tick(&mut s, t(6000)),
        [shutdown(ShutdownCause::ReplyTimeout)]
    );
}

#[test]
fn early_reply_capture_is_ignored_on_the_pipeline_branch() {
    let mut s = new_session();
    apply(
        &mut s,
        end_call_with("S", pipeline(), early_capture()),
        t(0),
    );
    apply(&mut s, created("R"), t(500));
    assert_eq!(
        apply(&mut s, done("S"), t(1000)),
        [shutdown(ShutdownCause::ToolTurnDone)]
    );
}

// ---- Extension: max call duration ----

fn open(max: Option<Duration>) -> Event {
    Event::Open {
        options: None,
        max_duration: max,
        room: None,
        warnings: Vec::new(),
    }
}

#[test]
fn max_duration_winds_up_then_shuts_down_after_the_grace() {
    let mut s = new_session();
    apply(&mut s, open(Some(Duration::from_secs(60))), t(0));
    assert_eq!(s.next_deadline(&TIMING), Some(t(60_000)));
    assert_eq!(
        tick(&mut s, t(60_000)),
        [wind_up(ShutdownCause::MaxDuration)]
    );
    assert_eq!(s.next_deadline(&TIMING), Some(t(70_000)));
    assert!(tick(&mut s, t(69_999)).is_empty());
    assert_eq!(
        tick(&mut s, t(70_000)),
        [shutdown(ShutdownCause::MaxDuration)]
    );
}

#[test]
fn max_duration_shutdown_then_close_deletes_the_room_and_shuts_the_job_down() {
    // No end_call ever came, but the sidecar ended the call: the room must not outlive it.
    let mut s = new_session();
    apply(&mut s, open(Some(Duration::from_secs(60))), t(0));
    tick(&mut s, t(60_000));
    tick(&mut s, t(70_000));
    assert_eq!(
        apply(&mut s, close(CloseReason::UserInitiated), t(71_000)),
        [
            Directive::DeleteRoom,
            Directive::ShutdownJob {
                reason: CloseReason::UserInitiated
            }
        ]
    );
}

#[test]
fn max_duration_wind_up_leads_to_a_normal_end_call() {
    let mut s = new_session();
    apply(&mut s, open(Some(Duration::from_secs(60))), t(0));
    tick(&mut s, t(60_000));
    apply(&mut s, end_call("S", pipeline()), t(61_000));
    assert_eq!(
        apply(&mut s, done("S"), t(63_000)),
        [shutdown(ShutdownCause::ToolTurnDone)]
    );
    assert!(tick(&mut s, t(70_000)).is_empty());
}

#[test]
fn max_duration_skips_wind_up_when_end_call_came_first() {
    let mut s = new_session();
    apply(&mut s, open(Some(Duration::from_secs(60))), t(0));
    apply(&mut s, end_call("S", realtime(true)), t(59_000));
    assert!(tick(&mut s, t(60_000)).is_empty());
}

#[test]
fn open_is_idempotent_and_rejects_a_different_max_duration() {
    let mut s = new_session();
    apply(&mut s, open(Some(Duration::from_secs(60))), t(0));
    let again = s
        .handle(open(Some(Duration::from_secs(60))), t(1), &TIMING)
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(
        s.handle(open(Some(Duration::from_secs(30))), t(2), &TIMING),
        Err(Rejection::MaxDurationConflict)
    );
}

// ---- Options ----

#[test]
fn options_are_fixed_by_the_first_request_that_carries_them() {
    let mut s = new_session();
    let custom = Options {
        delete_room: false,
        ..Options::default()
    };
    apply(
        &mut s,
        end_call_with("S1", pipeline(), custom.clone()),
        t(1),
    );
    // The same options again are fine; a request without options keeps them.
    apply(&mut s, end_call_with("S2", pipeline(), custom), t(2));
    apply(&mut s, end_call("S3", pipeline()), t(3));
    assert!(!s.options().delete_room);
    assert_eq!(
        s.handle(
            end_call_with("S4", pipeline(), Options::default()),
            t(4),
            &TIMING
        ),
        Err(Rejection::OptionsConflict)
    );
    assert_eq!(s.tool_speeches.len(), 3);
}

// ---- Expiry and the report's data ----

#[test]
fn expiry_closes_without_directives() {
    let mut s = awaiting_reply();
    assert!(s.expire(t(9000)));
    assert!(!s.expire(t(9001)));
    assert_eq!(s.state(), State::Closed);
    assert_eq!(s.outcome(), Some(Outcome::Expired));
    assert!(s.directives().is_empty());
    assert_eq!(s.next_deadline(&TIMING), None);
}

#[test]
fn timeline_keeps_the_most_recent_entries() {
    let mut s = new_session();
    for i in 0..(TIMELINE_CAP + 10) {
        apply(&mut s, created(&format!("A{i}")), t(i as u64));
    }
    assert_eq!(s.timeline().count(), TIMELINE_CAP);
    assert_eq!(s.timeline_dropped(), 10);
    let first = s.timeline().next().unwrap();
    assert_eq!(first.at, t(10));
}

#[test]
fn report_times_follow_the_call() {
    let mut s = awaiting_reply();
    apply(&mut s, created("R"), t(2500));
    apply(&mut s, done("R"), t(4000));
    apply(&mut s, close(CloseReason::UserInitiated), t(4500));
    assert_eq!(s.end_call_at(), Some(t(1000)));
    assert_eq!(s.shutdown_at(), Some(t(4000)));
    assert_eq!(s.closed_at(), Some(t(4500)));
    assert_eq!(
        s.outcome(),
        Some(Outcome::Shutdown(ShutdownCause::ReplyPlayedOut))
    );
}

// ---- Extension: the worker's lease and the sidecar's teardown (rules L, D and T) ----

fn open_in(room: &str) -> Event {
    Event::Open {
        options: None,
        max_duration: None,
        room: Some(RoomName::new(room)),
        warnings: Vec::new(),
    }
}

fn teardown_of(s: &Session) -> (TeardownCause, Time, Option<TeardownResult>) {
    let teardown = s.teardown().expect("a teardown");
    (
        teardown.cause,
        teardown.decided_at,
        teardown.finished.as_ref().map(|(done, _)| done.result),
    )
}

const ID: &str = "call-1";

fn order(s: &Session) -> Option<TeardownOrder> {
    s.teardown_order(&SessionId::new(ID))
}

/// An attended session in room "R" whose worker's stream opened at t(0).
fn attended() -> Session {
    let mut s = new_session();
    apply(&mut s, open_in("R"), t(0));
    s.stream_opened(t(0));
    s
}

/// L1, L2.
#[test]
fn lease_an_attended_session_with_no_stream_loses_its_worker_after_the_window() {
    let mut s = attended();
    assert_eq!(
        s.next_deadline(&TIMING),
        None,
        "a held lease has no deadline"
    );
    s.stream_closed(t(5_000));
    assert_eq!(s.next_deadline(&TIMING), Some(t(15_000)));
    assert!(tick(&mut s, t(14_999)).is_empty());
    assert!(!s.is_closed());
    assert!(
        tick(&mut s, t(15_000)).is_empty(),
        "nothing for the worker: it is gone"
    );
    assert_eq!(s.state(), State::Closed);
    assert_eq!(s.outcome(), Some(Outcome::WorkerLost));
    assert_eq!(s.close_reason(), None);
    assert_eq!(
        teardown_of(&s),
        (TeardownCause::WorkerLost, t(15_000), None)
    );
    let order = order(&s).expect("the room is to be deleted");
    assert_eq!(order.room, RoomName::new("R"));
    assert_eq!(order.cause, TeardownCause::WorkerLost);
    assert_eq!(s.next_deadline(&TIMING), None);
}

/// L1.
#[test]
fn lease_a_reconnect_within_the_window_keeps_the_call() {
    let mut s = attended();
    s.stream_closed(t(1_000));
    s.stream_opened(t(9_000));
    assert!(tick(&mut s, t(60_000)).is_empty());
    assert!(!s.is_closed());
    assert!(s.teardown().is_none());
}

/// L1.
#[test]
fn lease_two_streams_during_a_reconnect_count_as_held_until_both_end() {
    let mut s = attended();
    s.stream_opened(t(1_000));
    s.stream_closed(t(2_000));
    assert_eq!(s.next_deadline(&TIMING), None);
    s.stream_closed(t(3_000));
    assert_eq!(s.next_deadline(&TIMING), Some(t(13_000)));
}

/// L1, L5.
#[test]
fn lease_any_event_renews_it() {
    let mut s = attended();
    s.stream_closed(t(1_000));
    apply(&mut s, created("A"), t(8_000));
    apply(&mut s, done("A"), t(16_000));
    assert!(!s.is_closed());
    assert_eq!(s.next_deadline(&TIMING), Some(t(26_000)));
    assert!(tick(&mut s, t(25_999)).is_empty());
    assert!(!s.is_closed());
}

/// L3.
#[test]
fn lease_a_session_never_watched_is_never_torn_down() {
    let mut s = new_session();
    apply(&mut s, open_in("R"), t(0));
    assert_eq!(s.next_deadline(&TIMING), None);
    assert!(tick(&mut s, t(3_600_000)).is_empty());
    assert!(!s.is_closed());
}

/// L4.
#[test]
fn lease_a_restart_gives_the_worker_a_full_window_from_then() {
    let mut s = attended();
    // The sidecar stopped at t(1000) with the stream open, and came back at t(50_000).
    s.restarted(t(50_000));
    assert_eq!(s.next_deadline(&TIMING), Some(t(60_000)));
    s.stream_opened(t(59_000));
    assert!(tick(&mut s, t(70_000)).is_empty());
    assert!(!s.is_closed());
}

/// L2.
#[test]
fn lease_worker_lost_during_end_call_keeps_the_shutdown_cause() {
    let mut s = attended();
    apply(&mut s, end_call("S", pipeline()), t(1_000));
    assert_eq!(
        apply(&mut s, done("S"), t(2_000)),
        [shutdown(ShutdownCause::ToolTurnDone)]
    );
    s.stream_closed(t(3_000));
    tick(&mut s, t(13_000));
    assert!(s.is_closed());
    assert_eq!(
        s.outcome(),
        Some(Outcome::Shutdown(ShutdownCause::ToolTurnDone))
    );
    assert_eq!(teardown_of(&s).0, TeardownCause::WorkerLost);
}

/// L2.
#[test]
fn lease_worker_lost_before_end_call_finished_is_worker_lost() {
    let mut s = attended();
    apply(&mut s, end_call("S", pipeline()), t(1_000));
    s.stream_closed(t(1_500));
    assert!(tick(&mut s, t(11_500)).is_empty());
    assert_eq!(s.outcome(), Some(Outcome::WorkerLost));
}

/// D1.
#[test]
fn close_deadline_tears_the_call_down_when_no_close_follows_the_shutdown() {
    let mut s = attended();
    apply(&mut s, end_call("S", pipeline()), t(1_000));
    apply(&mut s, done("S"), t(2_000));
    // The worker keeps its stream (it is stuck, not gone).
    assert_eq!(s.next_deadline(&TIMING), Some(t(62_000)));
    assert!(tick(&mut s, t(61_999)).is_empty());
    assert!(tick(&mut s, t(62_000)).is_empty());
    assert!(s.is_closed());
    assert_eq!(
        teardown_of(&s),
        (TeardownCause::CloseDeadline, t(62_000), None)
    );
    assert_eq!(
        s.outcome(),
        Some(Outcome::Shutdown(ShutdownCause::ToolTurnDone))
    );
}

/// D1.
#[test]
fn close_deadline_applies_to_unattended_sessions_too() {
    let mut s = new_session();
    apply(&mut s, open_in("R"), t(0));
    apply(&mut s, end_call("S", pipeline()), t(1_000));
    apply(&mut s, done("S"), t(2_000));
    tick(&mut s, t(62_000));
    assert_eq!(teardown_of(&s).0, TeardownCause::CloseDeadline);
}

/// D1, T1.
#[test]
fn close_deadline_a_close_in_time_means_no_teardown() {
    let mut s = attended();
    apply(&mut s, end_call("S", pipeline()), t(1_000));
    apply(&mut s, done("S"), t(2_000));
    assert_eq!(
        apply(&mut s, close(CloseReason::UserInitiated), t(61_999)),
        [
            Directive::DeleteRoom,
            Directive::ShutdownJob {
                reason: CloseReason::UserInitiated
            }
        ]
    );
    assert!(tick(&mut s, t(200_000)).is_empty());
    assert!(s.teardown().is_none());
    assert_eq!(s.next_deadline(&TIMING), None);
}

/// T1 (the table's first row).
#[test]
fn teardown_with_delete_room_off_keeps_the_room_and_needs_no_request() {
    let mut s = new_session();
    let keep = Options {
        delete_room: false,
        ..Options::default()
    };
    apply(
        &mut s,
        Event::Open {
            options: Some(Arc::new(keep)),
            max_duration: None,
            room: Some(RoomName::new("R")),
            warnings: Vec::new(),
        },
        t(0),
    );
    s.stream_opened(t(0));
    s.stream_closed(t(0));
    tick(&mut s, t(10_000));
    assert_eq!(
        teardown_of(&s),
        (
            TeardownCause::WorkerLost,
            t(10_000),
            Some(TeardownResult::RoomKept)
        )
    );
    assert_eq!(order(&s), None);
    assert!(!s.teardown_pending());
}

/// T1 (the table's second row).
#[test]
fn teardown_without_a_room_has_nothing_to_hang_up() {
    let mut s = new_session();
    s.stream_opened(t(0));
    s.stream_closed(t(0));
    tick(&mut s, t(10_000));
    assert_eq!(teardown_of(&s).2, Some(TeardownResult::NoRoom));
    assert_eq!(order(&s), None);
}

/// T1, T3.
#[test]
fn teardown_takes_one_result_once() {
    let mut s = attended();
    s.stream_closed(t(0));
    tick(&mut s, t(10_000));
    assert!(s.teardown_pending());
    let deleted = TeardownDone {
        result: TeardownResult::RoomDeleted,
        attempts: 3,
        error: None,
    };
    assert!(s.teardown_finished(deleted.clone(), t(12_000)));
    assert!(!s.teardown_pending());
    assert_eq!(order(&s), None);
    let failed = TeardownDone {
        result: TeardownResult::Failed,
        attempts: 1,
        error: Some("late".into()),
    };
    assert!(!s.teardown_finished(failed, t(13_000)), "one result");
    assert_eq!(
        s.teardown().and_then(|t| t.finished.clone()),
        Some((deleted, t(12_000)))
    );
}

/// T1, D1.
#[test]
fn teardown_happens_at_most_once_and_a_late_close_changes_nothing() {
    let mut s = attended();
    s.stream_closed(t(0));
    tick(&mut s, t(10_000));
    let first = s.teardown().cloned();
    let step = s
        .handle(close(CloseReason::Error), t(11_000), &TIMING)
        .unwrap();
    assert!(step.duplicate && step.directives.is_empty());
    s.stream_opened(t(12_000));
    s.stream_closed(t(12_000));
    tick(&mut s, t(100_000));
    assert_eq!(s.teardown().cloned(), first);
    assert_eq!(
        s.handle(end_call("S", pipeline()), t(101_000), &TIMING),
        Err(Rejection::Closed)
    );
}

/// the room.
#[test]
fn room_the_first_one_given_is_kept() {
    let mut s = new_session();
    apply(&mut s, open_in("A"), t(0));
    let step = s.handle(open_in("B"), t(1), &TIMING).unwrap();
    assert!(step.duplicate);
    assert_eq!(s.room(), Some(&RoomName::new("A")));
}

// ---- Extension: the silence ladder ----

/// Silence timeout 20 s, a reminder every 5 s, at most `reminders` of them.
fn silence_options(reminders: u8) -> Options {
    Options {
        silence_timeout: Some(Duration::from_secs(20)),
        silence_reminder_after: Duration::from_secs(5),
        silence_reminders: reminders,
        silence_reminder_instructions: arcstr::ArcStr::from("still there?"),
        ..Options::default()
    }
}

fn open_with(options: Options) -> Event {
    Event::Open {
        options: Some(Arc::new(options)),
        max_duration: None,
        room: None,
        warnings: Vec::new(),
    }
}

/// A session opened at t(0) with [`silence_options`].
fn silent_session(reminders: u8) -> Session {
    let mut s = new_session();
    apply(&mut s, open_with(silence_options(reminders)), t(0));
    s
}

fn remind(cause: ShutdownCause, instructions: &str) -> Directive {
    Directive::Remind {
        cause,
        instructions: arcstr::ArcStr::from(instructions),
    }
}

fn reminder() -> Directive {
    remind(ShutdownCause::SilenceTimeout, "still there?")
}

fn user_speech(s: &mut Session, now: Time) -> Vec<Directive> {
    apply(s, Event::UserSpeech, now)
}

/// Each directive with the time it was issued, in ms after t(0).
fn timed(s: &Session) -> Vec<(u64, Directive)> {
    s.directives()
        .iter()
        .map(|d| {
            let ms = d.at.since(t(0)).as_millis() as u64;
            (ms, d.directive.clone())
        })
        .collect()
}

/// Runs the session's deadlines up to `until`, each at its own instant (a perfect timer).
fn run_until(s: &mut Session, until: Time) {
    while let Some(deadline) = s.next_deadline(&TIMING).filter(|d| *d <= until) {
        s.on_time(deadline, &TIMING);
    }
}

/// the silence ladder: off unless the options turn it on.
#[test]
fn silence_is_off_by_default() {
    let mut s = new_session();
    apply(&mut s, open(None), t(0));
    assert_eq!(s.next_deadline(&TIMING), None);
    run_until(&mut s, t(3_600_000));
    assert!(s.directives().is_empty());
}

/// the silence ladder: reminder i at i × silence_reminder_after, up to the count; then the
/// wind-up at the timeout, then the shutdown after the grace.
#[test]
fn silence_reminders_up_to_the_count_then_wind_up_then_shutdown() {
    let mut s = silent_session(2);
    assert_eq!(s.next_deadline(&TIMING), Some(t(5_000)));
    assert!(tick(&mut s, t(4_999)).is_empty());
    assert_eq!(tick(&mut s, t(5_000)), [reminder()]);
    assert_eq!(s.next_deadline(&TIMING), Some(t(10_000)));
    assert_eq!(tick(&mut s, t(10_000)), [reminder()]);
    // Two is the count: the next thing is the timeout, not a third reminder at 15 s.
    assert_eq!(s.next_deadline(&TIMING), Some(t(20_000)));
    assert!(tick(&mut s, t(15_000)).is_empty());
    assert_eq!(
        tick(&mut s, t(20_000)),
        [wind_up(ShutdownCause::SilenceTimeout)]
    );
    assert_eq!(s.next_deadline(&TIMING), Some(t(30_000)));
    assert!(tick(&mut s, t(29_999)).is_empty());
    assert_eq!(
        tick(&mut s, t(30_000)),
        [shutdown(ShutdownCause::SilenceTimeout)]
    );
    assert_eq!(s.state(), State::ShuttingDown);
    assert_eq!(
        s.outcome(),
        Some(Outcome::Shutdown(ShutdownCause::SilenceTimeout))
    );
    assert_eq!(s.ended_reason(), None, "not closed yet");
}

/// the silence ladder: a call that ends this way closes like max duration's (note J).
#[test]
fn silence_timeout_close_deletes_the_room_and_ends_silence_timeout() {
    let mut s = silent_session(1);
    run_until(&mut s, t(30_000));
    assert_eq!(
        apply(
            &mut s,
            close(CloseReason::ParticipantDisconnected),
            t(31_000)
        ),
        [
            Directive::DeleteRoom,
            Directive::ShutdownJob {
                reason: CloseReason::ParticipantDisconnected
            }
        ]
    );
    assert_eq!(s.ended_reason(), Some(EndedReason::SilenceTimeout));
}

/// the silence ladder: no reminder at or after the timeout.
#[test]
fn silence_reminders_due_at_the_timeout_are_not_issued() {
    let mut s = new_session();
    let options = Options {
        silence_timeout: Some(Duration::from_secs(2)),
        silence_reminder_after: Duration::from_secs(1),
        silence_reminders: 5,
        ..silence_options(5)
    };
    apply(&mut s, open_with(options), t(0));
    run_until(&mut s, t(2_500));
    assert_eq!(
        timed(&s),
        [
            (1_000, reminder()),
            (2_000, wind_up(ShutdownCause::SilenceTimeout))
        ]
    );
}

/// the silence ladder: the user's speech starts the silence again, reminders included.
#[test]
fn silence_is_reset_by_user_speech() {
    let mut s = silent_session(1);
    assert_eq!(tick(&mut s, t(5_000)), [reminder()]);
    assert!(user_speech(&mut s, t(8_000)).is_empty());
    assert_eq!(s.next_deadline(&TIMING), Some(t(13_000)));
    assert_eq!(tick(&mut s, t(13_000)), [reminder()]);
    assert!(user_speech(&mut s, t(27_000)).is_empty());
    assert_eq!(s.next_deadline(&TIMING), Some(t(32_000)));
    run_until(&mut s, t(47_000));
    assert_eq!(
        timed(&s),
        [
            (5_000, reminder()),
            (13_000, reminder()),
            (32_000, reminder()),
            (47_000, wind_up(ShutdownCause::SilenceTimeout)),
        ]
    );
}

/// the silence ladder: silence pauses while an agent speech is in progress (from its
/// OnSpeechCreated to its OnSpeechDone), the reminders' own included, and resumes after.
#[test]
fn silence_pauses_while_the_agent_speaks() {
    let mut s = silent_session(1);
    // The greeting, 1 s to 4 s: 1 s of silence before it.
    apply(&mut s, created("greeting"), t(1_000));
    assert_eq!(
        s.next_deadline(&TIMING),
        None,
        "no reminder while the agent speaks"
    );
    assert!(tick(&mut s, t(6_000)).is_empty());
    apply(&mut s, done("greeting"), t(4_000 + 3_000));
    // 1 s before, so the reminder is due 4 s after the greeting ended.
    assert_eq!(s.next_deadline(&TIMING), Some(t(11_000)));
    assert_eq!(tick(&mut s, t(11_000)), [reminder()]);
    // The reminder is spoken from 11.5 s to 14 s: silence 5.5 s at 11.5 s, still at 14 s, so
    // 14.5 s more to the timeout.
    apply(&mut s, created("reminder"), t(11_500));
    apply(&mut s, done("reminder"), t(14_000));
    assert_eq!(s.next_deadline(&TIMING), Some(t(28_500)));
    assert_eq!(
        tick(&mut s, t(28_500)),
        [wind_up(ShutdownCause::SilenceTimeout)]
    );
}

/// the silence ladder: overlapping agent speeches keep it paused until the last is done; a
/// speech reported done without being created does not pause it.
#[test]
fn silence_stays_paused_until_every_agent_speech_is_done() {
    let mut s = silent_session(1);
    apply(&mut s, created("A"), t(1_000));
    apply(&mut s, created("B"), t(2_000));
    apply(&mut s, done("A"), t(3_000));
    assert_eq!(s.next_deadline(&TIMING), None);
    apply(&mut s, done("B"), t(10_000));
    assert_eq!(s.next_deadline(&TIMING), Some(t(14_000)));
    apply(&mut s, done("C"), t(12_000));
    assert_eq!(s.next_deadline(&TIMING), Some(t(14_000)));
}

/// the silence ladder: user speech while the agent speaks resets the silence, which stays
/// paused until the speech is done.
#[test]
fn silence_reset_while_paused_starts_from_zero_when_the_agent_is_done() {
    let mut s = silent_session(1);
    apply(&mut s, created("A"), t(3_000));
    user_speech(&mut s, t(4_000));
    apply(&mut s, done("A"), t(6_000));
    assert_eq!(s.next_deadline(&TIMING), Some(t(11_000)));
}

/// the silence ladder: nothing about silence after end_call, not even the shutdown of a
/// wind-up already issued.
#[test]
fn silence_after_end_call_is_ignored() {
    let mut s = silent_session(1);
    apply(&mut s, end_call("S", pipeline()), t(1_000));
    assert_eq!(
        s.next_deadline(&TIMING),
        Some(t(31_000)),
        "the playout guard only"
    );
    apply(&mut s, done("S"), t(2_000));
    run_until(&mut s, t(100_000));
    assert_eq!(
        kinds(s.directives()),
        [shutdown(ShutdownCause::ToolTurnDone)]
    );

    // Wound up for silence, then the agent ends the call: its shutdown, not silence's.
    let mut s = silent_session(0);
    assert_eq!(
        tick(&mut s, t(20_000)),
        [wind_up(ShutdownCause::SilenceTimeout)]
    );
    apply(&mut s, end_call("S", pipeline()), t(22_000));
    assert_eq!(
        s.next_deadline(&TIMING),
        Some(t(52_000)),
        "the playout guard only"
    );
    assert_eq!(
        apply(&mut s, done("S"), t(25_000)),
        [shutdown(ShutdownCause::ToolTurnDone)]
    );
    apply(&mut s, close(CloseReason::UserInitiated), t(26_000));
    assert_eq!(s.ended_reason(), Some(EndedReason::AgentWindUp));
}

/// the silence ladder: the wind-up is a decision; the user speaking after it does not call
/// the shutdown off (the agent has been asked to say goodbye).
#[test]
fn silence_wind_up_is_not_undone_by_user_speech() {
    let mut s = silent_session(0);
    tick(&mut s, t(20_000));
    assert!(user_speech(&mut s, t(21_000)).is_empty());
    // The agent's goodbye neither pauses nor moves the grace.
    apply(&mut s, created("goodbye"), t(22_000));
    assert_eq!(s.next_deadline(&TIMING), Some(t(30_000)));
    assert!(apply(&mut s, done("goodbye"), t(25_000)).is_empty());
    assert_eq!(
        tick(&mut s, t(30_000)),
        [shutdown(ShutdownCause::SilenceTimeout)]
    );
}

/// the silence ladder: nothing about silence once SHUTDOWN_SESSION was issued or the session
/// closed.
#[test]
fn silence_is_ignored_once_shutting_down_or_closed() {
    let mut s = new_session();
    let options = Options {
        end_instructions: None,
        ..silence_options(1)
    };
    apply(&mut s, open_with(options), t(0));
    s.handle(
        Event::Open {
            options: None,
            max_duration: Some(Duration::from_secs(3)),
            room: None,
            warnings: Vec::new(),
        },
        t(0),
        &TIMING,
    )
    .unwrap();
    run_until(&mut s, t(13_000));
    assert_eq!(
        kinds(s.directives()),
        [
            wind_up(ShutdownCause::MaxDuration),
            shutdown(ShutdownCause::MaxDuration)
        ],
        "a WIND_UP stops the ladder; its shutdown is the call's"
    );
    run_until(&mut s, t(100_000));
    assert_eq!(s.directives().len(), 2);

    let mut s = silent_session(1);
    apply(
        &mut s,
        close(CloseReason::ParticipantDisconnected),
        t(1_000),
    );
    assert_eq!(s.next_deadline(&TIMING), None);
    assert!(user_speech(&mut s, t(2_000)).is_empty());
    assert_eq!(s.ended_reason(), Some(EndedReason::UserHangup));
}

/// the silence ladder: with a late timer (or after a restart) several reminder slots and the
/// timeout may have passed at once: only the last reminder is issued, and none when the
/// timeout is due too, whose shutdown then runs from when the timeout was reached.
#[test]
fn silence_late_timer_issues_one_reminder_or_only_the_wind_up() {
    let mut s = silent_session(3);
    assert_eq!(tick(&mut s, t(12_000)), [reminder()]);
    assert_eq!(s.next_deadline(&TIMING), Some(t(15_000)));
    assert_eq!(tick(&mut s, t(15_000)), [reminder()]);

    let mut s = silent_session(3);
    assert_eq!(
        tick(&mut s, t(25_000)),
        [wind_up(ShutdownCause::SilenceTimeout)]
    );
    assert_eq!(s.next_deadline(&TIMING), Some(t(30_000)));
}

/// the silence ladder: a deadline that has passed acts first (note I), so user speech that
/// comes after a reminder's time gets the reminder in its reply.
#[test]
fn silence_reminder_due_before_a_late_event_comes_in_its_reply() {
    let mut s = silent_session(1);
    assert_eq!(user_speech(&mut s, t(5_000)), [reminder()]);
    assert_eq!(s.next_deadline(&TIMING), Some(t(10_000)));
}

/// the silence ladder: options that turn it on start it then; the defaults may have it on
/// from the session's start; options may turn it off.
#[test]
fn silence_starts_with_the_options_that_turn_it_on() {
    let mut s = new_session();
    apply(&mut s, created("A"), t(0));
    apply(&mut s, done("A"), t(1_000));
    apply(&mut s, open_with(silence_options(1)), t(3_000));
    assert_eq!(s.next_deadline(&TIMING), Some(t(8_000)));

    let mut s = Session::new(Arc::new(silence_options(1)), t(0));
    assert_eq!(s.next_deadline(&TIMING), Some(t(5_000)));
    let off = Options {
        silence_timeout: None,
        ..silence_options(1)
    };
    apply(&mut s, open_with(off), t(1_000));
    assert_eq!(s.next_deadline(&TIMING), None);
}

/// the silence ladder: at most MAX_REMINDS_PER_SESSION REMINDs in a session, however often
/// the user answers.
#[test]
fn silence_reminders_are_bounded_per_session() {
    let mut s = silent_session(1);
    let mut now = 0;
    for _ in 0..40 {
        now += 5_000;
        tick(&mut s, t(now));
        now += 1_000;
        user_speech(&mut s, t(now));
    }
    let reminders = s
        .directives()
        .iter()
        .filter(|d| matches!(d.directive, Directive::Remind { .. }))
        .count();
    assert_eq!(reminders, crate::domain::MAX_REMINDS_PER_SESSION);
    // The timeout still applies.
    run_until(&mut s, t(now + 20_000));
    assert_eq!(
        s.directives().last().map(|d| d.directive.clone()),
        Some(wind_up(ShutdownCause::SilenceTimeout))
    );
}

// ---- Extension: staged time limits ----

fn warning(before_s: u64, text: &str) -> Warning {
    Warning {
        before: Duration::from_secs(before_s),
        instructions: arcstr::ArcStr::from(text),
    }
}

fn open_warned(max_s: u64, warnings: Vec<Warning>) -> Event {
    Event::Open {
        options: None,
        max_duration: Some(Duration::from_secs(max_s)),
        room: None,
        warnings,
    }
}

/// staged time limits: each warning once, at its time, in time order whatever the order
/// given; then WIND_UP and SHUTDOWN_SESSION (MAX_DURATION) as before.
#[test]
fn warnings_are_issued_once_each_in_time_order() {
    let mut s = new_session();
    let warnings = vec![warning(10, "ten seconds"), warning(30, "half a minute")];
    apply(&mut s, open_warned(60, warnings), t(0));
    assert_eq!(s.next_deadline(&TIMING), Some(t(30_000)));
    run_until(&mut s, t(80_000));
    let at_max = |text| remind(ShutdownCause::MaxDuration, text);
    assert_eq!(
        timed(&s),
        [
            (30_000, at_max("half a minute")),
            (50_000, at_max("ten seconds")),
            (60_000, wind_up(ShutdownCause::MaxDuration)),
            (70_000, shutdown(ShutdownCause::MaxDuration)),
        ]
    );
    assert_eq!(s.warnings()[0].instructions.as_str(), "half a minute");
}

/// staged time limits: warnings stop at end_call (the agent is already saying goodbye), and
/// a late timer issues only the last one due, none once the wind-up is due too.
#[test]
fn warnings_stop_at_end_call_and_skip_when_late() {
    let warnings = || vec![warning(30, "thirty"), warning(10, "ten")];
    let mut s = new_session();
    apply(&mut s, open_warned(60, warnings()), t(0));
    apply(&mut s, end_call("S", realtime(true)), t(25_000));
    run_until(&mut s, t(59_000));
    assert_eq!(
        kinds(s.directives()),
        [shutdown(ShutdownCause::PlayoutGuard)],
        "no REMIND after end_call"
    );

    let mut s = new_session();
    apply(&mut s, open_warned(60, warnings()), t(0));
    assert_eq!(
        tick(&mut s, t(55_000)),
        [remind(ShutdownCause::MaxDuration, "ten")]
    );
    let mut s = new_session();
    apply(&mut s, open_warned(60, warnings()), t(0));
    assert_eq!(
        tick(&mut s, t(61_000)),
        [wind_up(ShutdownCause::MaxDuration)]
    );
}

/// staged time limits: fixed with the maximum duration; a repeat may leave them out or
/// repeat them (in any order), other ones are refused.
#[test]
fn warnings_are_fixed_with_the_maximum_duration() {
    let mut s = new_session();
    apply(
        &mut s,
        open_warned(60, vec![warning(10, "a"), warning(30, "b")]),
        t(0),
    );
    for repeat in [
        open_warned(60, Vec::new()),
        open_warned(60, vec![warning(30, "b"), warning(10, "a")]),
    ] {
        assert!(s.handle(repeat, t(1), &TIMING).unwrap().duplicate);
    }
    assert_eq!(
        s.handle(open_warned(60, vec![warning(10, "a")]), t(2), &TIMING),
        Err(Rejection::WarningsConflict)
    );
}

// ---- ended reason ----

/// ended reason: one value per closed session, from how it ended.
#[test]
fn ended_reason_names_why_the_call_ended() {
    let closed_by = |reason| {
        let mut s = new_session();
        apply(&mut s, close(reason), t(1));
        s.ended_reason()
    };
    assert_eq!(
        closed_by(CloseReason::ParticipantDisconnected),
        Some(EndedReason::UserHangup)
    );
    assert_eq!(closed_by(CloseReason::Error), Some(EndedReason::Error));
    assert_eq!(
        closed_by(CloseReason::JobShutdown),
        Some(EndedReason::JobShutdown)
    );
    assert_eq!(
        closed_by(CloseReason::UserInitiated),
        Some(EndedReason::AgentClosed)
    );
    assert_eq!(
        closed_by(CloseReason::TaskCompleted),
        Some(EndedReason::AgentClosed)
    );

    // end_call, and the user hanging up during the goodbye: the agent ended it.
    let mut s = new_session();
    apply(&mut s, end_call("S", pipeline()), t(1));
    assert_eq!(s.ended_reason(), None, "live");
    apply(&mut s, close(CloseReason::ParticipantDisconnected), t(2));
    assert_eq!(s.ended_reason(), Some(EndedReason::AgentEndCall));
    // ... but an error during it is an error.
    let mut s = new_session();
    apply(&mut s, end_call("S", pipeline()), t(1));
    apply(&mut s, close(CloseReason::Error), t(2));
    assert_eq!(s.ended_reason(), Some(EndedReason::Error));

    // The max duration's shutdown; its wind-up followed by end_call.
    let mut s = new_session();
    apply(&mut s, open(Some(Duration::from_secs(60))), t(0));
    run_until(&mut s, t(70_000));
    apply(&mut s, close(CloseReason::Error), t(71_000));
    assert_eq!(s.ended_reason(), Some(EndedReason::MaxDuration));
    let mut s = new_session();
    apply(&mut s, open(Some(Duration::from_secs(60))), t(0));
    tick(&mut s, t(60_000));
    apply(&mut s, end_call("S", pipeline()), t(61_000));
    apply(&mut s, done("S"), t(62_000));
    apply(&mut s, close(CloseReason::UserInitiated), t(63_000));
    assert_eq!(s.ended_reason(), Some(EndedReason::AgentWindUp));

    // Expired; worker lost (the teardown's cause, whatever the outcome); the close deadline
    // (the shutdown's reason: the call had ended, only its close was missing).
    let mut s = new_session();
    s.expire(t(1));
    assert_eq!(s.ended_reason(), Some(EndedReason::Expired));
    let mut s = attended();
    apply(&mut s, end_call("S", pipeline()), t(1_000));
    apply(&mut s, done("S"), t(2_000));
    s.stream_closed(t(3_000));
    tick(&mut s, t(13_000));
    assert_eq!(s.ended_reason(), Some(EndedReason::WorkerLost));
    let mut s = new_session();
    apply(&mut s, end_call("S", pipeline()), t(1_000));
    apply(&mut s, done("S"), t(2_000));
    tick(&mut s, t(62_000));
    assert_eq!(teardown_of(&s).0, TeardownCause::CloseDeadline);
    assert_eq!(s.ended_reason(), Some(EndedReason::AgentEndCall));
}
