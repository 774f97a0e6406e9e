"""Semantic RSM throughput: image pairs per second for each method, and the speed-up over a plain per-pair
scipy loop measured in the same run (random float32 tokens, seeded).

    python bench/srsm.py                      # N=64, T in {49, 196}, D=768, on the CPU (and cuda if present)
    python bench/srsm.py --target             # also the GPU target: N=1000, T=196 auction, quality on sampled pairs

The loop is what one writes first: for every ordered pair (i, j), C = X_i @ X_j^T, linear_sum_assignment(C),
sum. It runs twice, with the BLAS library's default threads and with one thread, and the speed-up is taken
against the faster of the two, so a badly threaded BLAS on a busy machine cannot inflate it. "x loop(i<j)"
compares with the same loop over the upper triangle only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from hierarcaps.eval import srsm  # noqa: E402
from hierarcaps.eval.assignment import exact_scores, worker_count  # noqa: E402

METHODS = ("exact", "greedy", "topk-greedy", "batch-optimal", "auction")


def loop_seconds(x: np.ndarray, upper_only: bool) -> tuple[float, np.ndarray]:
    n = len(x)
    out = np.zeros((n, n))
    started = time.perf_counter()
    for i in range(n):
        for j in range(i if upper_only else 0, n):
            cost = x[i] @ x[j].T
            rows, cols = linear_sum_assignment(cost, maximize=True)
            out[i, j] = cost[rows, cols].sum()
    return time.perf_counter() - started, out


def bench_case(n: int, t: int, d: int, device: str, seed: int, auction_n: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, t, d), dtype=np.float32)
    pairs_all, pairs_upper = n * n, n * (n - 1) // 2
    loop_default, oracle = loop_seconds(x, upper_only=False)
    with threadpool_limits(limits=1):
        loop_single, _ = loop_seconds(x, upper_only=False)
        loop_upper, _ = loop_seconds(x, upper_only=True)
    loop_all = min(loop_default, loop_single)
    rows = [{"T": t, "method": "per-pair loop (all pairs, default BLAS threads)", "device": "cpu", "pairs": pairs_all,
             "seconds": loop_default},
            {"T": t, "method": "per-pair loop (all pairs, 1 BLAS thread)", "device": "cpu", "pairs": pairs_all,
             "seconds": loop_single},
            {"T": t, "method": "per-pair loop (i<=j, 1 BLAS thread)", "device": "cpu",
             "pairs": pairs_upper + n, "seconds": loop_upper}]
    for method in METHODS:
        size = auction_n if method == "auction" and device == "cpu" else n
        tokens = torch.from_numpy(x[:size]).to(device)
        srsm.matching_scores(tokens[:4], [method], device=device)  # warm-up: thread pool, kernels
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        scores, _ = srsm.matching_scores(tokens, [method], device=device)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        quality = srsm.matching_quality(scores, oracle[:size, :size])[method]
        # the loop's time for the same number of pairs; the method computes the whole N x N matrix
        loop_same = loop_all * (size * size) / pairs_all
        row = {"T": t, "method": method, "device": device, "N": size, "pairs": size * (size - 1) // 2,
               "seconds": seconds, "x_loop_all": loop_same / seconds,
               "x_loop_upper": loop_upper * (size * (size + 1) / 2) / (n * (n + 1) / 2) / seconds,
               "quality": quality["ratio"], "worst_pair": quality["worst_pair_ratio"]}
        if method == "exact":
            if np.abs(scores["exact"] - oracle).max() > 1e-3 * np.abs(oracle).max():
                raise AssertionError("exact semantic RSM differs from the per-pair loop")
        rows.append(row)
    if device == "cpu":
        # The token products alone (tiled GEMMs, no matching): no method that looks at every token pair can be
        # faster, so loop / this is the ceiling of any "x loop" on this machine.
        tokens = torch.from_numpy(x)
        started = time.perf_counter()
        srsm.matching_scores(tokens, [])
        seconds = time.perf_counter() - started
        rows.append({"T": t, "method": "token products only (ceiling)", "device": "cpu", "N": n,
                     "pairs": pairs_upper, "seconds": seconds, "x_loop_all": loop_all / seconds})
        # thread scaling of the solver part
        started = time.perf_counter()
        srsm.matching_scores(tokens, ["exact"], workers=1)
        seconds = time.perf_counter() - started
        rows.append({"T": t, "method": "exact (1 solver thread)", "device": "cpu", "N": n, "pairs": pairs_upper,
                     "seconds": seconds, "x_loop_all": loop_all / seconds})
    return rows


def target_check(device: str, n: int = 1000, t: int = 196, d: int = 768, sample: int = 2000, seed: int = 0) -> dict:
    """All pairs of N=1000, T=196 with the auction; quality against scipy on `sample` random pairs."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, t, d, generator=gen).to(device)
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    scores, seconds = srsm.matching_scores(x, ["auction"], device=device)
    if device == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - started
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, sample)
    j = rng.integers(0, n, sample)
    keep = i != j
    i, j = i[keep], j[keep]
    xc = x.cpu()
    blocks = torch.bmm(xc[i], xc[j].transpose(1, 2))
    best = exact_scores(blocks)
    got = scores["auction"][i, j]
    return {"N": n, "T": t, "D": d, "device": device, "seconds": wall, "gemm_seconds": seconds["gemm"],
            "sampled_pairs": int(len(i)), "quality": float(got.sum() / best.sum()),
            "worst_pair": float((got / best).min())}


def print_table(rows: list[dict]) -> None:
    print(f"{'T':>4} {'method':<48} {'device':<6} {'pairs':>6} {'seconds':>8} {'pairs/s':>9} "
          f"{'x loop':>7} {'x loop(i<j)':>11} {'quality':>8}")
    for r in rows:
        rate = r["pairs"] / r["seconds"]
        x_all = f"{r['x_loop_all']:.1f}" if "x_loop_all" in r else ""
        x_up = f"{r['x_loop_upper']:.1f}" if "x_loop_upper" in r else ""
        quality = f"{r['quality']:.5f}" if "quality" in r else ""
        print(f"{r['T']:>4} {r['method']:<48} {r['device']:<6} {r['pairs']:>6} {r['seconds']:>8.3f} {rate:>9.0f} "
              f"{x_all:>7} {x_up:>11} {quality:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--t", type=int, nargs="+", default=[49, 196])
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--auction-n", type=int, default=16, help="N for the auction on the CPU (it is slow there)")
    parser.add_argument("--device", nargs="+", default=None, help="default: cpu, and cuda when available")
    parser.add_argument("--target", action="store_true", help="also time N=1000, T=196 with the auction")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here too")
    args = parser.parse_args()
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(f"# {platform.processor() or platform.machine()}, {worker_count()} cores, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}" + (f", {torch.cuda.get_device_name()}" if "cuda" in devices else ""))
    rows = []
    for t in args.t:
        for device in devices:
            rows += bench_case(args.n, t, args.d, device, args.seed, args.auction_n)
    print_table(rows)
    result = {"rows": rows}
    if args.target:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        result["target"] = target_check(device)
        print(json.dumps(result["target"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
