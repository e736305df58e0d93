"""Smoke runs of the client-side benchmarks (bench/hangup.py, bench/rpc_cost.py) with tiny
counts, so that they cannot rot: both tools end every call, and the figures are reported."""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import sidecar_bin

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import hangup  # noqa: E402
import rpc_cost  # noqa: E402


def test_hangup_bench_runs_both_tools(capsys) -> None:
    s = hangup.main(["--calls", "3", "--warmup", "1", "--sidecar-bin", str(sidecar_bin())])
    for tool in hangup.TOOLS:
        assert s[tool]["calls"] == 3
        assert 0 < s[tool]["latency_ms"]["p50"] <= s[tool]["latency_ms"]["p99"]
        assert s[tool]["cpu_ms_per_call"]["mean"] > 0
    assert s["cpu_ratio"] > 0
    assert set(s["targets"]) == {"added_p99_ms<=1", "cpu_ratio<=1.1"}
    out = capsys.readouterr().out
    assert "added by the sidecar" in out and "CPU per call" in out
    # the probe let go of LiveKit's methods
    from livekit.agents import AgentSession
    from livekit.agents.voice.speech_handle import SpeechHandle

    assert AgentSession.shutdown.__qualname__ == "AgentSession.shutdown"
    assert SpeechHandle._mark_done.__qualname__ == "SpeechHandle._mark_done"


def test_rpc_cost_bench_runs(capsys) -> None:
    rpc_cost.main(["--count", "3", "--sidecar-bin", str(sidecar_bin())])
    out = capsys.readouterr().out
    for what in ("channel: made", "unary RPC", "WatchSession"):
        assert what in out
    assert out.count("ms CPU") == 3
