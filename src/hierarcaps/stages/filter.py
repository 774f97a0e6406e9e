"""Stage `filter`: structural checks, then one NLI pass per shard over every pair the hierarchy rules need.

Rules, for a positive hierarchy p (tier 1 generic .. tier 4 = caption) and an optional negative n:
- `nli_positive_entails`:          p[i+1] entails p[i]          (i = 1..3)
- `nli_negative_contradicts`:      n[i] contradicts p[i]        (premise p[i], hypothesis n[i]; i = 1..4)
- `nli_negative_entails_previous`: n[i] entails p[i-1]          (i = 2..4)
- `nli_joint` (when a joint threshold is set): the mean over all those pairs of log P(required label) reaches it
  (`engines.base.mean_log_prob`; the learned stand-in's card sets it, see hierarcaps.nli.corrupt).
A row is kept when every pair passes its threshold and the joint rule holds. Every rule is evaluated on every row
that reaches NLI, so the stats give each rule's own accept rate (`checked:<rule>`, `pass:<rule>`), not only the
first failure; the reject reason is the first failing rule in the order above, with the failing pair (for
`nli_joint`, the row's weakest pair) and its probabilities in `detail`.

`filter_file` runs the filter alone on an existing HierarCaps CSV or hierarchy parquet (issue #3 item 5): an
`external` stage cuts the file into shards, the filter reads them, and a per-check report is written.
"""

from __future__ import annotations

import json
import logging
import time
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from hierarcaps import schema, shards
from hierarcaps.checks import check_hierarchy
from hierarcaps.config import Profile, load_profile
from hierarcaps.engines.base import CONTRADICTION, ENTAILMENT, NLI_LABELS, NLIModel, mean_log_prob
from hierarcaps.engines.nli import load_nli, nli_model_id, score_pairs
from hierarcaps.inputs import InputError, load_hierarchies
from hierarcaps.stage import ShardOutput, ShardTask, Stage, plan_row_range, read_task_rows
from hierarcaps.stats import Stats

log = logging.getLogger(__name__)

# (rule, reject reason, NLI column that must reach the threshold), in the order a row's reason is chosen.
RULES = (
    ("nli_positive_entails", "nli_positive_not_entailed", ENTAILMENT),
    ("nli_negative_contradicts", "nli_negative_not_contradicting", CONTRADICTION),
    ("nli_negative_entails_previous", "nli_negative_not_entailing_previous", ENTAILMENT),
)
JOINT = ("nli_joint", "nli_joint_too_weak")
STRUCTURAL = "structural"
REPORT = "check_report.json"


def rule_pairs(positive: list[str], negative: list[str] | None) -> list[tuple[str, int, str, str]]:
    """(rule, tier, premise, hypothesis) of every pair a row needs. `tier` (1-based) names the tier under test:
    the hypothesis for positive pairs (tier i+1 entails tier i), the negative tier for negative pairs."""
    pairs = [("nli_positive_entails", i, positive[i], positive[i - 1]) for i in range(1, schema.TIERS)]
    if negative is not None:
        pairs += [("nli_negative_contradicts", i + 1, positive[i], negative[i]) for i in range(schema.TIERS)]
        pairs += [("nli_negative_entails_previous", i + 1, negative[i], positive[i - 1]) for i in range(1, schema.TIERS)]
    return pairs


class FilterStage(Stage):
    name = "filter"
    upstream = ("generate",)
    output_schema = schema.FILTERED

    def __init__(self, profile: Profile, run_dir: str | Path, upstream: str = "generate", nli: NLIModel | None = None):
        super().__init__(profile, run_dir)
        self.upstream = (upstream,)
        # The fingerprint names the model from the config alone, so checking whether the stage is done never loads it.
        self.nli_id = nli_model_id(self.config.nli) if nli is None else nli.model_id
        if nli is not None:  # tests and callers that already hold a model
            self.__dict__["nli"] = nli

    @cached_property
    def nli(self) -> NLIModel:
        model = load_nli(self.config.nli)
        log.info("filter NLI: %s", model.description)
        return model

    @cached_property
    def thresholds(self) -> dict[str, float | None]:
        cfg = self.config.nli
        card = getattr(self.nli, "thresholds", None) if cfg.use_card_thresholds else None
        chosen = {"entail": cfg.entail_threshold, "contradict": cfg.contradict_threshold, "joint": cfg.joint_threshold}
        if isinstance(card, dict):
            chosen.update({k: None if card[k] is None else float(card[k]) for k in chosen if k in card})
        return chosen

    def fingerprint_parts(self) -> dict[str, Any]:
        return {"nli_model": self.nli_id}

    def models(self) -> dict[str, str]:
        return {"nli": self.nli.model_id}

    def manifest_extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"nli_description": self.nli.description, "thresholds": self.thresholds}
        if self.config.nli.backend != "cross-encoder":
            extra["note"] = f"filter NLI is a stand-in, not an MNLI model: {self.nli.description}"
        return extra

    def plan(self) -> list[ShardTask]:
        return plan_row_range(self.name, self.run_dir / self.upstream[0], 0, None)

    def process(self, task: ShardTask) -> ShardOutput:
        rows = read_task_rows(task).to_pylist()
        stats, rejects, survivors = Stats(), [], []
        for row in rows:
            stats.add(f"checked:{STRUCTURAL}")
            failed = check_hierarchy(row["positive"], row["negative"], row["caption"], self.config.checks)
            if failed:
                reason, detail = failed
                stats.reject(reason)
                rejects.append(_reject(row, reason, detail))
            else:
                stats.add(f"pass:{STRUCTURAL}")
                survivors.append(row)
        self.advance(len(rows) - len(survivors))

        needed = [rule_pairs(row["positive"], row["negative"]) for row in survivors]
        started = time.perf_counter()
        scores = score_pairs(self.nli, [(p, h) for pairs in needed for _, _, p, h in pairs])
        stats.add("nli_pairs", sum(len(pairs) for pairs in needed))
        stats.add("nli_unique_pairs", len(scores))
        stats.add("nli_seconds", time.perf_counter() - started)

        kept = []
        for row, pairs in zip(survivors, needed):
            verdict = self._judge(pairs, scores, stats)
            if verdict["failure"] is None:
                kept.append({**{k: row.get(k) for k in schema.HIERARCHIES.names}, **verdict["mins"]})
            else:
                reason, failure = verdict["failure"]
                stats.reject(reason)
                rejects.append(_reject(row, reason, json.dumps(failure, sort_keys=True)))
        self.advance(len(survivors))
        out = pa.Table.from_pylist(kept, schema=schema.FILTERED) if kept else schema.empty(schema.FILTERED)
        return ShardOutput(out, schema.rejects_table(rejects), stats)

    def _judge(self, pairs: list[tuple[str, int, str, str]], scores: dict, stats: Stats) -> dict:
        """Evaluate every rule on one row; count per rule and per (rule, tier); return the first failure."""
        thresholds = {ENTAILMENT: self.thresholds["entail"], CONTRADICTION: self.thresholds["contradict"]}
        failures: dict[str, dict] = {}
        mins = {"min_entail": None, "min_contradict": None}
        required: list[tuple[float, dict]] = []  # (P(required label), the pair) for the joint rule
        for rule, reason, column in RULES:
            mine = [(tier, p, h) for r, tier, p, h in pairs if r == rule]
            if not mine:
                continue
            stats.add(f"checked:{rule}")
            for tier, premise, hypothesis in mine:
                probs = scores[(premise, hypothesis)]
                ok = probs[column] >= thresholds[column]
                stats.add(f"pair_checked:{rule}:t{tier}")
                stats.add(f"pair_pass:{rule}:t{tier}", int(ok))
                key = "min_entail" if column == ENTAILMENT else "min_contradict"
                mins[key] = float(probs[column]) if mins[key] is None else min(mins[key], float(probs[column]))
                pair = {
                    "rule": rule,
                    "tier": tier,
                    "premise": premise,
                    "hypothesis": hypothesis,
                    "probs": {label: round(float(p), 4) for label, p in zip(NLI_LABELS, probs)},
                    "needs": NLI_LABELS[column],
                }
                required.append((float(probs[column]), pair))
                if not ok and rule not in failures:
                    failures[rule] = {**pair, "threshold": thresholds[column]}
            if rule not in failures:
                stats.add(f"pass:{rule}")
        joint_threshold = self.thresholds.get("joint")
        if joint_threshold is not None and required:
            rule = JOINT[0]
            stats.add(f"checked:{rule}")
            score = float(mean_log_prob([p for p, _ in required]))
            if score >= joint_threshold:
                stats.add(f"pass:{rule}")
            else:
                weakest = min(required, key=lambda item: item[0])[1]
                failures[rule] = {"rule": rule, "mean_log_prob": round(score, 4), "threshold": joint_threshold,
                                  "geometric_mean": round(float(np.exp(score)), 4), "weakest_pair": weakest}
        order = [*((rule, reason) for rule, reason, _ in RULES), JOINT]
        first = next(((reason, failures[rule]) for rule, reason in order if rule in failures), None)
        if first is not None:
            first[1]["also_failed"] = [rule for rule in failures if rule != first[1]["rule"]]
        return {"failure": first, "mins": mins}


def _reject(row: dict, reason: str, detail: str) -> dict:
    return {
        "id": row.get("id"),
        "stage": "filter",
        "reason": reason,
        "detail": detail,
        "caption": row.get("caption"),
        "positive": row.get("positive"),
        "negative": row.get("negative"),
    }


# ------------------------------------------------------------------ the filter alone, on an existing file


class ExternalStage(Stage):
    """Stage `external`: an existing HierarCaps CSV / hierarchy parquet cut into HIERARCHIES shards."""

    name = "external"
    output_schema = schema.HIERARCHIES

    def __init__(self, profile: Profile, run_dir: str | Path, source: str | Path):
        super().__init__(profile, run_dir)
        self.source = Path(source)

    @property
    def config(self):
        return self.profile.input  # only rows_per_shard matters here

    @cached_property
    def loaded(self) -> tuple[pa.Table, pa.Table, list[int]]:
        """(rows, rejects, source row of each kept row): load_hierarchies keeps file order."""
        table, rejects = load_hierarchies(self.source)
        bad = set(rejects["source_row"].to_pylist())
        total = table.num_rows + rejects.num_rows
        return table, rejects, [i for i in range(total) if i not in bad]

    def fingerprint_parts(self) -> dict[str, Any]:
        if not self.source.exists():
            raise InputError(f"{self.source}: file not found")
        return {"source": str(self.source), "source_sha256": shards.sha256_file(self.source)}

    def plan(self) -> list[ShardTask]:
        table, rejects, _ = self.loaded
        total, size = table.num_rows + rejects.num_rows, self.profile.input.rows_per_shard
        return [ShardTask(self.name, i, (str(self.source),), lo, min(lo + size, total)) for i, lo in enumerate(range(0, total, size))]

    def input_rows(self, task: ShardTask) -> int:
        return task.stop - task.start

    def process(self, task: ShardTask) -> ShardOutput:
        table, rejects, source_rows = self.loaded
        keep = [k for k, row in enumerate(source_rows) if task.start <= row < task.stop]
        out = table.take(pa.array(keep, pa.int64())) if keep else schema.empty(schema.HIERARCHIES)
        bad = [r for r in rejects.to_pylist() if task.start <= r["source_row"] < task.stop]
        stats = Stats()
        for r in bad:
            stats.reject(r["reason"])
        self.advance(task.stop - task.start)
        return ShardOutput(out, schema.rejects_table(bad), stats)


def _run(stage: Stage, on_progress: Callable[[str, int, int], None] | None) -> dict:
    """Run a stage with the same progress protocol as pipeline.run_stage."""
    started = time.perf_counter()
    if stage.is_complete():
        return {**shards.read_manifest(stage.dir), "skipped": True}
    total, done = stage.total_rows(), 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if on_progress:
            on_progress(stage.name, done, total)

    if on_progress:
        on_progress(stage.name, 0, total)
    manifest = stage.run(advance=advance)
    return {**manifest, "wall_seconds": time.perf_counter() - started}


def check_report(external: dict, filtered: dict, source: str | Path) -> dict:
    """Accept rate of each check: parsing and structural rules on all rows, each NLI rule on the rows it reaches.

    Kinds: `parse` (4 tiers in the file), `structural` (all structural rules together), `structural rule` (one rule;
    the rules run in order and a row counts under the first it breaks), `nli row` (every pair of that rule in a row
    passes), `nli pair` (the pairs of one tier)."""
    ext, flt = external.get("stats", {}), filtered.get("stats", {})
    rows = int(ext.get("rows_in", 0))
    checks = [_rate("load_4_tiers", "parse", rows, int(ext.get("rows_out", 0)))]
    structural_in = int(flt.get(f"checked:{STRUCTURAL}", 0))
    checks.append(_rate(STRUCTURAL, "structural", structural_in, int(flt.get(f"pass:{STRUCTURAL}", 0))))
    nli_reasons = {reason for _, reason, _ in RULES} | {JOINT[1]}
    for key, count in sorted(flt.items()):
        reason = key.split(":", 1)[1] if key.startswith("reject:") else None
        if reason and reason not in nli_reasons:
            # structural rules run in order; a row is counted under the first one it breaks
            checks.append(_rate(reason, "structural rule", structural_in, structural_in - int(count)))
    for rule, _, _ in RULES:
        if flt.get(f"checked:{rule}"):
            checks.append(_rate(rule, "nli row", int(flt[f"checked:{rule}"]), int(flt.get(f"pass:{rule}", 0))))
            for tier in range(1, schema.TIERS + 1):
                checked = int(flt.get(f"pair_checked:{rule}:t{tier}", 0))
                if checked:
                    checks.append(_rate(f"{rule}:t{tier}", "nli pair", checked, int(flt.get(f"pair_pass:{rule}:t{tier}", 0))))
    if flt.get(f"checked:{JOINT[0]}"):
        checks.append(_rate(JOINT[0], "nli row", int(flt[f"checked:{JOINT[0]}"]), int(flt.get(f"pass:{JOINT[0]}", 0))))
    accepted = int(flt.get("rows_out", 0))
    nli_seconds = float(flt.get("nli_seconds", 0.0))
    return {
        "input": str(source),
        "nli_model": filtered.get("models", {}).get("nli"),
        "nli_description": filtered.get("nli_description"),
        "thresholds": filtered.get("thresholds"),
        "rows": rows,
        "accepted": accepted,
        "accept_rate": accepted / rows if rows else None,
        "nli_pairs": int(flt.get("nli_pairs", 0)),
        "nli_unique_pairs": int(flt.get("nli_unique_pairs", 0)),
        "nli_pairs_per_second": flt.get("nli_unique_pairs", 0) / nli_seconds if nli_seconds else None,
        "checks": checks,
        "reject_reasons": {k.split(":", 1)[1]: int(v) for k, v in sorted({**ext, **flt}.items()) if k.startswith("reject:")},
    }


def _rate(check: str, kind: str, checked: int, passed: int) -> dict:
    return {"check": check, "kind": kind, "checked": checked, "passed": passed, "accept_rate": passed / checked if checked else None}


def filter_file(
    input: str | Path,
    out: str | Path,
    profile: str | Profile = "offline",
    overrides: dict[str, Any] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    nli: NLIModel | None = None,
) -> dict:
    """Re-filter an existing HierarCaps file; writes `out/filter/check_report.json` and returns the report
    (plus `manifests`, the two stages' manifests, which the JSON file leaves out)."""
    resolved = profile if isinstance(profile, Profile) else load_profile(profile, overrides)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shards.atomic_write_json(out / "profile.json", resolved.model_dump(mode="json", by_alias=True))
    manifests = {"external": _run(ExternalStage(resolved, out, input), on_progress)}
    manifests["filter"] = _run(FilterStage(resolved, out, upstream="external", nli=nli), on_progress)
    report = check_report(manifests["external"], manifests["filter"], input)
    shards.atomic_write_json(out / "filter" / REPORT, report)
    return {**report, "manifests": manifests}


def accepted_rows(run_dir: str | Path, stage: str = "filter") -> pa.Table:
    paths = shards.output_shards(Path(run_dir) / stage)
    tables = [shards.read_table(p) for p in paths]
    return pa.concat_tables(tables) if tables else schema.empty(schema.FILTERED)
