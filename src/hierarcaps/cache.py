"""Where hierarcaps keeps derived files it can rebuild (dequantized models, text embeddings, image tokens)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`$HIERARCAPS_CACHE`, default `~/.cache/hierarcaps`."""
    return Path(os.environ.get("HIERARCAPS_CACHE", "~/.cache/hierarcaps")).expanduser()
