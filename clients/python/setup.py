"""Build hooks: generate the gRPC stubs from the repository's proto/ with grpcio-tools, and put
the .proto files into the sdist.

The repository's proto/ stays the single source of the API; neither a copy of it nor anything
generated is committed. The sdist carries the .proto files it was made from (copied into its
proto/ folder when it is made), so a wheel builds from the sdist alone. The proto directory is
found, in order, from the ENDCALL_PROTO_DIR environment variable, then a proto/ folder next to
this file (an sdist), then, outside an sdist only, the repository's proto/ two levels up.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
PKG = "endcall_sidecar"
GEN_PKG = f"{PKG}._proto"
GEN_DIR = HERE / "src" / PKG / "_proto"
PROTO_FILES = ["endcall/v1/endcall.proto"]
# Python packages the generated modules live in, relative to GEN_DIR.
GEN_SUBPACKAGES = ["", "endcall", "endcall/v1"]


def _proto_dir() -> Path:
    candidates = []
    if os.environ.get("ENDCALL_PROTO_DIR"):
        candidates.append(Path(os.environ["ENDCALL_PROTO_DIR"]))
    candidates.append(HERE / "proto")
    if not (HERE / "PKG-INFO").is_file():  # an sdist builds from its own proto/ only
        candidates.append(HERE.parent.parent / "proto")
    for c in candidates:
        if all((c / f).is_file() for f in PROTO_FILES):
            return c
    raise RuntimeError(
        "endcall-sidecar: cannot find the proto files "
        f"({', '.join(PROTO_FILES)}); looked in {', '.join(map(str, candidates))}. "
        "Set ENDCALL_PROTO_DIR to the repository's proto/ directory."
    )


def _ensure_packages() -> None:
    for sub in GEN_SUBPACKAGES:
        d = GEN_DIR / sub
        d.mkdir(parents=True, exist_ok=True)
        init = d / "__init__.py"
        if not init.exists():
            init.write_text("# generated package, see setup.py\n")


def generate_stubs() -> None:
    import grpc_tools
    from grpc_tools import protoc

    _ensure_packages()
    proto_dir = _proto_dir()
    wkt_include = Path(grpc_tools.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{wkt_include}",
        f"--python_out={GEN_DIR}",
        f"--pyi_out={GEN_DIR}",
        f"--grpc_python_out={GEN_DIR}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"grpc_tools.protoc failed: {' '.join(args)}")
    # protoc writes absolute imports rooted at the proto package (`from endcall.v1 import ...`);
    # point them into this package instead of claiming a top-level `endcall` module.
    pattern = re.compile(r"^from endcall\.", re.MULTILINE)
    for f in GEN_DIR.rglob("*.py*"):
        text = f.read_text()
        new = pattern.sub(f"from {GEN_PKG}.endcall.", text)
        if new != text:
            f.write_text(new)


class BuildPyWithStubs(build_py):
    def run(self) -> None:
        generate_stubs()
        super().run()


class SdistWithProto(sdist):
    """Copies every .proto file of the proto directory into the sdist's proto/ folder."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        src = _proto_dir()
        for f in sorted(src.rglob("*.proto")):
            dest = Path(base_dir) / "proto" / f.relative_to(src)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)


_ensure_packages()

setup(
    packages=[PKG] + [f"{GEN_PKG}.{s.replace('/', '.')}".rstrip(".") for s in GEN_SUBPACKAGES],
    cmdclass={"build_py": BuildPyWithStubs, "sdist": SdistWithProto},
)
