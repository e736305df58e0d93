"""A LiveKit job in a process of its own, for the teardown tests: a real AgentSession in text
mode (LiveKit's fake job context, a scripted LLM that never ends the call), with
SidecarEndCallTool attached at the session's start with a room name. It prints
``attached <session id>`` once the sidecar holds its lease, then stays mid-call until it is
killed.

Usage: python teardown_job.py SIDECAR_ADDRESS ROOM
"""

from __future__ import annotations

import asyncio
import sys

from livekit.agents import Agent, AgentSession
from livekit.agents.testing import fake_job_context

from endcall_sidecar import EndCallClient
from endcall_sidecar.livekit import SidecarEndCallTool
from scripted_llm import ScriptedLLM


async def main(address: str, room: str) -> None:
    tool = SidecarEndCallTool(address=address)
    with fake_job_context(job_id="teardown-job"):
        session = AgentSession(llm=ScriptedLLM())
        sid = tool.attach(session, room=room)
        await session.start(Agent(instructions="You are a test agent.", tools=[tool]))
        # The lease is held once the sidecar says the session is attended.
        async with EndCallClient(address) as client:
            for _ in range(500):
                report = await client.get_session(sid)
                if report.attended:
                    break
                await asyncio.sleep(0.01)
            else:
                raise SystemExit("the sidecar never saw the watch stream")
        print(f"attached {sid}", flush=True)
        await asyncio.Event().wait()  # mid-call, until killed


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
