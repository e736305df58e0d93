"""Run by scripts/check-package with the python of a clean venv into which the package was
installed from an artifact, from a directory outside the repository: the client and the
LiveKit tool import, they are the installed copies of the expected version, and they talk to a
real sidecar (GetTool, an attached session's OpenSession with its room).

  python installed_check.py <expected version> <sidecar binary>
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import subprocess
import sys
import uuid

import endcall_sidecar
from endcall_sidecar import EndCallClient
from endcall_sidecar.livekit import SidecarEndCallTool


async def talk(address: str) -> None:
    async with EndCallClient(address) as client:
        tool_def = await client.get_tool()
        assert tool_def.name == "end_call", tool_def
        sid = f"installed-{uuid.uuid4().hex[:8]}"
        opened = await client.open_session(sid, room="room-installed")
        assert opened.state.name == "ACTIVE", opened
        await client.on_session_close(sid, "user_initiated")
    tool = SidecarEndCallTool(address=address)
    await tool.setup()
    assert tool.tool_definition is not None and tool.tool_definition.name == "end_call"
    assert callable(tool.attach)
    await tool.aclose()


def main() -> None:
    version, binary = sys.argv[1], sys.argv[2]
    where = endcall_sidecar.__file__ or ""
    assert "site-packages" in where, f"imported from {where}, not the installed copy"
    installed = importlib.metadata.version("endcall-sidecar")
    assert installed == version == endcall_sidecar.__version__, (installed, version)
    proc = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--log-level", "warn"],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on "), line
        asyncio.run(talk(line.removeprefix("listening on ")))
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"endcall-sidecar {installed} from {where}: imports, GetTool and OpenSession work")


if __name__ == "__main__":
    main()
