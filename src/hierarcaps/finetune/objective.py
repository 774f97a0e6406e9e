"""The Radial Embedding (RE) fine-tuning objective of the HierarCaps paper, as in its released `code/train.py`.

All embeddings are L2-normalised; the root r is the embedding of "" under the weights being trained (recomputed
every batch: it moves with them). The exterior angle of a step a -> b is the angle between the way out from the
root (a - r) and the step (b - a): 0 when b lies straight further out than a, pi when b points back to the root.

For each hierarchy and i = 1..3: P_i = angle(pos_i, pos_{i+1}) (small: a more specific text lies further out) and
N_i = -angle(pos_i, neg_j) (large: a contradicting text does not), with j = i ("same", the released code) or
j = i + 1 ("next": the negative that entails pos_i but contradicts pos_{i+1}).
entailment = mean(P) + mean(N); hard = (P + N) at argmax(P) + (P + N) at argmax(N) over the flattened batch;
pullback = (1 - mean cos(E, E_frozen)) / 2 on the same texts; total = lambda_p pullback + lambda_e entailment +
lambda_m hard.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

PAIRINGS = {"same": 0, "next": 1}  # negative tier index offset from the positive it is paired with


class Losses(NamedTuple):
    total: torch.Tensor
    pullback: torch.Tensor
    entailment: torch.Tensor
    hard: torch.Tensor
    positive_angle: torch.Tensor  # mean P (radians)
    negative_angle: torch.Tensor  # mean -N (radians)

    def floats(self) -> dict[str, float]:
        return {k: float(v.detach()) for k, v in self._asdict().items()}


def exterior_angle(a: torch.Tensor, b: torch.Tensor, root: torch.Tensor) -> torch.Tensor:
    """arccos(clip(<a - r, b - a> / (|a - r| |b - a|), -1, 1)) over the last dimension."""
    out, step = a - root, b - a
    cos = (out * step).sum(-1) / (out.norm(dim=-1) * step.norm(dim=-1))
    return cos.clip(-1.0, 1.0).acos()


def angles(positive: torch.Tensor, negative: torch.Tensor, root: torch.Tensor, pairing: str = "same") -> tuple[torch.Tensor, torch.Tensor]:
    """positive, negative: (4, B, d) normalised tier embeddings -> P, N: (3, B)."""
    if pairing not in PAIRINGS:
        raise ValueError(f"negative pairing {pairing!r}: one of {', '.join(PAIRINGS)}")
    shift = PAIRINGS[pairing]
    p = exterior_angle(positive[:3], positive[1:], root)
    n = -exterior_angle(positive[:3], negative[shift : shift + 3], root)
    return p, n


def pullback(embeddings: torch.Tensor, frozen: torch.Tensor) -> torch.Tensor:
    """(1 - mean cosine to the frozen encoder's embeddings of the same texts) / 2; both normalised."""
    return (1.0 - (embeddings * frozen).sum(-1).mean()) / 2.0


def re_losses(
    positive: torch.Tensor,
    negative: torch.Tensor,
    root: torch.Tensor,
    embeddings: torch.Tensor,
    frozen: torch.Tensor,
    pairing: str = "same",
    lambda_p: float = 10.0,
    lambda_e: float = 1.0,
    lambda_m: float = 1.0,
) -> Losses:
    """The objective for one batch: tier embeddings (4, B, d) x2, the root (d,), and every embedded text beside the
    frozen encoder's embedding of it (for the pullback)."""
    p, n = angles(positive, negative, root, pairing)
    entailment = p.mean() + n.mean()
    flat_p, flat_n = p.reshape(-1), n.reshape(-1)
    both = flat_p + flat_n
    hard = both[flat_p.argmax()] + both[flat_n.argmax()]
    pull = pullback(embeddings, frozen)
    total = lambda_p * pull + lambda_e * entailment + lambda_m * hard
    return Losses(total, pull, entailment, hard, p.mean(), -n.mean())
