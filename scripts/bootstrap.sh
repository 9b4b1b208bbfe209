#!/usr/bin/env bash
# Create (or reuse) this clone's virtual environment, .venv, with modelplane installed
# editable and every dependency pinned by constraints.txt (scripts/lock.sh writes it).
#
# The environment belongs to the clone, so two clones (a developer's and CI's) never
# import each other's code. What is expensive to fetch — PyTorch's CUDA wheels are several
# GB — is cached by uv outside the clone (~/.cache/uv) and linked into each new
# environment, so a fresh clone's first bootstrap takes about a minute, not a download.
# A marker keyed by the pinned dependencies, the extras and the Python version says the
# environment is complete; an interrupted install leaves no marker and is redone.
#
# Usage: scripts/bootstrap.sh [EXTRAS]   (default: operator,runtime,serve,dev)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-operator,runtime,serve,dev}"
uv_version="0.13.8"
venv="$root/.venv"
# Key on the pinned dependencies only, so editing tool settings in pyproject.toml does
# not rebuild the environment.
deps="$(python3 -c 'import sys, tomllib, json; p = tomllib.load(open(sys.argv[1], "rb"))["project"]; print(json.dumps([p["dependencies"], p["optional-dependencies"]], sort_keys=True))' "$root/pyproject.toml")"
key="$( (echo "$deps"; cat "$root/constraints.txt" "$root/uv.toml" "$root/harness/pyproject.toml"; echo "$extras"; python3 --version) | sha256sum | cut -c1-12)"
marker="$venv/.complete-$key"

if [[ -f "$marker" ]]; then
  echo "[bootstrap] environment ready: $venv" >&2
  exit 0
fi
echo "[bootstrap] creating $venv with extras [$extras] (first run on a machine downloads several GB)" >&2
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$uv_version"
# The dev harness (harness/) is a distribution of its own, installed only with the dev
# extra, so nothing that ships can carry it.
harness=()
[[ ",$extras," == *",dev,"* ]] && harness=(-e "$root/harness")
"$venv/bin/uv" pip install --python "$venv/bin/python" --config-file "$root/uv.toml" \
  -c "$root/constraints.txt" \
  -e "$root[$extras]" "${harness[@]}"
touch "$marker"
echo "[bootstrap] environment ready: $venv" >&2
