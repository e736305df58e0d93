"""Shared fixtures: a real endcall-sidecar process per test session (or per test, on demand)."""

from __future__ import annotations

import os
import selectors
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
DEFAULT_BIN = REPO / "target" / "debug" / "endcall-sidecar"


LIVEKIT_VARIABLES = ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET")


def sidecar_bin() -> Path:
    return Path(os.environ.get("ENDCALL_SIDECAR_BIN") or DEFAULT_BIN)


class Sidecar:
    """A running endcall-sidecar. ``address`` is what it printed on stdout. ``env`` adds
    variables (the caller's own ``ENDCALL_*`` ones are never passed on)."""

    def __init__(
        self, *args: str, listen: str = "127.0.0.1:0", env: dict[str, str] | None = None
    ) -> None:
        binary = sidecar_bin()
        if not binary.exists():
            pytest.fail(
                f"endcall-sidecar binary not found at {binary}; build it (cargo build) or set "
                "ENDCALL_SIDECAR_BIN",
                pytrace=False,
            )
        self.log = tempfile.NamedTemporaryFile(prefix="endcall-sidecar-", suffix=".log", delete=False)
        # The sidecar reads ENDCALL_* and LiveKit's own variables: a developer's shell must not
        # configure the sidecar under test (LIVEKIT_URL would point teardowns at a real
        # LiveKit). A test sets what it needs through `env`.
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("ENDCALL_") and k not in LIVEKIT_VARIABLES
        }
        inherited.pop("RUST_LOG", None)
        inherited.update(env or {})
        self.args = [str(binary), "--listen", listen, "--log-level", "warn", *args]
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=self.log,
            stdin=subprocess.DEVNULL,
            env=inherited,
        )
        self.address = self._read_address()

    def _read_address(self, timeout: float = 20.0) -> str:
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                self.stop()
                raise RuntimeError(f"sidecar did not print its address: {self.args}")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                self.stop()
                raise RuntimeError(f"sidecar exited early: {self.stderr()}")
            buf += chunk
        line = buf.split(b"\n", 1)[0].decode().strip()
        prefix = "listening on "
        assert line.startswith(prefix), line
        return line[len(prefix):]

    def stderr(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def sidecar() -> Iterator[Sidecar]:
    """One sidecar for the whole run; tests use distinct session ids."""
    from harness import REPLY_TIMEOUT

    s = Sidecar("--reply-timeout", f"{int(REPLY_TIMEOUT * 1000)}ms")
    yield s
    s.stop()


@pytest.fixture
def start_sidecar() -> Iterator:
    """Factory for a sidecar of the test's own (stopped at the end of the test)."""
    started: list[Sidecar] = []

    def start(
        *args: str, listen: str = "127.0.0.1:0", env: dict[str, str] | None = None
    ) -> Sidecar:
        s = Sidecar(*args, listen=listen, env=env)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def livekit_standin() -> Iterator:
    """A started stand-in for LiveKit's RoomService (livekit_standin.py), stopped at the end of
    the test. Point a sidecar at it with ``start_sidecar(*standin.sidecar_args(),
    env=standin.sidecar_env())``; ``add_room`` the rooms that exist."""
    from livekit_standin import LiveKitStandIn

    with LiveKitStandIn() as standin:
        yield standin
