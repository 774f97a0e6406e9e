"""Premise/hypothesis pairs through a sequence classifier: the batching every cross-encoder back-end shares."""

from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np

from hierarcaps.engines.base import NLI_LABELS


class NLILabelError(ValueError):
    """A classification model whose labels are not entailment / neutral / contradiction."""


def label_columns(id2label: dict, model_name: str = "model") -> list[int]:
    """`perm` such that `logits[:, perm]` is in NLI_LABELS order; fails if the labels are not the 3 NLI ones."""
    names = {int(i): str(label).strip().lower() for i, label in id2label.items()}
    by_name = {name: i for i, name in names.items()}
    missing = [label for label in NLI_LABELS if label not in by_name]
    if missing or len(names) != len(NLI_LABELS):
        raise NLILabelError(
            f"{model_name}: id2label {dict(sorted(names.items()))} is not an NLI head; expected exactly the labels "
            f"{', '.join(NLI_LABELS)} (any case)"
        )
    return [by_name[label] for label in NLI_LABELS]


def pair_logits(model, tokenizer, pairs: Sequence[tuple[str, str]], *, batch_size: int, max_length: int,
                device: str = "cpu", autocast: str | None = None) -> np.ndarray:
    """(n, num_labels) float32 logits in the model's own column order, rows in the order of `pairs`."""
    import torch

    out = np.zeros((len(pairs), model.config.num_labels), dtype=np.float32)
    # Sorting by length keeps padding (and so wasted compute) small inside each batch.
    order = sorted(range(len(pairs)), key=lambda i: (len(pairs[i][0]) + len(pairs[i][1]), i))
    cast = torch.autocast(device.split(":")[0], dtype=getattr(torch, autocast)) if autocast else contextlib.nullcontext()
    with torch.inference_mode(), cast:
        for lo in range(0, len(order), batch_size):
            index = order[lo : lo + batch_size]
            batch = tokenizer(
                [pairs[i][0] for i in index],
                [pairs[i][1] for i in index],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            out[index] = model(**batch).logits.float().cpu().numpy()
    return out


def softmax(logits: np.ndarray, temperature: float = 1.0, bias: Sequence[float] | None = None) -> np.ndarray:
    """softmax(logits / temperature + bias): `bias` is a per-class offset fitted on dev (vector scaling)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    if bias is not None:
        z = z + np.asarray(bias, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
