"""The sidecar ends a call itself when its worker cannot (docs/contract.md, "The worker's lease
and the sidecar's teardown"): the real sidecar against the stand-in for LiveKit's RoomService
(livekit_standin.py), which checks every request as LiveKit does, its token with LiveKit's own
TokenVerifier.

- A real AgentSession (text mode) in a child process, attached with a room, killed with SIGKILL
  mid-call: DeleteRoom for that room within the window plus 2 s, exactly once.
- A worker whose stream drops (its connection is cut) and comes back within the window: no
  teardown.
- A worker that never closes after SHUTDOWN_SESSION: its room deleted at the close deadline.
- Faults: 503 twice then 200 (one teardown, three attempts); 401 (a clear error, no retries);
  the sidecar killed with SIGKILL while a teardown is pending, with --state-dir (done after the
  restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from endcall_sidecar import (
    EndCallClient,
    Outcome,
    SessionState,
    TeardownCause,
    TeardownResult,
)
from endcall_sidecar.livekit import SidecarEndCallTool

HERE = Path(__file__).resolve().parent
WINDOW = 1.0  # --worker-lost-after in these tests, in seconds
SLACK = 2.0  # the bound beyond the window


def lease_flags(window: float = WINDOW) -> list[str]:
    return ["--worker-lost-after", f"{int(window * 1000)}ms"]


async def wait_ended(client: EndCallClient, sid: str, timeout: float = 20.0):
    """The report once the session is closed and its teardown (if any) has its result."""
    deadline = time.monotonic() + timeout
    while True:
        report = await client.get_session(sid)
        pending = report.teardown is not None and report.teardown.result == TeardownResult.UNSPECIFIED
        if report.state == SessionState.CLOSED and not pending:
            return report
        assert time.monotonic() < deadline, report
        await asyncio.sleep(0.02)


async def attended(client: EndCallClient, sid: str, room: str):
    """Opens `sid` in `room` and holds its watch stream (the lease); returns the stream's task."""
    await client.open_session(sid, room=room)
    watcher = client.watch(sid)

    async def follow() -> None:
        async for _ in watcher:
            pass

    task = asyncio.create_task(follow())
    for _ in range(500):
        if (await client.get_session(sid)).attended:
            return task, watcher
        await asyncio.sleep(0.01)
    raise AssertionError("the sidecar never saw the watch stream")


async def test_a_job_killed_mid_call_has_its_room_deleted_once(
    livekit_standin, start_sidecar
) -> None:
    room = "room-killed-job"
    livekit_standin.add_room(room)
    sidecar = start_sidecar(*lease_flags(), *livekit_standin.sidecar_args(),
                            env=livekit_standin.sidecar_env())
    job = subprocess.Popen(
        [sys.executable, str(HERE / "teardown_job.py"), sidecar.address, room],
        stdout=subprocess.PIPE,
        cwd=HERE,
        env={**os.environ, "PYTHONPATH": str(HERE)},
    )
    try:
        assert job.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(job.stdout.readline), timeout=60)
        assert line.startswith(b"attached "), line
        sid = line.split()[1].decode()
        assert livekit_standin.requests == [], "nothing deleted while the job lives"
        killed = time.monotonic()
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=10)

        (request,) = await asyncio.to_thread(
            livekit_standin.wait_for_requests, 1, WINDOW + SLACK
        )
        arrived = time.monotonic() - killed
        assert request.room == room and request.deleted, request
        assert WINDOW <= arrived <= WINDOW + SLACK, arrived
        # Exactly once: nothing more comes, well past another window.
        await asyncio.sleep(WINDOW + 0.5)
        assert len(livekit_standin.requests) == 1, livekit_standin.requests
        assert not livekit_standin.has_room(room)

        async with EndCallClient(sidecar.address) as client:
            report = await wait_ended(client, sid)
        assert report.outcome == Outcome.WORKER_LOST
        assert report.room == room and report.attended
        assert report.teardown is not None
        assert report.teardown.cause == TeardownCause.WORKER_LOST
        assert report.teardown.result == TeardownResult.ROOM_DELETED
        assert report.teardown.attempts == 1
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert "the sidecar is ending the call itself" in sidecar.stderr()


class CuttableProxy:
    """A TCP proxy in front of the sidecar whose connections can all be cut at once."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers.update({writer, up_writer})

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        for w in list(self.writers):
            w.transport.abort()
        self.writers.clear()

    async def stop(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


async def test_a_stream_that_drops_and_comes_back_within_the_window_keeps_the_call(
    livekit_standin, start_sidecar
) -> None:
    room = "room-reconnects"
    livekit_standin.add_room(room)
    sidecar = start_sidecar(*lease_flags(2.0), *livekit_standin.sidecar_args(),
                            env=livekit_standin.sidecar_env())
    proxy = CuttableProxy(sidecar.address)
    address = await proxy.start()
    try:
        async with EndCallClient(address) as worker, EndCallClient(sidecar.address) as probe:
            task, watcher = await attended(worker, "reconnects", room)
            for _ in range(3):
                proxy.cut()  # the worker's connection drops; its watcher reconnects
                await asyncio.sleep(0.5)
            await asyncio.sleep(2.5)  # longer than the window, with the stream back
            report = await probe.get_session("reconnects")
            assert report.state == SessionState.ACTIVE, report
            assert report.teardown is None
            assert watcher.reconnects >= 1
            assert livekit_standin.requests == []
            watcher.cancel()
            task.cancel()
    finally:
        await proxy.stop()


async def test_a_worker_that_never_closes_after_shutdown_is_torn_down_at_the_close_deadline(
    livekit_standin, start_sidecar
) -> None:
    room = "room-stuck"
    livekit_standin.add_room(room)
    sidecar = start_sidecar("--close-deadline", "1s", *livekit_standin.sidecar_args(),
                            env=livekit_standin.sidecar_env())
    async with EndCallClient(sidecar.address) as client:
        task, watcher = await attended(client, "stuck", room)
        await client.end_call("stuck", "S")
        await client.on_speech_done("stuck", "S")
        # SHUTDOWN_SESSION is issued; the worker holds its stream but never closes.
        (request,) = await asyncio.to_thread(livekit_standin.wait_for_requests, 1, 1.0 + SLACK)
        assert request.room == room and request.deleted
        report = await wait_ended(client, "stuck")
        assert report.outcome == Outcome.TOOL_TURN_DONE
        assert report.teardown is not None
        assert report.teardown.cause == TeardownCause.CLOSE_DEADLINE
        assert report.teardown.result == TeardownResult.ROOM_DELETED
        task.cancel()


async def lost_worker(client: EndCallClient, sid: str, room: str) -> None:
    """A worker that attaches, then goes away for good."""
    task, watcher = await attended(client, sid, room)
    watcher.cancel()
    task.cancel()


async def test_503_twice_then_200_is_one_teardown_in_three_attempts(
    livekit_standin, start_sidecar
) -> None:
    room = "room-503"
    livekit_standin.add_room(room)
    livekit_standin.fail_next(503, "unavailable", times=2)
    sidecar = start_sidecar(*lease_flags(), *livekit_standin.sidecar_args(),
                            env=livekit_standin.sidecar_env())
    async with EndCallClient(sidecar.address) as client:
        await lost_worker(client, "flaky", room)
        report = await wait_ended(client, "flaky")
    assert [r.status for r in livekit_standin.requests] == [503, 503, 200]
    assert livekit_standin.deleted_rooms() == [room]
    assert report.teardown is not None
    assert report.teardown.result == TeardownResult.ROOM_DELETED
    assert report.teardown.attempts == 3


async def test_401_is_a_clear_error_with_no_retries(livekit_standin, start_sidecar) -> None:
    room = "room-401"
    livekit_standin.add_room(room)
    # A sidecar with the wrong secret: LiveKit's TokenVerifier refuses its token.
    env = {**livekit_standin.sidecar_env(), "LIVEKIT_API_SECRET": "not-the-secret-" + "x" * 32}
    sidecar = start_sidecar(*lease_flags(), *livekit_standin.sidecar_args(), env=env)
    async with EndCallClient(sidecar.address) as client:
        await lost_worker(client, "refused", room)
        report = await wait_ended(client, "refused")
        await asyncio.sleep(1.5)  # a retry would have come by now
    assert [r.status for r in livekit_standin.requests] == [401]
    assert livekit_standin.has_room(room)
    assert report.teardown is not None
    assert report.teardown.result == TeardownResult.FAILED
    assert report.teardown.attempts == 1
    assert "401" in report.teardown.error, report.teardown.error
    log = sidecar.stderr()
    assert "the call could not be hung up" in log, log


async def test_a_teardown_pending_at_a_sigkill_is_done_after_the_restart(
    livekit_standin, start_sidecar, tmp_path
) -> None:
    room = "room-restart"
    livekit_standin.add_room(room)
    # LiveKit is down for a while: the sidecar keeps retrying.
    livekit_standin.fail_next(503, "unavailable", times=3)
    flags = ["--state-dir", str(tmp_path), *lease_flags(), "--livekit-retry-for", "1h",
             *livekit_standin.sidecar_args()]
    first = start_sidecar(*flags, env=livekit_standin.sidecar_env())
    async with EndCallClient(first.address) as client:
        await lost_worker(client, "pending", room)
        await asyncio.to_thread(livekit_standin.wait_for_requests, 1, WINDOW + SLACK)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=10)
    assert livekit_standin.has_room(room), "not deleted before the kill"

    second = start_sidecar(*flags, env=livekit_standin.sidecar_env())
    async with EndCallClient(second.address) as client:
        report = await wait_ended(client, "pending", timeout=30)
    assert livekit_standin.deleted_rooms() == [room]
    assert report.teardown is not None
    assert report.teardown.result == TeardownResult.ROOM_DELETED
    assert report.outcome == Outcome.WORKER_LOST
