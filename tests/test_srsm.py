"""Semantic RSM: the exact method against a plain per-pair scipy oracle, the approximations within their
documented bounds, the batched auction's epsilon-optimality, and permutation invariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from hierarcaps.eval import assignment, srsm
from hierarcaps.eval.srsm import KERNELS, matching_quality, matching_scores, plain_rsm, semantic_rsm


def oracle_rsm(x: np.ndarray, kernel: str) -> np.ndarray:
    """Per ordered pair: scipy's optimal permutation, then the kernel computed on the permuted tokens."""
    n = len(x)
    inner, dist = np.zeros((n, n)), np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            rows, cols = linear_sum_assignment(x[i] @ x[j].T, maximize=True)
            permuted = x[j][cols[np.argsort(rows)]]
            inner[i, j] = np.sum(x[i] * permuted)
            dist[i, j] = np.sum((x[i] - permuted) ** 2)
    if kernel == "inner":
        return inner
    norms = np.sqrt((x**2).sum(axis=(1, 2)))
    if kernel == "cosine":
        return inner / np.outer(norms, norms)
    sigma = np.sqrt(np.median(dist[dist > 1e-9])) + 1e-3
    return np.exp(-dist / (2 * sigma**2))


def random_tokens(seed: int, n: int = 7, t: int = 6, d: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, t, d))


def tied_tokens(seed: int, n: int = 7, t: int = 6, d: int = 4) -> np.ndarray:
    # entries in {0, 1}: many equal inner products, so many optimal permutations
    return np.random.default_rng(seed).integers(0, 2, (n, t, d)).astype(np.float64)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("make", [random_tokens, tied_tokens], ids=["random", "ties"])
def test_exact_matches_per_pair_scipy_oracle(kernel, make):
    for seed in range(2):
        x = make(seed)
        np.testing.assert_allclose(semantic_rsm(x, "exact", kernel), oracle_rsm(x, kernel), rtol=1e-9, atol=1e-9)


def test_exact_on_float32_tensors_matches_oracle_within_float32_precision():
    x = random_tokens(3, n=6, t=9, d=16).astype(np.float32)
    got = semantic_rsm(torch.from_numpy(x), "exact", "cosine")
    np.testing.assert_allclose(got, oracle_rsm(x.astype(np.float64), "cosine"), atol=1e-5)


@pytest.mark.parametrize("method", srsm.METHODS)
def test_every_method_is_symmetric_with_self_similarity_on_the_diagonal(method):
    x = np.abs(random_tokens(4))
    scores, _ = matching_scores(x, [method], k=3)
    np.testing.assert_array_equal(scores[method], scores[method].T)
    np.testing.assert_allclose(np.diag(scores[method]), (x**2).sum(axis=(1, 2)))
    np.testing.assert_allclose(np.diag(semantic_rsm(x, method, "cosine", k=3)), 1.0)
    np.testing.assert_allclose(np.diag(semantic_rsm(x, method, "rbf", k=3)), 1.0)


def test_only_the_upper_triangle_is_solved_with_the_lower_index_as_rows(monkeypatch):
    x = np.abs(random_tokens(5, n=9, t=5, d=3))
    seen = []
    real = assignment.greedy_scores
    monkeypatch.setattr(assignment, "greedy_scores", lambda blocks: seen.append(len(blocks)) or real(blocks))
    monkeypatch.setattr(srsm, "BLOCK_BYTES", 2000)  # many tiles and batches, including diagonal tiles
    scores, _ = matching_scores(x, ["greedy"])
    assert sum(seen) == 9 * 8 // 2 and len(seen) > 1
    for i in range(9):
        for j in range(i + 1, 9):
            expected = assignment.greedy_assign(torch.from_numpy(x[i] @ x[j].T)[None])[0].item()
            assert scores["greedy"][i, j] == pytest.approx(expected, abs=1e-12)
            assert scores["greedy"][j, i] == scores["greedy"][i, j]


def test_greedy_follows_the_row_order_of_best_scores():
    # row 0's best (5) beats row 1's (4.9): row 0 takes column 0, row 1 is left with 0; the optimum is 8.9
    blocks = torch.tensor([[[5.0, 4.0], [4.9, 0.0]]])
    score, cols = assignment.greedy_assign(blocks)
    assert score.item() == 5.0 and cols.tolist() == [[0, 1]]


def test_greedy_finds_the_optimum_on_permuted_copies():
    rng = np.random.default_rng(6)
    a = rng.standard_normal((12, 32))
    b = a[rng.permutation(12)]
    scores, _ = matching_scores(np.stack([a, b]), ["greedy", "exact"])
    assert scores["greedy"][0, 1] == pytest.approx((a**2).sum())
    assert scores["greedy"][0, 1] == pytest.approx(scores["exact"][0, 1])


# Documented floors of the summed score over the optimum on non-negative random features (what post-activation
# feature maps look like): every method returns a permutation, so <= 1 always; greedy has no worst-case
# constant (crafted T x T inputs reach about 1/T), so these are measured floors with margin, not guarantees.
FLOORS = {"greedy": 0.9, "topk-greedy": 0.85, "batch-optimal": 0.7, "auction": 0.999}


@pytest.mark.parametrize("seed", [0, 1])
def test_approximations_stay_within_documented_bounds(seed):
    x = np.maximum(np.random.default_rng(seed).standard_normal((8, 16, 24)), 0)
    methods = list(FLOORS)
    scores, _ = matching_scores(x, ["exact", *methods], k=4)
    quality = matching_quality({m: scores[m] for m in methods}, scores["exact"])
    for method in methods:
        assert np.all(scores[method] <= scores["exact"] + 1e-9), method
        assert quality[method]["ratio"] >= FLOORS[method], (method, quality[method])


def test_topk_greedy_with_k_equal_to_t_and_batch_optimal_with_one_window_are_exact():
    x = random_tokens(7)
    scores, _ = matching_scores(x, ["exact", "topk-greedy", "batch-optimal"], k=x.shape[1])
    np.testing.assert_allclose(scores["topk-greedy"], scores["exact"], atol=1e-9)
    np.testing.assert_allclose(scores["batch-optimal"], scores["exact"], atol=1e-9)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_batched_solvers_match_scipy_per_matrix_including_a_short_last_window(dtype):
    rng = np.random.default_rng(3)
    blocks = np.concatenate([rng.standard_normal((20, 11, 11)), rng.integers(0, 3, (20, 11, 11))]).astype(dtype)
    best = [linear_sum_assignment(b.astype(np.float64), maximize=True) for b in blocks]
    expected = [b.astype(np.float64)[rows, cols].sum() for b, (rows, cols) in zip(blocks, best)]
    np.testing.assert_allclose(assignment.exact_scores(blocks, workers=2), expected, rtol=1e-12, atol=1e-9)
    windows = []  # windows of 4, 4 and 3 along the diagonal
    for b in blocks.astype(np.float64):
        windows.append(sum(w[linear_sum_assignment(w, maximize=True)].sum()
                           for w in (b[s:s + 4, s:s + 4] for s in range(0, 11, 4))))
    np.testing.assert_allclose(assignment.window_scores(blocks, 4, workers=1), windows, rtol=1e-12, atol=1e-9)


def test_auction_is_epsilon_optimal_on_cpu_tensors():
    gen = torch.Generator().manual_seed(0)
    blocks = torch.randn(40, 12, 12, generator=gen, dtype=torch.float64)
    eps = 1e-3
    scores, cols = assignment.auction_assign(blocks, eps_final=eps)
    best = assignment.exact_scores(blocks)
    assert all(sorted(c) == list(range(12)) for c in cols.tolist())  # each a permutation
    np.testing.assert_allclose(scores.numpy(), blocks.gather(2, cols[..., None]).squeeze(2).sum(1).numpy())
    assert np.all(scores.numpy() <= best + 1e-9)
    assert np.all(scores.numpy() >= best - 12 * eps - 1e-9)


def test_auction_is_optimal_on_integer_benefits_with_eps_below_one_over_t():
    gen = torch.Generator().manual_seed(1)
    blocks = torch.randint(0, 6, (60, 8, 8), generator=gen).to(torch.float64)  # tie-heavy
    scores, _ = assignment.auction_assign(blocks, eps_final=0.9 / 8)
    np.testing.assert_array_equal(scores.numpy(), assignment.exact_scores(blocks))


def test_auction_on_float32_keeps_its_bound():
    gen = torch.Generator().manual_seed(2)
    blocks = torch.rand(30, 20, 20, generator=gen)
    scores, _ = assignment.auction_assign(blocks)  # float32: eps floored at what float32 resolves
    best = assignment.exact_scores(blocks)
    assert np.all(scores.numpy() / best >= 0.999)


def test_semantic_rsm_is_invariant_to_shuffled_tokens_but_plain_rsm_is_not():
    x = np.abs(random_tokens(8, n=5, t=8, d=6))
    shuffled = x.copy()
    shuffled[2] = x[2][np.random.default_rng(0).permutation(8)]
    for kernel in KERNELS:
        np.testing.assert_allclose(semantic_rsm(shuffled, "exact", kernel), semantic_rsm(x, "exact", kernel),
                                   atol=1e-9)
        assert not np.allclose(plain_rsm(shuffled, kernel), plain_rsm(x, kernel))
    np.testing.assert_allclose(plain_rsm(x, "inner"), np.einsum("itd,jtd->ij", x, x))


def test_semantic_similarity_is_at_least_the_plain_one():
    x = random_tokens(9)
    assert np.all(semantic_rsm(x, "exact", "inner") >= plain_rsm(x, "inner") - 1e-9)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown semantic RSM method 'hungarian'"):
        semantic_rsm(random_tokens(0), "hungarian")
    with pytest.raises(ValueError, match="unknown kernel 'laplace'"):
        plain_rsm(random_tokens(0), "laplace")
    with pytest.raises(ValueError, match=r"\(N, T, D\)"):
        semantic_rsm(np.zeros((3, 4)))


def test_auction_that_runs_out_of_rounds_still_returns_permutations(caplog):
    gen = torch.Generator().manual_seed(3)
    blocks = torch.randn(5, 10, 10, generator=gen, dtype=torch.float64)
    scores, cols = assignment.auction_assign(blocks, max_rounds=1)
    assert all(sorted(c) == list(range(10)) for c in cols.tolist())
    assert np.all(scores.numpy() <= assignment.exact_scores(blocks) + 1e-9)
    assert "unfinished" in caplog.text
