"""The hangup path, measured from the agent: how much later the caller is hung up with
SidecarEndCallTool than with LiveKit's own EndCallTool, and what it costs the agent's CPU.

Each call is a real AgentSession in text mode (LiveKit's fake job context, no room) whose
scripted LLM calls end_call and then says goodbye, as tests/test_agent_session.py does. The
calls take turns between the two tools in one run, against a real sidecar on loopback. Per call
it records the time from the goodbye speech's done (its SpeechHandle marked done) to
session.shutdown() being called, and the process CPU time (all threads, time.process_time) the
whole call took, from building the session to the job's shutdown callbacks.

    clients/python/scripts/bench [--calls N] [--warmup N] [--sidecar-bin PATH] [--json FILE]

The sidecar tool is used as the examples use it: made per call (as each job makes its own),
and attached at the session's start; the tools of the process share one client (channel). Exit status 0; the targets are printed, not enforced.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]  # and the scripted LLM the e2e test uses

from livekit.agents import Agent, AgentSession  # noqa: E402
from livekit.agents.beta.tools.end_call import EndCallTool  # noqa: E402
from livekit.agents.testing import fake_job_context  # noqa: E402
from livekit.agents.voice.speech_handle import SpeechHandle  # noqa: E402

from endcall_sidecar.livekit import SidecarEndCallTool  # noqa: E402
from sidecar_process import SidecarProcess  # noqa: E402
from scripted_llm import ScriptedLLM  # noqa: E402

TOOLS = ("livekit", "sidecar")
TARGET_ADDED_P99_MS = 1.0
TARGET_CPU_RATIO = 1.1


class Probe:
    """When each speech was marked done, and when each session's shutdown() was first called
    (perf_counter_ns), by wrapping the two methods while the probe is entered."""

    def __init__(self) -> None:
        self.done_at: dict[str, int] = {}
        self.shutdown_at: dict[int, int] = {}
        self._saved = (SpeechHandle._mark_done, AgentSession.shutdown)

    def __enter__(self) -> "Probe":
        mark_done, shutdown = self._saved
        probe = self

        def _mark_done(handle: SpeechHandle, *args: Any, **kwargs: Any) -> None:
            if not handle.done():
                probe.done_at[handle.id] = time.perf_counter_ns()
            mark_done(handle, *args, **kwargs)

        def _shutdown(session: AgentSession, *args: Any, **kwargs: Any) -> None:
            probe.shutdown_at.setdefault(id(session), time.perf_counter_ns())
            shutdown(session, *args, **kwargs)

        SpeechHandle._mark_done = _mark_done  # type: ignore[method-assign]
        AgentSession.shutdown = _shutdown  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: Any) -> None:
        SpeechHandle._mark_done, AgentSession.shutdown = self._saved  # type: ignore[method-assign]


@dataclass
class Call:
    tool: str
    latency_ms: float  # goodbye done -> session.shutdown()
    cpu_ms: float
    wall_ms: float


@dataclass
class Results:
    calls: dict[str, list[Call]] = field(default_factory=lambda: {t: [] for t in TOOLS})


async def one_call(tool_kind: str, n: int, probe: Probe, address: str) -> Call:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    with fake_job_context(job_id=f"bench-{tool_kind}-{n}") as job_ctx:
        job_shut_down = asyncio.Event()
        job_ctx._on_shutdown = lambda reason: job_shut_down.set()

        def _delete_room(room_name: str | None = None) -> asyncio.Future[None]:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            fut.set_result(None)
            return fut

        job_ctx.delete_room = _delete_room  # type: ignore[method-assign,assignment]
        tool: EndCallTool | SidecarEndCallTool
        tool = EndCallTool() if tool_kind == "livekit" else SidecarEndCallTool(address=address)
        session: AgentSession[None] = AgentSession(llm=ScriptedLLM())
        closed = asyncio.Event()
        session.on("close", lambda _ev: closed.set())
        done_before = set(probe.done_at)
        if isinstance(tool, SidecarEndCallTool):
            tool.attach(session)  # at the session's start, as the examples do
        await session.start(Agent(instructions="A benchmark agent.", tools=[tool]), record=False)
        await asyncio.wait_for(session.run(user_input="That's all, thank you. Bye!"), 10)
        await asyncio.wait_for(closed.wait(), 10)
        await asyncio.wait_for(job_shut_down.wait(), 10)
        for cb in list(job_ctx._shutdown_callbacks):
            await cb("user_initiated")
        await session.aclose()
        if isinstance(tool, SidecarEndCallTool):
            # until the session's last events are answered and its stream has ended
            while tool._live:
                await asyncio.sleep(0.001)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    speeches = [s for s in probe.done_at if s not in done_before]
    if len(speeches) != 1 or id(session) not in probe.shutdown_at:
        raise RuntimeError(f"call {tool_kind} {n}: speeches {speeches}, shutdown seen: "
                           f"{id(session) in probe.shutdown_at}")
    latency_ns = probe.shutdown_at.pop(id(session)) - probe.done_at[speeches[0]]
    return Call(tool_kind, latency_ns / 1e6, cpu * 1e3, wall * 1e3)


def pct(values: list[float], p: float) -> float:
    """The p-th percentile, nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))]


def summary(results: Results) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for t in TOOLS:
        lat = [c.latency_ms for c in results.calls[t]]
        cpu = [c.cpu_ms for c in results.calls[t]]
        out[t] = {
            "calls": len(lat),
            "latency_ms": {
                "p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99), "max": max(lat)
            },
            "cpu_ms_per_call": {"mean": statistics.fmean(cpu), "median": statistics.median(cpu)},
            "wall_ms_per_call": statistics.fmean(c.wall_ms for c in results.calls[t]),
        }
    lk, sc = out["livekit"], out["sidecar"]
    out["added_latency_ms"] = {
        p: sc["latency_ms"][p] - lk["latency_ms"][p] for p in ("p50", "p90", "p99")
    }
    out["cpu_ratio"] = sc["cpu_ms_per_call"]["mean"] / lk["cpu_ms_per_call"]["mean"]
    out["targets"] = {
        "added_p99_ms<=1": out["added_latency_ms"]["p99"] <= TARGET_ADDED_P99_MS,
        "cpu_ratio<=1.1": out["cpu_ratio"] <= TARGET_CPU_RATIO,
    }
    return out


def report(s: dict[str, Any], calls: int, warmup: int, binary: str) -> str:
    shown = os.path.relpath(binary, REPO) if binary.startswith(str(REPO)) else binary
    lines = [
        f"calls: {calls} per tool, taking turns (after {warmup} warm-up calls each); "
        f"sidecar: {shown}",
        f"{'':34}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}",
    ]
    for t in TOOLS:
        lat = s[t]["latency_ms"]
        lines.append(f"{'done -> shutdown(), ' + t:34}"
                     + "".join(f"{lat[p]:>7.3f}ms" for p in ("p50", "p90", "p99", "max")))
    added = s["added_latency_ms"]
    lines.append(f"{'added by the sidecar':34}"
                 + "".join(f"{added[p]:>7.3f}ms" for p in ("p50", "p90", "p99")))
    lk, sc = s["livekit"]["cpu_ms_per_call"], s["sidecar"]["cpu_ms_per_call"]
    lines.append(f"CPU per call (mean): livekit {lk['mean']:.2f} ms, sidecar {sc['mean']:.2f} ms, "
                 f"ratio {s['cpu_ratio']:.3f} (medians {lk['median']:.2f} / {sc['median']:.2f} ms)")
    met = s["targets"]
    lines.append(f"target added p99 <= {TARGET_ADDED_P99_MS} ms: "
                 f"{'met' if met['added_p99_ms<=1'] else 'MISSED'}; target CPU ratio <= "
                 f"{TARGET_CPU_RATIO}: {'met' if met['cpu_ratio<=1.1'] else 'MISSED'}")
    return "\n".join(lines)


async def run(calls: int, warmup: int, binary: str) -> dict[str, Any]:
    results = Results()
    with Probe() as probe, SidecarProcess(binary) as sidecar:
        for n in range(warmup + calls):
            for t in (TOOLS if n % 2 == 0 else TOOLS[::-1]):  # each goes first every other round
                call = await one_call(t, n, probe, sidecar.address)
                if n >= warmup:
                    results.calls[t].append(call)
            if n % 50 == 49:
                gc.collect()  # at the same point for both tools, not inside a call
    return summary(results)


def default_binary() -> str:
    if os.environ.get("ENDCALL_SIDECAR_BIN"):
        return os.environ["ENDCALL_SIDECAR_BIN"]
    release = REPO / "target" / "release" / "endcall-sidecar"
    return str(release if release.exists() else REPO / "target" / "debug" / "endcall-sidecar")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=500, help="measured calls per tool")
    ap.add_argument("--warmup", type=int, default=20, help="unmeasured calls per tool first")
    ap.add_argument("--sidecar-bin", default=default_binary())
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    s = asyncio.run(run(args.calls, args.warmup, args.sidecar_bin))
    print(report(s, args.calls, args.warmup, args.sidecar_bin))
    if args.json:
        Path(args.json).write_text(json.dumps(s, indent=2) + "\n")
    return s


if __name__ == "__main__":
    main()
