#!/usr/bin/env bash
# The full test suite, from a fresh clone: set-up, lint, types, layering, generated files,
# unit, runtime, serving and integration tests — the last on a local control plane and
# on a real kubelet node running the images built from this tree.
#
# What is slow to make (the control plane's and the node's binaries, built from Go
# modules; the operator and runtime images) is cached by content under
# ~/.cache/modelplane and built in the background while the fast checks and the tests
# that need no cluster run; the integration fixtures wait for it (the builds hold locks).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

step() { echo; echo "==> $*"; }

step "python environment"
scripts/bootstrap.sh
step "host packages for the real node and the image builds"
scripts/host-packages.sh
# Clusters whose test session was killed before its teardown (a timeout, SIGKILL) are
# registered with that session's pid: stop them now and again when this script ends.
sweep() { .venv/bin/python -m modelplane_harness.cluster sweep || true; }
sweep

build_log="$(mktemp -t modelplane-build.XXXXXX.log)"
step "binaries and images: building in the background (log: $build_log)"
# A session of its own, so stopping it stops the go and tar processes under it too.
setsid bash -c 'set -euo pipefail
  e2e/cluster/build.sh >/dev/null
  .venv/bin/python -m modelplane_harness.images build operator runtime' >"$build_log" 2>&1 &
builder=$!
# Never leave the builder or a cluster behind, whatever ends this script.
cleanup() {
  kill -- "-$builder" 2>/dev/null || true
  wait "$builder" 2>/dev/null || true
  sweep
}
trap cleanup EXIT
trap 'exit 143' TERM INT

step "ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
step "mypy"
.venv/bin/mypy
step "import-linter"
.venv/bin/lint-imports
step "generated CRDs, API reference and Dockerfiles are current"
.venv/bin/modelplane crds --check
.venv/bin/modelplane docs --check
.venv/bin/python -m modelplane_harness.images dockerfiles --check
step "pytest (unit, runtime and serving first; integration waits for the background build)"
status=0
.venv/bin/pytest "$@" || status=$?
step "background build"
if [[ $# -gt 0 ]]; then
  # A chosen subset of tests may not need what is still building.
  kill -- "-$builder" 2>/dev/null || true
  wait "$builder" 2>/dev/null || true
  echo "stopped (pytest ran a subset: $*)"
elif wait "$builder"; then
  grep -E '^\[(build|image)\]' "$build_log" | tail -n 20 || true
else
  echo "the background build failed; its log:" >&2
  tail -n 40 "$build_log" >&2
  status=1
fi
exit "$status"
