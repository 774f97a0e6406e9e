"""RE metrics: the vectorised version must equal the paper's plain loop, kept here as the oracle."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import kendalltau

from hierarcaps.eval.radial import d_corr, re_metrics


def oracle(texts, text_emb, image_emb, image_of_row, root, steps=50):
    """The released HierarCaps evaluation loop (hierarchical_retrieval.py), transcribed to numpy."""
    texts = np.asarray(texts, dtype=object)
    n, levels, dim = text_emb.shape
    radii = np.linalg.norm(text_emb - root, axis=-1)  # (n, L)
    levels_thr = np.linspace(radii.min(), radii.max(), steps)
    masks = [radii <= t for t in levels_thr]
    sims_all = image_emb @ text_emb.reshape(n * levels, dim).T  # same products as the implementation
    precisions, recalls = [], []
    for i in range(len(image_emb)):
        sims = sims_all[i].reshape(n, levels)
        preds = []
        for mask in masks:
            idx = int(np.argmax(sims[mask]))  # first maximum in row-major order, like torch.argmax
            t = texts[mask][idx]
            if not preds or preds[-1] != t:
                preds.append(t)
        gts = [list(texts[j]) for j in range(n) if image_of_row[j] == i]
        s_preds, s_gts = set(preds), {t for g in gts for t in g}
        precisions.append(len(s_preds & s_gts) / max(1, len(s_preds)))
        recalls.append(sum(any(g[lvl] in s_preds for g in gts) for lvl in range(levels)) / levels)
    ranks = np.argsort(radii, axis=1, kind="stable")
    corr = np.mean([kendalltau(r, np.arange(1, levels + 1)).statistic for r in ranks])
    return {"precision": np.mean(precisions), "recall": np.mean(recalls), "d_corr": corr}


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def random_case(rng, n=30, m=7, d=16):
    image_of_row = np.concatenate([np.arange(m), rng.integers(0, m, n - m)])
    texts = np.array([[f"r{r} l{lvl}" for lvl in range(4)] for r in range(n)], dtype=object)
    return texts, unit(rng.normal(size=(n, 4, d))), unit(rng.normal(size=(m, d))), image_of_row, unit(rng.normal(size=d))


def tie_case(rng, n=40, m=6, d=8):
    """Few distinct vectors and few distinct strings: equal radii, equal similarities, texts shared across rows."""
    pool = rng.integers(-1, 2, size=(5, d)).astype(float)
    pool[np.linalg.norm(pool, axis=1) == 0] = 1.0
    pool = unit(pool)
    text_emb = pool[rng.integers(0, len(pool), size=(n, 4))]
    image_emb = pool[rng.integers(0, len(pool), size=m)]
    words = np.array(["dog", "a dog", "a dog on grass", "cat", "a cat", "two cats"], dtype=object)
    texts = words[rng.integers(0, len(words), size=(n, 4))]
    image_of_row = np.concatenate([np.arange(m), rng.integers(0, m, n - m)])
    return texts, text_emb, image_emb, image_of_row, pool[0]


def assert_close(got, want):
    for key in ("precision", "recall", "d_corr"):
        assert got[key] == pytest.approx(want[key], abs=1e-9), key


@pytest.mark.parametrize("seed", range(6))
def test_matches_oracle_on_random_data(seed):
    rng = np.random.default_rng(seed)
    case = random_case(rng, n=int(rng.integers(8, 60)), m=int(rng.integers(1, 9)))
    steps = int(rng.choice([2, 7, 50]))
    assert_close(re_metrics(*case, steps=steps), oracle(*case, steps=steps))


@pytest.mark.parametrize("seed", range(8))
def test_matches_oracle_on_tie_heavy_data(seed):
    rng = np.random.default_rng(100 + seed)
    case = tie_case(rng)
    assert_close(re_metrics(*case, steps=20), oracle(*case, steps=20))


def test_matches_oracle_when_blocks_split_images(monkeypatch):
    from hierarcaps.eval import radial

    monkeypatch.setattr(radial, "CHUNK_ELEMENTS", 1)  # one image per similarity block
    case = random_case(np.random.default_rng(7), n=25, m=5)
    assert_close(re_metrics(*case, steps=13), oracle(*case, steps=13))


def test_curves_end_at_the_metrics_and_recall_grows():
    case = random_case(np.random.default_rng(3), n=40, m=8)
    got = re_metrics(*case, steps=30, return_curves=True)
    curves = got["curves"]
    assert curves.thresholds.shape == curves.precision.shape == curves.recall.shape == (30,)
    assert curves.precision[-1] == pytest.approx(got["precision"])
    assert curves.recall[-1] == pytest.approx(got["recall"])
    assert np.all(np.diff(curves.recall) >= 0)


def test_hand_checked_perfect_hierarchy():
    """One image, radii growing with the level, and the image most similar to ever more specific texts."""
    root = np.array([1.0, 0.0, 0.0])
    angles = np.array([0.3, 0.6, 0.9, 1.2])  # radius grows with the angle from the root
    text_emb = np.stack([np.cos(angles), np.sin(angles), np.zeros(4)], axis=1)[None]
    image = np.array([[np.cos(1.3), np.sin(1.3), 0.0]])  # nearest to the most specific text
    texts = np.array([["a", "b", "c", "d"]], dtype=object)
    got = re_metrics(texts, text_emb, image, np.array([0]), root, steps=50)
    # fine thresholds reach each radius in turn: predictions a, b, c, d -> all correct, all levels found
    assert got == {"d_corr": pytest.approx(1.0), "precision": pytest.approx(1.0), "recall": pytest.approx(1.0)}


def test_hand_checked_reversed_radii_and_wrong_image():
    root = np.array([1.0, 0.0, 0.0])
    angles = np.array([1.2, 0.9, 0.6, 0.3])  # generic text farthest from the root: tau = -1
    own = np.stack([np.cos(angles), np.sin(angles), np.zeros(4)], axis=1)
    other = np.stack([np.cos(angles), np.zeros(4), np.sin(angles)], axis=1)
    text_emb = np.stack([own, other])
    texts = np.array([["a", "b", "c", "d"], ["w", "x", "y", "z"]], dtype=object)
    # image 0 owns row 0 but looks like row 1 (the z axis): every prediction is row 1's text
    images = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    got = re_metrics(texts, text_emb, images, np.array([0, 1]), root, steps=50)
    assert got["d_corr"] == pytest.approx(-1.0)
    # image 0: predictions z, y, x, w -> none correct; image 1: all four correct
    assert got["precision"] == pytest.approx(0.5)
    assert got["recall"] == pytest.approx(0.5)


def test_same_text_in_two_rows_is_one_prediction():
    root = np.array([1.0, 0.0])
    r0 = unit(np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]]))
    r1 = r0.copy()
    texts = np.array([["dog", "a dog", "x", "y"], ["dog", "a dog", "p", "q"]], dtype=object)
    text_emb = np.stack([r0, r1])
    image = unit(np.array([[0.9, 0.1]]))  # always picks "dog" (row 0's and row 1's tier 1)
    got = re_metrics(texts, text_emb, image, np.array([0, 0]), root, steps=5)
    assert_close(got, oracle(texts, text_emb, image, np.array([0, 0]), root, steps=5))
    assert got["precision"] == pytest.approx(1.0)  # one distinct prediction, and it is a gt text
    assert got["recall"] == pytest.approx(0.25)  # only level 1 found


def test_text_only_gives_d_corr():
    case = random_case(np.random.default_rng(1))
    got = re_metrics(case[0], case[1], None, case[3], case[4])
    assert set(got) == {"d_corr"}
    assert got["d_corr"] == pytest.approx(d_corr(case[1], case[4]))


def test_image_without_rows_is_an_error():
    texts, text_emb, image_emb, _, root = random_case(np.random.default_rng(2), n=10, m=3)
    with pytest.raises(ValueError, match="no hierarchy row"):
        re_metrics(texts, text_emb, image_emb, np.zeros(10, dtype=int), root)


def test_vectorised_is_fast_on_a_test_set_sized_problem():
    import time

    rng = np.random.default_rng(0)
    case = random_case(rng, n=1000, m=1000, d=64)
    started = time.perf_counter()
    re_metrics(*case, steps=50)
    assert time.perf_counter() - started < 20  # the plain loop takes minutes here
