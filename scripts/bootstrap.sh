#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install modelplane into it.
#
# The environment lives in the cache ($MODELPLANE_CACHE, default ~/.cache/modelplane),
# keyed by a hash of pyproject.toml and the extras, so a fresh clone on the same machine
# reuses a complete environment instead of downloading large wheels again. A
# ".complete" marker is written only after every install step succeeded, so an
# interrupted install is redone, never half-used. `.venv` in the clone links to it.
#
# Usage: scripts/bootstrap.sh [EXTRAS]   (default: operator,runtime,serve,dev)
# Every transitive dependency is pinned by constraints.txt (scripts/lock.sh writes it).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-operator,runtime,serve,dev}"
cache="${MODELPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelplane}"
uv_version="0.13.8"
# Key on the pinned dependencies only, so editing tool settings in pyproject.toml does
# not throw away an environment that holds several GB of wheels.
deps="$(python3 -c 'import sys, tomllib, json; p = tomllib.load(open(sys.argv[1], "rb"))["project"]; print(json.dumps([p["dependencies"], p["optional-dependencies"]], sort_keys=True))' "$root/pyproject.toml")"
key="$( (echo "$deps"; cat "$root/constraints.txt"; echo "$extras"; python3 --version) | sha256sum | cut -c1-12)"
venv="$cache/venv-$key"

if [[ ! -f "$venv/.complete" ]]; then
  echo "[bootstrap] creating $venv with extras [$extras] (first run downloads wheels)" >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$uv_version"
  # torch's CUDA wheels are several GB: the first install takes minutes.
  "$venv/bin/uv" pip install --python "$venv/bin/python" -c "$root/constraints.txt" \
    -e "$root[$extras]"
  touch "$venv/.complete"
else
  # The environment is complete; only point the editable install at this clone.
  "$venv/bin/uv" pip install --quiet --python "$venv/bin/python" --no-deps -e "$root"
fi
ln -sfn "$venv" "$root/.venv"
echo "[bootstrap] environment ready: $root/.venv -> $venv" >&2
