"""Asyncio client for the endcall-sidecar gRPC service (one method per RPC)."""

from __future__ import annotations

import asyncio
import datetime as _dt
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio

from ._proto.endcall.v1 import endcall_pb2 as pb
from ._proto.endcall.v1 import endcall_pb2_grpc as pb_grpc
from .errors import SidecarError, SidecarUnavailable, from_rpc_error
from .security import Security, resolve_security
from .types import (
    CloseReason,
    CloseReasonLike,
    Directive,
    EndCallResult,
    EventResult,
    ModelCapabilities,
    OpenSessionResult,
    ResolvedOptions,
    SessionOptions,
    SessionReport,
    SessionState,
    TimeLimitWarning,
    ToolDefinition,
)

__all__ = ["EndCallClient", "DirectiveWatcher", "DEFAULT_ADDRESS"]

logger = logging.getLogger("endcall_sidecar")

DEFAULT_ADDRESS = "127.0.0.1:50051"

# Stream failures worth a reconnect: the connection dropped, or the server went away mid-stream.
_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
}


def _target(address: str) -> str:
    # grpc understands "host:port", "unix:/path" and "unix:///path" natively.
    return address


class EndCallClient:
    """One channel to a sidecar. Use as ``async with EndCallClient(addr) as c: ...``.

    ``timeout`` bounds each unary call (seconds). Calls fail fast with SidecarUnavailable when
    the sidecar cannot be reached (no waiting for the channel to become ready).

    Security (all optional; each falls back to its variable): ``token`` or ``token_file``
    (ENDCALL_SIDECAR_TOKEN, ENDCALL_SIDECAR_TOKEN_FILE) is sent as ``authorization: Bearer``
    with every call, watch streams included; ``tls_ca`` (ENDCALL_SIDECAR_TLS_CA) turns TLS on,
    ``tls_cert``/``tls_key`` (ENDCALL_SIDECAR_TLS_CERT/_KEY) add a client certificate for mutual
    TLS, ``tls_server_name`` (ENDCALL_SIDECAR_TLS_SERVER_NAME) overrides the name checked.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        timeout: float = 5.0,
        channel: grpc.aio.Channel | None = None,
        channel_options: list[tuple[str, Any]] | None = None,
        token: str | None = None,
        token_file: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_server_name: str | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.security: Security = resolve_security(
            token=token,
            token_file=token_file,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_server_name=tls_server_name,
        )
        self._metadata = self.security.metadata()
        self._own_channel = channel is None
        self._channel = channel or self.security.channel(
            _target(address), list(channel_options or [])
        )
        self._stub = pb_grpc.EndCallServiceStub(self._channel)

    async def __aenter__(self) -> "EndCallClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_channel:
            await self._channel.close()

    async def _unary(self, name: str, request: Any, timeout: float | None) -> Any:
        method = getattr(self._stub, name)
        try:
            return await method(
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e, name) from None
        except grpc.aio.UsageError as e:  # e.g. the channel was closed
            raise SidecarUnavailable(grpc.StatusCode.UNAVAILABLE, str(e), method=name) from None

    async def open_session(
        self,
        session_id: str,
        options: SessionOptions | None = None,
        *,
        max_duration: float | None = None,
        max_duration_warnings: "list[TimeLimitWarning] | tuple[TimeLimitWarning, ...]" = (),
        room: str | None = None,
        timeout: float | None = None,
    ) -> OpenSessionResult:
        """Open a session before its first event. ``room`` is the LiveKit room the call runs
        in: with it the sidecar can hang the call up itself when the worker is lost.
        ``max_duration_warnings`` (with ``max_duration``): reminders before the limit, each
        issued once as a REMIND directive at its time."""
        req = pb.OpenSessionRequest(session_id=session_id)
        if options is not None:
            req.options.CopyFrom(options.to_proto())
        if max_duration is not None:
            req.max_duration.FromTimedelta(_dt.timedelta(seconds=max_duration))
        for warning in max_duration_warnings:
            req.max_duration_warnings.append(warning.to_proto())
        if room:
            req.room = room
        r = await self._unary("OpenSession", req, timeout)
        return OpenSessionResult(SessionState(r.state), ResolvedOptions.from_proto(r.options))

    async def end_call(
        self,
        session_id: str,
        speech_id: str,
        options: SessionOptions | None = None,
        capabilities: ModelCapabilities | None = None,
        *,
        timeout: float | None = None,
    ) -> EndCallResult:
        req = pb.EndCallRequest(session_id=session_id, speech_id=speech_id)
        if options is not None:
            req.options.CopyFrom(options.to_proto())
        if capabilities is not None:
            req.capabilities.CopyFrom(capabilities.to_proto())
        return EndCallResult.from_proto(await self._unary("EndCall", req, timeout))

    async def on_speech_created(
        self, session_id: str, speech_id: str, *, timeout: float | None = None
    ) -> EventResult:
        req = pb.OnSpeechCreatedRequest(session_id=session_id, speech_id=speech_id)
        return EventResult.from_proto(await self._unary("OnSpeechCreated", req, timeout))

    async def on_speech_done(
        self,
        session_id: str,
        speech_id: str,
        *,
        interrupted: bool = False,
        capabilities: ModelCapabilities | None = None,
        tool_output_given: bool | None = None,
        timeout: float | None = None,
    ) -> EventResult:
        req = pb.OnSpeechDoneRequest(
            session_id=session_id, speech_id=speech_id, interrupted=interrupted
        )
        if capabilities is not None:
            req.capabilities.CopyFrom(capabilities.to_proto())
        if tool_output_given is not None:
            req.tool_output_given = tool_output_given
        return EventResult.from_proto(await self._unary("OnSpeechDone", req, timeout))

    async def on_user_speech(
        self, session_id: str, *, timeout: float | None = None
    ) -> EventResult:
        """The user spoke (a final transcript with words): the session's silence starts again."""
        req = pb.OnUserSpeechRequest(session_id=session_id)
        return EventResult.from_proto(await self._unary("OnUserSpeech", req, timeout))

    async def on_session_close(
        self,
        session_id: str,
        reason: CloseReasonLike,
        *,
        error_message: str | None = None,
        timeout: float | None = None,
    ) -> EventResult:
        req = pb.OnSessionCloseRequest(
            session_id=session_id, reason=int(CloseReason.parse(reason))
        )
        if error_message is not None:
            req.error_message = error_message
        return EventResult.from_proto(await self._unary("OnSessionClose", req, timeout))

    async def get_tool(
        self,
        *,
        extra_description: str | None = None,
        ignore_on_enter: bool | None = None,
        timeout: float | None = None,
    ) -> ToolDefinition:
        req = pb.GetToolRequest()
        if extra_description is not None:
            req.extra_description = extra_description
        if ignore_on_enter is not None:
            req.ignore_on_enter = ignore_on_enter
        return ToolDefinition.from_proto(await self._unary("GetTool", req, timeout))

    async def get_session(self, session_id: str, *, timeout: float | None = None) -> SessionReport:
        req = pb.GetSessionRequest(session_id=session_id)
        return SessionReport.from_proto(await self._unary("GetSession", req, timeout))

    async def watch_session_once(
        self, session_id: str, after_seq: int = 0
    ) -> AsyncIterator[Directive]:
        """One WatchSession stream, no reconnect. Errors surface as SidecarError."""
        call = self._stub.WatchSession(
            pb.WatchSessionRequest(session_id=session_id, after_seq=after_seq),
            metadata=self._metadata,
        )
        try:
            async for m in call:
                yield Directive.from_proto(m)
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e, "WatchSession") from None
        finally:
            call.cancel()

    def watch(
        self,
        session_id: str,
        after_seq: int = 0,
        *,
        max_attempts: int | None = 8,
        backoff: float = 0.05,
        max_backoff: float = 1.0,
    ) -> "DirectiveWatcher":
        """Follow a session's directives across dropped streams (see DirectiveWatcher)."""
        return DirectiveWatcher(
            self,
            session_id,
            after_seq,
            max_attempts=max_attempts,
            backoff=backoff,
            max_backoff=max_backoff,
        )


class DirectiveWatcher:
    """Async iterator over one session's directives that survives dropped streams.

    It follows ``WatchSession`` and, when the stream breaks, reconnects with ``after_seq`` set to
    the last sequence number it yielded, so nothing is missed and nothing is yielded twice. It
    stops when the server ends the stream (the session closed and its last directive was sent).
    After ``max_attempts`` consecutive failed connections (no directive received in between;
    ``None`` = retry forever) it raises SidecarUnavailable. Non-retryable statuses (for example
    INVALID_ARGUMENT) are raised at once.
    """

    def __init__(
        self,
        client: EndCallClient,
        session_id: str,
        after_seq: int = 0,
        *,
        max_attempts: int | None = 8,
        backoff: float = 0.05,
        max_backoff: float = 1.0,
    ) -> None:
        self._client = client
        self.session_id = session_id
        self.last_seq = after_seq
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.reconnects = 0
        self._call: grpc.aio.UnaryStreamCall | None = None
        self._closed = False

    def __aiter__(self) -> AsyncIterator[Directive]:
        return self._iterate()

    def cancel(self) -> None:
        """Stop following: the iteration ends."""
        self._closed = True
        if self._call is not None:
            self._call.cancel()

    async def _iterate(self) -> AsyncIterator[Directive]:
        failures = 0
        delay = self.backoff
        stub = self._client._stub
        while not self._closed:
            self._call = stub.WatchSession(
                pb.WatchSessionRequest(session_id=self.session_id, after_seq=self.last_seq),
                metadata=self._client._metadata,
            )
            try:
                async for m in self._call:
                    d = Directive.from_proto(m)
                    if d.seq <= self.last_seq:
                        continue
                    self.last_seq = d.seq
                    failures = 0
                    delay = self.backoff
                    yield d
                return  # the server ended the stream: the session is over
            except grpc.aio.AioRpcError as e:
                if self._closed:
                    return
                if e.code() not in _RETRYABLE:
                    raise from_rpc_error(e, "WatchSession") from None
                failures += 1
                if self.max_attempts is not None and failures >= self.max_attempts:
                    raise SidecarUnavailable(
                        e.code(),
                        f"WatchSession for {self.session_id!r} failed {failures} times in a row; "
                        f"last error: {e.details()}",
                        method="WatchSession",
                    ) from None
                logger.warning(
                    "endcall-sidecar: watch stream for session %s dropped (%s: %s); "
                    "reconnecting after seq %d",
                    self.session_id,
                    e.code().name,
                    e.details(),
                    self.last_seq,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
                self.reconnects += 1
            finally:
                call, self._call = self._call, None
                if call is not None:
                    call.cancel()


