//! The report as JSON, for its log line, written by hand.
//!
//! Why not serde: every session that ends leaves its report in the log, and serde_json spent
//! most of the report thread's time on it (`cargo bench --bench report`; callgrind counted 15k
//! of the 25k instructions a text line took), above all escaping: it scans each of the
//! report's forty-odd keys and names byte by byte for characters to escape, and those are
//! ours and need none. Here only the strings a worker chose (ids, instructions) are escaped.
//!
//! The shape is serde's: the report's types keep their serde derives in test builds, and the
//! tests check that this writer's output is byte for byte what serde_json makes of them. A
//! field added to the report and forgotten here fails them.

use std::{
    fmt::{self, Write as _},
    time::Duration,
};

use super::{Report, ReportEntry, ReportItem, TeardownReport};
use crate::domain::{millis, Capabilities, Directive, IssuedDirective, Options, Time, Warning};

impl Report {
    /// Appends the report to `out` as one JSON object (the worker's close error is left out:
    /// it may hold user data).
    pub fn write_json(&self, out: &mut String) {
        self.write_json_with(out, false);
    }

    /// Like [`Report::write_json`], with the worker's close error as a last member,
    /// `"error_message"` (a string, or `null` when the close gave none), when `error_message`
    /// is set: for a receiver the operator chose to trust with it (the webhook's
    /// `--webhook-include-error-message`). The name is `GetSession`'s.
    pub fn write_json_with(&self, out: &mut String, error_message: bool) {
        let mut o = Object::open(out);
        string(o.key("session_id"), self.session_id.as_str());
        name(o.key("state"), self.state.as_str());
        option(o.key("outcome"), self.outcome, |out, v| {
            name(out, v.as_str())
        });
        option(o.key("ended_reason"), self.ended_reason, |out, v| {
            name(out, v.as_str())
        });
        option(o.key("close_reason"), self.close_reason, |out, v| {
            name(out, v.as_str())
        });
        option(o.key("room"), self.room.as_ref(), |out, v| {
            string(out, v.as_str())
        });
        boolean(o.key("attended"), self.attended);
        options(o.key("options"), &self.options);
        option(o.key("max_duration"), self.max_duration, milliseconds);
        array(o.key("warnings"), &self.warnings, warning);
        capabilities(o.key("capabilities"), self.capabilities);
        time(o.key("created_at"), self.created_at);
        option(o.key("end_call_at"), self.end_call_at, time);
        option(o.key("shutdown_at"), self.shutdown_at, time);
        option(o.key("closed_at"), self.closed_at, time);
        option(o.key("goodbye"), self.goodbye, milliseconds);
        array(o.key("timeline"), &self.timeline, entry);
        number(o.key("timeline_dropped"), u64::from(self.timeline_dropped));
        array(o.key("directives"), &self.directives, directive);
        option(o.key("teardown"), self.teardown.as_ref(), teardown);
        if error_message {
            option(o.key("error_message"), self.close_error.as_deref(), string);
        }
        o.close();
    }
}

fn teardown(out: &mut String, teardown: &TeardownReport) {
    let mut o = Object::open(out);
    name(o.key("cause"), teardown.cause.as_str());
    time(o.key("decided_at"), teardown.decided_at);
    option(o.key("result"), teardown.result, |out, v| {
        name(out, v.as_str())
    });
    number(o.key("attempts"), u64::from(teardown.attempts));
    option(o.key("finished_at"), teardown.finished_at, time);
    option(o.key("error"), teardown.error.as_deref(), string);
    o.close();
}

fn options(out: &mut String, options: &Options) {
    let mut o = Object::open(out);
    boolean(o.key("delete_room"), options.delete_room);
    option(
        o.key("end_instructions"),
        options.end_instructions.as_deref(),
        string,
    );
    string(o.key("extra_description"), &options.extra_description);
    boolean(o.key("ignore_on_enter"), options.ignore_on_enter);
    milliseconds(o.key("reply_timeout"), options.reply_timeout);
    boolean(o.key("early_reply_capture"), options.early_reply_capture);
    option(
        o.key("silence_timeout"),
        options.silence_timeout,
        milliseconds,
    );
    milliseconds(
        o.key("silence_reminder_after"),
        options.silence_reminder_after,
    );
    number(
        o.key("silence_reminders"),
        u64::from(options.silence_reminders),
    );
    string(
        o.key("silence_reminder_instructions"),
        &options.silence_reminder_instructions,
    );
    o.close();
}

fn warning(out: &mut String, warning: &Warning) {
    let mut o = Object::open(out);
    milliseconds(o.key("before"), warning.before);
    string(o.key("instructions"), &warning.instructions);
    o.close();
}

fn capabilities(out: &mut String, capabilities: Capabilities) {
    let mut o = Object::open(out);
    option(o.key("realtime"), capabilities.realtime, boolean);
    option(
        o.key("auto_tool_reply"),
        capabilities.auto_tool_reply,
        boolean,
    );
    o.close();
}

fn entry(out: &mut String, entry: &ReportEntry) {
    let mut o = Object::open(out);
    time(o.key("at"), entry.at);
    match &entry.item {
        ReportItem::Event(event) => {
            // The description names the speech, which the worker chose: escaped as it is
            // written, without a string of its own.
            let out = o.key("event");
            out.push('"');
            // Writing to a `String` cannot fail.
            let _ = write!(Escaping(out), "{event}");
            out.push('"');
        }
        ReportItem::Directive(seq) => number(o.key("directive"), *seq),
    }
    o.close();
}

fn directive(out: &mut String, issued: &IssuedDirective) {
    let mut o = Object::open(out);
    number(o.key("seq"), issued.seq);
    time(o.key("at"), issued.at);
    name(o.key("kind"), issued.directive.kind());
    match &issued.directive {
        Directive::ShutdownSession { cause } | Directive::WindUp { cause } => {
            name(o.key("cause"), cause.as_str());
        }
        Directive::Remind {
            cause,
            instructions,
        } => {
            name(o.key("cause"), cause.as_str());
            string(o.key("instructions"), instructions);
        }
        Directive::ShutdownJob { reason } => name(o.key("reason"), reason.as_str()),
        Directive::DeleteRoom => {}
    }
    o.close();
}

/// An object being written: puts the commas between its members.
struct Object<'a> {
    out: &'a mut String,
    empty: bool,
}

impl<'a> Object<'a> {
    fn open(out: &'a mut String) -> Self {
        out.push('{');
        Object { out, empty: true }
    }

    /// Starts a member; its value is written next, into what this returns.
    fn key(&mut self, key: &str) -> &mut String {
        debug_assert!(is_plain(key), "{key:?} would need escaping");
        if !std::mem::take(&mut self.empty) {
            self.out.push(',');
        }
        self.out.push('"');
        self.out.push_str(key);
        self.out.push_str("\":");
        self.out
    }

    fn close(self) {
        self.out.push('}');
    }
}

fn array<T>(out: &mut String, items: &[T], write: impl Fn(&mut String, &T)) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write(out, item);
    }
    out.push(']');
}

fn option<T>(out: &mut String, value: Option<T>, write: impl FnOnce(&mut String, T)) {
    match value {
        Some(value) => write(out, value),
        None => out.push_str("null"),
    }
}

fn number(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

fn milliseconds(out: &mut String, d: Duration) {
    number(out, millis(d));
}

fn time(out: &mut String, at: Time) {
    number(out, at.as_micros());
}

fn boolean(out: &mut String, b: bool) {
    out.push_str(if b { "true" } else { "false" });
}

/// One of our own names (a state, a reason, a kind): nothing in it needs escaping.
fn name(out: &mut String, name: &str) {
    debug_assert!(is_plain(name), "{name:?} would need escaping");
    out.push('"');
    out.push_str(name);
    out.push('"');
}

fn is_plain(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A string from outside, quoted and escaped.
fn string(out: &mut String, s: &str) {
    out.push('"');
    escape(out, s);
    out.push('"');
}

/// JSON's escapes, as serde_json writes them: quote, backslash, and the control characters
/// (the common ones by letter, the rest as `\u00XX`). Everything else, non-ASCII included, is
/// copied as it is, a run at a time.
fn escape(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut copied = 0;
    for (i, byte) in s.bytes().enumerate() {
        let short = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        // Every byte escaped is ASCII, so `i` is on a character boundary.
        out.push_str(&s[copied..i]);
        copied = i + 1;
        if short.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        } else {
            out.push_str(short);
        }
    }
    out.push_str(&s[copied..]);
}

/// Escapes what is formatted into it, so a `Display` can be written straight into a string.
struct Escaping<'a>(&'a mut String);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape(self.0, s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::{
        domain::{
            CloseReason, Event, RoomName, SessionId, SpeechId, TeardownDone, TeardownResult,
            Warning,
        },
        machine::{Session, Timing},
    };

    const TIMING: Timing = Timing {
        playout_guard: Duration::from_secs(30),
        wind_up_grace: Duration::from_secs(10),
        worker_lost_after: Duration::from_secs(10),
        close_deadline: Duration::from_secs(60),
    };

    fn written(report: &Report) -> String {
        let mut out = String::new();
        report.write_json(&mut out);
        out
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        for s in [
            "",
            "plain",
            "quote \" and backslash \\",
            "lines\nand\rtabs\tbell\u{7}nul\0esc\u{1b}us\u{1f}",
            "\u{8}\u{c}",
            "del\u{7f} é ünï 😀 \u{2028}",
        ] {
            let mut out = String::new();
            string(&mut out, s);
            assert_eq!(out, serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    /// One step of a session's life, with strings a worker could send.
    #[derive(Clone, Debug)]
    enum Step {
        /// A maximum duration, a room, and a warning's instructions (one second before the
        /// limit).
        Open(Option<u64>, Option<String>, Option<String>),
        UserSpeech,
        EndCall(String, Option<bool>),
        Created(String),
        Done(String, bool),
        Close(CloseReason),
        Wait(u64),
        Expire,
        StreamOpened,
        StreamClosed,
        TeardownFinished(bool, Option<String>),
    }

    fn step() -> impl Strategy<Value = Step> {
        // Few distinct speeches, so that events meet; any characters in them.
        let speech = prop_oneof![
            Just("S1".to_owned()),
            Just("R1".to_owned()),
            any::<String>()
        ];
        prop_oneof![
            (
                proptest::option::of(2_000u64..100_000),
                proptest::option::of(any::<String>()),
                proptest::option::of(any::<String>())
            )
                .prop_map(|(max, room, warning)| Step::Open(max, room, warning)),
            Just(Step::UserSpeech),
            (speech.clone(), proptest::option::of(any::<bool>()))
                .prop_map(|(s, r)| Step::EndCall(s, r)),
            speech.clone().prop_map(Step::Created),
            (speech, any::<bool>()).prop_map(|(s, i)| Step::Done(s, i)),
            proptest::sample::select(CloseReason::ALL.to_vec()).prop_map(Step::Close),
            (0u64..40_000).prop_map(Step::Wait),
            Just(Step::Expire),
            Just(Step::StreamOpened),
            Just(Step::StreamClosed),
            (any::<bool>(), proptest::option::of(any::<String>()))
                .prop_map(|(ok, error)| Step::TeardownFinished(ok, error)),
        ]
    }

    fn session(options: Options, steps: &[Step]) -> Session {
        let mut now = Time::from_micros(1_795_000_000_000_000);
        let mut session = Session::new(Arc::new(options), now);
        for step in steps {
            let event = match step {
                Step::Wait(ms) => {
                    now = now + Duration::from_millis(*ms);
                    session.on_time(now, &TIMING);
                    continue;
                }
                Step::Expire => {
                    session.expire(now);
                    continue;
                }
                Step::StreamOpened => {
                    session.stream_opened(now);
                    continue;
                }
                Step::StreamClosed => {
                    session.stream_closed(now);
                    continue;
                }
                Step::TeardownFinished(ok, error) => {
                    let result = if *ok {
                        TeardownResult::RoomDeleted
                    } else {
                        TeardownResult::Failed
                    };
                    let done = TeardownDone {
                        result,
                        attempts: 2,
                        error: error.clone(),
                    };
                    session.teardown_finished(done, now);
                    continue;
                }
                Step::Open(max_ms, room, warning) => Event::Open {
                    options: None,
                    max_duration: max_ms.map(Duration::from_millis),
                    room: room.as_deref().map(RoomName::new),
                    warnings: warning
                        .iter()
                        .filter(|_| max_ms.is_some())
                        .map(|text| Warning {
                            before: Duration::from_secs(1),
                            instructions: arcstr::ArcStr::from(text.as_str()),
                        })
                        .collect(),
                },
                Step::UserSpeech => Event::UserSpeech,
                Step::EndCall(speech, realtime) => Event::EndCall {
                    speech: SpeechId::new(speech),
                    options: None,
                    capabilities: Capabilities {
                        realtime: *realtime,
                        auto_tool_reply: realtime.map(|r| !r),
                    },
                },
                Step::Created(speech) => Event::SpeechCreated {
                    speech: SpeechId::new(speech),
                },
                Step::Done(speech, interrupted) => Event::SpeechDone {
                    speech: SpeechId::new(speech),
                    interrupted: *interrupted,
                    capabilities: Capabilities::default(),
                    tool_output_given: None,
                },
                Step::Close(reason) => Event::SessionClose {
                    reason: *reason,
                    error: Some("the worker's words".into()),
                },
            };
            // Refused events (after close, unknown speech) are part of a real life too.
            let _ = session.handle(event, now, &TIMING);
        }
        session
    }

    proptest! {
        #[test]
        fn the_json_is_serdes_byte_for_byte(
            id in any::<String>(),
            instructions in proptest::option::of(any::<String>()),
            description in any::<String>(),
            flags in any::<[bool; 3]>(),
            timeout in 0u64..100_000,
            silence in proptest::option::of(1_000u64..60_000),
            reminders in 0u8..4,
            reminder in any::<String>(),
            steps in proptest::collection::vec(step(), 0..30),
        ) {
            let options = Options {
                delete_room: flags[0],
                end_instructions: instructions.map(Arc::from),
                extra_description: Arc::from(description),
                ignore_on_enter: flags[1],
                reply_timeout: Duration::from_millis(timeout),
                early_reply_capture: flags[2],
                silence_timeout: silence.map(Duration::from_millis),
                silence_reminder_after: Duration::from_millis(700),
                silence_reminders: reminders,
                silence_reminder_instructions: arcstr::ArcStr::from(reminder.as_str()),
            };
            let report = Report::of(&SessionId::new(&id), &session(options, &steps));
            prop_assert_eq!(written(&report), serde_json::to_string(&report).unwrap());
        }
    }

    /// With the error asked for, the object is the same with one member more, last.
    #[test]
    fn the_error_message_is_a_last_member_only_when_asked_for() {
        let closed = |error: Option<&str>| {
            let mut session = Session::new(Arc::new(Options::default()), Time::from_micros(0));
            let close = Event::SessionClose {
                reason: CloseReason::Error,
                error: error.map(str::to_owned),
            };
            session
                .handle(close, Time::from_micros(1), &TIMING)
                .unwrap();
            Report::of(&SessionId::new("call-1"), &session)
        };
        for (error, member) in [
            (
                Some("quote \" and\nline"),
                r#""error_message":"quote \" and\nline""#,
            ),
            (None, r#""error_message":null"#),
        ] {
            let report = closed(error);
            let without = written(&report);
            let mut with = String::new();
            report.write_json_with(&mut with, true);
            let expected = format!("{},{member}}}", &without[..without.len() - 1]);
            assert_eq!(with, expected);
            let parsed: serde_json::Value = serde_json::from_str(&with).unwrap();
            assert_eq!(parsed["error_message"].as_str(), error);
        }
    }

    /// Sessions that reach every state, outcome and directive the generator above rarely does.
    #[test]
    fn every_kind_of_ending_is_written_as_serde_writes_it() {
        let realtime = Some(true);
        let lives: [&[Step]; 11] = [
            &[
                Step::EndCall("S1".into(), None),
                Step::Done("S1".into(), false),
                Step::Close(CloseReason::UserInitiated),
            ],
            &[Step::EndCall("S1".into(), realtime), Step::Wait(6_000)],
            &[
                Step::EndCall("S1".into(), realtime),
                Step::Created("R1".into()),
                Step::Done("R1".into(), true),
                Step::Close(CloseReason::Error),
            ],
            &[Step::EndCall("S1".into(), None), Step::Wait(31_000)],
            &[Step::Close(CloseReason::ParticipantDisconnected)],
            &[
                Step::Open(Some(60_000), None, Some("one \"minute\" left".into())),
                Step::Wait(30_000),
                Step::Wait(31_000),
            ],
            &[Step::EndCall("S1".into(), None), Step::Expire],
            &[
                Step::Open(None, Some("room \"1\"".into()), None),
                Step::StreamOpened,
                Step::StreamClosed,
                Step::Wait(10_000),
            ],
            &[
                Step::Open(None, Some("room-2".into()), None),
                Step::StreamOpened,
                Step::StreamClosed,
                Step::Wait(10_000),
                Step::TeardownFinished(false, Some("503 \"unavailable\"".into())),
            ],
            &[
                Step::EndCall("S1".into(), None),
                Step::Done("S1".into(), false),
                Step::Wait(60_000),
            ],
            // The silence ladder: a reminder, the user, a reminder, the wind-up, the shutdown.
            &[
                Step::Wait(1_000),
                Step::UserSpeech,
                Step::Wait(1_000),
                Step::Wait(1_000),
                Step::Wait(40_000),
                Step::Close(CloseReason::ParticipantDisconnected),
            ],
        ];
        let silence = Options {
            silence_timeout: Some(Duration::from_secs(2)),
            silence_reminder_after: Duration::from_secs(1),
            silence_reminder_instructions: arcstr::ArcStr::from("are you \"there\"?\n"),
            ..Options::default()
        };
        for options in [Options::default(), silence] {
            for steps in lives {
                let report =
                    Report::of(&SessionId::new("call-1"), &session(options.clone(), steps));
                assert_eq!(written(&report), serde_json::to_string(&report).unwrap());
            }
        }
    }
}
