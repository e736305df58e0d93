"""Typed views of the sidecar's messages.

The enums take their values from the generated protobuf module, so a change in the proto that
renames or renumbers a value fails at import time instead of drifting silently.
"""

from __future__ import annotations

import datetime as _dt
import enum
from dataclasses import dataclass, field
from typing import Final, Union

from ._proto.endcall.v1 import endcall_pb2 as pb

__all__ = [
    "UNSET",
    "Unset",
    "CloseReason",
    "DirectiveKind",
    "ShutdownCause",
    "SessionState",
    "Outcome",
    "EndedReason",
    "TimeLimitWarning",
    "Directive",
    "EventResult",
    "EndCallResult",
    "SessionOptions",
    "ModelCapabilities",
    "ToolDefinition",
    "ResolvedOptions",
    "OpenSessionResult",
    "SessionReport",
    "TimelineEntry",
]


class Unset(enum.Enum):
    """Marker for an option left to the sidecar's default (distinct from ``None``)."""

    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Final = Unset.UNSET


class CloseReason(enum.IntEnum):
    UNSPECIFIED = pb.CLOSE_REASON_UNSPECIFIED
    ERROR = pb.CLOSE_REASON_ERROR
    JOB_SHUTDOWN = pb.CLOSE_REASON_JOB_SHUTDOWN
    PARTICIPANT_DISCONNECTED = pb.CLOSE_REASON_PARTICIPANT_DISCONNECTED
    USER_INITIATED = pb.CLOSE_REASON_USER_INITIATED
    TASK_COMPLETED = pb.CLOSE_REASON_TASK_COMPLETED

    @property
    def value_str(self) -> str:
        """The lower-case string LiveKit Agents uses (``"user_initiated"``, ...)."""
        return self.name.lower()

    @classmethod
    def parse(cls, reason: "str | enum.Enum | int | CloseReason") -> "CloseReason":
        """Accepts a CloseReason, LiveKit's ``CloseReason`` enum, its string value or an int."""
        if isinstance(reason, CloseReason):
            return reason
        if isinstance(reason, enum.Enum):
            reason = reason.value
        if isinstance(reason, int):
            return cls(reason)
        try:
            return cls[str(reason).upper()]
        except KeyError:
            raise ValueError(f"unknown close reason: {reason!r}") from None


class DirectiveKind(enum.IntEnum):
    UNSPECIFIED = pb.DIRECTIVE_KIND_UNSPECIFIED
    SHUTDOWN_SESSION = pb.DIRECTIVE_KIND_SHUTDOWN_SESSION
    DELETE_ROOM = pb.DIRECTIVE_KIND_DELETE_ROOM
    SHUTDOWN_JOB = pb.DIRECTIVE_KIND_SHUTDOWN_JOB
    WIND_UP = pb.DIRECTIVE_KIND_WIND_UP
    REMIND = pb.DIRECTIVE_KIND_REMIND


class ShutdownCause(enum.IntEnum):
    UNSPECIFIED = pb.SHUTDOWN_CAUSE_UNSPECIFIED
    TOOL_TURN_DONE = pb.SHUTDOWN_CAUSE_TOOL_TURN_DONE
    REPLY_PLAYED_OUT = pb.SHUTDOWN_CAUSE_REPLY_PLAYED_OUT
    REPLY_TIMEOUT = pb.SHUTDOWN_CAUSE_REPLY_TIMEOUT
    PLAYOUT_GUARD = pb.SHUTDOWN_CAUSE_PLAYOUT_GUARD
    MAX_DURATION = pb.SHUTDOWN_CAUSE_MAX_DURATION
    SILENCE_TIMEOUT = pb.SHUTDOWN_CAUSE_SILENCE_TIMEOUT


class SessionState(enum.IntEnum):
    UNSPECIFIED = pb.SESSION_STATE_UNSPECIFIED
    ACTIVE = pb.SESSION_STATE_ACTIVE
    ENDING = pb.SESSION_STATE_ENDING
    AWAITING_REPLY = pb.SESSION_STATE_AWAITING_REPLY
    PLAYING_REPLY = pb.SESSION_STATE_PLAYING_REPLY
    SHUTTING_DOWN = pb.SESSION_STATE_SHUTTING_DOWN
    CLOSED = pb.SESSION_STATE_CLOSED


class Outcome(enum.IntEnum):
    UNSPECIFIED = pb.OUTCOME_UNSPECIFIED
    TOOL_TURN_DONE = pb.OUTCOME_TOOL_TURN_DONE
    REPLY_PLAYED_OUT = pb.OUTCOME_REPLY_PLAYED_OUT
    REPLY_TIMEOUT = pb.OUTCOME_REPLY_TIMEOUT
    PLAYOUT_GUARD = pb.OUTCOME_PLAYOUT_GUARD
    MAX_DURATION = pb.OUTCOME_MAX_DURATION
    CLOSED_DURING_END_CALL = pb.OUTCOME_CLOSED_DURING_END_CALL
    CLOSED_WITHOUT_END_CALL = pb.OUTCOME_CLOSED_WITHOUT_END_CALL
    EXPIRED = pb.OUTCOME_EXPIRED
    WORKER_LOST = pb.OUTCOME_WORKER_LOST
    SILENCE_TIMEOUT = pb.OUTCOME_SILENCE_TIMEOUT


class EndedReason(enum.IntEnum):
    """Why a call ended, in one value a dashboard groups by (docs/contract.md, ended reason)."""

    UNSPECIFIED = pb.ENDED_REASON_UNSPECIFIED
    AGENT_END_CALL = pb.ENDED_REASON_AGENT_END_CALL
    AGENT_WIND_UP = pb.ENDED_REASON_AGENT_WIND_UP
    AGENT_CLOSED = pb.ENDED_REASON_AGENT_CLOSED
    USER_HANGUP = pb.ENDED_REASON_USER_HANGUP
    SILENCE_TIMEOUT = pb.ENDED_REASON_SILENCE_TIMEOUT
    MAX_DURATION = pb.ENDED_REASON_MAX_DURATION
    ERROR = pb.ENDED_REASON_ERROR
    JOB_SHUTDOWN = pb.ENDED_REASON_JOB_SHUTDOWN
    EXPIRED = pb.ENDED_REASON_EXPIRED
    WORKER_LOST = pb.ENDED_REASON_WORKER_LOST


class TeardownCause(enum.IntEnum):
    """Why the sidecar ended a call itself."""

    UNSPECIFIED = pb.TEARDOWN_CAUSE_UNSPECIFIED
    WORKER_LOST = pb.TEARDOWN_CAUSE_WORKER_LOST
    CLOSE_DEADLINE = pb.TEARDOWN_CAUSE_CLOSE_DEADLINE


class TeardownResult(enum.IntEnum):
    """What the sidecar's teardown did; UNSPECIFIED while LiveKit is being asked."""

    UNSPECIFIED = pb.TEARDOWN_RESULT_UNSPECIFIED
    ROOM_DELETED = pb.TEARDOWN_RESULT_ROOM_DELETED
    ROOM_ALREADY_GONE = pb.TEARDOWN_RESULT_ROOM_ALREADY_GONE
    ROOM_KEPT = pb.TEARDOWN_RESULT_ROOM_KEPT
    NO_ROOM = pb.TEARDOWN_RESULT_NO_ROOM
    NOT_CONFIGURED = pb.TEARDOWN_RESULT_NOT_CONFIGURED
    FAILED = pb.TEARDOWN_RESULT_FAILED


def _ts(msg, has: bool = True) -> _dt.datetime | None:
    if not has:
        return None
    return msg.ToDatetime(tzinfo=_dt.timezone.utc)


def _dur(msg, has: bool = True) -> float | None:
    if not has:
        return None
    return msg.ToTimedelta().total_seconds()


def _enum(cls, value):
    try:
        return cls(value)
    except ValueError:  # a value added to the proto after this client was built
        return value


@dataclass(frozen=True)
class Directive:
    """Something the worker must carry out, exactly once per ``seq``."""

    seq: int
    kind: DirectiveKind
    session_id: str
    cause: ShutdownCause = ShutdownCause.UNSPECIFIED
    reason: str = ""
    instructions: str = ""
    issued_at: _dt.datetime | None = None

    @classmethod
    def from_proto(cls, m: pb.Directive) -> "Directive":
        return cls(
            seq=m.seq,
            kind=_enum(DirectiveKind, m.kind),
            session_id=m.session_id,
            cause=_enum(ShutdownCause, m.cause),
            reason=m.reason,
            instructions=m.instructions,
            issued_at=_ts(m.issued_at, m.HasField("issued_at")),
        )


@dataclass(frozen=True)
class EventResult:
    """The reply to OnSpeechCreated, OnSpeechDone, OnUserSpeech or OnSessionClose (each RPC
    has its own message in the proto; OnUserSpeech's has no ``duplicate``, which reads False)."""

    directives: tuple[Directive, ...]
    state: SessionState
    duplicate: bool

    @classmethod
    def from_proto(
        cls,
        m: (
            pb.OnSpeechCreatedResponse
            | pb.OnSpeechDoneResponse
            | pb.OnUserSpeechResponse
            | pb.OnSessionCloseResponse
        ),
    ) -> "EventResult":
        return cls(
            directives=tuple(Directive.from_proto(d) for d in m.directives),
            state=_enum(SessionState, m.state),
            duplicate=bool(getattr(m, "duplicate", False)),
        )


@dataclass(frozen=True)
class TimeLimitWarning:
    """A warning before the call's maximum duration: ``before`` seconds before it, the agent
    is reminded with ``instructions`` (a REMIND directive)."""

    before: float
    instructions: str

    def to_proto(self) -> pb.TimeLimitWarning:
        m = pb.TimeLimitWarning(instructions=self.instructions)
        m.before.FromTimedelta(_dt.timedelta(seconds=float(self.before)))
        return m

    @classmethod
    def from_proto(cls, m: pb.TimeLimitWarning) -> "TimeLimitWarning":
        return cls(before=_dur(m.before) or 0.0, instructions=m.instructions)


@dataclass(frozen=True)
class EndCallResult:
    tool_output: str | None
    """What the tool returns to the LLM; ``None`` means no output (no reply asked for)."""
    directives: tuple[Directive, ...]
    state: SessionState
    duplicate: bool

    @classmethod
    def from_proto(cls, m: pb.EndCallResponse) -> "EndCallResult":
        return cls(
            tool_output=m.tool_output if m.HasField("tool_output") else None,
            directives=tuple(Directive.from_proto(d) for d in m.directives),
            state=_enum(SessionState, m.state),
            duplicate=m.duplicate,
        )


@dataclass(frozen=True)
class SessionOptions:
    """Per-session options; every field left UNSET falls back to the sidecar's default."""

    delete_room: bool | Unset = UNSET
    end_instructions: str | None | Unset = UNSET
    """A text, ``None`` (no reply asked for) or UNSET (the sidecar's default)."""
    extra_description: str | Unset = UNSET
    ignore_on_enter: bool | Unset = UNSET
    reply_timeout: float | Unset = UNSET
    """Seconds."""
    early_reply_capture: bool | Unset = UNSET
    silence_timeout: float | None | Unset = UNSET
    """Seconds of the user's silence before the call is wound up; ``None`` (or 0) turns the
    silence ladder off."""
    silence_reminder_after: float | Unset = UNSET
    """Seconds: reminder i comes at i times this much silence."""
    silence_reminders: int | Unset = UNSET
    silence_reminder_instructions: str | Unset = UNSET

    def to_proto(self) -> pb.SessionOptions:
        m = pb.SessionOptions()
        if self.delete_room is not UNSET:
            m.delete_room = bool(self.delete_room)
        if self.end_instructions is None:
            m.end_instructions.none = True
        elif self.end_instructions is not UNSET:
            m.end_instructions.text = self.end_instructions
        if self.extra_description is not UNSET:
            m.extra_description = self.extra_description
        if self.ignore_on_enter is not UNSET:
            m.ignore_on_enter = bool(self.ignore_on_enter)
        if self.reply_timeout is not UNSET:
            m.reply_timeout.FromTimedelta(_dt.timedelta(seconds=float(self.reply_timeout)))
        if self.early_reply_capture is not UNSET:
            m.early_reply_capture = bool(self.early_reply_capture)
        if self.silence_timeout is not UNSET:
            seconds = float(self.silence_timeout or 0)
            m.silence_timeout.FromTimedelta(_dt.timedelta(seconds=seconds))
        if self.silence_reminder_after is not UNSET:
            seconds = float(self.silence_reminder_after)
            m.silence_reminder_after.FromTimedelta(_dt.timedelta(seconds=seconds))
        if self.silence_reminders is not UNSET:
            m.silence_reminders = int(self.silence_reminders)
        if self.silence_reminder_instructions is not UNSET:
            m.silence_reminder_instructions = self.silence_reminder_instructions
        return m


@dataclass(frozen=True)
class ModelCapabilities:
    realtime: bool | None = None
    auto_tool_reply: bool | None = None

    def to_proto(self) -> pb.ModelCapabilities:
        m = pb.ModelCapabilities()
        if self.realtime is not None:
            m.realtime = self.realtime
        if self.auto_tool_reply is not None:
            m.auto_tool_reply = self.auto_tool_reply
        return m

    @classmethod
    def from_proto(cls, m: pb.ModelCapabilities) -> "ModelCapabilities":
        return cls(
            realtime=m.realtime if m.HasField("realtime") else None,
            auto_tool_reply=m.auto_tool_reply if m.HasField("auto_tool_reply") else None,
        )


@dataclass(frozen=True)
class ToolDefinition:
    name: str
    description: str
    parameters_json_schema: str
    ignore_on_enter: bool

    @classmethod
    def from_proto(cls, m: pb.ToolDefinition) -> "ToolDefinition":
        return cls(m.name, m.description, m.parameters_json_schema, m.ignore_on_enter)


@dataclass(frozen=True)
class ResolvedOptions:
    delete_room: bool
    end_instructions: str | None
    extra_description: str
    ignore_on_enter: bool
    reply_timeout: float
    early_reply_capture: bool
    max_duration: float | None
    silence_timeout: float | None = None
    """``None``: the silence ladder is off."""
    silence_reminder_after: float = 0.0
    silence_reminders: int = 0
    silence_reminder_instructions: str = ""
    max_duration_warnings: tuple[TimeLimitWarning, ...] = ()
    """In time order."""

    @classmethod
    def from_proto(cls, m: pb.ResolvedOptions) -> "ResolvedOptions":
        return cls(
            delete_room=m.delete_room,
            end_instructions=m.end_instructions if m.HasField("end_instructions") else None,
            extra_description=m.extra_description,
            ignore_on_enter=m.ignore_on_enter,
            reply_timeout=_dur(m.reply_timeout) or 0.0,
            early_reply_capture=m.early_reply_capture,
            max_duration=_dur(m.max_duration, m.HasField("max_duration")),
            silence_timeout=_dur(m.silence_timeout, m.HasField("silence_timeout")),
            silence_reminder_after=_dur(m.silence_reminder_after) or 0.0,
            silence_reminders=m.silence_reminders,
            silence_reminder_instructions=m.silence_reminder_instructions,
            max_duration_warnings=tuple(
                TimeLimitWarning.from_proto(w) for w in m.max_duration_warnings
            ),
        )


@dataclass(frozen=True)
class OpenSessionResult:
    state: SessionState
    options: ResolvedOptions


@dataclass(frozen=True)
class TimelineEntry:
    at: _dt.datetime | None
    event: str | None = None
    directive: Directive | None = None


@dataclass(frozen=True)
class SessionReport:
    session_id: str
    state: SessionState
    options: ResolvedOptions
    capabilities: ModelCapabilities
    outcome: Outcome
    close_reason: CloseReason
    created_at: _dt.datetime | None
    end_call_at: _dt.datetime | None
    shutdown_at: _dt.datetime | None
    closed_at: _dt.datetime | None
    goodbye_duration: float | None
    timeline: tuple[TimelineEntry, ...]
    timeline_dropped: int
    directives: tuple[Directive, ...]
    room: str = ""
    attended: bool = False
    teardown: "Teardown | None" = None
    raw: pb.SessionReport = field(default_factory=pb.SessionReport, repr=False, compare=False)
    ended_reason: EndedReason = EndedReason.UNSPECIFIED
    """Why the call ended; UNSPECIFIED until the session is closed."""

    @classmethod
    def from_proto(cls, m: pb.SessionReport) -> "SessionReport":
        timeline = []
        for e in m.timeline:
            which = e.WhichOneof("entry")
            timeline.append(
                TimelineEntry(
                    at=_ts(e.at, e.HasField("at")),
                    event=e.event if which == "event" else None,
                    directive=Directive.from_proto(e.directive) if which == "directive" else None,
                )
            )
        return cls(
            session_id=m.session_id,
            state=_enum(SessionState, m.state),
            options=ResolvedOptions.from_proto(m.options),
            capabilities=ModelCapabilities.from_proto(m.capabilities),
            outcome=_enum(Outcome, m.outcome),
            close_reason=_enum(CloseReason, m.close_reason),
            created_at=_ts(m.created_at, m.HasField("created_at")),
            end_call_at=_ts(m.end_call_at, m.HasField("end_call_at")),
            shutdown_at=_ts(m.shutdown_at, m.HasField("shutdown_at")),
            closed_at=_ts(m.closed_at, m.HasField("closed_at")),
            goodbye_duration=_dur(m.goodbye_duration, m.HasField("goodbye_duration")),
            timeline=tuple(timeline),
            timeline_dropped=m.timeline_dropped,
            directives=tuple(Directive.from_proto(d) for d in m.directives),
            room=m.room,
            attended=m.attended,
            teardown=Teardown.from_proto(m.teardown) if m.HasField("teardown") else None,
            raw=m,
            ended_reason=_enum(EndedReason, m.ended_reason),
        )


@dataclass(frozen=True)
class Teardown:
    """The sidecar ending a call itself because its worker could not."""

    cause: TeardownCause
    decided_at: _dt.datetime | None
    result: TeardownResult
    attempts: int
    finished_at: _dt.datetime | None
    error: str

    @classmethod
    def from_proto(cls, m: pb.Teardown) -> "Teardown":
        return cls(
            cause=_enum(TeardownCause, m.cause),
            decided_at=_ts(m.decided_at, m.HasField("decided_at")),
            result=_enum(TeardownResult, m.result),
            attempts=m.attempts,
            finished_at=_ts(m.finished_at, m.HasField("finished_at")),
            error=m.error,
        )


CloseReasonLike = Union[CloseReason, str, int, enum.Enum]
