//! The end-of-call report: what `GetSession` returns and what is logged once at close.
//!
//! Built from a session in one place so the log line and the RPC cannot tell different stories.

use std::{sync::Arc, time::Duration};

use serde::{Serialize, Serializer};

use crate::{
    domain::{
        duration_ms, Capabilities, CloseReason, IssuedDirective, Options, Outcome, SessionId,
        State, Time,
    },
    machine::{EventRecord, Session, TimelineItem},
};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub session_id: SessionId,
    pub state: State,
    #[serde(serialize_with = "outcome_str")]
    pub outcome: Option<Outcome>,
    pub close_reason: Option<CloseReason>,
    /// The worker's error text: may hold user data, so it is returned but never logged.
    #[serde(skip)]
    pub close_error: Option<String>,
    pub options: Arc<Options>,
    #[serde(serialize_with = "opt_ms")]
    pub max_duration: Option<Duration>,
    pub capabilities: Capabilities,
    pub created_at: Time,
    pub end_call_at: Option<Time>,
    pub shutdown_at: Option<Time>,
    pub closed_at: Option<Time>,
    /// From the first end_call to `SHUTDOWN_SESSION`: how long the goodbye took.
    #[serde(serialize_with = "opt_ms")]
    pub goodbye: Option<Duration>,
    pub timeline: Vec<ReportEntry>,
    pub timeline_dropped: u32,
    pub directives: Vec<IssuedDirective>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReportEntry {
    pub at: Time,
    #[serde(flatten)]
    pub item: ReportItem,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportItem {
    /// A one-line description of the event, e.g. `end_call speech=SH_1`.
    Event(String),
    /// The sequence number of a directive listed in `directives`.
    Directive(u64),
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
            close_reason: session.close_reason(),
            close_error: session.close_error().map(str::to_owned),
            options: Arc::clone(session.options()),
            max_duration: session.max_duration(),
            capabilities: session.capabilities(),
            created_at: session.created_at(),
            end_call_at: session.end_call_at(),
            shutdown_at: session.shutdown_at(),
            closed_at: session.closed_at(),
            goodbye,
            timeline: session
                .timeline()
                .map(|entry| ReportEntry {
                    at: entry.at,
                    item: match &entry.item {
                        TimelineItem::Event { record, duplicate } => {
                            ReportItem::Event(describe(record, *duplicate))
                        }
                        TimelineItem::Directive(seq) => ReportItem::Directive(*seq),
                    },
                })
                .collect(),
            timeline_dropped: session.timeline_dropped(),
            directives: session.directives().to_vec(),
        }
    }
}

fn describe(record: &EventRecord, duplicate: bool) -> String {
    let text = match record {
        EventRecord::Open => "open".to_owned(),
        EventRecord::EndCall { speech } => format!("end_call speech={speech}"),
        EventRecord::SpeechCreated { speech } => format!("speech_created speech={speech}"),
        EventRecord::SpeechDone {
            speech,
            interrupted: false,
        } => format!("speech_done speech={speech}"),
        EventRecord::SpeechDone {
            speech,
            interrupted: true,
        } => format!("speech_done speech={speech} interrupted"),
        EventRecord::Close { reason } => format!("session_close reason={}", reason.as_str()),
        EventRecord::Expired => "expired".to_owned(),
    };
    if duplicate {
        format!("{text} (duplicate)")
    } else {
        text
    }
}

fn outcome_str<S: Serializer>(outcome: &Option<Outcome>, s: S) -> Result<S::Ok, S::Error> {
    match outcome {
        Some(outcome) => s.serialize_str(outcome.as_str()),
        None => s.serialize_none(),
    }
}

fn opt_ms<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => duration_ms::serialize(d, s),
        None => s.serialize_none(),
    }
}
