"""A scripted LLM for a real AgentSession in text mode: the first turn calls end_call, any later
turn (the reply to the tool's output) says goodbye. Used by test_agent_session.py and by the
client-side hangup benchmark (bench/hangup.py)."""

from __future__ import annotations

from typing import Any

from livekit.agents import llm
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS

GOODBYE = "Thanks for calling, goodbye!"


class ScriptedLLM(llm.LLM):
    """First turn: call end_call. Any later turn (the reply to the tool's output): goodbye."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict[str, Any]] = []

    def chat(self, *, chat_ctx: llm.ChatContext, tools: list | None = None,
             conn_options: Any = DEFAULT_API_CONNECT_OPTIONS, **kwargs: Any) -> llm.LLMStream:
        self.requests.append({"tools": list(tools or []), "chat_ctx": chat_ctx.copy()})
        return _ScriptedStream(self, chat_ctx=chat_ctx, tools=tools or [],
                               conn_options=conn_options, turn=len(self.requests))


class _ScriptedStream(llm.LLMStream):
    def __init__(self, llm_: ScriptedLLM, *, turn: int, **kwargs: Any) -> None:
        super().__init__(llm_, **kwargs)
        self._turn = turn

    async def _run(self) -> None:
        if self._turn == 1:
            delta = llm.ChoiceDelta(
                role="assistant",
                tool_calls=[llm.FunctionToolCall(name="end_call", arguments="{}",
                                                 call_id="call_end_1")],
            )
        else:
            delta = llm.ChoiceDelta(role="assistant", content=GOODBYE)
        self._event_ch.send_nowait(llm.ChatChunk(id=f"chunk-{self._turn}", delta=delta))
