"""Text-only checks of an encoder on hierarchies: the RE order (d_corr, per tier pair) and a guard that it is still
a retrieval encoder (each tier-4 text finds its own tier-3 text among all rows' tier-3 texts), plus, for a tuned
encoder, how far it moved from the original (mean cosine of the same texts).

Used by `validate` (per model), by the fine-tune's dev report and by `bench/finetune.py`, on the same definitions.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from hierarcaps.eval.radial import d_corr, tau_by_tier_pair

Encode = Callable[[list[str]], np.ndarray]  # texts -> (n, d) L2-normalised


def parent_top1(texts: np.ndarray, text_emb: np.ndarray, child: int = 3, parent: int = 2) -> float:
    """Fraction of rows whose tier `child` text (0-based) has its own tier `parent` text as the nearest (cosine) of
    the distinct tier-`parent` texts of all rows."""
    _, first_row, parent_of_row = np.unique(np.asarray(texts)[:, parent].astype(str), return_index=True, return_inverse=True)
    sims = np.asarray(text_emb[:, child], np.float64) @ np.asarray(text_emb[first_row, parent], np.float64).T
    return float((sims.argmax(axis=1) == parent_of_row).mean())


def embed_rows(texts: np.ndarray, encode: Encode) -> np.ndarray:
    """(n, L) texts -> (n, L, d), each distinct text encoded once."""
    unique, inverse = np.unique(np.asarray(texts).astype(str).ravel(), return_inverse=True)
    return encode(list(unique))[inverse].reshape(*np.asarray(texts).shape, -1)


def text_scores(texts: np.ndarray, text_emb: np.ndarray, root: np.ndarray, frozen_emb: np.ndarray | None = None) -> dict:
    """d_corr, its per-tier-pair parts, tier-4 -> own tier-3 top-1 and (given the frozen encoder's embeddings of the
    same texts) the mean cosine to them."""
    out = {
        "d_corr": d_corr(text_emb, root),
        "d_corr_by_tier_pair": tau_by_tier_pair(text_emb, root),
        "tier4_to_tier3_top1": parent_top1(texts, text_emb),
    }
    if frozen_emb is not None:
        out["cosine_to_frozen"] = float((np.asarray(text_emb, np.float64) * np.asarray(frozen_emb, np.float64)).sum(-1).mean())
    return out
