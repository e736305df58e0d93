# Sourced by scripts/test, scripts/bench and scripts/check-package: builds (or reuses) the cached
# venv from requirements-test.txt, sets HERE (clients/python), REPO and VENV, and defines
# install_from_tree.
#
# Environment: PYTHON (interpreter used to create the venv; default python3), XDG_CACHE_HOME.
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-python3}"

pyver="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
key="$( { cat "$HERE/requirements-test.txt"; echo "python $pyver"; } | sha256sum | cut -c1-16)"
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/endcall-sidecar"
VENV="$CACHE_ROOT/venv-py$pyver-$key"

if [ ! -f "$VENV/.complete" ]; then
  echo "clients/python: creating venv $VENV (a few minutes the first time)" >&2
  rm -rf "$VENV"
  mkdir -p "$CACHE_ROOT"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$HERE/requirements-test.txt"
  touch "$VENV/.complete"
fi

# Installs the package into the venv from a temporary copy of the tree (its stubs generated from
# the repository's proto/), so the build leaves nothing in the work tree.
install_from_tree() {
  local build_dir
  build_dir="$(mktemp -d)"
  cp -R "$HERE/pyproject.toml" "$HERE/setup.py" "$HERE/README.md" "$HERE/src" "$build_dir/"
  rm -rf "$build_dir/src/endcall_sidecar/_proto"
  ENDCALL_PROTO_DIR="$REPO/proto" "$VENV/bin/python" -m pip install --quiet \
    --disable-pip-version-check --no-deps --no-build-isolation --force-reinstall "$build_dir"
  local rc=$?
  rm -rf "$build_dir"
  return $rc
}
