#!/usr/bin/env bash
# The main job on a fresh machine: set up, then run the quickstart locally (train on
# built-in data, deploy, query).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/bootstrap.sh
.venv/bin/modelplane run examples/quickstart-training.yaml
