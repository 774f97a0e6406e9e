"""Semantic representational similarity matrices (Wald et al., "Decoupling Semantic Similarity from Spatial
Alignment for Neural Networks", NeurIPS 2024).

An image is a set of T tokens of D dims (a 7x7 feature map, ViT patches). Two images are compared after the
permutation of the second one's tokens that maximises the summed token inner products, so where an object sits in
the image does not matter. `plain_rsm` keeps the tokens in their given order (the usual, spatially aligned RSM).

Kernels on the matched pair (X, PY): `inner` = <X, PY> (the optimal summed inner product), `cosine` = that over
||X||_F ||Y||_F, `rbf` = exp(-||X - PY||^2 / (2 sigma^2)) with sigma = sqrt(median of the non-zero squared
distances of the whole matrix) + 1e-3.

Methods for the permutation: `exact` (optimal assignment), `greedy` (rows in order of their best score take their
best free column), `topk-greedy` (exact on the k highest-norm tokens of each image, greedy on the rest),
`batch-optimal` (tokens sorted by norm, optimal matching inside consecutive windows of k) and `auction`
(batched epsilon-scaling auction, within T * eps of the optimum; meant for GPUs, runs on CPU tensors too).

How it runs: the token inner products of all image pairs come from large GEMMs over tiles of images, only for
the upper triangle (i < j: the matrix is symmetric, and the approximate methods are defined with the lower
index as rows). On the CPU, units of work (a few tiles: their GEMMs, then every requested method on their pairs)
run on one thread per core, torch with one intra-op thread each; torch's GEMM and the JV solver release the
GIL, so threads need no fork and no copies (a spawn process pool measured slower: start-up of 9-10 s and the
blocks pickled across). Self-pairs are not matched: the identity permutation is optimal for X against itself,
so the diagonal is ||X||_F^2 for every method. On `cuda` the GEMMs, `greedy` and `auction` run on the GPU in
large batches; the solver parts (`exact`, and the exact pieces of `topk-greedy` / `batch-optimal`) copy their
blocks to the CPU and solve them on threads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from hierarcaps.eval import assignment
from hierarcaps.engines.runtime import torch_threads

log = logging.getLogger(__name__)

METHODS = ("exact", "greedy", "topk-greedy", "batch-optimal", "auction")
KERNELS = ("inner", "cosine", "rbf")
DEFAULT_K = 16  # topk-greedy: tokens matched exactly; batch-optimal: window size
RBF_OFFSET = 1e-3  # added to sigma, as in the paper's code, so identical inputs cannot divide by zero
BLOCK_BYTES = 64 * 2**20  # bound on one tile, and the size of a batch handed to the solvers
GPU_BLOCK_BYTES = 4 * 2**30  # the same on a GPU, bounded by its free memory


def _as_tensor(tokens, device: str | torch.device | None) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(tokens) if not isinstance(tokens, torch.Tensor) else tokens)
    if x.ndim != 3:
        raise ValueError(f"tokens must be (N, T, D), got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x) or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()  # half precision would change which permutation wins
    return x.to(device or "cpu").contiguous()


def check_names(method: str | None = None, kernel: str | None = None) -> None:
    if method is not None and method not in METHODS:
        raise ValueError(f"unknown semantic RSM method {method!r}; known: {', '.join(METHODS)}")
    if kernel is not None and kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; known: {', '.join(KERNELS)}")


def _tile_size(n: int, t: int, itemsize: int) -> int:
    # Small enough that a tile's (a*T, b*T) product fits BLOCK_BYTES, and at least ~8 tiles per side so the
    # wasted lower half of the diagonal tiles stays a small share of the work.
    by_memory = int((BLOCK_BYTES / (t * t * itemsize)) ** 0.5)
    return max(1, min(32, by_memory, max(1, n // 8)))


def _tiles(n: int, size: int) -> Iterator[tuple[int, int, int, int]]:
    for a0 in range(0, n, size):
        for b0 in range(a0, n, size):
            yield a0, min(a0 + size, n), b0, min(b0 + size, n)


def _tile_blocks(x: torch.Tensor, a0: int, a1: int, b0: int, b1: int):
    """(i, j, blocks) for the pairs i < j of one tile; blocks[p] = X_i @ X_j^T, shape (pairs, T, T)."""
    n, t, d = x.shape
    gram = x[a0:a1].reshape(-1, d) @ x[b0:b1].reshape(-1, d).T
    gram = gram.view(a1 - a0, t, b1 - b0, t).permute(0, 2, 1, 3)
    ii, jj = torch.meshgrid(torch.arange(a0, a1), torch.arange(b0, b1), indexing="ij")
    keep = ii < jj
    ii, jj = ii[keep], jj[keep]
    return ii, jj, gram[(ii - a0).to(gram.device), (jj - b0).to(gram.device)]


def _norm_orders(x: torch.Tensor) -> torch.Tensor:
    """Each image's token indices by decreasing norm (stable, so ties keep the token order)."""
    return x.norm(dim=2).argsort(dim=1, descending=True, stable=True)


def _topk_greedy(blocks: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, k: int, workers) -> np.ndarray:
    """Exact on the k highest-norm rows x columns, greedy on the remaining rows x columns."""
    batch = torch.arange(len(blocks), device=blocks.device)[:, None, None]
    head = blocks[batch, rows[:, :k, None], cols[:, None, :k]]
    score = assignment.exact_scores(head, workers)
    if blocks.shape[1] > k:
        tail = blocks[batch, rows[:, k:, None], cols[:, None, k:]]
        score = score + assignment.greedy_scores(tail)
    return score


def _batch_optimal(blocks: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, k: int, workers) -> np.ndarray:
    batch = torch.arange(len(blocks), device=blocks.device)[:, None, None]
    return assignment.window_scores(blocks[batch, rows[:, :, None], cols[:, None, :]], k, workers)


def _solve(method: str, blocks: torch.Tensor, rows, cols, k: int, workers) -> np.ndarray:
    if method == "exact":
        return assignment.exact_scores(blocks, workers)
    if method == "greedy":
        return assignment.greedy_scores(blocks)
    if method == "topk-greedy":
        return _topk_greedy(blocks, rows, cols, k, workers)
    if method == "batch-optimal":
        return _batch_optimal(blocks, rows, cols, k, workers)
    # The auction works in float64 on the CPU (cheap there, and it keeps eps small); float32 on a GPU.
    dtype = torch.float64 if blocks.device.type == "cpu" else torch.float32
    return assignment.auction_scores(blocks.to(dtype))


def _unit_bytes(device: torch.device) -> int:
    """Size of one unit of work. A GPU gets large units: the auction's cost is its number of rounds, each a few
    kernel launches whatever the batch, so fewer, larger batches finish sooner."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(max(BLOCK_BYTES, min(GPU_BLOCK_BYTES, free // 8)))  # the auction holds ~4 copies
    return BLOCK_BYTES


def _tile_groups(n: int, t: int, itemsize: int, workers: int, limit: int) -> list[list[tuple[int, int, int, int]]]:
    """Tiles of the upper triangle, grouped into units of work of about `unit` bytes of (pairs, T, T) blocks:
    at most `limit`, and small enough that every worker gets several units."""
    pair_bytes = t * t * itemsize
    unit = min(limit, max(pair_bytes, n * (n - 1) // 2 * pair_bytes // (4 * workers)))
    groups, current, held = [], [], 0
    for tile in _tiles(n, _tile_size(n, t, itemsize)):
        a0, a1, b0, b1 = tile
        current.append(tile)
        held += (a1 - a0) * (b1 - b0) * pair_bytes
        if held >= unit:
            groups.append(current)
            current, held = [], 0
    if current:
        groups.append(current)
    return groups


def _run_unit(x, tiles, methods, orders, k, workers) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """GEMMs of some tiles, then every method on their pairs: (i, j, {method: scores}, {step: seconds})."""
    seconds = dict.fromkeys(["gemm", *methods], 0.0)
    started = time.perf_counter()
    parts = [_tile_blocks(x, *tile) for tile in tiles]
    ii, jj, blocks = (torch.cat(column) for column in zip(*parts)) if len(parts) > 1 else parts[0]
    seconds["gemm"] = time.perf_counter() - started
    values = {}
    if len(ii):
        rows = orders[ii.to(x.device)] if orders is not None else None
        cols = orders[jj.to(x.device)] if orders is not None else None
        for method in methods:
            started = time.perf_counter()
            values[method] = _solve(method, blocks, rows, cols, k, workers)
            seconds[method] = time.perf_counter() - started
    return ii.numpy(), jj.numpy(), values, seconds


def matching_scores(
    tokens,
    methods: Sequence[str] = ("exact",),
    device: str | None = None,
    k: int = DEFAULT_K,
    workers: int | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Summed inner product of the matched tokens for every pair, per method: ({method: (N, N)}, seconds).

    The GEMMs are shared by all methods. `seconds[step]` ("gemm" or a method) is the time spent in that step
    summed over the workers and divided by their number: about the wall time the step alone would take."""
    for method in methods:
        check_names(method)
    x = _as_tensor(tokens, device)
    n, t, _ = x.shape
    k = max(1, min(k, t))
    workers = workers or assignment.worker_count()
    on_cpu = x.device.type == "cpu"
    sq_norms = x.double().pow(2).sum(dim=(1, 2)).cpu().numpy()
    scores = {m: np.diag(sq_norms).astype(np.float64) for m in methods}
    seconds = dict.fromkeys(["gemm", *methods], 0.0)
    orders = _norm_orders(x) if {"topk-greedy", "batch-optimal"} & set(methods) else None
    groups = _tile_groups(n, t, x.element_size(), workers if on_cpu else 1, _unit_bytes(x.device))
    with torch.inference_mode():
        if on_cpu and workers > 1 and len(groups) > 1:
            # each unit solves its own pairs on one core (workers=1 inside), units spread over the cores
            pool = assignment._pool(workers)
            with torch_threads(1):
                results = list(pool.map(lambda tiles: _run_unit(x, tiles, methods, orders, k, 1), groups))
        else:  # one core, or a GPU: units in turn; the solver parts still use `workers` threads
            results = (_run_unit(x, tiles, methods, orders, k, workers) for tiles in groups)
        for done, (ii, jj, values, spent) in enumerate(results, 1):
            if len(groups) >= 20 and done % (len(groups) // 10) == 0:
                log.info("semantic RSM %s: %d%% of %d pairs", "/".join(methods), 100 * done // len(groups),
                         n * (n - 1) // 2)
            for method, value in values.items():
                scores[method][ii, jj] = value
                scores[method][jj, ii] = value
            for step, value in spent.items():
                seconds[step] += value
    if on_cpu and workers > 1 and len(groups) > 1:
        seconds = {step: value / workers for step, value in seconds.items()}
    return scores, seconds


def apply_kernel(scores: np.ndarray, sq_norms: np.ndarray, kernel: str = "inner") -> np.ndarray:
    """Turn a matrix of (matched) summed inner products into the kernel's similarity matrix."""
    check_names(kernel=kernel)
    scores = np.asarray(scores, dtype=np.float64)
    if kernel == "inner":
        return scores.copy()
    sq_norms = np.asarray(sq_norms, dtype=np.float64)
    if kernel == "cosine":
        norms = np.sqrt(sq_norms)
        return scores / np.maximum(np.outer(norms, norms), np.finfo(np.float64).tiny)
    dist = np.maximum(sq_norms[:, None] + sq_norms[None, :] - 2.0 * scores, 0.0)
    # Self-distance is 0 by definition, and so is a pair of identical sets; keep rounding out of the median.
    np.fill_diagonal(dist, 0.0)
    dist[dist <= 1e-12 * (dist.max() if dist.size else 0.0)] = 0.0
    nonzero = dist[dist > 0]
    sigma = (np.sqrt(np.median(nonzero)) if nonzero.size else 0.0) + RBF_OFFSET
    return np.exp(-dist / (2.0 * sigma**2))


def squared_norms(tokens) -> np.ndarray:
    x = _as_tensor(tokens, "cpu")
    return x.double().pow(2).sum(dim=(1, 2)).numpy()


def semantic_rsm(
    tokens,
    method: str = "exact",
    kernel: str = "inner",
    device: str | None = None,
    k: int = DEFAULT_K,
    workers: int | None = None,
) -> np.ndarray:
    """(N, N) float64 permutation-invariant similarity of N token sets `tokens` (N, T, D)."""
    check_names(method, kernel)
    scores, _ = matching_scores(tokens, [method], device=device, k=k, workers=workers)
    return apply_kernel(scores[method], squared_norms(tokens), kernel)


def plain_scores(tokens, device: str | None = None) -> np.ndarray:
    """Summed inner products of the tokens in their given order: one (N, T*D) Gram matrix."""
    x = _as_tensor(tokens, device)
    flat = x.reshape(len(x), -1)
    with torch.inference_mode():
        return (flat @ flat.T).double().cpu().numpy()


def plain_rsm(tokens, kernel: str = "inner", device: str | None = None) -> np.ndarray:
    """(N, N) spatially aligned RSM: the kernels above without the permutation."""
    check_names(kernel=kernel)
    return apply_kernel(plain_scores(tokens, device), squared_norms(tokens), kernel)


def matching_quality(scores: dict[str, np.ndarray], optimal: np.ndarray) -> dict[str, dict[str, float]]:
    """Per method: its summed score over all pairs i < j over the optimal sum ("ratio"), and the worst pair."""
    upper = np.triu_indices(len(optimal), k=1)
    best = optimal[upper]
    out = {}
    for method, values in scores.items():
        got = values[upper]
        with np.errstate(divide="ignore", invalid="ignore"):
            pair_ratio = np.where(best != 0, got / best, 1.0)
        out[method] = {
            "ratio": float(got.sum() / best.sum()) if best.size and best.sum() != 0 else 1.0,
            "worst_pair_ratio": float(pair_ratio.min()) if pair_ratio.size else 1.0,
        }
    return out
