"""SidecarEndCallTool with the sidecar's extensions: the tool definition from GetTool, attach
at the session's start (the room sent, the stream held, a close without end_call reported),
and the maximum call duration."""

from __future__ import annotations

import asyncio
import time
import uuid

from livekit.agents.job import _JobContextVar
from livekit.agents.llm import ToolFlag

from endcall_sidecar import EndCallClient, Outcome, SessionState, ShutdownCause
from endcall_sidecar.livekit import SidecarEndCallTool
from fakes import FakeActivity, FakeJobContext, FakeSession, Recorder
from recording import recording_channel


async def test_tool_definition_comes_from_get_tool(sidecar) -> None:
    tool = SidecarEndCallTool(address=sidecar.address, extra_description="Never on Sundays.",
                              ignore_on_enter=True)
    await tool.setup()
    async with EndCallClient(sidecar.address) as c:
        td = await c.get_tool(extra_description="Never on Sundays.", ignore_on_enter=True)
    (fn,) = tool.tools
    assert fn.info.name == "end_call"
    assert fn.info.description == td.description
    assert fn.info.flags & ToolFlag.IGNORE_ON_ENTER
    await tool.aclose()


async def _until(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_attach_reports_close_without_end_call(sidecar) -> None:
    rec = Recorder()
    job = FakeJobContext(rec)
    token = _JobContextVar.set(job)  # type: ignore[arg-type]
    try:
        session = FakeSession(rec, FakeActivity("pipeline"))
        sid = f"attach-{uuid.uuid4().hex[:8]}"
        tool = SidecarEndCallTool(address=sidecar.address, session_id=sid)
        assert tool.attach(session) == sid
        h = session.create_speech("greeting")
        h._mark_done()
        await asyncio.sleep(0)
        session.close("participant_disconnected")
        await tool.wait_idle(session)
        assert rec.raw == []  # row 8: nothing to do
        async with EndCallClient(sidecar.address) as c:
            report = await c.get_session(sid)
        assert report.state == SessionState.CLOSED
        assert report.outcome == Outcome.CLOSED_WITHOUT_END_CALL
    finally:
        _JobContextVar.reset(token)


async def test_max_call_duration_winds_up_then_ends(start_sidecar) -> None:
    sc = start_sidecar("--wind-up-grace", "300ms")
    rec = Recorder()
    job = FakeJobContext(rec)
    token = _JobContextVar.set(job)  # type: ignore[arg-type]
    try:
        session = FakeSession(rec, FakeActivity("pipeline"))
        sid = f"maxdur-{uuid.uuid4().hex[:8]}"
        tool = SidecarEndCallTool(address=sc.address, session_id=sid)
        tool.attach(session, max_duration=0.3)
        await _until(lambda: len(rec.raw) >= 2)
        assert rec.raw[0][0] == "session.generate_reply" and rec.raw[0][1]
        assert rec.raw[1] == ("session.shutdown",)
        async with EndCallClient(sc.address) as c:
            report = await c.get_session(sid)
        assert [d.cause for d in report.directives][-1] == ShutdownCause.MAX_DURATION
        session.close("user_initiated")
        await tool.wait_idle(session)
    finally:
        _JobContextVar.reset(token)


async def _attach_and_close(address: str, job: FakeJobContext | None, **attach: object) -> tuple:
    """Attaches a session, checks that its stream is held before any end_call, closes it, and
    returns (the OpenSession request on the wire, the methods called, in order)."""
    rec = Recorder()
    token = _JobContextVar.set(job) if job is not None else None  # type: ignore[arg-type]
    channel, wire = recording_channel(address)
    try:
        async with EndCallClient(address, channel=channel) as client:
            sid = f"attach-room-{uuid.uuid4().hex[:8]}"
            tool = SidecarEndCallTool(client=client, session_id=sid)
            session = FakeSession(rec, FakeActivity("pipeline"))
            assert tool.attach(session, **attach) == sid  # type: ignore[arg-type]
            await tool.wait_idle(session)
            await _until(lambda: "WatchSession" in wire.methods())
            binding = tool._bindings[session]
            assert binding._watch_task is not None and not binding._watch_task.done()
            session.close("participant_disconnected")
            await tool.wait_idle(session)
            # the server ends the stream after the close, and the tool lets go of it
            await _until(binding._watch_task.done)
            assert not tool.in_fallback(session)
            assert [r.session_id for r in wire.requests("WatchSession")] == [sid]
            (opened,) = wire.requests("OpenSession")
            assert opened.session_id == sid
            return opened, wire.methods()
    finally:
        await channel.close()
        if token is not None:
            _JobContextVar.reset(token)


async def test_attach_sends_the_job_room_and_holds_the_stream_from_the_start(sidecar) -> None:
    job = FakeJobContext(Recorder(), room_name="room-sip-7")
    opened, methods = await _attach_and_close(sidecar.address, job)
    assert opened.room == "room-sip-7"
    # the stream is opened at attach, before anything else is reported
    assert methods.index("WatchSession") < methods.index("OnSessionClose")
    assert "EndCall" not in methods


async def test_attach_prefers_an_explicit_room(sidecar) -> None:
    job = FakeJobContext(Recorder(), room_name="room-from-job")
    opened, _ = await _attach_and_close(sidecar.address, job, room="room-explicit")
    assert opened.room == "room-explicit"


async def test_attach_outside_a_job_sends_no_room(sidecar) -> None:
    opened, _ = await _attach_and_close(sidecar.address, None)
    assert opened.room == ""
    assert not opened.HasField("max_duration")
