"""In-process copy of the sidecar's decisions, used only when the sidecar cannot be reached.

It follows the end-call contract's table for the events a worker reports and issues the same
directives (without sequence numbers or the sidecar's extensions beyond dedupe), so a call still
ends the way LiveKit's own EndCallTool would end it when the sidecar is down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from .types import DirectiveKind, ShutdownCause

__all__ = ["LocalDirective", "LocalEngine"]


@dataclass(frozen=True)
class LocalDirective:
    kind: DirectiveKind
    cause: ShutdownCause = ShutdownCause.UNSPECIFIED
    reason: str = ""


@dataclass
class _Waiter:
    """Realtime branch: waits for the tool reply to be created, then for it to be done."""

    timer: asyncio.TimerHandle | None = None
    reply_speech: str | None = None


@dataclass
class _ToolSpeech:
    output_given: bool
    done: bool = False


@dataclass
class LocalEngine:
    emit: Callable[[LocalDirective], None]
    delete_room: bool = True
    output_given_default: bool = True
    reply_timeout: float = 5.0
    realtime: bool = False
    auto_tool_reply: bool = False
    end_called: bool = False
    shutdown_issued: bool = False
    closed: bool = False
    close_directives: list[LocalDirective] = field(default_factory=list)
    _tool_speeches: dict[str, _ToolSpeech] = field(default_factory=dict)
    _done: set[str] = field(default_factory=set)
    _waiters: list[_Waiter] = field(default_factory=list)

    def _issue(self, d: LocalDirective) -> None:
        self.emit(d)

    def _shutdown(self, cause: ShutdownCause) -> None:
        if self.shutdown_issued or self.closed:
            return
        self.shutdown_issued = True
        self._cancel_waiters()
        self._issue(LocalDirective(DirectiveKind.SHUTDOWN_SESSION, cause=cause))

    def _cancel_waiters(self) -> None:
        for w in self._waiters:
            if w.timer is not None:
                w.timer.cancel()
        self._waiters.clear()

    def _caps(self, realtime: bool | None, auto: bool | None) -> None:
        if realtime is not None:
            self.realtime = realtime
        if auto is not None:
            self.auto_tool_reply = auto

    def _tool_turn_done(self, speech_id: str) -> None:
        ts = self._tool_speeches[speech_id]
        ts.done = True
        if self.shutdown_issued or self.closed:
            return
        if not self.realtime or not self.auto_tool_reply or not ts.output_given:
            self._shutdown(ShutdownCause.TOOL_TURN_DONE)
            return
        w = _Waiter()
        loop = asyncio.get_running_loop()
        w.timer = loop.call_later(self.reply_timeout, self._on_deadline, w)
        self._waiters.append(w)

    def _on_deadline(self, w: _Waiter) -> None:
        w.timer = None
        if w in self._waiters and w.reply_speech is None:
            self._shutdown(ShutdownCause.REPLY_TIMEOUT)

    # events -------------------------------------------------------------------------------

    def end_call(
        self,
        speech_id: str,
        *,
        output_given: bool | None = None,
        realtime: bool | None = None,
        auto_tool_reply: bool | None = None,
    ) -> None:
        if self.closed:
            return
        self.end_called = True
        self._caps(realtime, auto_tool_reply)
        if speech_id in self._tool_speeches:
            return
        self._tool_speeches[speech_id] = _ToolSpeech(
            output_given=self.output_given_default if output_given is None else output_given
        )
        if speech_id in self._done:
            self._tool_turn_done(speech_id)

    def speech_created(self, speech_id: str) -> None:
        if self.closed or self.shutdown_issued:
            return
        for w in self._waiters:
            if w.reply_speech is None:
                w.reply_speech = speech_id
                if w.timer is not None:
                    w.timer.cancel()
                    w.timer = None

    def speech_done(
        self,
        speech_id: str,
        *,
        realtime: bool | None = None,
        auto_tool_reply: bool | None = None,
        tool_output_given: bool | None = None,
    ) -> None:
        if speech_id in self._done:
            return
        self._done.add(speech_id)
        if self.closed:
            return
        ts = self._tool_speeches.get(speech_id)
        if ts is not None:
            self._caps(realtime, auto_tool_reply)
            if tool_output_given is not None:
                ts.output_given = tool_output_given
        if any(w.reply_speech == speech_id for w in self._waiters):
            self._shutdown(ShutdownCause.REPLY_PLAYED_OUT)
        if ts is not None and not ts.done:
            self._tool_turn_done(speech_id)

    def session_close(self, reason: str) -> list[LocalDirective]:
        if self.closed:
            return list(self.close_directives)
        self.closed = True
        self._cancel_waiters()
        out: list[LocalDirective] = []
        if self.end_called:
            if self.delete_room:
                out.append(LocalDirective(DirectiveKind.DELETE_ROOM))
            out.append(LocalDirective(DirectiveKind.SHUTDOWN_JOB, reason=reason))
        self.close_directives = out
        for d in out:
            self._issue(d)
        return out
