"""Encoders and the validate report: a tiny random open_clip model, the packaged MiniLM, the shared test set."""

from __future__ import annotations

import csv
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from hierarcaps import shards
from hierarcaps.config import load_profile
from hierarcaps.eval.encoders import ALIGNED, OpenClipEncoder, load_encoder, root
from hierarcaps.eval.report import tier_order
from hierarcaps.eval.validate import load_data, validate

TINY = "hc-test-tiny-clip"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    import open_clip

    folder = tmp_path_factory.mktemp("open_clip_configs")
    (folder / f"{TINY}.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(folder)
    return TINY


@pytest.fixture
def small_set(test_set, tmp_path) -> Path:
    """20 rows of the shared test CSV over 10 images (rows 10-19 reuse images 0-9), images linked beside it."""
    source = test_set
    with open(source / "hierarcaps_test.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))[:20]
    for i in range(10, 20):
        rows[i]["image_url"] = rows[i - 10]["image_url"]
    folder = tmp_path / "small"
    folder.mkdir()
    with open(folder / "small.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "captions", "image_url"])
        writer.writeheader()
        writer.writerows(rows)
    (folder / "images").symlink_to(source / "images")
    return folder


def fake_retrieval(monkeypatch, calls: list) -> None:
    def run_retrieval(images, hierarchies, profile_cfg, device):
        calls.append((images, hierarchies))
        n = len(images)
        rng = np.random.default_rng(0)
        # the shape hierarcaps.eval.retrieval returns, with made-up numbers
        return {
            "encoder": "fake",
            "semantic": {"exact": {"seconds": 0.1, "matching_quality": {"ratio": 1.0},
                                   "kernels": {"inner": {"map_tier1": 0.5, "f1@10": 0.25}}}},
            "plain": {"seconds": 0.01, "kernels": {"inner": {"map_tier1": np.float64(0.4), "f1@10": 0.2}}},
            "arrays": {
                "rsm": {"plain-inner": rng.random((n, n)), "semantic-exact-inner": rng.random((n, n))},
                "pr_curves": {"plain-inner": (np.linspace(1, 0.2, 9), np.linspace(0, 1, 9))},
                "tier1": [h[0] for h in hierarchies],
            },
        }

    module = types.ModuleType("hierarcaps.eval.retrieval")
    module.run_retrieval = run_retrieval
    monkeypatch.setitem(sys.modules, "hierarcaps.eval.retrieval", module)


def assert_png(path: Path) -> None:
    assert path.exists(), path
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 2000, path


# ---------------------------------------------------------------- encoders


def test_tiny_open_clip_is_aligned_and_normalised(tiny_clip, test_set):
    enc = load_encoder(tiny_clip, "cpu")
    assert isinstance(enc, OpenClipEncoder)
    assert enc.capabilities == ALIGNED == {"precision", "recall", "d_corr"}
    texts = enc.encode_text(["a dog", "a dog on grass", ""])
    images = enc.encode_images(sorted((test_set / "images").glob("*.jpg"))[:3])
    assert texts.shape == (3, 32) and images.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(root(enc), texts[2], atol=1e-6)  # the root is the empty string's embedding


def test_unknown_open_clip_name_is_a_clear_error():
    with pytest.raises(ValueError, match="not an open_clip model"):
        load_encoder("open_clip:no-such-arch")


@pytest.mark.slow
def test_minilm_is_text_only():
    enc = load_encoder("minilm", "cpu")
    assert enc.capabilities == {"d_corr"}
    assert enc.encode_images([Path("unused.jpg")]) is None
    emb = enc.encode_text(["a dog", "a puppy", "a tax spreadsheet"])
    assert emb.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2  # real weights: related captions are closer


# ---------------------------------------------------------------- data


def test_load_data_groups_rows_by_image(small_set):
    data = load_data(small_set)
    assert data.texts.shape == (20, 4) and len(data.images) == 10
    assert data.image_of_row.tolist() == list(range(10)) * 2
    assert all(p.name.startswith("COCO_val2014_") and p.exists() for p in data.images)
    limited = load_data(small_set, max_images=3)
    assert len(limited.images) == 3 and limited.image_of_row.tolist() == [0, 1, 2, 0, 1, 2]


def test_missing_data_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        validate(tmp_path / "no-such-folder", tmp_path / "out")


def test_bad_csv_row_is_named(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,captions,image_url\n0,a => b => c => d,\n1,only => three => tiers,\n")
    with pytest.raises(ValueError, match=r"bad\.csv: data row 1"):
        load_data(bad)


def test_missing_image_file_is_named(small_set):
    (small_set / "images").unlink()
    (small_set / "images").mkdir()
    with pytest.raises(ValueError, match="name no image file"):
        load_data(small_set)


# ---------------------------------------------------------------- the report


def test_validate_writes_report_and_plots(tiny_clip, small_set, tmp_path, monkeypatch):
    calls: list = []
    fake_retrieval(monkeypatch, calls)
    out = tmp_path / "report"
    result = validate(small_set, out, models=[tiny_clip], device="cpu", max_images=6)

    saved = json.loads((out / "report.json").read_text())
    assert saved == json.loads(json.dumps(saved))  # plain JSON, numpy values converted
    assert {"data", "models", "retrieval", "plots", "profile", "device", "seconds"} <= set(saved)
    assert saved["data"]["rows"] == 12 and saved["data"]["images"] == 6
    entry = saved["models"][tiny_clip]
    assert set(entry["metrics"]) == {"precision", "recall", "d_corr", "tier4_to_tier3_top1"} and entry["absent"] == {}
    assert all(0 <= v <= 1 for k, v in entry["metrics"].items() if k != "d_corr")
    assert -1 <= entry["metrics"]["d_corr"] <= 1

    images, hierarchies = calls[0]
    assert len(images) == 6 and all(len(h) == 4 for h in hierarchies)
    assert saved["retrieval"]["plain"]["kernels"]["inner"]["map_tier1"] == 0.4 and "arrays" not in saved["retrieval"]
    assert set(saved["plots"]) == {"radius_by_tier.png", "re_pr_thresholds.png", "rsm_heatmaps.png", "retrieval_pr.png"}
    for name in saved["plots"]:
        assert_png(out / name)
    md = (out / "report.md").read_text()
    assert tiny_clip in md and "random weights" in md and "Alper" in md
    assert "| semantic exact | inner | 0.5000 | 0.2500 | 1.0000 | 0.1000 |" in md  # one row per method and kernel
    assert "| plain | inner | 0.4000 | 0.2000 |" in md
    assert result["models"][tiny_clip]["metrics"] == entry["metrics"]


def test_validate_without_retrieval_module_says_so(tiny_clip, small_set, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "hierarcaps.eval.retrieval", None)  # import fails
    result = validate(small_set, tmp_path / "r", models=[tiny_clip], device="cpu", max_images=3)
    assert "not available" in result["retrieval"]["skipped"]
    assert "Skipped" in (tmp_path / "r" / "report.md").read_text()


def test_failing_retrieval_keeps_the_re_results(tiny_clip, small_set, tmp_path, monkeypatch):
    def run_retrieval(images, hierarchies, profile_cfg, device):
        raise RuntimeError("image encoder weights missing")

    module = types.ModuleType("hierarcaps.eval.retrieval")
    module.run_retrieval = run_retrieval
    monkeypatch.setitem(sys.modules, "hierarcaps.eval.retrieval", module)
    result = validate(small_set, tmp_path / "r", models=[tiny_clip], device="cpu", max_images=3)
    assert "weights missing" in result["retrieval"]["skipped"]
    assert set(result["models"][tiny_clip]["metrics"]) == {"precision", "recall", "d_corr", "tier4_to_tier3_top1"}


def test_validate_on_a_run_dir_gives_d_corr_only(tiny_clip, tmp_path):
    import pyarrow as pa

    from hierarcaps import schema

    rows = [{"id": f"h{i}", "caption": f"a dog number {i} on grass", "image_url": None,
             "positive": ["animal", "dog", f"dog {i}", f"a dog number {i} on grass"], "negative": None,
             "source": "generate", "model": "t5", "min_entail": 0.9, "min_contradict": 0.9} for i in range(8)]
    stage = tmp_path / "run" / "filter"
    info = shards.write_table(pa.Table.from_pylist(rows, schema=schema.FILTERED), stage / "part-00000.parquet")
    shards.write_manifest(stage, {"fingerprint": "x", "shards": [{**info, "kind": "part"}]})

    # as the Prefect flow calls it: a resolved profile, the report inside the run directory
    result = validate(tmp_path / "run", profile=load_profile("offline"), models=[tiny_clip], device="cpu")
    entry = result["models"][tiny_clip]
    assert result["data"] == {"source": str(tmp_path / "run"), "kind": "run", "rows": 8, "images": 0, "max_images": None}
    assert set(entry["metrics"]) == {"d_corr", "tier4_to_tier3_top1"}
    assert entry["absent"] == {"precision": "the data has no images", "recall": "the data has no images"}
    assert result["retrieval"] == {"skipped": "the data has no images"}
    assert_png(tmp_path / "run" / "validate" / "radius_by_tier.png")
    assert result["markdown"] == (tmp_path / "run" / "validate" / "report.md").read_text()


def test_out_is_required_unless_data_is_a_run(small_set):
    with pytest.raises(ValueError, match="output folder"):
        validate(small_set)


def test_cli_validate(tiny_clip, small_set, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from hierarcaps.cli import app

    monkeypatch.setitem(sys.modules, "hierarcaps.eval.retrieval", None)
    runner = CliRunner()
    ok = runner.invoke(app, ["validate", "--data", str(small_set), "--out", str(tmp_path / "o"), "--model", tiny_clip,
                             "--max-images", "2", "--device", "cpu"])
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "o" / "report.json").read_text())["data"]["images"] == 2
    bad = runner.invoke(app, ["validate", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")])
    assert bad.exit_code == 1 and "does not exist" in bad.output


def test_tier_order_groups_classes_largest_first():
    labels = ["cat", "dog", "cat", "bird", "dog", "cat"]
    order = tier_order(labels)
    assert [labels[i] for i in order] == ["cat", "cat", "cat", "dog", "dog", "bird"]


def test_heatmap_of_a_large_set_shows_the_shared_classes():
    from hierarcaps.eval.report import heatmap_rows

    labels = [f"single {i}" for i in range(500)] + ["dog"] * 5 + ["cat"] * 3
    rows, caption = heatmap_rows(labels, len(labels), limit=300)
    assert [labels[i] for i in rows] == ["dog"] * 5 + ["cat"] * 3  # singletons show no block: left out
    assert "8 of 508" in caption
    small, _ = heatmap_rows(["b", "a", "b"], 3)
    assert sorted(small.tolist()) == [0, 1, 2]
