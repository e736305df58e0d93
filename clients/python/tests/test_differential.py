"""Differential conformance: LiveKit's EndCallTool (livekit-agents 1.8.9) and
SidecarEndCallTool, talking to a real sidecar, must make the agent do the same things in the
same order, step by step, for the same events."""

from __future__ import annotations

import pytest

from harness import Scenario, dedupe_close_actions, describe, run_reference, run_sidecar

GOODBYE = "say goodbye to the user"
HOOKS = [("hook.tool_called",), ("hook.tool_completed", GOODBYE)]
SHUT = ("session.shutdown",)
CB = ("job.add_shutdown_callback",)
DEL = ("job.delete_room",)


def JOB(reason: str) -> tuple:
    return ("job.shutdown", reason)


def OUT(v: object = GOODBYE) -> tuple:
    return ("tool.output", v)


# (scenario, the reference's expected actions, flattened). The expectation pins down what the
# harness sees of the reference, so a broken fake cannot make both sides agree on nothing.
SCENARIOS: list[tuple[Scenario, list[tuple]]] = [
    (
        Scenario("pipeline", [("end_call", "s"), ("done", "s"), ("close", "user_initiated")]),
        [*HOOKS, OUT(), SHUT, CB, JOB("user_initiated"), DEL],
    ),
    (
        Scenario(
            "realtime-auto-reply-played",
            [("end_call", "s"), ("done", "s"), ("created", "r"), ("done", "r"),
             ("close", "user_initiated")],
            llm="realtime_auto",
        ),
        [*HOOKS, OUT(), SHUT, CB, JOB("user_initiated"), DEL],
    ),
    (
        Scenario(
            "realtime-auto-reply-timeout",
            [("end_call", "s"), ("done", "s"), ("tick",), ("close", "user_initiated")],
            llm="realtime_auto",
        ),
        [*HOOKS, OUT(), SHUT, CB, JOB("user_initiated"), DEL],
    ),
    (
        Scenario(
            "realtime-no-auto-reply",
            [("end_call", "s"), ("done", "s"), ("close", "user_initiated")],
            llm="realtime_manual",
        ),
        [*HOOKS, OUT(), SHUT, CB, JOB("user_initiated"), DEL],
    ),
    (
        Scenario(
            "end-instructions-none-realtime",
            [("end_call", "s"), ("done", "s"), ("close", "user_initiated")],
            llm="realtime_auto",
            options={"end_instructions": None},
        ),
        [("hook.tool_called",), ("hook.tool_completed", None), OUT(None), SHUT, CB,
         JOB("user_initiated"), DEL],
    ),
    (
        Scenario(
            "end-instructions-none-pipeline",
            [("end_call", "s"), ("done", "s"), ("close", "task_completed")],
            options={"end_instructions": None},
        ),
        [("hook.tool_called",), ("hook.tool_completed", None), OUT(None), SHUT, CB,
         JOB("task_completed"), DEL],
    ),
    (
        Scenario(
            "interrupted-goodbye-pipeline",
            [("end_call", "s"), ("interrupt", "s"), ("close", "user_initiated")],
        ),
        [*HOOKS, OUT(), SHUT, CB, JOB("user_initiated"), DEL],
    ),
    (
        Scenario(
            "interrupted-goodbye-realtime",
            [("end_call", "s"), ("done", "s"), ("created", "r"), ("interrupt", "r"),
             ("close", "user_initiated")],
            llm="realtime_auto",
        ),
        [*HOOKS, OUT(), SHUT, CB, JOB("user_initiated"), DEL],
    ),
    (
        Scenario(
            "closed-before-goodbye-done-pipeline",
            [("end_call", "s"), ("close", "participant_disconnected"), ("done", "s")],
        ),
        [*HOOKS, OUT(), CB, JOB("participant_disconnected"), DEL],
    ),
    (
        Scenario(
            "closed-while-awaiting-reply",
            [("end_call", "s"), ("done", "s"), ("close", "participant_disconnected"),
             ("tick",)],
            llm="realtime_auto",
        ),
        [*HOOKS, OUT(), CB, JOB("participant_disconnected"), DEL],
    ),
    (
        Scenario(
            "closed-while-reply-playing",
            [("end_call", "s"), ("done", "s"), ("created", "r"), ("close", "error"),
             ("done", "r")],
            llm="realtime_auto",
        ),
        [*HOOKS, OUT(), CB, JOB("error"), DEL],
    ),
    (
        Scenario(
            "close-without-end-call",
            [("created", "a"), ("done", "a"), ("close", "participant_disconnected")],
        ),
        [],
    ),
    (
        Scenario(
            "delete-room-false",
            [("end_call", "s"), ("done", "s"), ("close", "user_initiated")],
            options={"delete_room": False},
        ),
        [*HOOKS, OUT(), SHUT, JOB("user_initiated")],
    ),
    (
        Scenario(
            "late-end-call-speech-already-done",
            [("created", "s"), ("done", "s"), ("end_call", "s"), ("close", "user_initiated")],
        ),
        [*HOOKS, OUT(), SHUT, CB, JOB("user_initiated"), DEL],
    ),
    (
        Scenario(
            "hook-clears-output-realtime",
            [("end_call", "s"), ("done", "s"), ("close", "user_initiated")],
            llm="realtime_auto",
            hook="to_none",
        ),
        [*HOOKS, OUT(None), SHUT, CB, JOB("user_initiated"), DEL],
    ),
    (
        Scenario(
            "hook-sets-output-realtime",
            [("end_call", "s"), ("done", "s"), ("tick",), ("close", "user_initiated")],
            llm="realtime_auto",
            options={"end_instructions": None},
            hook="to_text",
        ),
        [("hook.tool_called",), ("hook.tool_completed", None),
         OUT("wish the caller a good day"), SHUT, CB, JOB("user_initiated"), DEL],
    ),
    (
        Scenario(
            "auto-reply-turned-off-before-done",
            [("end_call", "s"), ("auto", False), ("done", "s"), ("close", "user_initiated")],
            llm="realtime_auto",
        ),
        [*HOOKS, OUT(), SHUT, CB, JOB("user_initiated"), DEL],
    ),
    (
        Scenario(
            "speech-created-while-ending-is-not-the-reply",
            [("end_call", "s"), ("created", "x"), ("done", "s"), ("done", "x"),
             ("created", "r"), ("done", "r"), ("close", "user_initiated")],
            llm="realtime_auto",
        ),
        [*HOOKS, OUT(), SHUT, CB, JOB("user_initiated"), DEL],
    ),
    (
        Scenario(
            "other-speech-done-while-awaiting-reply",
            [("created", "x"), ("end_call", "s"), ("done", "s"), ("done", "x"), ("tick",),
             ("close", "job_shutdown")],
            llm="realtime_auto",
        ),
        [*HOOKS, OUT(), SHUT, CB, JOB("job_shutdown"), DEL],
    ),
] + [
    (
        Scenario(f"close-reason-{reason}",
                 [("end_call", "s"), ("done", "s"), ("close", reason)]),
        [*HOOKS, OUT(), SHUT, CB, JOB(reason), DEL],
    )
    for reason in ["error", "job_shutdown", "participant_disconnected", "user_initiated",
                   "task_completed"]
] + [
    (
        Scenario(f"close-reason-{reason}-before-done",
                 [("end_call", "s"), ("close", reason)], llm="realtime_auto"),
        [*HOOKS, OUT(), CB, JOB(reason), DEL],
    )
    for reason in ["error", "job_shutdown", "participant_disconnected", "user_initiated",
                   "task_completed"]
]


@pytest.mark.parametrize("scn,expected", SCENARIOS, ids=[s.name for s, _ in SCENARIOS])
async def test_reference_behaviour(scn: Scenario, expected: list[tuple]) -> None:
    ref = await run_reference(scn)
    assert ref.flat() == expected, describe(scn, ref.steps + [ref.final], [])


@pytest.mark.parametrize("scn,expected", SCENARIOS, ids=[s.name for s, _ in SCENARIOS])
async def test_sidecar_matches_reference(sidecar, scn: Scenario, expected: list[tuple]) -> None:
    ref = await run_reference(scn)
    assert ref.flat() == expected
    got = await run_sidecar(scn, sidecar.address, hints=[len(s) for s in ref.steps])
    ref_steps, ref_final, removed = dedupe_close_actions(ref)
    assert removed == 0
    assert got.steps + [got.final] == ref_steps + [ref_final], describe(
        scn, ref_steps + [ref_final], got.steps + [got.final]
    )
    assert not got.tool.in_fallback(got.session), "the sidecar was reachable: no fallback"
    # every directive was carried out once: no call without effect (a second shutdown())
    assert got.raw == got.flat(), got.raw


# Where the sidecar deliberately differs from the reference (contract: extensions).

TWICE = [
    Scenario(
        "end-call-twice-same-speech",
        [("end_call", "s"), ("end_call", "s"), ("done", "s"), ("close", "user_initiated")],
    ),
    Scenario(
        "end-call-twice-two-turns",
        [("end_call", "s"), ("done", "s"), ("created", "t"), ("end_call", "t"), ("done", "t"),
         ("close", "user_initiated")],
        llm="realtime_auto",
    ),
]


@pytest.mark.parametrize("scn", TWICE, ids=[s.name for s in TWICE])
async def test_difference_end_call_twice_acts_once(sidecar, scn: Scenario) -> None:
    """DIFFERENCE (extension "idempotency"): the reference registers its close handling once
    per end_call call, so when the LLM calls end_call twice it adds two room-deletion
    callbacks and calls job_ctx.shutdown() twice. The sidecar issues each directive once.
    Everything else is the same."""
    ref = await run_reference(scn)
    flat = ref.flat()
    assert flat.count(CB) == 2 and flat.count(JOB("user_initiated")) == 2
    assert flat.count(DEL) == 2
    got = await run_sidecar(scn, sidecar.address, hints=[len(s) for s in ref.steps])
    gflat = got.flat()
    assert gflat.count(CB) == 1 and gflat.count(JOB("user_initiated")) == 1
    assert gflat.count(DEL) == 1
    assert gflat.count(SHUT) == 1
    ref_steps, ref_final, removed = dedupe_close_actions(ref)
    assert removed == 3
    assert got.steps + [got.final] == ref_steps + [ref_final], describe(
        scn, ref_steps + [ref_final], got.steps + [got.final]
    )
