"""Fakes for the agent session, its activity and the job context.

They record what a tool makes the agent do, in order, so LiveKit's EndCallTool and
SidecarEndCallTool can be compared step by step. Speech handles are LiveKit's real
``SpeechHandle`` objects, driven through their own done/interrupt paths.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from livekit import rtc
from livekit.agents.llm import RealtimeCapabilities, RealtimeModel
from livekit.agents.voice.events import CloseEvent, CloseReason, SpeechCreatedEvent
from livekit.agents.voice.speech_handle import SpeechHandle


class Recorder:
    """Collects actions; ``raw`` keeps every call, ``actions`` only the ones with an effect."""

    def __init__(self) -> None:
        self.actions: list[tuple] = []
        self.raw: list[tuple] = []

    def add(self, *action: Any, effective: bool = True) -> None:
        self.raw.append(action)
        if effective:
            self.actions.append(action)

    def mark(self) -> int:
        return len(self.actions)

    def since(self, mark: int) -> list[tuple]:
        return list(self.actions[mark:])


class FakeRealtimeModel(RealtimeModel):
    def __init__(self, auto_tool_reply: bool) -> None:
        super().__init__(
            capabilities=RealtimeCapabilities(
                message_truncation=True,
                turn_detection=True,
                user_transcription=True,
                auto_tool_reply_generation=auto_tool_reply,
                audio_output=True,
                manual_function_calls=False,
            )
        )

    def session(self) -> Any:  # never used: the fake activity has its own session
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


class FakePipelineLLM:
    """Anything that is not a RealtimeModel counts as a pipeline LLM."""


class FakeActivity:
    def __init__(self, llm_kind: str) -> None:
        # llm_kind: "pipeline", "realtime_auto" or "realtime_manual"
        self.llm_kind = llm_kind
        if llm_kind == "pipeline":
            self.llm: Any = FakePipelineLLM()
            self.realtime_llm_session: Any = None
        else:
            auto = llm_kind == "realtime_auto"
            self.llm = FakeRealtimeModel(auto)
            self.realtime_llm_session = SimpleNamespace(
                capabilities=SimpleNamespace(auto_tool_reply_generation=auto)
            )

    def set_auto_tool_reply(self, auto: bool) -> None:
        """The realtime session in use changed (e.g. a fallback adapter switched models)."""
        if self.realtime_llm_session is not None:
            self.realtime_llm_session.capabilities.auto_tool_reply_generation = auto


class FakeSession(rtc.EventEmitter):
    """Stands in for AgentSession. ``shutdown()`` has an effect only the first time and never
    once the session closed, as with AgentSession (its close runs once)."""

    def __init__(self, rec: Recorder, activity: FakeActivity) -> None:
        super().__init__()
        self.rec = rec
        self.activity = activity
        self.current_agent = SimpleNamespace(_get_activity_or_raise=lambda: activity)
        self.shutting_down = False
        self.closed = False

    def shutdown(self, *, drain: bool = True) -> None:
        effective = not self.shutting_down and not self.closed
        self.shutting_down = True
        self.rec.add("session.shutdown", effective=effective)

    def generate_reply(self, **kwargs: Any) -> None:
        self.rec.add("session.generate_reply", kwargs.get("instructions"))

    def close(self, reason: str, error: Any = None) -> None:
        if self.closed:
            return
        self.closed = True
        self.emit("close", CloseEvent(reason=CloseReason(reason), error=error))

    def create_speech(self, speech_id: str) -> SpeechHandle:
        h = SpeechHandle(
            speech_id=speech_id,
            allow_interruptions=True,
            input_details=SpeechHandle.create().input_details,
        )
        self.emit(
            "speech_created",
            SpeechCreatedEvent(user_initiated=False, source="generate_reply", speech_handle=h),
        )
        return h


def finish_speech(h: SpeechHandle, interrupted: bool = False) -> None:
    if interrupted:
        h.interrupt()
    h._mark_done()


class FakeJobContext:
    """What the tools use of JobContext: shutdown callbacks, shutdown and delete_room."""

    def __init__(self, rec: Recorder, job_id: str = "job-test", room_name: str = "") -> None:
        self.rec = rec
        # As a job before ctx.connect(): the room it was dispatched to is known from the job.
        self.job = SimpleNamespace(id=job_id, room=SimpleNamespace(name=room_name))
        self.callbacks: list[Any] = []
        self.shutdown_reasons: list[str] = []

    def add_shutdown_callback(self, cb: Any) -> None:
        self.callbacks.append(cb)
        self.rec.add("job.add_shutdown_callback")

    def shutdown(self, reason: str = "") -> None:
        self.shutdown_reasons.append(reason)
        self.rec.add("job.shutdown", reason)

    def delete_room(self, room_name: str | None = None) -> asyncio.Future:
        self.rec.add("job.delete_room")
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    async def run_shutdown_callbacks(self) -> None:
        """What the job does when it shuts down."""
        for cb in list(self.callbacks):
            await cb()


class FakeRunContext:
    """The part of RunContext the end_call tools use."""

    def __init__(self, session: FakeSession, speech_handle: SpeechHandle) -> None:
        self.session = session
        self.speech_handle = speech_handle
        self.function_call = SimpleNamespace(name="end_call", arguments="{}", call_id="call_x")
        self.userdata = None
