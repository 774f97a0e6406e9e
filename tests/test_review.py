"""The blind review kit: a sheet that hides the source, a key that maps every id, scores and agreement, refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hierarcaps import review, schema
from hierarcaps.cli import app
from hierarcaps.config import load_profile
from hierarcaps.pipeline import filter_file
from hierarcaps.review import ReviewError
from hierarcaps.stages.refilter import accepted_rows

ROOT = Path(__file__).resolve().parents[1]
ENTAIL, CONTRA = (0.9, 0.06, 0.04), (0.05, 0.15, 0.8)
RUN_TAGS = ["red", "blue", "green", "small", "big", "old", "young", "happy"]


class FakeNLI:
    """Entailment for every pair except those listed (a copy of tests/test_filter.py's double, without call records)."""

    model_id = "fake-nli"
    description = "test double"

    def __init__(self, special: dict):
        self.special = special

    def predict(self, pairs):
        return np.array([self.special.get(pair, ENTAIL) for pair in pairs], dtype=np.float32)


def hierarchy(tag: str, negative_place: str = "on the sand") -> tuple[list[str], list[str]]:
    positive = [f"{tag} animal", f"{tag} dog", f"{tag} brown dog", f"{tag} brown dog on the grass"]
    negative = [f"{tag} plant", f"{tag} cat", f"{tag} brown cat", f"{tag} brown cat {negative_place}"]
    return positive, negative


def write_csv(path: Path, rows, header=("positive", "negative", "image_url")) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for k, (pos, neg) in enumerate(rows):
            writer.writerow([schema.join_tiers(pos), schema.join_tiers(neg) or "", f"http://img/{k}.jpg"][: len(header)])
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real run folder: 8 hierarchies through the filter stage, all accepted by the fake NLI."""
    base = tmp_path_factory.mktemp("review-run")
    rows, special = [hierarchy(tag) for tag in RUN_TAGS], {}
    for pos, neg in rows:
        special.update({(p, n): CONTRA for p, n in zip(pos, neg)})
    run = base / "run"
    filter_file(write_csv(base / "in.csv", rows), run, load_profile("offline", {"input.rows_per_shard": 100}), nli=FakeNLI(special))
    assert accepted_rows(run).num_rows == len(RUN_TAGS)
    return run


@pytest.fixture(scope="module")
def compare_csv(tmp_path_factory) -> Path:
    """6 captions shared with the run (other negatives), 3 of its own, and 1 row without a negative (never drawn)."""
    base = tmp_path_factory.mktemp("review-compare")
    rows = [hierarchy(tag, "in the snow") for tag in RUN_TAGS[:6]] + [hierarchy(tag) for tag in ("tall", "wet", "dry")]
    rows.append((hierarchy("lone")[0], None))
    return write_csv(base / "original.csv", rows)


def read_kit(out: Path) -> tuple[list[dict], dict]:
    return json.loads((out / review.SHEET).read_text()), json.loads((out / review.KEY).read_text())


def test_sheet_hides_the_source_and_the_key_maps_every_id(tmp_path, run_dir, compare_csv):
    out = tmp_path / "kit"
    returned = review.sample(run_dir, out, n=4, compare=compare_csv, seed=1)
    sheet, key = read_kit(out)
    assert returned == key
    assert sorted(p.name for p in out.iterdir()) == sorted([review.SHEET, review.SHEET_MD, review.SHEET_CSV, review.BRIEF_FILE, review.KEY])
    assert len(sheet) == 8 and all(set(item) == {"id", "positive", "negative"} for item in sheet)
    ids = [item["id"] for item in sheet]
    assert len(set(ids)) == 8 and all(len(i) == 8 and int(i, 16) >= 0 for i in ids)
    for name in (review.SHEET, review.SHEET_MD, review.SHEET_CSV, review.BRIEF_FILE):  # what reviewers get
        text = (out / name).read_text()
        assert str(run_dir) not in text and "original.csv" not in text and "compare" not in text
    assert set(key["rows"]) == set(ids)
    sources = [key["rows"][i]["source"] for i in ids]
    assert sources.count("run") == 4 and sources.count("compare") == 4
    # like for like: the 6 shared captions are enough, so both sources show the same 4 captions
    assert key["rule"] == "shared captions" and key["shared_captions"] == 6 and key["shared_used"] == 4
    captions = {s: sorted(key["rows"][i]["caption"] for i in ids if key["rows"][i]["source"] == s) for s in ("run", "compare")}
    assert captions["run"] == captions["compare"]
    # the key gives each row's identity in its source
    run_rows = accepted_rows(run_dir).to_pylist()
    csv_rows = list(csv.DictReader(compare_csv.read_text().splitlines()))
    for item in sheet:
        entry = key["rows"][item["id"]]
        if entry["source"] == "run":
            row = run_rows[entry["index"]]
            assert row["id"] == entry["row_id"] and schema.join_tiers(row["positive"]) == item["positive"]
            assert schema.join_tiers(row["negative"]) == item["negative"]
        else:
            assert csv_rows[entry["source_row"]]["positive"] == item["positive"]
            assert csv_rows[entry["source_row"]]["negative"] == item["negative"]
    md, sheet_csv = (out / review.SHEET_MD).read_text(), list(csv.DictReader((out / review.SHEET_CSV).read_text().splitlines()))
    assert [r["id"] for r in sheet_csv] == ids and all(f"- positive: {item['positive']}" in md for item in sheet)
    assert "The file sheet.md holds 8 items." in (out / review.BRIEF_FILE).read_text()


def test_sheet_is_shuffled_and_deterministic_given_the_seed(tmp_path, run_dir, compare_csv):
    kits = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        review.sample(run_dir, tmp_path / name, n=4, compare=compare_csv, seed=seed)
        kits[name] = {f: (tmp_path / name / f).read_bytes() for f in (review.SHEET, review.SHEET_MD, review.KEY)}
    assert kits["a"] == kits["b"]
    assert kits["a"][review.SHEET] != kits["c"][review.SHEET]
    orders = []
    for seed in range(5):
        key = review.sample(run_dir, tmp_path / f"s{seed}", n=4, compare=compare_csv, seed=seed)
        orders.append([key["rows"][i]["source"] for i in key["rows"]])
    grouped = (["run"] * 4 + ["compare"] * 4, ["compare"] * 4 + ["run"] * 4)
    assert any(order not in grouped for order in orders)  # sources are interleaved, not one block after the other
    sheet, key = read_kit(tmp_path / "s0")
    assert [item["id"] for item in sheet] == list(key["rows"])  # the key lists ids in sheet order


def test_too_few_shared_captions_are_topped_up_independently(tmp_path, run_dir, compare_csv):
    key = review.sample(run_dir, tmp_path / "kit", n=8, compare=compare_csv, seed=0)
    assert key["rule"] == "shared captions, then independent" and key["shared_used"] == 6
    assert key["sources"]["compare"] == {"path": str(compare_csv), "kind": "csv", "rows": 10, "with_negative": 9, "sampled": 8}
    key = review.sample(run_dir, tmp_path / "alone", n=3, seed=0)
    assert key["rule"] == "random" and set(key["sources"]) == {"run"} and len(key["rows"]) == 3


def test_refusals_name_the_path_and_what_was_expected(tmp_path, run_dir, compare_csv):
    with pytest.raises(ReviewError, match=r"more than the run source holds: 8 row\(s\)"):
        review.sample(run_dir, tmp_path / "kit", n=9)
    with pytest.raises(ReviewError, match=r"original.csv: --n 10 .* 9 row\(s\) with a 4-tier negative \(of 10"):
        review.sample(compare_csv, tmp_path / "kit", n=10)
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    with pytest.raises(ReviewError, match=f"{empty}: no filter shards"):
        review.sample(empty, tmp_path / "kit", n=1)
    captions_only = write_csv(tmp_path / "captions.csv", [hierarchy("red")], header=("positive", "image_url"))
    with pytest.raises(ReviewError, match=r"captions.csv: expected an official HierarCaps CSV .*missing negative"):
        review.sample(run_dir, tmp_path / "kit", n=1, compare=captions_only)
    with pytest.raises(ReviewError, match="not found"):
        review.sample(tmp_path / "nowhere", tmp_path / "kit", n=1)
    assert not (tmp_path / "kit").exists()


def test_an_existing_kit_is_never_overwritten_partially(tmp_path, run_dir, monkeypatch):
    out = tmp_path / "kit"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(ReviewError, match="already exists"):
        review.sample(run_dir, out, n=2)
    with pytest.raises(ReviewError, match="more than"):  # refused before anything is written, even with --force
        review.sample(run_dir, out, n=99, force=True)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    with pytest.raises(FileNotFoundError):  # a write that fails half way leaves the old folder as it was
        review._write_kit(out, {"a.txt": "new", "missing/b.txt": "new"}, force=True)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kit"]  # no temp folder left beside it
    review.sample(run_dir, out, n=2, force=True)
    assert not (out / "mine.txt").exists() and (out / review.KEY).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kit"]


# Hand-made verdicts: (positive_valid, negative_valid) for run rows r1, r2 and compare rows c1, c2.
LABELS_A = {"r1": (True, [True, True, True, True]), "r2": (False, [True, False, True, False]),
            "c1": (True, [True, True, False, False]), "c2": (True, [False, False, False, False])}
LABELS_B = {"r1": (True, [True, True, True, True]), "r2": (True, [True, False, False, False]),
            "c1": (True, [True, True, False, False]), "c2": (False, [False, False, False, True])}


@pytest.fixture
def kit(tmp_path, run_dir, compare_csv) -> tuple[Path, dict[str, str]]:
    """A 4-item kit and the map from the names above (r1, r2, c1, c2) to its ids."""
    out = tmp_path / "kit"
    key = review.sample(run_dir, out, n=2, compare=compare_csv, seed=5)
    by_source = {"run": [], "compare": []}
    for row_id, entry in key["rows"].items():
        by_source[entry["source"]].append(row_id)
    names = {"r1": by_source["run"][0], "r2": by_source["run"][1], "c1": by_source["compare"][0], "c2": by_source["compare"][1]}
    return out, names


def write_labels(path: Path, labels: dict, names: dict[str, str]) -> Path:
    path.write_text(json.dumps([{"id": names[k], "positive_valid": p, "negative_valid": n, "note": ""} for k, (p, n) in labels.items()]))
    return path


def flat(shares: dict) -> list[float]:
    return [shares["positive"], *shares["negative"], shares["whole"]]


def test_score_shares_per_source_and_agreement(tmp_path, kit):
    out, names = kit
    a = write_labels(tmp_path / "a.json", LABELS_A, names)
    b = write_labels(tmp_path / "b.json", LABELS_B, names)
    result = review.score(out, [a, b], json_out=tmp_path / "scores.json")
    run, compare = result["sources"]["run"], result["sources"]["compare"]
    assert run["rows"] == compare["rows"] == 2
    # reviewer A on the run: positives 1 of 2; negative tiers 2/2, 1/2, 2/2, 1/2; whole rows 1 of 2 (r1)
    assert run["reviewers"][str(a)] == {"positive": 0.5, "negative": [1.0, 0.5, 1.0, 0.5], "whole": 0.5}
    assert run["reviewers"][str(b)] == {"positive": 1.0, "negative": [1.0, 0.5, 0.5, 0.5], "whole": 0.5}
    assert flat(run["mean"]) == pytest.approx([0.75, 1.0, 0.5, 0.75, 0.5, 0.5])
    assert flat(compare["mean"]) == pytest.approx([0.75, 0.5, 0.5, 0.0, 0.25, 0.0])
    (pair,) = result["agreement"]
    # 20 verdicts, 4 differ (r2 positive, r2 tier 3, c2 positive, c2 tier 4): equal 16/20. Each reviewer says true 11 times:
    # p_e = 0.55^2 + 0.45^2 = 0.505, kappa = (0.8 - 0.505) / (1 - 0.505)
    assert pair["verdicts"] == 20 and pair["equal"] == pytest.approx(0.8)
    assert pair["kappa"] == pytest.approx(0.295 / 0.495)
    # positives alone: A = T F T T, B = T T T F: equal 2/4, p_e = 0.75^2 + 0.25^2 = 0.625, kappa = (0.5 - 0.625) / 0.375
    assert pair["per_tier"]["positive"] == pytest.approx({"equal": 0.5, "kappa": -1 / 3})
    assert pair["per_tier"]["negative_1"]["equal"] == 1.0
    assert json.loads((tmp_path / "scores.json").read_text())["agreement"][0]["kappa"] == pytest.approx(0.295 / 0.495)


def test_kappa_fallback_matches_and_undefined_kappa():
    a = [True, True, False, True, False, False, True, True]
    b = [True, False, False, True, True, False, True, True]
    # p_o = 6/8; rates 5/8 and 5/8: p_e = 25/64 + 9/64 = 34/64; kappa = (48/64 - 34/64) / (30/64) = 14/30
    assert review._kappa(a, b) == pytest.approx(14 / 30)
    assert review.cohen_kappa(a, b) == pytest.approx(14 / 30)
    assert review.cohen_kappa([True] * 3, [True] * 3) is None


def test_labels_errors_list_every_bad_id(tmp_path, kit):
    out, names = kit
    entries = [
        {"id": names["r1"], "positive_valid": True, "negative_valid": [True, True, True, True]},
        {"id": names["r2"], "positive_valid": "yes", "negative_valid": [True, True, True, True]},
        {"id": names["c1"], "positive_valid": True, "negative_valid": [True, True, True]},
        {"id": "deadbeef", "positive_valid": True, "negative_valid": [True, True, True, True]},
        {"id": "cafe0000", "positive_valid": True, "negative_valid": [True, True, True, True]},
    ]  # c2 missing
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(entries))
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"positive_valid": True}]))
    with pytest.raises(ReviewError) as caught:
        review.score(out, [bad, other])
    message = str(caught.value)
    assert "2 ids not in the sheet: deadbeef, cafe0000" in message
    assert f"1 ids of the sheet not labelled: {names['c2']}" in message
    assert f"{names['r2']} (positive_valid is not true/false)" in message
    assert f"{names['c1']} (negative_valid is not a list of 4 true/false)" in message
    assert f"{other}: 1 entries without a string 'id'" in message and f"{other}: 4 ids of the sheet not labelled" in message
    with pytest.raises(ReviewError, match="expected a JSON list"):
        (tmp_path / "obj.json").write_text("{}")
        review.score(out, [tmp_path / "obj.json"])


def test_cli_sample_and_score(tmp_path, run_dir, compare_csv):
    runner, out = CliRunner(), tmp_path / "kit"
    result = runner.invoke(app, ["review", "sample", str(run_dir), "--n", "2", "--compare", str(compare_csv), "--seed", "5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    key = json.loads((out / review.KEY).read_text())
    by_source = {"run": [], "compare": []}
    for row_id, entry in key["rows"].items():
        by_source[entry["source"]].append(row_id)
    names = {"r1": by_source["run"][0], "r2": by_source["run"][1], "c1": by_source["compare"][0], "c2": by_source["compare"][1]}
    a, b = write_labels(tmp_path / "a.json", LABELS_A, names), write_labels(tmp_path / "b.json", LABELS_B, names)
    result = runner.invoke(app, ["review", "score", str(out), "--labels", str(a), "--labels", str(b), "--json", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    assert "share valid" in result.output and "agreement between reviewers" in result.output and "0.596" in result.output
    assert json.loads((tmp_path / "s.json").read_text())["sources"]["run"]["mean"]["whole"] == 0.5
    result = runner.invoke(app, ["review", "sample", str(run_dir), "--n", "2", "--out", str(out)])
    assert result.exit_code == 1 and "already exists" in " ".join(result.output.split())


def test_docs_quote_the_brief_word_for_word():
    docs = " ".join((ROOT / "docs" / "review.md").read_text().split())
    assert " ".join(review.BRIEF.split()) in docs
