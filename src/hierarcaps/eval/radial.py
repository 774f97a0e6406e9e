"""Radial-embedding (RE) metrics of the HierarCaps paper, vectorised.

Alper & Averbuch-Elor, "Emergent Visual-Semantic Hierarchies in Image-Text Representations" (ECCV 2024); the
definitions follow the authors' released evaluation (`code/evaluation/hierarchical_retrieval.py` in
TAU-VAILab/hierarcaps):

- radius of a text = ||e - root||, root = the normalised embedding of the empty string;
- `steps` thresholds = linspace(min radius, max radius) over all positive texts;
- for each image and each threshold in increasing order, predict the text with the highest image similarity
  among the texts with radius <= threshold (ties: the first in row-major (row, level) order, like torch.argmax);
- precision = |set(preds) & set(gt texts of the image)| / max(1, |set(preds)|);
- recall = fraction of the levels l for which some gt row of the image has its level-l text among the preds;
- d_corr = mean over rows of Kendall tau between argsort(radii) and [1, 2, 3, 4].

Texts compare as strings, so the same text in two rows is one prediction. The paper's loop only appends a
prediction that differs from the previous one; as precision and recall use the *set* of predictions, that
de-duplication does not change them and is not needed here.

Differences from the released code, both deliberate: everything runs in float64 (the original compares float32
radii on the GPU), and argsort of tied radii is stable (torch's argsort leaves tie order unspecified).

How it is vectorised: sorting the texts by radius turns every threshold's mask into a prefix of that order. Per
image, texts are ranked by (similarity desc, index asc); the prediction at a threshold is the text of minimal rank
within the prefix, i.e. a running minimum over the radius-sorted ranks read at the prefix ends. Set operations
on predictions use integer keys image * n_unique_texts + text_id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

# Images per similarity block: bounds memory to ~CHUNK_ELEMENTS float64 + int64 values whatever the data size.
CHUNK_ELEMENTS = 4_000_000


@dataclass
class RECurves:
    """Per-threshold means over images: precision/recall of the predictions made up to each threshold."""

    thresholds: np.ndarray  # (steps,)
    precision: np.ndarray  # (steps,)
    recall: np.ndarray  # (steps,)


def radii(text_emb: np.ndarray, root: np.ndarray) -> np.ndarray:
    """(n, L, d) embeddings -> (n, L) distances to the root."""
    return np.linalg.norm(np.asarray(text_emb, np.float64) - np.asarray(root, np.float64), axis=-1)


def d_corr(text_emb: np.ndarray, root: np.ndarray) -> float:
    """Mean Kendall tau between argsort(radii) of each row and [1..L] (1 = radii grow from generic to specific)."""
    order = np.argsort(radii(text_emb, root), axis=1, kind="stable")
    levels = order.shape[1]
    # tau of a permutation against the identity = 1 - 2 * inversions / pairs (no ties are possible)
    upper = np.triu(np.ones((levels, levels), dtype=bool), k=1)
    inversions = (order[:, :, None] > order[:, None, :])[:, upper].sum(axis=1)
    pairs = levels * (levels - 1) / 2
    return float(np.mean(1.0 - 2.0 * inversions / pairs))


def tau_by_tier_pair(text_emb: np.ndarray, root: np.ndarray) -> dict[str, float]:
    """Per tier pair i < j: mean over rows of sign(r_j - r_i) ("1-2": 1.0 = tier 2 always further out than tier 1).

    d_corr is the mean of these values (each row's tau is the mean of its pairs' signs), so they say which tiers
    a model orders wrongly."""
    r = radii(text_emb, root)
    levels = r.shape[1]
    return {f"{i + 1}-{j + 1}": float(np.sign(r[:, j] - r[:, i]).mean()) for i in range(levels) for j in range(i + 1, levels)}


def _validate(texts: np.ndarray, text_emb: np.ndarray, image_emb: np.ndarray, image_of_row: np.ndarray) -> None:
    if text_emb.ndim != 3 or texts.shape != text_emb.shape[:2]:
        raise ValueError(f"texts {texts.shape} and text_emb {text_emb.shape} must be (n, L) and (n, L, d)")
    if image_emb.ndim != 2 or image_emb.shape[1] != text_emb.shape[2]:
        raise ValueError(f"image_emb {image_emb.shape} must be (m, {text_emb.shape[2]})")
    if image_of_row.shape != (texts.shape[0],):
        raise ValueError(f"image_of_row {image_of_row.shape} must be ({texts.shape[0]},)")
    m = image_emb.shape[0]
    if len(image_of_row) and (image_of_row.min() < 0 or image_of_row.max() >= m):
        raise ValueError(f"image_of_row must index the {m} images")
    without_rows = np.setdiff1d(np.arange(m), image_of_row)
    if len(without_rows):
        raise ValueError(f"{len(without_rows)} image(s) have no hierarchy row, e.g. image {int(without_rows[0])}")


def _predictions(sims_of, m: int, flat_radii: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(m, steps) flat text index predicted for each image and threshold. `sims_of(a, b)` = similarities of images a:b."""
    n_texts = len(flat_radii)
    by_radius = np.argsort(flat_radii, kind="stable")
    prefix_end = np.searchsorted(flat_radii[by_radius], thresholds, side="right") - 1  # >= 0: thresholds[0] = min
    out = np.empty((m, len(thresholds)), dtype=np.int64)
    chunk = max(1, CHUNK_ELEMENTS // max(1, n_texts))
    positions = np.arange(n_texts)
    for start in range(0, m, chunk):
        sims = sims_of(start, min(m, start + chunk))
        order = np.argsort(-sims, axis=1, kind="stable")  # similarity desc, then flat index asc
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.broadcast_to(positions, order.shape), axis=1)
        best_rank = np.minimum.accumulate(rank[:, by_radius], axis=1)[:, prefix_end]
        out[start : start + len(sims)] = np.take_along_axis(order, best_rank, axis=1)
    return out


def _scores(
    pred_text: np.ndarray, text_ids: np.ndarray, image_of_row: np.ndarray, n_unique: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per image and threshold: precision and recall of the predictions made up to that threshold -> (m, steps) x2."""
    m, steps = pred_text.shape
    levels = text_ids.shape[1]
    keys = np.arange(m, dtype=np.int64)[:, None] * n_unique + pred_text  # (image, text) pairs
    unique_keys, first_flat = np.unique(keys.ravel(), return_index=True)
    is_new = np.zeros(m * steps, dtype=bool)
    is_new[first_flat] = True
    is_new = is_new.reshape(m, steps)
    gt_keys = image_of_row.astype(np.int64)[:, None] * n_unique + text_ids  # (n, L)
    is_gt = np.isin(keys, gt_keys)
    n_preds = np.cumsum(is_new, axis=1)
    true_pos = np.cumsum(is_new & is_gt, axis=1)
    precision = true_pos / np.maximum(1, n_preds)

    # first threshold at which each (row, level) text was predicted for the row's image (steps = never)
    where = np.minimum(np.searchsorted(unique_keys, gt_keys), len(unique_keys) - 1)
    found = unique_keys[where] == gt_keys
    first_step = np.where(found, first_flat[where] % steps, steps)
    level_first = np.full((m, levels), steps, dtype=np.int64)
    np.minimum.at(level_first, image_of_row, first_step)
    recall = (level_first[:, None, :] <= np.arange(steps)[None, :, None]).mean(axis=2)
    return precision, recall


def re_metrics(
    texts,
    text_emb,
    image_emb,
    image_of_row,
    root,
    steps: int = 50,
    return_curves: bool = False,
) -> dict:
    """RE precision, recall and d_corr as the HierarCaps paper evaluates them.

    texts (n, L) str, text_emb (n, L, d) and image_emb (m, d) L2-normalised, image_of_row (n,) int, root (d,).
    With image_emb None only d_corr is computed (text-only models). With return_curves, the result also holds
    "curves": RECurves (precision and recall of the predictions made up to each threshold, mean over images).
    """
    texts = np.asarray(texts, dtype=object)
    text_emb = np.asarray(text_emb, np.float64)
    result: dict = {"d_corr": d_corr(text_emb, root)}
    if image_emb is None:
        return result
    image_emb = np.asarray(image_emb, np.float64)
    image_of_row = np.asarray(image_of_row, dtype=np.int64)
    _validate(texts, text_emb, image_emb, image_of_row)
    n, levels, dim = text_emb.shape
    flat_emb = text_emb.reshape(n * levels, dim)
    flat_radii = radii(text_emb, root).ravel()
    thresholds = np.linspace(flat_radii.min(), flat_radii.max(), steps)
    unique_texts, text_ids = np.unique(texts.astype(str).ravel(), return_inverse=True)
    text_ids = text_ids.reshape(n, levels)

    def sims_of(a: int, b: int) -> np.ndarray:
        return image_emb[a:b] @ flat_emb.T

    pred_flat = _predictions(sims_of, image_emb.shape[0], flat_radii, thresholds)
    precision, recall = _scores(text_ids.ravel()[pred_flat], text_ids, image_of_row, len(unique_texts))
    result["precision"] = float(precision[:, -1].mean())
    result["recall"] = float(recall[:, -1].mean())
    if return_curves:
        result["curves"] = RECurves(thresholds, precision.mean(axis=0), recall.mean(axis=0))
    return result
