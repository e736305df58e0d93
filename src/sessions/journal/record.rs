//! What one journal record holds, and how it maps to and from the machine's inputs.
//!
//! Records are protobuf messages (prost, declared here rather than in `proto/`: they are a
//! storage format, not an API), so a later version can add fields and still read old files.
//! Each record is one input to one session's machine at an absolute time; replaying a session's
//! records in order through the same deterministic machine rebuilds it exactly, directives and
//! sequence numbers included.

use std::{sync::Arc, time::Duration};

use arcstr::ArcStr;
use endcall_core::domain::{
    Capabilities, CloseReason, Event, Options, RoomName, SessionId, SpeechId, TeardownDone,
    TeardownResult, Time, Warning,
};

use super::segment::Magic;

/// What the session journal's segments start with: "EndCall Journal, format 1".
pub(crate) const MAGIC: &Magic = b"ECJRNL01";

/// One input to one session, at one time.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Record {
    #[prost(string, tag = "1")]
    pub session: String,
    /// Position in the session's own sequence of records, from 0. Replay orders by it, so a
    /// session's records may sit in any file, in any order, and duplicates are harmless.
    #[prost(uint32, tag = "2")]
    pub index: u32,
    #[prost(uint64, tag = "3")]
    pub at_micros: u64,
    /// Which incarnation of the id: its creation time. An id may be used again once its
    /// session was dropped, and the old records may still be on disk.
    #[prost(uint64, tag = "5")]
    pub generation: u64,
    /// On a session's first record only: how it was created.
    #[prost(message, optional, tag = "4")]
    pub created: Option<Created>,
    #[prost(
        oneof = "Input",
        tags = "10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22"
    )]
    pub input: Option<Input>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Created {
    /// The server's defaults when the session was created: a restart with other flags must
    /// not change a session already under way.
    #[prost(message, optional, tag = "1")]
    pub defaults: Option<StoredOptions>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Input {
    #[prost(message, tag = "10")]
    Open(Open),
    #[prost(message, tag = "11")]
    EndCall(EndCall),
    #[prost(message, tag = "12")]
    SpeechCreated(Speech),
    #[prost(message, tag = "13")]
    SpeechDone(SpeechDone),
    #[prost(message, tag = "14")]
    Close(Close),
    /// The session's timer fired: the machine was asked what was due.
    #[prost(message, tag = "15")]
    Tick(Empty),
    /// The session was expired idle.
    #[prost(message, tag = "16")]
    Expire(Empty),
    /// The session was dropped after its retention: its records are garbage from here on.
    #[prost(message, tag = "17")]
    Dropped(Empty),
    /// A watch stream of the worker opened (the lease is held).
    #[prost(message, tag = "18")]
    StreamOpened(Empty),
    /// A watch stream of the worker ended.
    #[prost(message, tag = "19")]
    StreamClosed(Empty),
    /// The sidecar restarted from this journal: no stream survived.
    #[prost(message, tag = "20")]
    Restarted(Empty),
    /// LiveKit answered the sidecar's teardown of the call.
    #[prost(message, tag = "21")]
    TeardownFinished(TeardownFinished),
    /// The user spoke.
    #[prost(message, tag = "22")]
    UserSpeech(Empty),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TeardownFinished {
    /// `TeardownResult::as_str`.
    #[prost(string, tag = "1")]
    pub result: String,
    #[prost(uint32, tag = "2")]
    pub attempts: u32,
    #[prost(string, optional, tag = "3")]
    pub error: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredOptions {
    #[prost(bool, tag = "1")]
    pub delete_room: bool,
    #[prost(string, optional, tag = "2")]
    pub end_instructions: Option<String>,
    #[prost(string, tag = "3")]
    pub extra_description: String,
    #[prost(bool, tag = "4")]
    pub ignore_on_enter: bool,
    #[prost(uint64, tag = "5")]
    pub reply_timeout_micros: u64,
    #[prost(bool, tag = "6")]
    pub early_reply_capture: bool,
    /// The silence ladder's options. Optional on the wire: a record written before they
    /// existed has none, and loads with the ladder off and the built-in defaults.
    #[prost(uint64, optional, tag = "7")]
    pub silence_timeout_micros: Option<u64>,
    #[prost(uint64, optional, tag = "8")]
    pub silence_reminder_after_micros: Option<u64>,
    #[prost(uint32, optional, tag = "9")]
    pub silence_reminders: Option<u32>,
    #[prost(string, optional, tag = "10")]
    pub silence_reminder_instructions: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredWarning {
    #[prost(uint64, tag = "1")]
    pub before_micros: u64,
    #[prost(string, tag = "2")]
    pub instructions: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredCapabilities {
    #[prost(bool, optional, tag = "1")]
    pub realtime: Option<bool>,
    #[prost(bool, optional, tag = "2")]
    pub auto_tool_reply: Option<bool>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Open {
    #[prost(message, optional, tag = "1")]
    pub options: Option<StoredOptions>,
    #[prost(uint64, optional, tag = "2")]
    pub max_duration_micros: Option<u64>,
    #[prost(string, optional, tag = "3")]
    pub room: Option<String>,
    #[prost(message, repeated, tag = "4")]
    pub warnings: Vec<StoredWarning>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EndCall {
    #[prost(string, tag = "1")]
    pub speech: String,
    #[prost(message, optional, tag = "2")]
    pub options: Option<StoredOptions>,
    #[prost(message, optional, tag = "3")]
    pub capabilities: Option<StoredCapabilities>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Speech {
    #[prost(string, tag = "1")]
    pub speech: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SpeechDone {
    #[prost(string, tag = "1")]
    pub speech: String,
    #[prost(bool, tag = "2")]
    pub interrupted: bool,
    #[prost(message, optional, tag = "3")]
    pub capabilities: Option<StoredCapabilities>,
    #[prost(bool, optional, tag = "4")]
    pub tool_output_given: Option<bool>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Close {
    /// `CloseReason::as_str`.
    #[prost(string, tag = "1")]
    pub reason: String,
    #[prost(string, optional, tag = "2")]
    pub error: Option<String>,
}

/// A machine input in domain terms: what the registry journals and what replay feeds back.
#[derive(Clone, Debug, PartialEq)]
pub enum MachineInput {
    Event(Event),
    Tick,
    Expire,
    Dropped,
    StreamOpened,
    StreamClosed,
    Restarted,
    TeardownFinished(TeardownDone),
}

/// A record that cannot be turned back into an input (a field out of range): the file was
/// written by something else, or damaged in a way its checksum did not catch.
#[derive(Debug, thiserror::Error)]
#[error("journal record for session {session:?} #{index}: {reason}")]
pub struct BadRecord {
    pub session: String,
    pub index: u32,
    pub reason: &'static str,
}

impl Record {
    /// `generation` is the session's creation time; `defaults` goes with its first record.
    pub fn new(
        session: &SessionId,
        generation: Time,
        index: u32,
        at: Time,
        defaults: Option<&Options>,
        input: &MachineInput,
    ) -> Self {
        Record {
            session: session.as_str().to_owned(),
            index,
            at_micros: at.as_micros(),
            generation: generation.as_micros(),
            created: defaults.map(|defaults| Created {
                defaults: Some(store_options(defaults)),
            }),
            input: Some(store_input(input)),
        }
    }

    pub fn at(&self) -> Time {
        Time::from_micros(self.at_micros)
    }

    pub fn input(&self) -> Result<MachineInput, BadRecord> {
        let bad = |reason| BadRecord {
            session: self.session.clone(),
            index: self.index,
            reason,
        };
        let input = self.input.as_ref().ok_or_else(|| bad("no input"))?;
        Ok(match input {
            Input::Open(open) => MachineInput::Event(Event::Open {
                options: open.options.as_ref().map(load_options),
                max_duration: open.max_duration_micros.map(Duration::from_micros),
                room: open.room.as_deref().map(RoomName::new),
                warnings: open
                    .warnings
                    .iter()
                    .map(|w| Warning {
                        before: Duration::from_micros(w.before_micros),
                        instructions: ArcStr::from(w.instructions.as_str()),
                    })
                    .collect(),
            }),
            Input::EndCall(end_call) => MachineInput::Event(Event::EndCall {
                speech: SpeechId::new(&end_call.speech),
                options: end_call.options.as_ref().map(load_options),
                capabilities: load_capabilities(end_call.capabilities.as_ref()),
            }),
            Input::SpeechCreated(speech) => MachineInput::Event(Event::SpeechCreated {
                speech: SpeechId::new(&speech.speech),
            }),
            Input::SpeechDone(done) => MachineInput::Event(Event::SpeechDone {
                speech: SpeechId::new(&done.speech),
                interrupted: done.interrupted,
                capabilities: load_capabilities(done.capabilities.as_ref()),
                tool_output_given: done.tool_output_given,
            }),
            Input::Close(close) => MachineInput::Event(Event::SessionClose {
                reason: CloseReason::ALL
                    .into_iter()
                    .find(|reason| reason.as_str() == close.reason)
                    .ok_or_else(|| bad("unknown close reason"))?,
                error: close.error.clone(),
            }),
            Input::Tick(_) => MachineInput::Tick,
            Input::Expire(_) => MachineInput::Expire,
            Input::Dropped(_) => MachineInput::Dropped,
            Input::StreamOpened(_) => MachineInput::StreamOpened,
            Input::StreamClosed(_) => MachineInput::StreamClosed,
            Input::Restarted(_) => MachineInput::Restarted,
            Input::UserSpeech(_) => MachineInput::Event(Event::UserSpeech),
            Input::TeardownFinished(done) => MachineInput::TeardownFinished(TeardownDone {
                result: TeardownResult::ALL
                    .into_iter()
                    .find(|result| result.as_str() == done.result)
                    .ok_or_else(|| bad("unknown teardown result"))?,
                attempts: done.attempts,
                error: done.error.clone(),
            }),
        })
    }
}

fn store_input(input: &MachineInput) -> Input {
    match input {
        MachineInput::Event(Event::Open {
            options,
            max_duration,
            room,
            warnings,
        }) => Input::Open(Open {
            options: options.as_deref().map(store_options),
            max_duration_micros: max_duration.map(micros),
            room: room.as_ref().map(|room| room.as_str().to_owned()),
            warnings: warnings
                .iter()
                .map(|w| StoredWarning {
                    before_micros: micros(w.before),
                    instructions: w.instructions.to_string(),
                })
                .collect(),
        }),
        MachineInput::Event(Event::EndCall {
            speech,
            options,
            capabilities,
        }) => Input::EndCall(EndCall {
            speech: speech.as_str().to_owned(),
            options: options.as_deref().map(store_options),
            capabilities: Some(store_capabilities(*capabilities)),
        }),
        MachineInput::Event(Event::SpeechCreated { speech }) => Input::SpeechCreated(Speech {
            speech: speech.as_str().to_owned(),
        }),
        MachineInput::Event(Event::SpeechDone {
            speech,
            interrupted,
            capabilities,
            tool_output_given,
        }) => Input::SpeechDone(SpeechDone {
            speech: speech.as_str().to_owned(),
            interrupted: *interrupted,
            capabilities: Some(store_capabilities(*capabilities)),
            tool_output_given: *tool_output_given,
        }),
        MachineInput::Event(Event::SessionClose { reason, error }) => Input::Close(Close {
            reason: reason.as_str().to_owned(),
            error: error.clone(),
        }),
        MachineInput::Event(Event::UserSpeech) => Input::UserSpeech(Empty {}),
        MachineInput::Tick => Input::Tick(Empty {}),
        MachineInput::Expire => Input::Expire(Empty {}),
        MachineInput::Dropped => Input::Dropped(Empty {}),
        MachineInput::StreamOpened => Input::StreamOpened(Empty {}),
        MachineInput::StreamClosed => Input::StreamClosed(Empty {}),
        MachineInput::Restarted => Input::Restarted(Empty {}),
        MachineInput::TeardownFinished(done) => Input::TeardownFinished(TeardownFinished {
            result: done.result.as_str().to_owned(),
            attempts: done.attempts,
            error: done.error.clone(),
        }),
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

pub(crate) fn store_options(options: &Options) -> StoredOptions {
    StoredOptions {
        delete_room: options.delete_room,
        end_instructions: options.end_instructions.as_deref().map(str::to_owned),
        extra_description: options.extra_description.to_string(),
        ignore_on_enter: options.ignore_on_enter,
        reply_timeout_micros: micros(options.reply_timeout),
        early_reply_capture: options.early_reply_capture,
        silence_timeout_micros: options.silence_timeout.map(micros),
        silence_reminder_after_micros: Some(micros(options.silence_reminder_after)),
        silence_reminders: Some(u32::from(options.silence_reminders)),
        silence_reminder_instructions: Some(options.silence_reminder_instructions.to_string()),
    }
}

pub(crate) fn load_options(stored: &StoredOptions) -> Arc<Options> {
    let builtin = Options::default();
    Arc::new(Options {
        delete_room: stored.delete_room,
        end_instructions: stored.end_instructions.as_deref().map(Arc::from),
        extra_description: Arc::from(stored.extra_description.as_str()),
        ignore_on_enter: stored.ignore_on_enter,
        reply_timeout: Duration::from_micros(stored.reply_timeout_micros),
        early_reply_capture: stored.early_reply_capture,
        silence_timeout: stored.silence_timeout_micros.map(Duration::from_micros),
        silence_reminder_after: stored
            .silence_reminder_after_micros
            .map_or(builtin.silence_reminder_after, Duration::from_micros),
        silence_reminders: stored
            .silence_reminders
            .map_or(builtin.silence_reminders, |n| {
                u8::try_from(n).unwrap_or(u8::MAX)
            }),
        silence_reminder_instructions: stored
            .silence_reminder_instructions
            .as_deref()
            .map_or(builtin.silence_reminder_instructions, ArcStr::from),
    })
}

fn store_capabilities(capabilities: Capabilities) -> StoredCapabilities {
    StoredCapabilities {
        realtime: capabilities.realtime,
        auto_tool_reply: capabilities.auto_tool_reply,
    }
}

fn load_capabilities(stored: Option<&StoredCapabilities>) -> Capabilities {
    stored.map_or_else(Capabilities::default, |stored| Capabilities {
        realtime: stored.realtime,
        auto_tool_reply: stored.auto_tool_reply,
    })
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    fn round_trip(input: MachineInput) {
        let session = SessionId::new("room-1");
        let record = Record::new(
            &session,
            Time::from_micros(7),
            3,
            Time::from_micros(42),
            Some(&Options::default()),
            &input,
        );
        let decoded = Record::decode(record.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, record);
        assert_eq!(decoded.input().unwrap(), input);
        assert_eq!(
            load_options(decoded.created.unwrap().defaults.as_ref().unwrap()),
            Arc::new(Options::default())
        );
    }

    /// A record written before the silence ladder existed loads with it off and the
    /// built-in defaults, so its session's options compare equal to a request's that leaves
    /// them unset.
    #[test]
    fn options_stored_before_the_silence_ladder_load_with_it_off() {
        let mut stored = store_options(&Options::default());
        stored.silence_timeout_micros = None;
        stored.silence_reminder_after_micros = None;
        stored.silence_reminders = None;
        stored.silence_reminder_instructions = None;
        let old = StoredOptions::decode(stored.encode_to_vec().as_slice()).unwrap();
        assert_eq!(load_options(&old), Arc::new(Options::default()));
    }

    #[test]
    fn every_input_survives_a_round_trip() {
        let options = Arc::new(Options {
            delete_room: false,
            end_instructions: None,
            extra_description: Arc::from("x"),
            ignore_on_enter: true,
            reply_timeout: Duration::from_millis(1234),
            early_reply_capture: true,
            silence_timeout: Some(Duration::from_secs(30)),
            silence_reminder_after: Duration::from_millis(7500),
            silence_reminders: 3,
            silence_reminder_instructions: ArcStr::from("hello?"),
        });
        let capabilities = Capabilities {
            realtime: Some(true),
            auto_tool_reply: None,
        };
        for input in [
            MachineInput::Event(Event::Open {
                options: Some(options.clone()),
                max_duration: Some(Duration::from_secs(60)),
                room: Some(RoomName::new("room-9")),
                warnings: vec![Warning {
                    before: Duration::from_secs(15),
                    instructions: ArcStr::from("fifteen seconds left"),
                }],
            }),
            MachineInput::Event(Event::Open {
                options: None,
                max_duration: None,
                room: None,
                warnings: Vec::new(),
            }),
            MachineInput::Event(Event::UserSpeech),
            MachineInput::Event(Event::EndCall {
                speech: SpeechId::new("S"),
                options: Some(options),
                capabilities,
            }),
            MachineInput::Event(Event::SpeechCreated {
                speech: SpeechId::new("R"),
            }),
            MachineInput::Event(Event::SpeechDone {
                speech: SpeechId::new("S"),
                interrupted: true,
                capabilities,
                tool_output_given: Some(false),
            }),
            MachineInput::Event(Event::SessionClose {
                reason: CloseReason::ParticipantDisconnected,
                error: Some("boom".into()),
            }),
            MachineInput::Tick,
            MachineInput::Expire,
            MachineInput::Dropped,
            MachineInput::StreamOpened,
            MachineInput::StreamClosed,
            MachineInput::Restarted,
            MachineInput::TeardownFinished(TeardownDone {
                result: TeardownResult::Failed,
                attempts: 4,
                error: Some("401 unauthenticated".into()),
            }),
            MachineInput::TeardownFinished(TeardownDone {
                result: TeardownResult::RoomDeleted,
                attempts: 1,
                error: None,
            }),
        ] {
            round_trip(input);
        }
    }
}
