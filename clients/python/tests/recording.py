"""Client interceptors that record every request the client sends to the real sidecar, so a
test can see what went on the wire (the sidecar may not echo every field back)."""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio


class Wire:
    """The requests sent on one channel, in order, as (method name, request)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def record(self, details: grpc.aio.ClientCallDetails, request: Any) -> None:
        method = details.method
        name = method.decode() if isinstance(method, bytes) else str(method)
        self.calls.append((name.rsplit("/", 1)[-1], request))

    def methods(self) -> list[str]:
        return [m for m, _ in self.calls]

    def requests(self, method: str) -> list[Any]:
        return [r for m, r in self.calls if m == method]


# grpc.aio files an interceptor under the first kind it is an instance of, so one per kind.
class _Unary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, wire: Wire) -> None:
        self.wire = wire

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.wire.record(details, request)
        return await continuation(details, request)


class _Stream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, wire: Wire) -> None:
        self.wire = wire

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        self.wire.record(details, request)
        return await continuation(details, request)


def recording_channel(address: str) -> tuple[grpc.aio.Channel, Wire]:
    wire = Wire()
    return grpc.aio.insecure_channel(address, interceptors=[_Unary(wire), _Stream(wire)]), wire
