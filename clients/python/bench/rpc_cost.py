"""What one call to the sidecar costs the agent process with grpc.aio, against a real sidecar on
loopback: a channel's life (made, one GetTool, closed), a unary RPC on an open channel, and a
WatchSession stream from its opening to its end. Process CPU time (all threads) and wall time,
per operation, as means over --count operations.

    clients/python/scripts/bench rpc-cost [--count N] [--sidecar-bin PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from endcall_sidecar import EndCallClient  # noqa: E402
from hangup import REPO, default_binary  # noqa: E402
from sidecar_process import SidecarProcess  # noqa: E402


async def measure(what: str, count: int, op: Callable[[int], Awaitable[object]]) -> None:
    await op(-1)  # warm
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(count):
        await op(i)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    print(f"{what:48}{cpu / count * 1e3:8.3f} ms CPU{wall / count * 1e3:8.3f} ms wall")


async def run(address: str, count: int) -> None:
    async def channel_life(_: int) -> None:
        c = EndCallClient(address)
        await c.get_tool()
        await c.close()

    client = EndCallClient(address)

    async def unary(i: int) -> None:
        await client.on_speech_created(f"rpc-cost-{i}", "S1")

    async def stream(i: int) -> None:
        sid = f"rpc-cost-watch-{i}-{uuid.uuid4().hex[:6]}"
        watcher = client.watch(sid)

        async def follow() -> None:
            async for _ in watcher:
                pass

        task = asyncio.create_task(follow())
        await asyncio.sleep(0)
        await client.on_session_close(sid, "user_initiated")  # the server then ends the stream
        await task

    await measure("channel: made, one GetTool, closed", count, channel_life)
    await measure("unary RPC on an open channel (OnSpeechCreated)", count, unary)
    await measure("WatchSession opened and ended, with its close RPC", count, stream)
    await client.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--sidecar-bin", default=default_binary())
    args = ap.parse_args(argv)
    with SidecarProcess(args.sidecar_bin) as sidecar:
        binary = args.sidecar_bin
        shown = os.path.relpath(binary, REPO) if binary.startswith(str(REPO)) else binary
        print(f"{args.count} of each against {shown} on {sidecar.address}")
        asyncio.run(run(sidecar.address, args.count))


if __name__ == "__main__":
    main()
