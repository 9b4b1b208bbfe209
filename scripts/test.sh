#!/usr/bin/env bash
# The full test suite, from a fresh clone: set-up, lint, types, layering, generated files,
# unit and integration tests. The integration tests start the local control plane
# themselves (built from Go modules on first use, then cached) and stop it at the end.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

step() { echo; echo "==> $*"; }

step "python environment"
scripts/bootstrap.sh
step "control-plane binaries (cold build takes several minutes; cached afterwards)"
e2e/cluster/build.sh >/dev/null
step "ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
step "mypy"
.venv/bin/mypy
step "import-linter"
.venv/bin/lint-imports
step "generated CRDs and API reference are current"
.venv/bin/modelplane crds --check
.venv/bin/modelplane docs --check
step "pytest"
.venv/bin/pytest "$@"
