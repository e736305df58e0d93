"""Unit tests of the asyncio client against a real sidecar: typed results, the reconnecting
watcher, unreachable addresses, and error statuses surfacing as exceptions."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

import grpc
import pytest

from endcall_sidecar import (
    CloseReason,
    DirectiveKind,
    EndCallClient,
    FailedPrecondition,
    InvalidArgument,
    ModelCapabilities,
    NotFound,
    Outcome,
    ResourceExhausted,
    SessionOptions,
    SessionState,
    ShutdownCause,
    SidecarUnavailable,
)


def sid(name: str) -> str:
    return f"client-{name}-{uuid.uuid4().hex[:10]}"


def dead_address() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"127.0.0.1:{port}"


class DroppingProxy:
    """A TCP proxy in front of the sidecar that can cut every connection and refuse new ones,
    as a network blip or a load balancer restart would."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.blocked = False
        self.conns: list[asyncio.StreamWriter] = []
        self.server: asyncio.AbstractServer | None = None
        self.accepted = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if self.blocked:
            w.transport.abort()
            return
        self.accepted += 1
        ur, uw = await asyncio.open_connection(*self.target)
        self.conns += [w, uw]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(r, uw), pipe(ur, w))

    def drop(self) -> None:
        for w in self.conns:
            w.transport.abort()
        self.conns.clear()

    async def close(self) -> None:
        self.drop()
        if self.server is not None:
            self.server.close()


async def test_one_method_per_rpc_typed_results(sidecar) -> None:
    s = sid("flow")
    async with EndCallClient(sidecar.address) as c:
        opened = await c.open_session(s, SessionOptions(delete_room=True, reply_timeout=2.5))
        assert opened.state == SessionState.ACTIVE
        assert opened.options.delete_room is True
        assert opened.options.reply_timeout == pytest.approx(2.5)
        assert opened.options.end_instructions == "say goodbye to the user"

        r = await c.end_call(s, "sp1", capabilities=ModelCapabilities(realtime=False))
        assert r.tool_output == "say goodbye to the user"
        assert r.state == SessionState.ENDING and r.directives == () and not r.duplicate

        again = await c.end_call(s, "sp1")
        assert again.duplicate and again.directives == ()

        e = await c.on_speech_created(s, "other")
        assert e.directives == () and e.state == SessionState.ENDING

        done = await c.on_speech_done(s, "sp1", interrupted=True)
        assert [(d.seq, d.kind, d.cause) for d in done.directives] == [
            (1, DirectiveKind.SHUTDOWN_SESSION, ShutdownCause.TOOL_TURN_DONE)
        ]
        assert done.directives[0].session_id == s and done.directives[0].issued_at is not None
        assert done.state == SessionState.SHUTTING_DOWN

        close = await c.on_session_close(s, CloseReason.USER_INITIATED)
        assert [(d.seq, d.kind, d.reason) for d in close.directives] == [
            (2, DirectiveKind.DELETE_ROOM, ""),
            (3, DirectiveKind.SHUTDOWN_JOB, "user_initiated"),
        ]
        assert close.state == SessionState.CLOSED
        # a retried close returns what the first close produced
        retry = await c.on_session_close(s, "user_initiated")
        assert retry.duplicate and retry.directives == close.directives

        report = await c.get_session(s)
        assert report.state == SessionState.CLOSED
        assert report.outcome == Outcome.TOOL_TURN_DONE
        assert report.close_reason == CloseReason.USER_INITIATED
        assert [d.seq for d in report.directives] == [1, 2, 3]
        assert report.timeline and report.end_call_at is not None

        # the whole stream replays, then ends because the session is closed
        watched = [d async for d in c.watch(s)]
        assert [d.seq for d in watched] == [1, 2, 3]
        watched = [d async for d in c.watch(s, after_seq=2)]
        assert [d.seq for d in watched] == [3]

        tool = await c.get_tool(extra_description="Only when asked.", ignore_on_enter=True)
        assert tool.name == "end_call" and tool.ignore_on_enter is True
        assert tool.description.rstrip().endswith("Only when asked.")
        assert '"object"' in tool.parameters_json_schema


async def test_end_instructions_none_is_not_empty_text(sidecar) -> None:
    async with EndCallClient(sidecar.address) as c:
        r = await c.end_call(sid("none"), "s", SessionOptions(end_instructions=None))
        assert r.tool_output is None
        r = await c.end_call(sid("empty"), "s", SessionOptions(end_instructions=""))
        assert r.tool_output == ""


async def test_watcher_reconnects_after_dropped_stream(sidecar) -> None:
    proxy = DroppingProxy(sidecar.address)
    paddr = await proxy.start()
    s = sid("watch")
    got: list = []
    direct = EndCallClient(sidecar.address)
    via_proxy = EndCallClient(paddr)
    try:
        # opened before the session exists
        watcher = via_proxy.watch(s, max_attempts=None, backoff=0.02, max_backoff=0.1)

        async def consume() -> None:
            async for d in watcher:
                got.append(d)

        task = asyncio.create_task(consume())
        await direct.end_call(s, "s1", capabilities=ModelCapabilities(realtime=True,
                                                                      auto_tool_reply=True))
        await direct.on_speech_done(s, "s1")  # realtime: awaiting the reply, nothing yet
        await direct.on_speech_created(s, "r1")
        await direct.on_speech_done(s, "r1")  # seq 1: SHUTDOWN_SESSION (reply played out)
        await _until(lambda: len(got) == 1)
        assert got[0].cause == ShutdownCause.REPLY_PLAYED_OUT

        # cut the stream and keep the proxy refusing while the next directives are issued
        proxy.blocked = True
        proxy.drop()
        await direct.on_session_close(s, "participant_disconnected")  # seq 2 and 3
        await asyncio.sleep(0.2)  # the watcher fails to reconnect a few times meanwhile
        assert len(got) == 1
        proxy.blocked = False

        await asyncio.wait_for(task, timeout=10)  # the stream ended: the session is closed
        assert [d.seq for d in got] == [1, 2, 3]  # nothing missed, nothing twice
        assert [d.kind for d in got[1:]] == [DirectiveKind.DELETE_ROOM, DirectiveKind.SHUTDOWN_JOB]
        assert got[2].reason == "participant_disconnected"
        assert watcher.reconnects >= 1 and watcher.last_seq == 3
    finally:
        await direct.close()
        await via_proxy.close()
        await proxy.close()


async def _until(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_watcher_gives_up_on_unreachable_sidecar() -> None:
    async with EndCallClient(dead_address()) as c:
        w = c.watch("nobody", max_attempts=3, backoff=0.01)
        t0 = time.monotonic()
        with pytest.raises(SidecarUnavailable) as ei:
            async for _ in w:
                pass
        assert time.monotonic() - t0 < 5
        assert ei.value.code == grpc.StatusCode.UNAVAILABLE
        assert "3 times" in ei.value.message


@pytest.mark.parametrize("address", ["dead", "unix:/nonexistent-dir/endcall.sock"])
async def test_bad_address_fails_fast(address: str) -> None:
    addr = dead_address() if address == "dead" else address
    async with EndCallClient(addr, timeout=3.0) as c:
        t0 = time.monotonic()
        with pytest.raises(SidecarUnavailable) as ei:
            await c.end_call("s", "sp")
        assert time.monotonic() - t0 < 3.5
        assert ei.value.method == "EndCall"
        assert "EndCall: UNAVAILABLE" in str(ei.value)


async def test_malformed_address_raises_sidecar_error() -> None:
    async with EndCallClient("no-such-host.invalid:1", timeout=5.0) as c:
        with pytest.raises(SidecarUnavailable):
            await c.get_tool()


async def test_error_statuses_carry_the_servers_message(sidecar) -> None:
    async with EndCallClient(sidecar.address) as c:
        with pytest.raises(NotFound) as nf:
            await c.get_session(sid("never"))
        assert "session_id" in nf.value.message and "never" in nf.value.message

        with pytest.raises(InvalidArgument) as ia:
            await c.end_call("", "s")
        assert ia.value.message.startswith("session_id")
        assert ia.value.code == grpc.StatusCode.INVALID_ARGUMENT

        with pytest.raises(InvalidArgument) as ia:
            await c.on_speech_done(sid("x"), "")
        assert "speech_id" in ia.value.message

        with pytest.raises(InvalidArgument) as ia:
            await c.end_call("x" * 129, "s")
        assert "129" in ia.value.message

        with pytest.raises(InvalidArgument) as ia:
            await c.on_session_close(sid("x"), CloseReason.UNSPECIFIED)
        assert "reason" in ia.value.message

        with pytest.raises(InvalidArgument) as ia:
            await c.end_call(sid("x"), "s", SessionOptions(end_instructions="x" * 5000))
        assert "end_instructions" in ia.value.message

        closed = sid("closed")
        await c.end_call(closed, "s")
        await c.on_session_close(closed, "error")
        with pytest.raises(FailedPrecondition) as fp:
            await c.end_call(closed, "s2")
        assert "closed" in fp.value.message
        assert str(fp.value).startswith("EndCall: FAILED_PRECONDITION: ")

        opened = sid("opened")
        await c.open_session(opened, SessionOptions(delete_room=False))
        with pytest.raises(FailedPrecondition):
            await c.open_session(opened, SessionOptions(delete_room=True))


async def test_a_request_that_does_not_decode_is_invalid_argument(sidecar) -> None:
    """Bytes that do not decode as the RPC's request (here a session_id that is not UTF-8) get
    INVALID_ARGUMENT naming the message, not INTERNAL; the sidecar goes on serving."""
    async with grpc.aio.insecure_channel(sidecar.address) as channel:
        # No serializers: the request's bytes go out as they are.
        end_call = channel.unary_unary("/endcall.v1.EndCallService/EndCall")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await end_call(b"\x0a\x02\xff\xfe", timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == (
            "EndCallRequest: the request does not decode as protobuf: "
            "EndCallRequest.session_id: invalid string value: data is not UTF-8 encoded"
        )
    async with EndCallClient(sidecar.address) as c:
        await c.end_call(sid("after-garbage"), "s")


async def test_resource_exhausted(start_sidecar) -> None:
    sc = start_sidecar("--max-sessions", "1")
    async with EndCallClient(sc.address) as c:
        await c.end_call("first", "s")
        with pytest.raises(ResourceExhausted) as re_:
            await c.end_call("second", "s")
        assert "max-sessions" in re_.value.message or "sessions" in re_.value.message


def test_close_reason_parsing() -> None:
    from livekit.agents.voice.events import CloseReason as LkCloseReason

    for r in LkCloseReason:
        assert CloseReason.parse(r).value_str == r.value
        assert CloseReason.parse(r.value) == CloseReason.parse(r)
    with pytest.raises(ValueError):
        CloseReason.parse("nonsense")
