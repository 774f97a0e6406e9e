"""Where the models shipped inside the package live: one name per artifact, importable without torch."""

from __future__ import annotations

from pathlib import Path

_NLI = Path(__file__).resolve().parents[1] / "nli" / "artifacts"
MINILM_HEAD = _NLI / "minilm-head"  # the MLP stand-in on frozen sentence vectors (engines/minilm_head.py)
MINILM_NLI = _NLI / "minilm-nli"  # the MiniLM cross-encoder trained on human NLI labels (engines/minilm_nli.py)
