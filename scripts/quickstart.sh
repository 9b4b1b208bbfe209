#!/usr/bin/env bash
# The main job on a fresh machine: set up, then run the quickstart locally — train a small
# Transformer on built-in data, serve it with Ray Serve, send it a few reviews and print
# the answers.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/bootstrap.sh
.venv/bin/modelplane run examples/quickstart-training.yaml
.venv/bin/modelplane run examples/quickstart-deployment.yaml \
  --predict "what a wonderful film" \
  --predict "the plot was really boring" \
  --predict "the acting was not bad" \
  --predict "i would not call the ending good"
