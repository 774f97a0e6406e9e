"""The interfaces every back-end implements. Stages depend on these, never on a concrete engine."""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

# Column order of every NLI probability array.
ENTAILMENT, NEUTRAL, CONTRADICTION = 0, 1, 2
NLI_LABELS = ("entailment", "neutral", "contradiction")
LOG_PROB_FLOOR = 1e-12  # a probability of 0 counts as this in mean_log_prob, so one pair cannot make it -inf


def mean_log_prob(required: Sequence[float] | np.ndarray, axis: int = -1) -> np.ndarray | float:
    """Mean log-probability of the label each pair of a row needs: the log of their geometric mean.

    The filter's joint rule. A weakest-link rule (every pair above one threshold) has to set its threshold
    below the worst pair of almost every good row, and uncurated rows nearly always have one weak pair; the mean
    adds up the evidence of all pairs, so a row with several doubtful pairs fails while one noisy pair does not
    sink a row that is otherwise clearly right."""
    values = np.log(np.clip(np.asarray(required, dtype=np.float64), LOG_PROB_FLOOR, 1.0))
    return values.mean(axis=axis)


class Generator(Protocol):
    """Chat-style text generation: one completion per prompt, in order."""

    model_id: str

    def generate(self, prompts: Sequence[str], *, temperature: float | None = None, seed: int | None = None) -> list[str]: ...


class NLIModel(Protocol):
    """Premise/hypothesis -> probabilities (n, 3) in NLI_LABELS order; rows sum to 1."""

    model_id: str
    description: str  # shown to users; stand-ins must say they are not MNLI

    def predict(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray: ...
