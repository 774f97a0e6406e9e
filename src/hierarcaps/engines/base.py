"""The interfaces every back-end implements. Stages depend on these, never on a concrete engine."""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

# Column order of every NLI probability array.
ENTAILMENT, NEUTRAL, CONTRADICTION = 0, 1, 2
NLI_LABELS = ("entailment", "neutral", "contradiction")


class Generator(Protocol):
    """Chat-style text generation: one completion per prompt, in order."""

    model_id: str

    def generate(self, prompts: Sequence[str], *, temperature: float | None = None, seed: int | None = None) -> list[str]: ...


class NLIModel(Protocol):
    """Premise/hypothesis -> probabilities (n, 3) in NLI_LABELS order; rows sum to 1."""

    model_id: str
    description: str  # shown to users; stand-ins must say they are not MNLI

    def predict(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray: ...
