//! The one place where protobuf meets the domain: validation of requests (each error names its
//! field) and mapping of results back onto the wire types.

use std::{cell::RefCell, sync::Arc, time::Duration};

use crate::{grpc::error::ApiError, grpc::proto::v1 as pb};
use arcstr::ArcStr;
use endcall_core::{
    domain::{
        check_id, check_room, Capabilities, CloseReason, Directive, EndedReason, IssuedDirective,
        Options, OptionsPatch, Outcome, RoomName, ShutdownCause, SpeechId, State, TeardownCause,
        TeardownResult, Time, Warning, MAX_INSTRUCTIONS_BYTES, MAX_REPLY_TIMEOUT, MAX_SILENCE,
        MAX_SILENCE_REMINDERS, MAX_TEXT_BYTES, MAX_WARNINGS,
    },
    report::{Report, ReportItem, TeardownReport},
};

/// Checks an id against the domain's rule (`domain::check_id`), naming the field.
pub(crate) fn id<'a>(field: &str, raw: &'a str) -> Result<&'a str, ApiError> {
    check_id(raw).map_err(|problem| ApiError::invalid(field, problem.to_string()))?;
    Ok(raw)
}

pub(crate) fn speech_id(raw: &str) -> Result<SpeechId, ApiError> {
    id("speech_id", raw).map(SpeechId::new)
}

/// Checks a free text against [`MAX_TEXT_BYTES`].
pub(crate) fn text(field: &str, raw: String) -> Result<String, ApiError> {
    if raw.len() > MAX_TEXT_BYTES {
        return Err(ApiError::invalid(
            field,
            format!("is {} bytes, the limit is {MAX_TEXT_BYTES}", raw.len()),
        ));
    }
    Ok(raw)
}

/// The instructions of a reminder or a warning: not empty, at most
/// [`MAX_INSTRUCTIONS_BYTES`].
pub(crate) fn instructions(field: &str, raw: &str) -> Result<ArcStr, ApiError> {
    if raw.is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if raw.len() > MAX_INSTRUCTIONS_BYTES {
        return Err(ApiError::invalid(
            field,
            format!(
                "is {} bytes, the limit is {MAX_INSTRUCTIONS_BYTES}",
                raw.len()
            ),
        ));
    }
    Ok(ArcStr::from(raw))
}

/// A protobuf duration that may be zero (which turns what it sets off): `Some(None)` for
/// zero, at most `max`.
fn duration_or_off(
    field: &str,
    raw: Option<prost_types::Duration>,
    max: Duration,
) -> Result<Option<Option<Duration>>, ApiError> {
    match raw {
        Some(raw) if raw.seconds == 0 && raw.nanos == 0 => Ok(Some(None)),
        raw => Ok(duration(field, raw, max)?.map(Some)),
    }
}

/// A protobuf duration as a positive `Duration` of at most `max`.
pub(crate) fn duration(
    field: &str,
    raw: Option<prost_types::Duration>,
    max: Duration,
) -> Result<Option<Duration>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    let d = Duration::try_from(raw)
        .map_err(|_| ApiError::invalid(field, "must be a valid, non-negative duration"))?;
    if d.is_zero() {
        return Err(ApiError::invalid(field, "must be greater than zero"));
    }
    if d > max {
        return Err(ApiError::invalid(
            field,
            format!("is at most {}", humantime::format_duration(max)),
        ));
    }
    Ok(Some(d))
}

/// Request options resolved against the server's defaults. An absent or empty options
/// message is "no options": it leaves the session free to get them later.
pub(crate) fn options(
    raw: Option<pb::SessionOptions>,
    defaults: &Arc<Options>,
) -> Result<Option<Arc<Options>>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    let end_instructions = match raw.end_instructions.and_then(|e| e.value) {
        None => None,
        Some(pb::end_instructions::Value::Text(t)) => {
            Some(Some(Arc::from(text("options.end_instructions.text", t)?)))
        }
        Some(pb::end_instructions::Value::None(true)) => Some(None),
        Some(pb::end_instructions::Value::None(false)) => {
            return Err(ApiError::invalid(
                "options.end_instructions.none",
                "must be true when set (set text for an output)",
            ))
        }
    };
    let patch = OptionsPatch {
        delete_room: raw.delete_room,
        end_instructions,
        extra_description: raw
            .extra_description
            .map(|t| text("options.extra_description", t).map(Arc::from))
            .transpose()?,
        ignore_on_enter: raw.ignore_on_enter,
        reply_timeout: duration(
            "options.reply_timeout",
            raw.reply_timeout,
            MAX_REPLY_TIMEOUT,
        )?,
        early_reply_capture: raw.early_reply_capture,
        silence_timeout: duration_or_off(
            "options.silence_timeout",
            raw.silence_timeout,
            MAX_SILENCE,
        )?,
        silence_reminder_after: duration(
            "options.silence_reminder_after",
            raw.silence_reminder_after,
            MAX_SILENCE,
        )?,
        silence_reminders: raw
            .silence_reminders
            .map(|n| match u8::try_from(n) {
                Ok(n) if n <= MAX_SILENCE_REMINDERS => Ok(n),
                _ => Err(ApiError::invalid(
                    "options.silence_reminders",
                    format!("is {n}, the limit is {MAX_SILENCE_REMINDERS}"),
                )),
            })
            .transpose()?,
        silence_reminder_instructions: raw
            .silence_reminder_instructions
            .map(|t| instructions("options.silence_reminder_instructions", &t))
            .transpose()?,
    };
    if patch == OptionsPatch::default() {
        return Ok(None);
    }
    Ok(Some(shared_options(patch, defaults)))
}

thread_local! {
    /// The options this thread resolved last. Agents send the same options call after call
    /// (they are constants in the agent's code), so their sessions share one allocation
    /// instead of holding a copy each: 80 bytes per session with options of its own.
    static LAST_OPTIONS: RefCell<Option<Arc<Options>>> = const { RefCell::new(None) };
}

/// `patch` over `defaults`, shared with the defaults or with the last options resolved on
/// this thread when equal to either.
fn shared_options(patch: OptionsPatch, defaults: &Arc<Options>) -> Arc<Options> {
    let resolved = patch.over(defaults);
    if resolved == **defaults {
        return Arc::clone(defaults);
    }
    LAST_OPTIONS.with_borrow_mut(|last| match last {
        Some(last) if **last == resolved => Arc::clone(last),
        _ => Arc::clone(last.insert(Arc::new(resolved))),
    })
}

/// The warnings before `max_duration` (the same request's): each before the limit, within
/// the call, with instructions.
pub(crate) fn warnings(
    raw: Vec<pb::TimeLimitWarning>,
    max_duration: Option<Duration>,
) -> Result<Vec<Warning>, ApiError> {
    const FIELD: &str = "max_duration_warnings";
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    let Some(max) = max_duration else {
        return Err(ApiError::invalid(
            FIELD,
            "needs max_duration in the same request",
        ));
    };
    if raw.len() > MAX_WARNINGS {
        return Err(ApiError::invalid(
            FIELD,
            format!("has {} warnings, the limit is {MAX_WARNINGS}", raw.len()),
        ));
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, warning)| {
            let field = format!("{FIELD}[{i}].before");
            let before = match warning.before {
                None => return Err(ApiError::invalid(field, "is required")),
                Some(d) if d.seconds < 0 || d.nanos < 0 || (d.seconds == 0 && d.nanos == 0) => {
                    return Err(ApiError::invalid(
                        field,
                        "must be greater than zero: a warning comes before the limit, not at or after it",
                    ))
                }
                Some(d) => Duration::try_from(d).map_err(|_| {
                    ApiError::invalid(field.as_str(), "must be a valid, non-negative duration")
                })?,
            };
            if before >= max {
                return Err(ApiError::invalid(
                    field,
                    "must be shorter than max_duration: the warning would come before the call starts",
                ));
            }
            let instructions = instructions(
                &format!("{FIELD}[{i}].instructions"),
                &warning.instructions,
            )?;
            Ok(Warning {
                before,
                instructions,
            })
        })
        .collect()
}

pub(crate) fn capabilities(raw: Option<pb::ModelCapabilities>) -> Capabilities {
    raw.map(|c| Capabilities {
        realtime: c.realtime,
        auto_tool_reply: c.auto_tool_reply,
    })
    .unwrap_or_default()
}

pub(crate) fn close_reason(raw: i32) -> Result<CloseReason, ApiError> {
    match pb::CloseReason::try_from(raw) {
        Ok(pb::CloseReason::Error) => Ok(CloseReason::Error),
        Ok(pb::CloseReason::JobShutdown) => Ok(CloseReason::JobShutdown),
        Ok(pb::CloseReason::ParticipantDisconnected) => Ok(CloseReason::ParticipantDisconnected),
        Ok(pb::CloseReason::UserInitiated) => Ok(CloseReason::UserInitiated),
        Ok(pb::CloseReason::TaskCompleted) => Ok(CloseReason::TaskCompleted),
        Ok(pb::CloseReason::Unspecified) => Err(ApiError::invalid(
            "reason",
            "is required (CLOSE_REASON_USER_INITIATED, CLOSE_REASON_ERROR, ...)",
        )),
        Err(_) => Err(ApiError::invalid(
            "reason",
            format!("{raw} is not a known close reason"),
        )),
    }
}

pub(crate) fn error_message(raw: Option<String>) -> Result<Option<String>, ApiError> {
    raw.map(|t| text("error_message", t)).transpose()
}

pub(crate) fn timestamp(time: Time) -> prost_types::Timestamp {
    let micros = time.as_micros();
    prost_types::Timestamp {
        seconds: i64::try_from(micros / 1_000_000).unwrap_or(i64::MAX),
        // Below 1e9, so it fits.
        nanos: ((micros % 1_000_000) * 1000) as i32,
    }
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 0,
    })
}

pub(crate) fn state(state: State) -> pb::SessionState {
    match state {
        State::Active => pb::SessionState::Active,
        State::Ending => pb::SessionState::Ending,
        State::AwaitingReply => pb::SessionState::AwaitingReply,
        State::PlayingReply => pb::SessionState::PlayingReply,
        State::ShuttingDown => pb::SessionState::ShuttingDown,
        State::Closed => pb::SessionState::Closed,
    }
}

fn cause(cause: ShutdownCause) -> pb::ShutdownCause {
    match cause {
        ShutdownCause::ToolTurnDone => pb::ShutdownCause::ToolTurnDone,
        ShutdownCause::ReplyPlayedOut => pb::ShutdownCause::ReplyPlayedOut,
        ShutdownCause::ReplyTimeout => pb::ShutdownCause::ReplyTimeout,
        ShutdownCause::PlayoutGuard => pb::ShutdownCause::PlayoutGuard,
        ShutdownCause::MaxDuration => pb::ShutdownCause::MaxDuration,
        ShutdownCause::SilenceTimeout => pb::ShutdownCause::SilenceTimeout,
    }
}

fn reason(reason: CloseReason) -> pb::CloseReason {
    match reason {
        CloseReason::Error => pb::CloseReason::Error,
        CloseReason::JobShutdown => pb::CloseReason::JobShutdown,
        CloseReason::ParticipantDisconnected => pb::CloseReason::ParticipantDisconnected,
        CloseReason::UserInitiated => pb::CloseReason::UserInitiated,
        CloseReason::TaskCompleted => pb::CloseReason::TaskCompleted,
    }
}

fn outcome(outcome: Option<Outcome>) -> pb::Outcome {
    match outcome {
        None => pb::Outcome::Unspecified,
        Some(Outcome::Shutdown(ShutdownCause::ToolTurnDone)) => pb::Outcome::ToolTurnDone,
        Some(Outcome::Shutdown(ShutdownCause::ReplyPlayedOut)) => pb::Outcome::ReplyPlayedOut,
        Some(Outcome::Shutdown(ShutdownCause::ReplyTimeout)) => pb::Outcome::ReplyTimeout,
        Some(Outcome::Shutdown(ShutdownCause::PlayoutGuard)) => pb::Outcome::PlayoutGuard,
        Some(Outcome::Shutdown(ShutdownCause::MaxDuration)) => pb::Outcome::MaxDuration,
        Some(Outcome::Shutdown(ShutdownCause::SilenceTimeout)) => pb::Outcome::SilenceTimeout,
        Some(Outcome::ClosedDuringEndCall) => pb::Outcome::ClosedDuringEndCall,
        Some(Outcome::ClosedWithoutEndCall) => pb::Outcome::ClosedWithoutEndCall,
        Some(Outcome::Expired) => pb::Outcome::Expired,
        Some(Outcome::WorkerLost) => pb::Outcome::WorkerLost,
    }
}

fn ended_reason(reason: Option<EndedReason>) -> pb::EndedReason {
    match reason {
        None => pb::EndedReason::Unspecified,
        Some(EndedReason::AgentEndCall) => pb::EndedReason::AgentEndCall,
        Some(EndedReason::AgentWindUp) => pb::EndedReason::AgentWindUp,
        Some(EndedReason::AgentClosed) => pb::EndedReason::AgentClosed,
        Some(EndedReason::UserHangup) => pb::EndedReason::UserHangup,
        Some(EndedReason::SilenceTimeout) => pb::EndedReason::SilenceTimeout,
        Some(EndedReason::MaxDuration) => pb::EndedReason::MaxDuration,
        Some(EndedReason::Error) => pb::EndedReason::Error,
        Some(EndedReason::JobShutdown) => pb::EndedReason::JobShutdown,
        Some(EndedReason::Expired) => pb::EndedReason::Expired,
        Some(EndedReason::WorkerLost) => pb::EndedReason::WorkerLost,
    }
}

fn teardown(teardown: &TeardownReport) -> pb::Teardown {
    let mut out = pb::Teardown {
        decided_at: Some(timestamp(teardown.decided_at)),
        attempts: teardown.attempts,
        finished_at: teardown.finished_at.map(timestamp),
        error: teardown.error.clone().unwrap_or_default(),
        ..pb::Teardown::default()
    };
    out.set_cause(match teardown.cause {
        TeardownCause::WorkerLost => pb::TeardownCause::WorkerLost,
        TeardownCause::CloseDeadline => pb::TeardownCause::CloseDeadline,
    });
    out.set_result(match teardown.result {
        None => pb::TeardownResult::Unspecified,
        Some(TeardownResult::RoomDeleted) => pb::TeardownResult::RoomDeleted,
        Some(TeardownResult::RoomAlreadyGone) => pb::TeardownResult::RoomAlreadyGone,
        Some(TeardownResult::RoomKept) => pb::TeardownResult::RoomKept,
        Some(TeardownResult::NoRoom) => pb::TeardownResult::NoRoom,
        Some(TeardownResult::NotConfigured) => pb::TeardownResult::NotConfigured,
        Some(TeardownResult::Failed) => pb::TeardownResult::Failed,
    });
    out
}

/// Checks a room name against the domain's rule (`domain::check_room`); empty means none.
pub(crate) fn room(raw: &str) -> Result<Option<RoomName>, ApiError> {
    check_room(raw).map_err(|problem| ApiError::invalid("room", problem.to_string()))?;
    Ok((!raw.is_empty()).then(|| RoomName::new(raw)))
}

/// The server's `WIND_UP` instructions, one per limit (`--wind-up-instructions`,
/// `--silence-wind-up-instructions`).
#[derive(Clone, Debug)]
pub struct WindUpTexts {
    pub max_duration: Arc<str>,
    pub silence: Arc<str>,
}

/// Maps issued directives onto the wire; needs the session id and the server's wind-up texts.
#[derive(Clone, Debug)]
pub(crate) struct DirectiveMapper {
    pub wind_up: WindUpTexts,
}

impl DirectiveMapper {
    pub(crate) fn directive(&self, session_id: &str, d: &IssuedDirective) -> pb::Directive {
        let mut out = pb::Directive {
            seq: d.seq,
            issued_at: Some(timestamp(d.at)),
            session_id: session_id.to_owned(),
            ..pb::Directive::default()
        };
        match &d.directive {
            Directive::ShutdownSession { cause: c } => {
                out.set_kind(pb::DirectiveKind::ShutdownSession);
                out.set_cause(cause(*c));
            }
            Directive::DeleteRoom => out.set_kind(pb::DirectiveKind::DeleteRoom),
            Directive::ShutdownJob { reason } => {
                out.set_kind(pb::DirectiveKind::ShutdownJob);
                out.reason = reason.as_str().to_owned();
            }
            Directive::WindUp { cause: c } => {
                out.set_kind(pb::DirectiveKind::WindUp);
                out.set_cause(cause(*c));
                let text = match c {
                    ShutdownCause::SilenceTimeout => &self.wind_up.silence,
                    _ => &self.wind_up.max_duration,
                };
                out.instructions = text.to_string();
            }
            Directive::Remind {
                cause: c,
                instructions,
            } => {
                out.set_kind(pb::DirectiveKind::Remind);
                out.set_cause(cause(*c));
                out.instructions = instructions.to_string();
            }
        }
        out
    }

    pub(crate) fn directives(
        &self,
        session_id: &str,
        ds: &[IssuedDirective],
    ) -> Vec<pb::Directive> {
        ds.iter().map(|d| self.directive(session_id, d)).collect()
    }

    pub(crate) fn report(&self, report: Report) -> pb::SessionReport {
        let id = report.session_id.as_str();
        let by_seq = |seq: u64| report.directives.iter().find(|d| d.seq == seq);
        let timeline = report
            .timeline
            .iter()
            .map(|entry| pb::TimelineEntry {
                at: Some(timestamp(entry.at)),
                entry: Some(match &entry.item {
                    ReportItem::Event(event) => pb::timeline_entry::Entry::Event(event.to_string()),
                    ReportItem::Directive(seq) => match by_seq(*seq) {
                        Some(d) => pb::timeline_entry::Entry::Directive(self.directive(id, d)),
                        None => pb::timeline_entry::Entry::Event(format!("directive {seq}")),
                    },
                }),
            })
            .collect();
        let mut out = pb::SessionReport {
            session_id: id.to_owned(),
            options: Some(resolved_options(
                &report.options,
                report.max_duration,
                &report.warnings,
            )),
            capabilities: Some(pb::ModelCapabilities {
                realtime: report.capabilities.realtime,
                auto_tool_reply: report.capabilities.auto_tool_reply,
            }),
            created_at: Some(timestamp(report.created_at)),
            end_call_at: report.end_call_at.map(timestamp),
            shutdown_at: report.shutdown_at.map(timestamp),
            closed_at: report.closed_at.map(timestamp),
            goodbye_duration: report.goodbye.map(proto_duration),
            timeline,
            timeline_dropped: report.timeline_dropped,
            directives: self.directives(id, &report.directives),
            error_message: report.close_error.clone(),
            room: report
                .room
                .as_ref()
                .map(|room| room.as_str().to_owned())
                .unwrap_or_default(),
            attended: report.attended,
            teardown: report.teardown.as_ref().map(teardown),
            ..pb::SessionReport::default()
        };
        out.set_state(state(report.state));
        out.set_outcome(outcome(report.outcome));
        out.set_ended_reason(ended_reason(report.ended_reason));
        if let Some(r) = report.close_reason {
            out.set_close_reason(reason(r));
        }
        out
    }
}

pub(crate) fn resolved_options(
    options: &Options,
    max_duration: Option<Duration>,
    warnings: &[Warning],
) -> pb::ResolvedOptions {
    pb::ResolvedOptions {
        delete_room: options.delete_room,
        end_instructions: options.end_instructions.as_deref().map(str::to_owned),
        extra_description: options.extra_description.to_string(),
        ignore_on_enter: options.ignore_on_enter,
        reply_timeout: Some(proto_duration(options.reply_timeout)),
        early_reply_capture: options.early_reply_capture,
        max_duration: max_duration.map(proto_duration),
        silence_timeout: options.silence_timeout.map(proto_duration),
        silence_reminder_after: Some(proto_duration(options.silence_reminder_after)),
        silence_reminders: u32::from(options.silence_reminders),
        silence_reminder_instructions: options.silence_reminder_instructions.to_string(),
        max_duration_warnings: warnings
            .iter()
            .map(|w| pb::TimeLimitWarning {
                before: Some(proto_duration(w.before)),
                instructions: w.instructions.to_string(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use endcall_core::domain::MAX_ID_BYTES;

    fn defaults() -> Arc<Options> {
        Arc::new(Options::default())
    }

    #[test]
    fn ids_are_required_bounded_and_printable() {
        assert!(id("session_id", "call-1").is_ok());
        assert!(id("session_id", &"x".repeat(MAX_ID_BYTES)).is_ok());
        for bad in ["", "a\nb", &"x".repeat(MAX_ID_BYTES + 1)] {
            let err = id("session_id", bad).unwrap_err();
            assert!(err.to_string().starts_with("session_id: "), "{err}");
        }
    }

    #[test]
    fn empty_options_are_no_options() {
        assert_eq!(options(None, &defaults()).unwrap(), None);
        let empty = pb::SessionOptions::default();
        assert_eq!(options(Some(empty), &defaults()).unwrap(), None);
    }

    #[test]
    fn sessions_with_the_same_options_share_one_allocation() {
        let defaults = defaults();
        let timeout = |seconds| pb::SessionOptions {
            reply_timeout: Some(prost_types::Duration { seconds, nanos: 0 }),
            ..Default::default()
        };
        let first = options(Some(timeout(600)), &defaults).unwrap().unwrap();
        let again = options(Some(timeout(600)), &defaults).unwrap().unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(first.reply_timeout, Duration::from_secs(600));
        let other = options(Some(timeout(7)), &defaults).unwrap().unwrap();
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(other.reply_timeout, Duration::from_secs(7));
        // Options spelled out but equal to the defaults are the defaults.
        let same = options(Some(timeout(5)), &defaults).unwrap().unwrap();
        assert!(Arc::ptr_eq(&same, &defaults));
    }

    #[test]
    fn end_instructions_none_and_text_are_distinct() {
        let none = pb::SessionOptions {
            end_instructions: Some(pb::EndInstructions {
                value: Some(pb::end_instructions::Value::None(true)),
            }),
            ..Default::default()
        };
        let resolved = options(Some(none), &defaults()).unwrap().unwrap();
        assert_eq!(resolved.end_instructions, None);
        let text = pb::SessionOptions {
            end_instructions: Some(pb::EndInstructions {
                value: Some(pb::end_instructions::Value::Text(String::new())),
            }),
            ..Default::default()
        };
        let resolved = options(Some(text), &defaults()).unwrap().unwrap();
        assert_eq!(resolved.end_instructions.as_deref(), Some(""));
    }

    #[test]
    fn malformed_options_name_their_field() {
        let cases = [
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
                    extra_description: Some("x".repeat(MAX_TEXT_BYTES + 1)),
                    ..Default::default()
                },
                "options.extra_description",
            ),
            (
                pb::SessionOptions {
                    reply_timeout: Some(prost_types::Duration {
                        seconds: -1,
                        nanos: 0,
                    }),
                    ..Default::default()
                },
                "options.reply_timeout",
            ),
            (
                pb::SessionOptions {
                    reply_timeout: Some(prost_types::Duration {
                        seconds: 0,
                        nanos: 0,
                    }),
                    ..Default::default()
                },
                "options.reply_timeout",
            ),
            (
                pb::SessionOptions {
                    reply_timeout: Some(prost_types::Duration {
                        seconds: 3600,
                        nanos: 0,
                    }),
                    ..Default::default()
                },
                "options.reply_timeout",
            ),
        ];
        for (raw, field) in cases {
            let err = options(Some(raw), &defaults()).unwrap_err();
            assert!(err.to_string().starts_with(field), "{err}");
        }
    }

    #[test]
    fn close_reasons_map_to_the_reference_strings() {
        assert_eq!(
            close_reason(pb::CloseReason::ParticipantDisconnected as i32).unwrap(),
            CloseReason::ParticipantDisconnected
        );
        assert!(close_reason(0).is_err());
        assert!(close_reason(99)
            .unwrap_err()
            .to_string()
            .starts_with("reason: "));
    }

    #[test]
    fn timestamps_keep_microseconds() {
        let ts = timestamp(Time::from_micros(1_700_000_000_123_456));
        assert_eq!(ts.seconds, 1_700_000_000);
        assert_eq!(ts.nanos, 123_456_000);
    }
}
