"""The filter stage: structural checks, then NLI rules with exact decisions, dedup, accounting; the filter alone."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from hierarcaps import pipeline, schema
from hierarcaps.config import load_profile
from hierarcaps.inputs import InputError, load_hierarchies
from hierarcaps.stage import ShardOutput, ShardTask, Stage
from hierarcaps import judge as judge_mod
from hierarcaps.stages import refilter
from hierarcaps.judge import rule_pairs
from hierarcaps.stages.filter import FilterStage
from hierarcaps.pipeline import filter_file
from hierarcaps.executor import run_stage

ENTAIL, NEUTRAL, CONTRA = (0.9, 0.06, 0.04), (0.2, 0.7, 0.1), (0.05, 0.15, 0.8)


class FakeNLI:
    """Entailment for every pair except those listed; records every predict call."""

    model_id = "fake-nli"
    description = "test double"

    def __init__(self, special: dict | None = None, thresholds: dict | None = None):
        self.special = dict(special or {})
        self.calls: list[list[tuple[str, str]]] = []
        if thresholds is not None:
            self.thresholds = thresholds

    def predict(self, pairs):
        self.calls.append(list(pairs))
        return np.array([self.special.get(pair, ENTAIL) for pair in pairs], dtype=np.float32)

    @property
    def seen(self) -> set[str]:
        return {text for call in self.calls for pair in call for text in pair}


def hierarchy(tag: str) -> tuple[list[str], list[str]]:
    positive = [f"{tag} animal", f"{tag} dog", f"{tag} brown dog", f"{tag} brown dog on the grass"]
    negative = [f"{tag} plant", f"{tag} cat", f"{tag} brown cat", f"{tag} brown cat on the sand"]
    return positive, negative


def contradictions(positive, negative) -> dict:
    return {(p, n): CONTRA for p, n in zip(positive, negative)}


def write_csv(path: Path, rows: list[tuple[list[str], list[str] | None]]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["positive", "negative", "image_url"])
        for k, (pos, neg) in enumerate(rows):
            writer.writerow([schema.join_tiers(pos), schema.join_tiers(neg) or "", f"http://img/{k}.jpg"])
    return path


@pytest.fixture
def profile():
    return load_profile("offline", {"input.rows_per_shard": 100})


@pytest.fixture
def case(tmp_path):
    """Rows with known fates, and the fake NLI that decides them."""
    rows, special, expected = [], {}, {}

    def add(tag, reason, tweak=None, negative=True):
        pos, neg = hierarchy(tag)
        special.update(contradictions(pos, neg))
        if tweak:
            tweak(pos, neg, special)
        rows.append((pos, neg if negative else None))
        expected[pos[-1]] = reason

    add("good", None)
    add("dup", None)
    add("dup", None)  # an identical row: its pairs must not be scored twice
    add("posfail", "nli_positive_not_entailed", lambda p, n, s: s.update({(p[2], p[1]): NEUTRAL}))
    add("contrafail", "nli_negative_not_contradicting", lambda p, n, s: s.pop((p[3], n[3])))
    add("prevfail", "nli_negative_not_entailing_previous", lambda p, n, s: s.update({(n[2], p[1]): CONTRA}))
    add("twofail", "nli_positive_not_entailed", lambda p, n, s: (s.update({(p[1], p[0]): CONTRA}), s.pop((p[0], n[0]))))
    add("capfail", "nli_caption_not_entailed", lambda p, n, s: s.update({(p[3], p[0]): NEUTRAL}))
    add("posonly", None, negative=False)
    add("struct", "positive_repeated_tier", lambda p, n, s: p.__setitem__(2, p[1]))
    add("copy", "negative_copies_positive", lambda p, n, s: n.__setitem__(1, p[1]))
    return write_csv(tmp_path / "case.csv", rows), FakeNLI(special), expected


def _run_case(tmp_path, profile, case):
    source, nli, expected = case
    run = tmp_path / "run"
    report = filter_file(source, run, profile, nli=nli)
    out = pq.read_table(run / "filter" / "part-00000.parquet")
    rejects = pq.read_table(run / "filter" / "rejects-00000.parquet")
    return report, out, rejects, nli, expected


def test_filter_decisions_reasons_and_details(tmp_path, profile, case):
    report, out, rejects, nli, expected = _run_case(tmp_path, profile, case)
    fates = {row["caption"]: None for row in out.to_pylist()}
    fates.update({row["caption"]: row["reason"] for row in rejects.to_pylist()})
    assert fates == expected
    assert out.schema.equals(schema.FILTERED)
    kept = {row["caption"]: row for row in out.to_pylist()}
    assert kept["good brown dog on the grass"]["min_entail"] == pytest.approx(ENTAIL[0])
    assert kept["good brown dog on the grass"]["min_contradict"] == pytest.approx(CONTRA[2])
    assert kept["posonly brown dog on the grass"]["min_contradict"] is None

    details = {row["reason"]: row for row in rejects.to_pylist()}
    pos = json.loads(details["nli_positive_not_entailed"]["detail"])
    prev = json.loads(details["nli_negative_not_entailing_previous"]["detail"])
    contra = json.loads(details["nli_negative_not_contradicting"]["detail"])
    posfail = [json.loads(r["detail"]) for r in rejects.to_pylist() if r["caption"].startswith("posfail")][0]
    assert posfail == {
        "rule": "nli_positive_entails", "side": "positive", "tier": 2, "premise": "posfail brown dog", "hypothesis": "posfail dog",
        "probs": {"entailment": 0.2, "neutral": 0.7, "contradiction": 0.1}, "threshold": 0.5, "needs": "entailment",
        "also_failed": [],
    }
    assert pos["rule"] == "nli_positive_entails"
    assert (prev["side"], contra["side"]) == ("negative", "negative")
    caption = json.loads(details["nli_caption_not_entailed"]["detail"])
    assert (caption["side"], caption["tier"], caption["premise"], caption["hypothesis"]) == (
        "positive", 1, "capfail brown dog on the grass", "capfail animal")
    assert (prev["tier"], prev["premise"], prev["hypothesis"]) == (3, "prevfail brown cat", "prevfail dog")
    assert (contra["tier"], contra["premise"], contra["hypothesis"]) == (4, "contrafail brown dog on the grass", "contrafail brown cat on the sand")
    twofail = [json.loads(r["detail"]) for r in rejects.to_pylist() if r["caption"].startswith("twofail")][0]
    assert twofail["tier"] == 1 and twofail["also_failed"] == ["nli_negative_contradicts"]
    structural = [r for r in rejects.to_pylist() if r["caption"].startswith("struct")][0]
    assert "repeated" in structural["detail"] and structural["positive"][1] == structural["positive"][2]


def test_accounting_dedup_and_structural_rejects_never_reach_nli(tmp_path, profile, case):
    report, out, rejects, nli, expected = _run_case(tmp_path, profile, case)
    stats = report["manifests"]["filter"]["stats"]
    assert stats["rows_in"] == len(expected) + 1 == stats["rows_out"] + stats["rows_rejected"]  # +1: the duplicate row
    assert len(nli.calls) == 1  # one shard, one NLI pass
    scored = nli.calls[0]
    assert len(scored) == len(set(scored)) == stats["nli_unique_pairs"]
    # 9 rows reach NLI, 8 with negatives (3 + 2 caption + 4 + 3 pairs) and 1 positive-only (3 + 2 pairs); the
    # duplicate adds no pair
    assert stats["nli_pairs"] == 8 * 12 + 5 and len(scored) == 7 * 12 + 5
    assert not any(text.startswith(("struct", "copy")) for text in nli.seen)
    # each rule is counted on every row that reaches it, independently of the other rules
    assert stats["checked:nli_positive_entails"] == 9 and stats["pass:nli_positive_entails"] == 7
    assert stats["checked:nli_caption_entails"] == 9 and stats["pass:nli_caption_entails"] == 8
    assert stats["checked:nli_negative_contradicts"] == 8 and stats["pass:nli_negative_contradicts"] == 6
    assert stats["checked:nli_negative_entails_previous"] == 8 and stats["pass:nli_negative_entails_previous"] == 7
    assert stats["pair_checked:nli_negative_contradicts:t4"] == 8 and stats["pair_pass:nli_negative_contradicts:t4"] == 7
    assert stats["reject:nli_positive_not_entailed"] == 2 and stats["reject:positive_repeated_tier"] == 1


def test_check_report_gives_each_checks_accept_rate(tmp_path, profile, case):
    report, *_ = _run_case(tmp_path, profile, case)
    on_disk = json.loads((tmp_path / "run" / "filter" / "check_report.json").read_text())
    assert on_disk == json.loads(json.dumps({k: v for k, v in report.items() if k != "manifests"}))
    rates = {c["check"]: c for c in report["checks"]}
    assert (rates["load_4_tiers"]["checked"], rates["load_4_tiers"]["passed"]) == (11, 11)
    assert (rates["structural"]["checked"], rates["structural"]["passed"]) == (11, 9)
    assert rates["negative_copies_positive"]["accept_rate"] == pytest.approx(10 / 11)
    assert rates["nli_negative_contradicts"]["accept_rate"] == pytest.approx(6 / 8)
    assert rates["nli_positive_entails:t2"]["accept_rate"] == pytest.approx(8 / 9)
    assert rates["nli_caption_entails:t1"]["accept_rate"] == pytest.approx(8 / 9)
    assert report["nli_model"] == "fake-nli" and report["accepted"] == 4 and report["rows"] == 11


def test_thresholds_come_from_config_or_the_model_card(tmp_path, case):
    source, _, _ = case
    strict = load_profile("offline", {"filter.nli.entail_threshold": 0.95})
    report = filter_file(source, tmp_path / "strict", strict, nli=FakeNLI(case[1].special))
    assert report["accepted"] == 0 and report["thresholds"]["entail"] == 0.95
    card = FakeNLI(case[1].special, thresholds={"entail": 0.95, "contradict": 0.3})
    report = filter_file(source, tmp_path / "card", load_profile("offline"), nli=card)
    assert report["accepted"] == 0 and report["thresholds"] == {"entail": 0.95, "contradict": 0.3, "joint": None}
    ignored = load_profile("offline", {"filter.nli.use_card_thresholds": False})
    report = filter_file(source, tmp_path / "ignored", ignored, nli=FakeNLI(case[1].special, thresholds={"entail": 0.95}))
    assert report["accepted"] == 4 and report["thresholds"] == {"entail": 0.5, "contradict": 0.5, "joint": None}


def test_joint_rule_rejects_rows_whose_pairs_are_all_barely_passing(tmp_path):
    """Every pair of `weak` clears the per-pair thresholds, but their geometric mean is 0.55 < 0.7."""
    barely = (0.55, 0.3, 0.15)
    good, weak = hierarchy("good"), hierarchy("weak")
    special = {**contradictions(*good), **{pair: barely[::-1] for pair in contradictions(*weak)}}
    special.update({(p, h): barely for _, _, p, h in rule_pairs(*weak) if (p, h) not in special})
    special[(weak[0][3], weak[0][2])] = (0.52, 0.3, 0.18)  # the weakest pair, named in the reject
    source = write_csv(tmp_path / "joint.csv", [good, weak])
    joint = round(float(np.log(0.7)), 4)
    cards = {"card": FakeNLI(special, thresholds={"entail": 0.5, "contradict": 0.5, "joint": joint}), "none": FakeNLI(special)}
    report = filter_file(source, tmp_path / "card", load_profile("offline"), nli=cards["card"])
    assert report["accepted"] == 1 and report["thresholds"]["joint"] == joint
    (reject,) = pq.read_table(tmp_path / "card" / "filter" / "rejects-00000.parquet").to_pylist()
    detail = json.loads(reject["detail"])
    assert reject["reason"] == "nli_joint_too_weak" and reject["caption"] == weak[0][3]
    assert detail["geometric_mean"] == pytest.approx(0.55, abs=0.01) and detail["threshold"] == joint
    assert (detail["weakest_pair"]["premise"], detail["weakest_pair"]["hypothesis"]) == (weak[0][3], weak[0][2])
    rates = {c["check"]: c for c in report["checks"]}
    assert (rates["nli_joint"]["checked"], rates["nli_joint"]["passed"]) == (2, 1)
    # the same rows without a joint threshold: both pass the per-pair rules
    assert filter_file(source, tmp_path / "none", load_profile("offline"), nli=cards["none"])["accepted"] == 2


def test_rule_pairs_follow_the_tier_structure():
    pos, neg = ["p1", "p2", "p3", "p4"], ["n1", "n2", "n3", "n4"]
    pairs = {(rule, tier): (p, h) for rule, tier, p, h in rule_pairs(pos, neg)}
    assert pairs[("nli_positive_entails", 1)] == ("p2", "p1") and pairs[("nli_positive_entails", 3)] == ("p4", "p3")
    assert pairs[("nli_negative_contradicts", 1)] == ("p1", "n1") and pairs[("nli_negative_contradicts", 4)] == ("p4", "n4")
    assert pairs[("nli_negative_entails_previous", 2)] == ("n2", "p1")
    assert pairs[("nli_negative_entails_previous", 4)] == ("n4", "p3")
    assert pairs[("nli_caption_entails", 1)] == ("p4", "p1") and pairs[("nli_caption_entails", 2)] == ("p4", "p2")
    assert len(pairs) == 12 and len(rule_pairs(pos, None)) == 5


class FakeGenerate(Stage):
    """A real upstream stage named `generate`, writing given rows through the shared machinery."""

    name = "generate"

    def __init__(self, profile, run_dir, rows):
        super().__init__(profile, run_dir)
        self.rows = rows

    def plan(self):
        return [ShardTask(self.name, 0, ()), ShardTask(self.name, 1, ())]

    def input_rows(self, task):
        return len(self.rows[task.index])

    def process(self, task):
        table = pa.Table.from_pylist(self.rows[task.index], schema=schema.HIERARCHIES)
        return ShardOutput(table, schema.rejects_table([]))


def test_default_filter_reads_generate_one_task_per_shard(tmp_path, profile):
    rows, special = [], {}
    for tag in ("a", "b", "c"):
        pos, neg = hierarchy(tag)
        special.update(contradictions(pos, neg))
        rows.append({"id": tag, "caption": pos[-1], "positive": pos, "negative": neg, "source": "generate"})
    run_stage(FakeGenerate(profile, tmp_path, [rows[:2], rows[2:]]))
    stage = pipeline.make_stage("filter", profile, tmp_path)
    assert isinstance(stage, FilterStage) and stage.upstream == ("generate",)
    assert [t.index for t in stage.plan()] == [0, 1]
    assert stage.judge.nli_id.startswith("minilm-nli:default@") and not stage.judge.nli_loaded  # the model loads on first use
    nli = FakeNLI(special)
    manifest = run_stage(FilterStage(profile, tmp_path, nli=nli))
    assert len(nli.calls) == 2 and manifest["stats"]["rows_out"] == 3
    assert manifest["models"] == {"nli": "fake-nli"} and "stand-in" in manifest["note"]
    again = FilterStage(profile, tmp_path, nli=FakeNLI(special))
    assert again.is_complete()
    changed = FilterStage(load_profile("offline", {"filter.nli.entail_threshold": 0.6}), tmp_path, nli=FakeNLI(special))
    assert not changed.is_complete()


def test_filter_file_on_shared_coco_hierarchies(tmp_path, shared_data):
    source = shared_data / "hierarcaps_coco_auto" / "hierarcaps_coco_auto.csv.gz"
    with gzip.open(source, "rt", newline="") as fh:
        rows = [row for _, row in zip(range(40), csv.DictReader(fh))]
    sample = tmp_path / "coco40.csv"
    with open(sample, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["positive", "negative", "image_url"])
        writer.writeheader()
        writer.writerows(rows)
    table, _ = load_hierarchies(sample)
    # An NLI that agrees with the original pipeline: its negatives contradict, everything else entails.
    special = {(p, n): CONTRA for row in table.to_pylist() for p, n in zip(row["positive"], row["negative"])}
    profile = load_profile("offline", {"input.rows_per_shard": 16})
    report = filter_file(sample, tmp_path / "run", profile, nli=FakeNLI(special))
    assert report["rows"] == 40 and len(report["manifests"]["filter"]["shards"]) == 2 * 3
    structural = {c["check"]: c for c in report["checks"]}["structural"]
    assert report["accepted"] == structural["passed"] >= 36  # the originals are structurally sound
    again = filter_file(sample, tmp_path / "run", profile, nli=FakeNLI(special))
    assert again["manifests"]["filter"].get("skipped") and again["accepted"] == report["accepted"]

    written = tmp_path / "accepted.csv"
    from hierarcaps.inputs import write_hierarchies_csv

    write_hierarchies_csv(refilter.accepted_rows(tmp_path / "run"), written)
    back, _ = load_hierarchies(written)
    originals = {tuple(r["positive"]): r["negative"] for r in table.to_pylist()}
    assert back.num_rows == report["accepted"]
    assert all(originals[tuple(r["positive"])] == r["negative"] for r in back.to_pylist())


def test_filter_file_on_positive_only_captions_csv(tmp_path, test_set):
    with open(test_set / "hierarcaps_test.csv", newline="") as fh:
        rows = [row for _, row in zip(range(12), csv.DictReader(fh))]
    sample = tmp_path / "captions.csv"
    with open(sample, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "captions", "image_url"])
        writer.writeheader()
        writer.writerows(rows)
    nli = FakeNLI()
    report = filter_file(sample, tmp_path / "run", load_profile("offline"), nli=nli)
    checks = {c["check"] for c in report["checks"]}
    assert "nli_positive_entails" in checks and not any("negative" in c and c.startswith("nli") for c in checks)
    structural = {c["check"]: c for c in report["checks"]}["structural"]
    assert report["nli_pairs"] == 5 * structural["passed"] and structural["checked"] == 12  # 3 positive + 2 caption pairs a row
    out = refilter.accepted_rows(tmp_path / "run")
    assert set(out["id"].to_pylist()) <= {r["id"] for r in rows} and out.num_rows == report["accepted"] > 0


def test_bad_inputs_name_the_file(tmp_path):
    missing = tmp_path / "nocol.csv"
    missing.write_text("caption,image_url\na dog,http://x\n")
    with pytest.raises(InputError, match="nocol.csv.*'positive'"):
        filter_file(missing, tmp_path / "run1", load_profile("offline"), nli=FakeNLI())
    table = pa.Table.from_pylist(
        [{"id": "x", "caption": "d", "positive": ["a", "b c", "b c d", "d"], "negative": None}], schema=schema.HIERARCHIES
    )
    parquet = tmp_path / "h.parquet"
    pq.write_table(table, parquet)
    data = parquet.read_bytes()
    parquet.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="h.parquet.*truncated"):
        filter_file(parquet, tmp_path / "run2", load_profile("offline"), nli=FakeNLI())
    with pytest.raises(InputError, match="absent.csv.*not found"):
        filter_file(tmp_path / "absent.csv", tmp_path / "run3", load_profile("offline"), nli=FakeNLI())


def test_cli_filter_prints_rates_and_writes_csv(tmp_path, case, monkeypatch):
    from hierarcaps.cli import app

    source, nli, expected = case
    monkeypatch.setattr(judge_mod, "load_nli", lambda cfg: nli)
    written = tmp_path / "kept.csv"
    result = CliRunner().invoke(app, ["filter", "--input", str(source), "--out", str(tmp_path / "run"), "--write-csv", str(written)])
    assert result.exit_code == 0, result.output
    assert "nli_negative_contradicts" in result.output and "75.0%" in result.output  # 6 of 8 rows
    back, _ = load_hierarchies(written)
    assert back.num_rows == 4  # the duplicate row is kept twice: the filter judges, it does not deduplicate rows
    assert set(back["caption"].to_pylist()) == {c for c, reason in expected.items() if reason is None}
    bad = tmp_path / "nocol.csv"
    bad.write_text("caption\na dog\n")
    result = CliRunner().invoke(app, ["filter", "--input", str(bad), "--out", str(tmp_path / "run2")])
    assert result.exit_code == 1 and "nocol.csv" in result.output
