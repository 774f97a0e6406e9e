"""Frozen all-MiniLM-L6-v2 sentence embeddings, computed so that a text's vector never depends on its batch-mates,
plus a disk cache keyed by text hash.

Why not `SentenceTransformer.encode`: it pads each batch to its longest text and lets the batch size vary, and on
CPU the float result of a text then changes in the last bits with its companions (measured: 1e-7). That would make
the trained head depend on which texts happened to be cached before, and break "same command -> same weights".
Here every forward pass has the same shape for a given text: texts are padded to a length bucket (a multiple of 8
tokens) and batched exactly `BATCH` rows at a time (the last batch is filled with empty strings). Mean pooling and
L2 normalisation follow the model's sentence-transformers config; vectors match `encode` to ~1e-7.

Cache: `$HIERARCAPS_CACHE/embeddings/<model>-<CACHE_VERSION>/chunk-*.safetensors` (default ~/.cache/hierarcaps),
each chunk holding `keys` (first 16 bytes of sha256(text), uint8) and `vectors` (float32). Chunks are written atomically
and only ever added; no pickle.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from hierarcaps.engines.embed import model_path

log = logging.getLogger(__name__)

BATCH = 32
BUCKET = 8
MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length
CACHE_VERSION = "canon-b8"


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()[:16]


class CanonicalEncoder:
    """MiniLM sentence vectors, batch-independent (see the module docstring)."""

    def __init__(self, name: str = "minilm", device: str = "cpu") -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = model_path(name)
        self.name = name
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.dim = int(self.model.config.hidden_size)
        self._torch = torch

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        lengths = [len(ids) for ids in self.tokenizer(list(texts), truncation=True, max_length=MAX_TOKENS)["input_ids"]]
        buckets: dict[int, list[int]] = {}
        for i, n in enumerate(lengths):
            buckets.setdefault(min(MAX_TOKENS, -(-n // BUCKET) * BUCKET), []).append(i)
        with torch.inference_mode():
            for width, members in sorted(buckets.items()):
                for start in range(0, len(members), BATCH):
                    chunk = members[start : start + BATCH]
                    batch = [texts[i] for i in chunk] + [""] * (BATCH - len(chunk))
                    enc = self.tokenizer(batch, padding="max_length", truncation=True, max_length=width, return_tensors="pt").to(self.device)
                    hidden = self.model(**enc).last_hidden_state
                    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                    vectors = torch.nn.functional.normalize(pooled, dim=-1)[: len(chunk)]
                    out[chunk] = vectors.float().cpu().numpy()
        return out


@lru_cache(maxsize=2)
def load_encoder(name: str = "minilm", device: str = "cpu") -> CanonicalEncoder:
    return CanonicalEncoder(name, device)


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
