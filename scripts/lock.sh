#!/usr/bin/env bash
# Regenerate constraints.txt: every transitive dependency of every extra, pinned.
# Run after changing a pin in pyproject.toml; bootstrap.sh installs within it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/.venv/bin/uv" pip compile "$root/pyproject.toml" --config-file "$root/uv.toml" --all-extras \
  --python-version 3.11 --no-header --no-annotate -o "$root/constraints.txt"
