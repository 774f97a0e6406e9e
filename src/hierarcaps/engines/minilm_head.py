"""`minilm-head` at run time: a small MLP on frozen all-MiniLM-L6-v2 sentence vectors, distilled from the HierarCaps
pipeline's accepted hierarchies (its training is `hierarcaps.nli`). It is a stand-in for an MNLI cross-encoder on
machines without one, not an MNLI model: it knows the relations that hold inside caption hierarchies and the
generator errors it was shown.

Features of a (premise u, hypothesis v) pair: [u, v, |u - v|, u * v] (InferSent-style), 4 x 384 -> hidden -> 3 logits
in NLI_LABELS order; probabilities are softmax(logits / T) with the temperature T fitted on the dev split.

An artifact is a folder with `model.safetensors` (the head's weights) and `card.json` (architecture, temperature,
thresholds, training data sha256, split rule, dev metrics, the command that reproduces it).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from hierarcaps.config import NLIConfig
from hierarcaps.engines.embed import load_encoder
from hierarcaps.engines.artifacts import MINILM_HEAD

log = logging.getLogger(__name__)

ARTIFACT_DIR = MINILM_HEAD  # the shipped artifact: package data beside its training code, hierarcaps/nli/
WEIGHTS, CARD = "model.safetensors", "card.json"
DESCRIPTION = (
    "minilm-head: a small distilled stand-in, NOT an MNLI model: an MLP on frozen all-MiniLM-L6-v2 sentence vectors, "
    "trained on pairs derived from accepted HierarCaps hierarchies of COCO images. Expect more errors than a real NLI "
    "cross-encoder, especially on text unlike caption hierarchies."
)


class Head(nn.Module):
    def __init__(self, dim: int = 384, hidden: Sequence[int] = (512,), dropout: float = 0.1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = 4 * dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.GELU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, 3))
        self.net = nn.Sequential(*layers)

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([u, v, (u - v).abs(), u * v], dim=-1))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def head_logits(head: Head, vectors: torch.Tensor, premise_idx: np.ndarray, hypothesis_idx: np.ndarray, batch: int = 4096) -> np.ndarray:
    """Logits for pairs given as row indices into `vectors`."""
    head.eval()
    out = []
    with torch.inference_mode():
        for s in range(0, len(premise_idx), batch):
            p = torch.as_tensor(premise_idx[s : s + batch])
            h = torch.as_tensor(hypothesis_idx[s : s + batch])
            out.append(head(vectors[p], vectors[h]).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 3), dtype=np.float32)


class MiniLMHeadNLI:
    """The NLIModel protocol (engines/base.py) over a trained head. `thresholds` were chosen on the dev split."""

    def __init__(self, head: Head, card: dict, device: str = "cpu", cache: Any = None) -> None:
        self.head = head.to(device).eval()
        self.card = card
        self.device = device
        self.temperature = float(card["temperature"])
        chosen = card["thresholds"]
        self.thresholds = {k: float(chosen[k]) for k in ("entail", "contradict")}
        self.thresholds["joint"] = None if chosen.get("joint") is None else float(chosen["joint"])
        self.model_id = f"hierarcaps/minilm-head@{card.get('weights_sha256', 'untrained')[:12]}"
        self.description = DESCRIPTION
        self.cache = cache

    def _encode(self, texts: list[str]) -> np.ndarray:
        if self.cache is not None:
            return self.cache.encode(texts)
        return load_encoder(self.card.get("encoder", "minilm"), self.device).encode(texts)

    def predict(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """(n, 3) calibrated probabilities (entailment, neutral, contradiction); each distinct text is encoded once."""
        if not pairs:
            return np.zeros((0, 3), dtype=np.float64)
        texts = sorted({t for pair in pairs for t in pair})
        row = {t: i for i, t in enumerate(texts)}
        vectors = torch.as_tensor(self._encode(texts), device=self.device)
        premise = np.array([row[p] for p, _ in pairs])
        hypothesis = np.array([row[h] for _, h in pairs])
        return softmax(head_logits(self.head, vectors, premise, hypothesis).astype(np.float64), self.temperature)


def load_artifact(path: Path, device: str = "cpu", cache: Any = None) -> MiniLMHeadNLI:
    """A trained head from its folder; `cache` (anything with `encode(texts)`, e.g. nli.encode.EmbeddingCache)
    replaces the encoder, as training and the benchmarks do."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / WEIGHTS).exists() or not (path / CARD).exists():
        raise FileNotFoundError(
            f"no minilm-head artifact in {path} (need {WEIGHTS} and {CARD}); train one with "
            f"`hierarcaps train-nli --out DIR` and set filter.nli.model=DIR"
        )
    card = json.loads((path / CARD).read_text())
    arch = card["architecture"]
    head = Head(arch["dim"], arch["hidden"], arch.get("dropout", 0.0))
    head.load_state_dict(load_file(str(path / WEIGHTS)))
    return MiniLMHeadNLI(head, card, device=device, cache=cache)


def load_minilm_head(cfg: NLIConfig) -> MiniLMHeadNLI:
    """The filter's entry point: `cfg.model` is an artifact folder; None = the artifact shipped in the package."""
    from hierarcaps.engines.embed import resolve_device

    model = load_artifact(Path(cfg.model) if cfg.model else ARTIFACT_DIR, device=resolve_device(cfg.device))
    log.info("%s (%s)", model.model_id, model.description)
    return model
