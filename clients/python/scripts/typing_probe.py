"""Type-checked with mypy --strict beside the example agent, against the installed wheel, by
scripts/check-package. Each ``type: ignore`` must silence a real error, which it does only when
the package's types are there: were they missing, the names would be ``Any``, the ignores
unused, and --strict (warn_unused_ignores) would fail."""

from endcall_sidecar import EndCallClient
from endcall_sidecar.livekit import SidecarEndCallTool

tool = SidecarEndCallTool(delete_room=True)
tool.attach(object(), room=42)  # type: ignore[arg-type]
client = EndCallClient("127.0.0.1:50051", timeout="soon")  # type: ignore[arg-type]
