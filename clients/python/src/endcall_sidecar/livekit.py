"""``SidecarEndCallTool``: a drop-in replacement for LiveKit Agents' ``EndCallTool``.

The tool reports what happens to the agent session to the sidecar (the tool call, the speeches
created after it, the speeches done, the session close, and once attached the user's final
transcripts) and carries out the directives it gets back, each exactly once. If the sidecar cannot be reached it logs an error and ends the call
in-process the way LiveKit's own tool does, so no call is left hanging.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from livekit.agents import llm
from livekit.agents.job import get_job_context
from livekit.agents.llm import RealtimeModel, ToolFlag, Toolset, function_tool
from livekit.agents.voice.events import (
    CloseEvent,
    RunContext,
    SpeechCreatedEvent,
    UserInputTranscribedEvent,
)

from .client import DEFAULT_ADDRESS, EndCallClient
from .engine import LocalDirective, LocalEngine
from .errors import FailedPrecondition, SidecarError
from .security import resolve_security
from .types import (
    UNSET,
    CloseReason,
    Directive,
    DirectiveKind,
    ModelCapabilities,
    SessionOptions,
    TimeLimitWarning,
    ToolDefinition,
    Unset,
)

__all__ = ["SidecarEndCallTool", "ADDRESS_ENV"]

logger = logging.getLogger("endcall_sidecar")

ADDRESS_ENV = "ENDCALL_SIDECAR_ADDR"
# Used only when the sidecar is unreachable (and for the tool description until GetTool answers).
_FALLBACK_END_INSTRUCTIONS = "say goodbye to the user"
_FALLBACK_REPLY_TIMEOUT = 5.0
_FALLBACK_DESCRIPTION = (
    "Hang up the call. Use it only once the user has made clear the conversation is over "
    "(for example they say goodbye); not for a pause, a hold or a transfer, and not when "
    "unsure. Nothing can be said to the user after it."
)


@dataclass
class _ToolSpeech:
    activity: Any
    final_given: bool | None = None  # whether the tool finally returned an output (after hooks)
    reply_output_given: bool | None = None  # as the sidecar's EndCall reply said


def _job_room_name(job_ctx: Any) -> str | None:
    """The LiveKit room of a job: the connected room's name, else the one the job was
    dispatched to (known before ``ctx.connect()``)."""
    if job_ctx is None:
        return None
    for get in (lambda: job_ctx.room.name, lambda: job_ctx.job.room.name):
        try:
            name = get()
        except Exception:  # a context without a room (a fake job, a test double)
            continue
        if isinstance(name, str) and name:
            return name
    return None


def _capabilities(activity: Any) -> ModelCapabilities:
    rt = getattr(activity, "realtime_llm_session", None)
    return ModelCapabilities(
        realtime=isinstance(getattr(activity, "llm", None), RealtimeModel),
        auto_tool_reply=bool(rt is not None and rt.capabilities.auto_tool_reply_generation),
    )


# One client per event loop, sidecar address, call timeout and security settings, shared by
# every tool made without a client: a worker process then holds one gRPC channel to its sidecar
# instead of opening (and closing) one per session, about 0.65 ms of CPU each time with its first
# RPC (docs/performance.md). A channel belongs to its event loop, hence one set per loop.
_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, EndCallClient]] = (
    weakref.WeakKeyDictionary()
)
# GetTool's answers, per client and arguments: the definition follows from the sidecar's flags,
# so it is asked once per client rather than at every agent activation.
_definitions: weakref.WeakKeyDictionary[EndCallClient, dict[tuple, ToolDefinition]] = (
    weakref.WeakKeyDictionary()
)


def _shared_client(key: tuple, address: str, timeout: float) -> EndCallClient:
    clients = _shared.setdefault(asyncio.get_running_loop(), {})
    client = clients.get(key)
    if client is None:
        client = clients[key] = EndCallClient(address, timeout=timeout)
    return client


async def _tool_definition(
    client: EndCallClient, extra_description: str | None, ignore_on_enter: bool | None
) -> ToolDefinition:
    known = _definitions.setdefault(client, {})
    key = (extra_description, ignore_on_enter)
    if key not in known:
        known[key] = await client.get_tool(
            extra_description=extra_description, ignore_on_enter=ignore_on_enter
        )
    return known[key]


class _Binding:
    """One agent session's link to the sidecar: ordered events, directives once each."""

    def __init__(self, tool: SidecarEndCallTool, session: Any, session_id: str) -> None:
        self.tool = tool
        self.session = session
        self.session_id = session_id
        self.job_ctx = get_job_context(required=False)
        self.fallback = False
        self.closed = False
        self._queue: asyncio.Queue[tuple[str, tuple, asyncio.Future | None]] = asyncio.Queue()
        self._seen: set[int] = set()
        self._next_seq = 1
        self._buffer: dict[int, Directive] = {}
        self._executed_kinds: set[DirectiveKind] = set()
        self._local_pending: list[LocalDirective] = []
        self._reported_done: set[str] = set()
        self._tool_speeches: dict[str, _ToolSpeech] = {}
        # > 0 while an end_call tool is running: directives wait until it has returned, as
        # LiveKit's tool only acts once the tool has answered the LLM
        self._hold = 0
        opts = tool._options
        self.engine = LocalEngine(
            emit=self._on_local_directive,
            delete_room=True if opts.delete_room is UNSET else bool(opts.delete_room),
            output_given_default=tool._local_end_instructions() is not None,
            reply_timeout=(
                _FALLBACK_REPLY_TIMEOUT if opts.reply_timeout is UNSET else opts.reply_timeout
            ),
        )
        self.actions: list[tuple] = []  # what this binding made the agent do (for tests/logs)
        session.on("speech_created", self._on_speech_created)
        session.on("close", self._on_close)
        self._watcher_started = False
        self._watch_task: asyncio.Task | None = None
        self._listening = False  # to the user's transcripts (once attached)
        self.warnings: tuple[TimeLimitWarning, ...] = ()  # sent with the OpenSession
        self._sender = asyncio.create_task(self._send_loop(), name=f"endcall-send-{session_id}")
        self._sender.add_done_callback(lambda _: self._maybe_finish())

    # ---- session events (sync callbacks) ------------------------------------------------

    def _on_speech_created(self, ev: SpeechCreatedEvent) -> None:
        if self.closed:
            return
        handle = ev.speech_handle
        self._enqueue("created", (handle.id,))
        handle.add_done_callback(self._on_speech_done)

    def _on_speech_done(self, handle: Any) -> None:
        if self.closed or handle.id in self._reported_done:
            return
        self._reported_done.add(handle.id)
        caps = None
        given = None
        ts = self._tool_speeches.get(handle.id)
        if ts is not None:
            caps = _capabilities(ts.activity)
            if (
                ts.final_given is not None
                and ts.reply_output_given is not None
                and ts.final_given != ts.reply_output_given
            ):
                given = ts.final_given
        self._enqueue("done", (handle.id, bool(handle.interrupted), caps, given))

    def listen_to_user(self) -> None:
        """Report the user's speech from now on: each final transcript with words (never mere
        voice activity, so noise cannot keep a call alive) starts the sidecar's silence again."""
        if not self._listening and not self.closed:
            self._listening = True
            self.session.on("user_input_transcribed", self._on_user_input_transcribed)

    def _on_user_input_transcribed(self, ev: UserInputTranscribedEvent) -> None:
        if self.closed or not ev.is_final or not ev.transcript.strip():
            return
        self._enqueue("user_speech", ())

    def _on_close(self, ev: CloseEvent) -> None:
        if self.closed:
            return
        self.closed = True
        self.session.off("speech_created", self._on_speech_created)
        self.session.off("close", self._on_close)
        if self._listening:
            self.session.off("user_input_transcribed", self._on_user_input_transcribed)
        err = str(ev.error) if getattr(ev, "error", None) is not None else None
        self._enqueue("close", (ev.reason, err))

    # ---- ordered sending -----------------------------------------------------------------

    def _enqueue(self, kind: str, args: tuple, fut: asyncio.Future | None = None) -> None:
        self._queue.put_nowait((kind, args, fut))

    def _start_watcher(self) -> None:
        if not self._watcher_started and not self.fallback:
            self._watcher_started = True
            self._watch_task = asyncio.create_task(
                self._watch_loop(), name=f"endcall-watch-{self.session_id}"
            )
            self._watch_task.add_done_callback(lambda _: self._maybe_finish())

    def submit_open(self, max_duration: float | None, room: str | None) -> None:
        # The stream is held from the session's start: the sidecar takes it as the worker's
        # lease (a session whose stream is gone too long has lost its worker), and the
        # directives of its timers (WIND_UP, REMIND and their SHUTDOWN_SESSION) come on the
        # stream only.
        self._start_watcher()
        self._enqueue("open", (max_duration, room))

    def submit_end_call(self, speech_id: str, caps: ModelCapabilities) -> asyncio.Future:
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._start_watcher()
        self._enqueue("end_call", (speech_id, caps), fut)
        return fut

    async def idle(self) -> None:
        """Wait until every event reported so far has been sent and answered."""
        await self._queue.join()

    async def _send_loop(self) -> None:
        client = self.tool._get_client()
        while True:
            kind, args, fut = await self._queue.get()
            try:
                await self._handle(client, kind, args, fut)
            except Exception as e:  # never let one event stop the others
                logger.exception("endcall-sidecar: error handling %s event", kind)
                if kind == "end_call" and fut is not None and not fut.done():
                    output = self.tool._local_end_instructions()
                    speech_id, caps = args
                    self.engine.end_call(
                        speech_id,
                        output_given=output is not None,
                        realtime=caps.realtime,
                        auto_tool_reply=caps.auto_tool_reply,
                    )
                    fut.set_result(output)
                self._go_fallback(e, kind)
            finally:
                self._queue.task_done()
            if kind == "close":
                return

    async def _handle(
        self, client: EndCallClient, kind: str, args: tuple, fut: asyncio.Future | None
    ) -> None:
        sid = self.session_id
        if kind == "open":
            max_duration, room = args
            if not self.fallback:
                try:
                    await client.open_session(
                        sid,
                        self.tool._options,
                        max_duration=max_duration,
                        room=room,
                        max_duration_warnings=self.warnings,
                    )
                except SidecarError as e:
                    self._go_fallback(e, "OpenSession")
            return
        if kind == "end_call":
            speech_id, caps = args
            output: Any
            if not self.fallback:
                try:
                    r = await client.end_call(sid, speech_id, self.tool._options, caps)
                except SidecarError as e:
                    self._go_fallback(e, "EndCall")
                else:
                    output = r.tool_output
                    self.engine.end_call(
                        speech_id,
                        output_given=output is not None,
                        realtime=caps.realtime,
                        auto_tool_reply=caps.auto_tool_reply,
                    )
                    assert fut is not None
                    fut.set_result(output)
                    self._accept(r.directives)
                    return
            output = self.tool._local_end_instructions()
            self.engine.end_call(
                speech_id,
                output_given=output is not None,
                realtime=caps.realtime,
                auto_tool_reply=caps.auto_tool_reply,
            )
            assert fut is not None
            fut.set_result(output)
        elif kind == "user_speech":
            await self._rpc("OnUserSpeech", client.on_user_speech(sid))
        elif kind == "created":
            (speech_id,) = args
            self.engine.speech_created(speech_id)
            await self._rpc("OnSpeechCreated", client.on_speech_created(sid, speech_id))
        elif kind == "done":
            speech_id, interrupted, caps, given = args
            self.engine.speech_done(
                speech_id,
                realtime=caps.realtime if caps else None,
                auto_tool_reply=caps.auto_tool_reply if caps else None,
                tool_output_given=given,
            )
            await self._rpc(
                "OnSpeechDone",
                client.on_speech_done(
                    sid,
                    speech_id,
                    interrupted=interrupted,
                    capabilities=caps,
                    tool_output_given=given,
                ),
            )
        elif kind == "close":
            reason, err = args
            reason_str = CloseReason.parse(reason).value_str
            self.engine.session_close(reason_str)
            await self._rpc(
                "OnSessionClose", client.on_session_close(sid, reason, error_message=err)
            )

    async def _rpc(self, name: str, aw: Awaitable[Any]) -> None:
        if self.fallback:
            aw.close()  # type: ignore[attr-defined]
            return
        try:
            r = await aw
        except SidecarError as e:
            self._go_fallback(e, name)
            return
        self._accept(r.directives)

    # ---- directives ----------------------------------------------------------------------

    def _accept(self, directives: Any) -> None:
        for d in sorted(directives, key=lambda d: d.seq):
            if d.seq in self._seen or d.seq < self._next_seq:
                continue
            self._seen.add(d.seq)
            self._buffer[d.seq] = d
        self._drain()

    def hold(self) -> None:
        self._hold += 1

    def release(self) -> None:
        self._hold -= 1
        self._drain()
        if self.fallback:
            pending, self._local_pending = self._local_pending, []
            for d in pending:
                self._execute_local(d)

    def _drain(self) -> None:
        if self._hold > 0:
            return
        # carry them out in sequence order, each once
        while self._next_seq in self._buffer:
            d = self._buffer.pop(self._next_seq)
            self._next_seq += 1
            if d.kind == DirectiveKind.REMIND and self._tool_speeches:
                # Issued before the end_call, carried out after it: the agent is saying goodbye.
                logger.info("endcall-sidecar: reminder %d dropped: the call is ending", d.seq)
                continue
            self._execute(d.kind, reason=d.reason, instructions=d.instructions, seq=d.seq)

    def _on_local_directive(self, d: LocalDirective) -> None:
        if self.fallback and self._hold == 0:
            self._execute_local(d)
        else:
            self._local_pending.append(d)

    def _execute_local(self, d: LocalDirective) -> None:
        if d.kind in self._executed_kinds:
            return
        self._execute(d.kind, reason=d.reason, instructions="", seq=None)

    def _go_fallback(self, err: BaseException, what: str) -> None:
        if self.fallback:
            return
        self.fallback = True
        if isinstance(err, FailedPrecondition) and self.engine.closed:
            logger.warning("endcall-sidecar: %s after close: %s", what, err)
        else:
            logger.error(
                "endcall-sidecar: sidecar at %s failed on %s for session %s (%s); "
                "ending this call in-process instead",
                self.tool._address,
                what,
                self.session_id,
                err,
            )
        if self._watch_task is not None and asyncio.current_task() is not self._watch_task:
            self._watch_task.cancel()
        if self._hold == 0:
            pending, self._local_pending = self._local_pending, []
            for d in pending:
                self._execute_local(d)

    def _execute(self, kind: DirectiveKind, *, reason: str, instructions: str, seq: int | None):
        self._executed_kinds.add(kind)
        src = "sidecar" if seq is not None else "local"
        try:
            if kind == DirectiveKind.SHUTDOWN_SESSION:
                logger.info("endcall-sidecar: ending session %s (%s)", self.session_id, src)
                self.actions.append(("session.shutdown",))
                self.session.shutdown()
            elif kind == DirectiveKind.DELETE_ROOM:
                job_ctx = self._job_ctx()
                if job_ctx is None:
                    return

                async def _delete_room() -> None:
                    logger.info("endcall-sidecar: deleting the room, the call has ended")
                    await job_ctx.delete_room()

                self.actions.append(("job.add_shutdown_callback",))
                job_ctx.add_shutdown_callback(_delete_room)
            elif kind == DirectiveKind.SHUTDOWN_JOB:
                job_ctx = self._job_ctx()
                if job_ctx is None:
                    return
                self.actions.append(("job.shutdown", reason))
                job_ctx.shutdown(reason=reason)
            elif kind in (DirectiveKind.WIND_UP, DirectiveKind.REMIND):
                # WIND_UP asks for a goodbye; REMIND for a silence reminder or a time-limit
                # warning. Either is a reply with the sidecar's instructions.
                if self.closed:
                    return
                self.actions.append(("session.generate_reply", instructions))
                self.session.generate_reply(instructions=instructions)
            else:
                logger.warning("endcall-sidecar: unknown directive kind %s ignored", kind)
        except Exception:
            logger.exception("endcall-sidecar: carrying out %s failed", kind)

    def _job_ctx(self) -> Any:
        if self.job_ctx is None:
            self.job_ctx = get_job_context(required=False)
        if self.job_ctx is None:
            logger.error("endcall-sidecar: no job context; cannot carry out a job directive")
        return self.job_ctx

    # ---- watch stream --------------------------------------------------------------------

    async def _watch_loop(self) -> None:
        client = self.tool._get_client()
        watcher = client.watch(self.session_id, max_attempts=self.tool._watch_attempts)
        try:
            async for d in watcher:
                self._accept([d])
        except asyncio.CancelledError:
            raise
        except SidecarError as e:
            self._go_fallback(e, "WatchSession")
        except Exception as e:  # pragma: no cover - defensive
            self._go_fallback(e, "WatchSession")
        finally:
            watcher.cancel()

    def _maybe_finish(self) -> None:
        if self._sender.done() and (self._watch_task is None or self._watch_task.done()):
            self.tool._binding_finished(self)


class SidecarEndCallTool(Toolset):
    """End-call tool whose decisions are made by the endcall-sidecar.

    Takes the same options as LiveKit's ``EndCallTool``. Options left unset use the sidecar's
    defaults (which by default are the same as EndCallTool's).

    Args:
        address: the sidecar, ``host:port`` or ``unix:/path``. Default: the
            ``ENDCALL_SIDECAR_ADDR`` environment variable, else ``127.0.0.1:50051``.
        extra_description: appended to the tool's description.
        delete_room: delete the room (hangs up SIP callers too) when the call has ended.
        end_instructions: the tool's output, which the LLM turns into its goodbye; ``None``
            asks for no reply at all.
        ignore_on_enter: hide the tool while the agent's on-enter greeting runs.
        on_tool_called: awaited when the LLM calls the tool.
        on_tool_completed: awaited before the tool returns; may change ``ev.output``.
        reply_timeout: (realtime models) seconds to wait for the tool reply to be created.
        early_reply_capture: sidecar extension, see the README.
        silence_timeout: sidecar extension (the silence ladder), for attached sessions:
            seconds of the user's silence after which the agent is asked to say goodbye, and the
            session is ended after the sidecar's grace period; ``None`` or 0 turns it off.
            Silence counts from the user's last final transcript and pauses while the agent
            speaks. Unset: the sidecar's default (off unless its ``--silence-timeout``).
        silence_reminder_after: seconds of silence before each reminder (reminder i at i times
            this). Unset: the sidecar's default (10 s).
        silence_reminders: reminders per silence. Unset: the sidecar's default (1).
        silence_reminder_instructions: the instructions of the reply each reminder asks for.
            Unset: the sidecar's default.
        session_id: the sidecar session id: a string, or a function of the AgentSession.
            Default: the job id plus a random suffix.
        rpc_timeout: seconds each call to the sidecar may take before it counts as down.
        client: an ``EndCallClient`` to use (then ``address`` is unused). Without it the tools
            of a process share one client per event loop, address and security settings
            (their channel stays open for the process's life).
    """

    def __init__(
        self,
        *,
        address: str | None = None,
        extra_description: str | Unset = UNSET,
        delete_room: bool | Unset = UNSET,
        end_instructions: str | None | Unset = UNSET,
        ignore_on_enter: bool | Unset = UNSET,
        on_tool_called: Callable[[Toolset.ToolCalledEvent], Awaitable[None]] | None = None,
        on_tool_completed: Callable[[Toolset.ToolCompletedEvent], Awaitable[None]] | None = None,
        reply_timeout: float | Unset = UNSET,
        early_reply_capture: bool | Unset = UNSET,
        silence_timeout: float | None | Unset = UNSET,
        silence_reminder_after: float | Unset = UNSET,
        silence_reminders: int | Unset = UNSET,
        silence_reminder_instructions: str | Unset = UNSET,
        session_id: str | Callable[[Any], str] | None = None,
        rpc_timeout: float = 2.0,
        watch_attempts: int = 6,
        client: EndCallClient | None = None,
    ) -> None:
        self._address = address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS
        self._options = SessionOptions(
            delete_room=delete_room,
            end_instructions=end_instructions,
            extra_description=extra_description,
            ignore_on_enter=ignore_on_enter,
            reply_timeout=reply_timeout,
            early_reply_capture=early_reply_capture,
            silence_timeout=silence_timeout,
            silence_reminder_after=silence_reminder_after,
            silence_reminders=silence_reminders,
            silence_reminder_instructions=silence_reminder_instructions,
        )
        self._on_tool_called = on_tool_called
        self._on_tool_completed = on_tool_completed
        self._session_id = session_id
        self._rpc_timeout = rpc_timeout
        self._watch_attempts = watch_attempts
        self._client = client  # else the shared one, on first use (_shared_client)
        self._key: tuple | None = None
        self._bindings: weakref.WeakKeyDictionary[Any, _Binding] = weakref.WeakKeyDictionary()
        self._live: set[_Binding] = set()  # sessions still reporting or watching
        # The sidecar's ToolDefinition once setup() fetched it, or at once if this process's
        # shared client already has it.
        self.tool_definition: ToolDefinition | None = self._known_definition()

        if self.tool_definition is not None:
            description = self.tool_definition.description
            flag = self.tool_definition.ignore_on_enter
        else:
            extra = "" if extra_description is UNSET else str(extra_description)
            description = f"{_FALLBACK_DESCRIPTION}\n{extra}" if extra else _FALLBACK_DESCRIPTION
            flag = ignore_on_enter is not UNSET and bool(ignore_on_enter)
        super().__init__(id="end_call", tools=[self._make_tool(description, flag)])

    # ---- tool definition -------------------------------------------------------------------

    def _make_tool(self, description: str, ignore_on_enter: bool) -> llm.FunctionTool:
        self._made = (description, ignore_on_enter)
        return function_tool(
            self._end_call,
            name="end_call",
            description=description,
            flags=ToolFlag.IGNORE_ON_ENTER if ignore_on_enter else ToolFlag.NONE,
        )

    def _definition_args(self) -> tuple[str | None, bool | None]:
        opts = self._options
        return (
            None if opts.extra_description is UNSET else str(opts.extra_description),
            None if opts.ignore_on_enter is UNSET else bool(opts.ignore_on_enter),
        )

    def _known_definition(self) -> ToolDefinition | None:
        """The definition GetTool gave this process's shared client before, if any (building
        the tool once, not twice, is half of what a tool costs to make)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        client = self._client or _shared.get(loop, {}).get(self._shared_key())
        if client is None:
            return None
        return _definitions.get(client, {}).get(self._definition_args())

    def _shared_key(self) -> tuple:
        if self._key is None:  # the security settings read once, as a client reads them
            self._key = (self._address, self._rpc_timeout, resolve_security())
        return self._key

    async def setup(self) -> "SidecarEndCallTool":
        """Fetch the tool's description and flags from the sidecar (``GetTool``)."""
        try:
            td = await _tool_definition(self._get_client(), *self._definition_args())
        except SidecarError as e:
            logger.error(
                "endcall-sidecar: GetTool failed at %s (%s); using the built-in description",
                self._address,
                e,
            )
        else:
            self.tool_definition = td
            if self._made != (td.description, td.ignore_on_enter):
                self._tools = [self._make_tool(td.description, td.ignore_on_enter)]
        await super().setup()
        return self

    def _get_client(self) -> EndCallClient:
        if self._client is None:
            self._client = _shared_client(self._shared_key(), self._address, self._rpc_timeout)
        return self._client

    def _local_end_instructions(self) -> str | None:
        ei = self._options.end_instructions
        return _FALLBACK_END_INSTRUCTIONS if ei is UNSET else ei

    # ---- sessions ---------------------------------------------------------------------------

    def _new_session_id(self, session: Any) -> str:
        if callable(self._session_id):
            return self._session_id(session)
        if isinstance(self._session_id, str):
            return self._session_id
        job = get_job_context(required=False)
        suffix = uuid.uuid4().hex[:8]
        return f"{job.job.id}-{suffix}" if job is not None else f"session-{uuid.uuid4().hex}"

    def attach(
        self,
        session: Any,
        *,
        max_duration: float | None = None,
        room: str | None = None,
        max_duration_warnings: "list[TimeLimitWarning | tuple[float, str]]" = (),  # type: ignore[assignment]
    ) -> str:
        """Start following ``session`` at its start (recommended: before or right after
        ``session.start(...)``, inside the job).

        Without it the tool follows a session from the first end_call on, like LiveKit's tool.
        Attaching opens the sidecar session with the tool's options and the job's room name,
        and holds the ``WatchSession`` stream from then on. That stream is the worker's lease:
        a sidecar configured for it (``--worker-lost-after``, ``--close-deadline`` and LiveKit
        credentials) hangs the call up itself, by deleting the room, when the worker is lost or
        never closes the session. The sidecar also reports a close without any end_call, and
        with ``max_duration`` (seconds) winds the call up when it lasts too long (the agent is
        asked to say goodbye, then the session is ended after the sidecar's grace period).
        ``max_duration_warnings`` (with ``max_duration``) are reminders before the limit:
        ``TimeLimitWarning(before=60, instructions="Tell the caller there is one minute left.")``
        or the pair ``(60, "...")``. From the attach on, the user's final transcripts are
        reported (``OnUserSpeech``), for the silence ladder (``silence_timeout``).

        ``room`` defaults to the current job's room name (``get_job_context()``); a session
        outside a job, with no ``room``, is opened without one. Returns the sidecar session id.
        """
        b = self._binding(session)
        b.warnings = tuple(
            w if isinstance(w, TimeLimitWarning) else TimeLimitWarning(float(w[0]), str(w[1]))
            for w in max_duration_warnings
        )
        b.listen_to_user()
        b.submit_open(max_duration, room if room else _job_room_name(b.job_ctx))
        return b.session_id

    def _binding(self, session: Any) -> _Binding:
        b = self._bindings.get(session)
        if b is None:
            b = _Binding(self, session, self._new_session_id(session))
            self._bindings[session] = b
            self._live.add(b)
        return b

    def session_id_of(self, session: Any) -> str | None:
        b = self._bindings.get(session)
        return b.session_id if b is not None else None

    def actions_of(self, session: Any) -> list[tuple]:
        """What this tool made the agent do for ``session``, in order (for tests and logs)."""
        b = self._bindings.get(session)
        return list(b.actions) if b is not None else []

    def in_fallback(self, session: Any) -> bool:
        b = self._bindings.get(session)
        return bool(b and b.fallback)

    async def wait_idle(self, session: Any) -> None:
        """Wait until every event of ``session`` reported so far was answered (for tests)."""
        b = self._bindings.get(session)
        if b is not None:
            await b.idle()

    def _binding_finished(self, b: _Binding) -> None:
        self._live.discard(b)

    # ---- the tool ---------------------------------------------------------------------------

    async def _end_call(self, ctx: RunContext) -> Any | None:
        logger.debug("endcall-sidecar: end_call called")
        activity = ctx.session.current_agent._get_activity_or_raise()
        b = self._binding(ctx.session)
        handle = ctx.speech_handle
        output: Any
        held = False
        if b.closed:
            # nothing left to end; answer the LLM as the reference would
            logger.warning("endcall-sidecar: end_call after the session closed")
            output = self._local_end_instructions()
        else:
            b._tool_speeches.setdefault(handle.id, _ToolSpeech(activity=activity))
            b.hold()
            held = True
            try:
                output = await b.submit_end_call(handle.id, _capabilities(activity))
            except BaseException:
                b.release()
                raise
            b._tool_speeches[handle.id].reply_output_given = output is not None

        completed = Toolset.ToolCompletedEvent(ctx=ctx, output=output)
        try:
            if self._on_tool_called:
                await self._on_tool_called(Toolset.ToolCalledEvent(ctx=ctx, arguments={}))
            if self._on_tool_completed:
                await self._on_tool_completed(completed)
        finally:
            if not b.closed and handle.id in b._tool_speeches:
                b._tool_speeches[handle.id].final_given = completed.output is not None
                # The speech's done is reported after the EndCall and the hooks (the tool's
                # speech cannot finish before its tool returns; if it already had, the callback
                # runs at once).
                handle.add_done_callback(b._on_speech_done)
            if held:
                # directives held while the tool ran are carried out once it has returned
                asyncio.get_running_loop().call_soon(b.release)
        return completed.output
