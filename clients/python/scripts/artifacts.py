"""Checks the contents of the Python package's artifacts, for scripts/check-package.

  python artifacts.py sdist  <endcall_sidecar-X.tar.gz> <repository proto dir> <version>
  python artifacts.py wheel  <endcall_sidecar-X-py3-none-any.whl> <version>
  python artifacts.py strip  <artifact> <out> <path prefix>...   (writes a copy without them)

Prints what is missing; exits 1 if anything is. ``strip`` makes the incomplete artifacts the
checks must fail on.
"""

from __future__ import annotations

import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

# The modules an import of endcall_sidecar.livekit needs, besides the package's own sources.
GENERATED = [
    "endcall_sidecar/_proto/endcall/v1/endcall_pb2.py",
    "endcall_sidecar/_proto/endcall/v1/endcall_pb2_grpc.py",
    "endcall_sidecar/_proto/endcall/v1/endcall_pb2.pyi",
]
SOURCES = [
    "endcall_sidecar/__init__.py",
    "endcall_sidecar/client.py",
    "endcall_sidecar/livekit.py",
    "endcall_sidecar/py.typed",
]


def _version_of(metadata: str) -> str:
    return Parser().parsestr(metadata).get("Version", "")


def check_sdist(path: Path, proto_dir: Path, version: str) -> list[str]:
    problems = []
    with tarfile.open(path) as tar:
        root = tar.getnames()[0].split("/")[0]
        members = {m.name[len(root) + 1 :]: m for m in tar.getmembers() if m.isfile()}

        def read(name: str) -> bytes:
            f = tar.extractfile(members[name])
            assert f is not None
            return f.read()

        for name in ["setup.py", "pyproject.toml", "README.md", "PKG-INFO"] + [
            f"src/{s}" for s in SOURCES if not s.endswith(".pyi")
        ]:
            if name not in members:
                problems.append(f"{name} is not in the sdist")
        protos = sorted(proto_dir.rglob("*.proto"))
        if not protos:
            problems.append(f"no .proto file under {proto_dir}")
        for p in protos:
            name = f"proto/{p.relative_to(proto_dir)}"
            if name not in members:
                problems.append(f"{name} is not in the sdist")
            elif read(name) != p.read_bytes():
                problems.append(f"{name} differs from the repository's")
        if "PKG-INFO" in members and _version_of(read("PKG-INFO").decode()) != version:
            problems.append(f"PKG-INFO's version is not {version}")
    return problems


def check_wheel(path: Path, version: str) -> list[str]:
    problems = []
    with zipfile.ZipFile(path) as whl:
        names = set(whl.namelist())
        for name in SOURCES + GENERATED:
            if name not in names:
                problems.append(f"{name} is not in the wheel")
        meta = f"endcall_sidecar-{version}.dist-info/METADATA"
        if meta not in names:
            problems.append(f"{meta} is not in the wheel")
        elif _version_of(whl.read(meta).decode()) != version:
            problems.append(f"METADATA's version is not {version}")
    return problems


def strip(path: Path, out: Path, prefixes: list[str]) -> None:
    """A copy of the artifact without the files whose path (inside it) starts with a prefix."""

    def keep(name: str) -> bool:
        inner = name.split("/", 1)[1] if path.name.endswith(".tar.gz") and "/" in name else name
        return not any(inner.startswith(p) for p in prefixes)

    if path.name.endswith(".tar.gz"):
        with tarfile.open(path) as src, tarfile.open(out, "w:gz") as dst:
            for m in src.getmembers():
                if keep(m.name):
                    dst.addfile(m, src.extractfile(m) if m.isfile() else None)
    else:
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
            for info in src.infolist():
                if keep(info.filename):
                    dst.writestr(info, src.read(info))


def main(argv: list[str]) -> int:
    kind, args = argv[0], argv[1:]
    if kind == "strip":
        strip(Path(args[0]), Path(args[1]), args[2:])
        return 0
    if kind == "sdist":
        problems = check_sdist(Path(args[0]), Path(args[1]), args[2])
    elif kind == "wheel":
        problems = check_wheel(Path(args[0]), args[1])
    else:
        print(f"unknown check {kind!r}", file=sys.stderr)
        return 2
    for p in problems:
        print(f"missing: {p}")
    if not problems:
        print(f"{Path(args[0]).name}: complete")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
