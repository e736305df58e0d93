//! The body of a `call.ended` event, as Standard Webhooks shapes an event:
//! `{"type":"call.ended","timestamp":"<RFC 3339>","data":<the session's report>}`.
//!
//! `data` is the end-of-call report exactly as the log line writes it (`Report::write_json`,
//! the same members `GetSession` returns), and, only with `--webhook-include-error-message`,
//! the worker's close error as `data.error_message`. `timestamp` is when the session closed
//! (or expired), to the microsecond, in UTC.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use endcall_core::{domain::Time, report::Report};

/// The event type of an ended session.
pub(crate) const CALL_ENDED: &str = "call.ended";

/// Writes the event of `report`'s session into `out` (cleared first).
pub(crate) fn call_ended(report: &Report, include_error_message: bool, out: &mut String) {
    out.clear();
    out.push_str(r#"{"type":""#);
    out.push_str(CALL_ENDED);
    out.push_str(r#"","timestamp":""#);
    let at = report.closed_at.unwrap_or(report.created_at);
    out.push_str(&rfc3339(at));
    out.push_str(r#"","data":"#);
    report.write_json_with(out, include_error_message);
    out.push('}');
}

/// `at` in RFC 3339, UTC, with microseconds: `2026-12-06T03:02:10.123456Z`.
pub(crate) fn rfc3339(at: Time) -> String {
    let wall = UNIX_EPOCH + Duration::from_micros(at.as_micros());
    humantime::format_rfc3339_micros(wall.max(UNIX_EPOCH)).to_string()
}

/// `at` as a [`Time`] (microseconds since the Unix epoch; 0 before it).
pub(crate) fn time_of(at: SystemTime) -> Time {
    let micros = at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    Time::from_micros(micros)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use endcall_core::{
        domain::{CloseReason, Event, Options, SessionId},
        machine::{Session, Timing},
    };

    fn closed(error: Option<&str>) -> Report {
        let mut session = Session::new(
            Arc::new(Options::default()),
            Time::from_micros(1_795_000_000_000_000),
        );
        let timing = Timing {
            playout_guard: Duration::from_secs(30),
            wind_up_grace: Duration::from_secs(30),
            worker_lost_after: Duration::from_secs(10),
            close_deadline: Duration::from_secs(60),
        };
        session
            .handle(
                Event::SessionClose {
                    reason: CloseReason::UserInitiated,
                    error: error.map(str::to_owned),
                },
                Time::from_micros(1_795_000_000_123_456),
                &timing,
            )
            .unwrap();
        Report::of(&SessionId::new("call \"1\""), &session)
    }

    #[test]
    fn the_event_wraps_the_report_as_data() {
        let report = closed(Some("the user's words"));
        let mut body = String::new();
        call_ended(&report, false, &mut body);
        let event: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(event["type"], "call.ended");
        assert_eq!(event["timestamp"], "2026-11-18T11:06:40.123456Z");
        assert_eq!(event["data"], serde_json::to_value(&report).unwrap());
        assert_eq!(event["data"]["session_id"], "call \"1\"");
        assert!(event["data"].get("error_message").is_none());
        assert!(!body.contains("the user's words"));
    }

    #[test]
    fn the_error_message_only_when_asked_for() {
        let mut body = String::new();
        call_ended(&closed(Some("the user's words")), true, &mut body);
        let event: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(event["data"]["error_message"], "the user's words");
        call_ended(&closed(None), true, &mut body);
        let event: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(event["data"]["error_message"].is_null());
    }

    #[test]
    fn times_convert_both_ways() {
        let at = Time::from_micros(1_795_000_000_123_456);
        let wall = UNIX_EPOCH + Duration::from_micros(at.as_micros());
        assert_eq!(time_of(wall), at);
        assert_eq!(rfc3339(Time::from_micros(0)), "1970-01-01T00:00:00.000000Z");
    }
}
