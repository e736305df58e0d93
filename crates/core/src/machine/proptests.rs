//! Model-based property tests: random sequences of events and time advances, with a perfect
//! timer (every deadline applied at its instant), checked against the contract's invariants.

use proptest::prelude::*;

use super::*;
use crate::domain::{
    Capabilities, CloseReason, Directive, Event, Options, RoomName, SessionId, ShutdownCause,
    TeardownCause, TeardownDone, TeardownOrder, TeardownResult, Warning,
    MAX_DIRECTIVES_PER_SESSION,
};

const GUARD: Duration = Duration::from_secs(30);
const GRACE: Duration = Duration::from_secs(10);
const TIMING: Timing = Timing {
    playout_guard: GUARD,
    wind_up_grace: GRACE,
    worker_lost_after: LOST,
    close_deadline: CLOSE_DEADLINE,
};
const LOST: Duration = Duration::from_secs(10);
const CLOSE_DEADLINE: Duration = Duration::from_secs(60);
const SPEECHES: [&str; 4] = ["S1", "S2", "R1", "R2"];

#[derive(Clone, Debug)]
enum Op {
    EndCall(usize, Capabilities),
    Created(usize),
    Done(usize, bool, Option<bool>),
    Close(CloseReason),
    Advance(u64),
    /// The worker's watch stream opened or ended (the lease).
    StreamOpened,
    StreamClosed,
    /// The sidecar restarted from its journal.
    Restarted,
    /// LiveKit answered the teardown's request.
    TeardownFinished(bool),
    /// The user spoke.
    UserSpeech,
}

fn capabilities() -> impl Strategy<Value = Capabilities> {
    (
        proptest::option::of(any::<bool>()),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(|(realtime, auto_tool_reply)| Capabilities {
            realtime,
            auto_tool_reply,
        })
}

fn op() -> impl Strategy<Value = Op> {
    let speech = 0..SPEECHES.len();
    prop_oneof![
        3 => (speech.clone(), capabilities()).prop_map(|(s, c)| Op::EndCall(s, c)),
        3 => speech.clone().prop_map(Op::Created),
        4 => (speech, any::<bool>(), proptest::option::of(any::<bool>()))
            .prop_map(|(s, i, g)| Op::Done(s, i, g)),
        1 => proptest::sample::select(CloseReason::ALL.to_vec()).prop_map(Op::Close),
        3 => (0u64..40_000).prop_map(Op::Advance),
        2 => Just(Op::StreamOpened),
        2 => Just(Op::StreamClosed),
        1 => Just(Op::Restarted),
        1 => any::<bool>().prop_map(Op::TeardownFinished),
        3 => Just(Op::UserSpeech),
    ]
}

fn options() -> impl Strategy<Value = Options> {
    let silence = proptest::option::of((1_000u64..40_000, 500u64..15_000, 0u8..4));
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        100u64..10_000,
        silence,
    )
        .prop_map(|(delete_room, output, early, timeout, silence)| {
            let mut options = Options {
                delete_room,
                end_instructions: output.then(|| Arc::from("bye")),
                early_reply_capture: early,
                reply_timeout: Duration::from_millis(timeout),
                ..Options::default()
            };
            if let Some((timeout, after, reminders)) = silence {
                options.silence_timeout = Some(Duration::from_millis(timeout));
                options.silence_reminder_after = Duration::from_millis(after);
                options.silence_reminders = reminders;
            }
            options
        })
}

/// A maximum duration, with warnings before it (as many seconds before), or none.
fn limit() -> impl Strategy<Value = Option<(Duration, Vec<Warning>)>> {
    proptest::option::of((20u64..120, proptest::collection::vec(1u64..20, 0..3))).prop_map(
        |limit| {
            limit.map(|(max, befores)| {
                let warnings = befores
                    .into_iter()
                    .map(|before| Warning {
                        before: Duration::from_secs(before),
                        instructions: arcstr::format!("{before} s left"),
                    })
                    .collect();
                (Duration::from_secs(max), warnings)
            })
        },
    )
}

/// Runs the ops; returns the session, every directive issued in order, the time of the
/// first EndCall, and the time the first tool speech was done (with its EndCall seen).
struct Run {
    session: Session,
    issued: Vec<IssuedDirective>,
    first_end_call: Option<Time>,
    /// When each tool speech became done (with its EndCall seen), in order.
    tool_done: Vec<Time>,
    now: Time,
    /// The lease as the worker saw it: streams it held, and its last sign of life.
    lease: Lease,
    /// Every teardown order seen after an op, with the op's index.
    orders: Vec<TeardownOrder>,
    /// The test's own model of the silence, which checked each silence directive as it came.
    silence: SilenceModel,
}

/// The silence as the contract defines it, kept by the test: it grows while no agent speech
/// is in progress (created and not done), and starts again when the user speaks.
#[derive(Default)]
struct SilenceModel {
    /// Silence up to `mark`, in µs.
    banked: u64,
    mark: Time,
    speaking: bool,
    /// Silence reminders issued in the current silence.
    reminders: u8,
    /// When the silence reached the timeout and `WIND_UP` came.
    wound_up: Option<Time>,
}

impl SilenceModel {
    fn at(&self, now: Time) -> u64 {
        self.banked
            + if self.speaking {
                0
            } else {
                now.since(self.mark).as_micros() as u64
            }
    }

    fn advance(&mut self, now: Time) {
        self.banked = self.at(now);
        self.mark = now;
    }

    /// Checks a directive of the silence ladder against the model, at its time.
    fn check(&mut self, options: &Options, d: &IssuedDirective) {
        let ms = |d: Duration| d.as_micros() as u64;
        match &d.directive {
            Directive::Remind {
                cause: ShutdownCause::SilenceTimeout,
                ..
            } => {
                self.reminders += 1;
                let silent = self.at(d.at);
                let after = ms(options.silence_reminder_after);
                assert!(
                    self.reminders <= options.silence_reminders,
                    "at most silence_reminders REMINDs per silence"
                );
                assert_eq!(
                    silent,
                    u64::from(self.reminders) * after,
                    "reminder i at i x silence_reminder_after of silence"
                );
                assert!(silent < ms(options.silence_timeout.expect("silence on")));
            }
            Directive::WindUp {
                cause: ShutdownCause::SilenceTimeout,
            } => {
                assert_eq!(
                    Some(self.at(d.at)),
                    options.silence_timeout.map(ms),
                    "WIND_UP when the silence reaches the timeout"
                );
                self.wound_up = Some(d.at);
            }
            Directive::ShutdownSession {
                cause: ShutdownCause::SilenceTimeout,
            } => {
                assert_eq!(
                    self.wound_up.map(|at| at + GRACE),
                    Some(d.at),
                    "SHUTDOWN_SESSION (SILENCE_TIMEOUT) the grace after its WIND_UP"
                );
            }
            _ => {}
        }
    }
}

/// The test's own model of the worker's lease.
#[derive(Default)]
struct Lease {
    attended: bool,
    streams: u32,
    last_sign: Time,
    /// Set when the worker closed the session itself.
    worker_closed: bool,
}

impl Lease {
    /// When the worker counts as lost, if it can be.
    fn lost_at(&self) -> Option<Time> {
        (self.attended && self.streams == 0).then(|| self.last_sign + LOST)
    }
}

fn run(options: Options, limit: Option<(Duration, Vec<Warning>)>, ops: &[Op]) -> Run {
    let options = Arc::new(options);
    let mut now = Time::from_micros(1_000_000_000_000_000);
    let mut session = Session::new(Arc::clone(&options), now);
    let (max_duration, warnings) = limit.unzip();
    let open = Event::Open {
        options: None,
        max_duration,
        room: Some(RoomName::new("room")),
        warnings: warnings.unwrap_or_default(),
    };
    session
        .handle(open, now, &TIMING)
        .expect("a new session opens");
    let mut issued = Vec::new();
    let mut first_end_call = None;
    let mut tool_done = Vec::new();
    let mut called = [false; SPEECHES.len()];
    let mut created = [false; SPEECHES.len()];
    let mut done = [false; SPEECHES.len()];
    let mut silence = SilenceModel {
        mark: now,
        ..SilenceModel::default()
    };
    let mut lease = Lease {
        last_sign: now,
        ..Lease::default()
    };
    let mut orders = Vec::new();
    let id = SessionId::new("call");
    for op in ops {
        if let Some(order) = session.teardown_order(&id) {
            if orders.last() != Some(&order) {
                orders.push(order);
            }
        }
        let torn_down_before = session.teardown().is_some();
        // A timer that fires with nothing due changes nothing: the registry journals a tick
        // only when something was due, and replay must rebuild the same session.
        if session.next_deadline(&TIMING).is_none_or(|d| d > now) {
            let quiet = format!("{session:?}");
            assert!(session.on_time(now, &TIMING).is_empty());
            assert_eq!(
                quiet,
                format!("{session:?}"),
                "a tick with nothing due moved"
            );
        }
        let event = match op {
            Op::Advance(ms) => {
                let target = now + Duration::from_millis(*ms);
                // A perfect timer: each deadline is applied at its own instant.
                while let Some(deadline) = session.next_deadline(&TIMING).filter(|d| *d <= target) {
                    now = now.max(deadline);
                    let lost_at = lease.lost_at();
                    let fired = session.on_time(now, &TIMING);
                    for d in &fired {
                        silence.check(&options, d);
                    }
                    issued.extend(fired);
                    if let (false, Some(t)) = (torn_down_before, session.teardown()) {
                        if t.cause == TeardownCause::WorkerLost {
                            // Exactly at the end of the window the test's own model computes.
                            assert_eq!(
                                Some(t.decided_at),
                                lost_at,
                                "worker lost when the model says"
                            );
                        }
                    }
                }
                now = target;
                continue;
            }
            Op::StreamOpened => {
                session.stream_opened(now);
                lease.attended = true;
                lease.streams += 1;
                lease.last_sign = now;
                continue;
            }
            Op::StreamClosed => {
                session.stream_closed(now);
                lease.streams = lease.streams.saturating_sub(1);
                lease.last_sign = now;
                continue;
            }
            Op::Restarted => {
                session.restarted(now);
                lease.streams = 0;
                lease.last_sign = now;
                continue;
            }
            Op::TeardownFinished(deleted) => {
                let result = if *deleted {
                    TeardownResult::RoomDeleted
                } else {
                    TeardownResult::Failed
                };
                let pending = session.teardown_pending();
                let done = TeardownDone {
                    result,
                    attempts: 1,
                    error: None,
                };
                assert_eq!(session.teardown_finished(done, now), pending);
                continue;
            }
            Op::EndCall(s, capabilities) => Event::EndCall {
                speech: SpeechId::new(SPEECHES[*s]),
                options: Some(Arc::clone(&options)),
                capabilities: *capabilities,
            },
            Op::Created(s) => Event::SpeechCreated {
                speech: SpeechId::new(SPEECHES[*s]),
            },
            Op::Done(s, interrupted, tool_output_given) => Event::SpeechDone {
                speech: SpeechId::new(SPEECHES[*s]),
                interrupted: *interrupted,
                capabilities: Capabilities::default(),
                tool_output_given: *tool_output_given,
            },
            Op::Close(reason) => Event::SessionClose {
                reason: *reason,
                error: None,
            },
            Op::UserSpeech => Event::UserSpeech,
        };
        let was_closed = session.is_closed();
        lease.last_sign = now;
        if matches!(op, Op::Close(_)) && !was_closed {
            lease.worker_closed = true;
        }
        match session.handle(event, now, &TIMING) {
            Ok(step) => {
                // A repeated close answers the first close's directives again: not new ones.
                if !(step.duplicate && was_closed) {
                    // Deadlines that passed act before the event (note I): the model as it
                    // was before the event.
                    for d in &step.directives {
                        silence.check(&options, d);
                    }
                    issued.extend(step.directives);
                }
                silence.advance(now);
                match op {
                    Op::UserSpeech if silence.wound_up.is_none() => {
                        silence.banked = 0;
                        silence.reminders = 0;
                    }
                    Op::Created(s) => created[*s] = true,
                    _ => {}
                }
                let finished = |s: usize| done[s] || matches!(op, Op::Done(d, ..) if *d == s);
                silence.speaking = (0..SPEECHES.len()).any(|s| created[s] && !finished(s));
                if !was_closed {
                    match op {
                        Op::EndCall(s, _) => {
                            first_end_call.get_or_insert(now);
                            if done[*s] && !called[*s] {
                                tool_done.push(now);
                            }
                            called[*s] = true;
                        }
                        Op::Done(s, ..) => {
                            if called[*s] && !done[*s] {
                                tool_done.push(now);
                            }
                            done[*s] = true;
                        }
                        _ => {}
                    }
                }
            }
            Err(Rejection::Closed) => assert!(was_closed, "only a closed session refuses"),
            Err(other) => panic!("unexpected rejection {other:?}"),
        }
    }
    if let Some(order) = session.teardown_order(&id) {
        if orders.last() != Some(&order) {
            orders.push(order);
        }
    }
    Run {
        session,
        issued,
        first_end_call,
        tool_done,
        now,
        lease,
        orders,
        silence,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn directives_obey_the_contract(
        options in options(),
        limit in limit(),
        ops in proptest::collection::vec(op(), 0..40),
    ) {
        let delete_room = options.delete_room;
        let reply_timeout = options.reply_timeout;
        let silence_on = options.silence_timeout.is_some();
        let max_duration = limit.as_ref().map(|(max, _)| *max);
        let warnings = limit.as_ref().map(|(_, w)| w.clone()).unwrap_or_default();
        let mut r = run(options.clone(), limit, &ops);
        // Then nothing happens for long enough that every deadline has passed.
        let later = r.now + GUARD * 2 + reply_timeout + Duration::from_secs(1);
        while let Some(deadline) = r.session.next_deadline(&TIMING).filter(|d| *d <= later) {
            let fired = r.session.on_time(deadline.max(r.now), &TIMING);
            for d in &fired {
                r.silence.check(&options, d);
            }
            r.issued.extend(fired);
        }

        // Sequence numbers: 1, 2, 3, ... with no gaps, and the session's log agrees.
        let seqs: Vec<u64> = r.issued.iter().map(|d| d.seq).collect();
        prop_assert_eq!(seqs, (1..=r.issued.len() as u64).collect::<Vec<_>>());
        prop_assert_eq!(r.session.directives(), &r.issued[..]);

        let shutdowns = r.issued.iter().filter(|d| matches!(d.directive, Directive::ShutdownSession { .. })).count();
        prop_assert!(shutdowns <= 1, "at most one SHUTDOWN_SESSION");
        prop_assert!(r.issued.len() <= MAX_DIRECTIVES_PER_SESSION);
        let wind_ups = r.issued.iter().filter(|d| matches!(d.directive, Directive::WindUp { .. })).count();
        prop_assert!(wind_ups <= 1, "at most one WIND_UP");

        // Nothing but the close's directives after SHUTDOWN_SESSION; no REMIND or WIND_UP
        // after end_call; each cause only with the limit that has it.
        let shutdown_seq = r.issued.iter().find(|d| matches!(d.directive, Directive::ShutdownSession { .. })).map(|d| d.seq);
        for d in &r.issued {
            let cause = match &d.directive {
                Directive::Remind { cause, .. } | Directive::WindUp { cause } => {
                    prop_assert!(shutdown_seq.is_none_or(|s| d.seq < s), "no REMIND or WIND_UP after SHUTDOWN_SESSION");
                    prop_assert!(r.first_end_call.is_none_or(|e| d.at <= e), "no REMIND or WIND_UP after end_call");
                    *cause
                }
                Directive::ShutdownSession { cause } => *cause,
                _ => continue,
            };
            match cause {
                ShutdownCause::SilenceTimeout => prop_assert!(silence_on, "silence directives need a silence timeout"),
                ShutdownCause::MaxDuration => prop_assert!(max_duration.is_some(), "max-duration directives need one"),
                _ => {
                    let shutdown = matches!(d.directive, Directive::ShutdownSession { .. });
                    prop_assert!(shutdown, "REMIND and WIND_UP lead up to a limit");
                }
            }
            if let Directive::Remind { cause: ShutdownCause::MaxDuration, instructions } = &d.directive {
                let opened = r.session.created_at() + max_duration.unwrap_or_default();
                let due = warnings.iter().filter(|w| w.instructions == *instructions).any(|w| opened.minus(w.before) == d.at);
                prop_assert!(due, "a warning at its time");
            }
        }
        let warned = r.issued.iter().filter(|d| matches!(&d.directive, Directive::Remind { cause: ShutdownCause::MaxDuration, .. })).count();
        prop_assert!(warned <= warnings.len(), "each warning at most once");

        // Exactly one ended reason per closed session, none for a live one.
        prop_assert_eq!(r.session.ended_reason().is_some(), r.session.is_closed());

        let job = r.issued.iter().position(|d| matches!(d.directive, Directive::ShutdownJob { .. }));
        if let Some(job) = job {
            prop_assert_eq!(job, r.issued.len() - 1, "nothing after SHUTDOWN_JOB");
            prop_assert!(r.session.is_closed(), "SHUTDOWN_JOB only after a close");
            prop_assert!(
                r.first_end_call.is_some() || shutdown_seq.is_some(),
                "SHUTDOWN_JOB only after an end_call or a SHUTDOWN_SESSION"
            );
            let room_before = job > 0 && r.issued[job - 1].directive == Directive::DeleteRoom;
            prop_assert_eq!(room_before, delete_room, "DELETE_ROOM right before SHUTDOWN_JOB iff delete_room");
        }
        if !delete_room {
            prop_assert!(r.issued.iter().all(|d| d.directive != Directive::DeleteRoom));
        }
        if r.session.is_closed() && r.first_end_call.is_some() && r.session.close_reason().is_some() {
            prop_assert!(job.is_some(), "a close after end_call shuts the job down");
        }
        if r.first_end_call.is_none() && max_duration.is_none() && !silence_on {
            prop_assert!(r.issued.is_empty(), "no end_call, no limit, no directive");
        }

        // Liveness: once end_call was called the session ends (or closes), within the bounds.
        if let Some(called) = r.first_end_call {
            let shutdown = r.issued.iter().find(|d| matches!(d.directive, Directive::ShutdownSession { .. }));
            match (shutdown, r.session.closed_at()) {
                (Some(d), closed) => {
                    prop_assert!(closed.is_none_or(|c| d.at <= c));
                    prop_assert!(d.at <= called + GUARD * 2 + reply_timeout, "within guard + timeout + guard of end_call");
                    if let Some(first_done) = r.tool_done.first() {
                        prop_assert!(d.at <= *first_done + reply_timeout + GUARD, "within timeout + guard of the tool speech ending");
                    }
                    if let Directive::ShutdownSession { cause: ShutdownCause::ToolTurnDone } = d.directive {
                        prop_assert!(r.tool_done.contains(&d.at), "the tool turn's end is a tool speech's done");
                    }
                }
                (None, closed) => prop_assert!(closed.is_some(), "end_call without shutdown or close"),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The sidecar's own teardown: only for a lost or stuck worker, at most once, never for a
    /// session its worker closed, and a room is deleted only when `delete_room` is on.
    #[test]
    fn teardowns_obey_the_contract(options in options(), ops in proptest::collection::vec(op(), 0..40)) {
        let delete_room = options.delete_room;
        let r = run(options, None, &ops);
        let teardown = r.session.teardown().cloned();
        let torn_down = r.session.timeline().filter(|e| matches!(
            e.item,
            TimelineItem::Event { record: EventRecord::TornDown { .. }, .. }
        )).count();
        prop_assert!(torn_down <= 1, "at most one teardown per session");
        prop_assert_eq!(torn_down == 1, teardown.is_some());
        prop_assert!(r.orders.len() <= 1, "at most one room deletion asked for: {:?}", r.orders);
        if r.lease.worker_closed {
            let closed_by_worker = r.session.close_reason().is_some();
            if closed_by_worker {
                prop_assert!(teardown.is_none(), "none for a session its worker closed");
            }
        }
        if !delete_room {
            prop_assert!(r.orders.is_empty(), "no room deleted with delete_room off");
            if let Some(t) = &teardown {
                prop_assert_eq!(t.finished.as_ref().map(|(d, _)| d.result), Some(TeardownResult::RoomKept));
            }
        }
        if let Some(t) = &teardown {
            prop_assert!(r.session.is_closed());
            prop_assert_eq!(r.session.closed_at(), Some(t.decided_at));
            match t.cause {
                TeardownCause::WorkerLost => {
                    prop_assert!(r.lease.attended, "only an attended session loses its worker");
                }
                TeardownCause::CloseDeadline => {
                    let shutdown = r.session.shutdown_at().expect("a close deadline follows a shutdown");
                    prop_assert_eq!(t.decided_at, shutdown + CLOSE_DEADLINE);
                }
            }
        } else if !r.session.is_closed() {
            // Liveness: a lost worker is noticed by the end of its window.
            if let Some(lost_at) = r.lease.lost_at() {
                prop_assert!(r.now < lost_at, "the worker was lost at {lost_at:?}, now {:?}", r.now);
            }
            if let Some(shutdown) = r.session.shutdown_at() {
                prop_assert!(r.now < shutdown + CLOSE_DEADLINE);
            }
        }
    }
}
