"""Python client for endcall-sidecar, and ``SidecarEndCallTool`` for LiveKit Agents.

``SidecarEndCallTool`` lives in ``endcall_sidecar.livekit`` and needs ``livekit-agents``
(``pip install endcall-sidecar[livekit]``); it is also importable from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .client import DEFAULT_ADDRESS, DirectiveWatcher, EndCallClient
from .errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    SidecarError,
    SidecarUnavailable,
    Unauthenticated,
)
from .types import (
    UNSET,
    CloseReason,
    Directive,
    DirectiveKind,
    EndCallResult,
    EndedReason,
    EventResult,
    ModelCapabilities,
    OpenSessionResult,
    Outcome,
    ResolvedOptions,
    SessionOptions,
    SessionReport,
    SessionState,
    ShutdownCause,
    TimeLimitWarning,
    Teardown,
    TeardownCause,
    TeardownResult,
    ToolDefinition,
    Unset,
)

if TYPE_CHECKING:
    from .livekit import SidecarEndCallTool

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_ADDRESS",
    "EndCallClient",
    "DirectiveWatcher",
    "SidecarError",
    "InvalidArgument",
    "NotFound",
    "FailedPrecondition",
    "ResourceExhausted",
    "SidecarUnavailable",
    "Unauthenticated",
    "UNSET",
    "Unset",
    "CloseReason",
    "Directive",
    "DirectiveKind",
    "EndCallResult",
    "EndedReason",
    "EventResult",
    "ModelCapabilities",
    "OpenSessionResult",
    "Outcome",
    "ResolvedOptions",
    "SessionOptions",
    "SessionReport",
    "SessionState",
    "ShutdownCause",
    "TimeLimitWarning",
    "Teardown",
    "TeardownCause",
    "TeardownResult",
    "ToolDefinition",
    "SidecarEndCallTool",
]


def __getattr__(name: str) -> Any:
    if name == "SidecarEndCallTool":
        from .livekit import SidecarEndCallTool

        return SidecarEndCallTool
    raise AttributeError(name)
