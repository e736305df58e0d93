"""A LiveKit Agents worker whose end_call tool is decided by endcall-sidecar.

Run the sidecar beside it (listening on 127.0.0.1:50051, or set ENDCALL_SIDECAR_ADDR), set
LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET, then: python agent.py dev
"""

from livekit.agents import Agent, AgentServer, AgentSession, JobContext, cli

from endcall_sidecar.livekit import SidecarEndCallTool

server = AgentServer()


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    # Where EndCallTool(...) was: the same options, decisions made by the sidecar.
    end_call = SidecarEndCallTool(delete_room=True)
    agent = Agent(
        instructions="You are a friendly receptionist. Hang up when the caller is done.",
        tools=[end_call],
    )
    session: AgentSession[None] = AgentSession(
        stt="deepgram/nova-3", llm="openai/gpt-4.1-mini", tts="cartesia/sonic-2"
    )
    # Attached at the session's start: the sidecar knows the room and holds this worker's
    # stream, so it can hang the call up itself if the worker is lost or never closes.
    end_call.attach(session)
    await session.start(agent=agent, room=ctx.room)


if __name__ == "__main__":
    cli.run_app(server)
