# Shared by the scripts that run a list of checks (clients/*/scripts/check-package): each check
# prints `ok: NAME` or `FAIL: NAME` (with the tail of its output), and `finish` prints the
# `checks: N passed, M failed` line scripts/test counts, and exits non-zero if any failed.
# The caller sets `work` (a temporary directory) before the first check.
passed=0
failed=0

# check NAME COMMAND...: passes when COMMAND succeeds; returns COMMAND's failure.
check() {
  local name=$1
  shift
  if "$@" >"$work/check.log" 2>&1; then
    passed=$((passed + 1))
    echo "ok: $name"
    sed 's/^/    /' "$work/check.log" | tail -3
  else
    failed=$((failed + 1))
    echo "FAIL: $name"
    sed 's/^/    /' "$work/check.log" | tail -40
    return 1
  fi
}

# refutes NAME COMMAND...: passes when COMMAND fails (a check run on an incomplete artifact).
refutes() {
  local name=$1
  shift
  if "$@" >"$work/check.log" 2>&1; then
    failed=$((failed + 1))
    echo "FAIL: $name (it passed)"
  else
    passed=$((passed + 1))
    echo "ok: $name"
    grep -m3 -iE 'missing|error|cannot' "$work/check.log" | sed 's/^/    /' || true
  fi
}

finish() {
  echo "checks: $passed passed, $failed failed"
  [ "$failed" -eq 0 ]
  exit
}
