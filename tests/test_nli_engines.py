"""NLI back-ends: label mapping of real MNLI-style classifiers, dispatch by config, pair deduplication, heuristic."""

from __future__ import annotations

import itertools
import sys
import types

import numpy as np
import pytest
import torch

from hierarcaps.config import NLIConfig
from hierarcaps.engines.base import CONTRADICTION, ENTAILMENT, NEUTRAL
from hierarcaps.engines.classify import NLILabelError, label_columns
from hierarcaps.engines.nli import (
    CrossEncoderNLI,
    LexicalNLI,
    coverage,
    lexical_probs,
    load_nli,
    nli_model_id,
    score_pairs,
)

WORDS = "[PAD] [UNK] [CLS] [SEP] [MASK] a the dog cat on grass brown red car man is sitting in park".split()
# A non-standard order, with mixed case, as real checkpoints have (deberta-large-mnli: CONTRADICTION, NEUTRAL, ENTAILMENT).
ID2LABEL = {0: "NEUTRAL", 1: "contradiction", 2: "Entailment"}
PAIRS = [
    ("a dog on grass", "a dog"),
    ("a brown dog is sitting in the park", "a cat"),
    ("man", "a red car on the grass in the park"),
    ("the cat", "the cat"),
    ("a red car", "a brown car is in the park"),
]


def _tiny_classifier(tmp_path, arch: str, id2label=ID2LABEL):
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BertTokenizer,
        DebertaV2Config,
        DebertaV2ForSequenceClassification,
    )

    config_cls, model_cls = {
        "bert": (BertConfig, BertForSequenceClassification),
        "deberta-v2": (DebertaV2Config, DebertaV2ForSequenceClassification),
    }[arch]
    config = config_cls(
        vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, num_labels=len(id2label), id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    torch.manual_seed(0)
    model = model_cls(config)
    path = tmp_path / arch
    model.save_pretrained(path)
    BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(path)
    return model, path


def test_label_columns_follow_names_not_positions():
    assert label_columns({0: "entailment", 1: "neutral", 2: "contradiction"}) == [0, 1, 2]
    # microsoft/deberta-large-mnli's order
    assert label_columns({0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}) == [2, 1, 0]
    assert label_columns({"0": "NEUTRAL", "1": "contradiction", "2": "Entailment"}) == [2, 0, 1]


@pytest.mark.parametrize(
    "id2label",
    [{0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}, {0: "not_entailment", 1: "entailment"}, {0: "entailment", 1: "neutral", 2: "neutral"}],
)
def test_label_columns_refuse_non_nli_heads(id2label):
    with pytest.raises(NLILabelError, match="my/model.*not an NLI head"):
        label_columns(id2label, "my/model")


@pytest.mark.parametrize("arch", ["bert", "deberta-v2"])
def test_cross_encoder_maps_columns_by_label_name(tmp_path, arch):
    model, path = _tiny_classifier(tmp_path, arch)
    nli = load_nli(NLIConfig(backend="cross-encoder", model=str(path), batch_size=2, device="cpu"))
    assert isinstance(nli, CrossEncoderNLI) and nli.model_id == str(path)
    probs = nli.predict(PAIRS)
    assert probs.shape == (len(PAIRS), 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # The model's own softmax, one pair at a time (no padding, no sorting), reordered by label name by hand.
    tokenizer = nli.tokenizer
    for k, (premise, hypothesis) in enumerate(PAIRS):
        with torch.no_grad():
            logits = model.eval()(**tokenizer(premise, hypothesis, return_tensors="pt")).logits[0]
        native = torch.softmax(logits, -1).numpy()
        expected = np.empty(3)
        expected[ENTAILMENT], expected[NEUTRAL], expected[CONTRADICTION] = native[2], native[0], native[1]
        np.testing.assert_allclose(probs[k], expected, atol=1e-5)


def test_cross_encoder_temperature_file_calibrates_and_changes_the_fingerprint(tmp_path):
    from hierarcaps.engines.nli import nli_model_id

    model, path = _tiny_classifier(tmp_path, "bert")
    cfg = NLIConfig(backend="cross-encoder", model=str(path), batch_size=2, device="cpu")
    plain_id, plain = nli_model_id(cfg), load_nli(cfg).predict(PAIRS)
    (path / "temperature.json").write_text('{"temperature": 2.5}')
    nli = load_nli(cfg)
    assert nli.temperature == 2.5 and "temperature 2.5" in nli.description
    assert nli_model_id(cfg) != plain_id  # finished filter shards are redone after a recalibration
    got = nli.predict(PAIRS)
    for k, (premise, hypothesis) in enumerate(PAIRS):
        with torch.no_grad():
            logits = model.eval()(**nli.tokenizer(premise, hypothesis, return_tensors="pt")).logits[0]
        native = torch.softmax(logits / 2.5, -1).numpy()
        np.testing.assert_allclose(got[k], [native[2], native[0], native[1]], atol=1e-5)
    assert np.abs(got - 1 / 3).max() < np.abs(plain - 1 / 3).max()  # a higher temperature flattens


def test_cross_encoder_with_non_nli_labels_fails_naming_the_model(tmp_path):
    _, path = _tiny_classifier(tmp_path, "bert", {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})
    with pytest.raises(NLILabelError, match=str(path)):
        load_nli(NLIConfig(backend="cross-encoder", model=str(path), device="cpu"))


def test_cross_encoder_that_cannot_load_says_which(tmp_path):
    with pytest.raises(RuntimeError, match="cannot load the NLI cross-encoder.*nowhere"):
        load_nli(NLIConfig(backend="cross-encoder", model=str(tmp_path / "nowhere"), device="cpu"))


def test_lexical_backend_is_named_as_a_heuristic():
    nli = load_nli(NLIConfig(backend="lexical"))
    assert isinstance(nli, LexicalNLI)
    assert nli.model_id == nli_model_id(NLIConfig(backend="lexical")) == "lexical-minilm-heuristic"
    assert "not an mnli model" in nli.description.lower() and "contradiction" in nli.description


def test_minilm_head_is_loaded_lazily_from_its_module(monkeypatch):
    seen = {}

    def load_minilm_head(cfg):
        seen["cfg"] = cfg
        return "the-head"

    fake = types.ModuleType("hierarcaps.engines.minilm_head")
    fake.load_minilm_head = load_minilm_head
    monkeypatch.setitem(sys.modules, "hierarcaps.engines.minilm_head", fake)
    cfg = NLIConfig(backend="minilm-head")
    assert load_nli(cfg) == "the-head" and seen["cfg"] is cfg


def test_minilm_head_id_follows_its_card(tmp_path):
    cfg = NLIConfig(backend="minilm-head", model=str(tmp_path))
    missing = nli_model_id(cfg)
    (tmp_path / "card.json").write_text('{"weights_sha256": "aaa", "thresholds": {"entail": 0.4}}')
    first = nli_model_id(cfg)
    (tmp_path / "card.json").write_text('{"weights_sha256": "bbb", "thresholds": {"entail": 0.4}}')
    assert len({missing, first, nli_model_id(cfg)}) == 3 and first.startswith("minilm-head:")


class CountingNLI:
    model_id, description = "counting", "test double"

    def __init__(self):
        self.calls: list[list[tuple[str, str]]] = []

    def predict(self, pairs):
        self.calls.append(list(pairs))
        return np.array([[0.7, 0.2, 0.1] if p == h else [0.1, 0.2, 0.7] for p, h in pairs])


def test_score_pairs_predicts_each_distinct_pair_once():
    nli = CountingNLI()
    pairs = [("a", "b"), ("a", "a"), ("a", "b"), ("b", "a"), ("a", "a")]
    scores = score_pairs(nli, pairs)
    assert len(nli.calls) == 1 and sorted(nli.calls[0]) == [("a", "a"), ("a", "b"), ("b", "a")]
    assert set(scores) == set(pairs)
    np.testing.assert_allclose(scores[("a", "a")], [0.7, 0.2, 0.1])
    assert score_pairs(nli, []) == {} and len(nli.calls) == 1


def test_score_pairs_rejects_wrong_shapes():
    class Broken(CountingNLI):
        def predict(self, pairs):
            return np.zeros((len(pairs), 2))

    with pytest.raises(ValueError, match="shape"):
        score_pairs(Broken(), [("a", "b")])


def test_coverage_ignores_function_words_and_plurals():
    assert coverage("two brown dogs sitting on the grass", "a dog on grass") == 1.0
    assert coverage("a dog on grass", "two brown dogs sitting on the grass") == pytest.approx(2 / 5)
    assert coverage("a cat", "a dog") == 0.0


def test_lexical_probs_are_probabilities():
    grid = np.linspace(0, 1, 5)
    for cover_hyp, cover_prem, words, cosine in itertools.product(grid, grid, [1, 2, 5], np.linspace(-1, 1, 9)):
        probs = np.array(lexical_probs(cover_hyp, cover_prem, words, cosine))
        assert (probs >= 0).all() and probs.sum() == pytest.approx(1.0), (cover_hyp, cover_prem, words, cosine)


def test_lexical_probs_order_the_evidence():
    entail, _, contradict = lexical_probs(1.0, 1.0, 4, 0.95)  # the same text
    assert entail == pytest.approx(1.0) and contradict == 0.0
    entail, _, contradict = lexical_probs(0.0, 0.0, 4, 0.05)  # unrelated
    assert contradict == pytest.approx(1.0) and entail == 0.0
    # specific -> generic (premise covers the hypothesis) entails more than generic -> specific
    assert lexical_probs(1.0, 0.5, 3, 0.7)[0] > lexical_probs(0.5, 1.0, 5, 0.7)[0]
    # both texts have words of their own ("a black Honda motorcycle parked in front of a garage" / "a motorcycle
    # is parked in front of a house in a remote part of town": 3 of 7 and 3 of 6 content words shared) reads as
    # contradiction; a hypothesis that only adds words ("a dog on grass" / "a brown dog on grass") does not
    swap, added = lexical_probs(3 / 7, 3 / 6, 7, 0.63), lexical_probs(2 / 3, 1.0, 3, 0.63)
    assert swap[2] > 0.5 and added[2] < 0.1


@pytest.mark.slow
def test_lexical_backend_on_real_pairs():
    nli = load_nli(NLIConfig(backend="lexical", device="cpu"))
    pairs = [
        ("A black dog sleeping on a red couch.", "A black dog sleeping on a red couch."),
        ("a black dog sleeping on a red couch", "a dog on a couch"),
        ("a dog on a couch", "a black dog sleeping on a red couch"),
        ("a plate of pasta on a wooden table", "a giraffe walking through tall grass"),
    ]
    probs = nli.predict(pairs)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert probs[0, ENTAILMENT] > 0.95
    assert probs[1, ENTAILMENT] > probs[2, ENTAILMENT]  # containment is directional, similarity is not
    assert probs[3, CONTRADICTION] > 0.5 > probs[3, ENTAILMENT]
