//! What every refusal and every session report must satisfy, whatever the input.

use endcall_sidecar::{
    contract::domain::{MAX_DIRECTIVES_PER_SESSION, MAX_REMINDS_PER_SESSION},
    proto::v1 as pb,
};
use tonic::{Code, Status};

/// Longest status message allowed. A message is a sentence naming the field plus at most one
/// id (128 bytes), which `{:?}` may escape to at most three times its length.
pub const MAX_STATUS_MESSAGE: usize = 512;

/// Fields a status message may name, as its `field: ` prefix.
const FIELDS: &[&str] = &[
    "session_id",
    "speech_id",
    "options",
    "options.end_instructions.text",
    "options.end_instructions.none",
    "options.extra_description",
    "options.reply_timeout",
    "options.silence_timeout",
    "options.silence_reminder_after",
    "options.silence_reminders",
    "options.silence_reminder_instructions",
    "max_duration",
    "room",
    "max_duration_warnings",
    "max_duration_warnings[].before",
    "max_duration_warnings[].instructions",
    "reason",
    "error_message",
    "extra_description",
];

/// A refusal is one of the codes this RPC may answer, with a short, printable message that
/// starts with the field at fault.
pub(super) fn check_status(method: &str, status: &Status, codes: &[Code]) {
    let message = status.message();
    assert!(
        codes.contains(&status.code()),
        "{method}: {:?} is not a refusal this RPC makes: {message:?}",
        status.code()
    );
    assert!(
        message.len() <= MAX_STATUS_MESSAGE,
        "{method}: a {} byte status message: {message:?}",
        message.len()
    );
    assert!(
        !message.chars().any(char::is_control),
        "{method}: a control character in the status message {message:?}"
    );
    // A list's index, as in `max_duration_warnings[2].before`, names the field as `[]`.
    let field = message.split_once(": ").map(|(field, _)| {
        let mut plain = String::new();
        let mut index = false;
        for c in field.chars() {
            match c {
                '[' => {
                    index = true;
                    plain.push('[');
                }
                ']' => {
                    index = false;
                    plain.push(']');
                }
                c if index && c.is_ascii_digit() => {}
                c => plain.push(c),
            }
        }
        plain
    });
    assert!(
        field.is_some_and(|field| FIELDS.contains(&field.as_str())),
        "{method}: the status message {message:?} does not name a field"
    );
}

/// The contract's per-session invariants, on one `GetSession` report.
pub(super) fn check_report(id: &str, report: &pb::SessionReport) {
    use pb::DirectiveKind as K;
    assert_eq!(report.session_id, id);
    let state = report.state;
    let closed = state == pb::SessionState::Closed as i32;
    assert_eq!(
        closed,
        report.closed_at.is_some(),
        "{id:?}: closed_at vs. state"
    );
    let kinds: Vec<i32> = report.directives.iter().map(|d| d.kind).collect();
    let count = |k: K| kinds.iter().filter(|&&x| x == k as i32).count();
    let position = |k: K| kinds.iter().position(|&x| x == k as i32);
    let mut last_at = None;
    for (i, d) in report.directives.iter().enumerate() {
        assert_eq!(d.seq, i as u64 + 1, "{id:?}: seq numbers {kinds:?}");
        assert_eq!(d.session_id, id);
        assert!(
            K::try_from(d.kind).is_ok_and(|k| k != K::Unspecified),
            "{id:?}: directive kind {}",
            d.kind
        );
        let at = d.issued_at.map(|t| (t.seconds, t.nanos));
        assert!(at.is_some() && at >= last_at, "{id:?}: issued_at goes back");
        last_at = at;
        if d.kind == K::ShutdownSession as i32 {
            assert!(
                pb::ShutdownCause::try_from(d.cause)
                    .is_ok_and(|c| c != pb::ShutdownCause::Unspecified),
                "{id:?}: SHUTDOWN_SESSION without a cause"
            );
        }
    }
    assert!(count(K::ShutdownSession) <= 1, "{id:?}: {kinds:?}");
    assert!(count(K::WindUp) <= 1, "{id:?}: {kinds:?}");
    assert!(
        count(K::Remind) <= MAX_REMINDS_PER_SESSION,
        "{id:?}: {kinds:?}"
    );
    assert!(
        kinds.len() <= MAX_DIRECTIVES_PER_SESSION,
        "{id:?}: {kinds:?}"
    );
    assert!(count(K::DeleteRoom) <= 1, "{id:?}: {kinds:?}");
    assert!(count(K::ShutdownJob) <= 1, "{id:?}: {kinds:?}");
    if let Some(job) = position(K::ShutdownJob) {
        assert_eq!(
            job + 1,
            kinds.len(),
            "{id:?}: after SHUTDOWN_JOB: {kinds:?}"
        );
        assert!(closed, "{id:?}: SHUTDOWN_JOB before the close");
        // Row 7: after an end_call, or after a SHUTDOWN_SESSION of the sidecar's own (the
        // maximum duration's).
        assert!(
            report.end_call_at.is_some() || position(K::ShutdownSession).is_some(),
            "{id:?}: SHUTDOWN_JOB without end_call or SHUTDOWN_SESSION"
        );
    }
    if let Some(room) = position(K::DeleteRoom) {
        assert_eq!(
            position(K::ShutdownJob),
            Some(room + 1),
            "{id:?}: DELETE_ROOM not right before SHUTDOWN_JOB: {kinds:?}"
        );
        assert!(
            report.options.as_ref().is_some_and(|o| o.delete_room),
            "{id:?}: DELETE_ROOM without delete_room"
        );
    }
    if let Some(shutdown) = position(K::ShutdownSession) {
        // After SHUTDOWN_SESSION, only the close's directives.
        assert!(
            kinds[shutdown + 1..]
                .iter()
                .all(|&k| k == K::DeleteRoom as i32 || k == K::ShutdownJob as i32),
            "{id:?}: a directive after SHUTDOWN_SESSION: {kinds:?}"
        );
        assert!(
            closed || state == pb::SessionState::ShuttingDown as i32,
            "{id:?}: SHUTDOWN_SESSION issued but the state is {state}"
        );
        assert!(report.shutdown_at.is_some(), "{id:?}: shutdown_at missing");
    } else {
        assert!(
            state != pb::SessionState::ShuttingDown as i32,
            "{id:?}: SHUTTING_DOWN without SHUTDOWN_SESSION"
        );
    }
    check_limits(id, report);
    check_teardown(id, report);
    assert_eq!(
        closed,
        report.ended_reason != pb::EndedReason::Unspecified as i32,
        "{id:?}: exactly one ended reason per closed session, none for a live one"
    );
    let ending = report.end_call_at.is_some() || position(K::ShutdownSession).is_some();
    if closed && ending && report.close_reason != 0 {
        assert!(
            position(K::ShutdownJob).is_some(),
            "{id:?}: closed after end_call without SHUTDOWN_JOB: {kinds:?}"
        );
    }
}

/// `WIND_UP` and `REMIND`: each leads up to a limit the session has, with instructions; none
/// after end_call or `SHUTDOWN_SESSION`; at most `silence_reminders` silence reminders per
/// silence (between two `user_speech` events), and a time-limit warning at most once each.
fn check_limits(id: &str, report: &pb::SessionReport) {
    use pb::{DirectiveKind as K, ShutdownCause as C};
    let options = report.options.clone().unwrap_or_default();
    let micros = |t: Option<prost_types::Timestamp>| {
        t.map(|t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000)
    };
    let end_call_at = micros(report.end_call_at);
    let mut silence_reminders = Vec::new();
    let mut warnings = 0;
    for d in &report.directives {
        let kind = d.kind;
        if kind != K::WindUp as i32 && kind != K::Remind as i32 {
            if d.kind == K::ShutdownSession as i32 && d.cause == C::SilenceTimeout as i32 {
                assert!(
                    report
                        .directives
                        .iter()
                        .any(|w| w.kind == K::WindUp as i32 && w.cause == C::SilenceTimeout as i32),
                    "{id:?}: SHUTDOWN_SESSION (SILENCE_TIMEOUT) without its WIND_UP"
                );
            }
            continue;
        }
        assert!(
            !d.instructions.is_empty(),
            "{id:?}: {d:?} without instructions"
        );
        assert!(
            end_call_at.is_none_or(|e| micros(d.issued_at).is_some_and(|at| at <= e)),
            "{id:?}: {d:?} after end_call"
        );
        match C::try_from(d.cause) {
            Ok(C::MaxDuration) => {
                assert!(
                    options.max_duration.is_some(),
                    "{id:?}: {d:?} without max_duration"
                );
                if kind == K::Remind as i32 {
                    warnings += 1;
                }
            }
            Ok(C::SilenceTimeout) => {
                assert!(
                    options.silence_timeout.is_some(),
                    "{id:?}: {d:?} without silence_timeout"
                );
                if kind == K::Remind as i32 {
                    assert_eq!(d.instructions, options.silence_reminder_instructions);
                    silence_reminders.push(micros(d.issued_at));
                }
            }
            _ => panic!("{id:?}: {d:?} leads up to no limit"),
        }
    }
    assert!(
        warnings <= options.max_duration_warnings.len(),
        "{id:?}: more warnings than the session has"
    );
    if report.timeline_dropped == 0 {
        // A reminder due at the moment the user spoke was issued before the speech (note I).
        let spoke: Vec<Option<i64>> = report
            .timeline
            .iter()
            .filter(|e| {
                matches!(&e.entry, Some(pb::timeline_entry::Entry::Event(t)) if t == "user_speech")
            })
            .map(|e| micros(e.at))
            .collect();
        let mut per_silence = vec![0u32; spoke.len() + 1];
        for at in silence_reminders {
            per_silence[spoke.iter().filter(|s| **s < at).count()] += 1;
        }
        assert!(
            per_silence.iter().all(|n| *n <= options.silence_reminders),
            "{id:?}: more than silence_reminders reminders in one silence: {per_silence:?}"
        );
    }
}

/// The sidecar's own teardown: only of a session its worker did not close, only for a worker
/// it had (worker lost) or a shutdown that no close followed (close deadline), and a room is
/// asked of LiveKit only with `delete_room` on and a room named.
fn check_teardown(id: &str, report: &pb::SessionReport) {
    use pb::{TeardownCause as C, TeardownResult as R};
    let worker_lost = report.outcome == pb::Outcome::WorkerLost as i32;
    let Some(teardown) = &report.teardown else {
        assert!(!worker_lost, "{id:?}: WORKER_LOST without a teardown");
        return;
    };
    let closed = report.state == pb::SessionState::Closed as i32;
    assert!(closed, "{id:?}: torn down but not closed");
    assert_eq!(
        report.close_reason, 0,
        "{id:?}: torn down, yet its worker closed it"
    );
    assert_eq!(
        teardown.decided_at, report.closed_at,
        "{id:?}: teardown time"
    );
    let cause = C::try_from(teardown.cause).unwrap_or(C::Unspecified);
    match cause {
        C::WorkerLost => assert!(report.attended, "{id:?}: worker lost, never attended"),
        C::CloseDeadline => assert!(
            report.shutdown_at.is_some(),
            "{id:?}: close deadline without SHUTDOWN_SESSION"
        ),
        C::Unspecified => panic!("{id:?}: a teardown without a cause"),
    }
    assert_eq!(
        worker_lost,
        cause == C::WorkerLost && report.shutdown_at.is_none(),
        "{id:?}: outcome vs teardown"
    );
    let delete_room = report.options.as_ref().is_some_and(|o| o.delete_room);
    let result = R::try_from(teardown.result).unwrap_or(R::Unspecified);
    let expected = match (delete_room, report.room.is_empty()) {
        (false, _) => R::RoomKept,
        (true, true) => R::NoRoom,
        // The in-process service has no LiveKit to ask.
        (true, false) => R::NotConfigured,
    };
    // The in-process worker answers at once, but a report may come first: then it is pending.
    let pending = expected == R::NotConfigured && result == R::Unspecified;
    assert!(
        result == expected || pending,
        "{id:?}: teardown result {result:?}"
    );
    assert_eq!(teardown.attempts, 0, "{id:?}: no request was made");
}
