"""A webhook receiver for the tests: a real HTTP server on 127.0.0.1 that checks every
delivery with the ``standardwebhooks`` package (the specification's reference library, pinned
in requirements-test.txt). The tests never check a signature themselves."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import standardwebhooks

# A secret in the specification's format: whsec_ and the base64 of 32 bytes.
SECRET = "whsec_" + "QkNERUZHSElKS0xNTk9QUVJTVFVWV1hZWjAxMjM0NTY="


@dataclass
class Received:
    """One request, as the receiver saw it."""

    webhook_id: str | None
    timestamp: str | None
    body: bytes
    # The parsed event when the signature checked out; None (and ``error`` set) when not.
    event: dict[str, Any] | None
    error: str | None
    status: int
    at: float = field(default_factory=time.monotonic)


# (how many requests this webhook-id had before this one) -> (status, seconds to wait first)
Answer = Callable[[int], "tuple[int, float]"]


def always_ok(_: int) -> tuple[int, float]:
    return 200, 0.0


class Receiver:
    """Serves ``POST /hook`` on ``port`` (0: any free port) until ``close()``; over TLS with
    ``tls=(certificate, key)`` (PEM files), as ``https://localhost:PORT/hook``."""

    def __init__(
        self,
        secret: str = SECRET,
        *,
        port: int = 0,
        answer: Answer = always_ok,
        tls: tuple[str, str] | None = None,
    ):
        self.verifier = standardwebhooks.Webhook(secret)
        self.answer = answer
        self.received: list[Received] = []
        # Requests that came in, answered or not yet (a slow answer is recorded when given).
        self.arrived = 0
        self._changed = threading.Condition()
        self._closing = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (the http.server API)
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver._handle(self, body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.url = f"https://localhost:{self.port}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _handle(self, handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        headers = {k: v for k, v in handler.headers.items()}
        webhook_id = handler.headers.get("webhook-id")
        try:
            event = self.verifier.verify(body, headers)
            error = None
        except standardwebhooks.WebhookVerificationError as e:
            event, error = None, str(e)
        with self._changed:
            before = sum(1 for r in self.received if r.webhook_id == webhook_id)
            self.arrived += 1
            self._changed.notify_all()
        status, wait = self.answer(before)
        if wait and self._closing.wait(wait):
            return  # closing: no answer at all
        record = Received(webhook_id, handler.headers.get("webhook-timestamp"), body, event, error, status)
        with self._changed:
            self.received.append(record)
            self._changed.notify_all()
        try:
            handler.send_response(status)
            handler.send_header("content-length", "0")
            handler.end_headers()
        except OSError:
            pass

    def wait_until(self, done: Callable[[list[Received]], bool], timeout: float) -> list[Received]:
        """Waits until ``done(received)`` holds; fails the test after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done(self.received):
                left = deadline - time.monotonic()
                if left <= 0:
                    summary = [(r.webhook_id, r.status, r.error) for r in self.received]
                    raise AssertionError(f"receiver: not done after {timeout} s; got {summary}")
                self._changed.wait(left)
            return list(self.received)

    def wait_arrived(self, n: int, timeout: float) -> None:
        """Waits until ``n`` requests came in, answered or not."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.arrived < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"receiver: {self.arrived} requests after {timeout} s, not {n}")
                self._changed.wait(left)

    def snapshot(self) -> list[Received]:
        with self._changed:
            return list(self.received)

    def close(self) -> None:
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()


def session_of(r: Received) -> str:
    assert r.event is not None, r.error
    return r.event["data"]["session_id"]


def body_json(r: Received) -> dict[str, Any]:
    return json.loads(r.body)
