"""Batched assignment solvers for the semantic RSM: each takes a batch of square benefit matrices (B, T, T)
and returns, per matrix, the summed benefit of the permutation it finds (to be maximised).

- `exact_scores`: Jonker-Volgenant (`lap.lapjvh_batch` from lapx, compiled, releases the GIL) on the whole
  batch. Measured against scipy's `linear_sum_assignment` per matrix on random 49x49 / 196x196 problems
  (bench/README.md): 2.2x / 2.8x faster on one thread, the same optimum.
- `greedy_scores`: rows in order of their best benefit take their best free column (T vectorised steps).
- `auction_scores`: Bertsekas' auction with epsilon scaling, Jacobi-style (every unassigned row bids at
  once), batched over all matrices; runs on any torch device. Its result is within T * eps_final of the
  optimum (epsilon-complementary slackness); with integer benefits and eps_final < 1/T it is optimal.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import torch

try:  # the lapx distribution installs the module `lap`; the older `lap` distribution has no batch solvers
    from lap import lapjvh_batch
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "hierarcaps needs lapx's lap.lapjvh_batch for the exact semantic RSM; another package named `lap` seems to "
        "shadow it: pip install --force-reinstall 'lapx>=0.11'"
    ) from err

log = logging.getLogger(__name__)


def worker_count() -> int:
    """Threads for the assignment solves: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@lru_cache(maxsize=1)
def _pool(workers: int) -> ThreadPoolExecutor:
    # One pool per process, created on first use: no threads are started at import time.
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="srsm-lsa")


def _solve_batch(benefits: np.ndarray, threads: int) -> np.ndarray:
    """Optimal summed benefit of each (T, T) matrix. The solver keeps its potentials and distances in float64
    whatever the cost dtype, so float32 blocks are solved exactly as given, without a float64 copy."""
    if len(benefits) == 0 or benefits.shape[1] == 0:
        return np.zeros(len(benefits), dtype=np.float64)
    totals, _, _ = lapjvh_batch(-benefits, n_threads=threads)
    return -np.asarray(totals, dtype=np.float64)


def _numpy(blocks: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(blocks, torch.Tensor):
        blocks = blocks.detach().cpu()
        blocks = (blocks if blocks.dtype in (torch.float32, torch.float64) else blocks.double()).numpy()
    if blocks.dtype not in (np.float32, np.float64):
        blocks = blocks.astype(np.float64)
    return np.ascontiguousarray(blocks)


def exact_scores(blocks: torch.Tensor | np.ndarray, workers: int | None = None) -> np.ndarray:
    """Optimal summed benefit of each (T, T) block, solved on `workers` threads."""
    return _solve_batch(_numpy(blocks), workers or worker_count())


def window_scores(blocks: torch.Tensor | np.ndarray, k: int, workers: int | None = None) -> np.ndarray:
    """Sum of optimal matchings within consecutive k-windows along the diagonal of already-sorted blocks."""
    blocks = _numpy(blocks)
    count, size, _ = blocks.shape
    threads = workers or worker_count()
    out = np.zeros(count, dtype=np.float64)
    full = size // k * k
    if full:  # all full windows of all blocks in one batch
        windows = blocks[:, :full, :full].reshape(count, full // k, k, full // k, k)
        windows = np.ascontiguousarray(np.diagonal(windows, axis1=1, axis2=3).transpose(0, 3, 1, 2))
        out += _solve_batch(windows.reshape(-1, k, k), threads).reshape(count, -1).sum(axis=1)
    if full < size:
        out += _solve_batch(np.ascontiguousarray(blocks[:, full:, full:]), threads)
    return out


def greedy_assign(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-ordered greedy: rows sorted by their best benefit (descending) each take their best free column.

    Returns (scores (B,) float64, assignment (B, T) column of each row)."""
    count, size, _ = blocks.shape
    batch = torch.arange(count, device=blocks.device)
    order = blocks.amax(dim=2).argsort(dim=1, descending=True, stable=True)
    taken = torch.zeros(count, size, dtype=torch.bool, device=blocks.device)
    assignment = torch.empty(count, size, dtype=torch.long, device=blocks.device)
    total = torch.zeros(count, dtype=torch.float64, device=blocks.device)
    for step in range(size):
        rows = order[:, step]
        values, cols = blocks[batch, rows].masked_fill(taken, float("-inf")).max(dim=1)
        total += values.to(torch.float64)
        taken[batch, cols] = True
        assignment[batch, rows] = cols
    return total, assignment


def greedy_scores(blocks: torch.Tensor) -> np.ndarray:
    return greedy_assign(blocks)[0].cpu().numpy()


def auction_assign(
    blocks: torch.Tensor,
    eps_final: float | torch.Tensor | None = None,
    rel_eps: float = 1e-7,
    scale_step: float = 5.0,
    max_rounds: int = 100_000,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched epsilon-scaling auction (maximisation). Returns (scores (B,) float64, assignment (B, T)).

    eps_final: per-matrix final bid increment; default rel_eps * (max - min benefit), never below what the
    dtype can resolve at the price scale (else prices stop rising and bidding cycles). Each phase divides eps by
    `scale_step` and restarts the assignment from the previous phase's prices."""
    count, size, _ = blocks.shape
    dev, dtype = blocks.device, blocks.dtype
    if count == 0:
        return torch.zeros(0, dtype=torch.float64, device=dev), torch.zeros(0, size, dtype=torch.long, device=dev)
    if size == 1:
        return blocks[:, 0, 0].to(torch.float64), torch.zeros(count, 1, dtype=torch.long, device=dev)
    spread = (blocks.amax(dim=(1, 2)) - blocks.amin(dim=(1, 2))).clamp_min(torch.finfo(dtype).tiny)
    floor = spread * 64 * torch.finfo(dtype).eps
    if eps_final is None:
        eps_final = spread * rel_eps
    eps_final = torch.maximum(torch.as_tensor(eps_final, dtype=dtype, device=dev).expand(count), floor)
    eps = torch.maximum(spread / scale_step, eps_final)
    prices = torch.zeros(count, size, dtype=dtype, device=dev)
    rows_idx = torch.arange(size, device=dev).expand(count, size)
    while True:
        owner = _auction_phase(blocks, prices, eps, rows_idx, max_rounds)
        if bool((eps <= eps_final).all()):
            break
        eps = torch.maximum(eps / scale_step, eps_final)
    # owner[b, j] = row holding column j -> assignment[b, i] = column of row i
    assignment = torch.empty(count, size, dtype=torch.long, device=dev)
    assignment.scatter_(1, owner, rows_idx)
    scores = blocks.gather(2, assignment.unsqueeze(2)).squeeze(2).to(torch.float64).sum(dim=1)
    return scores, assignment


def _auction_phase(blocks, prices, eps, rows_idx, max_rounds) -> torch.Tensor:
    """One phase at fixed eps; updates `prices` in place, returns owner (B, T) of each column.

    Works on a compacted copy of the unfinished matrices, shrunk whenever half of them have finished, so late
    rounds (a few matrices still in a price war) do not pay for the whole batch."""
    count, size, _ = blocks.shape
    dev = blocks.device
    owner = torch.full((count, size), -1, dtype=torch.long, device=dev)  # column -> row
    idx = torch.arange(count, device=dev)
    sub, price, step = blocks, prices.clone(), eps
    own = owner.clone()
    row_col = torch.full((count, size), -1, dtype=torch.long, device=dev)  # row -> column
    neg_inf = torch.tensor(float("-inf"), dtype=blocks.dtype, device=dev)
    for _ in range(max_rounds):
        free = row_col < 0
        unfinished = free.any(dim=1)
        left = int(unfinished.sum())
        if left == 0:
            break
        if left <= len(idx) // 2:
            prices[idx], owner[idx] = price, own
            keep = unfinished.nonzero().squeeze(1)
            idx, sub, price, step = idx[keep], sub[keep], price[keep], step[keep]
            own, row_col, free = own[keep], row_col[keep], free[keep]
        rows = rows_idx[: len(idx)]
        top = (sub - price.unsqueeze(1)).topk(2, dim=2)
        best = top.indices[..., 0]
        bid = price.gather(1, best) + (top.values[..., 0] - top.values[..., 1]) + step.unsqueeze(1)
        bid = torch.where(free, bid, neg_inf)
        high = torch.full_like(price, float("-inf")).scatter_reduce(1, best, bid, "amax")
        wins = free & (bid == high.gather(1, best))
        # ties for one column: the highest row index among the top bidders takes it
        winner = torch.full_like(best, -1).scatter_reduce(1, best, torch.where(wins, rows, -1), "amax")
        got_bid = winner >= 0
        price = torch.where(got_bid, high, price)
        own = torch.where(got_bid, winner, own)
        # rebuild row -> column from column -> row; a spare slot at index `size` absorbs unowned columns
        slots = torch.full((len(idx), size + 1), -1, dtype=torch.long, device=dev)
        slots.scatter_(1, torch.where(own >= 0, own, size), rows)
        row_col = slots[:, :size]
    else:
        prices[idx], owner[idx] = price, own
        log.warning("auction: %d matrices unfinished after %d rounds; completing them arbitrarily",
                    int((row_col < 0).any(dim=1).sum()), max_rounds)
        return _complete(owner)
    prices[idx], owner[idx] = price, own
    return owner


def _complete(owner: torch.Tensor) -> torch.Tensor:
    """Give the free columns to the unassigned rows in index order (a valid permutation, not an optimal one)."""
    out = owner.clone()
    size = owner.shape[1]
    for b in range(owner.shape[0]):
        held = set(out[b][out[b] >= 0].tolist())
        spare_rows = iter(r for r in range(size) if r not in held)
        for col in range(size):
            if out[b, col] < 0:
                out[b, col] = next(spare_rows)
    return out


def auction_scores(blocks: torch.Tensor, eps_final: float | None = None) -> np.ndarray:
    return auction_assign(blocks, eps_final=eps_final)[0].cpu().numpy()
