"""End to end: a real livekit.agents AgentSession in text mode (no room, LiveKit's fake job
context), a scripted LLM that calls end_call and then says goodbye, SidecarEndCallTool and a
real sidecar; followed from the first end_call on, and attached at the session's start."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from livekit.agents import Agent, AgentSession
from livekit.agents.testing import fake_job_context

from endcall_sidecar import EndCallClient, Outcome, SessionState
from endcall_sidecar.livekit import SidecarEndCallTool
from recording import recording_channel
from scripted_llm import GOODBYE, ScriptedLLM


@pytest.mark.parametrize("attach", [None, "before-start", "after-start"])
async def test_agent_session_ends_after_goodbye(sidecar, attach: str | None) -> None:
    attached = attach is not None
    timeline: list[tuple] = []
    scripted = ScriptedLLM()
    channel, wire = recording_channel(sidecar.address)
    client = EndCallClient(sidecar.address, channel=channel)
    tool = SidecarEndCallTool(client=client, extra_description="Extra: be polite.")
    closed = asyncio.Event()

    with fake_job_context(job_id="e2e-job") as job_ctx:
        shutdown_reasons: list[str] = []
        job_ctx._on_shutdown = lambda reason: (shutdown_reasons.append(reason),
                                               timeline.append(("job.shutdown", reason)))
        deleted: list[bool] = []

        def _delete_room(room_name: str | None = None) -> Any:
            deleted.append(True)
            timeline.append(("job.delete_room",))
            fut = asyncio.get_running_loop().create_future()
            fut.set_result(None)
            return fut

        job_ctx.delete_room = _delete_room  # type: ignore[method-assign]

        session = AgentSession(llm=scripted)

        @session.on("conversation_item_added")
        def _item(ev: Any) -> None:
            item = ev.item
            if getattr(item, "role", None) == "assistant":
                timeline.append(("assistant", item.text_content))

        @session.on("close")
        def _closed(ev: Any) -> None:
            timeline.append(("close", ev.reason.value))
            closed.set()

        if attach == "before-start":  # as the examples do, in the job (the fake job's room)
            tool.attach(session)
        await session.start(Agent(instructions="You are a test agent.", tools=[tool]),
                            record=False)
        if attach == "after-start":
            tool.attach(session)
        # the tool took its definition from the sidecar
        assert tool.tool_definition is not None
        assert tool.tool_definition.name == "end_call"
        assert tool.tool_definition.description.rstrip().endswith("Extra: be polite.")

        result = session.run(user_input="That's all, thank you. Bye!")
        await asyncio.wait_for(result, timeout=15)
        await asyncio.wait_for(closed.wait(), timeout=15)

        sid = tool.session_id_of(session)
        assert sid is not None and sid.startswith("e2e-job-")
        # the tool's output reached the LLM, which then said goodbye; then the session closed
        assert len(scripted.requests) == 2
        tool_names = [getattr(t, "id", None) for t in scripted.requests[0]["tools"]]
        assert "end_call" in tool_names
        outputs = [
            i.output for i in scripted.requests[1]["chat_ctx"].items
            if i.type == "function_call_output"
        ]
        assert outputs == ["say goodbye to the user"]

        # the job is shut down with the close reason once the sidecar answered the close
        async def _job_shutdown() -> None:
            while not shutdown_reasons:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(_job_shutdown(), timeout=10)
        assert shutdown_reasons == ["user_initiated"]
        # the room deletion runs as a job shutdown callback
        assert not deleted
        for cb in list(job_ctx._shutdown_callbacks):
            await cb("user_initiated")
        assert deleted == [True]

        assert timeline == [
            ("assistant", GOODBYE),
            ("close", "user_initiated"),
            ("job.shutdown", "user_initiated"),
            ("job.delete_room",),
        ], timeline

        async with EndCallClient(sidecar.address) as client:
            report = await client.get_session(sid)
        assert report.state == SessionState.CLOSED
        assert report.outcome == Outcome.TOOL_TURN_DONE
        assert report.goodbye_duration is not None and report.goodbye_duration >= 0
        assert not tool.in_fallback(session)
        await session.aclose()

        methods = wire.methods()
        if attached:
            (opened,) = wire.requests("OpenSession")
            assert opened.room == "fake-room"
            # the stream was held before the LLM was even asked
            assert methods.index("WatchSession") < methods.index("EndCall")
        else:
            assert "OpenSession" not in methods
    await channel.close()
