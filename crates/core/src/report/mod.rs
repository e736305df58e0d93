//! The end-of-call report: what `GetSession` returns and what is logged once at close.
//!
//! Built from a session in one place so the log line and the RPC cannot tell different stories.
//! The log line's JSON is written by `json.rs`; the serde derives here are only the tests'
//! oracle for it.

mod json;

use std::{fmt, sync::Arc, time::Duration};

#[cfg(any(test, feature = "serde"))]
use serde::{ser::SerializeMap as _, Serialize, Serializer};

#[cfg(any(test, feature = "serde"))]
use crate::domain::duration_ms;
use crate::{
    domain::{
        Capabilities, CloseReason, EndedReason, IssuedDirective, Options, Outcome, RoomName,
        SessionId, State, TeardownCause, TeardownResult, Time, Warning,
    },
    machine::{EventRecord, Session, TimelineItem},
};

#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(any(test, feature = "serde"), derive(Serialize))]
pub struct Report {
    pub session_id: SessionId,
    pub state: State,
    #[cfg_attr(any(test, feature = "serde"), serde(serialize_with = "outcome_str"))]
    pub outcome: Option<Outcome>,
    /// Why the call ended, once the session is closed.
    pub ended_reason: Option<EndedReason>,
    pub close_reason: Option<CloseReason>,
    pub room: Option<RoomName>,
    /// Whether the worker ever held a watch stream (its lease).
    pub attended: bool,
    /// The worker's error text: may hold user data, so it is returned but never logged.
    #[cfg_attr(any(test, feature = "serde"), serde(skip))]
    pub close_error: Option<String>,
    pub options: Arc<Options>,
    #[cfg_attr(any(test, feature = "serde"), serde(serialize_with = "opt_ms"))]
    pub max_duration: Option<Duration>,
    /// Warnings before the maximum duration, in time order.
    pub warnings: Vec<Warning>,
    pub capabilities: Capabilities,
    pub created_at: Time,
    pub end_call_at: Option<Time>,
    pub shutdown_at: Option<Time>,
    pub closed_at: Option<Time>,
    /// From the first end_call to `SHUTDOWN_SESSION`: how long the goodbye took.
    #[cfg_attr(any(test, feature = "serde"), serde(serialize_with = "opt_ms"))]
    pub goodbye: Option<Duration>,
    pub timeline: Vec<ReportEntry>,
    pub timeline_dropped: u32,
    pub directives: Vec<IssuedDirective>,
    /// Set when the sidecar tore the call down itself.
    pub teardown: Option<TeardownReport>,
}

/// The sidecar's teardown of a call, as the report shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(any(test, feature = "serde"), derive(Serialize))]
pub struct TeardownReport {
    pub cause: TeardownCause,
    pub decided_at: Time,
    /// `None` while LiveKit is being asked.
    pub result: Option<TeardownResult>,
    pub attempts: u32,
    pub finished_at: Option<Time>,
    /// Why it failed (LiveKit's answer or the transport's error; no user data).
    pub error: Option<String>,
}

/// Written as `{"at":..,"event":..}` or `{"at":..,"directive":..}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportEntry {
    pub at: Time,
    pub item: ReportItem,
}

#[cfg(any(test, feature = "serde"))]
impl Serialize for ReportEntry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry("at", &self.at)?;
        match &self.item {
            ReportItem::Event(event) => map.serialize_entry("event", &Text(event))?,
            ReportItem::Directive(seq) => map.serialize_entry("directive", seq)?,
        }
        map.end()
    }
}

/// Serialises through `Display`.
#[cfg(any(test, feature = "serde"))]
struct Text<'a, T>(&'a T);

#[cfg(any(test, feature = "serde"))]
impl<T: fmt::Display> Serialize for Text<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReportItem {
    /// An event, written as a one-line description such as `end_call speech=SH_1`. Kept as
    /// the event, not the text: a report is built for every session that ends, and most are
    /// written once, straight into the log line.
    Event(Described),
    /// The sequence number of a directive listed in `directives`.
    Directive(u64),
}

/// An event of the timeline and whether it was a duplicate; `Display` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Described {
    pub record: EventRecord,
    pub duplicate: bool,
}

impl Report {
    pub fn of(session_id: &SessionId, session: &Session) -> Self {
        let goodbye = session
            .end_call_at()
            .zip(session.shutdown_at())
            .map(|(called, shut)| shut.since(called));
        Report {
            session_id: session_id.clone(),
            state: session.state(),
            outcome: session.outcome(),
            ended_reason: session.ended_reason(),
            close_reason: session.close_reason(),
            close_error: session.close_error().map(str::to_owned),
            options: Arc::clone(session.options()),
            max_duration: session.max_duration(),
            warnings: session.warnings().to_vec(),
            capabilities: session.capabilities(),
            created_at: session.created_at(),
            end_call_at: session.end_call_at(),
            shutdown_at: session.shutdown_at(),
            closed_at: session.closed_at(),
            room: session.room().cloned(),
            attended: session.attended(),
            goodbye,
            timeline: session
                .timeline()
                .map(|entry| ReportEntry {
                    at: entry.at,
                    item: match &entry.item {
                        TimelineItem::Event { record, duplicate } => ReportItem::Event(Described {
                            record: record.clone(),
                            duplicate: *duplicate,
                        }),
                        TimelineItem::Directive(seq) => ReportItem::Directive(*seq),
                    },
                })
                .collect(),
            timeline_dropped: session.timeline_dropped(),
            directives: session.directives().to_vec(),
            teardown: session.teardown().map(|t| {
                let finished = t.finished.as_ref();
                TeardownReport {
                    cause: t.cause,
                    decided_at: t.decided_at,
                    result: finished.map(|(done, _)| done.result),
                    attempts: finished.map_or(0, |(done, _)| done.attempts),
                    finished_at: finished.map(|(_, at)| *at),
                    error: finished.and_then(|(done, _)| done.error.clone()),
                }
            }),
        }
    }
}

impl fmt::Display for Described {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.record {
            EventRecord::Open => f.write_str("open")?,
            EventRecord::EndCall { speech } => write!(f, "end_call speech={speech}")?,
            EventRecord::SpeechCreated { speech } => write!(f, "speech_created speech={speech}")?,
            EventRecord::SpeechDone {
                speech,
                interrupted: false,
            } => write!(f, "speech_done speech={speech}")?,
            EventRecord::SpeechDone {
                speech,
                interrupted: true,
            } => write!(f, "speech_done speech={speech} interrupted")?,
            EventRecord::Close { reason } => write!(f, "session_close reason={}", reason.as_str())?,
            EventRecord::UserSpeech => f.write_str("user_speech")?,
            EventRecord::Expired => f.write_str("expired")?,
            EventRecord::TornDown { cause } => write!(f, "torn_down cause={}", cause.as_str())?,
        }
        if self.duplicate {
            f.write_str(" (duplicate)")?;
        }
        Ok(())
    }
}

#[cfg(any(test, feature = "serde"))]
fn outcome_str<S: Serializer>(outcome: &Option<Outcome>, s: S) -> Result<S::Ok, S::Error> {
    match outcome {
        Some(outcome) => s.serialize_str(outcome.as_str()),
        None => s.serialize_none(),
    }
}

#[cfg(any(test, feature = "serde"))]
fn opt_ms<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => duration_ms::serialize(d, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::{Directive, Event, ShutdownCause, SpeechId},
        machine::Timing,
    };

    /// The log line's JSON describes each event as GetSession's timeline does.
    #[test]
    fn the_logged_timeline_describes_each_event() {
        let timing = Timing {
            playout_guard: Duration::from_secs(30),
            wind_up_grace: Duration::from_secs(10),
            worker_lost_after: Duration::from_secs(10),
            close_deadline: Duration::from_secs(60),
        };
        let mut session = Session::new(Arc::new(Options::default()), Time::from_micros(0));
        let end_call = || Event::EndCall {
            speech: SpeechId::new("S"),
            options: None,
            capabilities: Capabilities::default(),
        };
        for (at, event) in [(1, end_call()), (2, end_call())] {
            session
                .handle(event, Time::from_micros(at), &timing)
                .unwrap();
        }
        let report = Report::of(&SessionId::new("call-1"), &session);
        let json = serde_json::to_value(&report).unwrap();
        let events: Vec<_> = json["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|entry| entry["event"].as_str())
            .collect();
        assert_eq!(
            events,
            ["end_call speech=S", "end_call speech=S (duplicate)"]
        );
    }

    /// The JSON shape of directives and timeline entries, as log readers parse it.
    #[test]
    fn directives_and_entries_serialise_flat() {
        let directive = |seq, directive| IssuedDirective {
            seq,
            at: Time::from_micros(1_500),
            directive,
        };
        let json = serde_json::to_string(&[
            directive(
                1,
                Directive::ShutdownSession {
                    cause: ShutdownCause::ReplyTimeout,
                },
            ),
            directive(2, Directive::DeleteRoom),
            directive(
                3,
                Directive::ShutdownJob {
                    reason: CloseReason::UserInitiated,
                },
            ),
            directive(
                4,
                Directive::WindUp {
                    cause: ShutdownCause::MaxDuration,
                },
            ),
            directive(
                5,
                Directive::Remind {
                    cause: ShutdownCause::SilenceTimeout,
                    instructions: arcstr::ArcStr::from("still \"there\"?"),
                },
            ),
        ])
        .unwrap();
        assert_eq!(
            json,
            r#"[{"seq":1,"at":1500,"kind":"shutdown_session","cause":"reply_timeout"},{"seq":2,"at":1500,"kind":"delete_room"},{"seq":3,"at":1500,"kind":"shutdown_job","reason":"user_initiated"},{"seq":4,"at":1500,"kind":"wind_up","cause":"max_duration"},{"seq":5,"at":1500,"kind":"remind","cause":"silence_timeout","instructions":"still \"there\"?"}]"#
        );
        let entries = [
            ReportEntry {
                at: Time::from_micros(2_000),
                item: ReportItem::Directive(4),
            },
            ReportEntry {
                at: Time::from_micros(3_000),
                item: ReportItem::Event(Described {
                    record: EventRecord::Expired,
                    duplicate: false,
                }),
            },
        ];
        assert_eq!(
            serde_json::to_string(&entries).unwrap(),
            r#"[{"at":2000,"directive":4},{"at":3000,"event":"expired"}]"#
        );
    }
}
