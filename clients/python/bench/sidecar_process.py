"""A real endcall-sidecar process on 127.0.0.1 for the benchmark (stopped on exit)."""

from __future__ import annotations

import subprocess
from typing import Any


class SidecarProcess:
    def __init__(self, binary: str, *args: str) -> None:
        self.args = [binary, "--listen", "127.0.0.1:0", "--log-level", "warn", *args]
        self.address = ""
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> "SidecarProcess":
        self._proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                      text=True)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.__exit__()
            raise RuntimeError(f"the sidecar did not start: {self.args} printed {line!r}")
        self.address = line.removeprefix("listening on ")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(10)
