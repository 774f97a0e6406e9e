"""Radial Embedding fine-tuning: the losses on hand-made geometry, the pullback at frozen weights, and tiny end-to-end
runs (a random tiny BERT sentence-transformer and a random tiny open_clip model) through finetune -> validate."""

from __future__ import annotations

import csv
import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hierarcaps import pipeline
from hierarcaps.config import FinetuneConfig, load_profile
from hierarcaps.eval.encoders import ALIGNED, TunedEncoder, load_encoder
from hierarcaps.eval.text_metrics import embed_rows, parent_top1, text_scores
from hierarcaps.finetune.data import load_training_data
from hierarcaps.finetune.objective import angles, exterior_angle, pullback, re_losses
from hierarcaps.finetune.towers import TextTower
from hierarcaps.finetune.train import step_losses
from hierarcaps.nli.pairs import split_of

TINY_CLIP = "hc-test-tiny-clip-ft"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


# ---------------------------------------------------------------- the objective on hand-made geometry


def _t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_a_chain_straight_away_from_the_root_has_zero_exterior_angle_and_a_way_back_the_largest():
    root = _t(0.0, 0.0)
    a, further, back, sideways = _t(1.0, 0.0), _t(2.0, 0.0), _t(0.5, 0.0), _t(1.0, 1.0)
    assert float(exterior_angle(a, further, root)) == pytest.approx(0.0, abs=1e-6)
    assert float(exterior_angle(a, back, root)) == pytest.approx(math.pi, abs=1e-6)
    assert float(exterior_angle(a, sideways, root)) == pytest.approx(math.pi / 2, abs=1e-6)
    # an off-origin root: only a - r matters
    assert float(exterior_angle(_t(1.0, 1.0), _t(1.0, 3.0), _t(1.0, 0.0))) == pytest.approx(0.0, abs=1e-6)


def _chain(batch: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positive tiers 1..4 at radii 1..4 along x; negative tier i at radius i along y (a turn of 135 degrees from
    positive tier i, which sits on x at radius i) except tier 1, which points back to the root (radius 0.5 on x)."""
    root = _t(0.0, 0.0)
    pos = torch.stack([_t(*[[float(i + 1), 0.0]] * batch) for i in range(4)])  # (4, B, 2)
    neg = torch.stack([_t(*[[0.5, 0.0]] * batch)] + [_t(*[[0.0, float(i + 1)]] * batch) for i in range(1, 4)])
    return pos, neg, root


def test_p_and_n_for_both_negative_pairings():
    pos, neg, root = _chain()
    p, n = angles(pos, neg, root, "same")
    np.testing.assert_allclose(p.numpy(), 0.0, atol=1e-6)  # the positive chain runs straight out
    # same: tier 1's negative points back to the root (pi); tiers 2, 3: from (i, 0) to (0, i) turns 3pi/4
    np.testing.assert_allclose(-n[:, 0].numpy(), [math.pi, 3 * math.pi / 4, 3 * math.pi / 4], atol=1e-6)
    _, n_next = angles(pos, neg, root, "next")
    # next: from (i, 0) to (0, i + 1): the angle between (1, 0) and (-i, i + 1)
    expected = [math.atan2(i + 1, -i) for i in (1, 2, 3)]
    np.testing.assert_allclose(-n_next[:, 0].numpy(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="negative pairing"):
        angles(pos, neg, root, "previous")


def test_losses_combine_with_their_weights_and_the_hard_term_picks_the_worst_pairs():
    pos, neg, root = _chain(batch=2)
    pos[2, 1] = _t(2.0, 1.0)[0]  # row 1: tier 3 turns 45 degrees off the line -> P[1,1] = pi/4, P[2,1] > 0 too
    emb = torch.nn.functional.normalize(torch.randn(16, 2, dtype=torch.float64), dim=-1)
    frozen = emb.clone()
    out = re_losses(pos, neg, root, emb, frozen, "same", lambda_p=10.0, lambda_e=2.0, lambda_m=3.0)
    p, n = angles(pos, neg, root, "same")
    assert float(out.entailment) == pytest.approx(float(p.mean() + n.mean()))
    flat = (p + n).reshape(-1)
    worst_p, worst_n = int(p.reshape(-1).argmax()), int(n.reshape(-1).argmax())
    assert float(out.hard) == pytest.approx(float(flat[worst_p] + flat[worst_n]))
    assert float(p.reshape(-1)[worst_p]) > 0  # the bent row, not a straight one
    assert float(out.pullback) == pytest.approx(0.0, abs=1e-12)
    assert float(out.total) == pytest.approx(2.0 * float(out.entailment) + 3.0 * float(out.hard))
    far = re_losses(pos, neg, root, emb, -frozen, "same")  # opposite embeddings: cosine -1 -> pullback 1
    assert float(far.pullback) == pytest.approx(1.0)
    assert float(far.total) == pytest.approx(10.0 + float(far.entailment) + float(far.hard))


def test_pullback_is_half_one_minus_the_mean_cosine():
    a = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    b = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), dim=-1)
    assert float(pullback(a, b)) == pytest.approx((1 - (1 + math.sqrt(0.5)) / 2) / 2)


def test_text_scores_on_hand_made_embeddings():
    root = np.zeros(3)
    # two rows; radii grow 1..4 except row 1 swaps tiers 3 and 4; directions make each tier 4 nearest its own tier 3
    texts = np.array([["a", "b", "c", "d"], ["e", "f", "g", "h"]], dtype=object)
    emb = np.zeros((2, 4, 3))
    for t, r in enumerate([1, 2, 3, 4]):
        emb[0, t] = [r, 0.1 * r, 0]
        emb[1, t] = [0, 0.1 * r, r]
    emb[1, 2, 2], emb[1, 3, 2] = 4.0, 3.0
    scores = text_scores(texts, emb, root, frozen_emb=emb)
    assert scores["d_corr_by_tier_pair"]["3-4"] == 0.0 and scores["d_corr_by_tier_pair"]["1-2"] == 1.0
    assert scores["d_corr"] == pytest.approx(np.mean(list(scores["d_corr_by_tier_pair"].values())))
    assert scores["d_corr"] == pytest.approx((1.0 + 2 / 3) / 2)  # row 1 has one inversion of six pairs
    assert scores["tier4_to_tier3_top1"] == 1.0 and scores["cosine_to_frozen"] == pytest.approx(np.mean(np.sum(emb * emb, -1)))
    swapped = emb.copy()
    swapped[:, 3] = emb[::-1, 3]  # each tier 4 now points at the other row's tier 3
    assert parent_top1(texts, swapped) == 0.0


# ---------------------------------------------------------------- tiny models and data


@pytest.fixture(scope="module")
def tiny_st(tmp_path_factory) -> str:
    """A randomly initialised 2-layer BERT sentence-transformer (mean pooling + normalise) with MiniLM's vocabulary."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    from hierarcaps.engines.embed import model_path

    root = tmp_path_factory.mktemp("tiny_st")
    tokenizer = AutoTokenizer.from_pretrained(model_path("minilm"))
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=128))
    bert.save_pretrained(root / "hf")
    tokenizer.save_pretrained(root / "hf")
    word = Transformer(str(root / "hf"), max_seq_length=64)
    model = SentenceTransformer(modules=[word, Pooling(32, "mean"), Normalize()], device="cpu")
    model.save(str(root / "st"))
    return str(root / "st")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    import open_clip

    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("open_clip_configs")
    (folder / f"{TINY_CLIP}.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(folder)
    # random weights saved once, so the base model loads the same every time (as pretrained weights do)
    weights = folder / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in open_clip.create_model(TINY_CLIP).state_dict().items()}, weights)
    return f"{TINY_CLIP}:{weights}"


@pytest.fixture(scope="module")
def small_data(shared_data_dir, tmp_path_factory) -> Path:
    """The first 60 rows of the development share, as a .csv.gz (they cover train and dev images)."""
    with gzip.open(shared_data_dir / "hierarcaps_coco_auto" / "hierarcaps_coco_auto.csv.gz", "rt", newline="") as fh:
        rows = [r for _, r in zip(range(60), csv.DictReader(fh))]
    path = tmp_path_factory.mktemp("ftdata") / "small.csv.gz"
    with gzip.open(path, "wt", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["positive", "negative", "image_url"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def shared_data_dir() -> Path:
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not shared.exists():
        pytest.skip("../shared/data is not beside this checkout")
    return shared


def _overrides(model: str, **extra) -> dict:
    base = {"finetune.model": model, "finetune.batch_size": 4, "finetune.max_steps": 6, "finetune.checkpoint_every": 2,
            "finetune.log_every": 2, "finetune.threads": 1, "finetune.device": "cpu", "finetune.learning_rate": 1e-3}
    return {**base, **{f"finetune.{k}": v for k, v in extra.items()}}


def test_pullback_is_zero_at_the_frozen_weights(tiny_st, small_data):
    tower = TextTower(tiny_st, "cpu")
    data = load_training_data(small_data)
    losses = step_losses(tower, data, data.rows("train")[:4], FinetuneConfig(model=tiny_st))
    values = losses.floats()
    assert values["pullback"] == pytest.approx(0.0, abs=1e-6)
    assert math.isfinite(values["total"]) and values["positive_angle"] > 0


def test_training_data_splits_by_image_and_names_bad_rows(small_data, tmp_path):
    data = load_training_data(small_data)
    assert len(data.positive) == 60 and data.kind == "csv" and len(data.sha256) == 64
    with gzip.open(small_data, "rt", newline="") as fh:
        urls = [r["image_url"] for r in csv.DictReader(fh)]
    assert data.split == [split_of(u) for u in urls]
    assert {"train", "dev"} <= set(data.split)
    bad = tmp_path / "bad.csv"
    bad.write_text("positive,negative,image_url\na => b => c => d,e => f => g => h,u1\na => b => c => d,,u2\n")
    with pytest.raises(ValueError, match=r"bad\.csv: data row 1: no negative"):
        load_training_data(bad)


def test_a_run_dir_and_its_release_give_the_same_training_rows(small_data, tmp_path):
    import pyarrow as pa

    from hierarcaps import release, schema, shards
    from hierarcaps.inputs import load_hierarchies

    table, _ = load_hierarchies(small_data)
    rows = [{**r, "min_entail": 0.9, "min_contradict": 0.9} for r in table.to_pylist()]
    stage = tmp_path / "run" / "filter"
    info = shards.write_table(pa.Table.from_pylist(rows, schema=schema.FILTERED), stage / "part-00000.parquet")
    shards.write_manifest(stage, {"schema_version": schema.SCHEMA_VERSION, "fingerprint": "x", "shards": [{**info, "kind": "part"}]})
    from_run = load_training_data(tmp_path / "run")
    release.publish(tmp_path / "run", tmp_path / "release")
    from_release = load_training_data(tmp_path / "release")
    from_csv = load_training_data(small_data)
    assert (from_run.kind, from_release.kind) == ("run", "release")
    assert from_run.positive == from_release.positive == from_csv.positive
    assert from_run.negative == from_release.negative == from_csv.negative and from_run.split == from_csv.split
    (tmp_path / "release" / "data" / "part-00000.parquet").write_bytes(b"damaged")
    with pytest.raises(Exception, match="manifest"):
        load_training_data(tmp_path / "release")


def test_train_layers_freezes_the_embeddings_and_early_blocks(tiny_st):
    tower = TextTower(tiny_st, "cpu", train_layers=1)
    assert not any("embeddings" in n or "layer.0." in n for n in tower.trainable)
    assert any("layer.1." in n for n in tower.trainable)


# ---------------------------------------------------------------- end to end


def test_finetune_resumes_exactly_after_a_kill_and_validate_shows_base_and_tuned(tiny_st, small_data, tmp_path):
    straight = pipeline.finetune(small_data, tmp_path / "straight", overrides=_overrides(tiny_st))
    assert (tmp_path / "straight" / "model.safetensors").is_file() and not (tmp_path / "straight" / "checkpoints").exists()
    assert straight["steps"]["total"] == 6 and straight["data"]["sha256"] == load_training_data(small_data).sha256
    profile_lambda_p = load_profile("offline", _overrides(tiny_st)).finetune.lambda_p  # the card records what ran
    assert straight["hyperparameters"]["lambda_p"] == profile_lambda_p and straight["losses"]["per_epoch"][0]["steps"] == 6
    assert [h["step"] for h in straight["losses"]["history"]] == [2, 4, 6]

    class Killed(Exception):
        pass

    def kill_at_5(name, done, total):
        if done == 5:
            raise Killed

    with pytest.raises(Killed):
        pipeline.finetune(small_data, tmp_path / "killed", overrides=_overrides(tiny_st), on_progress=kill_at_5)
    assert (tmp_path / "killed" / "checkpoints" / "step-00000004").is_dir() and not (tmp_path / "killed" / "card.json").exists()
    resumed = pipeline.finetune(small_data, tmp_path / "killed", overrides=_overrides(tiny_st))
    assert resumed["steps"]["resumed_from"] == [4] and resumed["steps"]["run_here"] == 2
    timing = resumed["timing_s"]
    assert timing["train"] > timing["train_here"], "the card's training time counts the steps run before the kill"
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(tmp_path / "killed" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    assert resumed["losses"] == straight["losses"]
    probe = ["a dog on the grass"]
    assert not np.allclose(load_encoder(str(tmp_path / "straight"), "cpu").encode_text(probe), load_encoder(tiny_st, "cpu").encode_text(probe))

    # a rerun is a no-op; other settings into the same folder are refused
    assert pipeline.finetune(small_data, tmp_path / "straight", overrides=_overrides(tiny_st))["weights_sha256"] == straight["weights_sha256"]
    with pytest.raises(ValueError, match="other data or settings"):
        pipeline.finetune(small_data, tmp_path / "straight", overrides=_overrides(tiny_st, lambda_p=1.0))

    # the saved folder loads as an encoder that reproduces the dev scores measured in the run
    tuned = load_encoder(str(tmp_path / "straight"), "cpu")
    assert isinstance(tuned, TunedEncoder) and tuned.describe()["tuned"]["base_model"] == tiny_st
    data = load_training_data(small_data)
    dev = np.array([data.positive[r] for r in data.rows("dev")], dtype=object)
    emb = embed_rows(dev, tuned.encode_text)
    scores = text_scores(dev, emb, tuned.encode_text([""])[0])
    assert scores["d_corr"] == pytest.approx(straight["dev"]["tuned"]["d_corr"], abs=1e-6)
    assert scores["tier4_to_tier3_top1"] == pytest.approx(straight["dev"]["tuned"]["tier4_to_tier3_top1"])

    from hierarcaps.eval.validate import validate

    out = tmp_path / "report"
    validate(small_data, out, models=[tiny_st, str(tmp_path / "straight")], device="cpu")
    report = json.loads((out / "report.json").read_text())
    assert set(report["models"]) == {tiny_st, str(tmp_path / "straight")}
    for label in report["models"]:
        assert isinstance(report["models"][label]["metrics"]["d_corr"], float)
        assert set(report["models"][label]["d_corr_by_tier_pair"]) == {"1-2", "1-3", "1-4", "2-3", "2-4", "3-4"}
    assert report["models"][tiny_st]["metrics"]["d_corr"] != report["models"][str(tmp_path / "straight")]["metrics"]["d_corr"]
    assert (out / "radius_by_tier.png").read_bytes().startswith(b"\x89PNG")
    assert "fine-tuned from" in (out / "report.md").read_text()


def test_open_clip_text_tower_is_trained_and_the_image_tower_left_alone(tiny_clip, small_data, tmp_path):
    card = pipeline.finetune(small_data, tmp_path / "clip", overrides=_overrides(tiny_clip, max_steps=2))
    assert card["model_kind"] == "open_clip"
    saved = load_file(tmp_path / "clip" / "model.safetensors")
    assert "text_projection" in saved and not any(k.startswith("visual.") or k == "logit_scale" for k in saved)
    tuned = load_encoder(str(tmp_path / "clip"), "cpu")
    assert tuned.capabilities == ALIGNED  # the untouched image tower is still aligned with the tuned text tower
    base = load_encoder(tiny_clip, "cpu")
    text = ["a dog on the grass"]
    assert not np.allclose(tuned.encode_text(text), base.encode_text(text))
    visual = {k: v for k, v in tuned.base.model.state_dict().items() if k.startswith("visual.")}
    assert all(torch.equal(v, base.model.state_dict()[k]) for k, v in visual.items())


def test_finetune_flow_calls_the_same_function_as_the_cli(monkeypatch, tmp_path):
    from prefect.flows import load_flow_from_entrypoint

    calls = []
    monkeypatch.setattr(pipeline, "finetune", lambda *a, **kw: calls.append((a, kw)) or {"base_model": "m", "steps": {"total": 1}, "losses": {"history": []}})
    flow = load_flow_from_entrypoint(str(Path(__file__).resolve().parents[1] / "flows" / "finetune.py:finetune"))
    assert flow.name == "finetune"
    flow.fn(data="d.csv", out=str(tmp_path / "m"), model="minilm", set=["finetune.max_steps=3"])
    (args, kwargs), = calls
    assert args == ("d.csv", str(tmp_path / "m")) and kwargs["model"] == "minilm"
    assert kwargs["overrides"] == {"finetune.max_steps": 3} and kwargs["profile"] == "offline"


def test_cli_finetune(tiny_st, small_data, tmp_path):
    from typer.testing import CliRunner

    from hierarcaps.cli import app

    sets = [f"--set={k}={v}" for k, v in _overrides(tiny_st, max_steps=2).items() if k != "finetune.model"]
    ok = CliRunner().invoke(app, ["finetune", "--data", str(small_data), "--out", str(tmp_path / "m"), "--model", tiny_st, *sets])
    assert ok.exit_code == 0, ok.output
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["base_model"] == tiny_st and card["steps"]["total"] == 2 and "dev d_corr" in ok.output
    bad = CliRunner().invoke(app, ["finetune", "--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "does not exist" in bad.output
