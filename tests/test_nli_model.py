"""The distilled `minilm-head` NLI stand-in (issue #7): pairs, split, training determinism, artifact round trip."""

from __future__ import annotations

import json

import csv
import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from hierarcaps.config import NLIConfig
from hierarcaps.engines.base import CONTRADICTION, ENTAILMENT, NEUTRAL
from hierarcaps import edits
from hierarcaps.nli import corrupt, pairs as P
from hierarcaps.nli.encode import EmbeddingCache
from hierarcaps.engines.artifacts import MINILM_NLI
from hierarcaps.engines.minilm_head import ARTIFACT_DIR, Head, MiniLMHeadNLI, load_artifact
from hierarcaps.nli.train import save_artifact

POS = ("animal", "dog", "a black dog on a bed", "A black dog sleeps on a neatly made bed.")
NEG = ("vehicle", "cat", "a black dog on a beach", "A black dog runs on the sand at the beach.")


class HashEncoder:
    """Deterministic fake sentence encoder (no model load): a unit vector seeded by the text's hash."""

    name, dim = "hash", 16

    def __init__(self) -> None:
        self.calls: list[int] = []

    def encode(self, texts):
        self.calls.append(len(texts))
        out = [np.random.default_rng(list(hashlib.sha256(t.encode()).digest()[:8])).normal(size=self.dim) for t in texts]
        out = np.array(out, dtype=np.float32).reshape(len(texts), self.dim)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def _card() -> dict:
    return {
        "architecture": {"dim": HashEncoder.dim, "hidden": [8], "dropout": 0.0},
        "temperature": 1.7,
        "thresholds": {"entail": 0.3, "contradict": 0.4, "joint": -0.5},
        "encoder": "hash",
    }


def _write_csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with (gzip.open(path, "wt", newline="") if path.suffix == ".gz" else open(path, "w", newline="")) as f:
        writer = csv.writer(f)
        writer.writerow(["positive", "negative", "image_url"])
        writer.writerows(rows)
    return path


def test_structural_pairs_follow_the_tier_structure():
    got = {(p.premise, p.hypothesis): (p.label, p.pair_type) for p in P.structural_pairs(P.Hierarchy(0, "u", POS, NEG))}
    for i in range(4):
        for j in range(i + 1, 4):
            assert got[(POS[j], POS[i])][0] == ENTAILMENT  # specific => generic
            assert got[(POS[i], POS[j])][0] == NEUTRAL  # generic does not entail specific
            assert got[(POS[j], NEG[i])][0] == CONTRADICTION  # a more specific positive contradicts negative i
        assert got[(POS[i], NEG[i])] == (CONTRADICTION, "pos_neg")
    for i in range(1, 4):
        assert got[(NEG[i], POS[i - 1])] == (ENTAILMENT, "neg_prev")
        assert got[(POS[i - 1], NEG[i])] == (NEUTRAL, "generic_neg")
    assert got[(POS[3], POS[2])][1] == "pos_adjacent" and got[(POS[3], POS[0])][1] == "pos_skip"
    assert all(P.PAIR_LABELS[t] == label for label, t in got.values())


def test_augmentations_change_one_word_with_the_right_label():
    h = P.Hierarchy(7, "u", POS, NEG)
    augmented = P.augmented_pairs(h, np.random.default_rng([0, 7]))
    colour = [p for p in augmented if p.pair_type == "aug_colour"]
    assert colour and all(p.label == CONTRADICTION for p in colour)
    changed = colour[0].hypothesis.split()
    original = next(t for t in POS if len(t.split()) == len(changed) and t != colour[0].hypothesis).split()
    diff = [(a, b) for a, b in zip(original, changed) if a != b]
    assert len(diff) == 1 and diff[0][1].lower() in edits.COLOURS
    assert all(P.PAIR_LABELS[p.pair_type] == p.label for p in augmented)
    assert augmented == P.augmented_pairs(h, np.random.default_rng([0, 7]))  # deterministic


def test_dense_augmentations_cover_every_tier_without_changing_the_first_draws():
    h = P.Hierarchy(7, "u", POS, NEG)  # tiers 3 and 4 hold "black"
    extra = P.extra_augmented_pairs(h, np.random.default_rng([0, 7, 2]))
    colour = [p for p in extra if p.pair_type == "aug_colour_all"]
    assert {p.premise for p in colour} == {POS[3]} and len({p.hypothesis for p in colour}) >= 2
    for pair in colour:  # one colour word differs from a real tier, and the label is contradiction
        tier = next(t for t in POS[2:] if len(t.split()) == len(pair.hypothesis.split()) and t != pair.hypothesis)
        diff = [(a, b) for a, b in zip(tier.split(), pair.hypothesis.split()) if a != b]
        assert len(diff) == 1 and diff[0][1].lower().strip(".") in edits.COLOURS and pair.label == CONTRADICTION
    drops = {(p.premise, p.hypothesis): p for p in extra if p.pair_type in ("aug_drop_all", "aug_drop_rev")}
    for (premise, hypothesis), pair in drops.items():
        if pair.pair_type == "aug_drop_all":  # specific => with a modifier dropped; the reverse is neutral
            assert pair.label == ENTAILMENT and premise in POS and len(hypothesis.split()) == len(premise.split()) - 1
            assert drops[(hypothesis, premise)].label == NEUTRAL
    # the dense pairs come on top: the one-tier augmentations of the same hierarchy are drawn as before
    pairs = P.build_pairs([h], seed=0)
    assert pairs[: len(P.structural_pairs(h))] == P.structural_pairs(h)
    assert [p for p in pairs if p.pair_type in ("aug_colour", "aug_drop")] == [
        p for p in P.augmented_pairs(h, np.random.default_rng([0, 7])) if p.pair_type in ("aug_colour", "aug_drop")]
    assert all(P.PAIR_LABELS[p.pair_type] == p.label for p in pairs)


def test_split_is_by_image_deterministic_and_stateless():
    urls = [f"http://x/{i}.jpg" for i in range(2000)]
    splits = [P.split_of(u) for u in urls]
    assert splits == [P.split_of(u) for u in reversed(urls)][::-1]
    shares = {s: splits.count(s) / len(urls) for s in P.SPLITS}
    assert 0.75 < shares["train"] < 0.85 and 0.07 < shares["dev"] < 0.13 and 0.07 < shares["eval"] < 0.13
    hs = [P.Hierarchy(i, urls[i // 3], POS, NEG) for i in range(300)]  # 3 rows per image
    by_split = P.split_hierarchies(hs)
    images = [{h.image_url for h in v} for v in by_split.values()]
    assert sum(len(v) for v in by_split.values()) == 300
    assert not (images[0] & images[1]) and not (images[0] & images[2]) and not (images[1] & images[2])


def test_cross_image_pairs_stay_within_the_given_split():
    hs = [P.Hierarchy(i, f"http://x/{i}.jpg", (f"thing{i}", f"kind{i}", f"a kind{i} here", f"A kind{i} here now."), NEG) for i in range(20)]
    cross = [p for p in P.build_pairs(hs, seed=0) if p.pair_type == "cross_image"]
    assert cross and all(p.label == NEUTRAL for p in cross)
    for p in cross:
        src = next(h for h in hs if p.premise in h.positive)
        assert p.hypothesis not in src.positive


def test_loader_drops_test_set_images_and_names_bad_rows(tmp_path, shared_data):
    test_url = next(iter(P.test_image_urls()))
    data = _write_csv(tmp_path / "d.csv.gz", [(" => ".join(POS), " => ".join(NEG), "http://x/1.jpg"), (" => ".join(POS), " => ".join(NEG), test_url)])
    assert [h.image_url for h in P.load_hierarchies(data)] == ["http://x/1.jpg"]
    bad = _write_csv(tmp_path / "bad.csv.gz", [(" => ".join(POS), "only => two", "http://x/1.jpg")])
    with pytest.raises(ValueError, match=r"bad\.csv\.gz: data row 0: column 'negative'"):
        P.load_hierarchies(bad)


def test_development_share_holds_no_test_images(shared_data):
    urls = {h.image_url for h in P.load_hierarchies(P.DEFAULT_DATA)}
    assert len(urls) > 2000 and not (urls & P.test_image_urls())


def test_nli_checks_match_the_filter_rules():
    from hierarcaps.judge import rule_pairs

    # the stand-in's thresholds were chosen before the filter added "the caption entails every tier" (issue #17);
    # its selection keeps the ten pairs so `train-nli --backend minilm-head` still reproduces its card
    ours = {(c.premise, c.hypothesis) for c in corrupt.nli_checks(list(POS), list(NEG))}
    assert ours == {(p, h) for rule, _, p, h in rule_pairs(list(POS), list(NEG)) if rule != "nli_caption_entails"}


def test_tier3_swap_breaks_only_the_caption_step():
    (case,) = [c for c in corrupt.build_cases([P.Hierarchy(0, "u", POS, NEG)], kinds=("tier3_swap",)) if c.kind == "tier3_swap"]
    assert case.positive[2] == NEG[2] and case.negative[2] == POS[2]
    assert corrupt.structural_failure(case) is None  # invisible to the structural checks


def test_choose_thresholds_keeps_the_originals():
    kinds = ["original"] * 10 + ["tier3_swap"] * 10
    scores = np.array([[0.9, 0.8, -0.2]] * 9 + [[0.35, 0.8, -0.6]] + [[0.2, 0.8, -0.9]] * 10)
    for joint in (False, True):
        chosen = corrupt.choose_thresholds(kinds, scores, np.ones(20, bool), min_kept=0.9, joint=joint)
        assert chosen["dev_originals_kept"] >= 0.9 and chosen["dev_semantic_rejected"] == 1.0
        if joint:
            assert -0.9 < chosen["joint"] <= -0.2 and chosen["entail"] == chosen["contradict"] == 0.0
        else:
            assert 0.2 < chosen["entail"] <= 0.9 and chosen["joint"] is None


def test_joint_rule_adds_up_the_evidence_of_all_pairs():
    # one bad pair among strong ones passes; several middling pairs fail, though each beats the weakest link
    rows = [corrupt.Case("original", 0, POS[3], POS, NEG), corrupt.Case("original", 1, POS[3], POS, NEG)]
    strong, one_bad = np.tile([0.95, 0.02, 0.03], (10, 1)), np.tile([0.95, 0.02, 0.03], (10, 1))
    one_bad[0] = [0.1, 0.8, 0.1]
    middling = np.tile([0.4, 0.2, 0.4], (10, 1))
    checks = corrupt.nli_checks(POS, NEG)
    for probs in (strong, one_bad, middling):  # contradiction checks need the contradiction column high
        for k, check in enumerate(checks):
            if check.expect == "contradict":
                probs[k] = probs[k][::-1]
    batches = iter([np.concatenate([one_bad, middling])])
    scores = corrupt.row_scores(rows, lambda pairs: next(batches))
    assert scores[0, 0] < scores[1, 0]  # the weakest link prefers the middling row ...
    assert scores[0, 2] > scores[1, 2] > np.log(0.1)  # ... the joint score the row with one bad pair
    keep = corrupt.accepted(scores, {"entail": 0.0, "contradict": 0.0, "joint": float(np.log(0.6))}, np.ones(2, bool))
    assert keep.tolist() == [True, False]


def test_embedding_cache_encodes_each_text_once_and_persists(tmp_path):
    enc = HashEncoder()
    cache = EmbeddingCache(enc, tmp_path)
    first = cache.encode(["b", "a", "b"])
    assert enc.calls == [2] and np.array_equal(first[0], first[2])
    again = EmbeddingCache(enc, tmp_path).encode(["a", "b"])
    assert enc.calls == [2] and np.array_equal(again, first[[1, 0]])
    assert list((tmp_path / "embeddings").glob("hash-*/chunk-*.safetensors"))


def test_protocol_and_save_load_round_trip(tmp_path):
    import torch

    torch.manual_seed(0)
    head = Head(HashEncoder.dim, [8], 0.0)
    model = MiniLMHeadNLI(head, _card(), cache=EmbeddingCache(HashEncoder()))
    pairs = [(POS[3], POS[2]), (POS[2], NEG[2]), (POS[0], POS[1]), (POS[3], POS[2])]
    probs = model.predict(pairs)
    assert probs.shape == (4, 3) and np.allclose(probs.sum(1), 1.0) and (probs >= 0).all()
    assert np.array_equal(probs[0], probs[3]) and model.predict([]).shape == (0, 3)
    assert "NOT an MNLI" in model.description and model.thresholds == {"entail": 0.3, "contradict": 0.4, "joint": -0.5}
    card = save_artifact(head, _card(), tmp_path / "art")
    loaded = load_artifact(tmp_path / "art", cache=EmbeddingCache(HashEncoder()))
    assert np.array_equal(loaded.predict(pairs), probs)
    assert loaded.model_id.endswith(card["weights_sha256"][:12])


def test_load_nli_returns_the_learned_model(tmp_path):
    from hierarcaps.engines.nli import load_nli

    save_artifact(Head(HashEncoder.dim, [8], 0.0), _card(), tmp_path / "art")
    model = load_nli(NLIConfig(backend="minilm-head", model=str(tmp_path / "art"), device="cpu"))
    assert isinstance(model, MiniLMHeadNLI) and model.thresholds["contradict"] == 0.4
    with pytest.raises(FileNotFoundError, match="train-nli"):
        load_nli(NLIConfig(backend="minilm-head", model=str(tmp_path / "missing")))


@pytest.mark.slow
def test_canonical_vectors_do_not_depend_on_batch_mates():
    from hierarcaps.engines.embed import load_encoder

    enc = load_encoder("minilm", "cpu")
    alone = enc.encode(["a cat eating a bird"])
    crowd = enc.encode(["two dogs"] * 7 + ["a cat eating a bird"] + ["a very long caption about a man riding a motorcycle"] * 40)
    assert np.array_equal(alone[0], crowd[7])
    from hierarcaps.engines.embed import load_sentence_model

    reference = load_sentence_model("minilm", "cpu").encode(["a cat eating a bird"], convert_to_numpy=True)
    assert np.abs(reference[0] - alone[0]).max() < 1e-5


@pytest.mark.slow
def test_training_is_deterministic_and_cache_independent(tmp_path, shared_data):
    from hierarcaps.nli.train import train_nli

    kwargs = dict(max_hierarchies=40, epochs=1, hidden=(16,), cache_dir=tmp_path / "cache")
    first = train_nli(out=tmp_path / "a", **kwargs)  # cold cache
    second = train_nli(out=tmp_path / "b", **kwargs)  # warm cache
    assert first["weights_sha256"] == second["weights_sha256"]
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert first["training_data"]["sha256"] == P.file_sha256(P.DEFAULT_DATA)
    assert set(first["dev_metrics"]["per_type"]) <= set(P.PAIR_TYPES) and first["split_rule"] == P.SPLIT_RULE
    other = train_nli(out=tmp_path / "c", seed=1, **kwargs)
    assert other["weights_sha256"] != first["weights_sha256"]


@pytest.mark.slow
@pytest.mark.skipif(not (ARTIFACT_DIR / "model.safetensors").exists(), reason="no shipped artifact")
def test_filter_uses_the_shipped_model_and_its_thresholds(tmp_path, shared_data):
    from hierarcaps.pipeline import filter_file

    rows = [h for h in P.load_hierarchies(P.DEFAULT_DATA, 30) if P.split_of(h.image_url) != "train"][:4]
    data = _write_csv(tmp_path / "in.csv", [(" => ".join(h.positive), " => ".join(h.negative), h.image_url) for h in rows])
    report = filter_file(data, tmp_path / "run", profile="offline", overrides={"filter.nli.backend": "minilm-head"})
    card = load_artifact(ARTIFACT_DIR).thresholds
    assert report["thresholds"] == card and "minilm-head" in report["nli_model"]
    default = filter_file(data, tmp_path / "default", profile="offline")  # the offline default judge: minilm-nli
    shipped = json.loads((MINILM_NLI / "card.json").read_text())["thresholds"]
    assert default["thresholds"] == shipped and "minilm-nli" in default["nli_model"]
