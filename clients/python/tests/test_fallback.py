"""When the sidecar cannot be reached, SidecarEndCallTool logs an error and ends the call
in-process exactly as LiveKit's EndCallTool would: no call is left hanging."""

from __future__ import annotations

import logging
import socket

import pytest

from harness import REPLY_TIMEOUT, Scenario, describe, run_reference, run_sidecar
from test_differential import SCENARIOS


def _dead_address() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connections are refused
    return f"127.0.0.1:{port}"


FALLBACK_KW = {"reply_timeout": REPLY_TIMEOUT, "rpc_timeout": 1.0, "watch_attempts": 2}


def _fallback_errors(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "endcall_sidecar" and r.levelno >= logging.ERROR
    ]


@pytest.mark.parametrize("scn,expected", SCENARIOS, ids=[s.name for s, _ in SCENARIOS])
async def test_unreachable_sidecar_behaves_like_reference(caplog, scn, expected) -> None:
    caplog.set_level(logging.INFO, logger="endcall_sidecar")
    ref = await run_reference(scn)
    got = await run_sidecar(scn, _dead_address(), hints=[len(s) for s in ref.steps], **FALLBACK_KW)
    assert got.steps + [got.final] == ref.steps + [ref.final], describe(
        scn, ref.steps + [ref.final], got.steps + [got.final]
    )
    errors = _fallback_errors(caplog)
    assert any("GetTool failed" in m for m in errors), errors
    if any(s[0] == "end_call" for s in scn.steps):
        assert got.tool.in_fallback(got.session)
        assert any("ending this call in-process" in m for m in errors), errors


def _killer(box: dict):
    return ("call", lambda: box["sidecar"].kill(), "kill the sidecar")


@pytest.mark.parametrize(
    "name,llm,steps",
    [
        ("pipeline-killed-before-done", "pipeline",
         lambda k: [("end_call", "s"), k, ("done", "s"), ("close", "user_initiated")]),
        ("realtime-killed-while-awaiting-reply", "realtime_auto",
         lambda k: [("end_call", "s"), ("done", "s"), k, ("tick",), ("close", "user_initiated")]),
        ("realtime-killed-while-reply-playing", "realtime_auto",
         lambda k: [("end_call", "s"), ("done", "s"), ("created", "r"), k, ("done", "r"),
                    ("close", "error")]),
        ("killed-before-close", "pipeline",
         lambda k: [("end_call", "s"), ("done", "s"), k, ("close", "participant_disconnected")]),
    ],
)
async def test_sidecar_dies_mid_call(caplog, start_sidecar, name, llm, steps) -> None:
    caplog.set_level(logging.INFO, logger="endcall_sidecar")
    box: dict = {}
    scn = Scenario(name, steps(_killer(box)), llm=llm)
    ref = await run_reference(scn)
    box["sidecar"] = sc = start_sidecar("--reply-timeout", f"{int(REPLY_TIMEOUT * 1000)}ms")
    got = await run_sidecar(scn, sc.address, hints=[len(s) for s in ref.steps], **FALLBACK_KW)
    assert got.steps + [got.final] == ref.steps + [ref.final], describe(
        scn, ref.steps + [ref.final], got.steps + [got.final]
    )
    assert got.tool.in_fallback(got.session)
    assert any("ending this call in-process" in m for m in _fallback_errors(caplog))
