"""Exceptions raised by the client: one class per gRPC status the sidecar uses."""

from __future__ import annotations

import grpc

__all__ = [
    "SidecarError",
    "InvalidArgument",
    "NotFound",
    "FailedPrecondition",
    "ResourceExhausted",
    "SidecarUnavailable",
    "Unauthenticated",
    "from_rpc_error",
]


class SidecarError(Exception):
    """A call to the sidecar failed. ``code`` is the gRPC status, ``message`` the server's text."""

    def __init__(self, code: grpc.StatusCode, message: str, *, method: str = "") -> None:
        self.code = code
        self.message = message
        self.method = method
        where = f"{method}: " if method else ""
        super().__init__(f"{where}{code.name}: {message}")


class InvalidArgument(SidecarError):
    """A field was missing or malformed; the message names it."""


class NotFound(SidecarError):
    """GetSession of a session the sidecar does not know (or no longer keeps)."""


class FailedPrecondition(SidecarError):
    """For example EndCall on a closed session, or different options for an open session."""


class ResourceExhausted(SidecarError):
    """A server limit was reached (live sessions, request size)."""


class SidecarUnavailable(SidecarError):
    """The sidecar could not be reached, or did not answer in time."""


class Unauthenticated(SidecarError):
    """The sidecar wants a bearer token (none was sent) or refused the one sent."""


_BY_CODE: dict[grpc.StatusCode, type[SidecarError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: SidecarUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: SidecarUnavailable,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
}


def from_rpc_error(err: grpc.RpcError, method: str = "") -> SidecarError:
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    cls = _BY_CODE.get(code, SidecarError)
    return cls(code, details or "", method=method)
