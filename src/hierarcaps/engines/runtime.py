"""Torch runtime settings shared by the engines, the trainers and the evaluation."""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(n: int | None):
    """Run a block with `n` intra-op threads (None: leave as is), then restore.

    Why: small ops are too small to split; with 2 threads on a shared 2-core CPU, OpenMP workers spin and wait on
    each other. Measured under load here: a tiny-T5 training step 3.9 s with 2 threads vs 0.26 s with 1; a batched
    GEMM 3-7x slower. Callers that want parallelism run independent units in Python threads instead."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
