//! The contract's vocabulary: ids, options, events, directives, states and outcomes.
//!
//! Nothing here knows about protobuf or tokio; `convert.rs` maps the wire types onto these, so
//! the state machine and its tests speak the contract's language only.

use std::{fmt, ops::Add, sync::Arc, time::Duration};

use arcstr::ArcStr;

#[cfg(any(test, feature = "serde"))]
use serde::Serialize;

/// A point in time, in microseconds since the Unix epoch.
///
/// Deadlines are absolute wall-clock points rather than `Instant`s so that a report can show
/// them and a later restart could re-arm them; the registry's clock keeps them monotonic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(any(test, feature = "serde"), derive(Serialize))]
#[cfg_attr(any(test, feature = "serde"), serde(transparent))]
pub struct Time(u64);

impl Time {
    /// Later than any real time: "not set" where an `Option` would cost another 8 bytes.
    pub const NEVER: Time = Time(u64::MAX);

    pub const fn from_micros(micros: u64) -> Self {
        Self(micros)
    }

    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// The duration from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }

    /// `d` before `self` (the epoch at the earliest).
    pub fn minus(self, d: Duration) -> Time {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Time(self.0.saturating_sub(micros))
    }
}

impl Add<Duration> for Time {
    type Output = Time;

    fn add(self, rhs: Duration) -> Time {
        let micros = u64::try_from(rhs.as_micros()).unwrap_or(u64::MAX);
        Time(self.0.saturating_add(micros))
    }
}

/// The id of one agent session (one call), chosen by the worker.
///
/// Shared because the registry's map, its timer queue and watch streams all hold it; an
/// `ArcStr` is one pointer wide (its length lives in the allocation), where an `Arc<str>` is
/// two, and a million waiting sessions hold an id in each map slot and each wheel entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(any(test, feature = "serde"), derive(Serialize))]
#[cfg_attr(any(test, feature = "serde"), serde(transparent))]
pub struct SessionId(ArcStr);

impl SessionId {
    pub fn new(id: &str) -> Self {
        Self(ArcStr::from(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for SessionId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id of one speech (a turn) of the agent session, chosen by the framework.
///
/// Shared because a session keeps the same id in several places (its tool speeches, its
/// recent speeches, its timeline): one allocation per distinct id. One pointer wide, like
/// [`SessionId`]: the timeline entries that hold it then fit in 32 bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(any(test, feature = "serde"), derive(Serialize))]
#[cfg_attr(any(test, feature = "serde"), serde(transparent))]
pub struct SpeechId(ArcStr);

impl SpeechId {
    pub fn new(id: &str) -> Self {
        Self(ArcStr::from(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SpeechId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A session's options with every default filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(any(test, feature = "serde"), derive(Serialize))]
pub struct Options {
    pub delete_room: bool,
    /// `None` is a distinct value: the tool asks for no reply.
    ///
    /// Texts are shared (`Arc`): a session with options of its own copies only pointers.
    pub end_instructions: Option<Arc<str>>,
    pub extra_description: Arc<str>,
    pub ignore_on_enter: bool,
    #[cfg_attr(any(test, feature = "serde"), serde(with = "duration_ms"))]
    pub reply_timeout: Duration,
    pub early_reply_capture: bool,
    /// Extension (the silence ladder): `None` is off.
    #[cfg_attr(
        any(test, feature = "serde"),
        serde(serialize_with = "opt_duration_ms")
    )]
    pub silence_timeout: Option<Duration>,
    #[cfg_attr(any(test, feature = "serde"), serde(with = "duration_ms"))]
    pub silence_reminder_after: Duration,
    pub silence_reminders: u8,
    /// One pointer wide, so that a `REMIND` directive carrying it is too.
    pub silence_reminder_instructions: ArcStr,
}

/// The default instructions of a silence reminder.
pub const SILENCE_REMINDER_INSTRUCTIONS: &str =
    "The user has been silent for a while. Briefly ask whether they are still there.";

impl Default for Options {
    /// The reference tool's defaults, and the extensions' (the silence ladder off).
    fn default() -> Self {
        Self {
            delete_room: true,
            end_instructions: Some(Arc::from("say goodbye to the user")),
            extra_description: Arc::from(""),
            ignore_on_enter: false,
            reply_timeout: Duration::from_secs(5),
            early_reply_capture: false,
            silence_timeout: None,
            silence_reminder_after: Duration::from_secs(10),
            silence_reminders: 1,
            silence_reminder_instructions: ArcStr::from(SILENCE_REMINDER_INSTRUCTIONS),
        }
    }
}

/// Options as a request gives them: each `None` falls back to the server's default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OptionsPatch {
    pub delete_room: Option<bool>,
    /// `Some(None)` asks for no tool output; `None` takes the default.
    pub end_instructions: Option<Option<Arc<str>>>,
    pub extra_description: Option<Arc<str>>,
    pub ignore_on_enter: Option<bool>,
    pub reply_timeout: Option<Duration>,
    pub early_reply_capture: Option<bool>,
    /// `Some(None)` turns the silence ladder off; `None` takes the default.
    pub silence_timeout: Option<Option<Duration>>,
    pub silence_reminder_after: Option<Duration>,
    pub silence_reminders: Option<u8>,
    pub silence_reminder_instructions: Option<ArcStr>,
}

impl OptionsPatch {
    /// Fills the gaps from `defaults`. Sharing the result between sessions is the caller's
    /// (`convert::options`).
    pub fn over(self, defaults: &Options) -> Options {
        Options {
            delete_room: self.delete_room.unwrap_or(defaults.delete_room),
            end_instructions: self
                .end_instructions
                .unwrap_or_else(|| defaults.end_instructions.clone()),
            extra_description: self
                .extra_description
                .unwrap_or_else(|| defaults.extra_description.clone()),
            ignore_on_enter: self.ignore_on_enter.unwrap_or(defaults.ignore_on_enter),
            reply_timeout: self.reply_timeout.unwrap_or(defaults.reply_timeout),
            early_reply_capture: self
                .early_reply_capture
                .unwrap_or(defaults.early_reply_capture),
            silence_timeout: self.silence_timeout.unwrap_or(defaults.silence_timeout),
            silence_reminder_after: self
                .silence_reminder_after
                .unwrap_or(defaults.silence_reminder_after),
            silence_reminders: self.silence_reminders.unwrap_or(defaults.silence_reminders),
            silence_reminder_instructions: self
                .silence_reminder_instructions
                .unwrap_or_else(|| defaults.silence_reminder_instructions.clone()),
        }
    }
}

/// A warning before the call's maximum duration: issued as `REMIND` with its instructions,
/// `before` the limit.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(any(test, feature = "serde"), derive(Serialize))]
pub struct Warning {
    #[cfg_attr(any(test, feature = "serde"), serde(with = "duration_ms"))]
    pub before: Duration,
    pub instructions: ArcStr,
}

/// What the worker's model can do; `None` means "not told".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(any(test, feature = "serde"), derive(Serialize))]
pub struct Capabilities {
    pub realtime: Option<bool>,
    pub auto_tool_reply: Option<bool>,
}

impl Capabilities {
    /// Newer knowledge wins, field by field.
    pub fn merge(&mut self, newer: Capabilities) {
        self.realtime = newer.realtime.or(self.realtime);
        self.auto_tool_reply = newer.auto_tool_reply.or(self.auto_tool_reply);
    }

    /// Row 3's condition on the model: a realtime model that replies to tools by itself.
    /// Untold means no, which is the pipeline case.
    pub fn auto_replies(self) -> bool {
        self.realtime.unwrap_or(false) && self.auto_tool_reply.unwrap_or(false)
    }
}

/// Why the agent session closed, with the reference's string values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(any(test, feature = "serde"), derive(Serialize))]
#[cfg_attr(any(test, feature = "serde"), serde(rename_all = "snake_case"))]
pub enum CloseReason {
    Error,
    JobShutdown,
    ParticipantDisconnected,
    UserInitiated,
    TaskCompleted,
}

impl CloseReason {
    pub const ALL: [CloseReason; 5] = [
        CloseReason::Error,
        CloseReason::JobShutdown,
        CloseReason::ParticipantDisconnected,
        CloseReason::UserInitiated,
        CloseReason::TaskCompleted,
    ];

    /// The string a worker passes to `job_ctx.shutdown(reason=...)`.
    pub const fn as_str(self) -> &'static str {
        match self {
            CloseReason::Error => "error",
            CloseReason::JobShutdown => "job_shutdown",
            CloseReason::ParticipantDisconnected => "participant_disconnected",
            CloseReason::UserInitiated => "user_initiated",
            CloseReason::TaskCompleted => "task_completed",
        }
    }
}

/// Why `SHUTDOWN_SESSION` was issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(any(test, feature = "serde"), derive(Serialize))]
#[cfg_attr(any(test, feature = "serde"), serde(rename_all = "snake_case"))]
pub enum ShutdownCause {
    ToolTurnDone,
    ReplyPlayedOut,
    ReplyTimeout,
    PlayoutGuard,
    MaxDuration,
    /// Extension (the silence ladder): the user was silent for the session's silence timeout.
    SilenceTimeout,
}

impl ShutdownCause {
    pub const fn as_str(self) -> &'static str {
        match self {
            ShutdownCause::ToolTurnDone => "tool_turn_done",
            ShutdownCause::ReplyPlayedOut => "reply_played_out",
            ShutdownCause::ReplyTimeout => "reply_timeout",
            ShutdownCause::PlayoutGuard => "playout_guard",
            ShutdownCause::MaxDuration => "max_duration",
            ShutdownCause::SilenceTimeout => "silence_timeout",
        }
    }
}

/// What the worker is told to do.
///
/// `WindUp` and `Remind` carry the limit they lead up to as a [`ShutdownCause`]:
/// `MaxDuration` (the maximum call duration) or `SilenceTimeout` (the silence ladder).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Directive {
    ShutdownSession {
        cause: ShutdownCause,
    },
    DeleteRoom,
    ShutdownJob {
        reason: CloseReason,
    },
    /// A limit was reached: ask the agent to say goodbye and end the call. Its instructions
    /// are the server's, for that limit.
    WindUp {
        cause: ShutdownCause,
    },
    /// Have the agent say something: a silence reminder, or a warning before the time limit.
    Remind {
        cause: ShutdownCause,
        instructions: ArcStr,
    },
}

impl Directive {
    /// Its name in logs and metric labels.
    pub const fn kind(&self) -> &'static str {
        match self {
            Directive::ShutdownSession { .. } => "shutdown_session",
            Directive::DeleteRoom => "delete_room",
            Directive::ShutdownJob { .. } => "shutdown_job",
            Directive::WindUp { .. } => "wind_up",
            Directive::Remind { .. } => "remind",
        }
    }

    /// Every kind's name, as [`Directive::kind`] gives it.
    pub const KINDS: [&'static str; 5] = [
        "shutdown_session",
        "delete_room",
        "shutdown_job",
        "wind_up",
        "remind",
    ];
}

/// Longest session or speech id, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Why an id is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdProblem {
    #[error("is required")]
    Missing,
    #[error("is {0} bytes, the limit is {MAX_ID_BYTES}")]
    TooLong(usize),
    #[error("must not contain control characters")]
    ControlCharacter,
}

/// A session or speech id must be present, bounded, and printable (ids end up in logs).
pub fn check_id(raw: &str) -> Result<(), IdProblem> {
    if raw.is_empty() {
        Err(IdProblem::Missing)
    } else if raw.len() > MAX_ID_BYTES {
        Err(IdProblem::TooLong(raw.len()))
    } else if raw.chars().any(char::is_control) {
        Err(IdProblem::ControlCharacter)
    } else {
        Ok(())
    }
}

/// Longest free text (`end_instructions`, `extra_description`, `error_message`), in bytes.
pub const MAX_TEXT_BYTES: usize = 4096;
/// Longest instructions of a `REMIND` (a silence reminder's, a time-limit warning's), in bytes:
/// every `REMIND` a session can issue must fit in one HTTP/2 window (below).
pub const MAX_INSTRUCTIONS_BYTES: usize = 1024;
/// Longest maximum call duration a session may ask for.
pub const MAX_CALL_DURATION: Duration = Duration::from_secs(24 * 3600);
/// The largest reply timeout a request or flag may set.
pub const MAX_REPLY_TIMEOUT: Duration = Duration::from_secs(600);
/// The largest silence timeout and silence reminder interval a request or flag may set.
pub const MAX_SILENCE: Duration = Duration::from_secs(3600);
/// The most silence reminders per silence a request or flag may ask for.
pub const MAX_SILENCE_REMINDERS: u8 = 10;
/// The most time-limit warnings a session may have.
pub const MAX_WARNINGS: usize = 8;

/// The most `REMIND`s one session issues, silence reminders and time-limit warnings together.
/// Silence starts again each time the user speaks, so without it a long call could issue them
/// without end; past it, no more are issued (the silence timeout still applies).
pub const MAX_REMINDS_PER_SESSION: usize = 32;

/// The most directives one session can issue: `SHUTDOWN_SESSION`, `WIND_UP`, `DELETE_ROOM` and
/// `SHUTDOWN_JOB` at most once each, and [`MAX_REMINDS_PER_SESSION`] `REMIND`s. A watch stream
/// therefore never carries more: 44,316 bytes even if all 36 were as long as a `REMIND` can be
/// (1,024 bytes of instructions, a 128-byte session id, the gRPC and HTTP/2 framing; a test of
/// the codec checks it), less than the smallest HTTP/2 window (65,535 bytes), so a client
/// that stops reading cannot keep a stream from ending.
pub const MAX_DIRECTIVES_PER_SESSION: usize = 4 + MAX_REMINDS_PER_SESSION;

/// A directive as issued: numbered and timed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedDirective {
    pub seq: u64,
    pub at: Time,
    pub directive: Directive,
}

/// `{"seq":..,"at":..,"kind":..}` plus the kind's own field: the shape `report/json.rs`
/// writes, as the tests' oracle.
#[cfg(any(test, feature = "serde"))]
impl Serialize for IssuedDirective {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("seq", &self.seq)?;
        map.serialize_entry("at", &self.at)?;
        map.serialize_entry("kind", self.directive.kind())?;
        match &self.directive {
            Directive::ShutdownSession { cause } | Directive::WindUp { cause } => {
                map.serialize_entry("cause", cause)?;
            }
            Directive::Remind {
                cause,
                instructions,
            } => {
                map.serialize_entry("cause", cause)?;
                map.serialize_entry("instructions", instructions)?;
            }
            Directive::ShutdownJob { reason } => map.serialize_entry("reason", reason)?,
            Directive::DeleteRoom => {}
        }
        map.end()
    }
}

/// The contract's states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(any(test, feature = "serde"), derive(Serialize))]
#[cfg_attr(any(test, feature = "serde"), serde(rename_all = "snake_case"))]
pub enum State {
    Active,
    Ending,
    AwaitingReply,
    PlayingReply,
    ShuttingDown,
    Closed,
}

impl State {
    pub const ALL: [State; 6] = [
        State::Active,
        State::Ending,
        State::AwaitingReply,
        State::PlayingReply,
        State::ShuttingDown,
        State::Closed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Ending => "ending",
            State::AwaitingReply => "awaiting_reply",
            State::PlayingReply => "playing_reply",
            State::ShuttingDown => "shutting_down",
            State::Closed => "closed",
        }
    }
}

/// How a session ended, for the report and the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(any(test, feature = "serde"), derive(Serialize))]
#[cfg_attr(any(test, feature = "serde"), serde(rename_all = "snake_case"))]
pub enum Outcome {
    /// `SHUTDOWN_SESSION` was issued for this cause.
    Shutdown(ShutdownCause),
    /// Closed after end_call, before the sidecar issued `SHUTDOWN_SESSION`.
    ClosedDuringEndCall,
    ClosedWithoutEndCall,
    /// No event for the idle expiry: the worker went away without closing.
    Expired,
    /// An attended session's worker was gone for the worker-lost window before any
    /// `SHUTDOWN_SESSION`: the sidecar closed the session and tore the call down.
    WorkerLost,
}

impl Outcome {
    pub const ALL: [Outcome; 10] = [
        Outcome::Shutdown(ShutdownCause::ToolTurnDone),
        Outcome::Shutdown(ShutdownCause::ReplyPlayedOut),
        Outcome::Shutdown(ShutdownCause::ReplyTimeout),
        Outcome::Shutdown(ShutdownCause::PlayoutGuard),
        Outcome::Shutdown(ShutdownCause::MaxDuration),
        Outcome::Shutdown(ShutdownCause::SilenceTimeout),
        Outcome::ClosedDuringEndCall,
        Outcome::ClosedWithoutEndCall,
        Outcome::Expired,
        Outcome::WorkerLost,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Shutdown(cause) => cause.as_str(),
            Outcome::ClosedDuringEndCall => "closed_during_end_call",
            Outcome::ClosedWithoutEndCall => "closed_without_end_call",
            Outcome::Expired => "expired",
            Outcome::WorkerLost => "worker_lost",
        }
    }
}

/// Why a call ended, in one value a dashboard can group by (`docs/contract.md`, ended
/// reason). Known once the session is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(any(test, feature = "serde"), derive(Serialize))]
#[cfg_attr(any(test, feature = "serde"), serde(rename_all = "snake_case"))]
pub enum EndedReason {
    /// The agent's LLM called end_call on its own.
    AgentEndCall,
    /// The agent called end_call after the sidecar's `WIND_UP`.
    AgentWindUp,
    /// The worker closed the session before any end_call, for its own reasons
    /// (`user_initiated`, `task_completed`).
    AgentClosed,
    /// The participant disconnected before any end_call.
    UserHangup,
    SilenceTimeout,
    MaxDuration,
    /// Closed with `error` before `SHUTDOWN_SESSION`.
    Error,
    /// Closed with `job_shutdown` before any end_call.
    JobShutdown,
    /// Expired idle: its worker vanished with no stream.
    Expired,
    /// Its worker was lost, and the sidecar tore the call down.
    WorkerLost,
}

impl EndedReason {
    pub const ALL: [EndedReason; 10] = [
        EndedReason::AgentEndCall,
        EndedReason::AgentWindUp,
        EndedReason::AgentClosed,
        EndedReason::UserHangup,
        EndedReason::SilenceTimeout,
        EndedReason::MaxDuration,
        EndedReason::Error,
        EndedReason::JobShutdown,
        EndedReason::Expired,
        EndedReason::WorkerLost,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            EndedReason::AgentEndCall => "agent_end_call",
            EndedReason::AgentWindUp => "agent_wind_up",
            EndedReason::AgentClosed => "agent_closed",
            EndedReason::UserHangup => "user_hangup",
            EndedReason::SilenceTimeout => "silence_timeout",
            EndedReason::MaxDuration => "max_duration",
            EndedReason::Error => "error",
            EndedReason::JobShutdown => "job_shutdown",
            EndedReason::Expired => "expired",
            EndedReason::WorkerLost => "worker_lost",
        }
    }
}

/// Why the sidecar tore a call down itself, because its worker could not end it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(any(test, feature = "serde"), derive(Serialize))]
#[cfg_attr(any(test, feature = "serde"), serde(rename_all = "snake_case"))]
pub enum TeardownCause {
    /// An attended session held no watch stream and sent no event for the worker-lost window.
    WorkerLost,
    /// No close came within the close deadline after `SHUTDOWN_SESSION`.
    CloseDeadline,
}

impl TeardownCause {
    pub const ALL: [TeardownCause; 2] = [TeardownCause::WorkerLost, TeardownCause::CloseDeadline];

    pub const fn as_str(self) -> &'static str {
        match self {
            TeardownCause::WorkerLost => "worker_lost",
            TeardownCause::CloseDeadline => "close_deadline",
        }
    }
}

/// What a teardown did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(any(test, feature = "serde"), derive(Serialize))]
#[cfg_attr(any(test, feature = "serde"), serde(rename_all = "snake_case"))]
pub enum TeardownResult {
    /// LiveKit deleted the room, which hangs up every participant.
    RoomDeleted,
    /// The room was already gone.
    RoomAlreadyGone,
    /// The session's `delete_room` is off: the worker wanted the room kept.
    RoomKept,
    /// The session named no room: there was nothing to hang up.
    NoRoom,
    /// The sidecar has no LiveKit configuration: the call could not be hung up.
    NotConfigured,
    /// LiveKit refused, or could not be reached in time.
    Failed,
}

impl TeardownResult {
    pub const ALL: [TeardownResult; 6] = [
        TeardownResult::RoomDeleted,
        TeardownResult::RoomAlreadyGone,
        TeardownResult::RoomKept,
        TeardownResult::NoRoom,
        TeardownResult::NotConfigured,
        TeardownResult::Failed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            TeardownResult::RoomDeleted => "room_deleted",
            TeardownResult::RoomAlreadyGone => "room_already_gone",
            TeardownResult::RoomKept => "room_kept",
            TeardownResult::NoRoom => "no_room",
            TeardownResult::NotConfigured => "not_configured",
            TeardownResult::Failed => "failed",
        }
    }

    /// Whether the call's phone leg is known to be hung up (or was meant to stay).
    pub const fn succeeded(self) -> bool {
        matches!(
            self,
            TeardownResult::RoomDeleted
                | TeardownResult::RoomAlreadyGone
                | TeardownResult::RoomKept
        )
    }
}

/// How a teardown that needed LiveKit ended: what the registry hands back to the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TeardownDone {
    pub result: TeardownResult,
    /// Requests made to LiveKit.
    pub attempts: u32,
    /// Why it failed, for [`TeardownResult::Failed`].
    pub error: Option<String>,
}

/// A room to delete because the sidecar tore its call down: what the machine asks of the
/// layers around it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TeardownOrder {
    pub session: SessionId,
    pub room: RoomName,
    pub cause: TeardownCause,
    pub decided_at: Time,
}

/// A LiveKit room name, as the worker gave it.
///
/// One pointer wide, like [`SessionId`]: every attended session holds one inline.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(any(test, feature = "serde"), derive(Serialize))]
#[cfg_attr(any(test, feature = "serde"), serde(transparent))]
pub struct RoomName(ArcStr);

impl RoomName {
    pub fn new(name: &str) -> Self {
        Self(ArcStr::from(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Longest room name, in bytes (LiveKit's own names are far shorter).
pub const MAX_ROOM_BYTES: usize = 256;

/// Why a room name is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoomProblem {
    #[error("is {0} bytes, the limit is {MAX_ROOM_BYTES}")]
    TooLong(usize),
    #[error("must not contain control characters")]
    ControlCharacter,
}

/// A room name is optional (empty means none), bounded and printable: it ends up in logs and
/// in a request to LiveKit.
pub fn check_room(raw: &str) -> Result<(), RoomProblem> {
    if raw.len() > MAX_ROOM_BYTES {
        Err(RoomProblem::TooLong(raw.len()))
    } else if raw.chars().any(char::is_control) {
        Err(RoomProblem::ControlCharacter)
    } else {
        Ok(())
    }
}

/// An event the worker reports (the registry adds none of its own: timers call
/// [`crate::machine::Session::on_time`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Open {
        options: Option<Arc<Options>>,
        max_duration: Option<Duration>,
        /// The LiveKit room of the call; the first one given is kept.
        room: Option<RoomName>,
        /// Warnings before `max_duration` (empty: none), in any order.
        warnings: Vec<Warning>,
    },
    EndCall {
        speech: SpeechId,
        options: Option<Arc<Options>>,
        capabilities: Capabilities,
    },
    SpeechCreated {
        speech: SpeechId,
    },
    SpeechDone {
        speech: SpeechId,
        interrupted: bool,
        capabilities: Capabilities,
        tool_output_given: Option<bool>,
    },
    SessionClose {
        reason: CloseReason,
        error: Option<String>,
    },
    /// The user spoke (a final transcript with words): the silence starts again.
    UserSpeech,
}

/// A duration in whole milliseconds, the unit people read in reports.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Serde's view of [`millis`], for the tests' oracle of the report's JSON.
#[cfg(any(test, feature = "serde"))]
pub(crate) mod duration_ms {
    use std::time::Duration;

    use serde::Serializer;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(super::millis(*d))
    }
}

/// Serde's view of an optional duration in milliseconds (`null` for none).
#[cfg(any(test, feature = "serde"))]
pub(crate) fn opt_duration_ms<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => duration_ms::serialize(d, s),
        None => s.serialize_none(),
    }
}
