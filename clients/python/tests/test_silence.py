"""The silence ladder end to end: a real livekit.agents AgentSession in text mode (LiveKit's
fake job context, no room), a scripted LLM, SidecarEndCallTool attached with a 2 s silence
timeout and one reminder after 1 s, and a real sidecar. The user's speech comes as LiveKit's
STT would report it, a final ``user_input_transcribed`` event, and as the turn it starts."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from livekit.agents import Agent, AgentSession, llm
from livekit.agents.job import _JobContextVar
from livekit.agents.testing import fake_job_context
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS
from livekit.agents.voice.events import UserInputTranscribedEvent

from endcall_sidecar import (
    DirectiveKind,
    EndCallClient,
    EndedReason,
    InvalidArgument,
    Outcome,
    SessionOptions,
    ShutdownCause,
    TimeLimitWarning,
)
from endcall_sidecar.livekit import SidecarEndCallTool
from fakes import FakeActivity, FakeJobContext, FakeSession, Recorder

GREET = "GREET: welcome the caller."
REMINDER = "REMIND: ask whether the caller is still there."
WIND_UP = "WIND-UP: nobody is answering; say goodbye."
HELLO = "Hello, how can I help?"
STILL_THERE = "Are you still there?"
BYE = "I will hang up now. Goodbye!"
GLAD = "Glad you are still here."


class InstructedLLM(llm.LLM):
    """Answers each turn by the instructions it was given (or the user's words)."""

    def __init__(self) -> None:
        super().__init__()
        self.turns: list[str] = []

    def chat(self, *, chat_ctx: llm.ChatContext, tools: list | None = None,
             conn_options: Any = DEFAULT_API_CONNECT_OPTIONS, **kwargs: Any) -> llm.LLMStream:
        messages = [i for i in chat_ctx.items if i.type == "message"]
        last = messages[-1] if messages else None
        text = (last.text_content or "") if last is not None else ""
        if GREET in text:
            reply = HELLO
        elif REMINDER in text:
            reply = STILL_THERE
        elif WIND_UP in text:
            reply = BYE
        else:
            reply = GLAD
        self.turns.append(reply)
        return _Reply(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options,
                      text=reply, turn=len(self.turns))


class _Reply(llm.LLMStream):
    def __init__(self, llm_: InstructedLLM, *, text: str, turn: int, **kwargs: Any) -> None:
        super().__init__(llm_, **kwargs)
        self._text = text
        self._turn = turn

    async def _run(self) -> None:
        delta = llm.ChoiceDelta(role="assistant", content=self._text)
        self._event_ch.send_nowait(llm.ChatChunk(id=f"chunk-{self._turn}", delta=delta))


class Call:
    """One call: the session, what the agent said (with when), and its close."""

    def __init__(self, sidecar_address: str) -> None:
        self.said: list[tuple[float, str]] = []
        self.closed = asyncio.Event()
        self.llm = InstructedLLM()
        self.tool = SidecarEndCallTool(
            address=sidecar_address,
            silence_timeout=2.0,
            silence_reminder_after=1.0,
            silence_reminders=1,
            silence_reminder_instructions=REMINDER,
        )
        self.session = AgentSession(llm=self.llm)
        self.started = time.monotonic()

        @self.session.on("conversation_item_added")
        def _item(ev: Any) -> None:
            if getattr(ev.item, "role", None) == "assistant":
                self.said.append((time.monotonic() - self.started, ev.item.text_content))

        @self.session.on("close")
        def _closed(ev: Any) -> None:
            self.closed.set()

    async def start(self) -> str:
        await self.session.start(Agent(instructions="You are a test agent.", tools=[self.tool]),
                                 record=False)
        sid = self.tool.attach(self.session)
        await self.session.generate_reply(instructions=GREET)
        return sid

    def lines(self) -> list[str]:
        return [text for _, text in self.said]

    async def until_said(self, text: str, timeout: float = 10) -> float:
        async def _wait() -> float:
            while True:
                for at, said in self.said:
                    if said == text:
                        return at
                await asyncio.sleep(0.01)

        return await asyncio.wait_for(_wait(), timeout)

    async def user_says(self, text: str) -> None:
        # What LiveKit's STT reports for a final transcript, then the turn it starts.
        self.session.emit("user_input_transcribed",
                          UserInputTranscribedEvent(transcript=text, is_final=True))
        await self.session.run(user_input=text)


@pytest.fixture
def silence_sidecar(start_sidecar):
    return start_sidecar("--wind-up-grace", "500ms", "--silence-wind-up-instructions", WIND_UP)


async def test_a_silent_user_is_reminded_then_the_call_ends(silence_sidecar) -> None:
    with fake_job_context(job_id="silent-job"):
        call = Call(silence_sidecar.address)
        sid = await call.start()
        await asyncio.wait_for(call.closed.wait(), timeout=15)

        # The greeting, the reminder, the goodbye, then the close.
        assert call.lines() == [HELLO, STILL_THERE, BYE], call.said
        async with EndCallClient(silence_sidecar.address) as client:
            report = await client.get_session(sid)
        kinds = [(d.kind, d.cause) for d in report.directives]
        assert kinds[:3] == [
            (DirectiveKind.REMIND, ShutdownCause.SILENCE_TIMEOUT),
            (DirectiveKind.WIND_UP, ShutdownCause.SILENCE_TIMEOUT),
            (DirectiveKind.SHUTDOWN_SESSION, ShutdownCause.SILENCE_TIMEOUT),
        ], report.directives
        assert report.outcome == Outcome.SILENCE_TIMEOUT
        assert report.ended_reason == EndedReason.SILENCE_TIMEOUT
        assert report.options.silence_timeout == 2.0
        assert not call.tool.in_fallback(call.session)
        await call.session.aclose()


async def test_a_user_who_answers_the_reminder_keeps_the_call_going(silence_sidecar) -> None:
    with fake_job_context(job_id="answer-job"):
        call = Call(silence_sidecar.address)
        sid = await call.start()
        await call.until_said(STILL_THERE)
        answered = time.monotonic() - call.started
        await call.user_says("Yes, I am here.")
        await call.until_said(GLAD)
        # The silence starts again from the answer: past the first silence's timeout the call
        # goes on, and the next reminder comes a second of silence after the agent's reply.
        await asyncio.sleep(max(0.0, answered + 1.5 - (time.monotonic() - call.started)))
        assert not call.closed.is_set()
        async with EndCallClient(silence_sidecar.address) as client:
            report = await client.get_session(sid)
            kinds = [d.kind for d in report.directives]
            assert DirectiveKind.WIND_UP not in kinds, report.directives
            assert kinds == [DirectiveKind.REMIND, DirectiveKind.REMIND], report.directives
            events = [e.event for e in report.timeline if e.event]
            assert "user_speech" in events, events
            assert call.lines() == [HELLO, STILL_THERE, GLAD, STILL_THERE], call.said

            await call.session.aclose()
            await asyncio.wait_for(call.closed.wait(), timeout=10)
            await call.tool.wait_idle(call.session)
            report = await client.get_session(sid)
        assert report.ended_reason == EndedReason.AGENT_CLOSED


async def test_the_client_speaks_every_new_field(sidecar) -> None:
    """EndCallClient: the silence options and warnings in OpenSession, OnUserSpeech, and the
    report's ended_reason."""
    sid = f"client-silence-{time.monotonic_ns()}"
    async with EndCallClient(sidecar.address) as client:
        opened = await client.open_session(
            sid,
            SessionOptions(silence_timeout=30, silence_reminder_after=10, silence_reminders=2,
                           silence_reminder_instructions="Anyone there?"),
            max_duration=600,
            max_duration_warnings=[TimeLimitWarning(before=60, instructions="One minute left."),
                                   TimeLimitWarning(before=300, instructions="Five minutes.")],
        )
        options = opened.options
        assert (options.silence_timeout, options.silence_reminder_after) == (30.0, 10.0)
        assert (options.silence_reminders, options.silence_reminder_instructions) == (
            2, "Anyone there?")
        assert [w.instructions for w in options.max_duration_warnings] == [
            "Five minutes.", "One minute left."]
        spoke = await client.on_user_speech(sid)
        assert spoke.directives == () and not spoke.duplicate
        assert (await client.get_session(sid)).ended_reason == EndedReason.UNSPECIFIED
        await client.on_session_close(sid, "participant_disconnected")
        report = await client.get_session(sid)
        assert report.ended_reason == EndedReason.USER_HANGUP
        assert [e.event for e in report.timeline if e.event][1] == "user_speech"
        with pytest.raises(InvalidArgument) as refused:
            await client.open_session(
                f"{sid}-late", max_duration=60,
                max_duration_warnings=[TimeLimitWarning(before=-5, instructions="late")])
        assert str(refused.value).find("max_duration_warnings[0].before") >= 0


async def test_the_tool_reports_final_transcripts_with_words_and_carries_out_remind(
    sidecar,
) -> None:
    rec = Recorder()
    job = FakeJobContext(rec)
    token = _JobContextVar.set(job)  # type: ignore[arg-type]
    try:
        session = FakeSession(rec, FakeActivity("pipeline"))
        sid = f"tool-silence-{time.monotonic_ns()}"
        tool = SidecarEndCallTool(address=sidecar.address, session_id=sid,
                                  silence_timeout=0.6, silence_reminder_after=0.3,
                                  silence_reminder_instructions="Still with me?")
        tool.attach(session, max_duration=60,
                    max_duration_warnings=[(59.5, "Half a second in.")])
        # Interim transcripts and final ones without words are not speech.
        for transcript, final in [("hel", False), ("", True), ("   ", True), ("hello", True)]:
            session.emit("user_input_transcribed",
                         UserInputTranscribedEvent(transcript=transcript, is_final=final))
        await tool.wait_idle(session)
        deadline = time.monotonic() + 10
        while len(rec.raw) < 2:
            assert time.monotonic() < deadline, rec.raw
            await asyncio.sleep(0.01)
        assert sorted(rec.raw[:2]) == sorted([("session.generate_reply", "Half a second in."),
                                              ("session.generate_reply", "Still with me?")])
        async with EndCallClient(sidecar.address) as client:
            report = await client.get_session(sid)
        events = [e.event for e in report.timeline if e.event]
        assert events.count("user_speech") == 1, events
        session.close("user_initiated")
        await tool.wait_idle(session)
    finally:
        _JobContextVar.reset(token)
