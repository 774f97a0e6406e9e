"""The `minilm-nli` judge: its training data (human files, in-domain pairs), reproducible training into an artifact
the filter loads, the shipped artifact, and `hierarcaps nli` scoring files."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from hierarcaps import schema
from hierarcaps.cli import app
from hierarcaps.config import NLIConfig
from hierarcaps.engines.artifacts import MINILM_NLI
from hierarcaps.engines.base import CONTRADICTION, ENTAILMENT, NEUTRAL, NLI_LABELS
from hierarcaps.engines.nli import load_nli
from hierarcaps.nli import domain, human
from hierarcaps.nli.pairs import Hierarchy, split_of
from hierarcaps.score import PairsError, read_pairs

SHIPPED = (MINILM_NLI / "model.safetensors").is_file()


def write_tsv(path: Path, rows: list[tuple], header=("premise", "hypothesis", "label")) -> Path:
    with gzip.open(path, "wt", newline="") as f:
        f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(str(x) for x in row) + "\n")
    return path


def nli_folder(root: Path, n: int = 12) -> Path:
    """Every training file (n rows each, every label) plus an esnli_test whose premises must never be read."""
    root.mkdir(parents=True, exist_ok=True)
    for name in human.TRAINING_FILES:
        stem = name.removesuffix(".tsv.gz")
        if stem == "joci":
            rows = [(f"{stem} premise {k}", f"{stem} hypothesis {k}", k % 6) for k in range(n)]
        else:
            rows = [(f"{stem} premise {k}", f"{stem} hypothesis {k}", NLI_LABELS[k % 3]) for k in range(n)]
        write_tsv(root / name, rows)
    write_tsv(root / human.EVAL_FILE, [(f"secret premise {k}", "secret hypothesis", "neutral") for k in range(5)])
    return root


def test_human_pairs_never_include_the_evaluation_file_and_split_by_premise(tmp_path):
    data = human.load_training(nli_folder(tmp_path / "nli", n=60))
    texts = {p.premise for part in data.values() for p in part}
    assert not any(t.startswith("secret") for t in texts)
    assert not {p.premise for p in data["train"]} & {p.premise for p in data["dev"]}
    assert 0 < len(data["dev"]) < len(data["train"])
    joci = [p for part in data.values() for p in part if p.source == "joci"]
    # 1 = impossible -> contradiction; 2, 3 -> neutral; 0 (unlabelled), 4, 5 (likely) left out
    assert {int(p.premise.split()[-1]) % 6 for p in joci} == {1, 2, 3}
    assert all(p.label == (CONTRADICTION if int(p.premise.split()[-1]) % 6 == 1 else NEUTRAL) for p in joci)
    assert [p.premise for p in human.load_eval(tmp_path / "nli")][0] == "secret premise 0"


def test_a_bad_human_file_names_the_file_and_row(tmp_path):
    folder = nli_folder(tmp_path / "nli")
    write_tsv(folder / "monli.tsv.gz", [("a", "b", "entailment"), ("c", "d", "maybe")])
    with pytest.raises(ValueError, match=r"monli.tsv.gz: data row 1: label 'maybe'"):
        human.load_training(folder)
    (folder / "med.tsv.gz").unlink()
    with pytest.raises(FileNotFoundError, match="med.tsv.gz"):
        human.load_training(folder)


def h(row: int, image: str, positive: str, negative: str) -> Hierarchy:
    return Hierarchy(row, image, tuple(positive.split(" => ")), tuple(negative.split(" => ")))


def test_in_domain_pairs_never_call_two_descriptions_of_one_picture_a_contradiction():
    rows = [
        h(0, "img1", "animal => dog => brown dog on a beach => A brown dog runs on the beach.", "plant => cat => brown cat on a beach => A brown dog sleeps on the beach."),
        h(1, "img1", "animal => puppy => puppy on the sand => A puppy playing on the sand near the sea.", "object => kitten => kitten on the sand => A puppy sleeping on the sand near the sea."),
        h(2, "img2", "animal => cat => cat on a sofa => A black cat sitting on a sofa.", "plant => dog => dog on a sofa => A black cat standing on a sofa."),
        h(3, "img3", "animal => horse => horse in a field => A horse eats grass in a field.", "object => cow => cow in a field => A horse runs in a field."),
        h(4, "img4", "animal => cat => cat on a bed => A white cat lying on a bed.", "plant => dog => dog on a bed => A white cat sitting on a bed."),
    ]
    pairs = domain.build_domain_pairs(rows, seed=0)
    by_source = {}
    for p in pairs:
        by_source.setdefault(p.source, []).append(p)
    same = {(p.premise, p.hypothesis) for p in by_source["same_image"]}
    assert ("A brown dog runs on the beach.", "A puppy playing on the sand near the sea.") in same
    assert all(p.label == NEUTRAL for p in by_source["same_image"])
    assert ("A brown dog runs on the beach.", "dog", ENTAILMENT) in {(p.premise, p.hypothesis, p.label) for p in pairs}
    # a swap's new word is new to the caption, so it really contradicts it
    for p in pairs:
        if p.source.startswith("swap_"):
            assert p.label == CONTRADICTION and p.hypothesis.lower() not in p.premise.lower()
    # a member entails its category, and the category does not entail the member
    hyper = {(p.premise, p.hypothesis, p.label) for p in by_source["hypernym"]}
    assert hyper and all((b, a, NEUTRAL) in hyper for a, b, label in hyper if label == ENTAILMENT)
    assert any(label == ENTAILMENT and "animal" in b and "animal" not in a for a, b, label in hyper)
    assert by_source["swap_place_phrase"]  # "horse in a field" -> "horse in a kitchen", with the caption as premise too
    # dog and puppy describe the same image: never siblings; cat / horse (other images, same tier 1) are
    assert "puppy" not in domain.siblings(rows, min_count=1).get("dog", [])
    assert "cat" in domain.siblings(rows, min_count=1)["dog"]


def test_one_thing_swapped_for_another_of_its_kind_is_a_contradiction_unless_the_caption_has_both():
    rows = [h(0, "img1", "furniture => table => table with food => A wooden table with food on it.",
              "animal => dog => table with toys => A wooden table with toys on it."),
            h(1, "img2", "furniture => table => table with chairs => A table with a bench and a chair beside it.",
              "animal => dog => table with toys => A table with toys."),]
    objects = [p for p in domain.build_domain_pairs(rows, seed=0) if p.source == "swap_object"]
    first = [p for p in objects if p.premise in {"table", "table with food", "A wooden table with food on it."}]
    assert first and all(p.label == CONTRADICTION for p in first)
    new = {p.hypothesis.split()[0] for p in first}
    assert new and new <= {"bed", "couch", "chair", "bench", "desk"}
    # "bench" and "chair" are in the second caption: swapping "table" for them would not contradict it
    assert not any(p.hypothesis.split()[0] in {"bench", "chair"} for p in objects if p not in first)


def test_a_tier_1_negative_that_is_the_category_of_the_positive_is_not_a_contradiction():
    rows = [h(0, "img1", "man => man on a bench => man on a bench in a park => A man sits on a bench in a park.",
              "person => woman on a bench => man on a bench at home => A man stands on a bench in a park."),
            h(1, "img2", "sport => tennis => tennis player => A tennis player hits a ball.",
              "person => golf => golf player => A tennis player misses a ball.")]
    contradictions = {(p.premise, p.hypothesis) for p in domain.build_domain_pairs(rows, seed=0) if p.source == "neg_tier1"}
    assert contradictions == {("sport", "person")}  # "man" vs "person" is left out: a man is a person


def test_one_word_is_a_tier_1_contradiction_a_limited_number_of_times_and_tier_1_links_are_their_own_kind(monkeypatch):
    monkeypatch.setattr(domain, "NEG_TIER1_PER_TEXT", 2)
    rows = [h(k, f"img{k}", f"{first} => bus => bus on a road => A bus number {k} on a road.",
              f"water => car => bus in a park => A bus number {k} in a park.") for k, first in enumerate(["vehicle", "transport", "machine", "road"])]
    rows.append(h(9, "img9", "person => woman => woman on a bench => A woman on a bench.",
                  "animal => man => woman in a park => A woman in a park."))
    pairs = domain.build_domain_pairs(rows, seed=0)
    assert [p.hypothesis for p in pairs if p.source == "neg_tier1"] == ["water", "water", "animal"]
    links = {(p.premise, p.hypothesis, p.label) for p in pairs if p.source == "tier_link"}
    assert ("bus", "vehicle", ENTAILMENT) in links and ("woman", "person", ENTAILMENT) in links
    assert not any(p.source == "tier_entail" and (p.premise, p.hypothesis) == ("bus", "vehicle") for p in pairs)


def hierarchies_csv(path: Path) -> Path:
    """Rows of many images, so both the train and the dev split hold some."""
    templates = [("dog", "brown dog", "brown dog on a beach", "A brown dog runs on the beach."),
                 ("cat", "black cat", "black cat on a sofa", "A black cat is sitting on a sofa."),
                 ("horse", "white horse", "white horse in a field", "Two white horses stand in a field.")]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["positive", "negative", "image_url"])
        k = 0
        while True:
            url = f"http://images.example/{k}.jpg"
            t = templates[k % 3]
            writer.writerow([schema.join_tiers(["animal", *t[1:]]), schema.join_tiers(["plant", "red bird", "red bird on a tree", "A red bird sits on the tree."]), url])
            k += 1
            if k >= 60 and split_of(url) == "dev" and any(split_of(f"http://images.example/{j}.jpg") == "dev" for j in range(k - 1)):
                return path


def test_training_is_reproducible_and_the_artifact_is_a_filter_backend(tmp_path):
    from hierarcaps.nli.cross_train import train_minilm_nli

    nli_dir, data = nli_folder(tmp_path / "nli", n=30), hierarchies_csv(tmp_path / "h.csv")
    first = train_minilm_nli(tmp_path / "a", nli_dir, data, max_steps=2, batch_size=8, threads=1)
    second = train_minilm_nli(tmp_path / "b", nli_dir, data, max_steps=2, batch_size=8, threads=1)
    weights = [hashlib.sha256((tmp_path / d / "model.safetensors").read_bytes()).hexdigest() for d in "ab"]
    assert weights[0] == weights[1] == first["weights_sha256"] == second["weights_sha256"]
    card = json.loads((tmp_path / "a" / "card.json").read_text())
    assert set(human.TRAINING_FILES) < set(card["data"]["files"]) and human.EVAL_FILE not in card["data"]["files"]
    for name in human.TRAINING_FILES:
        entry = card["data"]["files"][name]
        assert entry["sha256"] == hashlib.sha256((nli_dir / name).read_bytes()).hexdigest() and entry["licence"]
    assert card["temperature"] > 0 and 0 < card["thresholds"]["entail"] < 1 and 0 < card["thresholds"]["contradict"] < 1
    assert "esnli_dev" in card["dev"]["by_source"] and card["training"]["steps"] == 2
    model = load_nli(NLIConfig(backend="minilm-nli", model=str(tmp_path / "a"), device="cpu"))
    probs = model.predict([("A dog runs.", "An animal moves."), ("A cat sleeps.", "A dog barks.")])
    assert probs.shape == (2, 3) and np.allclose(probs.sum(1), 1)
    assert model.thresholds["entail"] == card["thresholds"]["entail"]


def test_a_missing_artifact_says_how_to_train_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-nli"):
        load_nli(NLIConfig(backend="minilm-nli", model=str(tmp_path), device="cpu"))


@pytest.mark.skipif(not SHIPPED, reason="no shipped minilm-nli artifact")
def test_the_shipped_judge_tells_contradiction_from_compatible(shared_data):
    card = json.loads((MINILM_NLI / "card.json").read_text())
    assert (MINILM_NLI / "model.safetensors").stat().st_size <= 25 * 1024 * 1024
    for name, entry in card["data"]["files"].items():
        path = shared_data / "nli" / name if name in human.TRAINING_FILES else shared_data / "hierarcaps_coco_auto" / name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], name
    model = load_nli(NLIConfig(backend="minilm-nli", device="cpu"))
    probs = model.predict([
        ("A brown dog runs on the beach at sunset.", "brown dog on a beach"),  # a tier it entails
        ("brown dog", "black dog"),  # another colour
        ("plane flying", "plane flying over a city"),  # a refinement: compatible
        ("A man is sleeping on a couch.", "A man is running a marathon."),
    ])
    assert list(probs.argmax(1)) == [ENTAILMENT, CONTRADICTION, NEUTRAL, CONTRADICTION]


@pytest.fixture(scope="module")
def scored_by_cli(tmp_path_factory):
    """The same pairs as CSV, TSV, JSONL and parquet, scored by the CLI with the offline default."""
    if not SHIPPED:
        pytest.skip("no shipped minilm-nli artifact")
    root = tmp_path_factory.mktemp("pairs")
    records = [{"id": 1, "premise": "A woman rides a red bicycle.", "hypothesis": "A person rides a bicycle."},
               {"id": 2, "premise": "A woman rides a red bicycle.", "hypothesis": "A woman rides a blue bicycle."},
               {"id": 3, "premise": "A woman rides a red bicycle.", "hypothesis": "A person rides a bicycle."}]
    files = {
        "pairs.csv": lambda p: p.write_text("id,premise,hypothesis\n" + "".join(f'{r["id"]},{r["premise"]},{r["hypothesis"]}\n' for r in records)),
        "pairs.tsv": lambda p: p.write_text("id\tpremise\thypothesis\n" + "".join(f'{r["id"]}\t{r["premise"]}\t{r["hypothesis"]}\n' for r in records)),
        "pairs.jsonl": lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in records)),
        "pairs.parquet": lambda p: pq.write_table(pa.Table.from_pylist(records), p),
    }
    out = {}
    for name, write in files.items():
        write(root / name)
        result = CliRunner().invoke(app, ["nli", "--input", str(root / name), "--out", str(root / f"{name}.scored.parquet")])
        assert result.exit_code == 0, result.output
        out[name] = pq.read_table(root / f"{name}.scored.parquet").to_pylist()
    return out


def test_nli_command_scores_every_format_in_input_order(scored_by_cli):
    for name, rows in scored_by_cli.items():
        assert [str(r["id"]) for r in rows] == ["1", "2", "3"], name
        for r in rows:
            assert sum(r[label] for label in NLI_LABELS) == pytest.approx(1.0)
            assert r["label"] == max(NLI_LABELS, key=lambda label: r[label])
        assert rows[0]["entailment"] == rows[2]["entailment"]  # the same pair scores the same
        assert rows[1]["label"] == "contradiction" and rows[0]["label"] == "entailment"
    first = scored_by_cli["pairs.csv"]
    assert all(np.isclose(a["contradiction"], b["contradiction"]) for a, b in zip(first, scored_by_cli["pairs.parquet"]))


@pytest.mark.parametrize("content, message", [
    ("premise,text\na,b\n", "missing column.*hypothesis"),
    ("premise,hypothesis\na,b\nc,  \n", "row 2: hypothesis is empty"),
    ("premise,hypothesis,label\na,b,x\n", "label.*would be overwritten"),
])
def test_nli_command_refuses_bad_input_and_leaves_no_output(tmp_path, content, message):
    source, out = tmp_path / "pairs.csv", tmp_path / "scored.parquet"
    source.write_text(content)
    with pytest.raises(PairsError, match=message):
        read_pairs(source)
    result = CliRunner().invoke(app, ["nli", "--input", str(source), "--out", str(out)])
    assert result.exit_code == 1 and "pairs.csv" in result.output
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def test_calibration_undoes_a_label_prior_the_training_mix_taught():
    from hierarcaps.engines.classify import softmax
    from hierarcaps.nli.cross_train import fit_scaling

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 3000)
    clean = 3.0 * np.eye(3)[labels] + rng.normal(0, 1.5, (3000, 3))
    skewed = 2.0 * (clean + np.array([0.0, -1.0, 0.5]))  # overconfident, neutral under-called, contradiction over-called
    temperature, bias = fit_scaling(skewed, labels)
    # the fitted offsets are the skew itself, on the scale of the tempered logits
    assert bias[0] == 0.0 and np.allclose(bias, -2.0 / temperature * np.array([0.0, -1.0, 0.5]), atol=0.15)

    def neutral_recall(probs):
        return (probs.argmax(1)[labels == NEUTRAL] == NEUTRAL).mean()

    assert neutral_recall(softmax(skewed, temperature, bias)) > neutral_recall(softmax(skewed, temperature)) + 0.1
