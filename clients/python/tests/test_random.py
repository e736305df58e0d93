"""Seeded random event sequences over the same alphabet, run through LiveKit's EndCallTool and
SidecarEndCallTool (one sidecar process, a distinct session id per sequence)."""

from __future__ import annotations

import os
import random

from harness import Scenario, dedupe_close_actions, describe, run_reference, run_sidecar

SEED = int(os.environ.get("ENDCALL_RANDOM_SEED", "20261125"))
COUNT = int(os.environ.get("ENDCALL_RANDOM_COUNT", "300"))
REASONS = ["error", "job_shutdown", "participant_disconnected", "user_initiated", "task_completed"]


def generate(rng: random.Random, index: int) -> Scenario:
    llm = rng.choice(["pipeline", "realtime_auto", "realtime_auto", "realtime_manual"])
    options: dict = {}
    if rng.random() < 0.25:
        options["end_instructions"] = None
    if rng.random() < 0.25:
        options["delete_room"] = False
    hook = rng.choice([None, None, None, "to_none", "to_text"])
    steps: list[tuple] = []
    made: list[str] = []
    done: set[str] = set()
    called: set[str] = set()
    closed = False
    n = 0

    def new_key() -> str:
        nonlocal n
        n += 1
        return f"k{n}"

    for _ in range(rng.randint(2, 9)):
        open_ = [k for k in made if k not in done]
        r = rng.random()
        if r < 0.25 or not made:
            # end_call, usually in the newest speech, sometimes a new or an older one. Never
            # in a finished speech that already called it: LiveKit runs a tool inside its
            # speech, so that cannot happen (a finished speech without one is the contract's
            # "late EndCall" and is kept, except with a hook that changes the output: for a
            # late EndCall the sidecar decides when EndCall arrives, before on_tool_completed
            # runs, so a changed output cannot count; LiveKit never gets there anyway).
            allowed = [
                k for k in made
                if k not in done or (k not in called and hook is None)
            ]
            if allowed and rng.random() < 0.7:
                key = allowed[-1] if rng.random() < 0.8 else rng.choice(allowed)
            else:
                key = new_key()
                made.append(key)
            called.add(key)
            steps.append(("end_call", key))
        elif r < 0.45:
            key = new_key()
            made.append(key)
            steps.append(("created", key))
        elif r < 0.75 and open_:
            key = rng.choice(open_)
            done.add(key)
            steps.append(("interrupt" if rng.random() < 0.25 else "done", key))
        elif r < 0.82 and llm != "pipeline":
            steps.append(("auto", rng.random() < 0.5))
        elif r < 0.88 and llm == "realtime_auto":
            steps.append(("tick",))
        elif r < 0.93 and not closed:
            closed = True
            steps.append(("close", rng.choice(REASONS)))
    if not closed and rng.random() < 0.85:
        steps.append(("close", rng.choice(REASONS)))
    return Scenario(f"random-{index}", steps, llm=llm, options=options, hook=hook)


async def test_random_sequences_match_reference(sidecar) -> None:
    rng = random.Random(SEED)
    failures: list[str] = []
    differences = 0
    for i in range(COUNT):
        scn = generate(rng, i)
        ref = await run_reference(scn)
        got = await run_sidecar(scn, sidecar.address, hints=[len(s) for s in ref.steps])
        # DIFFERENCE (extension "idempotency"): see test_difference_end_call_twice_acts_once
        ref_steps, ref_final, removed = dedupe_close_actions(ref)
        differences += removed > 0
        if got.steps + [got.final] != ref_steps + [ref_final]:
            failures.append(describe(scn, ref_steps + [ref_final], got.steps + [got.final]))
        if got.raw != got.flat():
            failures.append(f"{scn.name}: a call without effect (done twice?): {got.raw}")
        if got.tool.in_fallback(got.session):
            failures.append(f"{scn.name}: fell back although the sidecar was up")
        if len(failures) >= 5:
            break
    assert not failures, f"seed {SEED}:\n" + "\n\n".join(failures)
    # the generator must actually reach the interesting cases
    assert differences > 0


async def test_random_sequences_without_sidecar_match_reference() -> None:
    """The same sequences with the sidecar unreachable: the in-process fallback must end every
    call as the reference does."""
    from test_fallback import FALLBACK_KW, _dead_address

    rng = random.Random(SEED + 1)
    failures: list[str] = []
    dead = _dead_address()
    for i in range(COUNT // 3):
        scn = generate(rng, i)
        ref = await run_reference(scn)
        got = await run_sidecar(scn, dead, hints=[len(s) for s in ref.steps], **FALLBACK_KW)
        ref_steps, ref_final, _ = dedupe_close_actions(ref)
        if got.steps + [got.final] != ref_steps + [ref_final]:
            failures.append(describe(scn, ref_steps + [ref_final], got.steps + [got.final]))
        if len(failures) >= 5:
            break
    assert not failures, f"seed {SEED + 1}:\n" + "\n\n".join(failures)
