"""A disk cache of the batch-independent MiniLM vectors (`engines.embed.CanonicalEncoder`) that training encodes.

Cache: `$HIERARCAPS_CACHE/embeddings/<model>-<CACHE_VERSION>/chunk-*.safetensors` (default ~/.cache/hierarcaps),
each chunk holding `keys` (first 16 bytes of sha256(text), uint8) and `vectors` (float32). Chunks are written atomically
and only ever added; no pickle.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from hierarcaps.engines.embed import CanonicalEncoder

CACHE_VERSION = "canon-b8"  # the encoder's padding scheme (buckets of 8 tokens): a new scheme is a new cache

log = logging.getLogger(__name__)


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()[:16]


class EmbeddingCache:
    """text -> vector memo, persisted under `root` (None = memory only)."""

    def __init__(self, encoder: CanonicalEncoder, root: Path | None = None) -> None:
        self.encoder = encoder
        self.root = None if root is None else Path(root) / "embeddings" / f"{encoder.name}-{CACHE_VERSION}"
        self.index: dict[bytes, int] = {}
        self.vectors = np.zeros((0, encoder.dim), dtype=np.float32)
        if self.root is not None and self.root.exists():
            self._load()

    def _load(self) -> None:
        from safetensors.numpy import load_file

        keys, vecs = [], []
        for chunk in sorted(self.root.glob("chunk-*.safetensors")):
            data = load_file(chunk)
            keys.append(data["keys"])
            vecs.append(data["vectors"])
        if keys:
            self._add(np.concatenate(keys), np.concatenate(vecs))
        log.info("embedding cache %s: %d texts", self.root, len(self.index))

    def _add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        base = len(self.vectors)
        self.vectors = np.concatenate([self.vectors, vectors]) if base else vectors
        for i, key in enumerate(keys):
            self.index.setdefault(key.tobytes(), base + i)

    def _save(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        from safetensors.numpy import save_file

        self.root.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256(keys.tobytes()).hexdigest()[:16]
        tmp = self.root / f".chunk-{name}.{os.getpid()}.tmp"
        save_file({"keys": keys, "vectors": vectors}, str(tmp))
        os.replace(tmp, self.root / f"chunk-{name}.safetensors")

    def encode(self, texts: Sequence[str], save_every: int = 8192) -> np.ndarray:
        """Vectors of `texts` (n, dim), encoding each distinct uncached text once."""
        keys = [text_key(t) for t in texts]
        missing = sorted({t for t, k in zip(texts, keys) if k not in self.index})
        if missing:
            started = time.perf_counter()
            log.info("encoding %d new texts with %s", len(missing), self.encoder.name)
            for start in range(0, len(missing), save_every):  # saved in pieces so an interrupted run keeps its work
                part = missing[start : start + save_every]
                vectors = self.encoder.encode(part)
                part_keys = np.frombuffer(b"".join(text_key(t) for t in part), dtype=np.uint8).reshape(-1, 16)
                self._add(part_keys, vectors)
                if self.root is not None:
                    self._save(part_keys, vectors)
                done = start + len(part)
                log.info("encoded %d/%d texts (%.0f texts/s)", done, len(missing), done / (time.perf_counter() - started))
        return self.vectors[[self.index[k] for k in keys]]
