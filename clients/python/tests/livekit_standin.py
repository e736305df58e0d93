"""A stand-in for LiveKit's RoomService, for tests of the sidecar's teardown.

No LiveKit server binary is on the registries the tests can reach, so the tests run the real
sidecar against this: an HTTP server on 127.0.0.1 (an ephemeral port, in a thread) that
answers ``POST /twirp/livekit.RoomService/DeleteRoom`` and checks each request the way LiveKit's
server does, in the same order:

1. **The access token**, with LiveKit's own Python package: ``livekit.api.TokenVerifier`` with
   the stand-in's key and secret (HS256 signature, ``iss`` = the API key, ``exp`` required,
   ``exp``/``nbf`` with one minute of leeway). Like LiveKit's auth middleware, a header that is
   not ``Bearer ...``, a token it cannot read, an unknown key or a bad token gets a plain-text
   401 (LiveKit's text, which repeats the refused token).
2. **The Twirp route**: POST, the exact path (under ``prefix``), and a ``Content-Type`` of
   ``application/json`` or ``application/protobuf``; anything else is Twirp's ``bad_route``
   (404), as Twirp answers it.
3. **The body**: a ``DeleteRoomRequest`` from the ``livekit-protocol`` package, read with
   protobuf's JSON parser (unknown fields ignored, as Twirp does) or its binary parser;
   otherwise Twirp's ``malformed`` (400).
4. **The grant**: ``video.roomCreate`` must be true, or Twirp's ``unauthenticated`` (401)
   "permissions denied", as LiveKit's ``EnsureCreatePermission`` answers.
5. **The room**: a room it knows (``add_room``) is deleted (200, ``{}`` or an empty protobuf);
   one it does not know gets Twirp's ``not_found`` (404) "requested room does not exist",
   LiveKit's ``ErrRoomNotFound``. Deleting twice therefore answers not_found the second time.

Faults are scripted with ``fail_next`` (a status, Twirp code and optional ``Retry-After``) and
``delay_next`` (an answer held back); they apply, in order, to requests that passed the checks.
Every request is recorded (``requests``), checked or refused, with what was answered.

What it does not cover: anything but ``DeleteRoom`` (other RoomService methods get
``bad_route``); what deleting a room does in LiveKit (disconnecting participants, hanging up
SIP legs, webhooks); rooms appearing and ending on their own; LiveKit's multi-node routing,
regions, rate limits and load balancers; TLS (it serves plain HTTP, so the sidecar's https://
path is covered by its Rust tests, not here); and the ``access_token`` query parameter.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from livekit.api import TokenVerifier
from livekit.api.access_token import Claims
from livekit.protocol.room import DeleteRoomRequest

DELETE_ROOM = "/twirp/livekit.RoomService/DeleteRoom"
API_KEY = "APIstandin"
# At least 32 bytes: shorter HMAC keys make PyJWT warn.
API_SECRET = "stand-in-secret-0123456789abcdefghijklmnop"


@dataclass(frozen=True)
class Fault:
    """What to do instead of the normal answer for one request that passed the checks."""

    status: int = 0  # 0: answer normally (after `delay`)
    code: str = ""
    msg: str = ""
    retry_after: str | None = None
    delay: float = 0.0


@dataclass(frozen=True)
class Recorded:
    """One request as received, and what the stand-in answered."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    answer: str  # the Twirp code, "ok", or the plain-text reason of a 401
    room: str | None = None  # from a body that decoded
    claims: Claims | None = None  # from a token that verified
    content_type: str = ""
    at: float = field(default_factory=time.monotonic)

    @property
    def deleted(self) -> bool:
        return self.status == 200


class LiveKitStandIn:
    """Serves on 127.0.0.1:<ephemeral>; use as a context manager, or ``start()``/``stop()``."""

    def __init__(
        self,
        api_key: str = API_KEY,
        api_secret: str = API_SECRET,
        *,
        rooms: tuple[str, ...] = (),
        prefix: str = "",
    ) -> None:
        self.api_key = api_key
        self.api_secret = api_secret
        self.prefix = prefix.rstrip("/")
        self._verifier = TokenVerifier(api_key, api_secret)
        self._lock = threading.Condition()
        self._rooms: set[str] = set(rooms)
        self._faults: deque[Fault] = deque()
        self._requests: list[Recorded] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # Lifecycle.

    def start(self) -> LiveKitStandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                standin._handle(self)

            do_GET = do_PUT = do_DELETE = do_PATCH = do_POST  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # A short poll interval: stop() waits for the serving loop to notice.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> LiveKitStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Where it is, and how a sidecar is pointed at it.

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` plus the prefix, as LIVEKIT_URL."""
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    @property
    def ws_url(self) -> str:
        """The same as ``ws://``, the form agents usually have in LIVEKIT_URL."""
        return f"ws://127.0.0.1:{self.port}{self.prefix}"

    def sidecar_args(self) -> list[str]:
        """The sidecar's flags for this stand-in (the key and secret go in ``sidecar_env``)."""
        return ["--livekit-url", self.ws_url]

    def sidecar_env(self) -> dict[str, str]:
        return {"LIVEKIT_API_KEY": self.api_key, "LIVEKIT_API_SECRET": self.api_secret}

    # Rooms and faults.

    def add_room(self, *names: str) -> None:
        with self._lock:
            self._rooms.update(names)

    def has_room(self, name: str) -> bool:
        with self._lock:
            return name in self._rooms

    def fail_next(
        self,
        status: int,
        code: str,
        msg: str = "",
        *,
        times: int = 1,
        retry_after: str | None = None,
    ) -> None:
        """The next `times` checked requests get `status` with a Twirp error body."""
        with self._lock:
            self._faults.extend(
                Fault(status=status, code=code, msg=msg or code, retry_after=retry_after)
                for _ in range(times)
            )

    def delay_next(self, seconds: float, *, times: int = 1) -> None:
        """The next `times` checked requests are answered normally, `seconds` late."""
        with self._lock:
            self._faults.extend(Fault(delay=seconds) for _ in range(times))

    # What it saw.

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    def deleted_rooms(self) -> list[str]:
        """Rooms of the accepted (200) DeleteRoom requests, in order."""
        return [r.room for r in self.requests if r.deleted and r.room is not None]

    def wait_for_requests(self, count: int, timeout: float) -> list[Recorded]:
        """Waits until at least `count` requests were answered; returns them all."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{len(self._requests)} LiveKit requests after {timeout}s, "
                        f"expected {count}: {self._requests}"
                    )
                self._lock.wait(left)
            return list(self._requests)

    # The checks.

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in h.headers.items()}
        seen = {"method": h.command, "path": h.path, "headers": headers, "body": body}

        # 1. LiveKit's auth middleware runs before Twirp's routing.
        claims: Claims | None = None
        auth = headers.get("authorization", "")
        if auth:
            if not auth.startswith("Bearer "):
                return self._plain_401(
                    h, seen, "invalid authorization header. Must start with Bearer "
                )
            token = auth[len("Bearer "):]
            try:
                issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
            except jwt.PyJWTError:
                return self._plain_401(h, seen, "invalid authorization token")
            if issuer != self.api_key:
                return self._plain_401(h, seen, f"invalid API key: {issuer}")
            try:
                claims = self._verifier.verify(token)
            except jwt.PyJWTError as err:
                return self._plain_401(h, seen, f"invalid token: {token}, error: {err}")

        # 2. Twirp's route: method, path, content type.
        path = h.path.split("?", 1)[0]
        if h.command != "POST":
            return self._twirp(
                h, seen, 404, "bad_route",
                f"unsupported method {h.command} (only POST is allowed)",
            )
        if path != self.prefix + DELETE_ROOM:
            return self._twirp(h, seen, 404, "bad_route", f'no handler for path "{path}"')
        content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type not in ("application/json", "application/protobuf"):
            return self._twirp(
                h, seen, 404, "bad_route",
                f'unexpected Content-Type: "{headers.get("content-type", "")}"',
            )

        # 3. The body.
        request = DeleteRoomRequest()
        try:
            if content_type == "application/json":
                json_format.Parse(body, request, ignore_unknown_fields=True)
            else:
                request.ParseFromString(body)
        except (json_format.ParseError, DecodeError, UnicodeDecodeError) as err:
            kind = "json" if content_type == "application/json" else "protobuf"
            return self._twirp(
                h, seen, 400, "malformed",
                f"the {kind} request could not be decoded: {err}",
                content_type=content_type,
            )
        seen = {**seen, "room": request.room, "claims": claims, "content_type": content_type}

        # 4. The grant (no token at all also ends here, as in LiveKit).
        if claims is None or not claims.video.room_create:
            return self._twirp(h, seen, 401, "unauthenticated", "permissions denied")

        # Scripted faults, for requests that passed every check.
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.status:
                return self._twirp(
                    h, seen, fault.status, fault.code, fault.msg, retry_after=fault.retry_after
                )

        # 5. The room.
        with self._lock:
            known = request.room in self._rooms
            self._rooms.discard(request.room)
        if not known:
            return self._twirp(h, seen, 404, "not_found", "requested room does not exist")
        if content_type == "application/json":
            return self._answer(h, seen, 200, "ok", b"{}", "application/json")
        return self._answer(h, seen, 200, "ok", b"", "application/protobuf")

    def _plain_401(self, h: BaseHTTPRequestHandler, seen: dict, text: str) -> None:
        self._answer(h, seen, 401, text, text.encode(), "text/plain; charset=utf-8")

    def _twirp(
        self,
        h: BaseHTTPRequestHandler,
        seen: dict,
        status: int,
        code: str,
        msg: str,
        *,
        retry_after: str | None = None,
        content_type: str = "",
    ) -> None:
        body = json.dumps({"code": code, "msg": msg}).encode()
        extra = {"Retry-After": retry_after} if retry_after is not None else {}
        seen = {"content_type": content_type, **seen}
        self._answer(h, seen, status, code, body, "application/json", extra)

    def _answer(
        self,
        h: BaseHTTPRequestHandler,
        seen: dict,
        status: int,
        answer: str,
        body: bytes,
        content_type: str,
        extra: dict[str, str] | None = None,
    ) -> None:
        # Recorded before the answer goes out: whoever got the answer finds the record.
        with self._lock:
            self._requests.append(Recorded(status=status, answer=answer, **seen))
            self._lock.notify_all()
        try:
            h.send_response(status)
            h.send_header("Content-Type", content_type)
            h.send_header("Content-Length", str(len(body)))
            for name, value in (extra or {}).items():
                h.send_header(name, value)
            h.end_headers()
            h.wfile.write(body)
            h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up first (a delay longer than its timeout)
