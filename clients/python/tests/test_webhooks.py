"""Post-call webhooks against the real sidecar and a real receiver (webhook_receiver.py), which
checks every delivery with the ``standardwebhooks`` reference library.

Each test starts its own sidecar with short retry timings (``--webhook-backoff``) so that
retries happen in milliseconds, not the default seconds."""

from __future__ import annotations

import asyncio
import collections
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import REPO, Sidecar, sidecar_bin
from endcall_sidecar import CloseReason, EndCallClient
from webhook_receiver import SECRET, Receiver, always_ok, session_of

ENV = {"ENDCALL_WEBHOOK_SECRET": SECRET}
FAST_RETRIES = ["--webhook-backoff", "50ms", "--webhook-backoff-max", "200ms"]


def sid(name: str) -> str:
    return f"wh-{name}-{uuid.uuid4().hex[:8]}"


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def log_of(s: Sidecar) -> str:
    return Path(s.log.name).read_text(errors="replace")


async def whole_call(c: EndCallClient, session: str, **close: object) -> None:
    """A pipeline call: end_call, the goodbye played out, the session closed."""
    await c.end_call(session, "goodbye")
    await c.on_speech_done(session, "goodbye")
    await c.on_session_close(session, CloseReason.USER_INITIATED, **close)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Throwaway certificates (scripts/test-pki): ca.pem signs server.pem (localhost)."""
    out = tmp_path_factory.mktemp("pki")
    subprocess.run([str(REPO / "scripts" / "test-pki"), str(out)], check=True)
    return out


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(**kwargs: object) -> Receiver:
        r = Receiver(**kwargs)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


async def test_one_ended_call_is_one_verified_call_ended_within_a_second(start_sidecar, receiver):
    rx = receiver()
    s = start_sidecar("--webhook-url", rx.url, env=ENV)
    session = sid("happy")
    async with EndCallClient(s.address) as c:
        await whole_call(c, session, error_message="the caller's words")
        closed = time.monotonic()
        report = await c.get_session(session)
    got = rx.wait_until(lambda r: len(r) >= 1, timeout=5)
    assert got[0].at - closed < 1.0, f"delivered {got[0].at - closed:.3f} s after the close"
    assert got[0].error is None and got[0].status == 200
    event = got[0].event
    assert event["type"] == "call.ended"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", event["timestamp"])
    data = event["data"]
    assert data["session_id"] == session
    assert data["state"] == "closed"
    assert data["outcome"] == "tool_turn_done"
    assert data["close_reason"] == "user_initiated"
    assert [d["kind"] for d in data["directives"]] == [
        "shutdown_session",
        "delete_room",
        "shutdown_job",
    ]
    assert [d["seq"] for d in data["directives"]] == [d.seq for d in report.directives]
    events = [e["event"] for e in data["timeline"] if "event" in e]
    assert events == [e.event for e in report.timeline if e.event is not None]
    assert data["closed_at"] == int(report.closed_at.timestamp() * 1_000_000)
    # The worker's error text stays out unless the operator asks for it.
    assert "error_message" not in data
    assert b"the caller's words" not in got[0].body
    # Exactly one delivery.
    time.sleep(0.3)
    assert len(rx.snapshot()) == 1


async def test_the_error_message_only_with_the_flag(start_sidecar, receiver):
    rx = receiver()
    s = start_sidecar("--webhook-url", rx.url, "--webhook-include-error-message", "true", env=ENV)
    session = sid("error")
    async with EndCallClient(s.address) as c:
        await c.on_session_close(session, CloseReason.ERROR, error_message="the caller's words")
    got = rx.wait_until(lambda r: len(r) >= 1, timeout=5)
    assert got[0].event["data"]["error_message"] == "the caller's words"


async def test_500_three_times_then_200_is_one_delivery_under_one_id(start_sidecar, receiver):
    rx = receiver(answer=lambda before: (500, 0.0) if before < 3 else (200, 0.0))
    s = start_sidecar("--webhook-url", rx.url, *FAST_RETRIES, env=ENV)
    session = sid("retry")
    async with EndCallClient(s.address) as c:
        await whole_call(c, session)
    got = rx.wait_until(lambda r: any(x.status == 200 for x in r), timeout=10)
    time.sleep(0.5)  # nothing more may come
    got = rx.snapshot()
    assert [x.status for x in got] == [500, 500, 500, 200]
    assert len({x.webhook_id for x in got}) == 1
    assert all(x.error is None for x in got), [x.error for x in got]
    # The report is intact: the same bytes every time, and the session's.
    assert len({x.body for x in got}) == 1
    assert session_of(got[-1]) == session
    assert got[-1].event["data"]["outcome"] == "tool_turn_done"


async def test_410_stops_the_delivery(start_sidecar, receiver):
    gone, other = sid("gone"), sid("other")
    rx = receiver(answer=lambda before: (410, 0.0))
    s = start_sidecar("--webhook-url", rx.url, *FAST_RETRIES, env=ENV)
    async with EndCallClient(s.address) as c:
        await c.on_session_close(gone, CloseReason.USER_INITIATED)
        rx.wait_until(lambda r: len(r) >= 1, timeout=5)
        rx.answer = always_ok
        # With the backoff at 50 ms, a retry of the first would come long before this wait ends.
        time.sleep(1.0)
        await c.on_session_close(other, CloseReason.USER_INITIATED)
    rx.wait_until(lambda r: any(x.status == 200 for x in r), timeout=5)
    got = rx.snapshot()
    assert [(session_of(x), x.status) for x in got] == [(gone, 410), (other, 200)]
    assert "410 Gone" in log_of(s)


async def test_a_delivery_gives_up_after_retry_for_with_an_error_line(start_sidecar, receiver):
    rx = receiver(answer=lambda before: (503, 0.0))
    s = start_sidecar(
        "--webhook-url", rx.url, *FAST_RETRIES, "--webhook-retry-for", "1s", env=ENV
    )
    session = sid("giveup")
    async with EndCallClient(s.address) as c:
        await c.on_session_close(session, CloseReason.USER_INITIATED)
    deadline = time.monotonic() + 10
    while "gave up" not in log_of(s):
        assert time.monotonic() < deadline, log_of(s)
        time.sleep(0.05)
    tried = len(rx.snapshot())
    assert tried >= 2
    time.sleep(0.5)
    assert len(rx.snapshot()) == tried, "attempts after giving up"
    line = next(l for l in log_of(s).splitlines() if "gave up" in l)
    assert "ERROR" in line and session in line and "HTTP 503" in line


def test_a_malformed_secret_refuses_the_start_naming_the_variable():
    for env, flags, named in [
        ({"ENDCALL_WEBHOOK_SECRET": "not-a-secret"}, [], "ENDCALL_WEBHOOK_SECRET"),
        ({"ENDCALL_WEBHOOK_SECRET": "whsec_***"}, [], "ENDCALL_WEBHOOK_SECRET"),
        ({}, [], "ENDCALL_WEBHOOK_SECRET"),  # a URL and no secret at all
    ]:
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("ENDCALL_")}
        child_env.update(env)
        run = subprocess.run(
            [str(sidecar_bin()), "--listen", "127.0.0.1:0", "--webhook-url", "http://127.0.0.1:9/hook", *flags],
            env=child_env,
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert run.returncode == 2, run
        assert "listening on" not in run.stdout
        assert named in run.stderr, run.stderr
        secret = env.get("ENDCALL_WEBHOOK_SECRET", "")
        assert not secret or secret not in run.stderr


def test_the_secret_is_refused_on_the_command_line():
    run = subprocess.run(
        [str(sidecar_bin()), "--webhook-url", "http://127.0.0.1:9/hook", "--webhook-secret", SECRET],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert run.returncode == 2
    assert "ENDCALL_WEBHOOK_SECRET" in run.stderr
    assert SECRET not in run.stderr


async def test_100_calls_survive_kill_9_and_arrive_once_the_receiver_is_up(start_sidecar, receiver):
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    state = tempfile.mkdtemp(prefix="endcall-webhooks-")
    flags = ["--webhook-url", url, "--state-dir", state, *FAST_RETRIES]
    s = start_sidecar(*flags, env=ENV)
    sessions = [sid(f"crash{i}") for i in range(100)]
    async with EndCallClient(s.address) as c:
        # Each close is answered once the session's close is on disk; the delivery's own
        # record follows on the webhook store's thread.
        await asyncio.gather(*(whole_call(c, session) for session in sessions))
    s.kill()  # SIGKILL: no drain, no flush
    assert s.proc.returncode == -signal.SIGKILL

    s2 = start_sidecar(*flags, env=ENV)
    rx = receiver(port=port)
    got = rx.wait_until(lambda r: len({x.webhook_id for x in r if x.status == 200}) >= 100, timeout=30)
    assert all(x.error is None for x in got), [x.error for x in got if x.error]
    by_id: dict[str, set[str]] = collections.defaultdict(set)
    for x in got:
        by_id[x.webhook_id].add(session_of(x))
    # Every session's event, none missing; an id stands for one session, so a second copy of
    # an event can only be a retry under the same id.
    assert sorted(s for ids in by_id.values() for s in ids) == sorted(sessions)
    assert all(len(ids) == 1 for ids in by_id.values())
    copies = collections.Counter(x.webhook_id for x in got)
    assert len(copies) == 100
    bodies: dict[str, set[bytes]] = collections.defaultdict(set)
    for x in got:
        bodies[x.webhook_id].add(x.body)
    assert all(len(b) == 1 for b in bodies.values()), "a retry sent other bytes"
    s2.stop()


async def test_sigterm_keeps_pending_deliveries_on_disk_for_the_next_start(start_sidecar, receiver):
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    state = tempfile.mkdtemp(prefix="endcall-webhooks-")
    flags = ["--webhook-url", url, "--state-dir", state, *FAST_RETRIES]
    # RUST_LOG wins over the fixture's --log-level warn: the line asserted on is at info.
    s = start_sidecar(*flags, env={**ENV, "RUST_LOG": "info"})
    sessions = [sid(f"term{i}") for i in range(5)]
    async with EndCallClient(s.address) as c:
        for session in sessions:
            await c.on_session_close(session, CloseReason.USER_INITIATED)
    s.stop()  # SIGTERM: drains, exits 0
    assert s.proc.returncode == 0, log_of(s)
    assert "stay on disk for the next start" in log_of(s)

    rx = receiver(port=port)
    start_sidecar(*flags, env=ENV)
    got = rx.wait_until(lambda r: len({x.webhook_id for x in r if x.status == 200}) >= 5, timeout=20)
    assert sorted({session_of(x) for x in got}) == sorted(sessions)


async def test_a_slow_receiver_holds_no_rpc_and_pending_is_lost_at_sigterm(start_sidecar, receiver):
    # 30 s per request: far longer than the test. RPCs must not wait for it.
    rx = receiver(answer=lambda before: (200, 30.0))
    s = start_sidecar(
        "--webhook-url", rx.url, "--webhook-concurrency", "2", "--drain-timeout", "500ms", env=ENV
    )
    slowest = 0.0
    async with EndCallClient(s.address) as c:
        for i in range(20):
            started = time.monotonic()
            await whole_call(c, sid(f"slow{i}"))
            slowest = max(slowest, time.monotonic() - started)
    rx.wait_arrived(2, timeout=5)
    assert slowest < 2.0, f"a call took {slowest:.2f} s with the receiver stalled"
    assert rx.arrived == 2, "more requests in flight than --webhook-concurrency"
    s.stop()
    assert s.proc.returncode == 0
    log = log_of(s)
    assert re.search(r"lost=20\b", log), log


async def test_without_state_dir_the_queue_is_bounded_and_drops_are_counted(start_sidecar, receiver):
    rx = receiver(answer=lambda before: (200, 30.0))
    metrics = free_port()
    s = start_sidecar(
        "--webhook-url", rx.url, "--webhook-queue", "3", "--webhook-concurrency", "1",
        "--metrics-listen", f"127.0.0.1:{metrics}", "--drain-timeout", "200ms", env=ENV,
    )
    async with EndCallClient(s.address) as c:
        for i in range(8):
            await c.on_session_close(sid(f"bound{i}"), CloseReason.USER_INITIATED)
    rx.wait_arrived(1, timeout=5)
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
    assert re.search(r'endcall_webhook_deliveries_total\{result="dropped"\} 5\b', text), text
    assert "webhook queue full" in log_of(s)


async def test_https_trusts_the_cas_ssl_cert_file_names_and_no_other(start_sidecar, receiver, pki):
    rx = receiver(tls=(str(pki / "server.pem"), str(pki / "server.key")))
    trusted, untrusted = sid("https"), sid("untrusted")
    # The receiver's CA is the one SSL_CERT_FILE names: delivered over TLS.
    s = start_sidecar(
        "--webhook-url", rx.url, *FAST_RETRIES, env={**ENV, "SSL_CERT_FILE": str(pki / "ca.pem")}
    )
    async with EndCallClient(s.address) as c:
        await c.on_session_close(trusted, CloseReason.USER_INITIATED)
    got = rx.wait_until(lambda r: len(r) >= 1, timeout=10)
    assert [session_of(x) for x in got] == [trusted]
    # Another CA: the handshake fails, so nothing arrives, and the failure is logged.
    s2 = start_sidecar(
        "--webhook-url", rx.url, *FAST_RETRIES,
        env={**ENV, "SSL_CERT_FILE": str(pki / "client-ca.pem")},
    )
    async with EndCallClient(s2.address) as c:
        await c.on_session_close(untrusted, CloseReason.USER_INITIATED)
    deadline = time.monotonic() + 10
    while "webhook attempts failing" not in log_of(s2):
        assert time.monotonic() < deadline, log_of(s2)
        time.sleep(0.05)
    assert "TLS" in log_of(s2), log_of(s2)
    assert [session_of(x) for x in rx.snapshot()] == [trusted]
