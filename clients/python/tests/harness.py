"""Differential harness: drive LiveKit's EndCallTool and SidecarEndCallTool through the same
scripted events with the fakes, and record what each makes the agent do, step by step.

A script is a list of steps:
  ("end_call", key)          the LLM calls end_call in speech `key` (created first if new)
  ("created", key)           the session creates speech `key` (a reply, a say, a tool reply)
  ("done", key)              speech `key` played out
  ("interrupt", key)         speech `key` was interrupted (counts as done)
  ("auto", bool)             the realtime session's auto_tool_reply_generation changes
  ("tick",)                  time passes: every pending reply timeout runs out
  ("close", reason)          the session closes with `reason` (a CloseReason value)
  ("call", fn, label)        test plumbing, e.g. kill the sidecar; does nothing to the agent
After the last step the job runs its shutdown callbacks (a registered room deletion runs then).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from livekit.agents.beta.tools import end_call as ref_module
from livekit.agents.beta.tools.end_call import EndCallTool
from livekit.agents.job import _JobContextVar

from endcall_sidecar import EndCallClient, NotFound, SessionState, SidecarError
from endcall_sidecar.livekit import SidecarEndCallTool
from fakes import FakeActivity, FakeJobContext, FakeRunContext, FakeSession, Recorder, finish_speech

# The reply timeout both sides use in these tests: the reference's hard-coded 5 s is patched
# down to this, and the sidecar is started with --reply-timeout of the same value.
REPLY_TIMEOUT = 0.4
BOUND = 5.0  # upper bound of any wait for something that must happen

_counter = itertools.count()


class _PatchedAsyncio:
    """Stands in for the `asyncio` module inside the reference module: every `wait_for` uses
    REPLY_TIMEOUT, and pending waits are tracked so a "tick" can wait for them to end."""

    def __init__(self) -> None:
        self.pending: set[asyncio.Future] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def wait_for(self, aw: Any, timeout: float | None = None) -> Any:
        fut = asyncio.get_running_loop().create_future()
        self.pending.add(fut)
        try:
            return await asyncio.wait_for(aw, timeout=REPLY_TIMEOUT)
        finally:
            self.pending.discard(fut)
            if not fut.done():
                fut.set_result(None)


@contextlib.contextmanager
def patched_reference_timeout():
    proxy = _PatchedAsyncio()
    saved = ref_module.asyncio
    ref_module.asyncio = proxy  # type: ignore[assignment]
    try:
        yield proxy
    finally:
        ref_module.asyncio = saved


@dataclass
class Scenario:
    name: str
    steps: list[tuple]
    llm: str = "pipeline"  # pipeline | realtime_auto | realtime_manual
    options: dict[str, Any] = field(default_factory=dict)  # EndCallTool constructor options
    hook: str | None = None  # None | "to_none" | "to_text": on_tool_completed changes output


@dataclass
class Trace:
    steps: list[list[tuple]]
    raw: list[tuple]
    final: list[tuple]  # actions while the job ran its shutdown callbacks
    tool: Any = None
    session: Any = None

    def flat(self) -> list[tuple]:
        return [a for s in self.steps for a in s] + self.final


def _hooks(rec: Recorder, hook: str | None) -> dict[str, Any]:
    async def on_called(ev: Any) -> None:
        rec.add("hook.tool_called")

    async def on_completed(ev: Any) -> None:
        rec.add("hook.tool_completed", ev.output)
        if hook == "to_none":
            ev.output = None
        elif hook == "to_text":
            ev.output = "wish the caller a good day"

    return {"on_tool_called": on_called, "on_tool_completed": on_completed}


async def _settle_loop(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


class _Side:
    """How one side lets the event loop catch up, and how it lets time pass."""

    async def settle(self) -> None:
        await _settle_loop()

    async def tick(self, hint: int, rec: Recorder, mark: int) -> None:
        await self.settle()


class ReferenceSide(_Side):
    def __init__(self, proxy: _PatchedAsyncio) -> None:
        self.proxy = proxy

    async def tick(self, hint: int, rec: Recorder, mark: int) -> None:
        await self.settle()
        deadline = time.monotonic() + BOUND
        while self.proxy.pending and time.monotonic() < deadline:
            await asyncio.wait(list(self.proxy.pending), timeout=BOUND)
            await self.settle()
        await self.settle()


class SidecarSide(_Side):
    def __init__(self, tool: SidecarEndCallTool, session: FakeSession, client: EndCallClient):
        self.tool = tool
        self.session = session
        self.client = client

    def _binding(self) -> Any:
        return self.tool._bindings.get(self.session)

    async def _server_max_seq(self, sid: str) -> int:
        try:
            r = await self.client.get_session(sid)
        except SidecarError:  # unknown session, or the sidecar is down
            return 0
        return max((d.seq for d in r.directives), default=0)

    async def settle(self) -> None:
        for _ in range(3):
            await _settle_loop()
            await self.tool.wait_idle(self.session)
        b = self._binding()
        if b is not None and not b.fallback:
            target = await self._server_max_seq(b.session_id)
            deadline = time.monotonic() + BOUND
            while b._next_seq - 1 < target and not b.fallback and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        await _settle_loop()

    async def _awaiting(self) -> bool:
        b = self._binding()
        if b is None:
            return False
        if b.fallback:
            return any(w.timer is not None for w in b.engine._waiters)
        try:
            r = await self.client.get_session(b.session_id)
        except NotFound:
            return False
        except SidecarError:  # down: the tool is about to fall back; its engine decides
            return any(w.timer is not None for w in b.engine._waiters)
        return r.state == SessionState.AWAITING_REPLY

    async def tick(self, hint: int, rec: Recorder, mark: int) -> None:
        await self.settle()
        deadline = time.monotonic() + BOUND
        while await self._awaiting() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        # several realtime waits at once (end_call called twice): the reference's result for
        # this step says how many actions to wait for
        while len(rec.since(mark)) < hint and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await self.settle()


async def drive(tool: Any, scn: Scenario, rec: Recorder, side: _Side, session: FakeSession,
                job: FakeJobContext, hints: list[int] | None = None) -> Trace:
    await tool.setup()
    handles: dict[str, Any] = {}
    steps: list[list[tuple]] = []
    prefix = f"speech_{next(_counter)}_"
    for i, step in enumerate(scn.steps):
        mark = rec.mark()
        op = step[0]
        if op == "end_call":
            key = step[1]
            if key not in handles:
                handles[key] = session.create_speech(prefix + key)
            out = await tool.tools[0](FakeRunContext(session, handles[key]))
            rec.add("tool.output", out)
        elif op == "created":
            handles[step[1]] = session.create_speech(prefix + step[1])
        elif op in ("done", "interrupt"):
            finish_speech(handles[step[1]], interrupted=op == "interrupt")
        elif op == "auto":
            session.activity.set_auto_tool_reply(step[1])
        elif op == "close":
            session.close(step[1])
        elif op == "tick":
            await side.tick(hints[i] if hints else 0, rec, mark)
        elif op == "call":
            if not isinstance(side, ReferenceSide):
                step[1]()
        else:
            raise ValueError(f"unknown step {step!r}")
        await side.settle()
        steps.append(rec.since(mark))
    mark = rec.mark()
    await job.run_shutdown_callbacks()
    await side.settle()
    return Trace(steps=steps, raw=list(rec.raw), final=rec.since(mark), tool=tool, session=session)


async def run_reference(scn: Scenario) -> Trace:
    rec = Recorder()
    job = FakeJobContext(rec, job_id=f"ref-{uuid.uuid4().hex[:8]}")
    token = _JobContextVar.set(job)  # type: ignore[arg-type]
    try:
        with patched_reference_timeout() as proxy:
            session = FakeSession(rec, FakeActivity(scn.llm))
            tool = EndCallTool(**scn.options, **_hooks(rec, scn.hook))
            return await drive(tool, scn, rec, ReferenceSide(proxy), session, job)
    finally:
        _JobContextVar.reset(token)


async def run_sidecar(
    scn: Scenario,
    address: str,
    hints: list[int] | None = None,
    **tool_kwargs: Any,
) -> Trace:
    rec = Recorder()
    job = FakeJobContext(rec, job_id=f"sc-{uuid.uuid4().hex[:8]}")
    token = _JobContextVar.set(job)  # type: ignore[arg-type]
    client = EndCallClient(address, timeout=2.0)
    try:
        session = FakeSession(rec, FakeActivity(scn.llm))
        sid = f"{scn.name}-{uuid.uuid4().hex[:12]}"[-100:]
        tool = SidecarEndCallTool(
            address=address, session_id=sid, **scn.options, **_hooks(rec, scn.hook),
            **tool_kwargs,
        )
        side = SidecarSide(tool, session, client)
        trace = await drive(tool, scn, rec, side, session, job, hints)
        await tool.aclose()
        return trace
    finally:
        await client.close()
        _JobContextVar.reset(token)


_CLOSE_KINDS = ("job.add_shutdown_callback", "job.shutdown", "job.delete_room")


def dedupe_close_actions(trace: Trace) -> tuple[list[list[tuple]], list[tuple], int]:
    """The reference registers its close handling once per end_call call, so an end_call
    called twice deletes the room and shuts the job down twice; the sidecar does each once
    (contract extension: idempotency). Returns the reference's steps with repeats of those
    actions removed, and how many were removed."""
    seen: set[str] = set()
    removed = 0

    def keep(a: tuple) -> bool:
        nonlocal removed
        if a[0] in _CLOSE_KINDS:
            if a[0] in seen:
                removed += 1
                return False
            seen.add(a[0])
        return True

    steps = [[a for a in s if keep(a)] for s in trace.steps]
    final = [a for a in trace.final if keep(a)]
    return steps, final, removed


def describe(scn: Scenario, ref: list[list[tuple]], got: list[list[tuple]]) -> str:
    lines = [f"scenario {scn.name} (llm={scn.llm}, options={scn.options}, hook={scn.hook})"]
    for i, step in enumerate(scn.steps + [("job shutdown callbacks",)]):
        r = ref[i] if i < len(ref) else None
        g = got[i] if i < len(got) else None
        flag = "  " if r == g else "!!"
        lines.append(f"{flag} {step}: reference={r} sidecar={g}")
    return "\n".join(lines)
