"""Retrieval metrics on hand-built cases, the JSD experiment on a constructed case, run_retrieval end to end with
stand-in tokens, and the image token encoders (tiny open_clip; EfficientNet-Lite0 on real images, slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from hierarcaps.config import ValidateConfig
from hierarcaps.eval import retrieval
from hierarcaps.eval.image_tokens import ImageTokens, encode_image_tokens
from hierarcaps.eval.retrieval import (
    content_words,
    f1_at_k,
    jsd_matrix,
    mean_average_precision,
    pearson_upper,
    pr_curve,
    run_retrieval,
)


def test_map_on_a_hand_built_ranking():
    labels = ["cat", "cat", "dog", "dog"]
    sim = np.array([
        [9, 1, 3, 2],  # query 0 ranks 2, 3, 1: its only relevant image is third -> AP 1/3
        [5, 9, 4, 3],  # query 1 ranks 0 first -> AP 1
        [1, 2, 9, 0],  # query 2 ranks 1, 0, 3 -> AP 1/3
        [0, 1, 2, 9],  # query 3 ranks 2 first -> AP 1
    ], dtype=float)
    value, queries = mean_average_precision(sim, labels)
    assert queries == 4
    assert value == pytest.approx((1 / 3 + 1 + 1 / 3 + 1) / 4)


def test_map_skips_queries_without_relevant_images_and_counts_them():
    sim = np.array([[0, 2, 1], [2, 0, 1], [1, 1, 0]], dtype=float)
    value, queries = mean_average_precision(sim, ["a", "a", "b"])
    assert queries == 2 and value == 1.0


def test_pr_curve_averages_precision_and_recall_at_each_cutoff():
    sim = np.array([[0, 3, 2, 1], [3, 0, 1, 2], [2, 1, 0, 3], [1, 2, 3, 0]], dtype=float)
    precision, recall = pr_curve(sim, ["a", "a", "a", "b"])
    # at k=1 queries 0 and 1 retrieve a relevant image, query 2 does not; query 3 (label b) has none to find
    np.testing.assert_allclose(precision[0], (1 + 1 + 0) / 3)
    np.testing.assert_allclose(recall[-1], 1.0)
    assert np.all(np.diff(recall) >= 0)


def test_content_words_drop_stop_words_and_fold_plurals():
    assert content_words("Two dogs on the beach.") == {"dog", "beach"}
    assert content_words("a glass of water") == {"glass", "water"}


def test_f1_at_k_scores_object_overlap_of_the_retrieved_images():
    objects = [{"dog", "beach"}, {"dog"}, {"cat", "sofa"}]
    sim = np.array([[0, 2, 1], [2, 0, 1], [1, 2, 0]], dtype=float)
    got = f1_at_k(sim, objects, ks=(1, 2))
    # top-1: 0 -> 1 (F1 2*1/3), 1 -> 0 (2/3), 2 -> 1 (0)
    assert got["f1@1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    # top-2 adds 0 -> 2 (0), 1 -> 2 (0), 2 -> 0 (0)
    assert got["f1@2"] == pytest.approx((2 / 3 + 2 / 3) / 6)


def test_jsd_matrix_matches_scipy():
    probs = np.random.default_rng(0).dirichlet(np.ones(7), size=5)
    probs[0, :3] = 0  # zeros must not produce NaNs
    probs[0] /= probs[0].sum()
    expected = np.array([[jensenshannon(p, q, base=2) ** 2 for q in probs] for p in probs])
    np.testing.assert_allclose(jsd_matrix(probs, chunk=2), expected, atol=1e-12)


def grouped_case(seed: int = 0, per_group: int = 4, t: int = 9, d: int = 6):
    """Two groups: each image is its group's token set shuffled (plus a little noise), and the classifier puts
    its mass on the group's class. Same-group images are similar only up to a permutation of their tokens."""
    rng = np.random.default_rng(seed)
    bases = [np.abs(rng.standard_normal((t, d))) for _ in range(2)]
    tokens, probs, labels = [], [], []
    for group, base in enumerate(bases):
        for _ in range(per_group):
            tokens.append(base[rng.permutation(t)] + 0.05 * np.abs(rng.standard_normal((t, d))))
            p = np.full(3, 0.05)
            p[group] = 0.9
            probs.append(rng.dirichlet(200 * p))
            labels.append(f"group {group}")
    return np.array(tokens, dtype=np.float32), np.array(probs), labels


def test_jsd_correlation_is_negative_and_stronger_for_semantic_than_plain_on_shuffled_sets():
    from hierarcaps.eval.srsm import plain_rsm, semantic_rsm

    tokens, probs, _ = grouped_case()
    jsd = jsd_matrix(probs)
    semantic = pearson_upper(semantic_rsm(tokens, "exact", "cosine"), jsd)
    plain = pearson_upper(plain_rsm(tokens, "cosine"), jsd)
    assert semantic < -0.8
    assert semantic < plain


def test_run_retrieval_end_to_end_with_stand_in_tokens(monkeypatch, tmp_path):
    tokens, probs, labels = grouped_case(per_group=5)
    images = [tmp_path / f"{n}.jpg" for n in range(len(tokens))]
    hierarchies = [[label, f"{label} outdoors", "x", "y"] for label in labels]
    seen = {}

    def fake_encode(paths, encoder, device="auto", **_):
        seen["paths"], seen["encoder"] = list(paths), encoder
        return ImageTokens(tokens[: len(paths)], probs[: len(paths)], encoder, 0.0, 0)

    monkeypatch.setattr(retrieval, "encode_image_tokens", fake_encode)
    cfg = ValidateConfig(srsm_methods=["greedy", "batch-optimal"], srsm_kernels=["cosine", "rbf"], max_images=8)
    result = run_retrieval(images, hierarchies, cfg, "cpu")
    arrays = result.pop("arrays")
    json.dumps(result)  # the report part is JSON-able
    assert seen["paths"] == images[:8] and seen["encoder"] == "efficientnet-lite0"
    assert set(result["semantic"]) == {"exact", "greedy", "batch-optimal"}  # exact: the quality reference
    assert result["semantic"]["exact"]["matching_quality"]["ratio"] == 1.0
    assert result["semantic"]["greedy"]["matching_quality"]["ratio"] <= 1.0
    exact, plain = result["semantic"]["exact"]["kernels"]["cosine"], result["plain"]["kernels"]["cosine"]
    assert exact["map_tier1"] == 1.0 and exact["map_tier1"] > plain["map_tier1"]
    assert exact["jsd_pearson"] < 0
    assert set(arrays["rsm"]) == {f"semantic-{m}-{k}" for m in ("exact", "greedy", "batch-optimal")
                                  for k in ("cosine", "rbf")} | {"plain-cosine", "plain-rbf"}
    assert arrays["rsm"]["plain-rbf"].shape == (8, 8)
    precision, recall = arrays["pr_curves"]["semantic-exact-cosine"]
    assert len(precision) == len(recall) == 7
    assert arrays["tier1"] == [label.lower() for label in labels[:8]]


def test_run_retrieval_rejects_bad_input(tmp_path):
    cfg = ValidateConfig()
    with pytest.raises(ValueError, match="2 images but 1 hierarchies"):
        run_retrieval([tmp_path / "a.jpg", tmp_path / "b.jpg"], [["x", "y"]], cfg, "cpu")
    with pytest.raises(ValueError, match="hierarchy 1 .* 1 tier"):
        run_retrieval([tmp_path / "a.jpg", tmp_path / "b.jpg"], [["x", "y"], ["z"]], cfg, "cpu")
    with pytest.raises(ValueError, match="unknown semantic RSM method"):
        run_retrieval([tmp_path / "a.jpg"] * 2, [["x", "y"]] * 2, ValidateConfig(srsm_methods=["magic"]), "cpu")


def write_images(folder: Path, count: int) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for n in range(count):
        path = folder / f"img{n}.png"
        Image.fromarray(rng.integers(0, 255, (40 + 10 * n, 50, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_clip_patch_tokens_from_a_tiny_open_clip_config(tmp_path):
    import open_clip

    config = {"embed_dim": 16,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 24, "patch_size": 8, "head_width": 12},
              "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1}}
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "tiny-vit-srsm.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "cfg")
    paths = write_images(tmp_path, 2)
    got = encode_image_tokens(paths, "clip:tiny-vit-srsm", device="cpu", cache_dir=tmp_path / "cache")
    assert got.tokens.shape == (2, 16, 24)  # (32 / 8)^2 patches of the tower's width
    assert got.probs is None and got.cached == 0
    # random weights differ on every load: their tokens must not be served from the cache
    again = encode_image_tokens(paths, "clip:tiny-vit-srsm", device="cpu", cache_dir=tmp_path / "cache")
    assert again.cached == 0 and not (tmp_path / "cache").exists()


def test_unknown_encoder_and_missing_image_are_named(tmp_path):
    paths = write_images(tmp_path, 1)
    with pytest.raises(ValueError, match="unknown image encoder 'resnet'"):
        encode_image_tokens(paths, "resnet", cache_dir=False)
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        encode_image_tokens([tmp_path / "nope.jpg"], cache_dir=False)


@pytest.mark.slow
def test_efficientnet_lite0_tokens_of_real_images(test_set, tmp_path):
    paths = sorted((test_set / "images").glob("*.jpg"))[:3]
    got = encode_image_tokens(paths, "efficientnet-lite0", device="cpu", cache_dir=tmp_path)
    assert got.tokens.shape == (3, 49, 1280) and got.tokens.dtype == np.float32
    assert got.tokens.min() >= 0 and got.tokens.max() <= 6  # the head's ReLU6
    assert got.probs.shape == (3, 1000)
    np.testing.assert_allclose(got.probs.sum(axis=1), 1.0, atol=1e-5)
    assert len({int(p.argmax()) for p in got.probs}) > 1  # different photos, not a constant output
    cached = encode_image_tokens(paths, "efficientnet-lite0", device="cpu", cache_dir=tmp_path)
    assert cached.cached == 3
    np.testing.assert_array_equal(cached.tokens, got.tokens)
    np.testing.assert_array_equal(cached.probs, got.probs)
